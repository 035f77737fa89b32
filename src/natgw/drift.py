"""Drift: what natgw made for a running gateway and someone removed by hand.

The foreground `natgw up` compares the world with its record every few
seconds (level-triggered, like a Kubernetes controller): the pins, and for
every peer (and a hub's one device) its engine, device, filters, routes and
mapping entries, each replica group's route and its members, and for a tunnel its
WireGuard allowed-ips and (with pipes) its
pipe address, and on a hub's device (with pipes) each client's pipe address in its
allowed-ips. Each finding is "<kind> <what>"; the repair is an ordinary apply of the
file (in full for a hub: Gateway.repair).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from natgw import multipath
from natgw.dataplane import Dataplane, DataplaneError, Mapping
from natgw.dataplane.loader import missing_pins, natgw_filters, pin_dir
from natgw.keys import decode_key
from natgw.netns import NetnsNotFound, iproute
from natgw.routes import RTPROT_NATGW
from natgw.state import GatewayState
from natgw.tunnel_address import has_address
from natgw.wireguard import WireGuardError

if TYPE_CHECKING:
    from natgw.gateway import Gateway

from natgw.gateway import device_config, peer_mappings  # noqa: E402 - gateway imports drift lazily

KINDS = ("pin", "engine", "device", "filter", "route", "mapping", "address", "allowed-ips")


def detect(gw: Gateway, state: GatewayState) -> list[str]:
    """Everything of `state` that is missing, as "<kind> <what>" (kind from KINDS)."""
    name, netns = state.gateway, state.netns
    out = [f"pin {p}" for p in missing_pins(pin_dir(name))]
    try:
        ipr = iproute(netns)
    except NetnsNotFound:
        return out  # nothing natgw could put back
    dp = None
    if not out:
        try:
            dp = Dataplane.open(name)
        except (DataplaneError, OSError):
            dp = None
    try:
        ours, dumped = {}, {}
        for family in (2, 10):
            for r in ipr.get_routes(family=family, proto=RTPROT_NATGW):
                dst = f"{r.get_attr('RTA_DST')}/{r['dst_len']}"
                ours[dst], dumped[dst] = r.get_attr("RTA_OIF"), r
        out += _group_routes(gw, state, ipr, dumped)
        tunnels = {p.device for p in gw.cfg.tunnel_peers}
        wanted: dict[str, list[Mapping]] = {p.device: peer_mappings(p) for p in gw.cfg.peers}
        recorded = list(state.peers)
        if state.hub is not None and gw.cfg.hub is not None \
                and state.hub.device.device == gw.cfg.hub.device:
            from natgw.hub import hub_mappings  # noqa: PLC0415

            tunnels.add(state.hub.device.device)
            recorded.append(state.hub.device)
            wanted[state.hub.device.device] = hub_mappings(gw.cfg.hub)
        for ps in recorded:
            if ps.device in tunnels and not gw.engine.is_alive(ps.device, netns):
                out.append(f"engine {ps.device}")
                continue
            idx = ipr.link_lookup(ifname=ps.device)
            if not idx:
                out.append(f"device {ps.device}")
                continue
            if ps.ifindex and idx[0] != ps.ifindex:
                out.append(f"device {ps.device} (recreated)")
                continue
            missing = {"egress", "ingress"} - natgw_filters(ipr, idx[0])
            out += [f"filter {ps.device} {d}" for d in sorted(missing)]
            out += [f"route {net} dev {ps.device}" for net in ps.routes
                    if ours.get(net) != idx[0]]
            if ps.pipe_address and not has_address(ipr, idx[0], ps.pipe_address):
                out.append(f"address {ps.pipe_address} on {ps.device}")
            if ps.device in tunnels:
                out += _allowed_ips(gw, ps.name, ps.device, netns)
            if state.hub is not None and ps is state.hub.device and gw.cfg.pipes:
                out += _client_pipe_ips(gw, ps.device, netns)
            if dp is not None:
                out += [f"mapping {d} entry {net} on {ps.device} has no twin"
                        for _, d, net in dp.tables.orphans(idx[0])]
                installed = {m.mapping for m in dp.mappings(idx[0])}
                out += [f"mapping {m} on {ps.device}" for m in wanted.get(ps.device, [])
                        if m not in installed]
    finally:
        ipr.close()
        if dp is not None:
            dp.close()
    return out


def _group_routes(gw: Gateway, state: GatewayState, ipr, dumped: dict) -> list[str]:
    """A replica group's ranges not routed over the members recorded in its route."""
    out = []
    for name, gs in state.groups.items():
        if name not in gw.cfg.groups or not gs.hops:
            continue  # a group being removed, or no member to route over
        ifindex = {dev: idx[0] for dev, _ in gs.hops if (idx := ipr.link_lookup(ifname=dev))}
        wanted = multipath.wanted_hops(ifindex, [(dev, w) for dev, w in gs.hops])
        out += [f"route {net} group {name}" for net in gs.routes
                if net not in dumped or multipath.route_hops(dumped[net]) != wanted]
    return out


def _client_pipe_ips(gw: Gateway, device: str, netns: str | None) -> list[str]:
    """The hub clients' pipe addresses (/128) missing from their allowed-ips: without
    one, the hub no longer knows (or answers) that client's pipe requests."""
    from natgw.tunnel_address import tunnel_network  # noqa: PLC0415

    assert gw.cfg.hub is not None
    try:
        st = gw.engine.status(device, netns)
    except (WireGuardError, OSError):
        return []  # an engine that does not answer is for the engine check
    have = {p.public_key: {str(n) for n in p.allowed_ips} for p in st.peers}
    out = []
    for c in gw.cfg.hub.clients:
        if c.public_key is None:
            continue
        net = str(tunnel_network(c.public_key))
        if net not in have.get(decode_key(c.public_key), set()):
            out.append(f"allowed-ips {net} on {device} ({c.name})")
    return out


def _allowed_ips(gw: Gateway, name: str, device: str, netns: str | None) -> list[str]:
    """The allowed-ips of the file (the pipe address included) missing from the device."""
    peer = next((p for p in gw.cfg.tunnel_peers if p.name == name), None)
    if peer is None:
        return []
    try:
        st = gw.engine.status(device, netns)
    except (WireGuardError, OSError):
        return []  # an engine that does not answer is for the engine check
    wanted = device_config(gw.cfg, peer, None).peers[0]
    have = {str(n) for p in st.peers if p.public_key == wanted.public_key
            for n in p.allowed_ips}
    return [f"allowed-ips {n} on {device}" for n in wanted.allowed_ips if str(n) not in have]
