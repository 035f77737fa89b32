"""Tables of a benchmark run: plain text for stdout, markdown for BENCHMARKS.md."""

from __future__ import annotations

import re
import time
from pathlib import Path

from bench.stats import (
    Target,
    evaluate_control_targets,
    evaluate_targets,
    fmt,
    fmt_rate,
    mapping_measure,
    relative,
    table,
)
from bench.topology import ALL_MODES
from bench.workloads import Workload, classes

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
TRANSPORT_TITLE = {"underlay": "direct underlay (veth, no tunnel)",
                   "wg": "WireGuard tunnel (wireguard-go in every mode)"}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.0f}%"


def _saturated(d: dict, key: str, measure: str) -> str:
    flags = d["samples"].get(key, {}).get(f"{measure}_sat") or []
    return f"{int(sum(flags))}/{len(flags)}" if flags else "-"


def forwarding_table(d: dict, transport: str, size: str, family: int, md: bool) -> str | None:
    m, sp = d["medians"], d["spreads"]
    one, new = Workload(size, family, False), Workload(size, family, True)

    def g(mode: str, measure: str) -> float | None:
        return m.get(f"{mode}/{transport}/{measure}")

    modes = [x for x in ALL_MODES if g(x, f"{one.measure}_pps") is not None
             or g(x, f"{new.measure}_pps") is not None]
    if not modes:
        return None
    rows = []
    route = f"route/{transport}"
    for mode in modes:
        row, key = [mode], f"{mode}/{transport}"
        for w in (one, new):
            f = w.measure
            row += [fmt_rate(g(mode, f"{f}_pps")),
                    fmt(relative(m, d.get("samples"), key, route, f"{f}_pps")),
                    _pct(sp.get(f"{mode}/{transport}/{f}_pps")),
                    fmt(g(mode, f"{f}_ns"), 0),
                    fmt(relative(m, d.get("samples"), route, key, f"{f}_ns")),
                    _saturated(d, f"{mode}/{transport}", f)]
        rows.append(row)
    headers = ["mode"]
    for flow in ("1 flow", "new flow/pkt"):
        headers += [f"{flow} pps", "x route", "spread", "gw ns/pkt", "capacity x route",
                    "gw-bound"]
    return table(headers, rows, md)


def tcp_table(d: dict, transport: str, md: bool) -> str | None:
    m = d["medians"]

    def g(mode: str, measure: str) -> float | None:
        return m.get(f"{mode}/{transport}/{measure}")

    rows = [[mode, fmt(g(mode, "tcp_gbps")),
             fmt(relative(m, d.get("samples"), f"{mode}/{transport}", f"route/{transport}",
                          "tcp_gbps")),
             fmt(g(mode, "rr_p50_us"), 0), fmt(g(mode, "rr_p99_us"), 0)]
            for mode in ALL_MODES if g(mode, "tcp_gbps") is not None or g(mode, "rr_p50_us")]
    if not rows:
        return None
    return table(["mode", "TCP bulk Gbit/s", "x route", "RR p50 us", "RR p99 us"], rows, md)


def mappings_table(d: dict, md: bool) -> str | None:
    m = d["medians"]
    counts = sorted({int(k.split("/")[0][len("natgw-m"):]) for k in m
                     if k.startswith("natgw-m") and k.endswith("udp1_pps")})
    if not counts:
        return None
    rows = []
    base, s = "natgw/underlay", d.get("samples")
    for n in [1, *counts]:
        k = base if n == 1 else f"natgw-m{n}/underlay"
        row = [f"{n:,}"]
        for flow in ("udp1", "udpn"):
            pps, ns = (mapping_measure(m, k, f"{flow}_pps"), mapping_measure(m, k, f"{flow}_ns"))
            row += [fmt_rate(m.get(f"{k}/{pps}")),
                    fmt(relative(m, s, k, base, pps)),
                    fmt(m.get(f"{k}/{ns}"), 0),
                    fmt(relative(m, s, base, k, ns))]
        rows.append(row)
    return table(["mappings per gateway", "1 flow pps", "x 1 mapping", "gw ns/pkt",
                  "capacity x 1 mapping", "new flow pps", "x 1 mapping", "gw ns/pkt",
                  "capacity x 1 mapping"], rows, md)


