"""The data-plane measures: UDP forwarding rate, TCP bulk, TCP request/response.

Each takes a built Topology, runs for a fixed window and returns plain numbers.
Every process started here is bounded by `timeout` and ended by its PID.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import generator
from bench.stats import rate
from bench.topology import GW_CPU, MAC, POD_CPU, SINK_PORT, Topology
from bench.workloads import Workload
from lab.net import LabError, in_ns
from natgw.netns import iproute

ROOT = Path(__file__).resolve().parents[1]  # the checkout: bench/ and lab/

IPERF_PORT = 5201
RR_PORT = 7001


class Counters:
    """Interface counters read over netlink sockets kept open in each netns."""

    def __init__(self) -> None:
        self._ipr: dict[str, object] = {}
        self._idx: dict[tuple[str, str], int] = {}

    def read(self, ns: str, dev: str) -> dict[str, int]:
        if ns not in self._ipr:
            self._ipr[ns] = iproute(ns)
        ipr = self._ipr[ns]
        if (ns, dev) not in self._idx:
            self._idx[(ns, dev)] = ipr.link_lookup(ifname=dev)[0]
        link = ipr.get_links(self._idx[(ns, dev)])[0]
        return dict(link.get_attr("IFLA_STATS64"))

    def close(self) -> None:
        for ipr in self._ipr.values():
            ipr.close()
        self._ipr.clear()
        self._idx.clear()


@dataclass
class CpuSample:
    """/proc/stat per CPU (jiffies) and the monotonic time it was read."""

    t: float
    cpus: dict[int, list[int]]  # user nice system idle iowait irq softirq steal


def read_cpu() -> CpuSample:
    cpus = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                cpus[int(name[3:])] = [int(x) for x in vals[:8]]
    return CpuSample(time.monotonic(), cpus)


@dataclass
class CpuUse:
    """What one CPU did between two samples, in seconds."""

    wall: float
    busy: float       # wall - idle - iowait - steal; idle is measured exactly (nohz)
    processes: float  # user + nice + system: sampled by the tick
    softirq: float    # sampled by the tick: undercounted when the CPU is partly idle


def cpu_use(a: CpuSample, b: CpuSample, cpu: int) -> CpuUse:
    hz = os.sysconf("SC_CLK_TCK")
    d = [(y - x) / hz for x, y in zip(a.cpus[cpu], b.cpus[cpu], strict=True)]
    user, nice, system, idle, iowait, _irq, softirq, steal = d
    wall = b.t - a.t
    return CpuUse(wall, max(0.0, wall - idle - iowait - steal), user + nice + system, softirq)


def proc_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (all their threads) so far."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / hz


@dataclass
class FloodResult:
    pps: float          # received at pod2: the forwarding rate
    offered_pps: float  # sent by the generator on pod1's link
    seconds: float
    gw_cpu: float       # busy fraction of the gateway CPU during the window (anyone's work)
    pod_cpu: float      # busy fraction of the pods' CPU
    gw_work_s: float    # the gateways' CPU time: see udp_flood
    gw_other: float     # fraction of the gateway CPU used by other processes on the VM
    conntrack: int | None = None  # entries in gw1's conntrack table after the window

    @property
    def gw_ns_per_packet(self) -> float | None:
        """Gateway CPU time per forwarded packet: what forwarding costs, even when
        the generator, or another process on the VM, kept the rate down."""
        return self.gw_work_s * 1e9 / (self.pps * self.seconds) if self.pps else None

    @property
    def saturated(self) -> bool:
        """The gateway CPU was the bottleneck (busy with gateway work nearly all along)."""
        return self.gw_work_s / self.seconds >= 0.9

    def as_dict(self) -> dict:
        return {"pps": self.pps, "offered_pps": self.offered_pps, "seconds": self.seconds,
                "gw_cpu": self.gw_cpu, "gw_other": self.gw_other, "pod_cpu": self.pod_cpu,
                "gw_ns_per_packet": self.gw_ns_per_packet, "saturated": self.saturated,
                "conntrack": self.conntrack}


def udp_flood(topo: Topology, counters: Counters, work: Workload, window: float,
              warmup: float = 0.3) -> FloodResult:
    """udpgen floods from pod1 on CPU 0; count what reaches pod2 over `window` seconds.

    The warm-up lets the queues, the neighbour entries and (new flows) conntrack's
    table reach their steady state before the window opens.
    """
    pl = topo.plans[work.family]
    gen = generator.argv(topo.dev["e1"], MAC["p1"], MAC["e1"], pl.pod1_addr, pl.target,
                         40000, SINK_PORT, work.payload, warmup + window + 1, work.new_flow)
    proc = topo.rec.spawn(topo.pod1, ["timeout", "-k", "3", f"{warmup + window + 5:.1f}", *gen],
                          cpu=POD_CPU, marker=gen[0], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(warmup)
        if proc.poll() is not None:
            raise LabError(f"udpgen: {proc.stderr.read().strip()[:300]}")
        pids = topo.engine_pids()
        c0, w0 = read_cpu(), proc_cpu_seconds(pids)
        rx0 = counters.read(topo.pod2, topo.dev["e2"])["rx_packets"]
        t0 = time.monotonic()
        tx0 = counters.read(topo.pod1, topo.dev["e1"])["tx_packets"]
        time.sleep(window)
        rx1 = counters.read(topo.pod2, topo.dev["e2"])["rx_packets"]
        t1 = time.monotonic()
        tx1 = counters.read(topo.pod1, topo.dev["e1"])["tx_packets"]
        c1, w1 = read_cpu(), proc_cpu_seconds(pids)
    finally:
        topo.rec.end(proc.pid)
    # Gateway work: the gateway CPU's busy time (exact) less what other processes
    # ran there (tick-sampled), wireguard-go being the gateways' own.
    gw, pod = cpu_use(c0, c1, GW_CPU), cpu_use(c0, c1, POD_CPU)
    engines = w1 - w0
    other = max(0.0, gw.processes - engines)
    work = max(0.0, gw.busy - other)
    return FloodResult(rate(rx0, rx1, t0, t1), rate(tx0, tx1, t0, t1), t1 - t0,
                       gw.busy / gw.wall, pod.busy / pod.wall, work * (t1 - t0) / gw.wall,
                       other / gw.wall, conntrack_count(topo.gw1))


def conntrack_count(ns: str) -> int | None:
    """Entries in a namespace's conntrack table (None: conntrack not loaded there)."""
    r = subprocess.run(in_ns(ns, ["cat", "/proc/sys/net/netfilter/nf_conntrack_count"]),
                       capture_output=True, text=True, timeout=10)
    return int(r.stdout) if r.returncode == 0 and r.stdout.strip().isdigit() else None


