"""Scenario 3: three clusters on the same pod CIDR, full mesh, every ordered pair.

Cluster i knows cluster j as 10.<100 + 10 i + j>.0.0/16: six ranges, one per
ordered pair, each on its own tunnel device, so a mapping installed on the
wrong device or for the wrong direction fails its pair.
"""

import pytest
from e2e_traffic import TrafficChecks

from lab.harness import Topology

pytestmark = [pytest.mark.netns, pytest.mark.bpf]


class TestMesh(TrafficChecks):
    topology = Topology(clusters=3)
