"""Drift: what natgw made for a running gateway and someone removed by hand.

The foreground `natgw up` compares the world with its record every few
seconds (level-triggered, like a Kubernetes controller): the pins, the fast
path's program on each recorded LAN device, and for every peer (and a hub's one
device) its engine, device, hook programs (those of the file's fastpath) and their
tcx link pins, routes and mapping entries (and the skip bitmaps over them), each
replica group's route and its members, and for a tunnel its WireGuard allowed-ips
and (with pipes) its pipe address, and on a hub's device (with pipes) each client's
pipe address in its allowed-ips. Each finding is "<kind> <what>"; the repair is an
ordinary apply of the file (in full for a hub: Gateway.repair).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from natgw import multipath
from natgw.dataplane import Dataplane, DataplaneError, Mapping
from natgw.dataplane.hooks import TCX, attached, link_pin_name
from natgw.dataplane.loader import (
    HOOKS_LAN,
    HOOKS_TRANSLATE,
    HOOKS_TRANSLATE_FAST,
    hook_program,
    missing_pins,
    pin_dir,
    programs_for,
)
from natgw.keys import decode_key
from natgw.netns import NetnsNotFound, iproute
from natgw.routes import RTPROT_NATGW
from natgw.state import GatewayState
from natgw.tunnel_address import has_address
from natgw.wireguard import WireGuardError

if TYPE_CHECKING:
    from natgw.gateway import Gateway

from natgw.gateway import device_config, peer_mappings  # noqa: E402 - gateway imports drift lazily

# Seconds an engine may take to answer a drift check's read. The gateway's lock is
# held meanwhile, and a health route change waits for it (natgw.gateway).
ENGINE_READ_TIMEOUT = 0.5

KINDS = ("pin", "engine", "device", "filter", "route", "mapping", "address", "allowed-ips")


def detect(gw: Gateway, state: GatewayState) -> list[str]:
    """Everything of `state` that is missing, as "<kind> <what>" (kind from KINDS)."""
    name, netns = state.gateway, state.netns
    pdir = pin_dir(name)
    out = [f"pin {p}" for p in missing_pins(pdir, programs_for(gw.cfg.fast, gw.cfg.xdp))]
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
        # The programs each device runs: a filter of the other fastpath is drift too.
        hooks = HOOKS_TRANSLATE_FAST if gw.cfg.fast else HOOKS_TRANSLATE
        entries = None  # the translation entries, read at the first device that needs them
        for ls in state.lan:
            # A LAN device is the admin's: one that went is not natgw's to put back.
            idx = ipr.link_lookup(ifname=ls.device)
            if idx and idx[0] == ls.ifindex:
                out += _hooks(ipr, idx[0], ls.device, HOOKS_LAN, pdir)
                out += _xdp(ipr, idx[0], ls.device, gw.cfg.xdp)
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
            out += _hooks(ipr, idx[0], ps.device, hooks, pdir)
            if ps.device not in tunnels:
                out += _xdp(ipr, idx[0], ps.device, gw.cfg.xdp)
            out += [f"route {net} dev {ps.device}" for net in ps.routes
                    if ours.get(net) != idx[0]]
            if ps.pipe_address and not has_address(ipr, idx[0], ps.pipe_address):
                out.append(f"address {ps.pipe_address} on {ps.device}")
            if ps.device in tunnels:
                out += _allowed_ips(gw, ps.name, ps.device, netns)
            if state.hub is not None and ps is state.hub.device and gw.cfg.pipes:
                out += _client_pipe_ips(gw, ps.device, netns)
            if dp is not None:
                t = dp.tables
                if entries is None:  # one read of the maps for every device's checks
                    entries = t.read_entries()
                out += [f"mapping {d} entry {net} on {ps.device} has no twin"
                        for _, d, net in t.orphans(idx[0], entries)]
                out += [f"mapping entry {net} on {ps.device} hidden by its skip bitmap"
                        for net in t.hidden_by_skip(idx[0], entries)]
                installed = {m.mapping for m in t.mappings(idx[0], entries)}
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


def _xdp(ipr, ifindex: int, device: str, want: bool) -> list[str]:
    """natgw's XDP program missing from an Ethernet device of fastpath xdp, or left on
    one after it changed."""
    from natgw.dataplane.loader import ARPHRD_ETHER  # noqa: PLC0415
    from natgw.dataplane.xdp import (  # noqa: PLC0415
        PROG_NAME,
        XDP_ATTACHED_DRV,
        link_xdp,
        program_name,
    )

    link = ipr.get_links(ifindex)[0]
    if link["ifi_type"] != ARPHRD_ETHER:
        return []  # L3 devices stay tc
    mode, pid = link_xdp(link)
    has = mode == XDP_ATTACHED_DRV and program_name(pid) == PROG_NAME
    if want and not has:
        return [f"filter {device} xdp"]
    if has and not want:
        return [f"filter {device} xdp (fastpath is no longer xdp)"]
    return []


def _hooks(ipr, ifindex: int, device: str, wanted: dict[str, str], pdir: str) -> list[str]:
    """Hooks of a device not running the program `wanted` names, and tcx links whose
    pin is gone (such a link runs only while the foreground holds it)."""
    found = attached(ipr, ifindex)
    out = [f"filter {device} {hook}" for hook, prog in sorted(wanted.items())
           if hook not in found or hook_program(found[hook]) != prog]
    for d, hook in sorted(found.items()):
        link = link_pin_name(d, device)
        if hook.mechanism == TCX and not os.path.exists(os.path.join(pdir, link)):
            out.append(f"pin {link}")
    return out


def _client_pipe_ips(gw: Gateway, device: str, netns: str | None) -> list[str]:
    """The hub clients' pipe addresses (/128) missing from their allowed-ips: without
    one, the hub no longer knows (or answers) that client's pipe requests."""
    from natgw.tunnel_address import tunnel_network  # noqa: PLC0415

    assert gw.cfg.hub is not None
    try:
        st = gw.engine.status(device, netns, timeout=ENGINE_READ_TIMEOUT)
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
        st = gw.engine.status(device, netns, timeout=ENGINE_READ_TIMEOUT)
    except (WireGuardError, OSError):
        return []  # an engine that does not answer is for the engine check
    wanted = device_config(gw.cfg, peer, None).peers[0]
    have = {str(n) for p in st.peers if p.public_key == wanted.public_key
            for n in p.allowed_ips}
    return [f"allowed-ips {n} on {device}" for n in wanted.allowed_ips if str(n) not in have]
