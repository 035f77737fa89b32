"""Pure arithmetic of the benchmark: medians, percentiles, ratios, targets.

No I/O here, so tests can check every number the report prints.
"""

from __future__ import annotations

import math
import operator
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass


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

    def by(self) -> str:
        """How far a missed target is off its limit, e.g. "+1.3 s"; "" when met or n/a."""
        if self.met is not False or self.value is None:
            return ""
        return f"{self.value - self.limit:+.3g}{(' ' + self.unit) if self.unit else ''}"

    def as_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "op": self.op, "limit": self.limit,
                "unit": self.unit, "met": self.met, "margin": self.margin}


def medians_by_key(samples: Mapping[str, Sequence[float | None]]) -> dict[str, float | None]:
    return {k: median(v) for k, v in samples.items()}


def capacity_ratio(ns_a: float | None, ns_b: float | None) -> float | None:
    """How many times b's forwarding capacity a has, from CPU time per packet."""
    return ratio(ns_b, ns_a)


def evaluate_targets(m: Mapping[str, float | None], transport: str = "underlay") -> list[Target]:
    """The issue's targets from medians keyed "<mode>/<transport>/<measure>".

    Measures: udp1_pps / udpn_pps (one flow / new flow per packet, received rate),
    udp1_ns / udpn_ns (gateway CPU time per packet), tcp_gbps. Mapping counts:
    "natgw-m10000/<transport>/...". Every rate target is judged twice: on the
    measured rate ("rate") and on the gateways' CPU cost per packet ("cpu"), since
    the rate only shows the gateways' capacity when they, not the generator, are
    the bottleneck.
    """

    def g(mode: str, measure: str) -> float | None:
        return m.get(f"{mode}/{transport}/{measure}")

    out = []
    for basis in ("rate", "cpu"):
        def rel(a: str, b: str, flow: str, basis: str = basis) -> float | None:
            if basis == "rate":
                return ratio(g(a, f"{flow}_pps"), g(b, f"{flow}_pps"))
            return capacity_ratio(g(a, f"{flow}_ns"), g(b, f"{flow}_ns"))

        for flow, label in (("udp1", "one flow"), ("udpn", "new flow per packet")):
            out.append(Target(f"{transport}: natgw >= 0.97 x route ({label}) [{basis}]",
                              rel("natgw", "route", flow), ">=", 0.97, "x"))
            out.append(Target(f"{transport}: natgw >= 1.3 x iptables ({label}) [{basis}]",
                              rel("natgw", "iptables", flow), ">=", 1.3, "x"))
        if basis == "rate":
            new_vs_one = ratio(g("natgw", "udpn_pps"), g("natgw", "udp1_pps"))
        else:
            new_vs_one = capacity_ratio(g("natgw", "udpn_ns"), g("natgw", "udp1_ns"))
        out.append(Target(f"{transport}: natgw new-flow rate within 3 % of one-flow rate "
                          f"[{basis}]", None if new_vs_one is None else abs(1 - new_vs_one),
                          "<=", 0.03, "fraction"))
        if g("natgw-m10000", "udp1_pps") is not None:
            if basis == "rate":
                many = ratio(g("natgw-m10000", "udp1_pps"), g("natgw", "udp1_pps"))
            else:
                many = capacity_ratio(g("natgw-m10000", "udp1_ns"), g("natgw", "udp1_ns"))
            out.append(Target(f"{transport}: 10,000 mappings cost < 3 % of forwarding rate "
                              f"[{basis}]", None if many is None else 1 - many,
                              "<=", 0.03, "fraction"))
    out.append(Target(f"{transport}: natgw TCP bulk >= 0.97 x route",
                      ratio(g("natgw", "tcp_gbps"), g("route", "tcp_gbps")), ">=", 0.97, "x"))
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
