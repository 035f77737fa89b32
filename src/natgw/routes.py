"""Routes natgw installs: each peer's routed ranges into its device.

Every natgw route carries its own routing protocol number, so `ip route show
proto natgw`-style queries (and `natgw down`) find exactly natgw's routes.
"""

from __future__ import annotations

import errno
import ipaddress

from pyroute2.netlink.exceptions import NetlinkError

from natgw.netns import iproute

RTPROT_NATGW = 78  # unused by iproute2's rt_protos; marks natgw's routes


class RouteError(Exception):
    """A route could not be installed or removed; one-line message."""


def set_routes(netns: str | None, ifname: str, networks: list[str], via: str | None = None,
               stale: list[str] | None = None) -> None:
    """Route each network into ifname (via a next hop if given); remove stale ones.

    `replace` makes this idempotent and never leaves a moment without a route.
    """
    with iproute(netns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise RouteError(f"routes: device {ifname} not found")
        for net in networks:
            family = ipaddress.ip_network(net).version
            kw = {"dst": net, "oif": idx[0], "proto": RTPROT_NATGW,
                  "family": 2 if family == 4 else 10}
            if via:
                kw["gateway"] = via
            try:
                ipr.route("replace", **kw)
            except NetlinkError as e:
                raise RouteError(f"route {net} dev {ifname}: {e.args[1] if len(e.args) > 1 else e}"
                                 ) from e
        for net in stale or []:
            if net not in networks:
                delete_route(ipr, net)


def delete_route(ipr, net: str) -> None:
    family = 2 if ipaddress.ip_network(net).version == 4 else 10
    try:
        ipr.route("del", dst=net, proto=RTPROT_NATGW, family=family)
    except NetlinkError as e:
        if e.code not in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
            raise


def remove_routes(netns: str | None, networks: list[str]) -> None:
    with iproute(netns) as ipr:
        for net in networks:
            delete_route(ipr, net)


def natgw_routes(netns: str | None) -> list[str]:
    """Destinations of every natgw route in the netns (both families)."""
    out = []
    with iproute(netns) as ipr:
        for family in (2, 10):
            for r in ipr.get_routes(family=family, proto=RTPROT_NATGW):
                out.append(f"{r.get_attr('RTA_DST')}/{r['dst_len']}")
    return out


def set_link(netns: str | None, ifname: str, mtu: int | None = None) -> None:
    """Bring a link up (with an MTU if given)."""
    with iproute(netns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise RouteError(f"device {ifname} not found")
        kw = {"state": "up"}
        if mtu:
            kw["mtu"] = mtu
        ipr.link("set", index=idx[0], **kw)


def enable_forwarding(netns: str | None) -> None:
    """A gateway forwards: turn on IPv4 and IPv6 forwarding in its netns."""
    import subprocess  # noqa: PLC0415

    from natgw.netns import exec_argv  # noqa: PLC0415

    keys = ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]
    subprocess.run(exec_argv(netns, ["sysctl", "-qw", *keys]), check=True,
                   capture_output=True, timeout=10)

