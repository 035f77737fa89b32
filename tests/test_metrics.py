"""natgw.metrics: scrape over HTTP, parse, check exact counter deltas and peer health."""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_introspect import PEER, Loaded, expected_deltas, loaded_gateway, send_traffic

from natgw import __version__, state
from natgw import introspect as I
from natgw.config import HostPort
from natgw.dataplane import layout
from natgw.metrics import (
    NatgwCollector,
    PeerHealth,
    dataplane_metrics,
    drift_metrics,
    link_up,
    peer_metrics,
    serve_gateway_metrics,
    serve_metrics,
    state_peer_health,
)
from natgw.state import GatewayState, PeerState
from natgw.wireguard.model import DeviceStatus, PeerStatus, WireGuardError

NOW = 1_700_000_000.0
Samples = dict[tuple[str, frozenset], float]


@pytest.fixture(scope="module")
def gw(tmp_path_factory) -> Iterator[Loaded]:
    yield from loaded_gateway("metr", tmp_path_factory.mktemp("state"))


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.mark.bpf
def test_scrape_counts_exactly_the_traffic(gw):
    collector = NatgwCollector([gw.gateway], clock=lambda: NOW)
    with serve_metrics("127.0.0.1", 0, collector) as server:
        before = scrape(server.port)
        send_traffic(gw.dp)
        after = scrape(server.port)
    counters, stats = expected_deltas()
    for (mapping, direction), (packets, nbytes) in counters.items():
        labels = dict(gateway=gw.gateway, peer=PEER, direction=direction, mapping=mapping)
        for name, want in (("natgw_translated_packets_total", packets),
                           ("natgw_translated_bytes_total", nbytes)):
            got = value(after, name, **labels) - value(before, name, **labels)
            assert (name, mapping, direction, got) == (name, mapping, direction, want)
    for reason in ("truncated", "icmp_inner", "ipv6_exthdr", "rewrite_failed", "ipv6_routing"):
        labels = dict(gateway=gw.gateway, peer=PEER, reason=reason)
        got = (value(after, "natgw_dropped_packets_total", **labels)
               - value(before, "natgw_dropped_packets_total", **labels))
        assert (reason, got) == (reason, stats.get(reason, 0))
    labels = dict(gateway=gw.gateway, peer=PEER, event="unmatched")
    assert (value(after, "natgw_packet_events_total", **labels)
            - value(before, "natgw_packet_events_total", **labels)) == stats["unmatched"]
    assert value(after, "natgw_build_info", gateway=gw.gateway, version=__version__,
                 dataplane_build=gw.dp.programs.build) == 1


@pytest.mark.bpf
def test_only_named_gateways_and_no_address_labels(gw):
    with serve_metrics("127.0.0.1", 0, NatgwCollector([gw.gateway])) as server:
        samples = scrape(server.port)
    gateways = {dict(labels).get("gateway") for _, labels in samples}
    assert gateways == {gw.gateway}
    mappings = {dict(labels)["mapping"] for name, labels in samples
                if name == "natgw_translated_packets_total"}
    assert mappings == {"remote:10.245.0.0/16", "local:10.246.0.0/16", "remote:10.245.7.0/24",
                        "remote:fd00:b::/48", "local:fd00:c::/64"}


def test_unreadable_gateway_is_skipped_and_flagged(tmp_path):
    (tmp_path / "broken").mkdir()
    for name in layout.MAP_NAMES:
        (tmp_path / "broken" / name).write_text("not a bpf pin")
    collector = NatgwCollector(["broken", "absent"], root=str(tmp_path))
    with serve_metrics("127.0.0.1", 0, collector) as server:
        samples = scrape(server.port)
    assert value(samples, "natgw_scrape_error", gateway="broken") == 1
    assert not any(dict(labels).get("gateway") == "absent" for _, labels in samples)


PEERS = [
    # name, health, expected natgw_peer_up
    ("fresh", PeerHealth("g", "fresh", NOW - 10, 100, 200), 1),
    ("inside", PeerHealth("g", "inside", NOW - 179, 1, 2), 1),
    # WireGuard rejects a 180 s old session: natgw.wireguard.handshake_fresh.
    ("at limit", PeerHealth("g", "at limit", NOW - 180, 5, 6), 0),
    ("never", PeerHealth("g", "never", 0, 0, 0), 0),
    ("unreadable", PeerHealth("g", "unreadable"), 0),
    ("link up", PeerHealth("g", "link up", link_up=True), 1),
    ("link down", PeerHealth("g", "link down", link_up=False), 0),
]


