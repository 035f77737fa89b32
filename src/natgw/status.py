"""`natgw status`: what running gateways are doing, read back.

Read from the state files (natgw.state), the pinned maps and the tunnel
devices; nothing is changed. Cheap to import: no pydantic, no YAML, and
pyroute2 only for peers on the kernel WireGuard engine (its netlink family),
so the command answers quickly.

JSON (`natgw status --json`): a list, one object per gateway, sorted by name:

    [{"gateway": "gw1", "netns": "gw1",       # null: natgw's own netns
      "peers": [{"name": "cluster2", "device": "gw1-cluster2",
                 "engine": "wireguard-go",    # or "kernel", "interface"
                 "public_key": "...",         # ours on this tunnel; null for interface
                 "endpoint": "192.0.2.2:51820", "listen_port": 51820,
                 "latest_handshake": 1700000000,   # unix seconds, 0: never
                 "rx_bytes": 1234, "tx_bytes": 5678,
                 "up": true,                  # handshake fresh, or an interface peer
                 "mappings": [{"kind": "remote", "cidr": "10.244.0.0/16",
                               "as": "10.245.0.0/16", "egress_packets": 3,
                               "egress_bytes": 252, "ingress_packets": 0,
                               "ingress_bytes": 0}],
                 "routes": ["10.245.0.0/16"],
                 "group": "cluster2",         # a replica group's member; else null
                 "in_route": true,            # in the group's route (null: no group)
                 "why": "receiving",          # why in or out (natgw.health), or static
                 "error": null}],              # why the tunnel could not be read
      "repairs": {"route": 1},                # drift repaired by the foreground up, per kind
      "last_repair": "2026-01-01 10:00:00 route 10.245.0.0/16 dev gw1-cluster2",
      "hub": {...},                          # only with a hub: natgw.hubstatus
      "pipes": [{"name": "nginx", "listen": "[::]:8080",   # null: no port of its own
                 "to": "peer legacy", "peer": "legacy", "remote": null,
                 "via": "[fe80::..%gw1-legacy]:51870",      # the peer's pipe address
                 "from": null,                  # null: every peer may ask
                 "active": 2, "connections": {"ok": 40, "refused": 1},
                 "bytes": {"upstream": 1234, "downstream": 56789},
                 "error": null}],               # e.g. its port is taken
      "pipes_served_by": 4242}]                # pid of the foreground natgw up; null:
                                               # pipes not served (listed only then)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from natgw.dataplane import Dataplane, DataplaneError
from natgw.hubstatus import HubReport, format_hub, hub_status
from natgw.netns import NetnsNotFound
from natgw.pipes import publish
from natgw.state import GatewayState, PeerState, load_state, states_in
from natgw.wireguard.model import WireGuardError, handshake_fresh

# Why a member is in its group's route when no foreground `natgw up` judges it.
STATIC = "static: no foreground natgw up checks health; the route keeps every member"
# After a foreground `natgw up` was killed: its last verdict stays until the next up.
UNCHECKED = "as natgw up last judged; no natgw up checks it now"


class StatusError(Exception):
    """A gateway cannot be reported; one-line message."""


@dataclass
class PeerReport:
    name: str
    device: str
    engine: str
    public_key: str | None = None  # ours on this tunnel (from the state), None without tunnel
    endpoint: str | None = None
    listen_port: int | None = None
    latest_handshake: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    up: bool = False
    mappings: list[dict] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    error: str | None = None
    # A replica group's member: its group, whether it is in the group's route, and why.
    group: str | None = None
    in_route: bool | None = None
    why: str | None = None


@dataclass
class GatewayReport:
    gateway: str
    netns: str | None
    peers: list[PeerReport]
    # Drift the foreground `up` repaired: kind -> count, and the newest repair in one line.
    repairs: dict[str, int] = field(default_factory=dict)
    last_repair: str = ""
    hub: HubReport | None = None  # natgw.hubstatus; left out of the JSON when None
    pipes: list[dict] = field(default_factory=list)  # natgw.pipes.publish: while served
    pipes_served_by: int | None = None  # pid of the foreground `natgw up` serving them


def _engine(name: str) -> Any:
    """The engine that reads a device's status; None for interface peers.

    Built by name, not by select_engine: reading must never modprobe, and only
    the kernel engine needs pyroute2.
    """
    if name == "kernel":
        from natgw.wireguard.kernel import KernelEngine  # noqa: PLC0415

        return KernelEngine()
    if name == "wireguard-go":
        from natgw.wireguard.userspace import WireGuardGoEngine  # noqa: PLC0415

        return WireGuardGoEngine()
    return None


def _peer(state: GatewayState, ps: PeerState, dp: Dataplane | None, now: float,
          judged: bool = False) -> PeerReport:
    """judged: a foreground `natgw up` serves the gateway (and checks its groups)."""
    rep = PeerReport(ps.name, ps.device, ps.engine, routes=list(ps.routes))
    if ps.group:
        rep.group, rep.in_route = ps.group, ps.in_route
        rep.why = ps.health or STATIC
        if ps.health and not judged:
            rep.why += f" ({UNCHECKED})"
    netns = state.netns
    engine = _engine(ps.engine)
    if engine is None:
        rep.up = True
    else:
        rep.public_key = state.public_key
        try:
            st = engine.status(ps.device, netns)
            rep.listen_port = st.listen_port
            if st.peers:
                p = st.peers[0]
                rep.endpoint = p.endpoint
                rep.latest_handshake = p.latest_handshake
                rep.rx_bytes, rep.tx_bytes = p.rx_bytes, p.tx_bytes
                rep.up = handshake_fresh(p.latest_handshake, now)
        except (WireGuardError, NetnsNotFound, OSError) as e:
            rep.error = str(e)
    if dp is not None:
        for m in dp.mappings(ps.ifindex):
            c = dp.tables.counters(m.mapping_id)
            rep.mappings.append({
                "kind": m.mapping.kind, "cidr": str(m.mapping.cidr), "as": str(m.mapping.as_),
                **{f"{d}_{k}": getattr(c[d], k) for d in c for k in ("packets", "bytes")},
            })
    return rep


def report(state: GatewayState, now: float | None = None) -> GatewayReport:
    """Every peer of a gateway, in the netns its state file records."""
    try:
        dp = Dataplane.open(state.gateway)
    except (DataplaneError, OSError):
        dp = None  # pins gone: the peers are still worth showing
    now = time.time() if now is None else now
    served = publish.read(state.gateway)
    try:
        peers = [_peer(state, ps, dp, now, served is not None) for ps in state.peers]
        hub = None if state.hub is None else hub_status(
            state.hub, state.netns, dp, _engine(state.hub.device.engine), now)
    finally:
        if dp is not None:
            dp.close()
    return GatewayReport(state.gateway, state.netns, peers, dict(state.repairs),
                         state.last_repair, hub, served["pipes"] if served else [],
                         served["pid"] if served else None)


def status(gateway: str | None = None, netns: str | None = None,
           any_netns: bool = False) -> list[GatewayReport]:
    """Reports of gateways, like `wg show`.

    gateway None: every gateway applied in `netns` (None: natgw's own), an
    empty list when none is. A named gateway must be up (StatusError
    otherwise) and in `netns`, unless any_netns: then it is read wherever its
    state file says it runs.
    """
    if gateway is None:
        return [report(s) for s in states_in(netns)]
    try:
        state = load_state(gateway)
    except (OSError, ValueError, TypeError) as e:
        raise StatusError(f"gateway {gateway}: unreadable state: {e}") from None
    if state is None:
        raise StatusError(f"gateway {gateway}: not up (no state in /run/natgw)")
    if not any_netns and state.netns != netns:
        raise StatusError(f"gateway {gateway} is up in netns {state.netns or '(default)'}, "
                          f"not {netns or '(default)'}: pass --netns accordingly")
    return [report(state)]


def to_json(reports: list[GatewayReport]) -> list[dict[str, Any]]:
    """The `natgw status --json` document (shape in the module docstring)."""
    out = [asdict(r) for r in reports]
    for doc in out:
        if doc["hub"] is None:
            del doc["hub"]
    return out


def format_status(reports: list[GatewayReport], now: float | None = None) -> str:
    """`wg show`-like text: one block per gateway, a blank line between them."""
    now = time.time() if now is None else now
    return "\n\n".join(_format_gateway(g, now) for g in reports)


def _format_gateway(g: GatewayReport, now: float) -> str:
    lines = [f"gateway: {g.gateway}"]
    if g.netns:
        lines.append(f"  netns: {g.netns}")
    if g.repairs:
        lines.append("  drift repairs: " + ", ".join(f"{k} {v}" for k, v in sorted(
            g.repairs.items())) + (f" (last: {g.last_repair})" if g.last_repair else ""))
    for r in g.peers:
        lines.append("")
        lines.append(f"peer: {r.name}")
        lines.append(f"  device: {r.device} ({r.engine})")
        if r.engine != "interface":
            if r.public_key:
                lines.append(f"  public key: {r.public_key}")
            lines.append(f"  endpoint: {r.endpoint or '(none)'}")
            if r.listen_port:
                lines.append(f"  listening port: {r.listen_port}")
            hs = (f"{int(now - r.latest_handshake)} seconds ago" if r.latest_handshake
                  else "never")
            lines.append(f"  latest handshake: {hs}")
            lines.append(f"  transfer: {r.rx_bytes} B received, {r.tx_bytes} B sent")
        lines.append(f"  up: {'yes' if r.up else 'no'}")
        if r.group is not None:
            lines.append(f"  group: {r.group}, in route: {'yes' if r.in_route else 'no'} "
                         f"({r.why})")
        if r.error:
            lines.append(f"  error: {r.error}")
        lines.append(f"  routes: {', '.join(r.routes) or '(none)'}")
        for m in r.mappings:
            lines.append(
                f"  {m['kind']} {m['cidr']} as {m['as']}: egress {m['egress_packets']} pkts "
                f"{m['egress_bytes']} B, ingress {m['ingress_packets']} pkts "
                f"{m['ingress_bytes']} B")
    if g.hub is not None:
        lines += format_hub(g.hub, now)
    lines += publish.format_pipes(g.pipes, g.pipes_served_by)
    return "\n".join(lines)
