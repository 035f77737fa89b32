"""The Engine interface and `select_engine` for the `engine:` config setting."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from natgw.wireguard.kernel import MODULE_MISSING, KernelEngine
from natgw.wireguard.model import DeviceConfig, DeviceStatus, WireGuardError
from natgw.wireguard.plan import Plan
from natgw.wireguard.userspace import WireGuardGoEngine

ENGINE_NAMES = ("auto", "kernel", "wireguard-go")


class Engine(Protocol):
    """A WireGuard implementation. netns None means natgw's own netns.

    Link state (up/down, MTU, addresses, routes) is the caller's: engines only
    create the device and manage its WireGuard keys and peers.
    """

    name: str

    def ensure_device(self, ifname: str, netns: str | None) -> None:
        """Create the device if missing; a no-op when it exists."""
        ...

    def configure(self, ifname: str, netns: str | None, cfg: DeviceConfig) -> None:
        """Make the device's WireGuard state equal `cfg`, touching only what differs."""
        ...

    def apply_plan(self, ifname: str, netns: str | None, plan: Plan) -> None:
        """Write a known difference without reading the device back (a hub's edits)."""
        ...

    def status(self, ifname: str, netns: str | None, timeout: float | None = None
               ) -> DeviceStatus:
        """The device's state and counters. `timeout`: at most this many seconds for an
        engine that can stall (wireguard-go's UAPI answers only when the device's locks
        are free; its sends block while a peer's endpoint has no neighbour entry)."""
        ...

    def delete(self, ifname: str, netns: str | None) -> None:
        """Remove the device; a no-op when it does not exist."""
        ...

    def is_alive(self, ifname: str, netns: str | None) -> bool:
        """False when the device needs ensure_device + configure again."""
        ...


def _modprobe() -> None:
    modprobe = shutil.which("modprobe")
    if modprobe is not None:
        subprocess.run(
            [modprobe, "-q", "wireguard"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )


def kernel_module_available(
    sys_module: Path = Path("/sys/module"), load: Callable[[], None] | None = _modprobe
) -> bool:
    """True when the wireguard module is loaded or built in, loading it if allowed."""
    if (sys_module / "wireguard").is_dir():
        return True
    if load is None:
        return False
    load()
    return (sys_module / "wireguard").is_dir()


def select_engine(
    name: str,
    *,
    kernel_available: Callable[[], bool] = kernel_module_available,
    which: Callable[[str], str | None] = shutil.which,
) -> Engine:
    """The engine for config value `name`: "auto", "kernel" or "wireguard-go".

    auto prefers the kernel module and falls back to wireguard-go.
    """
    if name not in ENGINE_NAMES:
        raise WireGuardError(f"engine {name!r}: expected one of {', '.join(ENGINE_NAMES)}")
    if name in ("auto", "kernel") and kernel_available():
        return KernelEngine()
    if name == "kernel":
        raise WireGuardError(MODULE_MISSING)
    if which("wireguard-go") is None:
        if name == "auto":
            raise WireGuardError(
                "engine auto: no WireGuard kernel module and no wireguard-go on PATH"
            )
        raise WireGuardError("engine wireguard-go: wireguard-go not found on PATH")
    return WireGuardGoEngine()
