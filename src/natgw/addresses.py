"""Our own addresses on the tunnel devices natgw made (`peers[].address`, `hub.address`).

Added without a prefix route (IFA_F_NOPREFIXROUTE): the address's network is routed
like every other natgw route (proto natgw), so `down` and edits find it and a kernel
route never shadows or outlives natgw's. Only global-scope addresses are managed.
"""

from __future__ import annotations

import ipaddress

from pyroute2.netlink.exceptions import NetlinkError

from natgw.netns import iproute
from natgw.routes import RouteError

IFA_F_NODAD = 0x02  # IPv6: no duplicate address detection (a point-to-point tunnel)
IFA_F_NOPREFIXROUTE = 0x200
RT_SCOPE_UNIVERSE = 0

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def set_addresses(netns: str | None, ifname: str, wanted: list[IPInterface]) -> bool:
    """Make the device's global addresses exactly `wanted`; True if anything changed."""
    with iproute(netns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise RouteError(f"addresses: device {ifname} not found")
        have = {
            ipaddress.ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
            for a in ipr.get_addr(index=idx[0])
            if a["scope"] == RT_SCOPE_UNIVERSE
        }
        changed = False
        for iface in have - set(wanted):
            _addr(ipr, "del", idx[0], iface, ifname)
            changed = True
        for iface in wanted:
            if iface not in have:
                _addr(ipr, "add", idx[0], iface, ifname)
                changed = True
        return changed


def _addr(ipr, op: str, index: int, iface: IPInterface, ifname: str) -> None:
    flags = IFA_F_NOPREFIXROUTE | (IFA_F_NODAD if iface.version == 6 else 0)
    try:
        ipr.addr(op, index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen,
                 IFA_FLAGS=flags)
    except NetlinkError as e:
        why = e.args[1] if len(e.args) > 1 else e
        raise RouteError(f"address {op} {iface} dev {ifname}: {why}") from e
