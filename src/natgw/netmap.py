"""NETMAP: an address moved to another network of the same size, keeping its host bits.

The one rule natgw's dataplane applies to every translated address (bpf/ does
it in C); `natgw lookup`, the lab and the tests compute it here.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def netmap(address: IPAddress | str, to: IPNetwork | str) -> IPAddress:
    """`to`'s network bits with `address`'s host bits (for `to`'s prefix length)."""
    address, to = ipaddress.ip_address(address), ipaddress.ip_network(to)
    if address.version != to.version:
        raise ValueError(f"{address} and {to} are not of one address family")
    host = int(address) & int(to.hostmask)
    # The family's own class: ip_address(int) takes any int below 2**32 for IPv4.
    return type(to.network_address)(int(to.network_address) | host)
