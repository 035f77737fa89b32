"""The soak's arithmetic: fault windows, loss attribution, growth, map diffs, targets.

Pure functions on plain numbers (no namespaces, no processes), so that
tests/test_soak_stats.py checks them fast.

A fault window is the time during which one tunnel (an unordered pair of
clusters) is knowingly broken by the soak itself:

- an engine kill: from the SIGKILL of the tunnel's wireguard-go until the
  restarted engine has completed a handshake and the device has its filters and
  routes back;
- a hand deletion (a tc filter or a proto-78 route): from the deletion until the
  deleted object is back.

A datagram of the flow i -> j counts as lost inside a window when it was sent
from MARGIN_BEFORE seconds before a window of the pair {i, j} opened until
MARGIN_AFTER seconds after it closed (a datagram queued in the engine when it
is killed dies with it; the peer's first data after a new handshake may still
use the old session for a moment). A window that never closed lasts until the
end of the run. Every other lost datagram is lost outside fault windows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bench.stats import Target

MARGIN_BEFORE = 0.2  # seconds before a window opens still attributed to it
MARGIN_AFTER = 0.5  # seconds after a window closes still attributed to it


@dataclass(frozen=True)
class Window:
    """A fault on the tunnel between clusters a and b, [start, end] in CLOCK_MONOTONIC s."""

    kind: str  # "engine", "filter", "route"
    a: int
    b: int
    start: float
    end: float | None  # None: never closed

    @property
    def pair(self) -> frozenset[int]:
        return frozenset((self.a, self.b))

    def covers(self, t: float, run_end: float) -> bool:
        end = run_end if self.end is None else self.end
        return self.start - MARGIN_BEFORE <= t <= end + MARGIN_AFTER


def lost_seqs(sent: int, received: Iterable[int]) -> list[int]:
    """Sequence numbers 0..sent-1 that never arrived (duplicates count once)."""
    got = {s for s in received if 0 <= s < sent}
    return [s for s in range(sent) if s not in got]


def attribute(lost_times: Iterable[float], src: int, dst: int, windows: Sequence[Window],
              run_end: float) -> tuple[int, int]:
    """(inside, outside): lost datagrams of flow src -> dst by their send times."""
    mine = [w for w in windows if w.pair == frozenset((src, dst))]
    inside = outside = 0
    for t in lost_times:
        if any(w.covers(t, run_end) for w in mine):
            inside += 1
        else:
            outside += 1
    return inside, outside


def since_window(times: Iterable[float], src: int, dst: int,
                 windows: Sequence[Window]) -> list[float | None]:
    """For each time: seconds since the last closed window of the flow's tunnel ended
    (None: no window of that tunnel had closed before it)."""
    ends = sorted(w.end for w in windows if w.pair == frozenset((src, dst)) and w.end is not None)
    out: list[float | None] = []
    for t in times:
        before = [e for e in ends if e <= t]
        out.append(t - before[-1] if before else None)
    return out


def during(times: Iterable[float], spans: Sequence[tuple[float, float]]) -> int:
    """How many of `times` fall inside one of the closed `spans` (e.g. applies)."""
    return sum(1 for t in times if any(s <= t <= e for s, e in spans))


def growth_pct(start: float, end: float) -> float:
    """Relative growth from start to end, in percent (negative: shrank)."""
    if start <= 0:
        raise ValueError("growth from a non-positive start")
    return (end - start) / start * 100.0


Mapping = tuple[str, str, str, str]  # (device, kind, cidr, as)


def expected_mappings(cfg: dict) -> set[Mapping]:
    """What a cluster.yaml (as loaded by yaml) says each peer's device translates.

    Only peers with a tunnel device and a mapping (`as`) are counted: plain
    routes have no table entry.
    """
    out: set[Mapping] = set()
    for peer in cfg.get("peers", []):
        dev = peer.get("device") or peer.get("interface")
        for kind in ("remote", "local"):
            for m in peer.get(kind, []) or []:
                if m.get("as"):
                    out.add((dev, kind, m["cidr"], m["as"]))
    return out


def pinned_mappings(maps_json: list[dict], gateway: str) -> set[Mapping]:
    """The mappings `natgw maps --json` reads from a gateway's pinned tables."""
    out: set[Mapping] = set()
    for gw in maps_json:
        if gw.get("gateway") != gateway:
            continue
        for dev in gw.get("devices", []):
            for m in dev.get("mappings", []):
                out.add((dev.get("ifname") or f"ifindex {dev.get('ifindex')}",
                         m["kind"], m["cidr"], m["as"]))
    return out


