"""Failover of an active/active natgw group, measured (`make failover`).

    PYTHONPATH=. python -m bench.failover [--reps 3] [--ways link,kill,netns]
        [--markdown BENCHMARKS.md] [--json bench-results/failover.json]

A benchmark, not a test: it judges targets and prints PASS/MISS, and writes its
figures between the failover markers of BENCHMARKS.md (replaced on rerun).

Each trial builds the harness's two clusters with two natgw replicas each
(lab.harness, --replicas 2, persistentKeepalive 1 s, foreground `natgw up`),
then from cluster 1's pod to cluster 2's pod runs

- a paced TCP bulk transfer (the kernel's pacing caps its catching up after the
  stall at 2 x its rate), hashed at both ends, on a connection that was
  seen to cross replica 2a (a new connection is tried until one does: the
  gateways hash a local socket's flow by its random flow hash, not its ports);
- numbered UDP streams (lab.net.udp_stream, FLOWS flows of distinct ports), each
  flow's path known beforehand from `ip route get` in the pod and the gateway,

kills replica 2a one way, and goes on until the transfer has ended. Ways:
link (every link of 2a down: its pod link and underlay veths, as a host losing
its network), kill (its natgw and its wireguard-go engines SIGKILLed by PID),
netns (its namespace deleted, its processes killed). Cluster 2's pod sends
through 2b throughout: a cluster's own path to its gateways is its network's
(a router with BFD, or BGP), not natgw's; what is measured is natgw's side,
1a's and 1b's multipath routes to cluster 2 dropping 2a.

Reported per trial: the transfer's hashes; each UDP flow through 2a, its loss
window (from the kill to the send time of the first datagram that arrived after
the run of losses that began at the kill); the flows through 2b, their losses
(none expected); every other run of losses, when it began; the time from
the kill to the route change in 1a and 1b (the route polled every 50 ms).
Target: window <= 2 x keepalive + 1 s.

And the contrast, conntrack NAT (the harness's --conntrack, iptables NETMAP):
the same asymmetric paths as tests/test_e2e_replicas.py (requests 1a -> 2a,
replies 2b -> 1b), natgw and conntrack side by side.

Everything runs in namespaces of a fresh run prefix per trial, removed in
`finally` (lab.harness.destroy).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.stats import Target, table
from lab import harness
from lab.conntrack import count_leaks, invalid, leaked
from lab.harness import Run, Topology, set_pod_route, use_paths
from lab.net import LabError, StreamLog, ping, sh, udp_stream
from natgw.netns import netns_socket

ROOT = Path(__file__).resolve().parents[1]
WAYS = ("link", "kill", "netns")
A, B = 1, 2  # replicas a and b; 2a is killed, 2b survives
KEEPALIVE = 1
FLOWS = 8
UDP_INTERVAL = 0.005  # s between datagrams of one flow (200/s)
UDP_PORT, UDP_SPORT = 7300, 41000
TCP_RATE = 2 << 20  # bytes per second of the paced transfer
PACING = 2  # x TCP_RATE: the kernel's pacing cap on the transfer (catching up after a stall)
SO_MAX_PACING_RATE = 47  # <asm-generic/socket.h>
KILL_AT = 3.0  # s after the traffic starts
AFTER = 10.0  # s of traffic after the kill
POLL = 0.05
IN_FLIGHT = 0.1  # s: a datagram sent this long before the kill may be lost by it
ENGINE_PIDS = Path("/run/natgw/wg")  # natgw.wireguard.userspace.RUN_DIR


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- paths ----------------------------------------------------------------------------------


def _dev_in(text: str) -> str:
    m = re.search(r"\bdev (\S+)", text)
    if not m:
        raise LabError(f"no device in route: {text.strip()}")
    return m.group(1)


def udp_path(run: Run, sport: int, dport: int) -> tuple[int, int]:
    """(replica of cluster 1, replica of cluster 2) a UDP flow from pod 1 to pod 2 takes."""
    topo = run.topology
    src, dst = topo.pod_addr(1), topo.addr_of(1, 2)
    flow = ["ipproto", "udp", "sport", str(sport), "dport", str(dport)]
    first = _dev_in(sh(run.pod(1), "ip", "route", "get", dst, "from", src, *flow))
    r = next(r for r in topo.replica_ids if run.pod_end(1, r) == first)
    second = _dev_in(sh(run.gw(1, r), "ip", "route", "get", dst, "from", src,
                        "iif", run.pod_link(1, r), *flow))
    s = next(s for s in topo.replica_ids if run.tunnel_dev(1, 2, r, s) == second)
    return r, s


def tunnel_tx(run: Run) -> dict[tuple[int, int], int]:
    """Bytes sent so far by each of cluster 1's tunnels to cluster 2, (r, s) -> bytes."""
    out = {}
    for r in run.topology.replica_ids:
        for s in run.topology.replica_ids:
            dev = run.tunnel_dev(1, 2, r, s)
            with contextlib.suppress(LabError):
                link = json.loads(sh(run.gw(1, r), "ip", "-j", "-s", "link", "show", dev))
                out[(r, s)] = link[0]["stats64"]["tx"]["bytes"]
    return out


