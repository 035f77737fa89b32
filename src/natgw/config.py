"""cluster.yaml: the gateway's model, its validation and typed accessors.

Validation runs in two stages. Pydantic checks the shape of every field (types, CIDRs,
keys, endpoints, names); then plain functions check how fields relate (overlaps,
duplicates, device names), because their messages name the fields on both sides of
a conflict. Either stage reports its first problem as one `ConfigError`.
"""

import hashlib
import ipaddress
import os
import re
import stat
from collections.abc import Callable
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    SecretBytes,
    ValidationError,
)

from natgw import keys

IPNetwork = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address
IPInterface = IPv4Interface | IPv6Interface

MAX_DEVICE_NAME = 15  # IFNAMSIZ - 1
DEFAULT_MTU = 1420
MIN_MTU = 1280  # the IPv6 minimum link MTU
MAX_WEIGHT = 256


class ConfigError(Exception):
    """A cluster.yaml problem: `path` is the field (e.g. `peers[1].remote[0].as`)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)  # both in args, so that it pickles
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class HostPort(NamedTuple):
    """A host (IP literal or hostname) and a port, written `host:port` or `[v6]:port`."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# --- field types: each parser raises ValueError with the reason shown to the user ---

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _expect_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _parse_name(value: Any) -> str:
    s = _expect_str(value)
    if not _NAME_RE.fullmatch(s):
        raise ValueError(
            f"invalid name {s!r}: use letters, digits, '_', '.' and '-', "
            "starting with a letter or digit"
        )
    return s


def _parse_device(value: Any) -> str:
    s = _expect_str(value)
    if len(s) > MAX_DEVICE_NAME:
        raise ValueError(f"{s} is longer than {MAX_DEVICE_NAME} characters (the Linux limit)")
    if not s or s in (".", "..") or any(c in s for c in "/:") or any(c.isspace() for c in s):
        raise ValueError(f"invalid device name {s!r}")
    return s


def _parse_network(value: Any) -> IPNetwork:
    s = _expect_str(value)
    try:
        loose = ipaddress.ip_network(s, strict=False)
    except ValueError:
        raise ValueError(f"invalid CIDR {s}") from None
    if "/" not in s:
        raise ValueError(f"{s} has no prefix length (write {s}/{loose.max_prefixlen})")
    if loose.network_address != ipaddress.ip_interface(s).ip:
        raise ValueError(f"host bits set in {s} (the network is {loose})")
    return loose


def _parse_address(value: Any) -> IPAddress:
    s = _expect_str(value)
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        raise ValueError(f"invalid IP address {s}") from None


def _parse_interface(value: Any) -> IPInterface:
    s = _expect_str(value)
    try:
        iface = ipaddress.ip_interface(s)
    except ValueError:
        raise ValueError(
            f"invalid address {s}: expected address/prefix, e.g. 10.192.0.2/24"
        ) from None
    if "/" not in s:
        raise ValueError(f"{s} has no prefix length (write {s}/{iface.max_prefixlen})")
    net = iface.network
    if iface.ip == net.network_address and net.num_addresses > 2:
        raise ValueError(f"{iface.ip} is the network address of {net}")
    if iface.version == 4 and iface.ip == net.broadcast_address and net.num_addresses > 2:
        raise ValueError(f"{iface.ip} is the broadcast address of {net}")
    return iface


def _parse_port(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"invalid port {text!r}: expected 1..65535")
    return int(text)


def _check_hostname(host: str) -> None:
    labels = host.rstrip(".").split(".")
    ok = (
        len(host) <= 253
        and all(_HOST_LABEL_RE.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()  # else it is a mistyped IPv4 address, e.g. 10.0.0.256
    )
    if not ok:
        raise ValueError(f"{host} is neither an IP address nor a hostname")


def parse_host_port(value: Any) -> HostPort:
    """Parse `host:port`, `[v6addr]:port` (host: IP literal or hostname)."""
    s = _expect_str(value)
    if s.startswith("["):
        m = re.fullmatch(r"\[([^\]]*)\]:([^:]*)", s)
        if not m:
            raise ValueError(f"expected [IPv6 address]:port, got {s!r}")
        host, port = m.groups()
        try:
            IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host} is not an IPv6 address") from None
        return HostPort(host, _parse_port(port))
    host, sep, port = s.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected host:port, got {s!r}")
    if ":" in host:
        raise ValueError(f"write an IPv6 address in brackets: [address]:port, got {s!r}")
    try:
        IPv4Address(host)
    except ValueError:
        _check_hostname(host)
    return HostPort(host, _parse_port(port))


def _parse_public_key(value: Any) -> str:
    s = _expect_str(value).strip()
    keys.decode_key(s)
    return s


def _decode_private_key(value: Any) -> bytes:
    # decode_key never repeats its input, so the reason cannot leak the key.
    return keys.decode_key(_expect_str(value))


