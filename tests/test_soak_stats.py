"""The soak's arithmetic (bench/soak_stats.py, bench/soak_agent.Stream): no namespaces."""

from __future__ import annotations

import pytest

from bench import soak_stats as S
from bench.soak_agent import Stream, corrupted
from bench.soak_stats import MARGIN_AFTER, MARGIN_BEFORE, Window
from bench.stats import Target


def test_lost_seqs_counts_each_missing_number_once():
    assert S.lost_seqs(6, [0, 2, 2, 5, 9, -1]) == [1, 3, 4]
    assert S.lost_seqs(3, [0, 1, 2]) == []


def test_loss_in_a_window_of_the_flows_tunnel_is_inside():
    w = [Window("engine", 1, 2, start=10.0, end=12.0)]
    # Either direction of the tunnel 1-2; the margins widen the window.
    times = [10.0 - MARGIN_BEFORE, 11.0, 12.0 + MARGIN_AFTER]
    assert S.attribute(times, 1, 2, w, run_end=100) == (3, 0)
    assert S.attribute(times, 2, 1, w, run_end=100) == (3, 0)


def test_loss_just_outside_the_margins_is_outside():
    w = [Window("route", 1, 2, start=10.0, end=12.0)]
    times = [10.0 - MARGIN_BEFORE - 0.01, 12.0 + MARGIN_AFTER + 0.01]
    assert S.attribute(times, 1, 2, w, run_end=100) == (0, 2)


def test_a_window_of_another_tunnel_does_not_excuse_loss():
    w = [Window("filter", 2, 3, start=10.0, end=12.0)]
    assert S.attribute([11.0], 1, 2, w, run_end=100) == (0, 1)


def test_an_unclosed_window_lasts_until_the_end_of_the_run():
    w = [Window("filter", 1, 3, start=10.0, end=None)]
    assert S.attribute([50.0, 99.0], 3, 1, w, run_end=99.0) == (2, 0)
    assert S.attribute([9.0], 3, 1, w, run_end=99.0) == (0, 1)


def test_udp_flow_splits_loss_by_send_time():
    w = [Window("engine", 1, 2, start=1.0, end=2.0)]
    times = [0.5 * k for k in range(10)]  # seq k sent at 0.5 k s
    received = [0, 1, 4, 5, 6, 8]  # lost: 2 (1.0 s), 3 (1.5 s), 7 (3.5 s), 9 (4.5 s)
    f = S.udp_flow(10, received, times, 1, 2, w, run_end=5.0)
    assert (f["lost"], f["inside"], f["outside"]) == (4, 2, 2)
    assert f["outside_times"] == [3.5, 4.5]
    assert f["outside_since_window"] == [1.5, 2.5]


def test_during_counts_times_inside_any_span():
    assert S.during([1.0, 2.5, 7.0, 9.0], [(2.0, 3.0), (6.0, 7.0)]) == 2
    assert S.during([1.0], []) == 0


def test_ranges_round_trip():
    seqs = [5, 1, 2, 3, 9, 9, 10]
    r = S.ranges(seqs)
    assert r == [[1, 3], [5, 5], [9, 10]]
    assert [s for a, b in r for s in range(a, b + 1)] == sorted(set(seqs))


def test_growth_pct():
    assert S.growth_pct(100, 104) == pytest.approx(4.0)
    assert S.growth_pct(100, 90) == pytest.approx(-10.0)
    with pytest.raises(ValueError):
        S.growth_pct(0, 5)


def test_bulk_counts_mismatches_incomplete_and_corruption():
    sent = [{"src": 1, "peer": 2, "conn": 1, "sent": 100, "sha": "a"},
            {"src": 1, "peer": 2, "conn": 2, "sent": 100, "sha": "b"},
            {"src": 2, "peer": 1, "conn": 1, "sent": 50, "sha": "c"},
            {"src": 3, "peer": 1, "conn": 1, "sent": 10, "sha": "d"}]
    received = [{"dst": 2, "src": 1, "conn": 1, "received": 100, "sha": "a", "corrupted": 0},
                {"dst": 2, "src": 1, "conn": 2, "received": 100, "sha": "x", "corrupted": 3},
                {"dst": 1, "src": 2, "conn": 1, "received": 40, "sha": "y", "corrupted": 0}]
    b = S.bulk(sent, received)
    assert b["bytes_sent"] == 260 and b["bytes_received"] == 240
    assert b["hash_mismatches"] == 1 and b["incomplete"] == 1 and b["unmatched"] == 1
    assert b["corrupted_bytes"] == 3


