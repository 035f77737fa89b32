"""Commands, namespaces, veths and addresses: the lab's building blocks.

Every helper raises LabError with one line (the command and what it printed).
Nothing here links a namespace to the root namespace or adds a default route.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from natgw.netns import netns_exists, netns_socket

IFNAMSIZ = 15  # longest Linux interface name
NETNS_DIR = Path("/var/run/netns")
WG_SOCKET_DIR = Path("/var/run/wireguard")  # wireguard-go's sockets, shared by all netns
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
NATGW = str(Path(sys.executable).with_name("natgw"))  # the natgw of the running venv


class LabError(Exception):
    """A lab step failed; one-line message."""


def run(argv: list[str], timeout: float = 60, check: bool = True,
        input: str | None = None) -> subprocess.CompletedProcess:
    """Run argv, capturing its output; LabError if it fails or times out (when check)."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    except subprocess.TimeoutExpired as e:
        raise LabError(f"{' '.join(argv)}: timed out after {timeout} s") from e
    if check and r.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {(r.stderr or r.stdout).strip()[:300]}")
    return r


def natgw(*args: str, check: bool = True, timeout: float = 300,
          input: str | None = None) -> subprocess.CompletedProcess:
    """The natgw command line; LabError with its message if it fails (when check)."""
    return run([NATGW, *args], timeout=timeout, check=check, input=input)


def in_ns(netns: str | None, argv: list[str], cpu: int | None = None) -> list[str]:
    """argv run in `netns` (None: ours), maybe pinned to `cpu`.

    `ip netns exec` and taskset exec in place: the PID is argv's.
    """
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    return [*(["ip", "netns", "exec", netns] if netns else []), *pin, *argv]


def ip(*args: str) -> None:
    run(["ip", *args], timeout=10)


def sh(netns: str, *argv: str, timeout: float = 60) -> str:
    """argv in `netns`; its standard output."""
    return run(in_ns(netns, list(argv)), timeout=timeout).stdout


def check_name(name: str) -> str:
    if len(name) > IFNAMSIZ:
        raise LabError(f"{name!r} is longer than {IFNAMSIZ} characters")
    return name


def unique_prefix(letter: str, hex_digits: int = 4, also: tuple[Path, ...] = ()) -> str:
    """letter + random hex that no netns, WireGuard socket (or file in `also`) starts with."""
    while True:
        prefix = f"{letter}{secrets.token_hex(hex_digits // 2)}"
        if not any(p.name.startswith(prefix) for d in (NETNS_DIR, WG_SOCKET_DIR, *also)
                   if d.is_dir() for p in d.iterdir()):
            return prefix


# Below Linux's ephemeral range (32768-60999 by default): a port handed out here
# cannot be taken as the source port of another test's connection before its
# server binds it, as a port the kernel picked (bind to 0) can.
FREE_PORTS = range(20000, 32768)


def free_port() -> int:
    """A TCP port free on the host's loopback now (a foreground natgw's metrics: it
    serves them from the root namespace, shared with every other run)."""
    for _ in range(100):
        port = FREE_PORTS[secrets.randbelow(len(FREE_PORTS))]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise LabError(f"no free TCP port in {FREE_PORTS.start}-{FREE_PORTS.stop - 1}")


def run_prefix() -> str:
    """A short prefix unique to this process's run, e.g. "t4242a7" (tests)."""
    return f"t{os.getpid() % 10000}{secrets.token_hex(1)}"


def add_netns(name: str) -> str:
    """Create netns `name` with loopback up."""
    ip("netns", "add", check_name(name))
    ip("-n", name, "link", "set", "lo", "up")
    return name


def delete_netns(name: str) -> None:
    if netns_exists(name):  # a test may have deleted it itself
        ip("netns", "del", name)


def veth(ns_a: str, a: str, ns_b: str, b: str, mac_a: str | None = None,
         mac_b: str | None = None) -> None:
    """A veth pair, end `a` in ns_a and `b` in ns_b, both up."""
    ip("link", "add", check_name(a), "netns", ns_a, *(["address", mac_a] if mac_a else []),
       "type", "veth", "peer", check_name(b), "netns", ns_b,
       *(["address", mac_b] if mac_b else []))
    link_up(ns_a, a)
    link_up(ns_b, b)


