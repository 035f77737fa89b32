"""Pure arithmetic of the benchmark: medians, percentiles, ratios, targets.

No I/O here, so tests can check every number the report prints.
"""

from __future__ import annotations

import math
import operator
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from bench.workloads import HEADLINE, Workload, workloads


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that were measured (None: the measure failed)."""
    got = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(got) if got else None


def spread(values: Iterable[float | None]) -> float | None:
    """(max - min) / median of the measured values: how noisy the rounds were."""
    got = [v for v in values if v is not None and not math.isnan(v)]
    if len(got) < 2:
        return None
    m = statistics.median(got)
    return (max(got) - min(got)) / m if m else None


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of already sorted values."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p}: must be within 0..100")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def median_interval(values: Iterable[float | None],
                    confidence: float = 0.95) -> tuple[float, float] | None:
    """An interval that holds the median of what was sampled with at least
    `confidence`, assuming nothing of the distribution: the k-th smallest and k-th
    largest value, k the largest with P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2
    (the sign test's interval). None when there are too few values for any k (at 95 %,
    fewer than 6): 8 values give the extremes (99.2 %), 16 the 4th of each end."""
    xs = sorted(v for v in values if v is not None and not math.isnan(v))
    n, tail, below, k = len(xs), (1 - confidence) / 2, 0.0, 0
    while k < n and below + math.comb(n, k) / 2**n <= tail:
        below += math.comb(n, k) / 2**n
        k += 1
    return (xs[k - 1], xs[n - k]) if k else None


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def rate(count_before: int, count_after: int, t_before: float, t_after: float) -> float:
    """Packets (or bytes) per second between two counter readings."""
    if t_after <= t_before:
        raise ValueError("the second reading must come later")
    return (count_after - count_before) / (t_after - t_before)


def seq_loss(sent: int, received: Iterable[int]) -> int:
    """Datagrams numbered 0..sent-1 that never arrived (duplicates count once)."""
    return sent - len({s for s in received if 0 <= s < sent})


# The comparisons a target may use: value OP limit.
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "<": operator.lt, "==": operator.eq,
}


@dataclass(frozen=True)
class Target:
    """One goal: `value` compared with `limit` by `op` (a key of _OPS); None: not measured."""

    name: str
    value: float | None
    op: str
    limit: float
    unit: str = ""
    interval: tuple[float, float] | None = None  # 95 % of the median (paired rounds)

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        if self.op not in _OPS:
            raise ValueError(f"target {self.name}: unknown op {self.op!r}")
        return _OPS[self.op](self.value, self.limit)

    @property
    def margin(self) -> float | None:
        """How far past the limit (positive: met with room), relative to the limit."""
        if self.value is None or self.limit == 0:
            return None
        m = (self.value - self.limit) / abs(self.limit)
        return m if self.op == ">=" else -m

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "MISS", None: "n/a"}[self.met]

    @property
    def settled(self) -> bool | None:
        """False when the interval holds the limit: the rounds cannot tell whether
        the target is met, whichever side the median fell on. None: no interval."""
        if self.interval is None or self.value is None:
            return None
        low, high = self.interval
        return not low <= self.limit <= high

    def by(self) -> str:
        """How far a missed target is off its limit, e.g. "+1.3 s"; "" when met or n/a."""
        if self.met is not False or self.value is None:
            return ""
        return f"{self.value - self.limit:+.3g}{(' ' + self.unit) if self.unit else ''}"

    def as_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "op": self.op, "limit": self.limit,
                "unit": self.unit, "met": self.met, "margin": self.margin,
                "interval": self.interval, "settled": self.settled}


def medians_by_key(samples: Mapping[str, Sequence[float | None]]) -> dict[str, float | None]:
    return {k: median(v) for k, v in samples.items()}


def paired_ratios(a: Sequence[float | None], b: Sequence[float | None]) -> list[float]:
    """a / b within each round (rounds where either failed are left out)."""
    return [r for x, y in zip(a, b, strict=True) if (r := ratio(x, y)) is not None]


def paired_ratio(a: Sequence[float | None], b: Sequence[float | None]) -> float | None:
    """Median over rounds of a / b within the same round. The modes take turns within
    a round, so a round's pair shares the machine's state: a slow round for both
    cancels out, as it does not in the ratio of the two medians."""
    return median(paired_ratios(a, b))


Samples = Mapping[str, Mapping[str, Sequence[float | None]]]  # key -> measure -> rounds


def relative(m: Mapping[str, float | None], samples: Samples | None, key_a: str, key_b: str,
             measure: str) -> float | None:
    """key_a's measure over key_b's ("<mode>/<transport>" keys): the median of the
    pairs' ratios (_paired) where both have a sample every round, else the ratio of
    the medians."""
    a, b = _paired(samples, key_a, key_b, measure)
    if a and b:
        return paired_ratio(a, b)
    return ratio(m.get(f"{key_a}/{measure}"), m.get(f"{key_b}/{measure}"))


def relative_interval(samples: Samples | None, key_a: str, key_b: str,
                      measure: str) -> tuple[float, float] | None:
    """The 95 % interval (median_interval) of relative's paired ratio; None without
    per-round samples or with too few rounds."""
    a, b = _paired(samples, key_a, key_b, measure)
    return median_interval(paired_ratios(a, b)) if a and b else None


def _paired(samples: Samples | None, key_a: str, key_b: str,
            measure: str) -> tuple[Sequence[float | None], Sequence[float | None]]:
    """Both keys' samples of a measure, in pairs: the rounds', then those of the
    series both took in turn (ROUTE_SERIES), if both have it. Empty unless both
    have every round."""
    def taken(key: str, name: str) -> list[float | None]:
        return list((samples or {}).get(key, {}).get(name) or [])

    a, b = taken(key_a, measure), taken(key_b, measure)
    if len(a) != len(b):
        return [], []
    more_a, more_b = taken(key_a, ROUTE_SERIES + measure), taken(key_b, ROUTE_SERIES + measure)
    if more_a and len(more_a) == len(more_b):
        a, b = a + more_a, b + more_b
    return a, b


# Issue 13's goals for natgw (the default, fast path) over the underlay, for every
# UDP workload: at least `limit` x the capacity of `baseline`.
AGAINST = (("route", 1.0, ""), ("route", 1.1, " (moonshot)"), ("route-ct", 1.3, ""),
           ("iptables", 1.5, ""))
MAPPINGS_COST = 0.03  # 10,000 mappings may cost less than this fraction of capacity
MANY_MAPPINGS = "natgw-m10000"
# Prefix of the measures natgw and its many-mappings topologies take in turn,
# several times a round (bench.run.measure_round): "map-udp1_ns" etc.
MAPPING_SERIES = "map-"
# ... and of route and natgw, in turn, on every UDP workload: "vs-udp1_ns" etc. Their
# ratios (relative) pool these pairs with the rounds'.
ROUTE_SERIES = "vs-"


def mapping_measure(m: Mapping[str, float | None], key: str, measure: str) -> str:
    """The mapping series' name of `measure` where the run has it for `key`
    ("<mode>/<transport>"), else `measure` (runs from before the series)."""
    series = MAPPING_SERIES + measure
    return series if m.get(f"{key}/{series}") is not None else measure


def measured(m: Mapping[str, float | None], transport: str, measure: str = "") -> bool:
    """Whether a run has any figure of `transport` (ending in `measure`, if given)."""
    return any(v is not None and k.split("/")[1:2] == [transport] and k.endswith(measure)
               for k, v in m.items() if not k.startswith("control/"))


def evaluate_targets(m: Mapping[str, float | None],
                     works: Sequence[Workload] = tuple(workloads()),
                     samples: Samples | None = None) -> list[Target]:
    """Issue 13's targets from medians keyed "<mode>/<transport>/<measure>", and the
    per-round samples the ratios pair (see `relative`).

    Measures: "<workload>_ns" (the gateways' CPU time per forwarded packet, whose
    ratio is the capacity ratio: the figure that counts, whatever limited the
    measured rate), tcp_gbps, rr_p50_us. A workload, transport or measure the run
    did not measure at all gets no line; one measured for some modes only gets a
    line without a value (n/a).
    """
    def rel(mode: str, base: str, transport: str, measure: str) -> dict:
        """value and interval of mode's measure over base's, as Target's fields."""
        a, b = f"{mode}/{transport}", f"{base}/{transport}"
        return {"value": relative(m, samples, a, b, measure),
                "interval": relative_interval(samples, a, b, measure)}

    def cap(mode: str, base: str, transport: str, w: Workload) -> dict:
        return rel(base, mode, transport, f"{w.measure}_ns")  # base's ns over the mode's

    out = []
    for transport, title in (("underlay", "underlay"), ("wg", "WireGuard")):
        if not measured(m, transport):
            continue
        against = AGAINST if transport == "underlay" else (("route", 1.0, ""),)
        for w in works:
            if not measured(m, transport, f"/{w.measure}_ns"):
                continue
            for base, limit, note in against:
                out.append(Target(f"{title}, {w.label}: natgw capacity x {base}{note}",
                                  op=">=", limit=limit, unit="x",
                                  **cap("natgw", base, transport, w)))
        if measured(m, transport, "/tcp_gbps"):
            out.append(Target(f"{title}, TCP bulk: natgw x route", op=">=", limit=1.0,
                              unit="x", **rel("natgw", "route", transport, "tcp_gbps")))
        if measured(m, transport, "/rr_p50_us"):
            out.append(Target(f"{title}, TCP request/response p50: natgw x route", op="<=",
                              limit=1.0, unit="x",
                              **rel("natgw", "route", transport, "rr_p50_us")))
        if transport == "underlay" and any(v is not None for k, v in m.items()
                                           if k.startswith(f"{MANY_MAPPINGS}/{transport}/")):
            for w in HEADLINE:
                measure = mapping_measure(m, f"{MANY_MAPPINGS}/{transport}", f"{w.measure}_ns")
                c = rel("natgw", MANY_MAPPINGS, transport, measure)
                low_high = c["interval"] and (1 - c["interval"][1], 1 - c["interval"][0])
                out.append(Target(f"{title}, {w.label}: cost of 10,000 mappings",
                                  None if c["value"] is None else 1 - c["value"], "<",
                                  MAPPINGS_COST, "fraction", low_high))
    return out


def evaluate_control_targets(m: Mapping[str, float | None]) -> list[Target]:
    out = []
    for transport in ("underlay", "wg"):
        t = m.get(f"control/{transport}/config_change_s")
        lost = m.get(f"control/{transport}/config_change_lost")
        if t is None and lost is None:
            continue
        out.append(Target(f"{transport}: config change (natgw up, one mapping added) < 100 ms",
                          t, "<=", 0.1, "s"))
        out.append(Target(f"{transport}: zero loss on other flows during the changes",
                          lost, "<=", 0, "packets"))
    return out


def fmt_rate(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False) -> str:
    """A plain aligned table, or a GitHub markdown table."""
    if markdown:
        lines = ["| " + " | ".join(headers) + " |",
                 "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]
    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])
