"""natgw.health: who is in a replica group's route, tick by tick (no network needed).

Each case is a group of members a, b (keepalive 1 s, staleAfter 4 s) and c (no
keepalive: judged by its device alone), the samples of successive ticks, and the
verdicts after the last one: (in the route?, why). Then which silent members are
probed, tick by tick, and the default staleAfter against probes answered late.
"""

# ruff: noqa: E501 - one case per line, like a fixture table.

from __future__ import annotations

import pytest

from natgw.config import Peer
from natgw.health import DEVICE_ONLY, DOWN, GONE, RECEIVING, Health, Member, Sample, kept, silent

UP = None  # a sample's link: up


def group(*names: str) -> Health:
    return Health([Member(n, "far", f"w-{n}", 1, None if n == "c" else 4.0,
                          probe_every=None if n == "c" else 1.0) for n in names])


def run(h: Health, ticks: list[tuple[float, dict[str, Sample]]]) -> list[str]:
    lines = []
    for now, samples in ticks:
        lines += h.observe(samples, now)[0]
    return lines


def rx(n: int) -> Sample:
    return Sample(UP, n)


STALE = silent(4)

CASES = [
    ("receiving stays in",
     ("a", "b"), [(0, {"a": rx(0), "b": rx(0)}), (3, {"a": rx(10), "b": rx(10)}), (6, {"a": rx(20), "b": rx(20)})],
     {"a": (True, RECEIVING), "b": (True, RECEIVING)}),
    ("silent for staleAfter is out",
     ("a", "b"), [(0, {"a": rx(0), "b": rx(0)}), (3, {"a": rx(10), "b": rx(0)}), (4, {"a": rx(20), "b": rx(0)})],
     {"a": (True, RECEIVING), "b": (False, STALE)}),
    ("not yet stale",
     ("a", "b"), [(0, {"a": rx(0), "b": rx(0)}), (3.9, {"a": rx(10), "b": rx(0)})],
     {"a": (True, RECEIVING), "b": (True, RECEIVING)}),
    ("receiving again is back in",
     ("a", "b"), [(0, {"a": rx(0), "b": rx(0)}), (5, {"a": rx(10), "b": rx(0)}), (6, {"a": rx(20), "b": rx(1)})],
     {"a": (True, RECEIVING), "b": (True, RECEIVING)}),
    ("device down is out at once",
     ("a", "b"), [(0, {"a": rx(0), "b": rx(0)}), (1, {"a": rx(10), "b": Sample(DOWN)})],
     {"a": (True, RECEIVING), "b": (False, DOWN)}),
    ("device gone (or not sampled) is out",
     ("a", "b"), [(0, {"a": rx(0), "b": rx(0)}), (1, {"a": rx(10)})],
     {"a": (True, RECEIVING), "b": (False, GONE)}),
    ("back up, but silent since: still out",
     ("a", "b"), [(0, {"a": rx(0), "b": rx(5)}), (1, {"a": rx(1), "b": Sample(GONE)}), (5, {"a": rx(2), "b": rx(0)})],
     {"a": (True, RECEIVING), "b": (False, STALE)}),
    ("a restarted engine's smaller counter is not reception",
     ("a", "b"), [(0, {"a": rx(0), "b": rx(90)}), (2, {"a": rx(1), "b": rx(3)}), (4, {"a": rx(2), "b": rx(3)})],
     {"a": (True, RECEIVING), "b": (False, STALE)}),
    ("an unreadable engine hears nothing",
     ("a", "b"), [(0, {"a": rx(0), "b": rx(0)}), (4, {"a": rx(1), "b": Sample(UP, None)})],
     {"a": (True, RECEIVING), "b": (False, STALE)}),
    ("every member silent: all kept",
     ("a", "b"), [(0, {"a": rx(0), "b": rx(0)}), (4, {"a": rx(0), "b": rx(0)})],
     {"a": (True, kept(STALE)), "b": (True, kept(STALE))}),
    ("every member out: a down device is not kept",
     ("a", "b"), [(0, {"a": rx(0), "b": rx(0)}), (4, {"a": rx(0), "b": Sample(DOWN)})],
     {"a": (True, kept(STALE)), "b": (False, DOWN)}),
    ("a dead member is out while one heard only through probe replies stays in",
     ("a", "b"), [(0, {"a": rx(0), "b": rx(0)}), (1.5, {"a": rx(0), "b": rx(1)}), (3, {"a": rx(0), "b": rx(2)}), (4, {"a": rx(0), "b": rx(2)})],
     {"a": (False, STALE), "b": (True, RECEIVING)}),
    ("every member silent: kept until one is heard, then the silent one is out again",
     ("a", "b"), [(0, {"a": rx(0), "b": rx(0)}), (4, {"a": rx(0), "b": rx(0)}), (4.5, {"a": rx(0), "b": rx(1)})],
     {"a": (False, STALE), "b": (True, RECEIVING)}),
    ("no keepalive: judged by its device alone",
     ("a", "c"), [(0, {"a": rx(0), "c": rx(0)}), (9, {"a": rx(1), "c": rx(0)})],
     {"a": (True, RECEIVING), "c": (True, DEVICE_ONLY)}),
    ("no keepalive, device down",
     ("a", "c"), [(0, {"a": rx(0), "c": rx(0)}), (1, {"a": rx(1), "c": Sample(DOWN)})],
     {"a": (True, RECEIVING), "c": (False, DOWN)}),
]  # fmt: skip


