"""python -m lab: build, list and remove netns harness runs, or run the demo (see lab.harness)."""

from __future__ import annotations

import argparse
import sys

from lab import harness
from lab.harness import Topology, build, destroy, load_runs
from lab.net import LabError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab",
                                     description=harness.__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build a run; prints its prefix")
    up.add_argument("clusters", nargs="?", type=int, default=2)
    up.add_argument("--ipv6", action="store_true", help="dual stack pods")
    up.add_argument("--plain", type=int, action="append", default=[], metavar="I",
                    help="cluster I's gateway is plain WireGuard (no natgw)")
    up.add_argument("--interface", action="store_true",
                    help="interface: peers on the bare underlay, no tunnel")
    up.add_argument("--routed", action="store_true",
                    help="distinct pod CIDRs, peers without as (plain routing)")
    up.add_argument("--hub", type=int, default=0, metavar="N",
                    help="one natgw hub and N natgw clients instead (see lab.hub)")
    up.add_argument("--pipes", action="store_true",
                    help="pipes web<j> between the gateways (port 8000 + j), pods serve 8080")
    up.add_argument("--replicas", type=int, default=1, metavar="R",
                    help="R natgw gateways per cluster (a group), pods over ECMP (R <= 4)")
    up.add_argument("--conntrack", action="store_true",
                    help="gateways are WireGuard + iptables NETMAP (conntrack NAT), no natgw")
    up.add_argument("--keepalive", type=int, metavar="S",
                    help="persistentKeepalive of every peer (default: 1 with --replicas)")
    down = sub.add_parser("down", help="remove one run, or all that no live process uses")
    down.add_argument("prefix", nargs="?")
    sub.add_parser("list", help="the runs that exist")
    sub.add_parser("demo", help="two clusters and an HTTP fetch across natgw")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            topo = Topology(clusters=args.clusters, ipv6=args.ipv6, plain=tuple(args.plain),
                            link="interface" if args.interface else "tunnel",
                            overlap=not args.routed, hub=args.hub, pipes=args.pipes,
                            replicas=args.replicas, conntrack=args.conntrack,
                            keepalive=args.keepalive)
            try:
                topo.check()
            except ValueError as e:
                parser.error(str(e))
            print(build(topo).prefix)
        elif args.command == "down":
            for run in load_runs(args.prefix):
                if args.prefix is None and run.in_use():
                    print(f"kept {run.prefix}: in use by process {run.owner}")
                    continue
                destroy(run)
                print(f"removed {run.prefix}")
        elif args.command == "list":
            for run in load_runs():
                print(run.prefix, run.label or "-", "in use" if run.in_use() else "-",
                      run.topology)
        else:
            harness.demo()
    except LabError as e:
        print(f"lab: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
