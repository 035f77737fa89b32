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
    percentile,
    rate,
    ratio,
    seq_loss,
    spread,
    table,
)
from bench.topology import (
    C1_SEEN_BY_C2,
    C2_SEEN_BY_C1,
    EXTRA_C2_AS,
    EXTRA_C2_CIDR,
    POD_CIDR,
    ROUTE_C2_CIDR,
    extra_mappings,
    host_in,
    iptables_rules,
    nftables_ruleset,
    plan,
)


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


MEDIANS = {
    "route/underlay/udp1_pps": 100.0, "route/underlay/udpn_pps": 100.0,
    "iptables/underlay/udp1_pps": 70.0, "iptables/underlay/udpn_pps": 20.0,
    "natgw/underlay/udp1_pps": 98.0, "natgw/underlay/udpn_pps": 96.0,
    "route/underlay/udp1_ns": 1000.0, "route/underlay/udpn_ns": 1000.0,
    "iptables/underlay/udp1_ns": 1500.0, "iptables/underlay/udpn_ns": 6000.0,
    "natgw/underlay/udp1_ns": 1250.0, "natgw/underlay/udpn_ns": 1250.0,
    "route/underlay/tcp_gbps": 10.0, "natgw/underlay/tcp_gbps": 9.0,
    "natgw-m10000/underlay/udp1_pps": 97.0, "natgw-m10000/underlay/udp1_ns": 1300.0,
    "control/underlay/config_change_s": 0.05, "control/underlay/config_change_lost": 2,
}


def test_targets_on_rates_and_on_cpu_cost():
    by = {t.name.split(": ", 1)[1]: t for t in evaluate_targets(MEDIANS, "underlay")}
    assert by["natgw >= 0.97 x route (one flow) [rate]"].value == pytest.approx(0.98)
    assert by["natgw >= 0.97 x route (one flow) [rate]"].met
    assert by["natgw >= 0.97 x route (one flow) [cpu]"].value == pytest.approx(0.8)
    assert by["natgw >= 0.97 x route (one flow) [cpu]"].met is False
    assert by["natgw >= 1.3 x iptables (one flow) [rate]"].value == pytest.approx(1.4)
    assert by["natgw >= 1.3 x iptables (one flow) [cpu]"].value == pytest.approx(1.2)
    assert by["natgw >= 1.3 x iptables (new flow per packet) [rate]"].value == pytest.approx(4.8)
    assert by["natgw >= 1.3 x iptables (new flow per packet) [cpu]"].value == pytest.approx(4.8)
    new_vs_one = by["natgw new-flow rate within 3 % of one-flow rate [rate]"]
    assert new_vs_one.value == pytest.approx(2 / 98) and new_vs_one.met
    assert by["natgw new-flow rate within 3 % of one-flow rate [cpu]"].value == 0
    assert by["natgw TCP bulk >= 0.97 x route"].met is False
    assert by["10,000 mappings cost < 3 % of forwarding rate [rate]"].value == pytest.approx(1 / 98)
    assert by["10,000 mappings cost < 3 % of forwarding rate [cpu]"].value == pytest.approx(
        1 - 1250 / 1300)


def test_targets_missing_measures_are_not_met_nor_missed():
    got = evaluate_targets({"route/wg/udp1_pps": 1.0}, "wg")
    assert all(t.met is None for t in got)
    assert not any("10,000" in t.name for t in got)  # no mapping-count run, no target


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


@pytest.mark.parametrize("mode, target, seen", [
    ("route", "10.245.1.10", "10.244.1.10"),
    ("iptables", "10.212.1.10", "10.221.1.10"),
    ("nftables", "10.212.1.10", "10.221.1.10"),
    ("natgw", "10.212.1.10", "10.221.1.10"),
])
def test_plan_addresses(mode, target, seen):
    p = plan(mode, "underlay")
    assert (p.target, p.pod1_seen_as) == (target, seen)
    assert ipaddress.ip_address(p.target) in ipaddress.ip_network(p.gw1_routes)
    assert ipaddress.ip_address(p.pod1_seen_as) in ipaddress.ip_network(p.gw2_routes)
    if mode == "route":
        assert p.pod2_addr == host_in(ROUTE_C2_CIDR)  # distinct CIDRs: nothing translated
    else:
        assert p.pod2_addr == "10.244.1.10"           # the same address as pod1


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
    assert (f"snat ip prefix to ip saddr map {{ {POD_CIDR} : {C1_SEEN_BY_C2} }}") in text
    assert (f"dnat ip prefix to ip daddr map {{ {C1_SEEN_BY_C2} : {POD_CIDR} }}") in text
    assert 'oifname "w1"' in text and 'iifname "w1"' in text


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
        "options": {"rounds": 3, "window": 2, "tcp_window": 3, "rr_window": 1},
        "started": 0, "finished": 60,
        "medians": {**MEDIANS, "natgw-m100/underlay/udp1_pps": 98.0},
        "spreads": {"natgw/underlay/udp1_pps": 0.05},
        "samples": {"natgw/underlay": {"udp1_sat": [1.0, 0.0, 1.0]}},
        "build": {}, "control": {}, "micro": {"1": {"egress_translate": 60},
                                              "10000": {"egress_translate": 90}},
    }
    text = report.render(d)
    assert "natgw" in text and "MISSED" in text and "10,000" in text and "2/3" in text
    md = report.render(d, md=True)
    assert "| natgw |" in md


def test_losses_are_attributed_to_the_change_that_was_running():
    from bench.control import attribute_loss, loss_bursts

    start, rate = 1_000_000_000, 1000.0  # datagram n left at 1 s + n ms
    changes = [{"how": "cli", "added": True, "t0_ns": 1_100_000_000, "seconds": 0.2},
               {"how": "library", "added": False, "t0_ns": 1_500_000_000, "seconds": 0.05}]
    # 150 ms: in the CLI add; 340 ms: its 50 ms slack; 360 ms: after; 520 ms: library remove
    got = attribute_loss([150, 340, 360, 520], start, rate, changes)
    assert got == {"cli add": 2, "none": 1, "library remove": 1}
    assert loss_bursts([10, 11, 13, 500], rate) == [[0.01, 3], [0.5, 1]]