@pytest.mark.parametrize(("names", "ticks", "verdicts"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_verdicts(names, ticks, verdicts) -> None:
    h = group(*names)
    run(h, ticks)
    assert {m.peer: (m.in_route, m.why) for m in h.members} == verdicts


def test_each_change_is_one_line_and_changes_the_route() -> None:
    h = group("a", "b")
    assert h.observe({"a": rx(0), "b": rx(0)}, 0) == ([], set(), {"far"})  # judged at last
    lines, changed, _ = h.observe({"a": rx(5), "b": Sample(DOWN)}, 1)
    assert lines == ["group far: b out of the route (device down); route over a"]
    assert changed == {"far"} and h.hops("far") == [("w-a", 1)]
    assert h.observe({"a": rx(6), "b": Sample(DOWN)}, 2) == ([], set(), set())  # no change
    lines, _, _ = h.observe({"a": rx(7), "b": rx(8)}, 3)
    assert lines == ["group far: b back in the route (receiving); route over a, b"]
    # Every member silent: both kept, the route back over both; then a reason alone changes.
    lines, changed, _ = h.observe({"a": rx(7), "b": rx(8)}, 7)
    assert changed == set() and [m.why for m in h.members] == [kept(STALE)] * 2
    assert h.observe({"a": rx(9), "b": rx(9)}, 8)[1:] == (set(), {"far"})
    assert [m.why for m in h.members] == [RECEIVING] * 2


def test_a_reload_keeps_what_was_known() -> None:
    from pathlib import Path

    from natgw import keys
    from natgw.config import parse_config

    def peer(name: str, seed: int, weight: int) -> dict:
        return {"name": name, "publicKey": keys.pubkey(keys.encode_key(bytes([seed]) * 32)),
                "listenPort": 51820 + seed, "persistentKeepalive": 1, "group": "far",
                "weight": weight, "remote": [{"cidr": "10.1.0.0/16"}]}

    cfg = parse_config({"name": "g", "cidrs": ["10.244.0.0/16"], "privateKey": keys.genkey(),
                        "peers": [peer("a", 2, 1), peer("b", 3, 1)]}, Path("."))
    h = Health.of(cfg, 0.0)
    h.observe({"a": rx(0), "b": Sample(DOWN)}, 1)
    cfg2 = cfg.model_copy(update={"peers": [cfg.peers[0],
                                            cfg.peers[1].model_copy(update={"weight": 5})]})
    cfg2.model_post_init(None)
    h2 = Health.of(cfg2, 2.0, before=h)
    assert [(m.peer, m.in_route, m.weight) for m in h2.members] == [
        ("a", True, 1), ("b", False, 5)]


def test_a_silent_member_is_probed_once_per_keepalive_until_heard() -> None:
    h = group("a", "b", "c")
    probed = []
    # b answers the probe of 2 s at 2.5 s; c (no keepalive) and a down device are never probed.
    for now, b in [(0, 0), (0.5, 0), (1, 0), (1.5, 0), (2, 0), (2.5, 1), (3, 1), (3.5, 1),
                   (4, 1), (4.5, 1)]:
        h.observe({"a": Sample(DOWN), "b": rx(b), "c": rx(0)}, now)
        due = h.due(now)
        for m in due:
            m.probed = now
        probed.append((now, [m.peer for m in due]))
    assert [now for now, peers in probed if peers] == [1, 2, 3.5, 4.5]
    assert {p for _, peers in probed for p in peers} == {"b"}


@pytest.mark.parametrize("work", [0.0, 0.25])  # seconds each tick takes beyond its 0.5 s wait
def test_default_stale_after_keeps_a_member_heard_only_through_probes(work) -> None:
    """A replica that receives a one-way stream answers nothing but probes (answered
    within 0.2 s, seen at the next read); another dies at 20 s. With the default
    staleAfter the live one never leaves, even with slow ticks, and the dead one is out
    within staleAfter and a tick of its death: with 0.5 s ticks, 2 keepalives and a
    second, the issue's failover target."""
    ka = 1
    stale = Peer.model_validate({"name": "x", "persistentKeepalive": ka, "group": "far",
                                 "remote": [{"cidr": "10.1.0.0/16"}]}).stale_seconds
    h = Health([Member(n, "far", f"w-{n}", 1, stale, probe_every=ka) for n in ("live", "dead")])
    counters, answers, now, out_at = {"live": 0, "dead": 0}, [], 0.0, None
    while now < 40:
        for peer, _at in [a for a in answers if a[1] <= now]:
            counters[peer] += 1
        answers = [a for a in answers if a[1] > now]
        h.observe({p: rx(n) for p, n in counters.items()}, now)
        assert h.member("live").in_route, now
        if out_at is None and not h.member("dead").in_route:
            out_at = now
        for m in h.due(now):
            m.probed = now
            if m.peer == "live" or now < 20:
                answers.append((m.peer, now + 0.2))
        now += 0.5 + work
    assert out_at is not None and out_at - 20 <= stale + 0.5 + work
    if not work:
        assert out_at - 20 <= 2 * ka + 1