def tcx_programs(netns: str, dev: str) -> dict[str, list[tuple[str, int, int]]]:
    """(program name, program id, link id) of the programs on a device's tcx hooks, in
    the order they run: BPF_PROG_QUERY in the netns, since iproute2 (and Debian's
    bpftool 7.1) cannot show tcx. Empty lists on a kernel without tcx or a device gone."""
    from natgw.dataplane import bpfsys as B  # noqa: PLC0415
    from natgw.dataplane.hooks import tcx_available  # noqa: PLC0415
    from natgw.netns import in_netns  # noqa: PLC0415

    hooks = {"ingress": B.BPF_TCX_INGRESS, "egress": B.BPF_TCX_EGRESS}
    if not tcx_available():
        return {h: [] for h in hooks}

    def progs(attach_type: int) -> list[tuple[str, int, int]]:
        try:
            idx = socket.if_nametoindex(dev)
            entries = B.tcx_query(idx, attach_type)
        except OSError:
            return []  # the device went
        out = []
        for e in entries:
            try:
                fd = B.prog_fd_by_id(e.prog_id)
            except B.BpfError:
                continue  # replaced meanwhile
            try:
                out.append((B.prog_info(fd).name, e.prog_id, e.link_id))
            finally:
                os.close(fd)
        return out

    return in_netns(netns, lambda: {h: progs(t) for h, t in hooks.items()})


NATGW_FILTER_PRIO = 0x4E47  # natgw.dataplane.hooks.FILTER_PRIO: natgw's tc filters


def natgw_hooks(netns: str, dev: str) -> dict[str, int]:
    """Hooks ("ingress", "egress") where natgw's program runs on a device, read from
    outside natgw: its tcx link (-> link id), or before tcx its tc filter (-> 0)."""
    out: dict[str, int] = {}
    for hook, progs in tcx_programs(netns, dev).items():
        link = next((link for name, _, link in progs if name.startswith("natgw_")), None)
        if link is not None:
            out[hook] = link
            continue
        r = subprocess.run(in_ns(netns, ["tc", "filter", "show", "dev", dev, hook]),
                           capture_output=True, text=True, timeout=20)
        if f"pref {NATGW_FILTER_PRIO} " in r.stdout and "natgw_" in r.stdout:
            out[hook] = 0
    return out


def natgw_programs(netns: str, dev: str) -> dict[str, str]:
    """hook -> the natgw program running there ("egress", "ingress", "ingress_fast",
    "lan"), read from outside natgw: its tcx link's program (the kernel keeps 15
    characters of a name), or before tcx its tc filter's name."""
    out: dict[str, str] = {}
    for hook, progs in tcx_programs(netns, dev).items():
        name = next((name for name, _, _ in progs if name.startswith("natgw_")), None)
        if name is not None:
            out[hook] = {"natgw_ingress_f": "ingress_fast"}.get(name, name[len("natgw_"):])
            continue
        r = subprocess.run(in_ns(netns, ["tc", "filter", "show", "dev", dev, hook]),
                           capture_output=True, text=True, timeout=20)
        for word in r.stdout.split():
            if word.startswith("natgw_") and ":" in word:
                out[hook] = word.partition(":")[0][len("natgw_"):]
    return out


def remove_natgw_hook(netns: str, dev: str, hook: str) -> None:
    """Take natgw's program off a hook by hand, as an admin would: `bpftool link detach`
    of its tcx link (unpinning alone leaves a link someone holds), or `tc filter del`."""
    link = natgw_hooks(netns, dev).get(hook)
    if link is None:
        raise LabError(f"{netns} {dev} {hook}: natgw's program is not there")
    if link:
        run(["bpftool", "link", "detach", "id", str(link)])
    else:
        run(in_ns(netns, ["tc", "filter", "del", "dev", dev, hook, "pref",
                          str(NATGW_FILTER_PRIO)]))


def add_address(netns: str, dev: str, cidr: str) -> None:
    """Address `cidr` (e.g. "192.0.2.1/24") on `dev`; IPv6 without the DAD delay."""
    extra = ["nodad"] if ":" in cidr else []
    ip("-n", netns, "address", "add", cidr, "dev", dev, *extra)


TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000


def open_tun(netns: str, name: str) -> int:
    """A tun device `name` in netns, up, and the fd that reads what it sends and writes
    what it receives (bare IP packets, as wireguard-go does). It goes with the fd."""
    import fcntl  # noqa: PLC0415

    from natgw.netns import in_netns  # noqa: PLC0415

    def create() -> int:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            fcntl.ioctl(fd, TUNSETIFF,
                        struct.pack("16sH", check_name(name).encode(), IFF_TUN | IFF_NO_PI))
        except OSError:
            os.close(fd)
            raise
        return fd

    fd = in_netns(netns, create)
    link_up(netns, name)
    return fd


