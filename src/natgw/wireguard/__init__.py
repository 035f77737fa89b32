"""WireGuard tunnel engines: the kernel module (pyroute2) or wireguard-go (UAPI).

See docs/wireguard-engines.md. Typical use::

    engine = select_engine("auto")
    engine.ensure_device("wg0", "gw")
    engine.configure("wg0", "gw", DeviceConfig(private_key=key, listen_port=51820, peers=...))
"""

from natgw.wireguard.engines import ENGINE_NAMES, Engine, kernel_module_available, select_engine
from natgw.wireguard.kernel import KernelEngine
from natgw.wireguard.model import (
    DeviceConfig,
    DeviceStatus,
    PeerConfig,
    PeerStatus,
    WireGuardError,
)
from natgw.wireguard.userspace import WireGuardGoEngine

__all__ = [
    "ENGINE_NAMES",
    "DeviceConfig",
    "DeviceStatus",
    "Engine",
    "KernelEngine",
    "PeerConfig",
    "PeerStatus",
    "WireGuardError",
    "WireGuardGoEngine",
    "kernel_module_available",
    "select_engine",
]
