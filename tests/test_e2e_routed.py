"""Scenario 6: clusters that do not overlap, peers without `as`: plain routing via natgw.

Cluster 1's pods are 10.241.0.0/16, cluster 2's 10.242.0.0/16 (and
fd00:241::/64, fd00:242::/64): natgw installs no mapping, routes each peer's
`cidr` into its tunnel, and still clamps the MSS. Every address is real, on
the pods and in the tunnel. Dual stack, so IPv6 routing is covered too.
"""

import pytest
from e2e_traffic import TrafficChecks

from lab.harness import Topology

pytestmark = [pytest.mark.netns, pytest.mark.bpf]


class TestRouted(TrafficChecks):
    topology = Topology(clusters=2, overlap=False, ipv6=True)