class RouteWatch:
    """Polls 1a's and 1b's route to cluster 2: when did replica 2a leave it."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.left: dict[int, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def has_2a(self, r: int) -> bool:
        run = self.run
        out = sh(run.gw(1, r), "ip", "route", "show", run.topology.view(1, 2))
        dev = run.tunnel_dev(1, 2, r, A)
        return any(dev in line.split() and "dead" not in line.split()
                   for line in out.splitlines())

    def _poll(self) -> None:
        while not self.stop.is_set():
            for r in self.run.topology.replica_ids:
                if r not in self.left:
                    with contextlib.suppress(LabError):
                        if not self.has_2a(r):
                            self.left[r] = time.monotonic()
            time.sleep(POLL)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


# --- the TCP transfer -------------------------------------------------------------------------


class Bulk:
    """A paced TCP transfer from pod 1 to pod 2: random bytes hashed at both ends."""

    def __init__(self, run: Run, size: int, rate: float) -> None:
        topo = run.topology
        self.size, self.rate = size, rate
        self.sent = hashlib.sha256()
        self.received = self.echoed = ""
        self.error = ""
        self.recv_times: list[float] = []  # when the server read each chunk
        self.aborted = threading.Event()
        self.srv = netns_socket(run.pod(2), socket.AF_INET, socket.SOCK_STREAM)
        self.srv.bind((topo.pod_addr(2), 0))
        self.srv.listen(1)
        self.srv.settimeout(30)
        self.cli = netns_socket(run.pod(1), socket.AF_INET, socket.SOCK_STREAM)
        self.cli.settimeout(60)
        # Paced by the kernel too, retransmissions included: unpaced, the backlog of
        # its stall leaves in one burst when the transfer resumes, which overruns the
        # 2-CPU VM's userspace WireGuard and drops other flows' datagrams (measured:
        # single datagrams, 3.1-3.4 s after the kill, on every flow of a gateway).
        self.cli.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, int(PACING * rate))
        self.cli.connect((topo.addr_of(1, 2), self.srv.getsockname()[1]))
        self.threads = [threading.Thread(target=self._serve, daemon=True),
                        threading.Thread(target=self._send, daemon=True)]
        for t in self.threads:
            t.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.srv.accept()
            with conn:
                conn.settimeout(60)
                h = hashlib.sha256()
                while chunk := conn.recv(1 << 16):
                    h.update(chunk)
                    self.recv_times.append(time.monotonic())
                self.received = h.hexdigest()
                conn.sendall(self.received.encode())
        except OSError as e:
            self.error = self.error or f"server: {e}"

    def _send(self) -> None:
        try:
            start, done, chunk = time.monotonic(), 0, 1 << 16
            while done < self.size and not self.aborted.is_set():
                due = start + done / self.rate
                if (d := due - time.monotonic()) > 0:
                    time.sleep(d)
                data = os.urandom(min(chunk, self.size - done))
                self.cli.sendall(data)
                self.sent.update(data)
                done += len(data)
            self.cli.shutdown(socket.SHUT_WR)
            got = b""
            while part := self.cli.recv(100):
                got += part
            self.echoed = got.decode()
        except OSError as e:
            self.error = self.error or f"client: {e}"

    def abort(self) -> None:
        self.aborted.set()
        self.join(5)

    def join(self, timeout: float) -> bool:
        """Wait for the transfer to end; True if it did. The sockets are closed either way
        (a transfer that did not end fails with an error)."""
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        done = not any(t.is_alive() for t in self.threads)
        for sock in (self.cli, self.srv):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        return done

    def stall(self, since: float) -> float | None:
        """The longest the server waited for data from `since` on (the kill)."""
        times = [since] + [t for t in self.recv_times if t > since]
        return max(b - a for a, b in itertools.pairwise(times)) if len(times) > 1 else None

    @property
    def intact(self) -> bool:
        return not self.error and self.received == self.echoed == self.sent.hexdigest()


def bulk_through_2a(run: Run, size: int, tries: int = 12) -> tuple[Bulk, tuple[int, int]]:
    """A paced transfer whose data cross replica 2a (seen in the tunnels' counters)."""
    for _ in range(tries):
        before = tunnel_tx(run)
        bulk = Bulk(run, size, TCP_RATE)
        time.sleep(0.6)
        after = tunnel_tx(run)
        grew = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        path = max(grew, key=grew.get)
        if grew[path] >= 0.3 * TCP_RATE * 0.6 and path[1] == A:
            return bulk, path
        bulk.abort()
    raise LabError(f"no TCP connection crossed replica 2a in {tries} tries")


# --- killing 2a --------------------------------------------------------------------------------


def _natgw_pid(run: Run, i: int, r: int) -> int | None:
    return next((pid for pid, marker in run.processes if marker == run.config(i, r)), None)


def _engine_pids(run: Run, i: int, r: int) -> list[int]:
    out = []
    for j, s in run.replicas():
        if j != i:
            with contextlib.suppress(OSError, ValueError):
                out.append(int((ENGINE_PIDS / f"{run.tunnel_dev(i, j, r, s)}.pid").read_text()))
    return out


def _sigkill(run: Run, pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def kill(run: Run, way: str, i: int = 2, r: int = A) -> float:
    """Kill replica (i, r) one way; returns the time of the kill."""
    gw = run.gw(i, r)
    if way == "link":
        devs = [run.pod_link(i, r)] + [run.underlay_dev(i, j, r, s)
                                       for j, s in run.replicas() if j != i]
        script = "".join(f"link set {d} down\n" for d in devs)
        t = time.monotonic()
        subprocess.run(["ip", "-n", gw, "-batch", "-"], input=script, text=True, check=True)
        return t
    fg, engines = _natgw_pid(run, i, r), _engine_pids(run, i, r)
    if fg is None or not engines:
        raise LabError(f"{gw}: no natgw or engine to kill")
    t = time.monotonic()
    if way == "netns":
        subprocess.run(["ip", "netns", "del", gw], check=True)
    _sigkill(run, [fg, *engines])  # natgw first: it would restart the engines
    with contextlib.suppress(ChildProcessError):
        os.waitpid(fg, 0)
    run.forget(fg)
    return t


# --- one trial ---------------------------------------------------------------------------------


def loss_bursts(stream: StreamLog, t_kill: float) -> tuple[list[dict], int]:
    """(the runs of consecutive datagrams lost from the kill on, datagrams lost before).

    Each run: when its first datagram was sent and when the first datagram to arrive
    after it was (None: none did), in seconds from the kill, and how many it lost. A
    datagram sent less than IN_FLIGHT before the kill may still have been on its way
    through the replica: its loss is the kill's.
    """
    lost = stream.lost()
    before = sum(1 for k in lost if stream.sent_at[k] < t_kill - IN_FLIGHT)
    after = [k for k in lost if stream.sent_at[k] >= t_kill - IN_FLIGHT]
    runs: list[list[int]] = []
    for k in after:
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    out = []
    for run in runs:
        nxt = run[-1] + 1
        end = stream.sent_at[nxt] - t_kill if nxt < len(stream.sent_at) else None
        out.append({"start_s": stream.sent_at[run[0]] - t_kill, "end_s": end,
                    "lost": len(run)})
    return out, before


def kills_runs(bursts: list[dict]) -> list[dict]:
    """The runs of losses that began at the kill (within IN_FLIGHT of it)."""
    return [b for b in bursts if b["start_s"] <= IN_FLIGHT]


def loss_window(bursts: list[dict]) -> float | None:
    """Seconds from the kill to the first datagram that arrived after the kill's own
    losses; 0.0: none lost; None: never recovered."""
    runs = kills_runs(bursts)
    return runs[-1]["end_s"] if runs else 0.0


def _replace_route(run: Run, i: int, r: int, s: int) -> None:
    """Conntrack gateway (i, r) routes the other cluster through its tunnel to replica s."""
    j = 3 - i
    sh(run.gw(i, r), "ip", "route", "replace", run.topology.view(i, j),
       "dev", run.tunnel_dev(i, j, r, s))


def active_passive(run: Run) -> None:
    """Conntrack gateways: one active pair, 1a <-> 2a, both ways (any other path would be
    asymmetric somewhere, and conntrack cannot do that)."""
    set_pod_route(run, 1, {A: 1})
    set_pod_route(run, 2, {A: 1})
    _replace_route(run, 1, A, A)
    _replace_route(run, 2, A, A)
    _replace_route(run, 2, B, A)


def fail_over(run: Run) -> None:
    """What a perfect active/passive health check does at once: 2b replaces 2a."""
    _replace_route(run, 1, A, B)
    set_pod_route(run, 2, {B: 1})


def health_lines(run: Run, r: int) -> list[str]:
    """What cluster 1's replica r logged about its group's route (natgw gateways)."""
    log_path = Path(run.config(1, r)).with_suffix(".log")
    if not log_path.exists():
        return []
    return [line.strip() for line in log_path.read_text(errors="replace").splitlines()
            if "group " in line]


def trial(way: str, rep: int, stale_after: int | None, conntrack: str = "") -> dict:
    """One kill under traffic. conntrack: "" (natgw), or "loose" / "strict" (conntrack
    gateways, active/passive, switched over by the lab at the kill; strict: 2b's
    nf_conntrack_tcp_loose 0, so that it does not pick up a flow it never saw begin)."""
    topo = Topology(clusters=2, replicas=2, keepalive=KEEPALIVE, stale_after=stale_after,
                    conntrack=bool(conntrack))
    t0 = time.monotonic()
    run = harness.build(topo)
    out: dict = {"way": way, "rep": rep, "prefix": run.prefix, "stale_after": stale_after,
                 "gateways": f"conntrack-{conntrack}" if conntrack else "natgw"}
    watch = None
    try:
        out["build_s"] = time.monotonic() - t0
        if conntrack:
            active_passive(run)
            sh(run.gw(2, B), "sysctl", "-qw",
               f"net.netfilter.nf_conntrack_tcp_loose={int(conntrack == 'loose')}")
        else:
            use_paths(run, {2: B})  # cluster 2's pod: through the survivor (module doc)
        for i, j in topo.pairs:
            if ping(run.pod(i), topo.addr_of(i, j), 5) == 0:
                raise LabError(f"{run.prefix}: pod {i} cannot reach pod {j} before the trial")
        flows = [(UDP_SPORT + k, UDP_PORT + k) for k in range(FLOWS)]
        paths = [udp_path(run, sp, dp) for sp, dp in flows]
        size = int(TCP_RATE * (KILL_AT + AFTER))
        bulk, tcp_path = bulk_through_2a(run, size)
        logs = [StreamLog() for _ in flows]
        with contextlib.ExitStack() as stack:
            for (sp, dp), sl in zip(flows, logs, strict=True):
                stack.enter_context(udp_stream(run.pod(1), run.pod(2), topo.pod_addr(2),
                                               topo.addr_of(1, 2), port=dp, sport=sp,
                                               interval=UDP_INTERVAL, log=sl))
            time.sleep(KILL_AT)
            watch = RouteWatch(run)
            t_kill = kill(run, way)
            if conntrack:
                fail_over(run)
            finished = bulk.join(AFTER + 30)
            left = max(0.0, t_kill + AFTER - time.monotonic())
            time.sleep(left)
        watch.close()
        out["tcp"] = {"path": f"1{'ab'[tcp_path[0] - 1]}-2{'ab'[tcp_path[1] - 1]}",
                      "bytes": size, "finished": finished, "intact": bulk.intact,
                      "stall_s": bulk.stall(t_kill), "error": bulk.error}
        out["route_change_s"] = {f"1{'ab'[r - 1]}": watch.left[r] - t_kill
                                 for r in watch.left}
        out["flows"] = []
        for (sp, _), path, sl in zip(flows, paths, logs, strict=True):
            bursts, before = loss_bursts(sl, t_kill)
            window = loss_window(bursts)
            out["flows"].append({"sport": sp, "via": f"2{'ab'[path[1] - 1]}",
                                 "sent": len(sl.sent_at), "lost": len(sl.lost()),
                                 "lost_before_kill": before, "window_s": window,
                                 "bursts": bursts})
        out["health_log"] = {f"1{'ab'[r - 1]}": health_lines(run, r) for r in topo.replica_ids}
        out["loadavg"] = os.getloadavg()
        return out
    finally:
        if watch is not None:
            watch.close()
        harness.destroy(run)


# --- the contrast: asymmetric paths, natgw and conntrack ---------------------------------------


def _tcp_connects(run: Run, timeout: float = 2.0) -> bool:
    topo = run.topology
    with netns_socket(run.pod(2), socket.AF_INET, socket.SOCK_STREAM) as srv, \
            netns_socket(run.pod(1), socket.AF_INET, socket.SOCK_STREAM) as cli:
        srv.bind((topo.pod_addr(2), 0))
        srv.listen(4)
        cli.settimeout(timeout)
        try:
            cli.connect((topo.addr_of(1, 2), srv.getsockname()[1]))
        except OSError:
            return False
        return True


def _udp_answers(run: Run, timeout: float = 1.0) -> bool:
    topo = run.topology
    with netns_socket(run.pod(2), socket.AF_INET, socket.SOCK_DGRAM) as srv, \
            netns_socket(run.pod(1), socket.AF_INET, socket.SOCK_DGRAM) as cli:
        srv.bind((topo.pod_addr(2), 0))
        srv.settimeout(timeout)
        cli.settimeout(timeout)
        cli.sendto(b"request", (topo.addr_of(1, 2), srv.getsockname()[1]))
        try:
            data, peer = srv.recvfrom(100)
            srv.sendto(data[::-1], peer)
            return cli.recv(100) == b"tseuqer"
        except TimeoutError:
            return False


def asymmetric(conntrack: bool, attempts: int) -> dict:
    """Requests 1a -> 2a, replies 2b -> 1b: what passes."""
    run = harness.build(Topology(clusters=2, replicas=2, conntrack=conntrack))
    try:
        gw = run.gw(2, B)
        if conntrack:
            count_leaks(gw, [run.tunnel_dev(2, 1, B, s) for s in (A, B)],
                        run.topology.pod_cidr(2))
        use_paths(run, {1: A, 2: B}, cut={(1, A, 2, B)})
        if not conntrack:
            harness_wait = time.monotonic() + 30  # first handshakes after the tunnels changed
            while ping(run.pod(1), run.topology.addr_of(1, 2), 1, 0.5) == 0:
                if time.monotonic() > harness_wait:
                    break
        out = {"tcp_connect": sum(_tcp_connects(run) for _ in range(attempts)),
               "ping": ping(run.pod(1), run.topology.addr_of(1, 2), attempts, 1.0),
               "udp": sum(_udp_answers(run) for _ in range(attempts)),
               "attempts": attempts}
        if conntrack:
            out |= {"invalid_at_2b": invalid(gw), "leaked_at_2b": leaked(gw)}
        return out
    finally:
        harness.destroy(run)


# --- report ------------------------------------------------------------------------------------


def _never(windows: list[float | None]) -> str:
    n = sum(1 for x in windows if x is None)
    return f"; {n} of {len(windows)} never recovered" if n else ""


def _med(values: list[float]) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "-"
    return f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f}, n={len(v)})"


