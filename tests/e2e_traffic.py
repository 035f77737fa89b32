"""End-to-end traffic between the pods of a harness run, as a user's programs see it.

The helpers open sockets inside a pod's netns from the test process
(`netns_socket`, or `in_netns` for many), with servers in threads: ping (IPv4 and IPv6), a TCP bulk
transfer checked by hash, many short TCP connections, UDP request/response of
any size, a UDP send to a closed port, the route cache's path MTU.

`harness_run(topology)` is the fixture body: it builds a run under a fresh
prefix, waits until every pod reaches every other, yields it and destroys it
in `finally`. `TrafficChecks` is what every scenario checks; a scenario module
subclasses it with its `topology`, and gets one built run for all its tests
(a class-scoped fixture: one class per module) per fastpath (FASTPATHS: the
default and off, the kernel's forwarding path alone), each test once per
ordered pair of clusters and address family.
"""

from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from e2e_capture import NOT_LINK_LOCAL, Capture, capturing

from lab import harness
from lab.harness import Run, Topology
from lab.net import natgw_programs, ping
from lab.netnslab import netns_unavailable_reason
from natgw.netns import netns_socket

FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
# Every scenario passes with the fast path (the default) and without it.
FASTPATHS = ("auto", "off")
TOOLS = ("wireguard-go", "wg", "tshark", "ethtool", "nstat")
TIMEOUT = 10.0  # seconds for any single socket operation


def e2e_unavailable_reason() -> str | None:
    reason = netns_unavailable_reason()
    if reason is None:
        missing = [t for t in TOOLS if shutil.which(t) is None]
        if missing:
            reason = f"needs {', '.join(missing)} (make setup)"
    return reason


def harness_run(topology: Topology, reachable: bool = True) -> Iterator[Run]:
    """Build a run (a fresh prefix), wait until all pods reach each other (unless not
    `reachable`: the caller checks what it needs), destroy it after."""
    reason = e2e_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    run = harness.build(topology)  # removes what it made if it fails
    try:
        if reachable:
            wait_reachable(run)
        yield run
    finally:
        harness.destroy(run)


def wait_reachable(run: Run, timeout: float = 30.0) -> None:
    """Ping every ordered pair until it answers (tunnel handshakes, neighbour discovery)."""
    topo = run.topology
    deadline = time.monotonic() + timeout
    for v in topo.families:
        for i, j in topo.pairs:
            dst = topo.addr_of(i, j, v)
            while ping(run.pod(i), dst, count=1, timeout=0.5) != 1:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{run.pod(i)} never reached {dst} (cluster {j})")


# --- servers in threads ------------------------------------------------------------------