def test_peer_metrics(tmp_path):
    collector = NatgwCollector([], root=str(tmp_path), peers=lambda: [p for _, p, _ in PEERS],
                               clock=lambda: NOW)
    with serve_metrics("127.0.0.1", 0, collector) as server:
        samples = scrape(server.port)
    for name, _health, up in PEERS:
        assert (name, value(samples, "natgw_peer_up", gateway="g", peer=name)) == (name, up)
    ts = "natgw_peer_last_handshake_timestamp_seconds"
    assert value(samples, ts, gateway="g", peer="fresh") == NOW - 10
    assert value(samples, ts, gateway="g", peer="never") == 0
    assert value(samples, "natgw_peer_receive_bytes_total", gateway="g", peer="fresh") == 100
    assert value(samples, "natgw_peer_transmit_bytes_total", gateway="g", peer="fresh") == 200
    # Interface peers and unreadable tunnels have no handshake or tunnel bytes.
    for peer in ("unreadable", "link up"):
        assert (ts, frozenset({"gateway": "g", "peer": peer}.items())) not in samples


def test_serve_binds_loopback_by_default_and_stops():
    server = serve_metrics(port=0, collector=NatgwCollector([]))
    port = server.port
    assert server.host == "127.0.0.1"
    scrape(port)
    server.shutdown()
    with pytest.raises(OSError):
        scrape(port)


# -- peer health from the state file -------------------------------------------


def _wg_peer(handshake: int, rx: int, tx: int) -> PeerStatus:
    return PeerStatus(bytes(32), None, (), handshake, rx, tx, None)


class FakeEngine:
    def __init__(self, statuses: dict[str, DeviceStatus | Exception]) -> None:
        self.statuses = statuses
        self.calls: list[tuple[str, str | None]] = []

    def status(self, ifname: str, netns: str | None, timeout: float | None = None
               ) -> DeviceStatus:
        self.calls.append((ifname, netns))
        st = self.statuses[ifname]
        if isinstance(st, Exception):
            raise st
        return st


def test_state_peer_health_from_engine_status():
    engine = FakeEngine({
        "wg-a": DeviceStatus("wg-a", "kernel", None, 51820,
                             (_wg_peer(1000, 10, 20), _wg_peer(1500, 1, 2)), None),
        "wg-b": DeviceStatus("wg-b", "wireguard-go", None, 51821, (), 42),
        "wg-c": WireGuardError("wireguard-go wg-c: device not running"),
    })
    st = GatewayState("gw", "ns1", "/c.yaml", [
        PeerState("a", "wg-a", 5, "kernel"),
        PeerState("b", "wg-b", 6, "wireguard-go"),
        PeerState("c", "wg-c", 7, "wireguard-go"),
    ])
    engines: list[str] = []

    def engine_for(name: str) -> FakeEngine:
        engines.append(name)
        return engine

    assert state_peer_health([st], engine_for) == [
        PeerHealth("gw", "a", 1500, 11, 22),  # newest handshake, summed bytes
        PeerHealth("gw", "b", 0, 0, 0),  # no WireGuard peer: never handshaked
        PeerHealth("gw", "c"),  # unreadable: down
    ]
    assert engines == ["kernel", "wireguard-go", "wireguard-go"]
    assert engine.calls == [("wg-a", "ns1"), ("wg-b", "ns1"), ("wg-c", "ns1")]


@pytest.mark.netns
def test_interface_peer_follows_link_state(netns_lab):
    a, b = netns_lab.netns("a"), netns_lab.netns("b")
    end_a, end_b = netns_lab.veth(a, None, b, None)
    st = GatewayState("gw", a, "/c.yaml", [PeerState("p", end_a, 0, "interface"),
                                           PeerState("q", "absent0", 0, "interface")])
    assert state_peer_health([st]) == [PeerHealth("gw", "p", link_up=True),
                                       PeerHealth("gw", "q", link_up=False)]
    # Carrier lost: the far end goes down, ours stays administratively up.
    subprocess.run(["ip", "-n", b, "link", "set", end_b, "down"], check=True)
    assert link_up(end_a, a) is False


# -- the Grafana dashboard uses only what the collector exports ----------------

DASHBOARD = Path(__file__).resolve().parents[1] / "dashboards" / "natgw.json"