def _int_in(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {type(value).__name__}")
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range {low}..{high}")
        return value

    return parse


Name = Annotated[str, PlainValidator(_parse_name)]
DeviceName = Annotated[str, PlainValidator(_parse_device)]
Network = Annotated[IPNetwork, PlainValidator(_parse_network)]
Address = Annotated[IPAddress, PlainValidator(_parse_address)]
# An address with its prefix (`10.192.0.2/24`), as `ip address add` takes it.
Interface = Annotated[IPInterface, PlainValidator(_parse_interface)]
# Serialized back to its YAML form, not as a (host, port) list.
Endpoint = Annotated[HostPort, PlainValidator(parse_host_port), PlainSerializer(str)]
PublicKey = Annotated[str, PlainValidator(_parse_public_key)]
# A BeforeValidator, not a PlainValidator: SecretBytes keeps its own (masking) serializer.
PrivateKey = Annotated[SecretBytes, BeforeValidator(_decode_private_key)]
KeyPath = Annotated[Path, PlainValidator(lambda v: Path(_expect_str(v)))]
Port = Annotated[int, PlainValidator(_int_in(1, 65535))]
Keepalive = Annotated[int, PlainValidator(_int_in(0, 65535))]
Mtu = Annotated[int, PlainValidator(_int_in(MIN_MTU, 65535))]
# A nexthop's weight: the kernel keeps weight - 1 in a byte (rtnh_hops, nexthop_grp.weight).
Weight = Annotated[int, PlainValidator(_int_in(1, MAX_WEIGHT))]
Seconds = Annotated[int, PlainValidator(_int_in(1, 65535))]


class _Model(BaseModel):
    # Unknown keys are errors: a typo must not silently drop a setting.
    # Only YAML names (aliases) are accepted, so `listen_port:` is a typo too.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Remote(_Model):
    """One of a peer's networks: `cidr` inside the tunnel, `as_` how we address it."""

    cidr: Network
    as_: Network | None = Field(None, alias="as")

    @property
    def routed(self) -> IPNetwork:
        """The range we route to the peer: `as` if remapped, else `cidr`."""
        return self.as_ if self.as_ is not None else self.cidr

    @property
    def remapped(self) -> bool:
        return self.as_ is not None


class Local(_Model):
    """One of our networks (`cidr`) as the peer must see it (`as_`)."""

    cidr: Network
    as_: Network = Field(alias="as")


class Peer(_Model):
    """A WireGuard peer (own tunnel device), or with `interface` a link without tunnel."""

    name: Name
    public_key: PublicKey | None = Field(None, alias="publicKey")
    endpoint: Endpoint | None = None
    listen_port: Port | None = Field(None, alias="listenPort")
    persistent_keepalive: Keepalive | None = Field(None, alias="persistentKeepalive")
    interface: DeviceName | None = None
    via: Address | None = None
    # Our own address on the tunnel (like wg-quick's Address): set on the device.
    address: Interface | None = None
    device_override: DeviceName | None = Field(None, alias="device")
    remote: list[Remote]
    local: list[Local] = []
    # Replicas of one remote cluster: one multipath route over the group's devices.
    group: Name | None = None
    weight: Weight | None = None  # its share of the group's route; None: 1
    stale_after: Seconds | None = Field(None, alias="staleAfter")

    # Set by GatewayConfig: the default device name depends on the gateway's name.
    _device: str | None = PrivateAttr(None)

    @property
    def route_weight(self) -> int:
        return self.weight if self.weight is not None else 1

    @property
    def stale_seconds(self) -> float | None:
        """How long a group member may receive nothing before it leaves the route:
        `staleAfter`, else 2 keepalives and half a second; None without keepalives
        (then only its device is judged: an idle tunnel without keepalives receives
        nothing). With probes (natgw.health) a live member is heard at least every
        keepalive plus a tick (0.2 s) and a round trip, and a dead one leaves the route
        within staleAfter plus two ticks: within 2 keepalives and a second, the failover
        target."""
        if self.stale_after is not None:
            return float(self.stale_after)
        ka = self.persistent_keepalive
        return 2.0 * ka + 0.5 if ka else None

    @property
    def is_tunnel(self) -> bool:
        return self.interface is None

    @property
    def device(self) -> str:
        """The resolved device: `device:`, the `interface:`, or the default name."""
        if self._device is None:
            raise RuntimeError(f"peer {self.name} is not part of a GatewayConfig")
        return self._device

    @property
    def allowed_ips(self) -> list[IPNetwork]:
        """The peer's real networks, as they appear inside the tunnel."""
        return [r.cidr for r in self.remote]

    @property
    def routed_networks(self) -> list[IPNetwork]:
        """What we route into the peer's device: `as` (or `cidr` where not remapped),
        and the network of our `address` on it."""
        nets = [r.routed for r in self.remote]
        if self.address is not None and self.address.network not in nets:
            nets.append(self.address.network)
        return nets


class HubClient(_Model):
    """A WireGuard client of the hub: one peer on the hub's shared device."""

    name: Name
    # None: a client being set up (its address is reserved; `natgw client-config
    # --genkey` makes its keys): not yet a WireGuard peer of the device.
    public_key: PublicKey | None = Field(None, alias="publicKey")
    address: Address | None = None  # None: taken from the pool (recorded, natgw.pool)
    remote: list[Remote] = []

    @property
    def routed_networks(self) -> list[IPNetwork]:
        """What the hub routes to this client (`as`, or `cidr` where not remapped)."""
        return [r.routed for r in self.remote]


class Hub(_Model):
    """One device and one UDP port for many clients, with an address pool."""

    address: Interface  # the hub's own address; the rest of its network is the pool
    listen_port: Port = Field(alias="listenPort")
    endpoint: Endpoint | None = None  # how clients reach the hub, for client-config
    device_override: DeviceName | None = Field(None, alias="device")
    local: list[Local] = []
    clients: list[HubClient] = []

    _device: str | None = PrivateAttr(None)

    @property
    def device(self) -> str:
        if self._device is None:
            raise RuntimeError("hub is not part of a GatewayConfig")
        return self._device

    @property
    def pool(self) -> IPNetwork:
        return self.address.network

    def client(self, name: str) -> HubClient:
        for c in self.clients:
            if c.name == name:
                return c
        raise KeyError(name)


class Pipe(_Model):
    """A pipe (natgw.pipes): where it listens, if anywhere, and where it goes (peer xor remote)."""

    name: Name
    port: Port | None = None
    listen: Endpoint | None = None
    peer: Name | None = None
    remote: Endpoint | None = None
    from_: list[Name] | None = Field(None, alias="from")

    @property
    def bind(self) -> HostPort | None:
        """The local address the pipe listens on ("::": every address), or None."""
        if self.port is not None:
            return HostPort("::", self.port)
        return self.listen

    def allows(self, peer: str) -> bool:
        """May `peer` ask for this pipe (no from: means every peer may)?"""
        return self.from_ is None or peer in self.from_

    @property
    def target(self) -> str:
        return f"peer {self.peer}" if self.peer is not None else f"remote {self.remote}"


class GatewayConfig(_Model):
    """A validated cluster.yaml. Build it with `load_config` or `parse_config`.

    After loading, `private_key` holds the key whether it came inline or from
    `privateKeyFile` (then an absolute path). It is a SecretBytes: repr/str hide it.
    `public_key` is derived from it once, when the config is built.
    """

    name: Name
    cidrs: list[Network]
    private_key: PrivateKey | None = Field(None, alias="privateKey")
    private_key_file: KeyPath | None = Field(None, alias="privateKeyFile")
    engine: Literal["auto", "kernel", "wireguard-go"] = "auto"
    mtu: Mtu = DEFAULT_MTU
    metrics: Endpoint = HostPort("127.0.0.1", 9000)
    peers: list[Peer] = []
    hub: Hub | None = None
    pipes: list[Pipe] = []
    # The fast path (README "Fast path"): auto is tc; off is the post-routing path alone.
    fastpath: Literal["auto", "tc", "xdp", "off"] = "auto"
    # LAN-side devices for the fast path; None: derived from the routes to cidrs.
    lan_devices: list[DeviceName] | None = Field(None, alias="lanDevices")

    _public_key: str | None = PrivateAttr(None)

    def model_post_init(self, context: Any) -> None:
        for p in self.peers:
            p._device = p.interface or p.device_override or default_device_name(self.name, p.name)
        if self.hub is not None:
            self.hub._device = self.hub.device_override or default_device_name(self.name, "hub")
        self._derive_public_key()

    def _derive_public_key(self) -> None:
        # Also called after model_copy(update=...), which does not run model_post_init.
        secret = self.private_key
        self._public_key = (None if secret is None
                            else keys.encode_key(keys.public_key(secret.get_secret_value())))

    @property
    def tunnel_peers(self) -> list[Peer]:
        return [p for p in self.peers if p.is_tunnel]

    @property
    def interface_peers(self) -> list[Peer]:
        return [p for p in self.peers if not p.is_tunnel]

    @property
    def public_key(self) -> str | None:
        """Our base64 public key (derived once from the private key), None without one."""
        return self._public_key

    @property
    def fast(self) -> bool:
        """Whether the tc fast path runs (fastpath auto or tc, and xdp: what XDP passes)."""
        return self.fastpath in ("auto", "tc", "xdp")

    @property
    def xdp(self) -> bool:
        """Whether Ethernet devices also run the XDP fast path (fastpath xdp)."""
        return self.fastpath == "xdp"

    def peer(self, name: str) -> Peer:
        for p in self.peers:
            if p.name == name:
                return p
        raise KeyError(name)

    def device_for(self, peer: Peer | str) -> str:
        return (self.peer(peer) if isinstance(peer, str) else peer).device

    @property
    def groups(self) -> dict[str, list[Peer]]:
        """Replica groups of two or more members, by name, members in file order.
        (A group of one is routed like a peer without group: a plain route.)"""
        out: dict[str, list[Peer]] = {}
        for p in self.peers:
            if p.group is not None:
                out.setdefault(p.group, []).append(p)
        return {g: members for g, members in out.items() if len(members) > 1}

    def group_networks(self, group: str) -> list[IPNetwork]:
        """What a group's multipath route carries: its members' (identical) remote ranges."""
        return [r.routed for r in self.groups[group][0].remote]

    def device_routes(self, peer: Peer) -> list[IPNetwork]:
        """What is routed into the peer's device alone: its routed networks, but for a
        member of a group only its own tunnel address (the group's route has the rest)."""
        if peer.group is None or peer.group not in self.groups:
            return peer.routed_networks
        shared = set(self.group_networks(peer.group))
        return [n for n in peer.routed_networks if n not in shared]


def default_device_name(gateway: str, peer: str) -> str:
    """The device of a tunnel peer without `device:`, made to be read in `ip link`.

    `<gateway>-<peer>` when that fits in 15 characters (cluster1-east12). Otherwise the
    gateway is shortened to a tag, its first character and trailing digits (cluster1 ->
    c1, kubernetes-prod -> k), followed by the whole peer name: c1-cluster2. Only a peer
    name too long even then is cut, and ends in 3 hex digits of a hash of the pair so
    that cut names stay apart: c1-aws-eu-w-c57. Names are checked unique in the file
    here, and across the host's gateways at apply (natgw.gateway).
    """
    name = f"{gateway}-{peer}"
    if len(name) <= MAX_DEVICE_NAME:
        return name
    digits = re.search(r"[0-9]*$", gateway[1:]).group()[-4:]  # type: ignore[union-attr]
    tag = gateway[0] + digits
    name = f"{tag}-{peer}"
    if len(name) <= MAX_DEVICE_NAME:
        return name
    h = hashlib.sha1(f"{gateway}/{peer}".encode()).hexdigest()[:3]
    return f"{tag}-{peer[:MAX_DEVICE_NAME - len(tag) - 5]}-{h}"


# --- pydantic errors into `<path>: <reason>` ---

_REASONS = {
    "missing": "field required",
    "extra_forbidden": "unknown field",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "dict_type": "expected a mapping",
}


def _format_loc(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path or "<top>"


def _from_pydantic(err: ValidationError) -> ConfigError:
    # include_input=False: the offending input may be a private key.
    first = err.errors(include_url=False, include_input=False)[0]
    kind, ctx = first["type"], first.get("ctx", {})
    if kind == "value_error":
        reason = str(ctx["error"])
    elif kind == "literal_error":
        reason = f"expected one of {ctx['expected']}"
    else:
        msg = first["msg"]
        reason = _REASONS.get(kind, msg[:1].lower() + msg[1:])
    return ConfigError(_format_loc(first["loc"]), reason)


# --- relations between fields ---


def _overlap_note(net: IPNetwork, others: list[tuple[str, IPNetwork]]) -> str | None:
    for path, other in others:
        if net.version == other.version and net.overlaps(other):
            return f"{net} overlaps {path} {other}"
    return None


def _check_cidrs(cfg: GatewayConfig) -> None:
    if not cfg.cidrs:
        raise ConfigError("cidrs", "must not be empty")
    for i, net in enumerate(cfg.cidrs):
        note = _overlap_note(net, [(f"cidrs[{j}]", c) for j, c in enumerate(cfg.cidrs[:i])])
        if note:
            raise ConfigError(f"cidrs[{i}]", note)


def _key_file_problem(path: Path, st: os.stat_result) -> str | None:
    """Why a private key file must not be used (as ssh refuses such keys), or None."""
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if st.st_uid != os.geteuid():
        return (f"{path}: owned by uid {st.st_uid}, not by the user natgw runs as "
                f"(uid {os.geteuid()})")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        what = "readable" if mode & 0o044 else "writable"
        return (f"{path}: permissions {mode:04o} are too open "
                f"(must not be {what} by group or others; chmod 600 it)")
    return None


def _read_key_file(path: Path) -> bytes:
    # Checked on the open file (fstat), so what is checked is what is read.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO must not hang us
    except FileNotFoundError:
        raise ConfigError("privateKeyFile", f"{path} does not exist") from None
    except OSError as e:
        raise ConfigError("privateKeyFile", f"cannot read {path}: {e.strerror}") from None
    # Checked before fdopen: Python refuses to wrap a directory (IsADirectoryError).
    problem = _key_file_problem(path, os.fstat(fd))
    if problem:
        os.close(fd)
        raise ConfigError("privateKeyFile", problem)
    with os.fdopen(fd, "rb") as f:
        try:
            text = f.read(4096).decode("ascii")
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) else "not ASCII text"
            raise ConfigError("privateKeyFile", f"cannot read {path}: {why}") from None
    try:
        return keys.decode_key(text)
    except ValueError as e:
        raise ConfigError("privateKeyFile", f"{path}: {e}") from None


def _resolve_private_key(cfg: GatewayConfig, base_dir: Path) -> GatewayConfig:
    if cfg.private_key is not None and cfg.private_key_file is not None:
        raise ConfigError("privateKeyFile", "privateKey and privateKeyFile are mutually exclusive")
    if cfg.private_key_file is not None:
        path = (base_dir / cfg.private_key_file).absolute()
        secret = SecretBytes(_read_key_file(path))
        resolved = cfg.model_copy(update={"private_key": secret, "private_key_file": path})
        resolved._derive_public_key()
        return resolved
    if cfg.private_key is None and (cfg.tunnel_peers or cfg.hub is not None):
        what = "WireGuard peers" if cfg.tunnel_peers else "a hub"
        raise ConfigError("privateKeyFile", f"required for {what} (or an inline privateKey)")
    return cfg


def _check_mapping(path: str, cidr: IPNetwork, as_: IPNetwork | None) -> None:
    if as_ is None:
        return
    if as_.version != cidr.version:
        raise ConfigError(f"{path}.as", f"IPv{as_.version} {as_} does not match cidr {cidr}")
    if as_.prefixlen != cidr.prefixlen:
        raise ConfigError(f"{path}.as", f"/{as_.prefixlen} does not match cidr {cidr}")


_TUNNEL_ONLY = {
    "publicKey": "public_key",
    "endpoint": "endpoint",
    "listenPort": "listen_port",
    "persistentKeepalive": "persistent_keepalive",
    "address": "address",
}


def _check_peer_shape(i: int, p: Peer) -> None:
    at = f"peers[{i}]"
    if p.is_tunnel:
        if p.public_key is None:
            raise ConfigError(
                f"{at}.publicKey", "field required (or set interface: for a peer without tunnel)"
            )
        if p.endpoint is None and p.listen_port is None:
            raise ConfigError(
                f"{at}.listenPort", "required without an endpoint, so that the peer can reach us"
            )
        if p.via is not None:
            raise ConfigError(
                f"{at}.via", "only for interface: peers; a WireGuard device needs no next hop"
            )
    else:
        for yaml_name, attr in _TUNNEL_ONLY.items():
            if getattr(p, attr) is not None:
                raise ConfigError(f"{at}.{yaml_name}", "not allowed with interface: (no tunnel)")
        if p.device_override is not None:
            raise ConfigError(f"{at}.device", "not allowed with interface: (it is the device)")
    if not p.remote:
        raise ConfigError(f"{at}.remote", "must not be empty")
    for j, r in enumerate(p.remote):
        _check_mapping(f"{at}.remote[{j}]", r.cidr, r.as_)
    for j, loc in enumerate(p.local):
        _check_mapping(f"{at}.local[{j}]", loc.cidr, loc.as_)


def _device_path(i: int, p: Peer) -> tuple[str, str]:
    """The field a device name comes from, and a hint on how to change it."""
    if p.interface is not None:
        return f"peers[{i}].interface", ""
    if p.device_override is not None:
        return f"peers[{i}].device", ""
    return f"peers[{i}].name", "; set device: to choose another"


def _check_unique(cfg: GatewayConfig) -> None:
    own_key = cfg.public_key
    names: dict[str, int] = {}
    ports: dict[int, int] = {}
    pubkeys: dict[str, int] = {}
    devices: dict[str, int] = {}
    for i, p in enumerate(cfg.peers):
        at = f"peers[{i}]"
        if p.name in names:
            raise ConfigError(f"{at}.name", f"duplicate peer name (also peers[{names[p.name]}])")
        names[p.name] = i
        if p.listen_port is not None:
            if p.listen_port in ports:
                j = ports[p.listen_port]
                raise ConfigError(
                    f"{at}.listenPort",
                    f"{p.listen_port} is also the listenPort of peers[{j}] ({cfg.peers[j].name})",
                )
            ports[p.listen_port] = i
        if p.public_key is not None:
            if p.public_key == own_key:
                raise ConfigError(f"{at}.publicKey", "is our own public key, not the peer's")
            if p.public_key in pubkeys:
                j = pubkeys[p.public_key]
                raise ConfigError(
                    f"{at}.publicKey", f"same key as peers[{j}] ({cfg.peers[j].name})"
                )
            pubkeys[p.public_key] = i
        if p.device in devices:
            j = devices[p.device]
            path, hint = _device_path(i, p)
            raise ConfigError(
                path,
                f"device {p.device} is also the device of peers[{j}] ({cfg.peers[j].name}); "
                "device names must be unique on the whole host, since wireguard-go's UAPI "
                f"sockets in /var/run/wireguard are shared by all network namespaces{hint}",
            )
        devices[p.device] = i


def _check_groups(cfg: GatewayConfig) -> None:
    """Replica groups: WireGuard peers only, with the same remote (and local) mappings.

    interface: peers may not join: a member leaves the route when nothing has been
    received from it, and a link has no receive counter of its own (its counters
    count every host on the link); replicas are WireGuard peers, each with its key.
    """
    first: dict[str, int] = {}
    for i, p in enumerate(cfg.peers):
        at = f"peers[{i}]"
        if p.group is None:
            for yaml_name, value in (("weight", p.weight), ("staleAfter", p.stale_after)):
                if value is not None:
                    raise ConfigError(f"{at}.{yaml_name}", "only with group: (a peer without "
                                      "group has a route of its own)")
            continue
        if not p.is_tunnel:
            raise ConfigError(f"{at}.group", "only for WireGuard peers, not interface: ones: "
                              "a member leaves the route when nothing is received from it, "
                              "and a link has no receive counter of its own")
        if p.stale_after is not None:
            ka = p.persistent_keepalive
            if not ka:
                raise ConfigError(f"{at}.staleAfter", "needs persistentKeepalive: without "
                                  "keepalives an idle member receives nothing and would leave "
                                  "the route (without both, its device alone is judged)")
            if p.stale_after <= ka:
                raise ConfigError(f"{at}.staleAfter", f"{p.stale_after} s is not longer than "
                                  f"persistentKeepalive ({ka} s): a live member would leave "
                                  "the route between two keepalives")
        j = first.setdefault(p.group, i)
        if j == i:
            continue
        q = cfg.peers[j]
        for yaml_name, mine, theirs in (("remote", p.remote, q.remote),
                                        ("local", p.local, q.local)):
            if sorted(map(_mapping_key, mine)) != sorted(map(_mapping_key, theirs)):
                raise ConfigError(f"{at}.{yaml_name}", f"differs from peers[{j}].{yaml_name} "
                                  f"({q.name}) in group {p.group}; every member of a group "
                                  f"must have the same {yaml_name}")


def _mapping_key(m: Remote | Local) -> tuple[str, str]:
    return (str(m.cidr), str(m.as_))


def _check_remote(cfg: GatewayConfig) -> list[tuple[str, IPNetwork]]:
    """Check remote ranges; return every routed range with its field path.

    A group's members share their remote (checked the same by _check_groups): their
    ranges may overlap each other's, and only theirs.
    """
    own = [(f"our cidrs[{k}]", c) for k, c in enumerate(cfg.cidrs)]
    routed: list[tuple[str, IPNetwork]] = []
    group_of: dict[str, str | None] = {}  # routed path -> its peer's group
    for i, p in enumerate(cfg.peers):
        reals: list[tuple[str, IPNetwork]] = []
        for j, r in enumerate(p.remote):
            at = f"peers[{i}].remote[{j}]"
            # One device cannot tell two overlapping real ranges apart.
            note = _overlap_note(r.cidr, reals)
            if note:
                raise ConfigError(f"{at}.cidr", f"{note} of the same peer")
            reals.append((f"{at}.cidr", r.cidr))
            path = f"{at}.as" if r.remapped else f"{at}.cidr"
            hint = "; routes would collide" if r.remapped else "; add an as: to remap it"
            others = routed if p.group is None else \
                [(q, n) for q, n in routed if group_of[q] != p.group]
            note = _overlap_note(r.routed, own) or _overlap_note(r.routed, others)
            if note:
                raise ConfigError(path, note + hint)
            routed.append((path, r.routed))
            group_of[path] = p.group
    return routed


def _check_addresses(cfg: GatewayConfig, routed: list[tuple[str, IPNetwork]]
                     ) -> list[tuple[str, IPNetwork]]:
    """Check our tunnel addresses; return their networks (routed into their devices)."""
    own = [(f"our cidrs[{k}]", c) for k, c in enumerate(cfg.cidrs)]
    seen: list[tuple[str, IPNetwork]] = []
    for i, p in enumerate(cfg.peers):
        if p.address is None:
            continue
        at = f"peers[{i}].address"
        net = p.address.network
        # The peer's own unmapped ranges may hold the tunnel network (the hub and the
        # other clients): same device, same addresses. Anything else would mix up
        # routes, or translate traffic to or from our own address.
        # So may a group's, whose members share these ranges.
        mates = [i] if p.group is None else [k for k, q in enumerate(cfg.peers)
                                             if q.group == p.group]
        same_peer_ok = {f"peers[{m}].remote[{k}].cidr" for m in mates
                        for k, r in enumerate(p.remote) if not r.remapped}
        others = [(path, n) for path, n in routed if path not in same_peer_ok]
        note = _overlap_note(net, own) or _overlap_note(net, others) or _overlap_note(net, seen)
        if note:
            raise ConfigError(at, f"{note}; routes would collide")
        remapped = [(f"peers[{i}].remote[{k}].cidr", r.cidr) for k, r in enumerate(p.remote)
                    if r.remapped]
        note = _overlap_note(net, remapped)
        if note:
            raise ConfigError(at, f"{note}, which as: remaps; the address would be translated")
        seen.append((at, net))
    return seen


def _check_local(cfg: GatewayConfig, routed: list[tuple[str, IPNetwork]]) -> None:
    for i, p in enumerate(cfg.peers):
        theirs = [(f"peers[{i}].remote[{k}].cidr", r.cidr) for k, r in enumerate(p.remote)]
        _check_locals(cfg, f"peers[{i}].local", p.local, routed, theirs, "the peer's own network")


def _check_locals(cfg: GatewayConfig, where: str, local: list[Local],
                  routed: list[tuple[str, IPNetwork]], theirs: list[tuple[str, IPNetwork]],
                  whose: str) -> None:
    """Local mappings (a peer's, or the hub's for every client): each cidr inside our
    cidrs and apart from the others; each `as` clear of our networks, of every routed
    range, of the others and of the far side's own networks (`whose` names them)."""
    own = [(f"our cidrs[{k}]", c) for k, c in enumerate(cfg.cidrs)]
    seen_cidrs: list[tuple[str, IPNetwork]] = []
    seen_as: list[tuple[str, IPNetwork]] = []
    for j, loc in enumerate(local):
        at = f"{where}[{j}]"
        _check_mapping(at, loc.cidr, loc.as_)
        if not any(loc.cidr.version == c.version and loc.cidr.subnet_of(c) for c in cfg.cidrs):
            raise ConfigError(f"{at}.cidr", f"{loc.cidr} is not inside our cidrs")
        note = _overlap_note(loc.cidr, seen_cidrs)
        if note:
            raise ConfigError(f"{at}.cidr", note)
        seen_cidrs.append((f"{at}.cidr", loc.cidr))
        note = (_overlap_note(loc.as_, own) or _overlap_note(loc.as_, routed)
                or _overlap_note(loc.as_, seen_as))
        if note:
            raise ConfigError(f"{at}.as", note)
        note = _overlap_note(loc.as_, theirs)
        if note:
            raise ConfigError(f"{at}.as", f"{note}, {whose}")
        seen_as.append((f"{at}.as", loc.as_))


# --- the hub ---

_UNIQUE_DEVICE = ("device names must be unique on the whole host, since wireguard-go's UAPI "
                  "sockets in /var/run/wireguard are shared by all network namespaces")


def pool_capacity(pool: IPNetwork) -> int:
    """Client addresses in a hub's pool: its hosts minus the hub's own address."""
    reserved = 2 if pool.version == 4 and pool.prefixlen <= 30 else (
        1 if pool.version == 6 and pool.prefixlen <= 126 else 0)
    return max(pool.num_addresses - reserved - 1, 0)


def _check_hub_unique(cfg: GatewayConfig, hub: Hub) -> None:
    """Names, keys, port and device: distinct among clients and from the peers'."""
    peer_names = {p.name: i for i, p in enumerate(cfg.peers)}
    peer_keys = {p.public_key: i for i, p in enumerate(cfg.peers) if p.public_key}
    for i, p in enumerate(cfg.peers):
        if p.listen_port == hub.listen_port:
            raise ConfigError("hub.listenPort", f"{hub.listen_port} is also the listenPort of "
                              f"peers[{i}] ({p.name})")
        if p.device == hub.device:
            hint = "" if hub.device_override else "; set hub.device: to choose another"
            raise ConfigError("hub.device", f"device {hub.device} is also the device of "
                              f"peers[{i}] ({p.name}); {_UNIQUE_DEVICE}{hint}")
    names: dict[str, int] = {}
    pubkeys: dict[str, int] = {}
    own_key = cfg.public_key  # derived once: an X25519 multiplication
    for i, c in enumerate(hub.clients):
        at = f"hub.clients[{i}]"
        if c.name in names:
            raise ConfigError(f"{at}.name",
                              f"duplicate client name (also hub.clients[{names[c.name]}])")
        if c.name in peer_names:
            raise ConfigError(f"{at}.name", f"{c.name} is also the name of "
                              f"peers[{peer_names[c.name]}]; status and metrics name clients "
                              "and peers alike")
        names[c.name] = i
        if c.public_key is None:
            continue
        if c.public_key == own_key:
            raise ConfigError(f"{at}.publicKey", "is our own public key, not the client's")
        if c.public_key in pubkeys:
            j = pubkeys[c.public_key]
            raise ConfigError(f"{at}.publicKey",
                              f"same key as hub.clients[{j}] ({hub.clients[j].name})")
        if c.public_key in peer_keys:
            j = peer_keys[c.public_key]
            raise ConfigError(f"{at}.publicKey", f"same key as peers[{j}] ({cfg.peers[j].name})")
        pubkeys[c.public_key] = i


def _check_hub_addresses(hub: Hub) -> None:
    pool, own = hub.pool, hub.address.ip
    where = f"the pool {pool} (hub.address)"
    taken: dict[IPAddress, int] = {}
    for i, c in enumerate(hub.clients):
        if c.address is None:
            continue
        at = f"hub.clients[{i}].address"
        if c.address.version != pool.version or c.address not in pool:
            raise ConfigError(at, f"{c.address} is outside {where}")
        if c.address == own:
            raise ConfigError(at, f"{c.address} is the hub's own address (hub.address)")
        if pool.num_addresses > 2 and c.address == pool.network_address:
            raise ConfigError(at, f"{c.address} is the network address of {where}")
        if pool.version == 4 and pool.num_addresses > 2 and c.address == pool.broadcast_address:
            raise ConfigError(at, f"{c.address} is the broadcast address of {where}")
        if c.address in taken:
            j = taken[c.address]
            raise ConfigError(at, f"{c.address} is also the address of hub.clients[{j}] "
                              f"({hub.clients[j].name})")
        taken[c.address] = i
    room = pool_capacity(pool)
    if len(hub.clients) > room:
        raise ConfigError("hub.address", f"the pool {pool} has room for {room} client"
                          f"{'' if room == 1 else 's'}, not {len(hub.clients)}; "
                          "use a shorter prefix")


def _any_overlap(nets: list[IPNetwork]) -> bool:
    """Whether any two of `nets` overlap: sorted, one pass (a hub has thousands)."""
    for version in (4, 6):
        spans = sorted((int(n.network_address), int(n.broadcast_address))
                       for n in nets if n.version == version)
        end = -1
        for first, last in spans:
            if first <= end:
                return True
            end = max(end, last)
    return False


def _check_hub(cfg: GatewayConfig, routed: list[tuple[str, IPNetwork]]
               ) -> list[tuple[str, IPNetwork]]:
    """Check the hub section; return its routed ranges (the pool, the clients' ranges)."""
    hub = cfg.hub
    if hub is None:
        return []
    _check_hub_unique(cfg, hub)
    _check_hub_addresses(hub)
    own = [(f"our cidrs[{k}]", c) for k, c in enumerate(cfg.cidrs)]
    pool = ("hub.address", hub.pool)
    note = _overlap_note(hub.pool, own) or _overlap_note(hub.pool, routed)
    if note:
        raise ConfigError("hub.address", f"{note}; routes would collide")
    # Pairwise checks are quadratic: with thousands of clients, look for the first
    # conflict (to name both sides) only when a sorted pass says there is one.
    remotes = [r for c in hub.clients for r in c.remote]
    reals_clash = _any_overlap([hub.pool, *(r.cidr for r in remotes)])
    routed_clash = _any_overlap([hub.pool, *(r.routed for r in remotes)])
    # Every client's real ranges share the device's allowed-ips with the others' and the pool.
    reals: list[tuple[str, IPNetwork]] = [pool]
    hub_routed: list[tuple[str, IPNetwork]] = [pool]
    for i, c in enumerate(hub.clients):
        for j, r in enumerate(c.remote):
            at = f"hub.clients[{i}].remote[{j}]"
            _check_mapping(at, r.cidr, r.as_)
            note = _overlap_note(r.cidr, reals) if reals_clash else None
            if note:
                raise ConfigError(f"{at}.cidr", f"{note}: the clients share one device and its "
                                  "allowed-ips, so their networks must not overlap; make this "
                                  "client a separate peer under peers: instead")
            reals.append((f"{at}.cidr", r.cidr))
            if r.remapped:
                path, hint = f"{at}.as", "; routes would collide"
            else:
                path, hint = f"{at}.cidr", "; add an as: to remap it"
            # (An unmapped cidr inside the pool was refused above.)
            note = (_overlap_note(r.routed, own) or _overlap_note(r.routed, routed)
                    or (_overlap_note(r.routed, hub_routed) if routed_clash else None))
            if note:
                raise ConfigError(path, note + hint)
            hub_routed.append((path, r.routed))
    _check_hub_local(cfg, hub, routed + hub_routed, reals[1:])
    return hub_routed


def _check_hub_local(cfg: GatewayConfig, hub: Hub, routed: list[tuple[str, IPNetwork]],
                     theirs: list[tuple[str, IPNetwork]]) -> None:
    _check_locals(cfg, "hub.local", hub.local, routed, theirs, "a client's own network")


# --- entry points ---


def parse_config(data: dict[str, Any], base_dir: Path) -> GatewayConfig:
    """Validate a parsed cluster.yaml; `privateKeyFile` is relative to `base_dir`."""
    try:
        cfg = GatewayConfig.model_validate(data)
    except ValidationError as e:
        raise _from_pydantic(e) from None
    _check_cidrs(cfg)
    cfg = _resolve_private_key(cfg, base_dir)
    for i, p in enumerate(cfg.peers):
        _check_peer_shape(i, p)
    _check_unique(cfg)
    _check_groups(cfg)
    routed = _check_remote(cfg)
    routed += _check_addresses(cfg, routed)
    _check_local(cfg, routed + _check_hub(cfg, routed))
    _check_pipes(cfg)
    _check_fastpath(cfg)
    return cfg


def _check_fastpath(cfg: GatewayConfig) -> None:
    if cfg.lan_devices is None:
        return
    ours = {p.device: f"peers[{i}]" for i, p in enumerate(cfg.peers)}
    if cfg.hub is not None:
        ours[cfg.hub.device] = "hub"
    seen: set[str] = set()
    for i, dev in enumerate(cfg.lan_devices):
        if dev in seen:
            raise ConfigError(f"lanDevices[{i}]", f"{dev} is listed twice")
        if dev in ours:
            raise ConfigError(f"lanDevices[{i}]", f"{dev} is the device of {ours[dev]}")
        seen.add(dev)


def _check_pipes(cfg: GatewayConfig) -> None:
    from natgw.pipes.model import check_pipes  # noqa: PLC0415 - natgw.pipes builds on this module

    clients = cfg.hub.clients if cfg.hub is not None else []
    check_pipes(cfg.pipes, [p.name for p in cfg.tunnel_peers]
                + [c.name for c in clients if c.public_key is not None],
                [p.name for p in cfg.interface_peers], cfg.metrics,
                keyless=[c.name for c in clients if c.public_key is None])


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, f"a {type(key).__name__} cannot be a key", key_node.start_mark
                ) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