class Background:
    """Runs fn in a thread; join() returns its result or raises its exception."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self._result: object = None
        self._error: BaseException | None = None

        def body() -> None:
            try:
                self._result = fn()
            except BaseException as e:  # handed to join()
                self._error = e

        self._thread = threading.Thread(target=body, daemon=True)
        self._thread.start()

    def join(self, timeout: float = 60.0) -> object:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("server thread did not finish")
        if self._error is not None:
            raise self._error
        return self._result


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def in_netns(netns: str, fn: Callable[[], object]) -> Background:
    """Run fn in a new thread that has entered `netns` (setns(2) moves only that thread).

    Sockets fn makes live in that netns. For many sockets this is much cheaper
    than `netns_socket`, which forks a helper process per socket.
    """

    def body() -> object:
        fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns {netns}: {os.strerror(err)}")
        finally:
            os.close(fd)
        return fn()

    return Background(body)


def _listener(netns: str, addr: str, kind: int) -> socket.socket:
    sock = netns_socket(netns, FAMILY[ipaddress.ip_address(addr).version], kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((addr, 0))
    sock.settimeout(TIMEOUT)
    if kind == socket.SOCK_STREAM:
        sock.listen(64)
    return sock


def _recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# --- TCP -----------------------------------------------------------------------------------


@dataclass
class Transfer:
    sent: str  # sha256 of what the client sent
    received: str  # sha256 of what the server received
    echoed: str  # the server's digest as it came back to the client
    client_seen_as: str  # the client's address as the server saw it


def tcp_bulk(client_ns: str, server_ns: str, server_addr: str, dst: str, size: int) -> Transfer:
    """Send `size` random bytes over one TCP connection; the server hashes and answers."""
    data = os.urandom(size)
    with _listener(server_ns, server_addr, socket.SOCK_STREAM) as srv:
        port = srv.getsockname()[1]

        def serve() -> tuple[str, str]:
            conn, peer = srv.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                h = hashlib.sha256()
                while chunk := conn.recv(1 << 16):
                    h.update(chunk)
                conn.sendall(h.hexdigest().encode())
            return h.hexdigest(), peer[0]

        server = Background(serve)
        with netns_socket(client_ns, srv.family, socket.SOCK_STREAM) as cli:
            cli.settimeout(TIMEOUT)
            cli.connect((dst, port))
            cli.sendall(data)
            cli.shutdown(socket.SHUT_WR)
            echoed = _recv_all(cli).decode()
        received, peer = server.join()
    return Transfer(hashlib.sha256(data).hexdigest(), received, echoed, peer)


@dataclass
class Connections:
    answered: int  # connections whose answer was right
    client_seen_as: set[str]  # client addresses the server saw


def tcp_many(client_ns: str, server_ns: str, server_addr: str, dst: str,
             count: int) -> Connections:
    """`count` short connections one after another: a line there, an answer back, close."""
    with _listener(server_ns, server_addr, socket.SOCK_STREAM) as srv:
        port = srv.getsockname()[1]

        def serve() -> set[str]:
            peers = set()
            for _ in range(count):
                conn, peer = srv.accept()
                with conn:
                    conn.settimeout(TIMEOUT)
                    line = b""
                    while not line.endswith(b"\n") and (chunk := conn.recv(100)):
                        line += chunk
                    conn.sendall(b"re: " + line)
                peers.add(peer[0])
            return peers

        def connect_many() -> int:
            answered = 0
            for k in range(count):
                with socket.socket(srv.family, socket.SOCK_STREAM) as cli:
                    cli.settimeout(TIMEOUT)
                    cli.connect((dst, port))
                    cli.sendall(f"hello {k}\n".encode())
                    answered += _recv_all(cli) == f"re: hello {k}\n".encode()
            return answered

        server = Background(serve)
        answered = in_netns(client_ns, connect_many).join()
        peers = server.join()
    return Connections(answered, peers)


# --- UDP -----------------------------------------------------------------------------------


@dataclass
class Exchange:
    server_got: bytes  # the request as the server read it
    client_seen_as: str  # where the server saw it come from
    reply: bytes  # the server's answer (the request reversed) as the client read it
    reply_from: str


def udp_exchange(client_ns: str, server_ns: str, server_addr: str, dst: str, payload: bytes,
                 attempts: int = 6, timeout: float = 0.25) -> Exchange:
    """One request/response, resent like an application would: after `timeout`, doubling.

    Resending matters for IPv6 datagrams above the path MTU: only the sender
    fragments, so the first one is lost with a Packet Too Big that teaches the
    sender the path MTU (and so may the server's first answer).
    """
    with _listener(server_ns, server_addr, socket.SOCK_DGRAM) as srv:
        port = srv.getsockname()[1]
        stop = threading.Event()

        def serve() -> tuple[bytes, str]:
            got, peer = b"", ""
            srv.settimeout(0.1)
            while not stop.is_set():
                try:
                    got, addr = srv.recvfrom(65535)
                except TimeoutError:
                    continue
                peer = addr[0]
                srv.sendto(got[::-1], addr)
            return got, peer

        server = Background(serve)
        try:
            with netns_socket(client_ns, srv.family, socket.SOCK_DGRAM) as cli:
                for attempt in range(attempts):
                    cli.settimeout(timeout * 2**attempt)
                    cli.sendto(payload, (dst, port))
                    try:
                        reply, addr = cli.recvfrom(65535)
                    except TimeoutError:
                        continue
                    break
                else:
                    raise AssertionError(f"no UDP answer from {dst} in {attempts} attempts")
        finally:
            stop.set()
            got, peer = server.join()
    return Exchange(got, peer, reply, addr[0])


def udp_refused(client_ns: str, dst: str, port: int = 9, attempts: int = 3) -> bool:
    """A connected UDP socket sends to a closed port; True when it gets ECONNREFUSED.

    The port unreachable that causes it comes back through natgw, which must
    translate the packet it quotes back to what this socket sent.
    """
    family = FAMILY[ipaddress.ip_address(dst).version]
    with netns_socket(client_ns, family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        sock.connect((dst, port))
        for _ in range(attempts):
            sock.send(b"anyone there?")
            try:
                sock.recv(100)
            except ConnectionRefusedError:
                return True
            except TimeoutError:
                continue
    return False


# --- kernel state ----------------------------------------------------------------------------


def ip_cmd(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def route_mtu(netns: str, dst: str) -> int | None:
    """The MTU `ip route get` shows for dst (a learned path MTU), None if none."""
    m = re.search(r"\bmtu (?:lock )?(\d+)", ip_cmd("-n", netns, "route", "get", dst))
    return int(m.group(1)) if m else None


def csum_errors(netns: str) -> dict[str, int]:
    """Checksum errors the netns's TCP, UDP and ICMP stacks counted."""
    done = subprocess.run(["ip", "netns", "exec", netns, "nstat", "-asz", "TcpInCsumErrors",
                           "UdpInCsumErrors", "Udp6InCsumErrors", "IcmpInCsumErrors",
                           "Icmp6InCsumErrors"], capture_output=True, text=True, timeout=10,
                          check=True)
    return {line.split()[0]: int(line.split()[1]) for line in done.stdout.splitlines()
            if line and not line.startswith("#")}


# --- what every scenario checks --------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """Traffic from cluster `src`'s pod to cluster `dst`'s pod over IPv`v`."""

    src: int
    dst: int
    v: int

    def __str__(self) -> str:
        return f"c{self.src}-c{self.dst}-ipv{self.v}"


BULK = 4 * 1024 * 1024
SHORT_CONNECTIONS = 200
BIG_DATAGRAM = 4000  # above the tunnel MTU (1420) and the pod links' (1500): fragmented
POD_LINK_MTU = UNDERLAY_MTU = 1500  # veths' default
LOWERED_MTU = 1300  # a gateway's route to its pod, below what TCP sends over the tunnel


class TrafficChecks:
    """Every scenario's checks; subclass as `TestSomething` with `topology = Topology(...)`."""

    topology: Topology

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "case" in metafunc.fixturenames:
            topo = metafunc.cls.topology
            cases = [Case(i, j, v) for v in topo.families for i, j in topo.pairs]
            metafunc.parametrize("case", cases, ids=str)

    @pytest.fixture(scope="class", params=FASTPATHS)
    @classmethod
    def run(cls, request: pytest.FixtureRequest) -> Iterator[Run]:
        yield from harness_run(replace(cls.topology, fastpath=request.param))

    # Addresses, from the topology: how the client reaches the server, how the
    # server's cluster knows the client's.
    @staticmethod
    def ends(run: Run, case: Case) -> tuple[str, str, str, str]:
        """(client netns, server netns, server's own address, address the client dials)."""
        topo = run.topology
        return (run.pod(case.src), run.pod(case.dst), topo.pod_addr(case.dst, case.v),
                topo.addr_of(case.src, case.dst, case.v))

    @staticmethod
    def mss_on_the_wire(run: Run, sender: int, v: int) -> int:
        """The MSS of a SYN from cluster `sender`'s pod between the gateways."""
        own = POD_LINK_MTU - (40 if v == 4 else 60)
        if run.topology.is_plain(sender):
            return own
        link_mtu = harness.TUNNEL_MTU if run.topology.link == "tunnel" else UNDERLAY_MTU
        return min(own, link_mtu - (40 if v == 4 else 60))

    def test_ping(self, run: Run, case: Case) -> None:
        client, _, _, dst = self.ends(run, case)
        assert ping(client, dst, count=3) == 3

    @pytest.mark.parametrize("hops", [1, 2])
    def test_ttl_expiring_at_a_gateway_gets_time_exceeded(self, run: Run, case: Case,
                                                          hops: int) -> None:
        """TTL 1 expires at our gateway, 2 at the far one (after the tunnel): the fast path
        hands both to the stack, which answers time exceeded, as without it."""
        client, _, _, dst = self.ends(run, case)
        if hops == 2 and run.topology.is_plain(case.dst):
            pytest.skip("a plain gateway is not natgw's")
        out = subprocess.run(["ip", "netns", "exec", client, "ping", f"-{case.v}", "-c", "1",
                              "-W", "3", "-t", str(hops), dst], capture_output=True, text=True,
                             timeout=15).stdout
        assert re.search(r"Time to live exceeded|Time exceeded: Hop limit", out), out

    def test_fast_path_forwards_both_ways_or_is_off(self, run: Run) -> None:
        """With the fast path every natgw gateway's pod link is a LAN device whose
        program redirects pod traffic to the peers, and the peers' ingress programs
        redirect the replies; with `off` no device runs a fast-path program."""
        from natgw.introspect import read_gateway

        topo = run.topology
        for v in topo.families:
            for i, j in topo.pairs:
                assert ping(run.pod(i), topo.addr_of(i, j, v), count=3) == 3
        for i in range(1, topo.clusters + 1):
            if topo.is_plain(i):
                continue
            devices = read_gateway(f"{run.prefix}c{i}").devices
            on_lan = natgw_programs(run.gw(i), run.pod_link(i)).get("ingress")
            lan = [d for d in devices if d.lan]
            if topo.fastpath == "off":
                assert lan == [] and on_lan is None
                assert all(d.fastpath == {} for d in devices)
                continue
            assert [d.ifname for d in lan] == [run.pod_link(i)] and on_lan == "lan"
            redirected = {d.ifname: sum(c for name, c in d.fastpath.items()
                                        if name.startswith("redirect")) for d in devices}
            assert all(redirected.values()), (i, {d.ifname: d.fastpath for d in devices})

    def test_tcp_bulk_arrives_intact_from_the_client_as_the_server_knows_it(
            self, run: Run, case: Case) -> None:
        client, server, own, dst = self.ends(run, case)
        errors = csum_errors(server)
        t = tcp_bulk(client, server, own, dst, BULK)
        assert t.received == t.sent and t.echoed == t.sent
        assert t.client_seen_as == run.topology.addr_of(case.dst, case.src, case.v)
        assert csum_errors(server) == errors

    def test_many_short_tcp_connections(self, run: Run, case: Case) -> None:
        client, server, own, dst = self.ends(run, case)
        c = tcp_many(client, server, own, dst, SHORT_CONNECTIONS)
        assert c.answered == SHORT_CONNECTIONS
        assert c.client_seen_as == {run.topology.addr_of(case.dst, case.src, case.v)}

    def test_udp_request_response(self, run: Run, case: Case) -> None:
        client, server, own, dst = self.ends(run, case)
        request = os.urandom(200)
        x = udp_exchange(client, server, own, dst, request)
        assert x.server_got == request and x.reply == request[::-1]
        assert x.client_seen_as == run.topology.addr_of(case.dst, case.src, case.v)
        assert x.reply_from == dst

    def test_udp_datagrams_above_the_mtu_arrive_whole(self, run: Run, case: Case) -> None:
        client, server, own, dst = self.ends(run, case)
        errors = csum_errors(server), csum_errors(client)
        request = os.urandom(BIG_DATAGRAM)
        x = udp_exchange(client, server, own, dst, request)
        assert x.server_got == request and x.reply == request[::-1]
        assert x.client_seen_as == run.topology.addr_of(case.dst, case.src, case.v)
        assert (csum_errors(server), csum_errors(client)) == errors

    def test_udp_to_a_closed_port_is_refused(self, run: Run, case: Case) -> None:
        client, _, _, dst = self.ends(run, case)
        assert udp_refused(client, dst)

    def test_on_the_wire(self, run: Run, case: Case, tmp_path: Path) -> None:
        """Captures at both gateways while the pods talk: addresses and checksums.

        Between the gateways (inside the tunnel, or on the underlay for
        interface peers) packets carry the addresses the mappings say, in ICMP
        quotes too. With tunnels, the underlay carries only WireGuard between
        the two gateways. No checksum is bad anywhere (see e2e_capture for why
        these taps see finished checksums).
        """
        topo, i, j, v = run.topology, case.src, case.dst, case.v
        client, server, own, dst = self.ends(run, case)
        for pod in (client, server):  # an IPv6 path MTU learned earlier lowers a SYN's MSS
            ip_cmd("-n", pod, f"-{v}", "route", "flush", "cache")
        pod_traffic = "ip" if v == 4 else f"ip6 and {NOT_LINK_LOCAL}"
        inside = Capture(run.gw(j), run.link_dev(j, i), pod_traffic, tmp_path / "inside.pcapng")
        underlay = Capture(run.gw(i), run.underlay_dev(i, j), f"not arp and {NOT_LINK_LOCAL}",
                           tmp_path / "underlay.pcapng")
        with capturing(inside, underlay, probe=lambda: ping(client, dst, 1, timeout=0.5)):
            assert ping(client, dst, count=2) == 2
            t = tcp_bulk(client, server, own, dst, 256 * 1024)
            assert t.received == t.sent
            udp_exchange(client, server, own, dst, os.urandom(BIG_DATAGRAM))
            assert udp_refused(client, dst)

        there, back = topo.wire(i, j, v), topo.wire(j, i, v)
        seen = inside.packets()
        assert seen, "nothing captured between the gateways"
        assert {(p.src, p.dst) for p in seen} == {there, back}
        assert {a for p in seen for a in p.addrs} <= set(there)  # quoted packets too
        echo, unreachable = ({8, 0}, 3) if v == 4 else ({128, 129}, 1)
        kinds = {k for p in seen for k in p.icmp_types}
        assert echo <= kinds and unreachable in kinds
        assert {"tcp", "udp"} <= {proto for p in seen for proto in p.protocols}
        # MSS: natgw clamps SYN and SYN-ACK on its way out (the pods say 1460 or 1440).
        syn = [p.mss for p in seen if p.syn and not p.ack]
        syn_ack = [p.mss for p in seen if p.syn and p.ack]
        assert syn and syn_ack
        assert set(syn) == {self.mss_on_the_wire(run, sender=i, v=v)}
        assert set(syn_ack) == {self.mss_on_the_wire(run, sender=j, v=v)}

        wire = underlay.packets()
        assert wire, "nothing captured on the underlay"
        if topo.link == "tunnel":
            gateways = {topo.underlay_addr(i, j), topo.underlay_addr(j, i)}
            for p in wire:
                assert set(p.addrs) <= gateways and "udp" in p.protocols and p.wg_types, p
            assert any(4 in p.wg_types for p in wire)  # transport data, encrypted
        else:
            assert {(p.src, p.dst) for p in wire} == {there, back}
            assert {a for p in wire for a in p.addrs} <= set(there)

        for p in seen + wire:
            assert not p.bad_checksums(), f"bad {p.bad_checksums()} checksum: {p}"
        good = {proto for p in seen + wire for proto in p.good_checksums()}
        assert {"tcp", "udp", "icmp" if v == 4 else "icmpv6"} <= good

    def test_path_mtu_discovery_across_the_gateways(self, run: Run, case: Case) -> None:
        """The far gateway's route to its pod gets a lower MTU than the tunnel's.

        TCP sends full-size segments (MSS clamped to the tunnel MTU) with DF;
        the far gateway answers with fragmentation needed / packet too big,
        which crosses back through natgw with its quote translated, and the
        sender's kernel learns the path MTU.

        The MTU is locked: bpf_fib_lookup, and so the fast path, honours a
        route's MTU only when it is locked (README, "Fast path"); the stack
        honours both alike.
        """
        v = case.v
        client, server, own, dst = self.ends(run, case)
        far_gw, host = run.gw(case.dst), f"{own}/{32 if v == 4 else 128}"
        ip_cmd("-n", client, f"-{v}", "route", "flush", "cache")
        assert route_mtu(client, dst) is None
        ip_cmd("-n", far_gw, f"-{v}", "route", "add", host, "dev", run.pod_link(case.dst),
               "mtu", "lock", str(LOWERED_MTU))
        try:
            t = tcp_bulk(client, server, own, dst, 2 * 1024 * 1024)
            assert t.received == t.sent and t.echoed == t.sent
            assert route_mtu(client, dst) == LOWERED_MTU
        finally:
            ip_cmd("-n", far_gw, f"-{v}", "route", "del", host)
            ip_cmd("-n", client, f"-{v}", "route", "flush", "cache")