def _exported() -> tuple[set[str], set[str]]:
    """Metric names (without _total) and label names of everything natgw exports."""
    net = ipaddress.ip_network
    rule = I.Rule("dst", net("10.245.0.0/16"), net("10.244.0.0/16"), 1, 84)
    m = I.MappingReport(0, "remote", net("10.244.0.0/16"), net("10.245.0.0/16"), rule, rule)
    dev = I.DeviceReport(5, "wg-c2", "c2", (m,), {"truncated": 1, "unmatched": 2},
                         fastpath={"redirect_eth": 3})
    families = [*dataplane_metrics([I.GatewayReport("gw", None, "abc", (dev,))]),
                *peer_metrics([PeerHealth("gw", "c2", 1, 2, 3, group="far", in_route=True)], NOW),
                drift_metrics({"gw": {"route": 1}}),
                *NatgwCollector([], root="/nonexistent").collect()]
    return ({f.name for f in families},
            {k for f in families for s in f.samples for k in s.labels} | {"gateway"})


def test_fast_path_decisions_per_device_and_lan_devices_have_no_translation_metrics():
    lan = I.DeviceReport(3, "eth0", None, (), {"unmatched": 9}, lan=True,
                         fastpath={"redirect_l3": 5, "ttl": 1})
    peer = I.DeviceReport(5, "c1-c2", "c2", (), {"unmatched": 2},
                          fastpath={"redirect_peer": 7})
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in dataplane_metrics([I.GatewayReport("gw", None, "abc", (lan, peer))])
               for s in f.samples}
    fast = {dict(k)["device"] + " " + dict(k)["decision"]: v for (n, k), v in samples.items()
            if n == "natgw_fastpath_packets_total"}
    assert fast == {"eth0 redirect_l3": 5, "eth0 ttl": 1, "c2 redirect_peer": 7}
    events = {dict(k)["peer"] for (n, k), _ in samples.items()
              if n == "natgw_packet_events_total"}
    assert events == {"c2"}


def test_dashboard_queries_use_exported_metrics_and_labels():
    doc = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in doc["templating"]["list"] if "definition" in v]
    legends = [t.get("legendFormat", "") for p in doc["panels"] for t in p.get("targets", [])]
    names, labels = _exported()
    used = {n.removesuffix("_total") for q in queries for n in re.findall(r"natgw_\w+", q)}
    assert used and used <= names, used - names
    by_labels = {lbl.strip() for q in queries for group in re.findall(r"by \(([^)]*)\)", q)
                 for lbl in group.split(",")}
    legend_labels = {lbl for f in legends for lbl in re.findall(r"\{\{(\w+)\}\}", f)}
    assert by_labels | legend_labels <= labels, (by_labels | legend_labels) - labels
    # Every metric the collector exports is shown somewhere.
    assert names == used


def test_gateway_server_reads_peers_from_the_state_at_each_scrape(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "STATE_DIR", tmp_path)
    gw = SimpleNamespace(cfg=SimpleNamespace(name="g1", metrics=HostPort("127.0.0.1", 0)))
    with serve_gateway_metrics(gw) as server:
        assert not any(name == "natgw_peer_up" for name, _ in scrape(server.port))
        state.save_state(GatewayState("g1", None, "/c.yaml",
                                      [PeerState("p", "natgw-absent0", 0, "interface")]))
        assert value(scrape(server.port), "natgw_peer_up", gateway="g1", peer="p") == 0


def test_hub_clients_are_peers_of_their_own():
    """Each hub client is a `peer`: its own handshake and bytes, from one status read."""
    from natgw.keys import encode_key
    from natgw.state import ClientState, HubState

    k1, k2, k3 = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32
    engine = FakeEngine({"hubdev": DeviceStatus("hubdev", "wireguard-go", None, 8765, (
        PeerStatus(k1, "198.18.1.2:4000", (), 1000, 10, 20, None),
        PeerStatus(k2, None, (), 0, 0, 0, None),
    ), 42)})
    hub = HubState(PeerState("hubdev", "hubdev", 9, "wireguard-go"), "10.192.0.1/24", [
        ClientState("cloud", encode_key(k1), "10.192.0.2"),
        ClientState("laptop", encode_key(k2), "10.192.0.3"),
        ClientState("gone", encode_key(k3), "10.192.0.4"),  # not on the device
        ClientState("new", "", "10.192.0.5"),  # no key yet
    ])
    st = GatewayState("gw", "ns1", "/c.yaml", [], hub=hub)
    assert state_peer_health([st], lambda name: engine) == [
        PeerHealth("gw", "cloud", 1000, 10, 20),
        PeerHealth("gw", "laptop", 0, 0, 0),
        PeerHealth("gw", "gone"),
        PeerHealth("gw", "new"),
    ]
    assert engine.calls == [("hubdev", "ns1")]  # one read for every client