def test_mappings_configured_against_pinned():
    cfg = {"peers": [{"name": "c2", "device": "w12",
                      "remote": [{"cidr": "10.244.0.0/16", "as": "10.112.0.0/16"}],
                      "local": [{"cidr": "10.244.0.0/16", "as": "10.121.0.0/16"}]},
                     {"name": "r", "device": "w13", "remote": [{"cidr": "10.9.0.0/16"}]}]}
    expected = S.expected_mappings(cfg)
    assert expected == {("w12", "remote", "10.244.0.0/16", "10.112.0.0/16"),
                        ("w12", "local", "10.244.0.0/16", "10.121.0.0/16")}
    maps = [{"gateway": "gw", "devices": [{"ifname": "w12", "mappings": [
        {"kind": "remote", "cidr": "10.244.0.0/16", "as": "10.112.0.0/16"},
        {"kind": "remote", "cidr": "172.16.1.0/24", "as": "10.211.1.0/24"}]}]},
            {"gateway": "other", "devices": [{"ifname": "w12", "mappings": [
                {"kind": "local", "cidr": "10.244.0.0/16", "as": "10.121.0.0/16"}]}]}]
    pinned = S.pinned_mappings(maps, "gw")
    missing, extra = S.diff_mappings(expected, pinned)
    assert missing == [("w12", "local", "10.244.0.0/16", "10.121.0.0/16")]
    assert extra == [("w12", "remote", "172.16.1.0/24", "10.211.1.0/24")]


@pytest.mark.parametrize(("goal", "verdict", "by"), [
    (Target("loss", 0, "==", 0), "PASS", ""),
    (Target("loss", 3, "==", 0), "MISS", "+3"),
    (Target("restart", 2.0, "<=", 2.0, "s"), "PASS", ""),
    (Target("restart", 2.5, "<=", 2.0, "s"), "MISS", "+0.5 s"),
    (Target("rss", 5.0, "<", 5.0, "%"), "MISS", "+0 %"),
    (Target("rss", 4.9, "<", 5.0, "%"), "PASS", ""),
    (Target("fds", None, "<=", 0), "n/a", ""),
])
def test_goal_verdicts(goal, verdict, by):
    assert goal.verdict == verdict
    assert goal.by() == by


def test_judge_reads_every_figure():
    figures = {"corrupted_bytes": 0, "hash_mismatches": 0, "udp_lost_outside": 1,
               "engine_restart_max": 1.5, "repair_max": float("inf"), "rss_growth_max": 1.0,
               "fd_growth_max": 2, "map_diff": 0}
    verdicts = {g.name: g.verdict for g in S.judge(figures)}
    assert verdicts == {"corrupted bytes": "PASS", "hash mismatches": "PASS",
                        "UDP lost outside fault windows": "MISS",
                        "engine restart (max)": "PASS", "drift repaired (max)": "MISS",
                        "RSS growth (max per gateway)": "PASS",
                        "fd growth (max per gateway)": "MISS",
                        "map entries not as configured": "PASS"}


def test_dist():
    assert S.dist([3.0, None, 1.0, 2.0]) == {"n": 3, "median": 2.0, "max": 3.0}
    assert S.dist([1.0, 4.0]) == {"n": 2, "median": 2.5, "max": 4.0}
    assert S.dist([None]) == {"n": 0, "median": None, "max": None}


def test_bulk_stream_is_the_same_in_any_chunks():
    a, b = Stream(42), Stream(42)
    whole = a.read(0, 200_000)
    parts, off = [], 0
    for n in (1, 16384, 65535, 70000, 48080):
        parts.append(b.read(off, n))
        off += n
    assert b"".join(parts) == whole
    assert Stream(43).read(0, 64) != whole[:64]


def test_corrupted_counts_differing_bytes():
    assert corrupted(b"abcd", b"abcd") == 0
    assert corrupted(b"abXd", b"abcd") == 1
    assert corrupted(b"XYcd", b"abcd") == 2


def test_since_window_measures_from_the_last_closed_window_of_the_tunnel():
    w = [Window("engine", 1, 2, 10.0, 12.0), Window("filter", 1, 2, 20.0, 21.0),
         Window("route", 1, 3, 30.0, 31.0), Window("filter", 1, 2, 40.0, None)]
    assert S.since_window([5.0, 15.0, 25.0, 35.0], 2, 1, w) == [None, 3.0, 4.0, 14.0]
