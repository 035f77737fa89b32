"""The LAN side of the fast path: which devices it is, and natgw's program on them.

A LAN device is one the gateway reaches its own `cidrs` through (a bridge, a
pod's veth, an uplink). natgw never creates one: it records the device before
putting its `natgw_lan` program on the device's tc ingress (adding a clsact
qdisc only if there is none, and then recording that too), and takes off
exactly that again. A LAN device's other filters and its qdisc stay.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import TYPE_CHECKING

from natgw import faults
from natgw.config import GatewayConfig, IPNetwork
from natgw.dataplane import Dataplane
from natgw.dataplane.hooks import TC, mechanism
from natgw.dataplane.loader import (
    detach,
    filter_uses_map,
    has_clsact,
    natgw_filters,
)
from natgw.netns import NetnsNotFound, iproute, require_netns
from natgw.state import LanState

if TYPE_CHECKING:
    from pyroute2 import IPRoute

log = logging.getLogger(__name__)

RT_TABLE_MAIN = 254


class LanError(Exception):
    """A LAN device cannot be used; one-line message."""


def _oifs(route) -> list[int]:
    oif = route.get_attr("RTA_OIF")
    if oif:
        return [oif]
    return [hop["oif"] for hop in route.get_attr("RTA_MULTIPATH") or [] if hop.get("oif")]


def derive_lan_devices(ipr: IPRoute, cidrs: Iterable[IPNetwork],
                       exclude: Iterable[str]) -> list[str]:
    """The devices the main table routes `cidrs` into: those of every route inside a
    cidr, or where none is, of the route the kernel picks for the cidr's first address.
    Loopback and `exclude` (natgw's own devices) are left out."""
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

    skip = set(exclude) | {"lo"}
    found: list[str] = []
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    for net in cidrs:
        family = 2 if net.version == 4 else 10
        oifs: list[int] = []
        for r in ipr.get_routes(family=family, table=RT_TABLE_MAIN):
            dst = r.get_attr("RTA_DST")
            if dst is not None and ipaddress.ip_network(
                    f"{dst}/{r['dst_len']}", strict=False).subnet_of(net):
                oifs += _oifs(r)
        if not oifs:
            try:
                for r in ipr.route("get", dst=str(net.network_address)):
                    oifs += _oifs(r)
            except NetlinkError:
                pass  # unreachable: no device
        for oif in oifs:
            name = names.get(oif)
            if name and name not in skip and name not in found:
                found.append(name)
    return found


def wanted_lan_devices(cfg: GatewayConfig, netns: str | None, ipr: IPRoute) -> list[str]:
    """The LAN devices of a gateway's fast path: none when it is off, the file's
    lanDevices (each must exist), else derived from the routes to cidrs.
    ipr: a socket in netns."""
    if not cfg.fast:
        return []
    if cfg.lan_devices is not None:
        for i, dev in enumerate(cfg.lan_devices):
            if not ipr.link_lookup(ifname=dev):
                raise LanError(f"lanDevices[{i}]: device {dev} not found"
                               + (f" in netns {netns}" if netns else ""))
        return list(cfg.lan_devices)
    ours = [p.device for p in cfg.peers] + ([cfg.hub.device] if cfg.hub else [])
    if not ours:
        return []  # no device to fast-forward to (e.g. a gateway of pipes only)
    found = derive_lan_devices(ipr, cfg.cidrs, ours)
    if not found:
        log.warning("fast path: no route to cidrs leaves through a LAN device; "
                 "running without a LAN fast path (set lanDevices: to name them)")
    return found


def apply_lan(dp: Dataplane, netns: str | None, ipr: IPRoute, lan: list[LanState],
              wanted: list[str], save: Callable[[], None], xdp: bool = False) -> None:
    """Make the fast path's LAN devices exactly `wanted` (ipr: a socket in netns). `lan`
    is the record, changed in place; save() writes it: before each attach (the intent)
    and after each removal. xdp: Ethernet LAN devices also run the XDP program (after
    natgw_lan, which gets what it passes)."""
    for ls in list(lan):
        if ls.device not in wanted:
            remove_lan(dp, netns, ls, ipr)
            lan.remove(ls)
            save()
    attach = []
    for dev in wanted:
        found = ipr.link_lookup(ifname=dev)
        if not found:
            continue  # gone since it was derived: the next apply derives again
        ls = next((x for x in lan if x.device == dev), None)
        if ls is None or ls.ifindex != found[0]:
            if ls is not None:
                if ls.ifindex:
                    dp.forget_device(ls.ifindex)  # the device was recreated
                lan.remove(ls)
            # Only filters need natgw's own clsact qdisc; a tcx link needs none.
            own = mechanism() == TC and not has_clsact(ipr, found[0])
            lan.append(LanState(dev, found[0], own_qdisc=own))
            save()
            faults.step("lan-intent")
        attach.append(dev)
    for dev in attach:
        dp.attach_lan(dev, netns, ipr)
        dp.set_xdp(dev, netns, xdp, ipr)


def remove_lan(dp: Dataplane | None, netns: str | None, ls: LanState,
               ipr: IPRoute | None = None) -> None:
    """Take natgw's program (and the qdisc if natgw added it) off a recorded LAN device."""
    try:
        require_netns(netns)
    except NetnsNotFound:
        return  # gone with its devices
    with nullcontext(ipr) if ipr is not None else iproute(netns) as ipr:
        found = ipr.link_lookup(ifname=ls.device)
        if found and (not ls.ifindex or found[0] == ls.ifindex) \
                and natgw_filters(ipr, found[0]).get("ingress") == "lan":
            detach(ipr, found[0], remove_qdisc=ls.own_qdisc,
                   pins=dp.pin_dir if dp is not None else None)
    if dp is not None:
        dp.forget_device(ls.ifindex)


def sweep_lan(dp: Dataplane, netns: str | None) -> list[str]:
    """Take this gateway's LAN program off every device of the netns, recorded or not
    (a filter is the gateway's when its program uses the gateway's `devices` map).
    A qdisc is left: without a record natgw cannot know it added it. Returns the devices."""
    from natgw.dataplane.bpfsys import map_info  # noqa: PLC0415

    try:
        require_netns(netns)
    except NetnsNotFound:
        return []
    map_id = map_info(dp.tables.devices.fd).id
    done = []
    with iproute(netns) as ipr:
        for link in ipr.get_links():
            idx = link["index"]
            if natgw_filters(ipr, idx).get("ingress") == "lan" \
                    and filter_uses_map(ipr, idx, "ingress", map_id):
                detach(ipr, idx, remove_qdisc=False, pins=dp.pin_dir)
                dp.forget_device(idx)
                done.append(link.get_attr("IFLA_IFNAME"))
    return done

