"""NetnsLab: throwaway namespaces and veth pairs under one run prefix, for tests.

Every name carries a run-unique prefix (`run_prefix()`: "t" + PID + random), so
parallel runs and other developers' tests never collide, and everything is
removed on close, even when the test fails. Traffic stays between the namespaces
created here: no link reaches the root netns and no default route is added.

    with NetnsLab() as lab:
        a, b = lab.netns("a"), lab.netns("b")
        lab.veth(a, "192.0.2.1/24", b, "192.0.2.2/24")
        assert ping(a, "192.0.2.2") == 3

tests/conftest.py offers it as the `netns_lab` fixture.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from types import TracebackType

from lab.net import add_address, add_netns, check_name, delete_netns, run_prefix, veth


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
        return check_name(f"{self.prefix}{tag}")

    def on_cleanup(self, fn: Callable[[], object]) -> None:
        self._cleanups.append(fn)

    def netns(self, tag: str) -> str:
        """Create netns prefix+tag with loopback up; returns its name."""
        name = self.name(tag)
        self.on_cleanup(lambda: delete_netns(name))
        return add_netns(name)

    def veth(self, ns_a: str, cidr_a: str | None, ns_b: str, cidr_b: str | None) -> tuple[str, str]:
        """A veth pair from ns_a to ns_b, both ends up, optionally addressed.

        Returns the two interface names. They go away with their netns.
        """
        self._count += 1
        end_a, end_b = self.name(f"v{self._count}a"), self.name(f"v{self._count}b")
        veth(ns_a, end_a, ns_b, end_b)
        for netns, ifname, cidr in ((ns_a, end_a, cidr_a), (ns_b, end_b, cidr_b)):
            if cidr is not None:
                add_address(netns, ifname, cidr)
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
