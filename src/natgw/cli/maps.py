"""`natgw maps` and `natgw lookup`: what the dataplane translates, and how often.

Both read the pinned maps directly (natgw.introspect): no compiler, no state
change, safe on a busy gateway. JSON shapes are documented in natgw.introspect;
`maps --watch --json` prints one JSON object per refresh, one per line:

    {"time": 1700000000.0, "interval": 1.0,
     "rates": [{"gateway": "gw1", "ifindex": 5, "peer": "cluster2",
                "mapping": "remote:10.245.0.0/16", "direction": "egress",
                "packets_per_second": 12.0, "bytes_per_second": 1500.0}]}

(rates are null in the first object: there is nothing to compare with yet).
With no gateway loaded, `maps` says so in one line (exit 0); --json prints [].
"""

from __future__ import annotations

import ipaddress
import json
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Annotated

import typer

from natgw.cli.errors import EXIT_INVALID, EXIT_RUNTIME, fail, warn
from natgw.cli.options import netns_of

if TYPE_CHECKING:
    from natgw import introspect as I

# natgw.introspect is imported by the commands that use it, so that every
# other natgw command starts without paying for it.

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen: redraw in place like watch(1)
NOTHING_LOADED = "no natgw gateway is loaded"


def _nothing(netns: str | None) -> str:
    return NOTHING_LOADED + (f" in netns {netns}" if netns else "")


def _check_gateway(gateway: str | None) -> None:
    from natgw.dataplane.loader import DataplaneError, pin_dir  # noqa: PLC0415

    if gateway is not None:
        try:
            pin_dir(gateway)
        except DataplaneError as e:
            fail(str(e), EXIT_INVALID)


# -- text rendering ------------------------------------------------------------


def _bits(bytes_per_second: float) -> str:
    value = bytes_per_second * 8
    for unit in ("", "k", "M", "G"):
        if value < 1000 or unit == "G":
            return f"{value:.1f} {unit}bit/s"
        value /= 1000
    raise AssertionError("unreachable")


def _table(rows: list[list[str]], indent: str) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]


def _where(ifname: str | None, ifindex: int, peer: str | None) -> str:
    """`dev NAME ifindex N peer PEER`, leaving out what is unknown."""
    parts = [f"dev {ifname}"] if ifname else []
    parts.append(f"ifindex {ifindex}")
    if peer:
        parts.append(f"peer {peer}")
    return " ".join(parts)


def render_maps(reports: list[I.GatewayReport],
                rates: dict[I.RateKey, I.Rate | None] | None = None) -> str:
    """The text of `natgw maps`: counters, or rates when given (--watch)."""
    lines = []
    for g in reports:
        head = [f"gateway {g.gateway}"]
        if g.netns:
            head.append(f"netns {g.netns}")
        head.append(f"build {g.build or '-'}")
        lines.append(" ".join(head))
        for d in g.devices:
            lines.append("  " + _where(d.ifname, d.ifindex, d.peer)
                         + ("  (LAN, fast path)" if d.lan else ""))
            if d.lan:
                lines.append("    fastpath " + "  ".join(f"{n} {c}" for n, c in
                                                      d.fastpath.items()))
                continue
            rows = []
            for direction in ("egress", "ingress"):
                for i, m in enumerate(d.mappings):
                    rule = m.rule(direction)
                    row = [direction if i == 0 else "", m.kind, rule.side, str(rule.match),
                           "->", str(rule.rewrite)]
                    if rates is None:
                        row += [f"packets {rule.packets}", f"bytes {rule.bytes}"]
                    else:
                        r = rates.get((g.gateway, d.ifindex, m.label, direction))
                        row += ["-", "-"] if r is None else [
                            f"{r.packets_per_second:.1f} pkt/s",
                            _bits(r.bytes_per_second)]
                    rows.append(row)
            if rows:
                lines += _table(rows, "    ")
            else:
                lines.append("    (no mappings)")
            for name, stats in (("drops", d.drops), ("events", d.events),
                                ("fastpath", d.fastpath)):
                if stats:
                    lines.append(f"    {name:<7}  "
                                 + "  ".join(f"{n} {c}" for n, c in stats.items()))
    return "\n".join(lines)


def render_lookup(address: str, items: list[I.Translation]) -> str:
    if not items:
        return f"{address}: not translated (no natgw mapping matches it)"
    rows = []
    for t in items:
        mapping = f"{t.kind} {t.cidr} as {t.as_}" if t.cidr else f"{t.kind} (id {t.mapping_id})"
        rows.append([t.direction, t.side, str(t.address), "->", str(t.translated), mapping,
                     _where(t.ifname, t.ifindex, t.peer), f"gateway {t.gateway}"])
    return "\n".join(_table(rows, ""))


