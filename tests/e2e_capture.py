"""tshark captures in a gateway netns, bounded, and what they saw.

    cap = Capture(run.gw(2), run.tunnel_dev(2, 1), "ip", tmp / "w21.pcapng")
    with capturing(cap, probe=lambda: ping(run.pod(1), "10.112.1.10", 1)):
        ...traffic...
    for p in cap.packets():
        p.src, p.addrs, p.bad_checksums(), ...

A capture is `tshark -i DEV -f FILTER -w FILE` inside the netns, bounded by a
packet count and a duration (`-c`, `-a duration:`) and stopped by SIGINT to
its PID once the traffic is done; `capturing` starts several at once and
returns only when all of them see the probe traffic. The file is then read back once with every
checksum check turned on (`-o ip.check_checksum:TRUE` and so on; ICMP and
ICMPv6 checksums are always checked).

Where to capture: the capture tap sees a sent packet after the kernel finished
it, but a CHECKSUM_PARTIAL packet on a device that offloads checksums is never
finished by the kernel, so a tap on it shows a checksum field that is only a
pseudo-header seed ("Bad" to tshark, fine on the wire). The harness turns tx
checksumming off on every gateway veth end and tunnel device, so whatever a
gateway sends there is complete when tapped, and whatever it receives was
completed by the gateway that sent it. (wireguard-go 0.0.2022 offers the
kernel no offloads at all; kernel WireGuard and newer wireguard-go do.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

SETTLE = 0.5  # seconds between the last packet and stopping a capture

# Wireshark's checksum status values (proto_checksum_enum_e), as `-T fields` prints them.
CSUM_BAD, CSUM_GOOD = "0", "1"
# A TCP checksum 0xffff where 0x0000 is due: the other ones' complement zero. Receivers
# accept it, and the kernel writes it itself: skb_checksum_help() stores a folded 0 as
# CSUM_MANGLED_0 (0xffff), for TCP too, so about one in 65536 segments it completes in
# software carries it (seen on a plain gateway, with no natgw on the path). tshark
# calls it Bad (RFC 1624); here it counts as neither bad nor good.
CSUM_NEGATIVE_ZERO = "-0"
CHECKSUMMED = ("ip", "tcp", "udp", "icmp", "icmpv6")

# IPv6 link-local chatter (router and neighbour discovery, MLD) is the kernel's own.
NOT_LINK_LOCAL = "not (ip6 and (src net fe80::/10 or src host ::))"

_FIELDS = ("frame.number", "frame.protocols", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst",
           "udp.srcport", "udp.dstport", "wg.type", "icmp.type", "icmpv6.type", "tcp.flags.syn",
           "tcp.flags.ack", "tcp.options.mss_val", "tcp.checksum", "tcp.checksum_calculated",
           *(f"{p}.checksum.status" for p in CHECKSUMMED))
_READ_OPTIONS = ("-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
                 "-o", "udp.check_checksum:TRUE", "-o", "ip.defragment:TRUE",
                 "-o", "ipv6.defragment:TRUE")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


@dataclass
class Packet:
    """One captured packet; lists hold every occurrence, outer header first, then quotes."""

    capture: Path  # the file, kept in the test's tmp_path
    number: int  # frame number in it
    protocols: list[str]  # frame.protocols, e.g. ["raw", "ip", "icmp", "ip", "udp"]
    addrs: list[str]  # every IPv4/IPv6 source and destination, quoted packets included
    src: str  # the outer header's
    dst: str
    udp_ports: list[int]
    wg_types: list[int]  # WireGuard message types (4: transport data)
    icmp_types: list[int]  # ICMP and ICMPv6 types
    syn: bool  # the (outer) TCP header's SYN and ACK flags, and its MSS option
    ack: bool
    mss: int | None
    checksums: dict[str, list[str]] = field(default_factory=dict)

    def __str__(self) -> str:
        return (f"frame {self.number} of {self.capture} ({':'.join(self.protocols)}, "
                f"{self.src} > {self.dst}, checksums {self.checksums})")

    def bad_checksums(self) -> list[str]:
        return [proto for proto, states in self.checksums.items() for s in states
                if s == CSUM_BAD]

    def good_checksums(self) -> list[str]:
        return [proto for proto, states in self.checksums.items() for s in states
                if s == CSUM_GOOD]


def _packet(capture: Path, line: str) -> Packet:
    values = dict(zip(_FIELDS, line.rstrip("\n").split("\t"), strict=False))
    protocols = values.get("frame.protocols", "").split(":")
    v4 = values.get("ip.src", "").split(",") + values.get("ip.dst", "").split(",")
    v6 = values.get("ipv6.src", "").split(",") + values.get("ipv6.dst", "").split(",")
    outer = "ip" if "ip" in protocols and ("ipv6" not in protocols or
                                           protocols.index("ip") < protocols.index("ipv6")) \
        else "ipv6"
    src = values.get(f"{outer}.src", "").split(",")[0]
    dst = values.get(f"{outer}.dst", "").split(",")[0]
    return Packet(
        capture=capture,
        number=int(values["frame.number"]),
        protocols=protocols,
        addrs=[a for a in v4 + v6 if a],
        src=src,
        dst=dst,
        udp_ports=_ints(values.get("udp.srcport", "")) + _ints(values.get("udp.dstport", "")),
        wg_types=_ints(values.get("wg.type", "")),
        icmp_types=_ints(values.get("icmp.type", "")) + _ints(values.get("icmpv6.type", "")),
        syn=_ints(values.get("tcp.flags.syn", ""))[:1] == [1],
        ack=_ints(values.get("tcp.flags.ack", ""))[:1] == [1],
        mss=(_ints(values.get("tcp.options.mss_val", "")) or [None])[0],
        checksums=_checksums(values),
    )


def _checksums(values: dict[str, str]) -> dict[str, list[str]]:
    out = {p: [s for s in values.get(f"{p}.checksum.status", "").split(",") if s]
           for p in CHECKSUMMED}
    fields = values.get("tcp.checksum", "").split(",")
    computed = values.get("tcp.checksum_calculated", "").split(",")
    tcp = out["tcp"]
    for k, status in enumerate(tcp):
        if (status == CSUM_BAD and k < len(fields) and k < len(computed)
                and int(fields[k], 16) == 0xFFFF and int(computed[k], 16) == 0):
            tcp[k] = CSUM_NEGATIVE_ZERO
    return out


class Capture:
    """tshark on `device` in `netns` with capture filter `bpf_filter`, into `path`."""

    def __init__(self, netns: str, device: str, bpf_filter: str, path: Path,
                 max_packets: int = 20000, max_seconds: int = 60) -> None:
        self.netns, self.device, self.filter, self.path = netns, device, bpf_filter, Path(path)
        self.max_packets, self.max_seconds = max_packets, max_seconds
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: list[str] = []
        self.count = 0  # packets captured so far

    def start(self, timeout: float = 20.0) -> None:
        """Start tshark and wait until it captures."""
        self.launch()
        self.wait_started(timeout)

    def launch(self) -> None:
        """Start tshark without waiting (captures start in parallel, see `capturing`)."""
        # -P -l: a summary line on stdout per packet as it is captured, so that
        # `count` tells when the capture really runs (see `capturing`).
        self._proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "tshark", "-n", "-l", "-P", "-i", self.device,
             "-f", self.filter, "-w", str(self.path), "-c", str(self.max_packets),
             "-a", f"duration:{self.max_seconds}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True)
        self._capturing = threading.Event()

        def read_stderr(proc: subprocess.Popen[str], capturing: threading.Event) -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                self._stderr.append(line)
                if line.startswith("Capturing on"):
                    capturing.set()
            capturing.set()  # tshark ended: stop waiting

        def count_stdout(proc: subprocess.Popen[str]) -> None:
            assert proc.stdout is not None
            for _ in proc.stdout:
                self.count += 1

        threading.Thread(target=read_stderr, args=(self._proc, self._capturing),
                         daemon=True).start()
        threading.Thread(target=count_stdout, args=(self._proc,), daemon=True).start()

    def wait_started(self, timeout: float = 20.0) -> None:
        """Wait until tshark says it captures."""
        assert self._proc is not None
        if not self._capturing.wait(timeout) or self._proc.poll() is not None:
            self.stop(settle=0)
            raise RuntimeError(f"tshark on {self.netns}/{self.device} did not start: "
                               f"{''.join(self._stderr).strip()}")

    def stop(self, settle: float = SETTLE) -> None:
        """SIGINT to tshark (by PID) after `settle` seconds: it stops dumpcap, closes the file.

        dumpcap gets packets from the kernel in blocks, handed over when full or
        after a timeout: stopped at once, it misses the last few.
        """
        if self._proc is None:
            return
        if self._proc.poll() is None:
            time.sleep(settle)
            os.kill(self._proc.pid, signal.SIGINT)
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=5)

    def packets(self) -> list[Packet]:
        """The captured packets, dissected with every checksum verified."""
        args = ["tshark", "-n", "-r", str(self.path), *_READ_OPTIONS, "-T", "fields",
                "-E", "occurrence=a", "-E", "aggregator=,", "-E", "separator=/t"]
        for f in _FIELDS:
            args += ["-e", f]
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"tshark -r {self.path}: {done.stderr.strip()}")
        return [_packet(self.path, line) for line in done.stdout.splitlines() if line.strip()]

    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@contextlib.contextmanager
def capturing(*captures: Capture, probe: Callable[[], object],
              timeout: float = 15.0) -> Iterator[tuple[Capture, ...]]:
    """Run several captures at once, from a moment when all of them see packets.

    tshark says "Capturing on" a little before packets really arrive, so
    `probe` (some of the traffic under test, e.g. one ping) is repeated until
    every capture has counted a packet. All stop together after the block.
    """
    try:
        for cap in captures:
            cap.launch()
        for cap in captures:
            cap.wait_started()
        deadline = time.monotonic() + timeout
        while not all(cap.count for cap in captures):
            if time.monotonic() > deadline:
                idle = [f"{c.netns}/{c.device}" for c in captures if not c.count]
                raise RuntimeError(f"captures on {', '.join(idle)} saw none of the probes")
            probe()
            time.sleep(0.05)
        yield captures
    finally:
        time.sleep(SETTLE)
        for cap in captures:
            cap.stop(settle=0)
