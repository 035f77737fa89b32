"""bench's own arithmetic and text: medians, ratios, targets, addresses, rules.

Pure functions only (no namespaces, no timing): the benchmark's figures are only
as good as these.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest

from bench import report
from bench.micro import udp_frame
from bench.stats import (
    Target,
    evaluate_control_targets,
    evaluate_targets,
    median,
    median_interval,
    paired_ratio,
    percentile,
    rate,
    ratio,
    relative,
    seq_loss,
    spread,
    table,
)
from bench.topology import (
    C1_SEEN_BY_C2,
    C2_SEEN_BY_C1,
    EXTRA_C2_AS,
    EXTRA_C2_CIDR,
    MODE_TABLE,
    MODES,
    POD_CIDR,
    ROUTE_C2_CIDR,
    Topology,
    conntrack_ruleset,
    extra_mappings,
    iptables_rules,
    nftables_ruleset,
    plan,
)
from bench.workloads import Workload, workloads
from lab.record import Record


@pytest.mark.parametrize("values, want", [
    ([3, 1, 2], 2),
    ([4, 1, 3, 2], 2.5),
    ([None, 5, None], 5),          # a failed sample does not count
    ([None, None], None),
    ([], None),
    ([float("nan"), 7], 7),
])
def test_median(values, want):
    assert median(values) == want


@pytest.mark.parametrize("values, p, want", [
    ([10, 20, 30, 40], 50, 20),    # nearest rank: ceil(0.5 * 4) = 2nd
    ([10, 20, 30, 40], 99, 40),
    ([10, 20, 30, 40], 100, 40),
    ([10, 20, 30, 40], 0, 10),
    (list(range(1, 101)), 99, 99),
    ([5], 99, 5),
])
def test_percentile(values, p, want):
    assert percentile(values, p) == want


def test_percentile_rejects_nothing_and_out_of_range():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1], 101)


@pytest.mark.parametrize("a, b, want", [
    (97, 100, 0.97), (None, 1, None), (1, None, None), (1, 0, None), (0, 5, 0),
])
def test_ratio(a, b, want):
    assert ratio(a, b) == want


def test_ratios_pair_the_rounds():
    # A slow round slows both modes: paired, it cancels; the medians' ratio says
    # the opposite of what every round said.
    a, b = [100, 300, 200], [105, 310, 190]
    assert paired_ratio(a, b) == pytest.approx(300 / 310)
    assert ratio(median(a), median(b)) > 1 > paired_ratio(a, b)
    assert paired_ratio([1, None, 4], [2, 5, None]) == 0.5  # failed rounds left out
    assert paired_ratio([None], [1]) is None
    samples = {"x/u": {"n": a}, "y/u": {"n": b}, "z/u": {"n": [1.0]}}
    m = {"x/u/n": 200, "y/u/n": 190, "z/u/n": 1.0}
    assert relative(m, samples, "x/u", "y/u", "n") == pytest.approx(300 / 310)
    # without a sample every round for both, the medians
    assert relative(m, samples, "x/u", "z/u", "n") == 200
    assert relative(m, None, "x/u", "y/u", "n") == pytest.approx(200 / 190)


def test_the_series_taken_in_turn_pool_with_the_rounds():
    # natgw and route also took two pairs a round in turn (vs-): 6 pairs, not 2;
    # a mode without the series (route-ct) pairs the rounds alone.
    samples = {"natgw/u": {"n": [1.0, 2.0], "vs-n": [1.0, 1.0, 1.0, 1.0]},
               "route/u": {"n": [2.0, 1.0], "vs-n": [1.1, 1.1, 1.1, 1.1]},
               "route-ct/u": {"n": [4.0, 4.0]}}
    m = {"natgw/u/n": 1.5, "route/u/n": 1.5, "route-ct/u/n": 4.0}
    assert relative(m, samples, "route/u", "natgw/u", "n") == pytest.approx(1.1)
    assert relative(m, samples, "route-ct/u", "natgw/u", "n") == pytest.approx(3.0)
    samples["route/u"]["vs-n"] = [1.1, 1.1, 1.1]  # a series cut short: not paired
    assert relative(m, samples, "route/u", "natgw/u", "n") == pytest.approx(1.25)


def test_the_route_series_takes_turns_and_rotates_who_goes_first():
    from bench.run import _series

    calls: list[tuple[str, str]] = []
    samplers = [lambda t, prefix: calls.append((t, prefix + "a")),
                lambda t, prefix: calls.append((t, prefix + "b"))]
    _series(0, ["route", "natgw"], samplers, 2, "vs-")
    assert calls == [("route", "vs-a"), ("natgw", "vs-a"), ("natgw", "vs-a"), ("route", "vs-a"),
                     ("route", "vs-b"), ("natgw", "vs-b"), ("natgw", "vs-b"), ("route", "vs-b")]
    calls.clear()
    _series(0, ["natgw"], samplers, 2, "vs-")  # nothing to take turns with
    assert calls == []


def test_request_response_and_tcp_bulk_pool_their_series_pairs():
    # Two rounds and four series pairs: natgw 5 % faster in the series' pairs decides.
    samples = {"route/wg": {"rr_p50_us": [100.0, 100.0], "vs-rr_p50_us": [100.0] * 4,
                            "tcp_gbps": [1.0, 1.0], "vs-tcp_gbps": [1.0] * 4},
               "natgw/wg": {"rr_p50_us": [110.0, 90.0], "vs-rr_p50_us": [95.0] * 4,
                            "tcp_gbps": [0.9, 1.1], "vs-tcp_gbps": [1.05] * 4}}
    m = {f"{k}/{measure}": 100.0 for k in samples for measure in ("rr_p50_us", "tcp_gbps")}
    got = {t.name: t for t in evaluate_targets(m, [], samples)}
    rr = got["WireGuard, TCP request/response p50: natgw x route"]
    bulk = got["WireGuard, TCP bulk: natgw x route"]
    assert (rr.value, rr.met) == (pytest.approx(0.95), True)
    assert (bulk.value, bulk.met) == (pytest.approx(1.05), True)


def test_targets_pair_the_rounds_when_the_run_has_them():
    rounds = {"route/underlay": {"udp1_ns": [1000.0, 2000.0, 1500.0]},
              "natgw/underlay": {"udp1_ns": [900.0, 2100.0, 1400.0]}}
    m = {"route/underlay/udp1_ns": 1500.0, "natgw/underlay/udp1_ns": 1400.0}
    works = [w for w in workloads() if w.measure == "udp1"]
    t = evaluate_targets(m, works, rounds)[0]
    assert t.name == "underlay, 64 B IPv4, one flow: natgw capacity x route"
    assert t.value == pytest.approx(1500 / 1400)  # the middle round's pair: 1.07
    # natgw slower in two rounds of three: a miss, though its median is the lower
    rounds["natgw/underlay"]["udp1_ns"] = [1050.0, 2100.0, 1400.0]
    assert evaluate_targets(m, works, rounds)[0].value == pytest.approx(1 / 1.05)
    assert evaluate_targets(m, works, rounds)[0].met is False


def test_the_median_interval_is_the_sign_tests():
    # P(Binomial(n, 1/2) < k) <= 2.5 %: k = 1 for 6 to 8 values, 4 for 16; 5 are too few.
    assert median_interval([3, 1, 2, 5, 4]) is None
    assert median_interval([3, 1, None, 2, 6, 5, 4]) == (1, 6)  # failed rounds left out
    assert median_interval([8, 1, 2, 3, 4, 5, 6, 7]) == (1, 8)
    assert median_interval(range(1, 17)) == (4, 13)
    assert median_interval(range(1, 17), confidence=0.5) == (7, 10)


def test_a_target_inside_its_interval_is_not_settled():
    # One bad round of eight: the median passes, but the interval (the extremes of
    # eight) holds the target, and the report marks the verdict.
    route = [1200.0] * 8
    natgw = [1000.0, 1010.0, 990.0, 1005.0, 995.0, 1000.0, 1020.0, 1300.0]
    rounds = {"route/underlay": {"udp1_ns": route}, "natgw/underlay": {"udp1_ns": natgw}}
    m = {"route/underlay/udp1_ns": 1200.0, "natgw/underlay/udp1_ns": 1002.5}
    works = [w for w in workloads() if w.measure == "udp1"]
    t = evaluate_targets(m, works, rounds)[0]
    assert t.met and t.interval == pytest.approx((1200 / 1300, 1200 / 990))
    assert t.settled is False
    assert Target("x", 1.2, ">=", 1.0, "x", (1.1, 1.3)).settled is True
    assert Target("x", 1.2, ">=", 1.0, "x").settled is None  # no interval: say nothing
    d = {"medians": m, "samples": rounds}

    def verdict() -> str:  # of the first line, natgw x route >= 1.0
        first = report.targets_table(d, md=True).splitlines()[2]
        assert "one flow: natgw capacity x route |" in first
        return first.split(" | ")[-1]

    assert verdict() == "PASS* |"
    rounds["natgw/underlay"]["udp1_ns"][-1] = 1100.0  # every round ahead of route
    assert verdict() == "PASS |"


def test_the_cost_of_mappings_comes_from_the_series_taken_in_turn():
    m = {"natgw/underlay/udp1_ns": 1000.0, "natgw-m10000/underlay/udp1_ns": 1100.0,
         "natgw/underlay/map-udp1_ns": 1000.0, "natgw-m10000/underlay/map-udp1_ns": 1010.0}
    series = {"natgw/underlay": {"map-udp1_ns": [1000.0, 990.0, 1200.0, 1000.0]},
              "natgw-m10000/underlay": {"map-udp1_ns": [1010.0, 1000.0, 1212.0, 1010.0]}}
    works = [w for w in workloads() if w.measure == "udp1"]
    by = {t.name: t for t in evaluate_targets(m, works, series)}
    t = by["underlay, 64 B IPv4, one flow: cost of 10,000 mappings"]
    assert t.value == pytest.approx(1 - 1 / 1.01) and t.met
    # A run without the series: the one sample a round of each
    assert t.interval is None  # four pairs: too few for one
    series = {k: {"map-udp1_ns": v["map-udp1_ns"] * 2} for k, v in series.items()}
    t = {t.name: t for t in evaluate_targets(m, works, series)}[t.name]
    assert t.interval == pytest.approx((1 - 1 / 1.01, 0.01))  # cost = 1 - ratio: 0.99 is 1 %
    old = {k: v for k, v in m.items() if "map-" not in k}
    t = {t.name: t for t in evaluate_targets(old, works)}[t.name]
    assert t.value == pytest.approx(1 - 1000 / 1100) and t.met is False


def test_rate_and_spread():
    assert rate(1000, 4000, 10.0, 11.5) == 2000
    with pytest.raises(ValueError):
        rate(0, 1, 2.0, 2.0)
    assert spread([90, 100, 110]) == pytest.approx(0.2)
    assert spread([100]) is None


@pytest.mark.parametrize("sent, received, lost", [
    (5, [0, 1, 2, 3, 4], 0),
    (5, [0, 1, 1, 3], 2),          # duplicates count once
    (3, [0, 1, 2, 7], 0),          # numbers outside 0..sent-1 are ignored
    (4, [], 4),
])
def test_seq_loss(sent, received, lost):
    assert seq_loss(sent, received) == lost


@pytest.mark.parametrize("value, op, limit, met, margin", [
    (1.0, ">=", 0.97, True, 0.03 / 0.97),
    (0.9, ">=", 0.97, False, -0.07 / 0.97),
    (0.05, "<=", 0.1, True, 0.5),
    (0.2, "<=", 0.1, False, -1.0),
    (None, ">=", 1, None, None),
])
def test_target(value, op, limit, met, margin):
    t = Target("t", value, op, limit)
    assert t.met is met
    assert (t.margin is None) if margin is None else t.margin == pytest.approx(margin)


def _medians(ns: dict[str, float], pps: float = 100.0, transport: str = "underlay",
             works=None) -> dict[str, float]:
    """Medians where every workload costs `ns[mode]` ns per packet."""
    out = {}
    for w in works or workloads():
        for mode, v in ns.items():
            out[f"{mode}/{transport}/{w.measure}_ns"] = v
            out[f"{mode}/{transport}/{w.measure}_pps"] = pps
    return out


MEDIANS = {
    **_medians({"route": 1000.0, "route-ct": 1500.0, "iptables": 1600.0, "natgw": 950.0}),
    "natgw/underlay/udpn_ns": 1100.0,           # new flows: slower than route
    "iptables/underlay/udpn_ns": 6000.0,
    "route/underlay/tcp_gbps": 10.0, "natgw/underlay/tcp_gbps": 9.0,
    "route/underlay/rr_p50_us": 90.0, "natgw/underlay/rr_p50_us": 88.0,
    "natgw-m10000/underlay/udp1_ns": 970.0, "natgw-m10000/underlay/udpn_ns": 1150.0,
    "natgw-m10000/underlay/udp1_pps": 97.0,
    **_medians({"route": 13000.0, "natgw": 13200.0}, transport="wg"),
    "control/underlay/config_change_s": 0.05, "control/underlay/config_change_lost": 2,
}


def test_targets_from_capacity():
    by = {t.name: t for t in evaluate_targets(MEDIANS)}
    one = "underlay, 64 B IPv4, one flow: natgw capacity x "
    assert by[one + "route"].value == pytest.approx(1000 / 950)
    assert by[one + "route"].met and by[one + "route"].limit == 1.0
    assert by[one + "route (moonshot)"].limit == 1.1 and by[one + "route (moonshot)"].met is False
    assert by[one + "route-ct"].value == pytest.approx(1500 / 950)
    assert by[one + "route-ct"].met  # >= 1.3
    assert by[one + "iptables"].value == pytest.approx(1600 / 950)
    assert by[one + "iptables"].met  # >= 1.5
    new = "underlay, 64 B IPv4, new flow per packet: natgw capacity x "
    assert by[new + "route"].value == pytest.approx(1000 / 1100)
    assert by[new + "route"].met is False
    assert by[new + "iptables"].value == pytest.approx(6000 / 1100)
    # the same ratios for 1400 B and IPv6, both flows
    for klass in ("64 B IPv6", "1400 B IPv4", "1400 B IPv6"):
        for flow in ("one flow", "new flow per packet"):
            t = by[f"underlay, {klass}, {flow}: natgw capacity x route-ct"]
            assert t.value == pytest.approx(1500 / 950) and t.met
    assert by["underlay, TCP bulk: natgw x route"].value == pytest.approx(0.9)
    assert by["underlay, TCP bulk: natgw x route"].met is False
    rr = by["underlay, TCP request/response p50: natgw x route"]
    assert rr.value == pytest.approx(88 / 90) and rr.met and rr.op == "<="
    many = by["underlay, 64 B IPv4, one flow: cost of 10,000 mappings"]
    assert many.value == pytest.approx(1 - 950 / 970) and many.met
    many_new = by["underlay, 64 B IPv4, new flow per packet: cost of 10,000 mappings"]
    assert many_new.value == pytest.approx(1 - 1100 / 1150) and many_new.met is False
    wg = by["WireGuard, 1400 B IPv6, one flow: natgw capacity x route"]
    assert wg.value == pytest.approx(13000 / 13200) and wg.met is False
    # over WireGuard natgw is compared with route only
    assert not any(n.startswith("WireGuard") and "iptables" in n for n in by)
    assert len([n for n in by if n.startswith("underlay") and "capacity" in n]) == 8 * 4


def test_targets_missing_measures_are_not_met_nor_missed():
    got = evaluate_targets({"route/wg/udp1_ns": 1.0, "route/wg/udp1_pps": 1.0})
    assert got and all(t.met is None for t in got)
    assert not any("10,000" in t.name for t in got)  # no mapping-count run, no target
    assert not any("underlay" in t.name for t in got)  # nor an unmeasured transport
    assert not any("IPv6" in t.name for t in got)      # nor an unmeasured workload


def test_targets_are_computed_from_the_run_not_written_down():
    faster = dict(MEDIANS, **{f"natgw/underlay/{w.measure}_ns": 500.0 for w in workloads()})
    assert all(t.met for t in evaluate_targets(faster)
               if t.name.startswith("underlay") and "capacity" in t.name)


def test_workloads_name_their_measures():
    names = [w.measure for w in workloads()]
    assert names[:2] == ["udp1", "udpn"]  # the headline class keeps earlier runs' names
    assert len(set(names)) == 8 and "udpn-v6-1400" in names
    assert Workload("64", 6, False).payload == 64 and Workload("64", 6, False).ip_bytes == 112
    # 1400-byte IP packets, which fit WireGuard's MTU of 1420, in both families
    assert Workload("1400", 4, True).payload == 1372
    assert Workload("1400", 6, True).payload == 1352
    assert {w.ip_bytes for w in workloads() if w.size == "1400"} == {1400}
    with pytest.raises(ValueError):
        Workload("9000", 4, False)


def test_control_targets():
    t = {x.name.split(": ", 1)[1]: x for x in evaluate_control_targets(MEDIANS)}
    assert t["config change (natgw up, one mapping added) < 100 ms"].met
    assert t["zero loss on other flows during the changes"].met is False


def test_table_aligns_and_renders_markdown():
    plain = table(["a", "bb"], [["x", "1"], ["yyy", "22"]])
    assert plain.splitlines() == ["a    bb", "---  --", "x     1", "yyy  22"]
    md = table(["a", "bb"], [["x", "1"]], markdown=True)
    assert md.splitlines() == ["| a | bb |", "|---|---:|", "| x | 1 |"]


# -- addresses and rules of the topology ----------------------------------------


@pytest.mark.parametrize("mode, family, target, seen", [
    ("route", 4, "10.245.1.10", "10.244.1.10"),
    ("route-ct", 4, "10.245.1.10", "10.244.1.10"),
    ("route", 6, "fd00:245:0:1::10", "fd00:244:0:1::10"),
    ("route-ct", 6, "fd00:245:0:1::10", "fd00:244:0:1::10"),
    ("iptables", 4, "10.212.1.10", "10.221.1.10"),
    ("nftables", 6, "fd00:212:0:1::10", "fd00:221:0:1::10"),
    ("natgw", 4, "10.212.1.10", "10.221.1.10"),
    ("natgw", 6, "fd00:212:0:1::10", "fd00:221:0:1::10"),
    ("natgw-off", 6, "fd00:212:0:1::10", "fd00:221:0:1::10"),
])
def test_plan_addresses(mode, family, target, seen):
    p = plan(mode, "underlay", family)
    assert (p.target, p.pod1_seen_as) == (target, seen)
    assert ipaddress.ip_address(p.target) in ipaddress.ip_network(p.gw1_routes)
    assert ipaddress.ip_address(p.pod1_seen_as) in ipaddress.ip_network(p.gw2_routes)
    pod_net = ipaddress.ip_network(f"{p.pod1_addr}/{p.prefixlen}", strict=False)
    assert ipaddress.ip_address(p.pod1_gw) in pod_net
    assert ipaddress.ip_address(p.pod2_gw) in ipaddress.ip_network(
        f"{p.pod2_addr}/{p.prefixlen}", strict=False)
    if mode.startswith("route"):
        assert p.pod2_addr == p.target          # distinct CIDRs: nothing translated
    else:
        assert p.pod2_addr == p.pod1_addr       # the same address as pod1


def test_modes_table():
    assert MODES == ("route", "route-ct", "iptables", "nftables", "natgw", "natgw-off")
    assert {m: MODE_TABLE[m].conntrack for m in MODES} == {
        "route": False, "route-ct": True, "iptables": True, "nftables": True, "natgw": False,
        "natgw-off": False}
    assert [m for m in MODE_TABLE if MODE_TABLE[m].tx_csum_off] == ["natgw-xdp"]
    assert len({m.letter for m in MODE_TABLE.values()}) == len(MODE_TABLE)


def _config(mode: str, transport: str, tmp_path) -> dict:
    rec = Record.create(tmp_path, "nbtest")
    return Topology(rec, mode, transport).natgw_config(0, pubs=["k0", "k1"])


def test_natgw_config_fastpath_and_families(tmp_path):
    under = _config("natgw", "underlay", tmp_path)
    assert "fastpath" not in under  # natgw's default
    assert under["cidrs"] == ["10.244.0.0/16", "fd00:244::/48"]
    # one interface: peer (one `via` each) and veth pair per family over the underlay
    assert [(p["name"], p["interface"][-2:], p["via"], p["remote"]) for p in under["peers"]] == [
        ("peer", "u1", "192.168.77.2", [{"cidr": "10.244.0.0/16", "as": "10.212.0.0/16"}]),
        ("peer6", "v1", "fd00:77::2", [{"cidr": "fd00:244::/48", "as": "fd00:212::/48"}])]
    assert _config("natgw-off", "underlay", tmp_path)["fastpath"] == "off"
    assert _config("natgw-xdp", "underlay", tmp_path)["fastpath"] == "xdp"
    wg = _config("natgw-off", "wg", tmp_path)
    assert wg["fastpath"] == "off"
    (peer,) = wg["peers"]  # the tunnel carries both families
    assert [r["as"] for r in peer["remote"]] == ["10.212.0.0/16", "fd00:212::/48"]
    assert "via" not in peer and peer["publicKey"] == "k1"


def test_conntrack_ruleset_tracks_forwarded_packets_of_both_families():
    text = conntrack_ruleset("t")
    assert text.startswith("table inet t")
    assert "hook forward" in text and "ct state established,related accept" in text
    assert "nat" not in text and "drop" not in text


def test_extra_mappings_are_distinct_and_clear_of_the_benchmark_ranges():
    pairs = extra_mappings(10000)
    nets = [ipaddress.ip_network(n) for pair in pairs for n in pair]
    assert len({c for c, _ in pairs}) == len({a for _, a in pairs}) == 10000
    used = [ipaddress.ip_network(n) for n in (POD_CIDR, C2_SEEN_BY_C1, C1_SEEN_BY_C2,
                                               ROUTE_C2_CIDR, EXTRA_C2_CIDR, EXTRA_C2_AS)]
    assert not any(n.overlaps(u) for n in nets for u in used)
    assert all(n.prefixlen == 24 for n in nets)


def test_iptables_rules_translate_own_cluster_both_ways():
    rules = iptables_rules(POD_CIDR, C1_SEEN_BY_C2, "w1")
    assert ["-t", "nat", "-A", "POSTROUTING", "-o", "w1", "-s", POD_CIDR, "-j", "NETMAP",
            "--to", C1_SEEN_BY_C2] in rules
    assert ["-t", "nat", "-A", "PREROUTING", "-i", "w1", "-d", C1_SEEN_BY_C2, "-j", "NETMAP",
            "--to", POD_CIDR] in rules


def test_nftables_ruleset_uses_prefix_nat():
    text = nftables_ruleset(POD_CIDR, C1_SEEN_BY_C2, "w1", "t")
    assert text.startswith("table ip t")
    assert (f"snat ip prefix to ip saddr map {{ {POD_CIDR} : {C1_SEEN_BY_C2} }}") in text
    assert (f"dnat ip prefix to ip daddr map {{ {C1_SEEN_BY_C2} : {POD_CIDR} }}") in text
    assert 'oifname "w1"' in text and 'iifname "w1"' in text
    v6 = nftables_ruleset("fd00:244::/48", "fd00:221::/48", "v1", "t")
    assert v6.startswith("table ip6 t")
    assert "snat ip6 prefix to ip6 saddr map { fd00:244::/48 : fd00:221::/48 }" in v6
    assert "dnat ip6 prefix to ip6 daddr map { fd00:221::/48 : fd00:244::/48 }" in v6


def _csum(data: bytes) -> int:
    s = sum(struct.unpack(f"!{len(data) // 2}H", data + b"\0" * (len(data) % 2)))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def test_udp_frame_checksums_verify():
    f = udp_frame("10.244.1.10", "10.212.1.10", payload=64, sport=1234, dport=9)
    ip, udp = f[14:34], f[34:]
    assert len(f) == 14 + 20 + 8 + 64
    assert _csum(ip) == 0xFFFF
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    assert _csum(pseudo + udp) == 0xFFFF
    assert struct.unpack("!HH", udp[:4]) == (1234, 9)


def test_report_renders_a_run():
    d = {
        "machine": {"cpu_model": "cpu", "cores": 2, "memory_gib": 1, "kernel": "k",
                    "natgw_commit": "abc", "wireguard_go": "wg", "iptables": "ipt",
                    "nft": "nft", "loadavg_start": [1, 1, 1], "loadavg_end": [1, 1, 1]},
        "options": {"rounds": 3, "window": 2, "tcp_window": 3, "rr_window": 1,
                    "modes": ["route", "route-ct", "iptables", "natgw"],
                    "wg_modes": ["route", "natgw"], "transports": ["underlay", "wg"],
                    "skipped": ["natgw-off (no fastpath here)"], "tx_csum_off": True},
        "started": 0, "finished": 60,
        "medians": {**MEDIANS, "natgw-m100/underlay/udp1_pps": 98.0},
        "spreads": {"natgw/underlay/udp1_pps": 0.05},
        "samples": {"natgw/underlay": {"udp1_sat": [1.0, 0.0, 1.0]}},
        "fastpath": {"natgw/underlay": {"no_neigh": 3, "redirect_eth": 900,
                                        "redirect_peer": 100}},
        "build": {}, "control": {}, "micro": {"1": {"egress_translate": 60},
                                              "10000": {"egress_translate": 90}},
    }
    text = report.render(d)
    assert "natgw" in text and "MISSED" in text and "10,000" in text and "2/3" in text
    md = report.render(d, md=True)
    assert "| natgw |" in md and "| route-ct |" in md
    for klass in ("64 B IPv4", "64 B IPv6", "1400 B IPv4", "1400 B IPv6"):
        assert f"UDP forwarding, {klass}, direct underlay" in md
        assert f"UDP forwarding, {klass}, WireGuard" in md
    assert "Not measured: natgw-off" in md and "off in every mode" in md
    assert "| natgw/underlay | 1,000 | 3 | no_neigh 3, redirect_eth 900, redirect_peer 100 |" in md
    # the targets table: one line per target, its value, limit and verdict from the run
    rows = {r.split(" | ")[0].lstrip("| "): r.split(" | ")[1:]
            for r in md.splitlines() if "natgw capacity x" in r or "10,000 mappings" in r}
    assert rows["underlay, 64 B IPv4, one flow: natgw capacity x route-ct"] == [
        "1.58 x", "-", ">= 1.30 x", "PASS |"]  # no interval: a run of medians only
    assert rows["underlay, 64 B IPv4, new flow per packet: natgw capacity x route"] == [
        "0.91 x", "-", ">= 1.00 x", "**MISS (by -0.09)** |"]
    assert rows["underlay, 64 B IPv4, new flow per packet: cost of 10,000 mappings"] == [
        "4.3 %", "-", "< 3.0 %", "**MISS (by +1.3 points)** |"]


def test_losses_are_attributed_to_the_change_that_was_running():
    from bench.control import attribute_loss, loss_bursts

    start, rate = 1_000_000_000, 1000.0  # datagram n left at 1 s + n ms
    changes = [{"how": "cli", "added": True, "t0_ns": 1_100_000_000, "seconds": 0.2},
               {"how": "library", "added": False, "t0_ns": 1_500_000_000, "seconds": 0.05}]
    # 150 ms: in the CLI add; 340 ms: its 50 ms slack; 360 ms: after; 520 ms: library remove
    got = attribute_loss([150, 340, 360, 520], start, rate, changes)
    assert got == {"cli add": 2, "none": 1, "library remove": 1}
    assert loss_bursts([10, 11, 13, 500], rate) == [[0.01, 3], [0.5, 1]]


def test_modes_natgw_cannot_run_are_named_with_the_reason():
    from bench.__main__ import default_modes
    from bench.topology import natgw_refuses

    assert natgw_refuses("route") is None and natgw_refuses("natgw") is None
    assert natgw_refuses("natgw-off") is None  # this branch's natgw has `fastpath: off`
    run, skipped = default_modes(("route", "natgw-off", "natgw-xdp"))
    why = natgw_refuses("natgw-xdp")
    assert run == (("route", "natgw-off") if why else ("route", "natgw-off", "natgw-xdp"))
    assert skipped == ((f"natgw-xdp ({why})",) if why else ())
