"""The hub's part of `natgw status`: per client address, endpoint, handshake, transfer.

Read from the state (natgw.state.HubState), one status read of the shared device
and the pinned maps; nothing changed. As cheap to import as natgw.status (no
pydantic, no YAML).

JSON (the "hub" object of a gateway in `natgw status --json`, absent without a hub):

    {"device": "legacy-hub", "engine": "wireguard-go", "address": "10.192.0.1/24",
     "listen_port": 8765,
     "mappings": [...],          # hub.local, shared by every client (as for peers)
     "error": null,              # why the device could not be read
     "clients": [{"name": "cloud", "address": "10.192.0.2",
                  "public_key": "...",    # "" while the client has none yet
                  "endpoint": "198.18.1.2:51820", "latest_handshake": 1700000000,
                  "rx_bytes": 1, "tx_bytes": 2, "up": true,
                  "routes": ["10.201.0.0/16"], "mappings": [...]}]}
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from natgw.dataplane import Dataplane
from natgw.netns import NetnsNotFound
from natgw.state import HubState
from natgw.wireguard.model import WireGuardError, handshake_fresh


@dataclass
class ClientReport:
    name: str
    address: str
    public_key: str
    endpoint: str | None = None
    latest_handshake: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    up: bool = False
    routes: list[str] = field(default_factory=list)
    mappings: list[dict] = field(default_factory=list)


@dataclass
class HubReport:
    device: str
    engine: str
    address: str
    listen_port: int | None = None
    mappings: list[dict] = field(default_factory=list)  # hub.local, shared by every client
    error: str | None = None
    clients: list[ClientReport] = field(default_factory=list)


def _mapping_dicts(dp: Dataplane | None, ifindex: int) -> dict[str, dict]:
    """Installed mappings of a device by label ("<kind>:<as>"), with their counters."""
    out: dict[str, dict] = {}
    if dp is None:
        return out
    for m in dp.mappings(ifindex):
        c = dp.tables.counters(m.mapping_id)
        out[f"{m.mapping.kind}:{m.mapping.as_}"] = {
            "kind": m.mapping.kind, "cidr": str(m.mapping.cidr), "as": str(m.mapping.as_),
            **{f"{d}_{k}": getattr(c[d], k) for d in c for k in ("packets", "bytes")},
        }
    return out


def hub_status(hs: HubState, netns: str | None, dp: Dataplane | None, engine: Any,
               now: float) -> HubReport:
    """The hub and each client; `engine` reads the device (None: not readable)."""
    rep = HubReport(hs.device.device, hs.device.engine, hs.address)
    by_key = {}
    if engine is not None:
        try:
            st = engine.status(hs.device.device, netns)
            rep.listen_port = st.listen_port
            by_key = {base64.b64encode(p.public_key).decode(): p for p in st.peers}
        except (WireGuardError, NetnsNotFound, OSError) as e:
            rep.error = str(e)
    mappings = _mapping_dicts(dp, hs.device.ifindex)
    owned = {label for c in hs.clients for label in c.mappings}
    rep.mappings = [m for label, m in mappings.items() if label not in owned]
    for c in hs.clients:
        cr = ClientReport(c.name, c.address, c.public_key, routes=list(c.routes),
                          mappings=[mappings[label] for label in c.mappings if label in mappings])
        p = by_key.get(c.public_key) if c.public_key else None
        if p is not None:
            cr.endpoint = p.endpoint
            cr.latest_handshake = p.latest_handshake
            cr.rx_bytes, cr.tx_bytes = p.rx_bytes, p.tx_bytes
            cr.up = handshake_fresh(p.latest_handshake, now)
        rep.clients.append(cr)
    return rep


def _mapping_line(m: dict) -> str:
    return (f"  {m['kind']} {m['cidr']} as {m['as']}: egress {m['egress_packets']} pkts "
            f"{m['egress_bytes']} B, ingress {m['ingress_packets']} pkts {m['ingress_bytes']} B")


def format_hub(rep: HubReport, now: float) -> list[str]:
    """`wg show`-like lines: the hub, then one block per client."""
    lines = ["", f"hub: {rep.device} ({rep.engine})", f"  address: {rep.address}"]
    if rep.listen_port:
        lines.append(f"  listening port: {rep.listen_port}")
    if rep.error:
        lines.append(f"  error: {rep.error}")
    lines += [_mapping_line(m) for m in rep.mappings]
    for c in rep.clients:
        hs = f"{int(now - c.latest_handshake)} seconds ago" if c.latest_handshake else "never"
        lines += ["", f"client: {c.name}", f"  address: {c.address}",
                  f"  public key: {c.public_key or '(none yet: natgw client-config --genkey)'}",
                  f"  endpoint: {c.endpoint or '(none)'}", f"  latest handshake: {hs}",
                  f"  transfer: {c.rx_bytes} B received, {c.tx_bytes} B sent",
                  f"  up: {'yes' if c.up else 'no'}",
                  f"  routes: {', '.join(c.routes) or '(none)'}"]
        lines += [_mapping_line(m) for m in c.mappings]
    return lines
