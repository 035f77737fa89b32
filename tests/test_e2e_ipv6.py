"""Scenario 4: scenario 1 dual stack. Pods are also fd00:244::10/64 everywhere.

Cluster 1 knows cluster 2 as fd00:112::/64 (and 10.112.0.0/16), cluster 2
knows cluster 1 as fd00:121::/64; every check runs for IPv4 and IPv6. IPv6
routers do not fragment: big datagrams rely on the sender learning the path
MTU from an ICMPv6 Packet Too Big.
"""

import pytest
from e2e_traffic import TrafficChecks

from lab.harness import Topology

pytestmark = [pytest.mark.netns, pytest.mark.bpf]


class TestDualStack(TrafficChecks):
    topology = Topology(clusters=2, ipv6=True)