def overhead_table(d: dict, md: bool) -> str | None:
    """route, route with natgw's programs matching nothing (tcx links, tc filters), natgw
    translating."""
    m = d["medians"]
    if m.get("route+natgw-hooks/underlay/udp1_ns") is None:
        return None
    base = {f: m.get(f"route/underlay/{f}_ns") for f in ("udp1", "udpn")}
    rows = []
    for label, key in (("route", "route"),
                       ("route + natgw programs, no match (tcx)", "route+natgw-hooks"),
                       ("route + natgw programs, no match (clsact + cls_bpf)",
                        "route+natgw-hooks-tc"),
                       ("natgw-off, translating after routing", "natgw-off"),
                       ("natgw, translating (default fast path)", "natgw")):
        if m.get(f"{key}/underlay/udp1_ns") is None and key != "natgw":
            continue  # (runs without that row)
        row = [label]
        for f in ("udp1", "udpn"):
            ns = m.get(f"{key}/underlay/{f}_ns")
            extra = None if ns is None or base[f] is None else ns - base[f]
            row += [fmt_rate(m.get(f"{key}/underlay/{f}_pps")), fmt(ns, 0),
                    "-" if extra is None else f"{extra:+.0f}"]
        rows.append(row)
    return table(["underlay", "1 flow pps", "gw ns/pkt", "vs route", "new flow pps",
                  "gw ns/pkt", "vs route"], rows, md)


def fastpath_table(d: dict, md: bool) -> str | None:
    """natgw's fast-path decisions over the rounds, per natgw topology (both gateways)."""
    fp = d.get("fastpath") or {}
    if not fp:
        return None
    rows = []
    for key, reasons in fp.items():
        redirected = sum(n for r, n in reasons.items() if r.startswith("redirect"))
        stack = {r: n for r, n in reasons.items() if not r.startswith("redirect")}
        rows.append([key, f"{redirected:,}", f"{sum(stack.values()):,}",
                     ", ".join(f"{r} {n:,}" for r, n in reasons.items()) or "-"])
    return table(["natgw topology", "redirected", "to the stack", "by reason"], rows, md)


def _kib(b: float | None) -> str:
    return "-" if b is None else f"{b / 1024:,.0f} KiB"


def control_table(d: dict, md: bool) -> str | None:
    c = d.get("control") or {}
    if not c:
        return None
    transports = [t for t in ("underlay", "wg") if t in c]

    def row(label: str, f) -> list[str]:
        out = [label]
        for t in transports:
            try:
                out.append(f(c[t]))
            except (KeyError, TypeError):
                out.append("-")
        return out

    def s(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.0f} ms"

    rows = [
        row("natgw up, file unchanged (CLI wall time)", lambda x: s(x["noop_up_s"])),
        row("config change, one mapping added: natgw up (CLI wall time)",
            lambda x: s(x["config_change"]["add_cli_s"])),
        row("... same change through the library (Gateway.apply)",
            lambda x: s(x["config_change"]["add_library_s"])),
        row("... mapping removed: CLI / library",
            lambda x: f"{s(x['config_change']['remove_cli_s'])} / "
                      f"{s(x['config_change']['remove_library_s'])}"),
        row("first packet through the added mapping after start: CLI / library",
            lambda x: f"{s(x['config_change']['add_cli_first_packet_s'])} / "
                      f"{s(x['config_change']['add_library_first_packet_s'])}"),
        row("lost on other flows while a change ran",
            lambda x: f"{x['config_change']['lost_in_changes']} "
                      f"({x['config_change']['cycles'] * 4} changes, "
                      f"{x['config_change']['stream_pps'] / 1000:.0f}k pps in 8 flows)"),
        row("... lost outside the changes / sent in all",
            lambda x: f"{x['config_change']['stream_lost'] - x['config_change']['lost_in_changes']}"
                      f" / {x['config_change']['stream_sent']:,}"),
        row("cold natgw up (compile included): CLI wall time",
            lambda x: s(x["cold_up"]["up_s"])),
        row("cold natgw up to first translated packet",
            lambda x: s(x["cold_up"]["first_packet_s"])
            + ("" if x["cold_up"]["all_translated"] else " (untranslated!)")),
        row("RSS of foreground natgw up",
            lambda x: f"{x['memory']['natgw_rss_kb'] / 1024:.1f} MiB"),
        row("RSS of wireguard-go (gw1, gw2)",
            lambda x: ", ".join(f"{v / 1024:.1f} MiB" for v in x["memory"]["wireguard_go_rss_kb"])
            or "-"),
        row("pinned maps memlock, 1 mapping", lambda x: _kib(x["pinned"]["1"]["maps_memlock"])),
        row("pinned programs memlock", lambda x: _kib(x["pinned"]["1"]["progs_memlock"])),
    ]
    under = c.get("underlay", {}).get("pinned", {})
    for n in sorted((k for k in under if k != "1"), key=int):
        rows.append([f"pinned maps memlock, {int(n):,} mappings", _kib(under[n]["maps_memlock"])]
                    + ["-"] * (len(transports) - 1))
    return table(["natgw control plane", *transports], rows, md)