MAX_FILE_BYTES = 1 << 20  # a cluster.yaml is a few KiB; more is a mistake or an attack
MAX_YAML_NODES = 100_000  # after aliases are expanded: refuses "billion laughs" bombs


def _expanded_nodes(root: yaml.Node, where: str) -> int:
    """How many nodes the document has once every alias is expanded, without expanding.

    An alias is the same node object as its anchor, so sizes are memoized per
    node: linear in the document, even for a bomb.
    """
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int = 0) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if depth > 100:
            raise ConfigError(where, "YAML nested more than 100 levels deep")
        n = 1
        if isinstance(node, yaml.SequenceNode):
            n += sum(size(c, depth + 1) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            n += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        sizes[id(node)] = min(n, MAX_YAML_NODES + 1)
        return sizes[id(node)]

    return size(root)


def load_config(path: Path) -> GatewayConfig:
    """Read and validate a cluster.yaml. YAML errors have the file as path and a line."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(str(path), f"cannot read: {e.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(str(path), f"larger than {MAX_FILE_BYTES >> 20} MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(str(path), "cannot read: not UTF-8 text") from None
    try:
        node = yaml.compose(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
        if node is not None and _expanded_nodes(node, str(path)) > MAX_YAML_NODES:
            raise ConfigError(str(path), f"YAML aliases expand to more than {MAX_YAML_NODES} "
                                         "nodes (an alias bomb?)")
        data = _StrictLoader(text).construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(str(path), f"{where}{e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(str(path), " ".join(str(e).split())) from None
    except RecursionError:
        raise ConfigError(str(path), "YAML nested too deeply") from None
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError(str(path), f"expected a mapping at the top level, got {got}")
    return parse_config(data, path.parent)