def _stale_label(stale_after: int | None) -> str:
    if stale_after is None:
        return f"staleAfter {2 * KEEPALIVE + 0.5:g} s (default)"
    return f"staleAfter {stale_after} s"


def _label(t: dict) -> str:
    if t["gateways"] == "natgw":
        return f"natgw, {_stale_label(t.get('stale_after'))}"
    return f"{t['gateways']} (active/passive, switched by the lab at the kill)"


def _rows(ts: list[dict]) -> dict:
    return {
        "trials": len(ts),
        "window": [f["window_s"] for t in ts for f in t["flows"] if f["via"] == "2a"],
        "route_change": [max(t["route_change_s"].values()) if t["route_change_s"] and (
            t["gateways"] != "natgw" or len(t["route_change_s"]) == 2) else None for t in ts],
        "tcp_intact": sum(t["tcp"]["intact"] for t in ts),
        "tcp_stall": [t["tcp"].get("stall_s") for t in ts],
        "flows_2b": sum(1 for t in ts for f in t["flows"] if f["via"] == "2b"),
        "lost_2b": sum(f["lost"] for t in ts for f in t["flows"] if f["via"] == "2b"),
        "lost_before": sum(f["lost_before_kill"] for t in ts for f in t["flows"]),
        # Losses after a flow's window (via 2a) or at all (via 2b): when they began.
        "later": sorted(b["start_s"] for t in ts for f in t["flows"]
                        for b in _later(f)),
        "later_lost": sum(b["lost"] for t in ts for f in t["flows"] for b in _later(f)),
    }


