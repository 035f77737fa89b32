"""Scenario 5: `interface:` peers, no tunnel: natgw translates on the bare underlay veth.

Each gateway's peer is `interface: <underlay veth>` with `via:` the other
gateway; routes for the remapped range go there. On the underlay the pods'
packets carry their real addresses (both 10.244.1.10), in the clear.
"""

import pytest
from e2e_traffic import TrafficChecks

from lab.harness import Topology

pytestmark = [pytest.mark.netns, pytest.mark.bpf]


class TestInterfacePeers(TrafficChecks):
    topology = Topology(clusters=2, link="interface")