def link_up(netns: str, dev: str) -> None:
    ip("-n", netns, "link", "set", dev, "up")


def sysctl(netns: str, *settings: str) -> None:
    sh(netns, "sysctl", "-qw", *settings)


def offloads(netns: str, dev: str, *features: str) -> None:
    """`ethtool -K dev features` (e.g. "rx", "off": checksums verified in software)."""
    sh(netns, "ethtool", "-K", dev, *features)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(netns: str, dst: str, count: int = 3, timeout: float = 1.0) -> int:
    """ICMP or ICMPv6 echo from `netns` to `dst`, one at a time; returns the replies seen."""
    v = ipaddress.ip_address(dst).version
    request, reply = (8, 0) if v == 4 else (128, 129)
    proto = socket.IPPROTO_ICMP if v == 4 else socket.IPPROTO_ICMPV6
    ident, replies = secrets.randbits(16), 0
    with netns_socket(netns, _FAMILY[v], socket.SOCK_RAW, proto) as sock:
        for seq in range(1, count + 1):
            payload = secrets.token_bytes(16)
            # The kernel fills in an ICMPv6 checksum itself (it covers the IPv6 pseudo-header).
            csum = _checksum(struct.pack("!BBHHH", request, 0, 0, ident, seq) + payload) \
                if v == 4 else 0
            sock.sendto(struct.pack("!BBHHH", request, 0, csum, ident, seq) + payload, (dst, 0))
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    packet, peer = sock.recvfrom(2048)
                except TimeoutError:
                    break
                icmp = packet[(packet[0] & 0x0F) * 4:] if v == 4 else packet  # v4: IP header
                if len(icmp) < 8 or peer[0] != dst:
                    continue
                kind, _code, _sum, rid, rseq = struct.unpack("!BBHHH", icmp[:8])
                if kind == reply and rid == ident and rseq == seq and icmp[8:] == payload:
                    replies += 1
                    break
    return replies


@dataclass
class StreamLog:
    """A numbered udp_stream's record: when each datagram left, and which arrived."""

    sent_at: list[float] = field(default_factory=list)  # time.monotonic() of datagram k
    received: set[int] = field(default_factory=set)

    def lost(self) -> list[int]:
        """Datagrams sent and never received, in order."""
        return [k for k in range(len(self.sent_at)) if k not in self.received]


@contextlib.contextmanager
def udp_stream(src_ns: str, dst_ns: str, bind: str, to: str, port: int = 7100,
               interval: float = 0.005, sport: int = 0, log: StreamLog | None = None):
    """Datagrams from `src_ns` (source port `sport`, 0: any) to `to`:port, received in
    `dst_ns` on `bind`:port while the block runs; yields [sent, received], final once
    the block has ended. Each datagram carries its number: with `log`, which ones
    arrived and when each was sent (a loss window).

    Received concurrently, so that a full socket buffer never counts as a loss.
    """
    counts = [0, 0]
    stop = threading.Event()
    with netns_socket(dst_ns, socket.AF_INET, socket.SOCK_DGRAM) as srv, \
            netns_socket(src_ns, socket.AF_INET, socket.SOCK_DGRAM) as cli:
        srv.bind((bind, port))
        srv.settimeout(2)
        if sport:
            cli.bind(("0.0.0.0", sport))

        def send() -> None:
            pad = b"x" * 56
            while not stop.is_set():
                if log is not None:
                    log.sent_at.append(time.monotonic())
                cli.sendto(struct.pack("!Q", counts[0]) + pad, (to, port))
                counts[0] += 1
                time.sleep(interval)

        def receive() -> None:
            while not stop.is_set() or counts[1] < counts[0]:
                try:
                    data = srv.recv(100)
                except TimeoutError:
                    if stop.is_set():
                        return  # what is still missing is lost
                    continue  # a gap (a failover) is no end: receive what comes after
                counts[1] += 1
                if log is not None and len(data) >= 8:
                    log.received.add(struct.unpack_from("!Q", data)[0])

        threads = [threading.Thread(target=send), threading.Thread(target=receive)]
        for t in threads:
            t.start()
        try:
            yield counts
        finally:
            time.sleep(0.3)  # the last datagrams in flight
            stop.set()
            for t in threads:
                t.join()