def _later(flow: dict) -> list[dict]:
    """A flow's loss runs other than its window's (older results: none recorded)."""
    bursts = flow.get("bursts", [])
    return bursts if flow["via"] == "2b" else bursts[len(kills_runs(bursts)):]


def summarize(trials: list[dict]) -> dict:
    """Rows by (gateways and setting, way); the targets of natgw's rows."""
    limit = 2 * KEEPALIVE + 1
    s: dict = {"rows": [], "targets": []}
    done = [t for t in trials if "flows" in t]
    keys = list(dict.fromkeys((_label(t), t["way"]) for t in done))
    for label, way in keys:
        ts = [t for t in done if (_label(t), t["way"]) == (label, way)]
        w = _rows(ts) | {"label": label, "way": way}
        s["rows"].append(w)
        if not label.startswith("natgw"):
            continue
        got = [x for x in w["window"] if x is not None]
        # A flow that never recovered has no end to its window: the target is missed.
        worst = (max(got) if len(got) == len(w["window"]) else math.inf) \
            if w["window"] else None
        s["targets"].append(Target(f"{label}, {way}: UDP loss window (worst of "
                                   f"{len(w['window'])} flows via 2a)", worst, "<=", limit,
                                   "s").as_dict())
        s["targets"].append(Target(f"{label}, {way}: TCP transfers intact",
                                   w["tcp_intact"] / w["trials"], "==", 1.0).as_dict())
        s["targets"].append(Target(f"{label}, {way}: datagrams lost on flows via 2b",
                                   w["lost_2b"], "<=", 0).as_dict())
    return s


