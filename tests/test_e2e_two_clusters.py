"""Scenario 1: two clusters on the same pod CIDR, both with natgw, each remapping the other.

Both pods are 10.244.1.10; cluster 1 reaches cluster 2 as 10.112.0.0/16 and
cluster 2 reaches cluster 1 as 10.121.0.0/16. Inside the tunnel both ends
carry their real address. The checks are TrafficChecks' (e2e_traffic).
"""

import pytest
from e2e_traffic import TrafficChecks

from lab.harness import Topology

pytestmark = [pytest.mark.netns, pytest.mark.bpf]


class TestTwoClusters(TrafficChecks):
    topology = Topology(clusters=2)
