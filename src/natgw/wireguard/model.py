"""Typed WireGuard configuration and status shared by every tunnel engine.

Keys are raw 32-byte values. A private key is never part of a repr, an error
message or a log line: fields holding one are declared with repr=False.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal

from natgw.keys import KEY_LEN

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
EngineName = Literal["kernel", "wireguard-go"]
# Linux IFNAMSIZ is 16 with the NUL; wireguard-go also uses the name as a file name.
_IFNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")


class WireGuardError(Exception):
    """A tunnel engine failed; the message is one line and carries no key material."""


def check_ifname(ifname: str) -> None:
    """Refuse names Linux would reject or that could escape the run/socket dirs."""
    if not _IFNAME_RE.fullmatch(ifname):
        raise WireGuardError(f"device name {ifname!r}: expected 1-15 of [A-Za-z0-9_.-]")


def _check_key(what: str, key: object) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_LEN:
        raise WireGuardError(f"{what} must be {KEY_LEN} raw bytes")


def normalize_endpoint(endpoint: str) -> str:
    """Canonical "ip:port" / "[ipv6]:port" form, as WireGuard reports endpoints.

    Only IP literals: resolving host names is the config layer's job, so that a
    re-applied config compares equal to what the device reports.
    """
    host, sep, port_text = endpoint.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise WireGuardError(f"endpoint {endpoint!r}: expected ip:port or [ipv6]:port")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        addr = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise WireGuardError(f"endpoint {endpoint!r}: host must be an IP address") from None
    if addr.version == 6 and not bracketed:
        raise WireGuardError(f"endpoint {endpoint!r}: write IPv6 as [addr]:port")
    if addr.version == 4 and bracketed:
        raise WireGuardError(f"endpoint {endpoint!r}: brackets are only for IPv6")
    host_text = f"[{addr}]" if addr.version == 6 else str(addr)
    return f"{host_text}:{int(port_text)}"


def _networks(values: tuple[IPNetwork | str, ...]) -> tuple[IPNetwork, ...]:
    try:
        # strict=False: WireGuard masks host bits itself and reports the network.
        nets = [ipaddress.ip_network(v, strict=False) for v in values]
    except ValueError as exc:
        raise WireGuardError(f"allowed-ips: {exc}") from None
    return tuple(dict.fromkeys(nets))


@dataclass(frozen=True)
class PeerConfig:
    """Desired state of one peer. persistent_keepalive None (or 0) means off."""

    public_key: bytes
    endpoint: str | None = None
    allowed_ips: tuple[IPNetwork, ...] = ()
    persistent_keepalive: int | None = None

    def __post_init__(self) -> None:
        _check_key("peer public key", self.public_key)
        if self.endpoint is not None:
            object.__setattr__(self, "endpoint", normalize_endpoint(self.endpoint))
        object.__setattr__(self, "allowed_ips", _networks(tuple(self.allowed_ips)))
        ka = self.persistent_keepalive
        if ka is not None and not 0 <= ka <= 65535:
            raise WireGuardError(f"persistent keepalive {ka}: expected 0..65535 seconds")
        if ka == 0:
            object.__setattr__(self, "persistent_keepalive", None)


@dataclass(frozen=True)
class DeviceConfig:
    """Desired WireGuard state of a device. listen_port None keeps the current port."""

    private_key: bytes = field(repr=False)
    listen_port: int | None = None
    peers: tuple[PeerConfig, ...] = ()

    def __post_init__(self) -> None:
        _check_key("private key", self.private_key)
        port = self.listen_port
        if port is not None and not 0 < port < 65536:
            raise WireGuardError(f"listen port {port}: expected 1..65535")
        object.__setattr__(self, "peers", tuple(self.peers))
        seen_keys: set[bytes] = set()
        owner: dict[IPNetwork, int] = {}
        for i, peer in enumerate(self.peers):
            if peer.public_key in seen_keys:
                raise WireGuardError(f"peer #{i}: public key listed twice")
            seen_keys.add(peer.public_key)
            for net in peer.allowed_ips:
                # WireGuard would silently move the prefix to the last peer: refuse instead.
                if net in owner:
                    raise WireGuardError(f"allowed-ip {net} is on peers #{owner[net]} and #{i}")
                owner[net] = i


# WireGuard's Reject-After-Time: a session this old can no longer carry data,
# and a live peer rekeys every 120 s (Rekey-After-Time) or on the next packet
# (persistent keepalive keeps idle tunnels fresh). So a tunnel whose latest
# handshake is this old, or older, is down.
HANDSHAKE_FRESH_SECONDS = 180


def handshake_fresh(latest_handshake: int | None, now: float) -> bool:
    """True when a peer's latest handshake (unix seconds, 0/None: never) makes it up."""
    return bool(latest_handshake) and now - latest_handshake < HANDSHAKE_FRESH_SECONDS


@dataclass(frozen=True)
class PeerStatus:
    """A peer as the device reports it. latest_handshake is unix seconds, 0 = never."""

    public_key: bytes
    endpoint: str | None
    allowed_ips: tuple[IPNetwork, ...]
    latest_handshake: int
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int | None


@dataclass(frozen=True)
class DeviceStatus:
    """A device as an engine reports it. pid is wireguard-go's, None for the kernel.

    public_key is None where the engine does not report it (wireguard-go's UAPI).
    """

    ifname: str
    engine: EngineName
    public_key: bytes | None
    listen_port: int
    peers: tuple[PeerStatus, ...]
    pid: int | None


@dataclass(frozen=True)
class DeviceState:
    """What an engine reads back from a device, before it becomes a DeviceStatus."""

    private_key: bytes | None = field(repr=False)
    listen_port: int
    peers: tuple[PeerStatus, ...]