def render(res: dict) -> str:
    s, m = res["summary"], res["machine"]
    lines = [
        f"{res['reps']} trial(s) per way and setting, each on a fresh harness run (2 clusters "
        f"x 2 replicas, persistentKeepalive {KEEPALIVE} s); {FLOWS} numbered UDP flows at "
        f"{1 / UDP_INTERVAL:.0f} datagrams/s each and a TCP transfer paced at "
        f"{TCP_RATE >> 20} MiB/s crossing 2a; 2a killed {KILL_AT:g} s in. "
        f"Commit {m['commit']}, {m['date']}; load average {m['load_start']:.1f} before, "
        f"{m['load_end']:.1f} after, on {m['cores']} CPUs (shared with other jobs).",
        "",
        table(["gateways, way", "loss window, flows via 2a, s: median (min-max, n)",
               "kill -> route change, s (slower of 1a/1b)", "TCP intact",
               "TCP stall after the kill, s",
               "flows via 2b: lost", "other losses: datagrams (began s after the kill)",
               "lost before the kill"],
              [[f"{w['label']}, {w['way']}", _med(w["window"]) + _never(w["window"]),
                _med(w["route_change"]),
                f"{w['tcp_intact']}/{w['trials']}", _med(w["tcp_stall"]),
                f"{w['lost_2b']} ({w['flows_2b']} flows)" if w["flows_2b"] else "-",
                f"{w['later_lost']} ({_med(w['later'])})" if w["later"] else "0",
                str(w["lost_before"])] for w in s["rows"]], markdown=True),
        "",
        table(["target", "value", "limit", "verdict"],
              [[t["name"], "-" if t["value"] is None else
                "never (a flow did not recover)" if math.isinf(t["value"]) else
                f"{t['value']:.3g}",
                f"{t['op']} {t['limit']:g} {t['unit']}".strip(),
                Target(t["name"], t["value"], t["op"], t["limit"], t["unit"]).verdict]
               for t in s["targets"]], markdown=True),
    ]
    if res.get("asymmetric"):
        a = res["asymmetric"]
        rows = []
        for kind in ("natgw", "conntrack"):
            x = a.get(kind)
            if x:
                extra = (f"{x['invalid_at_2b']} invalid at 2b, {x['leaked_at_2b']} packets "
                         "left 2b untranslated" if kind == "conntrack" else "")
                rows.append([kind, f"{x['tcp_connect']}/{x['attempts']}",
                             f"{x['ping']}/{x['attempts']}", f"{x['udp']}/{x['attempts']}",
                             extra])
        lines += ["", "Asymmetric paths (requests 1a -> 2a, replies 2b -> 1b), what passes:", "",
                  table(["gateways", "TCP connects", "ping replies", "UDP request/response",
                         "conntrack at the reply gateway"], rows, markdown=True)]
    errors = [f"{t.get('gateways')} {t['way']} #{t['rep']}: {t['error']}"
              for t in res["trials"] if "error" in t]
    if errors:
        lines += ["", "Failed trials: " + "; ".join(errors)]
    return "\n".join(lines)


