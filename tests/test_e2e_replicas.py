"""Active/active replicas: requests through one gateway replica, replies through another.

Two clusters on the same pod CIDR with two gateways each (the harness's
--replicas 2: replicas a and b, every replica peering with both of the other
side's). The paths are forced: cluster 1's pod sends only through 1a, cluster
2's pod only through 2b, and the tunnel 1a-2b is down at both ends, so

    request  pod1 -> 1a -> 2a -> pod2        reply  pod2 -> 2b -> 1b -> pod1

natgw keeps no per-flow state, so every kind of traffic passes, translated as
with one gateway. The same topology with conntrack NAT (iptables NETMAP, as
the benchmark's iptables mode) passes on one path and fails on these: the
reply reaches a gateway whose conntrack never saw the flow, which classifies
the SYN-ACK (the echo reply) as invalid, so NAT is never applied to it and it
leaves with the pod's real, overlapping address, which the far side drops.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator

import pytest
from e2e_traffic import (
    harness_run,
    tcp_bulk,
    tcp_many,
    udp_exchange,
    wait_reachable,
)

from lab.conntrack import count_leaks, invalid, leaked
from lab.harness import Run, Topology, use_paths
from lab.net import ping, sh
from natgw.netns import netns_socket

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

A, B = 1, 2  # replicas a and b
BULK = 4 * 1024 * 1024


def asymmetric(run: Run) -> None:
    """Requests 1a -> 2a, replies 2b -> 1b."""
    use_paths(run, {1: A, 2: B}, cut={(1, A, 2, B)})


def pod_link_bytes(run: Run) -> dict[tuple[int, int, str], int]:
    """Per gateway (cluster, replica): bytes received from its pod ("in") and sent to it,
    read at the pod's end of the link: the fast path hands packets to the pod's end with
    bpf_redirect_peer, which the gateway's end does not count as sent."""
    out = {}
    for i, r in run.replicas():
        link = json.loads(sh(run.pod(i), "ip", "-j", "-s", "link", "show", run.pod_end(i, r)))
        stats = link[0]["stats64"]
        out[(i, r, "in")], out[(i, r, "out")] = stats["tx"]["bytes"], stats["rx"]["bytes"]
    return out


class TestNatgw:
    @pytest.fixture(scope="class")
    @classmethod
    def run(cls) -> Iterator[Run]:
        for run in harness_run(Topology(clusters=2, replicas=2), reachable=False):
            wait_reachable(run)
            asymmetric(run)
            yield run

    @staticmethod
    def ends(run: Run) -> tuple[str, str, str, str]:
        topo = run.topology
        return run.pod(1), run.pod(2), topo.pod_addr(2), topo.addr_of(1, 2)

    def test_tcp_bulk_goes_out_through_one_replica_and_back_through_the_other(
            self, run: Run) -> None:
        client, server, own, dst = self.ends(run)
        before = pod_link_bytes(run)
        t = tcp_bulk(client, server, own, dst, BULK)
        d = {k: v - before[k] for k, v in pod_link_bytes(run).items()}
        assert t.received == t.sent and t.echoed == t.sent
        assert t.client_seen_as == run.topology.addr_of(2, 1)
        # The data: in at 1a, out at 2a. The ACKs and the digest: in at 2b, out at 1b.
        assert d[(1, A, "in")] >= BULK and d[(2, A, "out")] >= BULK
        assert d[(2, B, "in")] > 0 and d[(1, B, "out")] > 0
        # Nothing the other way (a little ARP and ND at most).
        for unused in ((1, A, "out"), (1, B, "in"), (2, A, "in"), (2, B, "out")):
            assert d[unused] < 2000, (unused, d)

    def test_ping(self, run: Run) -> None:
        client, _, _, dst = self.ends(run)
        assert ping(client, dst, count=3) == 3

    def test_many_short_tcp_connections(self, run: Run) -> None:
        client, server, own, dst = self.ends(run)
        c = tcp_many(client, server, own, dst, 200)
        assert c.answered == 200
        assert c.client_seen_as == {run.topology.addr_of(2, 1)}

    def test_udp_request_response(self, run: Run) -> None:
        client, server, own, dst = self.ends(run)
        request = os.urandom(200)
        x = udp_exchange(client, server, own, dst, request)
        assert x.server_got == request and x.reply == request[::-1]
        assert x.client_seen_as == run.topology.addr_of(2, 1)
        assert x.reply_from == dst


# --- the contrast: conntrack NAT ----------------------------------------------------------

def tcp_connects(client_ns: str, server_ns: str, server_addr: str, dst: str,
                 timeout: float = 3.0) -> bool:
    """A TCP connection from client_ns to dst, to a server listening in server_ns."""
    with netns_socket(server_ns, socket.AF_INET, socket.SOCK_STREAM) as srv, \
            netns_socket(client_ns, socket.AF_INET, socket.SOCK_STREAM) as cli:
        srv.bind((server_addr, 0))
        srv.listen(4)
        cli.settimeout(timeout)
        try:
            cli.connect((dst, srv.getsockname()[1]))
        except TimeoutError:
            return False
        return True


class TestConntrackContrast:
    @pytest.fixture(scope="class")
    @classmethod
    def run(cls) -> Iterator[Run]:
        for run in harness_run(Topology(clusters=2, replicas=2, conntrack=True),
                               reachable=False):
            count_leaks(run.gw(2, B), [run.tunnel_dev(2, 1, B, r) for r in (A, B)],
                        run.topology.pod_cidr(2))
            yield run

    def test_conntrack_nat_passes_when_both_directions_use_one_replica(self, run: Run) -> None:
        """The control: the setup is right, only the path matters."""
        use_paths(run, {1: A, 2: A}, cut={(1, A, 2, B), (1, B, 2, A)})
        topo = run.topology
        assert ping(run.pod(1), topo.addr_of(1, 2), count=3) == 3
        t = tcp_bulk(run.pod(1), run.pod(2), topo.pod_addr(2), topo.addr_of(1, 2), 256 * 1024)
        assert t.received == t.sent and t.client_seen_as == topo.addr_of(2, 1)

    def test_tcp_fails_on_asymmetric_paths_the_way_conntrack_must(self, run: Run) -> None:
        asymmetric(run)
        topo, gw = run.topology, run.gw(2, B)
        before, leaks = invalid(gw), leaked(gw)
        assert not tcp_connects(run.pod(1), run.pod(2), topo.pod_addr(2), topo.addr_of(1, 2))
        # The SYN reached pod2 through 2a, which translated it; the SYN-ACK went out
        # through 2b, whose conntrack had never seen the SYN: invalid, so no NAT, and
        # it left with pod2's real address (dropped by 1b's WireGuard allowed-ips).
        assert invalid(gw) > before
        assert leaked(gw) > leaks

    def test_ping_fails_on_asymmetric_paths_the_way_conntrack_must(self, run: Run) -> None:
        asymmetric(run)
        topo, gw = run.topology, run.gw(2, B)
        before, leaks = invalid(gw), leaked(gw)
        assert ping(run.pod(1), topo.addr_of(1, 2), count=3) == 0
        assert invalid(gw) >= before + 3  # every echo reply: no request seen
        assert leaked(gw) >= leaks + 3
