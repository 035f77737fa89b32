"""Scenario 2: the peer is plain WireGuard (wireguard-go, `wg set`, routes), no natgw.

Cluster 2 knows nothing of the overlap: its gateway routes 10.121.0.0/16 (its
view of cluster 1) into the tunnel and accepts it from there. natgw on cluster
1 translates both directions with `remote` (cluster 2's pods as 10.112.0.0/16)
and `local` (cluster 1's pods as cluster 2 sees them, 10.121.0.0/16), so inside
the tunnel cluster 1's pod is 10.121.1.10 and cluster 2's is its real 10.244.1.10.
Dual stack, so `local` mappings are checked for IPv6 too (fd00:121::/64).
"""

import pytest
from e2e_traffic import TrafficChecks

from lab.harness import Topology

pytestmark = [pytest.mark.netns, pytest.mark.bpf]


class TestOneSided(TrafficChecks):
    topology = Topology(clusters=2, plain=(2,), ipv6=True)
