"""The difference between a device's current WireGuard state and a desired config.

Both engines apply only this difference, never "replace all peers": replacing a
peer drops its session, so re-applying an unchanged config would cut traffic.
Setting an unchanged peer's endpoint/allowed-ips/keepalive keeps its session.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from natgw.wireguard.model import DeviceConfig, DeviceState, PeerConfig, PeerStatus


@dataclass(frozen=True)
class Plan:
    """Changes to make, in order: device fields, peer removals, peer upserts."""

    private_key: bytes | None = field(default=None, repr=False)  # None: unchanged
    listen_port: int | None = None  # None: unchanged
    remove: tuple[bytes, ...] = ()  # public keys
    upsert: tuple[PeerConfig, ...] = ()  # new or changed peers, written in full

    def is_empty(self) -> bool:
        return (
            self.private_key is None
            and self.listen_port is None
            and not self.remove
            and not self.upsert
        )


def peer_differs(current: PeerStatus, desired: PeerConfig) -> bool:
    """True when writing `desired` would change the device's peer."""
    # No desired endpoint: keep whatever the peer roamed to (it cannot be unset anyway).
    if desired.endpoint is not None and desired.endpoint != current.endpoint:
        return True
    if set(desired.allowed_ips) != set(current.allowed_ips):
        return True
    return (desired.persistent_keepalive or 0) != (current.persistent_keepalive or 0)


def plan_changes(current: DeviceState, desired: DeviceConfig) -> Plan:
    """What to write so that the device's state equals `desired`."""
    have = {p.public_key: p for p in current.peers}
    want = {p.public_key for p in desired.peers}
    upsert = tuple(
        p for p in desired.peers if p.public_key not in have or peer_differs(have[p.public_key], p)
    )
    port = desired.listen_port
    return Plan(
        private_key=None if current.private_key == desired.private_key else desired.private_key,
        listen_port=None if port is None or port == current.listen_port else port,
        remove=tuple(p.public_key for p in current.peers if p.public_key not in want),
        upsert=upsert,
    )