def diff_mappings(expected: set[Mapping], pinned: set[Mapping]) -> tuple[list, list]:
    """(missing, extra): configured but not pinned, pinned but not configured."""
    return sorted(expected - pinned), sorted(pinned - expected)


def judge(f: dict) -> list[Target]:
    """The soak's targets from its figures (keys as in soak.summarise)."""
    return [
        Target("corrupted bytes", f.get("corrupted_bytes"), "==", 0),
        Target("hash mismatches", f.get("hash_mismatches"), "==", 0),
        Target("UDP lost outside fault windows", f.get("udp_lost_outside"), "==", 0),
        Target("engine restart (max)", f.get("engine_restart_max"), "<=", 2.0, "s"),
        Target("drift repaired (max)", f.get("repair_max"), "<=", 5.0, "s"),
        Target("RSS growth (max per gateway)", f.get("rss_growth_max"), "<", 5.0, "%"),
        Target("fd growth (max per gateway)", f.get("fd_growth_max"), "<=", 0, "fds"),
        Target("map entries not as configured", f.get("map_diff"), "==", 0),
    ]


def ranges(seqs: Iterable[int]) -> list[list[int]]:
    """Sorted distinct integers as [first, last] runs (compact JSON for received seqs)."""
    out: list[list[int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


def udp_flow(sent: int, received: Iterable[int], send_times: Sequence[float], src: int,
             dst: int, windows: Sequence[Window], run_end: float) -> dict:
    """One numbered UDP flow: lost datagrams, split by fault windows, and their send times."""
    lost = lost_seqs(sent, received)
    times = [send_times[s] for s in lost]
    inside, outside = attribute(times, src, dst, windows, run_end)
    out_times = [t for t in times if not any(w.covers(t, run_end) for w in windows
                                             if w.pair == frozenset((src, dst)))]
    return {"sent": sent, "lost": len(lost), "inside": inside, "outside": outside,
            "outside_times": out_times,
            "outside_since_window": since_window(out_times, src, dst, windows)}


def bulk(sent: Sequence[dict], received: Sequence[dict]) -> dict:
    """TCP bulk of all connections: bytes, corrupted bytes and hash mismatches.

    sent: the senders' records (src, peer, conn, sent, sha); received: the
    receivers' (dst, src, conn, received, sha, corrupted). A connection whose
    receiver read every byte sent must have the sender's hash; one that broke
    early is counted as incomplete (its bytes are still checked one by one).
    """
    got = {(r["dst"], r["src"], r["conn"]): r for r in received}
    out = {"connections": len(sent), "bytes_sent": 0, "bytes_received": 0,
           "corrupted_bytes": sum(r["corrupted"] for r in received),
           "hash_mismatches": 0, "incomplete": 0, "unmatched": 0}
    for s in sent:
        out["bytes_sent"] += s["sent"]
        r = got.get((s["peer"], s["src"], s["conn"]))
        if r is None:
            out["unmatched"] += 1
            continue
        out["bytes_received"] += r["received"]
        if r["received"] != s["sent"]:
            out["incomplete"] += 1
        elif r["sha"] != s["sha"]:
            out["hash_mismatches"] += 1
    return out


def dist(values: Iterable[float | None]) -> dict:
    """count, median and max of the measured values (None: not measured)."""
    v = sorted(x for x in values if x is not None)
    if not v:
        return {"n": 0, "median": None, "max": None}
    return {"n": len(v), "median": v[len(v) // 2] if len(v) % 2
            else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2, "max": v[-1]}