def _rates_json(reports: list[I.GatewayReport],
                rates: dict[I.RateKey, I.Rate | None]) -> list[dict]:
    out = []
    for g in reports:
        for d in g.devices:
            for m in d.mappings:
                for direction in ("egress", "ingress"):
                    r = rates.get((g.gateway, d.ifindex, m.label, direction))
                    out.append({
                        "gateway": g.gateway, "ifindex": d.ifindex, "peer": d.peer,
                        "mapping": m.label, "direction": direction,
                        "packets_per_second": r.packets_per_second if r else None,
                        "bytes_per_second": r.bytes_per_second if r else None,
                    })
    return out


# -- commands ------------------------------------------------------------------

# Arguments are typer.Argument(hidden=True): each command's docstring describes
# them; hidden drops only typer's "Arguments:" list (the usage line keeps them).


def maps(
    ctx: typer.Context,
    gateway: Annotated[str | None, typer.Argument(hidden=True)] = None,
    as_json: Annotated[bool, typer.Option("--json", "-j", help="JSON output (like ip -j).")]
    = False,
    watch: Annotated[bool, typer.Option("--watch", "-w",
                                        help="Show live rates, refreshed until Ctrl-C.")]
    = False,
    interval: Annotated[float, typer.Option("--interval", "-i", min=0.1, metavar="SECONDS",
                                            help="Refresh interval of --watch.")] = 1.0,
    count: Annotated[int | None, typer.Option("--count", "-c", min=1, metavar="N",
                                              show_default=False,
                                              help="With --watch: stop after N refreshes.")]
    = None,
) -> None:
    """Translation tables and counters, drops and events per device.

    GATEWAY: the gateway to show; default: every loaded gateway (with
    --netns: those in it).
    """
    from natgw import introspect as I  # noqa: PLC0415

    if count is not None and not watch:
        fail("--count only applies to --watch", EXIT_INVALID)
    netns = netns_of(ctx)
    _check_gateway(gateway)
    failed: list[str] = []

    def on_error(_gw: str, message: str) -> None:
        failed.append(message)
        warn(message)

    def read() -> list[I.GatewayReport]:
        try:
            if gateway is not None:
                return [I.read_gateway(gateway, netns=netns)]
            return I.read_gateways(I.gateway_names(netns=netns), netns=netns, on_error=on_error)
        except I.InspectError as e:
            fail(str(e))

    if not watch:
        reports = read()
        if as_json:
            typer.echo(json.dumps(I.to_json(reports), indent=2))
        elif reports:
            typer.echo(render_maps(reports))
        elif not failed:
            typer.echo(_nothing(netns))
        if failed:
            raise typer.Exit(EXIT_RUNTIME)
        return

    redraw = not as_json and sys.stdout.isatty()

    def show(reports: list[I.GatewayReport], rates: dict[I.RateKey, I.Rate | None]) -> None:
        if as_json:
            doc = {"time": time.time(), "interval": interval, "rates": _rates_json(reports, rates)}
            typer.echo(json.dumps(doc))
            return
        header = f"natgw maps: every {interval:g}s, Ctrl-C to stop    {time.strftime('%X')}"
        body = render_maps(reports, rates) if reports else _nothing(netns)
        typer.echo((CLEAR if redraw else "") + header + "\n" + body + ("" if redraw else "\n"))

    # Ctrl-C only sets a flag, and the watch stops at its next pause: never in the
    # middle of a read (bpf(2), netlink and pyroute2's event loop), which an
    # exception raised there may not unwind cleanly. A `maps --watch` under load
    # once ignored Ctrl-C for 10 s.
    stop = threading.Event()

    def pause(seconds: float) -> None:
        if stop.wait(seconds):
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        I.watch(read, show, interval, count, sleep=pause)
    except KeyboardInterrupt:
        pass  # the way to stop watching, not a failure
    finally:
        signal.signal(signal.SIGINT, previous)


def lookup(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument(hidden=True)],
    as_json: Annotated[bool, typer.Option("--json", "-j", help="JSON output (like ip -j).")]
    = False,
    gateway: Annotated[str | None, typer.Option(
        "--gateway", "-g", metavar="NAME", show_default=False,
        help="Only this gateway; default: every loaded gateway (with --netns: those in it).")]
    = None,
) -> None:
    """How ADDRESS is translated: per direction and side, and where.

    ADDRESS is an IPv4 or IPv6 address.
    """
    from natgw import introspect as I  # noqa: PLC0415

    netns = netns_of(ctx)
    _check_gateway(gateway)
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        fail(f"{address!r}: not an IPv4 or IPv6 address", EXIT_INVALID)
    try:
        items = I.lookup(addr, [gateway] if gateway else None, netns=netns)
    except I.InspectError as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps(I.translation_json(items), indent=2))
    else:
        typer.echo(render_lookup(str(addr), items))
