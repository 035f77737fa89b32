"""NETMAP, the one address rule of the dataplane, as natgw lookup and the lab compute it."""

from __future__ import annotations

import ipaddress

import pytest

from natgw.netmap import netmap


@pytest.mark.parametrize(("address", "to", "expected"), [
    ("10.245.3.4", "10.244.0.0/16", "10.244.3.4"),
    ("10.245.3.4", "10.0.0.0/8", "10.245.3.4"),
    ("10.245.3.4", "192.168.7.0/24", "192.168.7.4"),
    ("10.245.3.4", "172.16.0.9/32", "172.16.0.9"),
    ("fd00:b:0:7::34", "fd00:a::/48", "fd00:a:0:7::34"),
])
def test_netmap_keeps_host_bits(address, to, expected):
    assert str(netmap(ipaddress.ip_address(address), ipaddress.ip_network(to))) == expected
    assert str(netmap(address, to)) == expected  # text in, an address out


def test_netmap_refuses_mixed_families():
    with pytest.raises(ValueError, match="not of one address family"):
        netmap("10.245.3.4", "fd00:a::/48")
