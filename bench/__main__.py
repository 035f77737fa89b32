"""python -m bench: natgw against conntrack NAT and plain routing, side by side.

    python -m bench [--quick] [--rounds N] [--json PATH] [--markdown PATH]
    python -m bench --render JSON [--markdown PATH]   # tables of a saved run
    python -m bench --cleanup [PREFIX]   # remove what a killed run left

See BENCHMARKS.md for what is measured and how; bench.topology for the
namespaces it builds (nothing touches the root namespace's network).
"""

from __future__ import annotations

import argparse
import json
import sys

from bench import report
from bench.run import Options, check_modes, run, write_json
from bench.topology import (
    ALL_MODES,
    MODE_TABLE,
    MODES,
    TRANSPORTS,
    WG_MODES,
    cleanup,
    load_records,
    natgw_refuses,
)
from bench.workloads import FAMILIES, SIZES
from lab.net import LabError


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="2 rounds of very short windows, 10,000 mappings only, fewer "
                    "control-plane repeats (~4 min on a quiet machine)")
    ap.add_argument("--rounds", type=int, help="rounds of interleaved measures (default 6)")
    ap.add_argument("--window", type=float, help="seconds per UDP rate sample (default 1)")
    ap.add_argument("--modes", help=f"over the underlay, comma-separated, of {','.join(ALL_MODES)} "
                    f"(default {','.join(MODES)}; natgw-xdp turns the pods' tx checksum "
                    "offload off in every mode)")
    ap.add_argument("--wg-modes", help=f"over WireGuard (default {','.join(WG_MODES)})")
    ap.add_argument("--transports", default=",".join(TRANSPORTS), help="underlay,wg")
    ap.add_argument("--sizes", default=",".join(SIZES),
                    help="UDP sizes: 64 (bytes of payload), 1400 (bytes of IP packet)")
    ap.add_argument("--families", default=",".join(map(str, FAMILIES)), help="4,6")
    ap.add_argument("--tx-csum-off", action="store_true",
                    help="the pods send without tx checksum offload in every mode (natgw-xdp "
                    "implies it)")
    ap.add_argument("--no-mappings", action="store_true", help="skip the 100/10,000 mappings")
    ap.add_argument("--no-control", action="store_true", help="skip natgw's control plane")
    ap.add_argument("--no-micro", action="store_true", help="skip BPF_PROG_TEST_RUN timing")
    ap.add_argument("--no-hooks", action="store_true",
                    help="skip route with natgw's programs attached but matching nothing")
    ap.add_argument("--json", help="where the JSON goes (default bench-results/latest.json, "
                    "with --quick bench-results/quick.json)")
    ap.add_argument("--markdown", help="update the generated block of this markdown file")
    ap.add_argument("--render", metavar="JSON",
                    help="measure nothing: print (and --markdown) the tables of a saved run")
    ap.add_argument("--cleanup", nargs="?", const="", metavar="PREFIX",
                    help="remove the namespaces, gateways and processes of killed runs")
    return ap.parse_args(argv)


def _list(value: str) -> tuple[str, ...]:
    return tuple(x for x in value.split(",") if x)


def default_modes(modes: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The default modes this natgw can run, and "mode (why not)" for the others."""
    why = {m: natgw_refuses(m) for m in modes}
    return (tuple(m for m in modes if not why[m]),
            tuple(f"{m} ({why[m]})" for m in modes if why[m]))


def options(a: argparse.Namespace) -> Options:
    opt = Options()
    if a.quick:  # a smoke run of everything: every topology, workload and measure once more
        opt.rounds, opt.window, opt.warmup, opt.tcp_window, opt.rr_window = 2, 0.3, 0.15, 1.0, 0.5
        opt.change_cycles, opt.cold_repeats, opt.mapping_counts = 1, 1, (10000,)
        opt.mapping_repeats = opt.route_repeats = 1
    if a.rounds:
        opt.rounds = a.rounds
    if a.window:
        opt.window = a.window
    skipped: tuple[str, ...] = ()
    if a.modes is None:
        opt.modes, skipped = default_modes(MODES)
    else:
        opt.modes = _list(a.modes)
    if a.wg_modes is None:
        opt.wg_modes, more = default_modes(WG_MODES)
        skipped += tuple(m for m in more if m not in skipped)
    else:
        opt.wg_modes = _list(a.wg_modes)
    opt.skipped = skipped
    check_modes(opt.modes + opt.wg_modes)
    opt.transports = _list(a.transports)
    for t in opt.transports:
        if t not in TRANSPORTS:
            raise LabError(f"--transports: unknown transport {t}")
    opt.sizes = _list(a.sizes)
    if not opt.sizes or any(s not in SIZES for s in opt.sizes):
        raise LabError(f"--sizes: of {','.join(SIZES)}")
    try:
        opt.families = tuple(int(f) for f in _list(a.families))
    except ValueError:
        opt.families = ()
    if not opt.families or any(f not in FAMILIES for f in opt.families):
        raise LabError("--families: of 4,6")
    opt.tx_csum_off = a.tx_csum_off or any(MODE_TABLE[m].tx_csum_off
                                           for m in opt.modes + opt.wg_modes)
    if a.no_mappings:
        opt.mapping_counts = ()
    opt.control = not a.no_control and "natgw" in opt.modes
    opt.micro = not a.no_micro and "natgw" in opt.modes
    opt.hooks = not a.no_hooks and "route" in opt.modes
    opt.log = lambda s: print(s, file=sys.stderr, flush=True)
    if skipped:
        opt.log(f"natgw bench: not measuring {'; '.join(skipped)}")
    return opt


def main(argv: list[str]) -> int:
    a = parse(argv)
    try:
        if a.cleanup is not None:
            for rec in load_records(a.cleanup or None):
                cleanup(rec)
                print(f"removed {rec.prefix}")
            return 0
        if a.render:
            with open(a.render) as f:
                d = json.load(f)
            print(report.render(d))
            if a.markdown:
                report.update_markdown(a.markdown, d, d.get("command", "python -m bench"))
            return 0
        a.json = a.json or f"bench-results/{'quick' if a.quick else 'latest'}.json"
        try:
            opt = options(a)
        except LabError as e:  # a usage error
            print(f"natgw bench: {e}", file=sys.stderr)
            return 2
        res = run(opt)
    except LabError as e:
        print(f"natgw bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("natgw bench: interrupted (everything it made is removed)", file=sys.stderr)
        return 1
    command = "python -m bench " + " ".join(argv)
    res.command = command.strip()
    d = res.as_dict()
    write_json(res, a.json)
    print(report.render(d))
    print(f"JSON: {a.json}")
    if a.markdown:
        report.update_markdown(a.markdown, d, res.command)
        print(f"updated {a.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
