"""What `natgw up` set up, recorded for `down`, `status`, `maps` and metrics.

A JSON file per gateway under /run/natgw/ (tmpfs: gone after a reboot, like
the devices and pins it describes). Written atomically; never holds a private key.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
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


@dataclass
class GatewayState:
    gateway: str
    netns: str | None
    config: str  # absolute path of the cluster.yaml applied
    peers: list[PeerState] = field(default_factory=list)
    # Ours, base64, derived once at apply: status reads it here instead of pulling
    # the private key back from the engine to derive it again.
    public_key: str | None = None

    def peer_by_ifindex(self, ifindex: int) -> PeerState | None:
        return next((p for p in self.peers if p.ifindex == ifindex), None)


def state_path(gateway: str) -> Path:
    return STATE_DIR / f"{gateway}.json"


def save_state(state: GatewayState) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    path = state_path(state.gateway)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    os.replace(tmp, path)


def load_state(gateway: str) -> GatewayState | None:
    try:
        raw = json.loads(state_path(gateway).read_text())
    except FileNotFoundError:
        return None
    peers = [PeerState(**_known(PeerState, p)) for p in raw.pop("peers", [])]
    return GatewayState(peers=peers, **_known(GatewayState, raw))


def _known(cls: type, raw: dict) -> dict:
    # Fields another natgw version added are left out: every gateway on the host
    # reads every state (device names are host-wide), whoever wrote it.
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in raw.items() if k in names}


def remove_state(gateway: str) -> None:
    state_path(gateway).unlink(missing_ok=True)
    applied_path(gateway).unlink(missing_ok=True)


def applied_path(gateway: str) -> Path:
    """The text of the last cluster.yaml applied in full: what a failed apply returns to."""
    return STATE_DIR / f"{gateway}.applied.yaml"


def save_applied(gateway: str, text: str) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    path = applied_path(gateway)
    tmp = path.with_suffix(".tmp")
    # 0600: the file may hold an inline privateKey, like the original.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def gateway_names() -> list[str]:
    """Gateways with a state file, sorted: what `natgw up` set up and `down` did not remove."""
    if not STATE_DIR.is_dir():
        return []
    return sorted(p.stem for p in STATE_DIR.glob("*.json"))


def all_states() -> list[GatewayState]:
    states = (load_state(name) for name in gateway_names())
    return [s for s in states if s is not None]


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
