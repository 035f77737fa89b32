"""WireGuard tunnel engines: the kernel module (pyroute2) or wireguard-go (UAPI).

See docs/wireguard-engines.md. Typical use::

    engine = select_engine("auto")
    engine.ensure_device("wg0", "gw")
    engine.configure("wg0", "gw", DeviceConfig(private_key=key, listen_port=51820, peers=...))

Names are imported from their modules on first use (PEP 562): reading a
wireguard-go device's status must not pay for pyroute2, which only the
kernel engine needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "ENGINE_NAMES": "engines",
    "Engine": "engines",
    "kernel_module_available": "engines",
    "select_engine": "engines",
    "KernelEngine": "kernel",
    "DeviceConfig": "model",
    "DeviceStatus": "model",
    "HANDSHAKE_FRESH_SECONDS": "model",
    "PeerConfig": "model",
    "PeerStatus": "model",
    "WireGuardError": "model",
    "handshake_fresh": "model",
    "WireGuardGoEngine": "userspace",
}

__all__ = [
    "ENGINE_NAMES",
    "HANDSHAKE_FRESH_SECONDS",
    "DeviceConfig",
    "DeviceStatus",
    "Engine",
    "KernelEngine",
    "PeerConfig",
    "PeerStatus",
    "WireGuardError",
    "WireGuardGoEngine",
    "handshake_fresh",
    "kernel_module_available",
    "select_engine",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from natgw.wireguard.engines import (
        ENGINE_NAMES,
        Engine,
        kernel_module_available,
        select_engine,
    )
    from natgw.wireguard.kernel import KernelEngine
    from natgw.wireguard.model import (
        HANDSHAKE_FRESH_SECONDS,
        DeviceConfig,
        DeviceStatus,
        PeerConfig,
        PeerStatus,
        WireGuardError,
        handshake_fresh,
    )
    from natgw.wireguard.userspace import WireGuardGoEngine
