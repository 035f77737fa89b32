"""Drift: what natgw made for a running gateway and someone removed by hand.

The foreground `natgw up` compares the world with its record every few
seconds (level-triggered, like a Kubernetes controller): the pins, and for
every peer its engine, device, filters, routes and mapping entries. Each
finding is "<kind> <what>"; the repair is an ordinary apply of the file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from natgw.dataplane import Dataplane, DataplaneError
from natgw.dataplane.loader import missing_pins, natgw_filters, pin_dir
from natgw.netns import NetnsNotFound, iproute
from natgw.routes import RTPROT_NATGW
from natgw.state import GatewayState

if TYPE_CHECKING:
    from natgw.gateway import Gateway

from natgw.gateway import peer_mappings  # noqa: E402 - gateway imports drift lazily

KINDS = ("pin", "engine", "device", "filter", "route", "mapping")


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
        ours = {}
        for family in (2, 10):
            for r in ipr.get_routes(family=family, proto=RTPROT_NATGW):
                ours[f"{r.get_attr('RTA_DST')}/{r['dst_len']}"] = r.get_attr("RTA_OIF")
        tunnels = {p.device for p in gw.cfg.tunnel_peers}
        for ps in state.peers:
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
            if dp is not None:
                out += [f"mapping {d} entry {net} on {ps.device} has no twin"
                        for _, d, net in dp.tables.orphans(idx[0])]
                peer = next((p for p in gw.cfg.peers if p.name == ps.name), None)
                installed = {m.mapping for m in dp.mappings(idx[0])}
                if peer is not None:
                    out += [f"mapping {m} on {ps.device}" for m in peer_mappings(peer)
                            if m not in installed]
    finally:
        ipr.close()
        if dp is not None:
            dp.close()
    return out