def install_table(d: dict, md: bool) -> str | None:
    rows = []
    for key, b in sorted(d.get("build", {}).items()):
        for i, t in enumerate(b.get("install_mappings") or []):
            per = t["public_s"] / t["public_calls"] if t["public_calls"] else None
            rows.append([f"{key} gw{i + 1}",
                         f"{t['public_calls']}", s_ms(per),
                         f"{t['bulk_calls']}", s_ms(t["bulk_s"]),
                         s_ms(t["last_call_s"]) if t["last_call_s"] else "-"])
    if not rows:
        return None
    return table(["extra mappings", "add_mapping calls", "ms per call", "bulk add_mappings",
                  "bulk total", "last add_mapping (all installed)"], rows, md)


def s_ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f} ms"


def micro_table(d: dict, md: bool) -> str | None:
    mc = d.get("micro") or {}
    if not mc:
        return None
    names = list(next(iter(mc.values())).keys())
    rows = [[f"{int(n):,}"] + [f"{mc[n][c]:.0f}" if c in mc[n] else "-" for c in names]
            for n in mc]
    return table(["mappings", *[f"{c} ns" for c in names]], rows, md)


def targets(d: dict) -> list[Target]:
    return evaluate_targets(d["medians"], samples=d.get("samples"))


def _show(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "fraction":
        return f"{v * 100:.1f} %"
    if unit == "x":
        return f"{v:.2f} x"
    return f"{v:.3g} {unit}".strip()


def targets_table(d: dict, md: bool) -> str | None:
    """Issue 13's targets: one line each, value, its interval, target and verdict from
    this run. A verdict whose interval holds the target is marked: the rounds cannot
    tell which side of it natgw is on."""
    rows = []
    for t in targets(d):
        verdict = t.verdict + ("*" if t.settled is False else "")
        if t.met is False:  # how far off: in points for a fraction, else in the unit
            off = t.value - t.limit
            verdict += (f" (by {off * 100:+.1f} points)" if t.unit == "fraction"
                        else f" (by {off:+.2f})")
        interval = ("-" if t.interval is None
                    else f"{_show(t.interval[0], t.unit)} to {_show(t.interval[1], t.unit)}")
        rows.append([t.name, _show(t.value, t.unit), interval,
                     f"{t.op} {_show(t.limit, t.unit)}",
                     f"**{verdict}**" if md and t.met is False else verdict])
    if not rows:
        return None
    return table(["target", "value", "95 % interval", "target", "verdict"], rows, md)


def control_targets_text(d: dict, md: bool) -> str | None:
    lines = []
    for t in evaluate_control_targets(d["medians"]):
        mark = {True: "met", False: "MISSED", None: "n/a"}[t.met]
        val = "-" if t.value is None else (f"{t.value:.0f}" if t.unit == "packets"
                                           else f"{t.value:.3f}")
        what = f"{t.name}: {val} {t.unit} (target {t.op} {t.limit})"
        lines.append(f"- **{mark}**: {what}" if md else f"  [{mark:>6}] {what}")
    return "\n".join(lines) or None


def _modes_text(d: dict) -> str:
    """The modes measured, what each is, and what the run could not measure."""
    opt = d["options"]
    under, wg = opt.get("modes") or [], opt.get("wg_modes") or []
    text = (f"Modes over the underlay: {', '.join(under)}"
            + (f"; over WireGuard: {', '.join(wg)}" if "wg" in opt.get("transports", ())
               else "") + ". ")
    if opt.get("skipped"):
        text += f"Not measured: {'; '.join(opt['skipped'])}. "
    text += ("The pods' tx checksum offload: "
             + ("**off in every mode** (natgw-xdp on veth needs it; TCP without TSO). "
                if opt.get("tx_csum_off") else "on (the kernel's default). "))
    return text


def render(d: dict, md: bool = False) -> str:
    mach, opt = d["machine"], d["options"]
    h = "### " if md else "== "
    parts = [
        f"{'**Machine:** ' if md else '== Machine: '}{mach['cpu_model']}, {mach['cores']} "
        f"cores, {mach['memory_gib']} GiB, "
        f"kernel {mach['kernel']}; load average {_load(mach.get('loadavg_start'))} at start, "
        f"{_load(mach.get('loadavg_end'))} at end; natgw {mach['natgw_commit']}, "
        f"{mach['wireguard_go']}, {mach['iptables']}, {mach['nft']}",
        f"Median of {opt['rounds']} rounds (modes interleaved); UDP: {opt['window']} s windows "
        f"after {opt.get('warmup', 0.5)} s of warm-up, 64-byte payload (92-byte IPv4, "
        f"112-byte IPv6 packets) and 1400-byte IP packets; TCP bulk: iperf3 "
        f"{opt['tcp_window']} s; RR: 64-byte request/response over one TCP connection, "
        f"{opt['rr_window']} s. 'gw ns/pkt': the gateway CPU's busy time (less other "
        f"processes) per forwarded packet; 'capacity x route' = route's ns/pkt / the mode's, "
        f"and 'x route' the mode's rate / route's: each the median over rounds of the "
        f"ratio within a round (the modes take turns within a round; natgw's pools "
        f"the pairs of the series it takes in turn with route); "
        f"'gw-bound': rounds in which the gateway CPU, not the generator, was the "
        f"bottleneck. {_modes_text(d)}Run "
        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(d['started']))}"
        f", {(d['finished'] - d['started']) / 60:.1f} min.",
    ]
    body = targets_table(d, md)
    if body:
        parts += [f"{h}Targets (issue 13: natgw with its default fast path; by capacity, "
                  "from gw ns/pkt)",
                  "Each value is the median of the ratios of pairs of samples taken in "
                  "turn: one pair a round, and natgw against route also the pairs of "
                  "the series the two take in turn after each round (the `vs-` measures). "
                  "The 95 % interval holds that median with at least 95 % confidence, "
                  "assuming nothing of the samples' distribution (the sign test's: of "
                  "8 pairs, their extremes; of 24, the 7th from each end). A verdict "
                  "marked * has the target inside its interval: the samples cannot tell "
                  "on which side of it natgw is.", body]
    for transport in ("underlay", "wg"):
        for size, family in classes():
            body = forwarding_table(d, transport, size, family, md)
            if body:
                parts += [f"{h}UDP forwarding, {size} B IPv{family}, "
                          f"{TRANSPORT_TITLE[transport]}", body]
        body = tcp_table(d, transport, md)
        if body:
            parts += [f"{h}TCP, {TRANSPORT_TITLE[transport]}", body]
    for title, fn in (("Where natgw's cost goes (two hops: gw1 egress, gw2 ingress)",
                       overhead_table),
                      ("natgw's fast-path decisions over the rounds (both gateways, "
                       "every device)", fastpath_table),
                      ("natgw forwarding with many mappings (underlay)", mappings_table),
                      ("Installing the extra mappings through the library", install_table),
                      ("natgw's programs alone (BPF_PROG_TEST_RUN, per packet per hop)",
                       micro_table),
                      ("natgw control plane and memory", control_table),
                      ("Control-plane goals", control_targets_text)):
        body = fn(d, md)
        if body:
            parts += [f"{h}{title}", body]
    return "\n\n".join(parts) + "\n"


def _load(v) -> str:
    return "-" if not v else "/".join(f"{x:.1f}" for x in v)


def update_markdown(path: str, d: dict, command: str) -> None:
    """Replace the generated block of a markdown file (or create it with the block)."""
    block = (f"{BEGIN}\n<!-- generated by `{command}`; edit outside the markers -->\n\n"
             f"{render(d, md=True)}\n{END}")
    p = Path(path)
    text = p.read_text() if p.exists() else ""
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text,
                      flags=re.S)
    else:
        text = (text + "\n\n" if text else "") + block + "\n"
    p.write_text(text)
