"""Scale-out: forwarding with 1, 2 and 4 natgw replicas per cluster, on this VM.

    PYTHONPATH=. python -m bench.scaleout [--replicas 1,2,4] [--rounds 3] [--window 2]
        [--markdown BENCHMARKS.md] [--json bench-results/scaleout.json]

The harness's two clusters with R replicas each (lab.harness; R x R tunnels per
direction, wireguard-go). Cluster 1's pod floods cluster 2's pod with the
benchmark's generator (bench.generator's udpgen, 64-byte payloads, a new flow per
packet), one generator per replica link, as an ECMP router in front of the
replicas would spread flows; cluster 1's replicas spread them again over cluster
2's replicas by natgw's multipath route. Cluster 2's pod drops the flood at its
ingress (nft netdev), as bench.topology's sink.

Placement, as bench.topology over WireGuard: the generators and cluster 1's
forwarding into the tunnels on CPU 0; every wireguard-go and the rest of the
gateways' work on CPU 1 (RPS on cluster 2's side, engines pinned). CPU time of
the gateways is bench.traffic's accounting: CPU 1's busy time less what other
processes ran there, wireguard-go's excepted.

This VM has 2 CPUs and every replica shares the same one, so the delivered rate
cannot grow with R here: what the figure can show is that adding replicas costs
no CPU per packet (no state, no synchronisation between them) and that natgw's
route spreads flows evenly over the remote replicas. On N hosts each replica
brings its own CPUs (docs/scale-out.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import generator
from bench.failover import machine, write_markdown
from bench.stats import rate, table
from bench.topology import GW_CPU, POD_CPU, SINK_PORT
from bench.traffic import Counters, cpu_use, proc_cpu_seconds, read_cpu
from bench.workloads import SMALL_PAYLOAD
from lab import harness
from lab.harness import Run, Topology
from lab.net import LabError, in_ns, sh

ROOT = Path(__file__).resolve().parents[1]
ENGINE_PIDS = Path("/run/natgw/wg")


def mac(netns: str, dev: str) -> str:
    return json.loads(sh(netns, "ip", "-j", "link", "show", dev))[0]["address"]


def _pin(pid: int, cpu: int) -> None:
    """Every thread of a process onto one CPU (wireguard-go's threads, too)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except OSError:
            pass


def engines(run: Run) -> list[int]:
    pids = []
    for i, r in run.replicas():
        for j, s in run.replicas():
            if j != i:
                p = ENGINE_PIDS / f"{run.tunnel_dev(i, j, r, s)}.pid"
                try:
                    pids.append(int(p.read_text()))
                except (OSError, ValueError):
                    pass
    return pids


def prepare(run: Run) -> list[int]:
    """Placement and the sink; returns the engines' PIDs."""
    pids = engines(run)
    for pid in pids:
        _pin(pid, GW_CPU)
    for pid, _ in run.processes:
        if Path(f"/proc/{pid}").exists():
            _pin(pid, GW_CPU)
    topo = run.topology
    for s in topo.replica_ids:
        sh(run.gw(2, s), "sh", "-c", f"echo {1 << GW_CPU:x} > "
           f"/sys/class/net/{run.pod_link(2, s)}/queues/rx-0/rps_cpus")
    devs = "".join(f"""  chain in{s} {{
    type filter hook ingress device "{run.pod_end(2, s)}" priority 0;
    udp dport {SINK_PORT} drop
  }}
""" for s in topo.replica_ids)
    subprocess.run(in_ns(run.pod(2), ["nft", "-f", "-"]), check=True, text=True,
                   input=f"table netdev sink {{\n{devs}}}\n")
    return pids


def flood(run: Run, pids: list[int], counters: Counters, window: float,
          warmup: float = 0.5) -> dict:
    """One udpgen per replica link of cluster 1 for warmup + window seconds."""
    topo = run.topology
    procs = []
    for r in topo.replica_ids:
        argv = generator.argv(run.pod_end(1, r), mac(run.gw(1, r), run.pod_link(1, r)),
                              mac(run.pod(1), run.pod_end(1, r)), topo.pod_addr(1),
                              topo.addr_of(1, 2), 40000, SINK_PORT, SMALL_PAYLOAD,
                              warmup + window + 1, True)
        procs.append(run.spawn(run.pod(1), ["timeout", "-k", "3",
                                            f"{warmup + window + 5:.1f}", *argv],
                               cpu=POD_CPU, marker=argv[0], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True))
    try:
        time.sleep(warmup)
        for p in procs:
            if p.poll() is not None:
                raise LabError(f"udpgen: {p.stderr.read().strip()[:300]}")
        ends = [(run.pod(2), run.pod_end(2, s)) for s in topo.replica_ids]
        c0, w0 = read_cpu(), proc_cpu_seconds(pids)
        rx0 = [counters.read(ns, d)["rx_packets"] for ns, d in ends]
        t0 = time.monotonic()
        time.sleep(window)
        rx1 = [counters.read(ns, d)["rx_packets"] for ns, d in ends]
        t1 = time.monotonic()
        c1, w1 = read_cpu(), proc_cpu_seconds(pids)
    finally:
        for p in procs:
            run.end(p.pid)
    gw = cpu_use(c0, c1, GW_CPU)
    other = max(0.0, gw.processes - (w1 - w0))
    work = max(0.0, gw.busy - other) * (t1 - t0) / gw.wall
    per = [rate(a, b, t0, t1) for a, b in zip(rx0, rx1, strict=True)]
    pps = sum(per)
    return {"pps": pps, "per_replica_pps": per, "gw_busy": gw.busy / gw.wall,
            "gw_other": other / gw.wall,
            "gw_ns_per_packet": work * 1e9 / (pps * (t1 - t0)) if pps else None}


def measure(replicas: int, rounds: int, window: float) -> dict:
    t0 = time.monotonic()
    run = harness.build(Topology(clusters=2, replicas=replicas))
    counters = Counters()
    try:
        out: dict = {"replicas": replicas, "build_s": time.monotonic() - t0, "rounds": []}
        pids = prepare(run)
        out["engines"] = len(pids)
        flood(run, pids, counters, 1.0)  # unmeasured: neighbours, first packets of 16 tunnels
        for k in range(rounds):
            out["rounds"].append(flood(run, pids, counters, window))
            print(f"  R={replicas} round {k + 1}: {out['rounds'][-1]['pps']:.0f} pps",
                  file=sys.stderr, flush=True)
        out["loadavg"] = os.getloadavg()
        return out
    finally:
        counters.close()
        harness.destroy(run)


def _median(xs: list[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return statistics.median(v) if v else None


def render(res: dict) -> str:
    m = res["machine"]
    rows = []
    for r in res["results"]:
        pps = _median([x["pps"] for x in r["rounds"]])
        ns = _median([x["gw_ns_per_packet"] for x in r["rounds"]])
        busy = _median([x["gw_busy"] for x in r["rounds"]])
        shares = [_median([x["per_replica_pps"][s] for x in r["rounds"]])
                  for s in range(r["replicas"])]
        total = sum(s for s in shares if s) or 1
        spread = "-" if not r["rounds"] else (
            f"{(max(x['pps'] for x in r['rounds']) - min(x['pps'] for x in r['rounds'])) / pps:.0%}"
            if pps else "-")
        rows.append([str(r["replicas"]), f"{r['replicas'] ** 2}", f"{pps / 1e3:.1f}k"
                     if pps else "-", spread, "-" if ns is None else f"{ns:.0f}",
                     "-" if busy is None else f"{busy:.0%}",
                     " / ".join(f"{(s or 0) / total:.0%}" for s in shares)])
    return "\n".join([
        f"{res['rounds']} rounds of {res['window']:g} s per replica count, 64-byte UDP "
        "payloads, a new flow per packet, one generator per replica link of cluster 1. "
        f"Commit {m['commit']}, {m['date']}; load average {m['load_start']:.1f} before, "
        f"{m['load_end']:.1f} after, on {m['cores']} CPUs (shared with other jobs). "
        "Every replica's gateway work shares CPU 1 here, so the delivered rate is "
        "that of one CPU whatever R is; the scale-out is the flat cost per packet.",
        "",
        table(["replicas per cluster", "tunnels per direction", "delivered pps (median)",
               "spread", "gateway CPU ns/pkt", "gateway CPU busy",
               "share per receiving replica"], rows, markdown=True),
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scaleout",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--replicas", default="1,2,4")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--json", type=Path, default=ROOT / "bench-results" / "scaleout.json")
    ap.add_argument("--markdown", type=Path)
    a = ap.parse_args(argv)
    try:
        counts = [int(x) for x in a.replicas.split(",") if x]
    except ValueError:
        ap.error("--replicas: comma-separated counts, e.g. 1,2,4")
    if (os.cpu_count() or 1) < 2:
        print("natgw scaleout: needs 2 CPUs", file=sys.stderr)
        return 1
    os.sched_setaffinity(0, {POD_CPU})
    res: dict = {"machine": machine(), "rounds": a.rounds, "window": a.window, "results": []}
    try:
        generator.binary()
        for r in counts:
            print(f"scaleout: {r} replicas per cluster", file=sys.stderr, flush=True)
            res["results"].append(measure(r, a.rounds, a.window))
    except (LabError, generator.GeneratorError) as e:
        print(f"natgw scaleout: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("natgw scaleout: interrupted (everything it made is removed)", file=sys.stderr)
        return 1
    res["machine"]["load_end"] = os.getloadavg()[0]
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(res, indent=1) + "\n")
    body = render(res)
    print(body)
    if a.markdown:
        write_markdown(a.markdown, "scaleout", "Scale-out: replicas per cluster", body,
                       "python -m bench.scaleout --markdown BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
