"""natgw.introspect: tables, counters, drops and lookups of a loaded dataplane.

Known packets run through the compiled programs (BPF_PROG_TEST_RUN on
loopback, see bpf_run.py); the counters read back must grow by exactly
their number and IP size. test_metrics and test_cli_maps reuse the
fixture and the traffic table from here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from bpf_run import LO_IFINDEX, TC_ACT_SHOT, TC_ACT_UNSPEC, Runner, run_gateway_name
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet, Raw

from natgw import introspect as I
from natgw import state
from natgw.dataplane import Dataplane, Mapping
from natgw.state import GatewayState, PeerState

# Our host L (seen by the peer as LA), the peer's host R (seen by us as RA),
# as in test_dataplane_cases. SPECIFIC overlaps the remote /16 with a /24:
# LPM must prefer it.
L, LA, R, RA = "10.244.1.2", "10.246.1.2", "10.244.3.4", "10.245.3.4"
L6, RA6 = "fd00:a::12", "fd00:b:0:7::34"
OTHER, OTHER2 = "192.168.1.1", "192.168.2.2"
REMOTE = Mapping.parse("remote", "10.244.0.0/16", "10.245.0.0/16")
LOCAL = Mapping.parse("local", "10.244.0.0/16", "10.246.0.0/16")
SPECIFIC = Mapping.parse("remote", "10.99.0.0/24", "10.245.7.0/24")
REMOTE6 = Mapping.parse("remote", "fd00:a::/48", "fd00:b::/48")
LOCAL6 = Mapping.parse("local", "fd00:a::/64", "fd00:c::/64")
MAPPINGS = [REMOTE, LOCAL, SPECIFIC, REMOTE6, LOCAL6]
PEER = "cluster2"


def label(m: Mapping) -> str:
    return f"{m.kind}:{m.as_}"


@dataclass
class Send:
    """`count` copies of a packet in one direction; `counts` says which mapping
    directions must grow by count packets and count * len(pkt) bytes."""

    direction: str
    pkt: Packet | bytes
    count: int
    verdict: int
    counts: tuple[Mapping, ...] = ()
    stat: str | None = None  # device counter that must grow by count


UDP64 = UDP(sport=5353, dport=53) / Raw(b"q" * 64)
TCP100 = TCP(sport=40000, dport=80, flags="PA") / Raw(b"x" * 100)
TRAFFIC = [
    # Only the destination matches: one mapping counts.
    Send("egress", IP(src=OTHER, dst=RA) / UDP64, 3, TC_ACT_UNSPEC, (REMOTE,)),
    # Both addresses translated: the packet counts in both mappings.
    Send("ingress", IP(src=R, dst=LA) / TCP100, 2, TC_ACT_UNSPEC, (REMOTE, LOCAL)),
    Send("egress", IP(src=OTHER, dst="10.245.7.9") / UDP64, 4, TC_ACT_UNSPEC, (SPECIFIC,)),
    Send("egress", IPv6(src=L6, dst=RA6) / UDP64, 1, TC_ACT_UNSPEC, (REMOTE6, LOCAL6)),
    # Matched but cut short: dropped, counted as a drop, not as translated.
    Send("egress", bytes(IP(src=L, dst=RA, proto=6)) + b"\x00" * 10, 2, TC_ACT_SHOT,
         stat="truncated"),
    Send("egress", IP(src=OTHER, dst=OTHER2) / UDP64, 1, TC_ACT_UNSPEC, stat="unmatched"),
]


def expected_deltas() -> tuple[dict[tuple[str, str], tuple[int, int]], dict[str, int]]:
    """((mapping label, direction) -> (packets, bytes)), (stat -> count) that TRAFFIC adds."""
    counters = {(label(m), d): (0, 0) for m in MAPPINGS for d in ("egress", "ingress")}
    stats: dict[str, int] = {}
    for s in TRAFFIC:
        for m in s.counts:
            p, b = counters[(label(m), s.direction)]
            counters[(label(m), s.direction)] = (p + s.count, b + s.count * len(bytes(s.pkt)))
        if s.stat:
            stats[s.stat] = stats.get(s.stat, 0) + s.count
    return counters, stats


def send_traffic(dp: Dataplane) -> None:
    runner = Runner(dp)
    for s in TRAFFIC:
        for _ in range(s.count):
            assert runner.run(s.direction, s.pkt).verdict == s.verdict


@dataclass
class Loaded:
    gateway: str
    dp: Dataplane


def loaded_gateway(suffix: str, state_dir) -> Iterator[Loaded]:
    """A dataplane on loopback with MAPPINGS, and a state file naming its peer."""
    name = f"{run_gateway_name()}-{suffix}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(state, "STATE_DIR", state_dir)
        # The CLI in a subprocess reads the same state directory.
        mp.setenv("NATGW_STATE_DIR", str(state_dir))
        dp = Dataplane.load(name)
        try:
            dp.tables.set_device(LO_IFINDEX, 14, 0, 0)
            dp.tables.set_mappings(LO_IFINDEX, MAPPINGS)
            state.save_state(GatewayState(name, None, "/etc/natgw/cluster.yaml",
                                          [PeerState(PEER, "lo", LO_IFINDEX, "interface")]))
            yield Loaded(name, dp)
        finally:
            dp.destroy()


@pytest.fixture(scope="module")
def gw(tmp_path_factory) -> Iterator[Loaded]:
    yield from loaded_gateway("insp", tmp_path_factory.mktemp("state"))


def by_label(report: I.GatewayReport) -> dict[tuple[str, str], tuple[int, int]]:
    (dev,) = report.devices
    return {(m.label, d): (m.rule(d).packets, m.rule(d).bytes)
            for m in dev.mappings for d in ("egress", "ingress")}


def delta(after: dict, before: dict) -> dict:
    return {k: tuple(a - b for a, b in zip(v, before[k], strict=True)) if isinstance(v, tuple)
            else v - before[k] for k, v in after.items()}


# -- tables and counters -------------------------------------------------------


@pytest.mark.bpf
def test_report_lists_device_peer_and_rules(gw):
    report = I.read_gateway(gw.gateway)
    assert (report.gateway, report.netns, report.build) == (gw.gateway, None,
                                                           gw.dp.programs.build)
    (dev,) = report.devices
    assert (dev.ifindex, dev.ifname, dev.peer, dev.label) == (1, "lo", PEER, PEER)
    remote = next(m for m in dev.mappings if m.label == "remote:10.245.0.0/16")
    assert (remote.kind, str(remote.cidr), str(remote.as_)) == ("remote", "10.244.0.0/16",
                                                                "10.245.0.0/16")
    # Egress: the packet carries the "as" as destination; ingress: the real cidr as source.
    assert (remote.egress.side, str(remote.egress.match), str(remote.egress.rewrite)) == (
        "dst", "10.245.0.0/16", "10.244.0.0/16")
    assert (remote.ingress.side, str(remote.ingress.match), str(remote.ingress.rewrite)) == (
        "src", "10.244.0.0/16", "10.245.0.0/16")
    local = next(m for m in dev.mappings if m.label == "local:10.246.0.0/16")
    assert (local.egress.side, str(local.egress.match), str(local.egress.rewrite)) == (
        "src", "10.244.0.0/16", "10.246.0.0/16")
    assert (local.ingress.side, str(local.ingress.match), str(local.ingress.rewrite)) == (
        "dst", "10.246.0.0/16", "10.244.0.0/16")
    assert sorted(m.label for m in dev.mappings) == sorted(label(m) for m in MAPPINGS)
    assert set(dev.drops) == {"truncated", "icmp_inner", "ipv6_exthdr", "rewrite_failed",
                              "ipv6_routing"}
    assert set(dev.events) == {"unmatched", "unparsed", "mss_clamped"}


@pytest.mark.bpf
def test_counters_grow_by_exactly_the_traffic(gw):
    before = I.read_gateway(gw.gateway)
    send_traffic(gw.dp)
    after = I.read_gateway(gw.gateway)
    counters, stats = expected_deltas()
    assert delta(by_label(after), by_label(before)) == counters
    got_stats = delta(after.devices[0].stats, before.devices[0].stats)
    assert got_stats == {**{n: 0 for n in got_stats}, **stats}


@pytest.mark.bpf
def test_json_has_the_documented_shape(gw):
    (doc,) = I.to_json([I.read_gateway(gw.gateway)])
    assert set(doc) == {"gateway", "netns", "dataplane_build", "devices"}
    (dev,) = doc["devices"]
    assert set(dev) == {"ifindex", "ifname", "peer", "mappings", "drops", "events", "lan",
                        "fastpath"}
    assert dev["lan"] is False and dev["fastpath"] == {}  # a test-run device: no fast path
    m = next(m for m in dev["mappings"] if m["label"] == "local:10.246.0.0/16")
    assert set(m) == {"id", "kind", "cidr", "as", "label", "egress", "ingress"}
    assert {k: v for k, v in m["ingress"].items() if k not in ("packets", "bytes")} == {
        "side": "dst", "match": "10.246.0.0/16", "rewrite": "10.244.0.0/16"}
    assert isinstance(m["egress"]["packets"], int)


@pytest.mark.bpf
def test_gateway_names_and_netns_filter(gw, tmp_path):
    assert gw.gateway in I.gateway_names()
    # The state says natgw's own netns (None): a --netns filter leaves it out.
    assert gw.gateway not in I.gateway_names(netns="elsewhere")


def test_missing_gateway_is_gone(tmp_path):
    with pytest.raises(I.GatewayGone, match="not loaded"):
        I.read_gateway("nosuch", root=str(tmp_path))
    assert I.read_gateways(["nosuch"], root=str(tmp_path)) == []
    assert I.gateway_names(root=str(tmp_path / "absent")) == []


# -- lookup: the dataplane's own LPM lookups -----------------------------------

LOOKUPS = [
    # address, [(direction, side, kind, translated, matched prefix)]
    (RA, [("egress", "dst", "remote", "10.244.3.4", "10.245.0.0/16")]),
    # The real address of our hosts and of the peer's collide: both tables hit.
    (L, [("egress", "src", "local", "10.246.1.2", "10.244.0.0/16"),
         ("ingress", "src", "remote", "10.245.1.2", "10.244.0.0/16")]),
    (LA, [("ingress", "dst", "local", "10.244.1.2", "10.246.0.0/16")]),
    # Longest prefix wins over the /16.
    ("10.245.7.9", [("egress", "dst", "remote", "10.99.0.9", "10.245.7.0/24")]),
    ("10.99.0.200", [("ingress", "src", "remote", "10.245.7.200", "10.99.0.0/24")]),
    (RA6, [("egress", "dst", "remote", "fd00:a:0:7::34", "fd00:b::/48")]),
    (L6, [("egress", "src", "local", "fd00:c::12", "fd00:a::/64"),
          ("ingress", "src", "remote", "fd00:b::12", "fd00:a::/48")]),
    (OTHER, []),
    ("2001:db8::1", []),
]


@pytest.mark.bpf
@pytest.mark.parametrize(("address", "expected"), LOOKUPS, ids=[a for a, _ in LOOKUPS])
def test_lookup(gw, address, expected):
    got = I.lookup(address, [gw.gateway])
    assert [(t.direction, t.side, t.kind, str(t.translated), str(t.match)) for t in got] == \
        expected
    for t in got:
        assert (t.gateway, t.ifindex, t.ifname, t.peer) == (gw.gateway, 1, "lo", PEER)
        # The mapping behind the entry, read back by its id.
        assert any(t.cidr == m.cidr and t.as_ == m.as_ and t.kind == m.kind for m in MAPPINGS)


@pytest.mark.bpf
def test_lookup_json(gw):
    (doc,) = I.translation_json(I.lookup(ipaddress.ip_address(RA), [gw.gateway]))
    assert doc == {
        "gateway": gw.gateway, "ifindex": 1, "ifname": "lo", "peer": PEER,
        "direction": "egress", "side": "dst", "kind": "remote",
        "address": RA, "translated": "10.244.3.4",
        "match": "10.245.0.0/16", "rewrite": "10.244.0.0/16",
        "mapping": {"id": doc["mapping"]["id"], "cidr": "10.244.0.0/16", "as": "10.245.0.0/16"},
    }


# -- rates and the watch loop --------------------------------------------------

K = ("gw", 5, "remote:10.245.0.0/16", "egress")
K2 = ("gw", 5, "remote:10.245.0.0/16", "ingress")

RATES = [
    ("steady", {K: (100, 10_000)}, {K: (300, 30_000)}, 2.0, {K: I.Rate(100.0, 10_000.0)}),
    ("idle", {K: (7, 700)}, {K: (7, 700)}, 1.0, {K: I.Rate(0.0, 0.0)}),
    # Reinstalled mapping: counts from zero again, all of it is new.
    ("reset", {K: (1000, 9000)}, {K: (10, 500)}, 0.5, {K: I.Rate(20.0, 1000.0)}),
    ("new counter", {}, {K: (10, 500)}, 1.0, {K: None}),
    ("gone counter", {K: (1, 1), K2: (1, 1)}, {K2: (3, 5)}, 1.0, {K2: I.Rate(2.0, 4.0)}),
    ("no time elapsed", {K: (1, 1)}, {K: (3, 5)}, 0.0, {K: None}),
]


@pytest.mark.parametrize(("before", "after", "seconds", "expected"),
                         [r[1:] for r in RATES], ids=[r[0] for r in RATES])
def test_rates(before, after, seconds, expected):
    assert I.rates(before, after, seconds) == expected


def _report(packets: int, nbytes: int) -> list[I.GatewayReport]:
    net = ipaddress.ip_network
    rule = I.Rule("dst", net("10.245.0.0/16"), net("10.244.0.0/16"), packets, nbytes)
    idle = I.Rule("src", net("10.244.0.0/16"), net("10.245.0.0/16"), 0, 0)
    m = I.MappingReport(0, "remote", net("10.244.0.0/16"), net("10.245.0.0/16"), rule, idle)
    dev = I.DeviceReport(5, "wg-c2", "c2", (m,), {})
    return [I.GatewayReport("gw", None, None, (dev,))]


def test_watch_loop_computes_rates_between_reads():
    samples = iter([_report(0, 0), _report(50, 5000), _report(50, 5000), _report(80, 9000)])
    times = iter([10.0, 10.5, 11.0, 12.0])
    slept: list[float] = []
    frames: list[dict] = []
    shown = I.watch(lambda: next(samples), lambda _r, rates: frames.append(rates),
                    interval=0.5, count=4, sleep=slept.append, clock=lambda: next(times))
    assert shown == 4
    assert slept == [0.5, 0.5, 0.5]  # no sleep before the first frame
    assert [f[K] for f in frames] == [None, I.Rate(100.0, 10_000.0), I.Rate(0.0, 0.0),
                                      I.Rate(30.0, 4000.0)]
