"""Throwaway network namespaces and veth pairs for tests.

Every name carries a run-unique prefix (`run_prefix()`: "t" + PID + random), so
parallel runs and other developers' tests never collide, and everything is
removed on exit even when the test fails. Traffic stays between the namespaces
created here: no link reaches the root netns and no default route is added.

Plain use (no pytest needed)::

    with NetnsLab() as lab:
        a, b = lab.netns("a"), lab.netns("b")
        lab.veth(a, "192.0.2.1/24", b, "192.0.2.2/24")
        assert ping(a, "192.0.2.2") == 3

With pytest: `from netns_util import netns_lab` in a test module, then take the
`netns_lab` fixture (it skips with a reason when the machine cannot run it).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from types import TracebackType

from natgw.netns import netns_exists, netns_socket

IFNAMSIZ = 15
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


def run_prefix() -> str:
    """A short prefix unique to this run, e.g. "t4242a7" (7 characters)."""
    return f"t{os.getpid() % 10000}{secrets.token_hex(1)}"


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def netns_unavailable_reason() -> str | None:
    """Why netns tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    return None


class NetnsLab:
    """Creates uniquely named netns, veth pairs and names; removes them on close().

    Cleanup runs in reverse order of registration: callbacks added with
    `on_cleanup` (e.g. stopping a daemon that lives in a netns) run before the
    namespaces they live in are deleted.
    """

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or run_prefix()
        self._cleanups: list[Callable[[], None]] = []
        self._count = 0

    def name(self, tag: str) -> str:
        """prefix + tag, checked to fit a Linux interface name (15 characters)."""
        name = f"{self.prefix}{tag}"
        if len(name) > IFNAMSIZ:
            raise ValueError(f"{name!r} is longer than {IFNAMSIZ} characters")
        return name

    def on_cleanup(self, fn: Callable[[], None]) -> None:
        self._cleanups.append(fn)

    def netns(self, tag: str) -> str:
        """Create netns prefix+tag with loopback up; returns its name."""
        name = self.name(tag)
        _ip("netns", "add", name)
        self.on_cleanup(lambda: _delete_netns(name))
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def veth(self, ns_a: str, cidr_a: str | None, ns_b: str, cidr_b: str | None) -> tuple[str, str]:
        """A veth pair from ns_a to ns_b, both ends up, optionally addressed.

        Returns the two interface names. They go away with their netns.
        """
        self._count += 1
        end_a, end_b = self.name(f"v{self._count}a"), self.name(f"v{self._count}b")
        _ip("link", "add", end_a, "netns", ns_a, "type", "veth", "peer", end_b, "netns", ns_b)
        for netns, ifname, cidr in ((ns_a, end_a, cidr_a), (ns_b, end_b, cidr_b)):
            if cidr is not None:
                add_address(netns, ifname, cidr)
            link_up(netns, ifname)
        return end_a, end_b

    def close(self) -> None:
        """Undo everything, newest first; keeps going past failures, then raises the first."""
        errors: list[BaseException] = []
        while self._cleanups:
            try:
                self._cleanups.pop()()
            except Exception as exc:  # cleanup must go on
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> NetnsLab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _delete_netns(name: str) -> None:
    if netns_exists(name):  # a test may have deleted it itself
        _ip("netns", "del", name)


def add_address(netns: str, ifname: str, cidr: str) -> None:
    """Add address `cidr` (e.g. "192.0.2.1/24") to `ifname` in `netns`."""
    _ip("-n", netns, "address", "add", cidr, "dev", ifname)


def link_up(netns: str, ifname: str) -> None:
    _ip("-n", netns, "link", "set", ifname, "up")


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


try:  # fixtures for pytest users; the helpers above do not need pytest
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def netns_lab() -> Iterator[NetnsLab]:
        """A NetnsLab removed after the test; skips when netns cannot be used."""
        reason = netns_unavailable_reason()
        if reason is not None:
            pytest.skip(reason)
        with NetnsLab() as lab:
            yield lab
