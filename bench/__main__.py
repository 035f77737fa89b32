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
from bench.run import Options, run, write_json
from bench.topology import MODES, TRANSPORTS, cleanup, load_records
from lab.net import LabError


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="2 rounds of short windows, fewer control-plane repeats (~3 min)")
    ap.add_argument("--rounds", type=int, help="rounds of interleaved measures (default 6)")
    ap.add_argument("--window", type=float, help="seconds per UDP rate sample (default 2)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    ap.add_argument("--transports", default=",".join(TRANSPORTS), help="underlay,wg")
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


def options(a: argparse.Namespace) -> Options:
    opt = Options()
    if a.quick:
        opt.rounds, opt.window, opt.tcp_window, opt.rr_window = 2, 1.0, 2.0, 1.0
        opt.change_cycles, opt.cold_repeats = 1, 1
    if a.rounds:
        opt.rounds = a.rounds
    if a.window:
        opt.window = a.window
    opt.modes = tuple(m for m in a.modes.split(",") if m)
    opt.transports = tuple(t for t in a.transports.split(",") if t)
    for m in opt.modes:
        if m not in MODES:
            raise LabError(f"--modes: unknown mode {m}")
    for t in opt.transports:
        if t not in TRANSPORTS:
            raise LabError(f"--transports: unknown transport {t}")
    if a.no_mappings:
        opt.mapping_counts = ()
    opt.control = not a.no_control and "natgw" in opt.modes
    opt.micro = not a.no_micro and "natgw" in opt.modes
    opt.hooks = not a.no_hooks and "route" in opt.modes
    opt.log = lambda s: print(s, file=sys.stderr, flush=True)
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
        res = run(options(a))
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
