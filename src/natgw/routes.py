"""Routes natgw installs: each peer's routed ranges into its device.

Every natgw route carries its own routing protocol number, so `ip route show
proto natgw`-style queries (and `natgw down`) find exactly natgw's routes.
A route natgw did not make (another protocol) is never replaced or deleted:
natgw refuses to apply instead, like networkd leaves foreign routes alone.
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
            foreign = _foreign_route(ipr, net)
            if foreign is not None:
                raise RouteError(f"route {net} exists ({foreign}) and natgw did not create it")
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


def _foreign_route(ipr, net: str) -> str | None:
    """How the main table's route to exactly `net` is marked, if it is not natgw's."""
    n = ipaddress.ip_network(net)
    for r in ipr.get_routes(family=2 if n.version == 4 else 10, table=254):
        dst = r.get_attr("RTA_DST")
        if r["dst_len"] == n.prefixlen and dst is not None and \
                ipaddress.ip_address(dst) == n.network_address and r["proto"] != RTPROT_NATGW:
            return f"proto {r['proto']}"
    return None


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


def sweep_routes(netns: str | None, ifnames: list[str]) -> int:
    """Delete every natgw route (proto 78) into these devices, recorded or not.

    What a natgw killed between adding a route and recording it left behind.
    Returns how many were deleted.
    """
    n = 0
    with iproute(netns) as ipr:
        idx = {i for name in ifnames for i in ipr.link_lookup(ifname=name)}
        for family in (2, 10):
            for r in ipr.get_routes(family=family, proto=RTPROT_NATGW):
                if r.get_attr("RTA_OIF") not in idx:
                    continue
                try:
                    ipr.route("del", dst=f"{r.get_attr('RTA_DST')}/{r['dst_len']}",
                              oif=r.get_attr("RTA_OIF"), proto=RTPROT_NATGW, family=family,
                              table=r.get_attr("RTA_TABLE") or 254)
                    n += 1
                except NetlinkError as e:
                    if e.code not in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                        raise
    return n


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


FORWARDING_KEYS = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")


def _sysctl(netns: str | None, *args: str) -> str:
    import subprocess  # noqa: PLC0415

    from natgw.netns import exec_argv  # noqa: PLC0415

    try:
        done = subprocess.run(exec_argv(netns, ["sysctl", *args]), check=True,
                              capture_output=True, text=True, timeout=10)
    except subprocess.CalledProcessError as e:
        why = (e.stderr or "").strip().splitlines()
        raise RouteError(f"sysctl {' '.join(args)}: "
                         f"{why[-1] if why else f'exit status {e.returncode}'}") from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RouteError(f"sysctl {' '.join(args)}: {e}") from None
    return done.stdout.strip()


def read_forwarding(netns: str | None) -> dict[str, str]:
    """The forwarding sysctls as they are now (what `down` puts back)."""
    return {key: _sysctl(netns, "-n", key) for key in FORWARDING_KEYS}


def enable_forwarding(netns: str | None) -> None:
    """A gateway forwards: turn on IPv4 and IPv6 forwarding in its netns.

    Global, not per device: the devices traffic enters by (a cluster's LAN
    side) are not natgw's. The values before are recorded and restored on down.
    """
    for key in FORWARDING_KEYS:
        _sysctl(netns, "-qw", f"{key}=1")


def restore_sysctls(netns: str | None, values: dict[str, str]) -> None:
    for key, value in values.items():
        if key in FORWARDING_KEYS and value.isdigit():
            _sysctl(netns, "-qw", f"{key}={value}")
