"""What `natgw up` set up, recorded for `down`, `status`, `maps` and metrics.

A JSON file per gateway under /run/natgw/ (tmpfs: gone after a reboot, like
the devices and pins it describes). It is written *before* natgw creates
anything (the intent), so a natgw killed at any point leaves a record that
`down` and the next `up` can act on. Writes are atomic (a private temporary
file, fsync, rename, fsync of the directory) and every file is 0600 from its
creation. It never holds keys.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

STATE_DIR = Path(os.environ.get("NATGW_STATE_DIR", "/run/natgw"))


@dataclass
class PeerState:
    name: str
    device: str
    ifindex: int
    engine: str  # "kernel", "wireguard-go" or "interface" (no tunnel)
    routes: list[str] = field(default_factory=list)  # destinations natgw routed into device
    created_device: bool = False  # natgw made the device, so `down` removes it
    own_qdisc: bool = False  # natgw added the device's clsact qdisc, so `down` removes it
    address: str | None = None  # our own address on the tunnel (peers[].address)
    # The pipe address (natgw.tunnel_address) natgw put on the tunnel device: "" none.
    pipe_address: str = ""
    group: str = ""  # its replica group ("" none): routed by the group's route (GroupState)
    in_route: bool = True  # a member: in its group's route now
    health: str = ""  # a member: why it is in or out, as the foreground `up` last judged


@dataclass
class GroupState:
    """A replica group's route (natgw.multipath): recorded before it changes, so that
    `down` finds every object natgw may have made for it."""

    routes: list[str] = field(default_factory=list)  # its ranges
    devices: list[str] = field(default_factory=list)  # every member's device (a nexthop each)
    hops: list[list] = field(default_factory=list)  # [device, weight] in the route now


@dataclass
class LanState:
    """A LAN-side device natgw put its fast-path program on (never created by natgw)."""

    device: str
    ifindex: int = 0
    own_qdisc: bool = False  # natgw added its clsact qdisc, so `down` removes it


@dataclass
class ClientState:
    """One hub client as applied: what its WireGuard peer, mappings and routes are."""

    name: str
    public_key: str  # base64
    address: str  # in the pool
    routes: list[str] = field(default_factory=list)  # its routed ranges (in the hub device)
    mappings: list[str] = field(default_factory=list)  # its mapping labels, "remote:<as>"
    allowed_ips: list[str] = field(default_factory=list)  # of its WireGuard peer


@dataclass
class HubState:
    device: PeerState  # the shared device, named after it (status/maps label)
    address: str  # the hub's own address/prefix
    clients: list[ClientState] = field(default_factory=list)
    mappings: list[str] = field(default_factory=list)  # installed: "<kind> <cidr> <as>"
    listen_port: int = 0
    public_key: str = ""  # ours, base64: the device's key (a change rewrites the device)
    # False in the intent recorded before an apply: the next apply reconciles everything.
    complete: bool = True

    def client_of_mapping(self, label: str) -> str | None:
        return next((c.name for c in self.clients if label in c.mappings), None)


@dataclass
class GatewayState:
    gateway: str
    netns: str | None
    config: str  # absolute path of the cluster.yaml applied
    peers: list[PeerState] = field(default_factory=list)
    # Ours, base64, derived once at apply: status reads it here instead of pulling
    # the private key back from the engine to derive it again.
    public_key: str | None = None
    # sysctl key -> value before natgw first changed it; `down` puts it back.
    sysctls: dict[str, str] = field(default_factory=dict)
    # drift kind ("device", "filter", "route", "pin", "engine", "mapping") -> repairs made.
    repairs: dict[str, int] = field(default_factory=dict)
    last_repair: str = ""  # one line: what the newest repair fixed, and when
    hub: HubState | None = None
    groups: dict[str, GroupState] = field(default_factory=dict)  # replica groups by name
    # Program pin name -> tag of the dataplane last loaded: programs a tcx link still
    # runs after their pins were removed are pinned again under their build.
    programs: dict[str, str] = field(default_factory=dict)
    lan: list[LanState] = field(default_factory=list)  # recorded before their attach
    fastpath: str = ""  # the file's fastpath: as last applied ("": before the fast path)

    def peer_by_ifindex(self, ifindex: int) -> PeerState | None:
        """The peer (or the hub's device) of a device."""
        if self.hub is not None and self.hub.device.ifindex == ifindex:
            return self.hub.device
        return next((p for p in self.peers if p.ifindex == ifindex), None)

    def peer(self, name: str) -> PeerState | None:
        return next((p for p in self.peers if p.name == name), None)

    def put_peer(self, ps: PeerState) -> None:
        """Record ps in place of the peer of the same name (appended if new)."""
        for i, p in enumerate(self.peers):
            if p.name == ps.name:
                self.peers[i] = ps
                return
        self.peers.append(ps)


def state_path(gateway: str) -> Path:
    return STATE_DIR / f"{gateway}.json"


def private_dir() -> Path:
    """STATE_DIR, made 0700 if natgw creates it."""
    STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    return STATE_DIR


def write_private(path: Path, text: str) -> None:
    """Replace path atomically with text; the file is 0600 from its creation.

    The temporary file is unique to this write (mkstemp), so two writers never
    share one, and it is fsynced before the rename: a crash leaves the old file
    or the new one, never a torn one.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:  # mkstemp creates files 0600
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def save_state(state: GatewayState) -> None:
    private_dir()
    # No indent: json's C encoder only runs without one (a hub's state is large).
    write_private(state_path(state.gateway), json.dumps(_plain(state)) + "\n")


def _plain(obj):
    """asdict for the state's dataclasses, without asdict's deep copies (a hub's
    thousand clients made it the slowest part of an edit)."""
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _plain(v) for k, v in vars(obj).items()}
    if isinstance(obj, list) and obj and hasattr(obj[0], "__dataclass_fields__"):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict) and obj and hasattr(next(iter(obj.values())),
                                                 "__dataclass_fields__"):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def load_state(gateway: str) -> GatewayState | None:
    try:
        raw = json.loads(state_path(gateway).read_text())
    except FileNotFoundError:
        return None
    peers = [PeerState(**_known(PeerState, p)) for p in raw.pop("peers", [])]
    hub = raw.pop("hub", None)
    if not (isinstance(hub, dict) and isinstance(hub.get("device"), dict)):
        hub = None  # none, or of a natgw that wrote it differently
    if hub is not None:
        clients = [ClientState(**_known(ClientState, c)) for c in hub.pop("clients", [])]
        device = PeerState(**_known(PeerState, hub.pop("device")))
        hub = HubState(device=device, clients=clients, **_known(HubState, hub))
    groups = raw.pop("groups", None)
    groups = {g: GroupState(**_known(GroupState, v)) for g, v in groups.items()
              if isinstance(v, dict)} if isinstance(groups, dict) else {}
    lan = [LanState(**_known(LanState, x)) for x in raw.pop("lan", []) if isinstance(x, dict)]
    return GatewayState(peers=peers, hub=hub, groups=groups, lan=lan,
                        **_known(GatewayState, raw))


def _known(cls: type, raw: dict) -> dict:
    # Fields another natgw version added are left out: every gateway on the host
    # reads every state (device names are host-wide), whoever wrote it.
    names = _field_names(cls)
    if raw.keys() <= names:
        return raw  # the common case, and a hub's thousand clients: no copy
    return {k: v for k, v in raw.items() if k in names}


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


def remove_state(gateway: str) -> None:
    state_path(gateway).unlink(missing_ok=True)
    applied_path(gateway).unlink(missing_ok=True)


def applied_path(gateway: str) -> Path:
    """The last cluster.yaml applied in full (without an inline key): what a failed apply
    returns to."""
    return STATE_DIR / f"{gateway}.applied.yaml"


def save_applied(gateway: str, text: str) -> None:
    private_dir()
    write_private(applied_path(gateway), text)


def gateway_names() -> list[str]:
    """Gateways with a state file, sorted: what `natgw up` set up and `down` did not remove."""
    if not STATE_DIR.is_dir():
        return []
    return sorted(p.stem for p in STATE_DIR.glob("*.json"))


def all_states() -> list[GatewayState]:
    """Every readable state; a file another program left there is skipped."""
    out = []
    for name in gateway_names():
        try:
            state = load_state(name)
        except (OSError, ValueError, TypeError):
            continue
        if state is not None:
            out.append(state)
    return out


def states_in(netns: str | None) -> list[GatewayState]:
    """Gateways applied in netns `netns` (None: natgw's own), as `wg show` lists a netns' devices.

    A state file that cannot be read is skipped: it names no netns to filter by.
    """
    out = []
    for name in gateway_names():
        try:
            state = load_state(name)
        except (OSError, ValueError, TypeError):
            continue
        if state is not None and state.netns == netns:
            out.append(state)
    return out