def write_markdown(path: Path, name: str, title: str, body: str, command: str) -> None:
    """Replace the block between <!-- NAME:begin --> and <!-- NAME:end --> (or append
    it under a `## TITLE` heading)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n<!-- generated by `{command}`; edit outside the markers -->\n\n{body}\n{end}"
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + f"\n\n## {title}\n\n" + block + "\n"
    path.write_text(text)


def machine() -> dict:
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    return {"commit": commit or "?", "cores": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_start": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.failover",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="trials per way (default 3)")
    ap.add_argument("--ways", default=",".join(WAYS), help="comma-separated subset of "
                    + ",".join(WAYS))
    ap.add_argument("--stale-after", default="default,2", help="comma-separated settings "
                    "of the peers' staleAfter, in seconds or `default` (natgw's: 2 x "
                    "keepalive + 0.5 s); default: default,2")
    ap.add_argument("--no-contrast", action="store_true",
                    help="skip the conntrack contrast (asymmetric paths, failover)")
    ap.add_argument("--attempts", type=int, default=5, help="contrast: attempts per kind")
    ap.add_argument("--json", type=Path, default=ROOT / "bench-results" / "failover.json")
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="measure nothing: the tables of a saved run (and --markdown)")
    a = ap.parse_args(argv)
    if a.render:
        res = json.loads(a.render.read_text())
        res["summary"] = summarize(res["trials"])
        print(render(res))
        if a.markdown:
            write_markdown(a.markdown, "failover", "Failover of active/active replicas",
                           render(res), "make failover")
        return 0
    ways = [w for w in a.ways.split(",") if w]
    if any(w not in WAYS for w in ways) or a.reps < 1:
        ap.error(f"--ways: a subset of {','.join(WAYS)}; --reps >= 1")
    try:
        stales = [None if x == "default" else int(x) for x in a.stale_after.split(",") if x]
    except ValueError:
        ap.error("--stale-after: seconds or `default`, comma-separated")
    res: dict = {"machine": machine(), "reps": a.reps, "trials": [], "asymmetric": {}}
    try:
        for rep in range(1, a.reps + 1):
            for stale in stales:  # interleaved: the machine's load hits every case alike
                for way in ways:
                    log(f"failover: {way} #{rep}, {_stale_label(stale)}")
                    try:
                        t = trial(way, rep, stale)
                    except LabError as e:
                        t = {"way": way, "rep": rep, "gateways": "natgw",
                             "stale_after": stale, "error": str(e)}
                    log(f"  {json.dumps(t)[:300]}")
                    res["trials"].append(t)
        if not a.no_contrast:
            for kind in ("loose", "strict"):
                log(f"failover: conntrack gateways, tcp_loose {kind}")
                try:
                    t = trial("link", 1, None, kind)
                except LabError as e:
                    t = {"way": "link", "rep": 1, "gateways": f"conntrack-{kind}",
                         "error": str(e)}
                log(f"  {json.dumps(t)[:300]}")
                res["trials"].append(t)
            for kind in ("natgw", "conntrack"):
                log(f"failover: asymmetric paths, {kind}")
                res["asymmetric"][kind] = asymmetric(kind == "conntrack", a.attempts)
    except KeyboardInterrupt:
        print("natgw failover: interrupted (everything it made is removed)", file=sys.stderr)
        return 1
    except LabError as e:
        print(f"natgw failover: {e}", file=sys.stderr)
        return 1
    res["machine"]["load_end"] = os.getloadavg()[0]
    res["summary"] = summarize(res["trials"])
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(res, indent=1) + "\n")
    body = render(res)
    print(body)
    if a.markdown:
        write_markdown(a.markdown, "failover", "Failover of active/active replicas", body,
                       "make failover")
    return 0


if __name__ == "__main__":
    sys.exit(main())