def tcp_bulk(topo: Topology, window: float) -> float:
    """iperf3 TCP from pod1 to pod2 (both on CPU 0): received Gbit/s."""
    server = topo.rec.spawn(
        topo.pod2, ["timeout", "-k", "3", f"{window + 15:.0f}", "iperf3", "-s", "-1",
                    "-B", topo.plan.pod2_addr, "-p", str(IPERF_PORT)],
        cpu=POD_CPU, marker="iperf3", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = None
        for _ in range(30):  # until the server listens
            time.sleep(0.1)
            r = subprocess.run(
                in_ns(topo.pod1, ["timeout", "-k", "3", f"{window + 10:.0f}", "iperf3", "-c",
                                  topo.plan.target, "-p", str(IPERF_PORT), "-t",
                                  f"{window:.0f}", "-O", "1", "-J"], cpu=POD_CPU),
                capture_output=True, text=True, timeout=window + 20)
            if r.returncode == 0:
                out = json.loads(r.stdout)
                break
            if "unable to connect" not in r.stdout + r.stderr:
                raise LabError(f"iperf3 {topo.key}: {(r.stdout + r.stderr)[-300:]}")
        if out is None:
            raise LabError(f"iperf3 {topo.key}: server never listened")
        return out["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        topo.rec.end(server.pid)


def endpoint_argv(*args: str) -> list[str]:
    """bench.endpoints in a pod: the checkout's root on its path, whatever the cwd."""
    return ["env", f"PYTHONPATH={ROOT}", sys.executable, "-m", "bench.endpoints", *args]


def tcp_rr(topo: Topology, window: float, size: int = 64) -> dict:
    """Round trips over one TCP connection for `window` seconds: p50/p99 in microseconds."""
    server = topo.rec.spawn(
        topo.pod2, endpoint_argv("rr-server", "--bind", topo.plan.pod2_addr, "--port",
                                 str(RR_PORT), "--seconds", f"{window + 10:.1f}"),
        cpu=POD_CPU, marker="bench.endpoints", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        server.stdout.readline()  # {"listening": true}
        r = subprocess.run(
            in_ns(topo.pod1, endpoint_argv("rr-client", "--dst", topo.plan.target, "--port",
                                           str(RR_PORT), "--seconds", f"{window:.1f}",
                                           "--size", str(size)), cpu=POD_CPU),
            capture_output=True, text=True, timeout=window + 20)
        out = json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else {}
        if "error" in out or not out:
            raise LabError(f"rr {topo.key}: {out or r.stderr.strip()[-300:]}")
        return out
    finally:
        topo.rec.end(server.pid)
