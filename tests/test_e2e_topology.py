"""The harness's addresses, written out: what the e2e scenarios expect, as literals.

The scenarios take every expected address from `Topology`; this table pins
those addresses to the translation semantics in the README, so that a
mistake in `Topology` cannot make the harness and its checks agree on
something natgw should not do. No root needed.
"""

import pytest

from lab.harness import Topology

TWO = Topology(clusters=2, ipv6=True)
MESH = Topology(clusters=3)
ONE_SIDED = Topology(clusters=2, plain=(2,), ipv6=True)
ROUTED = Topology(clusters=2, overlap=False, ipv6=True)

# topology, from, to, family: the address the client dials, the client as the
# server sees it, and (src, dst) between the gateways.
CASES = [
    (TWO, 1, 2, 4, "10.112.1.10", "10.121.1.10", ("10.244.1.10", "10.244.1.10")),
    (TWO, 2, 1, 4, "10.121.1.10", "10.112.1.10", ("10.244.1.10", "10.244.1.10")),
    (TWO, 1, 2, 6, "fd00:112::10", "fd00:121::10", ("fd00:244::10", "fd00:244::10")),
    (MESH, 1, 3, 4, "10.113.1.10", "10.131.1.10", ("10.244.1.10", "10.244.1.10")),
    (MESH, 3, 2, 4, "10.132.1.10", "10.123.1.10", ("10.244.1.10", "10.244.1.10")),
    # A plain peer sees cluster 1 through natgw's `local` mapping, in the tunnel too.
    (ONE_SIDED, 1, 2, 4, "10.112.1.10", "10.121.1.10", ("10.121.1.10", "10.244.1.10")),
    (ONE_SIDED, 2, 1, 4, "10.121.1.10", "10.112.1.10", ("10.244.1.10", "10.121.1.10")),
    (ONE_SIDED, 2, 1, 6, "fd00:121::10", "fd00:112::10", ("fd00:244::10", "fd00:121::10")),
    (ROUTED, 1, 2, 4, "10.242.1.10", "10.241.1.10", ("10.241.1.10", "10.242.1.10")),
    (ROUTED, 2, 1, 6, "fd00:241::10", "fd00:242::10", ("fd00:242::10", "fd00:241::10")),
]


@pytest.mark.parametrize("topo,i,j,v,dial,client_seen_as,wire", CASES)
def test_addresses(topo, i, j, v, dial, client_seen_as, wire):
    assert topo.addr_of(i, j, v) == dial
    assert topo.addr_of(j, i, v) == client_seen_as
    assert topo.wire(i, j, v) == wire


def test_every_ordered_pair_has_its_own_range():
    views = [MESH.view(i, j, v) for v in (4, 6) for i, j in MESH.pairs]
    assert len(set(views)) == len(views) == 12


@pytest.mark.parametrize("topo", [
    Topology(clusters=3, plain=(2, 3)),  # nobody translates between two plain gateways
    Topology(clusters=2, link="interface", ipv6=True),  # an interface peer has one via
    Topology(clusters=2, plain=(3,)),
    Topology(clusters=1),
])
def test_impossible_topologies_are_refused(topo):
    with pytest.raises(ValueError):
        topo.check()
