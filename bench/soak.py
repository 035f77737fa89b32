"""The soak: three natgw gateways under traffic and constant faults (`make soak`).

    python -m bench.soak [--minutes 10] [--markdown BENCHMARKS.md] [--json FILE]

A benchmark, not a test: it judges targets and prints PASS/MISS, and writes
its figures between the soak markers of BENCHMARKS.md (replaced on rerun).

Three clusters of the lab harness (full mesh of wireguard-go tunnels), each
gateway a foreground `natgw --netns <gw> up <file>` started and supervised
here by PID. Through every tunnel, both ways, for the whole run
(bench/soak_agent.py): numbered UDP, hash-checked TCP bulk, short TCP
connections, and ping. Meanwhile (bench/soak_faults.py):

- every 2-5 s one gateway's file is edited (an extra mapping added, changed,
  removed; an extra peer added, removed: nothing measured goes through them)
  and applied, in turn by a second `natgw up --detach` and by SIGHUP;
- every minute a tunnel's wireguard-go is SIGKILLed (the foreground restarts it);
- every 30 s, between the kills, a natgw tc filter or proto-78 route is
  deleted by hand (the foreground's drift repair puts it back).

Fault windows and loss attribution are defined in bench/soak_stats.py.
Everything runs in namespaces of its own run prefix and is removed in
`finally`; afterwards the soak checks that no process, namespace, pin dir,
socket or state file of its own is left.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path

import yaml

from bench import soak_stats as S
from bench.soak_faults import (
    Editor,
    Foreground,
    Log,
    Tunnel,
    delete_by_hand,
    kill_engine,
    write_config,
)
from bench.stats import table
from lab.harness import Run, Topology, build, destroy
from lab.keys import new_key
from lab.net import LabError, free_port, natgw, ping

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"
N = 3
START_DELAY = 2.0  # the agents' servers listen before any client starts
SETTLE = 20.0  # traffic goes on this long after the last fault, before the map check
KILL_FIRST, KILL_EVERY = 30.0, 60.0
DELETE_FIRST, DELETE_EVERY = 15.0, 30.0
DELETIONS = ("egress", "route", "ingress")


def _pairs() -> list[tuple[int, int]]:
    return [(i, j) for i in range(1, N + 1) for j in range(1, N + 1) if i != j]


def _tunnels(run: Run) -> list[Tunnel]:
    """Every gateway's device of every tunnel, in an order that walks all pairs."""
    return [Tunnel(run, i, j) for i, j in ((1, 2), (2, 3), (3, 1), (2, 1), (3, 2), (1, 3))]


class Soak:
    def __init__(self, run: Run, minutes: float, rng: random.Random) -> None:
        self.run, self.minutes, self.rng = run, minutes, rng
        self.work = Path(run.workdir)
        self.log = Log()
        self.fgs: dict[int, Foreground] = {}
        self.ports: dict[int, int] = {}
        self.samples: dict[int, list[dict]] = {i: [] for i in range(1, N + 1)}
        self.threads: list[threading.Thread] = []
        self.out: dict = {"minutes": minutes, "prefix": run.prefix}

    # -- setup ---------------------------------------------------------------------

    def start_gateways(self) -> None:
        for i in range(1, N + 1):
            cfg = yaml.safe_load(Path(self.run.config(i)).read_text())
            self.ports[i] = free_port()  # never the harness's fixed ports: shared host
            cfg["metrics"] = f"127.0.0.1:{self.ports[i]}"
            write_config(self.run.config(i), cfg)
            self.fgs[i] = Foreground(self.run, i, self.work / f"natgw-c{i}.log")
        for fg in self.fgs.values():
            fg.wait_ready()
        for a, b in _pairs():  # every tunnel handshaken before the clock starts
            if ping(self.run.pod(a), self.run.topology.addr_of(a, b), count=5) == 0:
                raise LabError(f"pod {a} cannot reach pod {b} before the soak")

    def start_traffic(self, seconds: float) -> list:
        topo, procs = self.run.topology, []
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        for i in range(1, N + 1):
            argv = [sys.executable, "-m", "bench.soak_agent", "--me", str(i),
                    "--bind", topo.pod_addr(i), "--seconds", f"{seconds:g}",
                    "--start-delay", f"{START_DELAY:g}", "--out", str(self.work)]
            for j in range(1, N + 1):
                if j != i:
                    argv += ["--peer", f"{j}={topo.addr_of(i, j)}"]
            with open(self.work / f"agent-{i}.log", "w") as log:
                procs.append(self.run.spawn(self.run.pod(i), argv, marker="bench.soak_agent",
                                            env=env, cwd=str(ROOT), stdout=log,
                                            stderr=subprocess.STDOUT))
        for i, j in _pairs():
            with open(self.work / f"ping-{i}-{j}.log", "w") as log:
                procs.append(self.run.spawn(
                    self.run.pod(i), ["ping", "-q", "-i", "0.2", "-w", f"{int(seconds)}",
                                      topo.addr_of(i, j)],
                    marker="ping", stdout=log, stderr=subprocess.STDOUT))
        return procs

    # -- the faults ------------------------------------------------------------------

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self.threads.append(t)

    def _edits(self, until: float, editor: Editor) -> None:
        while time.monotonic() < until:
            time.sleep(self.rng.uniform(2.0, 5.0))
            if time.monotonic() < until:
                try:
                    editor.edit_and_apply(self.log)
                except (LabError, OSError) as e:
                    self.log.add("edits", {"error": str(e), "ok": False,
                                           "start": time.monotonic(), "end": time.monotonic()})

    def sample(self, tag: str = "", wait: bool = False) -> None:
        """Sample every foreground process (3 s each; in a thread unless wait)."""
        def take() -> None:
            for i, fg in self.fgs.items():
                self.samples[i].append(fg.sample() | {"tag": tag})
        if wait:
            take()
        else:
            self._spawn(take)

    def faults(self, start: float) -> None:
        duration = self.minutes * 60
        until = start + duration
        editor = Editor(self.run, self.fgs, new_key(self.work / "xtra.key"))
        self._spawn(self._edits, until, editor)
        tunnels = _tunnels(self.run)
        kills = deletions = 0
        warm = start + min(100.0, duration / 2)
        next_sample = start + 30
        self.sample("launch", wait=True)
        warm_taken = False
        while (now := time.monotonic()) < until:
            if now >= start + KILL_FIRST + kills * KILL_EVERY:
                self._spawn(kill_engine, tunnels[kills % len(tunnels)], self.log)
                kills += 1
            if now >= start + DELETE_FIRST + deletions * DELETE_EVERY:
                # Skip the slot of a kill (every other one): one fault per tunnel at a time.
                what = DELETIONS[deletions % len(DELETIONS)]
                self._spawn(delete_by_hand, tunnels[(deletions + 3) % len(tunnels)], what,
                            self.log)
                deletions += 1
            if not warm_taken and now >= warm:
                self.sample("warm")
                warm_taken = True
            if now >= next_sample:
                self.sample()
                next_sample += 30
            time.sleep(0.2)
        for t in self.threads:
            t.join(timeout=90)
        self.editor = editor

    # -- the end -------------------------------------------------------------------

    def check_maps(self) -> dict:
        out = {}
        for i, fg in self.fgs.items():
            name = self.editor.cfgs[i]["name"]
            on_disk = yaml.safe_load(Path(self.run.config(i)).read_text())
            expected = S.expected_mappings(on_disk)
            r = natgw("--netns", fg.netns, "maps", "--json", check=False)
            try:
                pinned = S.pinned_mappings(json.loads(r.stdout), name)
            except json.JSONDecodeError:
                pinned = set()
            missing, extra = S.diff_mappings(expected, pinned)
            out[i] = {"expected": len(expected), "pinned": len(pinned),
                      "missing": [list(m) for m in missing], "extra": [list(m) for m in extra]}
        return out

    def collect(self, run_end: float) -> None:
        work, agents = self.work, {}
        for i in range(1, N + 1):
            path = work / f"agent-{i}.json"
            if not path.exists():
                raise LabError(f"agent {i} wrote no result: "
                               f"{(work / f'agent-{i}.log').read_text()[-300:]}")
            agents[i] = json.loads(path.read_text())
        windows = list(self.log.windows)
        flows, outside_times, short = {}, [], {"ok": 0, "fail_inside": 0, "fail_outside": 0}
        dups = 0
        for i, j in _pairs():
            times = array("d")
            with open(work / f"udp-{i}-{j}.times", "rb") as f:
                times.frombytes(f.read())
            recv = agents[j]["udp_received"].get(str(i), [])
            seqs = (s for a, b in recv for s in range(a, b + 1))
            f = S.udp_flow(agents[i]["udp_sent"][str(j)], seqs, times, i, j, windows, run_end)
            f["send_errors"] = agents[i]["udp_send_errors"][str(j)]
            outside = f.pop("outside_times")
            f["outside_at"] = [round(t - self.out["start"], 3) for t in outside[:50]]
            f["outside_since_window"] = [None if d is None else round(d, 3)
                                         for d in f["outside_since_window"]]
            outside_times += outside
            flows[f"{i}->{j}"] = f
            dups += agents[j]["udp_dups"].get(str(i), 0)
            sh = agents[i]["short"][str(j)]
            inside, outside = S.attribute(sh["fail_times"], i, j, windows, run_end)
            short["ok"] += sh["ok"]
            short["fail_inside"] += inside
            short["fail_outside"] += outside
        sent = [dict(r, src=i) for i, a in agents.items() for r in a["bulk_sent"]]
        received = [dict(r, dst=i) for i, a in agents.items() for r in a["bulk_received"]
                    if r["src"] is not None]
        edits = [(e["start"], e["end"]) for e in self.log.edits if "end" in e]
        self.out |= {
            "udp": {"flows": flows, "dups": dups,
                    "outside_during_edits": S.during(outside_times, edits)},
            "bulk": S.bulk(sent, received),
            "bulk_errors": sorted({r["error"] for r in sent + received if r["error"]})[:10],
            "short": short,
            "ping": self.pings(),
        }

    def pings(self) -> dict:
        out = {}
        for i, j in _pairs():
            text = (self.work / f"ping-{i}-{j}.log").read_text()
            m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
            out[f"{i}->{j}"] = [int(m[1]), int(m[2])] if m else None
        return out

    def summarise_faults(self) -> None:
        log = self.log
        restarts = [r for r in log.restarts if "error" not in r]
        repairs = [r for r in log.repairs if "error" not in r]
        t0 = self.out["start"]
        self.out["windows"] = [{"kind": w.kind, "tunnel": f"{w.a}-{w.b}",
                                "at": round(w.start - t0, 3),
                                "seconds": None if w.end is None else w.end - w.start}
                               for w in sorted(log.windows, key=lambda w: w.start)]
        self.out["edit_log"] = [{**{k: v for k, v in e.items() if k not in ("start", "end")},
                                 "at": round(e["start"] - t0, 3),
                                 "seconds": round(e["end"] - e["start"], 3)}
                                for e in log.edits]
        self.out["engine"] = {"kills": len(log.restarts),
                              "errors": [r["error"] for r in log.restarts if "error" in r],
                              "restart": S.dist(r["restart"] for r in restarts),
                              "ready": S.dist(r["ready"] for r in restarts),
                              "never": sum(1 for r in restarts if r["restart"] is None)}
        self.out["repairs"] = {
            "deletions": len(log.repairs),
            "errors": [r["error"] for r in log.repairs if "error" in r],
            "by_kind": {k: S.dist(r["repair"] for r in repairs
                                  if (r["what"] == "route") == (k == "route"))
                        for k in ("filter", "route")},
            "all": S.dist(r["repair"] for r in repairs),
            "never": sum(1 for r in repairs if r["repair"] is None)}
        edits = log.edits
        self.out["edits"] = {
            "applied": len(edits),
            "by_up": sum(1 for e in edits if e.get("how") == "up"),
            "by_sighup": sum(1 for e in edits if e.get("how") == "sighup"),
            "failed": sum(1 for e in edits if not e.get("ok")),
            "failures": sorted({e.get("error", "") for e in edits if not e.get("ok")})[:5],
            "seconds": S.dist(e["end"] - e["start"] for e in edits if "end" in e)}
        self.out["natgw_log"] = {
            i: {"drift repaired": fg.count("drift repaired"),
                "engine died": fg.count("engine of"),
                "mapping_lines": [line.removeprefix("natgw: drift repaired: ")
                                  for _, line in fg.lines if "drift repaired: mapping" in line],
                "metric": fg.metrics(self.ports[i])} for i, fg in self.fgs.items()}
        procs = {}
        for i, s in self.samples.items():
            if not {"launch", "end"} <= {x["tag"] for x in s}:
                continue
            tagged = {x["tag"]: x for x in s if x["tag"]}
            launch, end = tagged["launch"], tagged["end"]
            warm = tagged.get("warm", launch)
            procs[i] = {"pid": self.fgs[i].pid,
                        "rss_kib": [launch["rss_kib"], warm["rss_kib"], end["rss_kib"]],
                        "fds": [launch["fds"], warm["fds"], end["fds"]],
                        "rss_growth_pct": S.growth_pct(warm["rss_kib"], end["rss_kib"]),
                        "rss_growth_from_launch_pct": S.growth_pct(launch["rss_kib"],
                                                                   end["rss_kib"]),
                        "fd_growth": end["fds"] - warm["fds"],
                        "trend": [[round(x["t"] - self.out["start"]), x["rss_kib"], x["fds"]]
                                  for x in sorted(s, key=lambda x: x["t"])],
                        "alive": self.fgs[i].proc.poll() is None}
        self.out["natgw_procs"] = procs

    def figures(self) -> dict:
        o = self.out
        flows = o["udp"]["flows"].values()
        maps = o.get("maps", {}).values()
        procs = o["natgw_procs"].values()
        f = {"corrupted_bytes": o["bulk"]["corrupted_bytes"],
             "hash_mismatches": o["bulk"]["hash_mismatches"],
             "udp_lost_outside": sum(x["outside"] for x in flows),
             "engine_restart_max": o["engine"]["restart"]["max"]
             if not o["engine"]["never"] else float("inf"),
             "repair_max": o["repairs"]["all"]["max"]
             if not o["repairs"]["never"] else float("inf"),
             "rss_growth_max": max((p["rss_growth_pct"] for p in procs), default=None),
             "fd_growth_max": max((p["fd_growth"] for p in procs), default=None),
             "map_diff": sum(len(m["missing"]) + len(m["extra"]) for m in maps)
             if maps else None}
        return f


def udp_rcvbuf_errors(netns: str) -> int:
    """UDP datagrams a namespace dropped for a full receive buffer (/proc/net/snmp)."""
    r = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"],
                       capture_output=True, text=True, timeout=20)
    rows = [line.split()[1:] for line in r.stdout.splitlines() if line.startswith("Udp:")]
    if len(rows) < 2 or "RcvbufErrors" not in rows[0]:
        return 0
    return int(rows[1][rows[0].index("RcvbufErrors")])


# --- report -------------------------------------------------------------------------------


def _s(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else ("never" if v == float("inf") else f"{v:.{digits}f}")


def render(o: dict, md: bool) -> str:
    goals = S.judge(o["figures"])
    u = o["udp"]["flows"]
    b = o["bulk"]
    lines = []
    h = "#### " if md else "== "
    lines.append(f"{h}Traffic ({o['minutes']:g} min of faults + {SETTLE:g} s settle, "
                 f"load {o.get('load', '?')})")
    rows = [[k, str(f["sent"]), str(f["lost"]), str(f["inside"]), str(f["outside"]),
             str(f["send_errors"])] for k, f in u.items()]
    rows.append(["all", *[str(sum(f[c] for f in u.values()))
                          for c in ("sent", "lost", "inside", "outside", "send_errors")]])
    lines.append(table(["UDP flow", "sent", "lost", "in fault windows", "outside",
                        "send errors"], rows, md))
    lines.append("")
    since = [d for f in u.values() for d in f["outside_since_window"]]
    soon = sum(1 for d in since if d is not None and d <= 10)
    lines.append(f"UDP duplicates: {o['udp']['dups']}; of the datagrams lost outside fault "
                 f"windows, {o['udp']['outside_during_edits']} were sent while an apply ran "
                 f"and {soon} within 10 s after a window of their tunnel closed; pods' UDP "
                 f"receive-buffer errors: {o.get('rcvbuf_errors', '-')}.  ")
    lines.append(f"TCP bulk: {b['connections']} connections, {b['bytes_sent']} bytes sent, "
                 f"{b['bytes_received']} received, {b['corrupted_bytes']} corrupted, "
                 f"{b['hash_mismatches']} hash mismatches, {b['incomplete']} broke early"
                 f"{(' (' + '; '.join(o['bulk_errors']) + ')') if o['bulk_errors'] else ''}.  ")
    sh = o["short"]
    lines.append(f"Short TCP connections: {sh['ok']} ok, {sh['fail_inside']} failed in fault "
                 f"windows, {sh['fail_outside']} outside.  ")
    pings = [p for p in o["ping"].values() if p]
    lines.append(f"Ping: {sum(p[0] for p in pings)} sent, {sum(p[1] for p in pings)} "
                 "answered.")
    lines.append("")
    e, r, ed = o["engine"], o["repairs"], o["edits"]
    lines.append(f"{h}Faults")
    rows = [["wireguard-go SIGKILL -> new engine", str(e["kills"]), _s(e["restart"]["median"]),
             _s(e["restart"]["max"]), str(e["never"])],
            ["  ... -> filters, route and handshake back", str(e["kills"]),
             _s(e["ready"]["median"]), _s(e["ready"]["max"]), str(e["never"])]]
    for k, d in r["by_kind"].items():
        rows.append([f"{k} deleted by hand -> back", str(d["n"]), _s(d["median"]),
                     _s(d["max"]), "-"])
    rows.append(["edit applied (up --detach / SIGHUP)", str(ed["applied"]),
                 _s(ed["seconds"]["median"]), _s(ed["seconds"]["max"]), str(ed["failed"])])
    lines.append(table(["fault", "count", "median s", "max s", "never/failed"], rows, md))
    lines.append("")
    lines.append(f"Edits: {ed['by_up']} by `up --detach`, {ed['by_sighup']} by SIGHUP, "
                 f"{ed['failed']} failed"
                 f"{(': ' + '; '.join(ed['failures'])) if ed['failures'] else ''}.  ")
    if r["never"] or r["errors"] or e["errors"]:
        lines.append(f"Not repaired within 60 s: {r['never']} deletions, {e['never']} engines; "
                     f"errors: {'; '.join(r['errors'] + e['errors']) or 'none'}.  ")
    def account(v: dict) -> str:
        metric = ", ".join(f"{k} {int(n)}" for k, n in sorted(v["metric"].items()))
        return f"{v['drift repaired']} / {v['engine died']}; {metric or 'no metric'}"

    lines.append("natgw's own account (log lines `drift repaired` / `engine ... died`; metric "
                 "natgw_drift_repairs_total by kind): "
                 + "; ".join(f"c{i}: {account(v)}" for i, v in o["natgw_log"].items()) + ".  ")
    repaired = [f"c{i}: {line}" for i, v in o["natgw_log"].items()
                for line in v["mapping_lines"]]
    lines.append("The soak removes no mapping entry by hand; natgw's mapping repairs: "
                 + ("; ".join(f"`{x}`" for x in repaired[:6])
                    + (f" and {len(repaired) - 6} more" if len(repaired) > 6 else "")
                    if repaired else "none") + ".")
    lines.append("")
    lines.append(f"{h}natgw processes and pinned maps")
    rows = []
    for i, p in o["natgw_procs"].items():
        m = o["maps"].get(i) or o["maps"].get(str(i)) or {}
        rows.append([f"c{i}", "/".join(str(x) for x in p["rss_kib"]),
                     f"{p['rss_growth_pct']:+.1f}%", "/".join(str(x) for x in p["fds"]),
                     f"{m.get('pinned', '-')}/{m.get('expected', '-')}",
                     str(len(m.get("missing", [])) + len(m.get("extra", [])))])
    lines.append(table(["gateway", "RSS KiB launch/warm/end", "RSS warm->end",
                        "fds launch/warm/end", "map entries pinned/configured", "differ"],
                       rows, md))
    lines.append("")
    lines.append("RSS every 30 s (MiB): " + "; ".join(
        f"c{i}: " + " ".join(f"{x[1] / 1024:.1f}" for x in p["trend"])
        for i, p in o["natgw_procs"].items()) + ".")
    fds = o.get("fds_end") or {}
    lines.append("")
    lines.append("Open fds at the end: " + "; ".join(
        f"c{i}: " + ", ".join(f"{k} {n}" for k, n in sorted(v.items())) for i, v in fds.items())
        + ".")
    diffs = [f"c{i}: missing {m['missing']} extra {m['extra']}"
             for i, m in o["maps"].items() if m["missing"] or m["extra"]]
    if diffs:
        lines.append("")
        lines.append("Map differences: " + "; ".join(diffs))
    lines.append("")
    lines.append(f"{h}Targets")
    lines.append(table(["target", "value", "limit", "verdict"],
                       [[g.name, _s(g.value) if isinstance(g.value, float) else str(g.value),
                         f"{g.op} {g.limit:g}{(' ' + g.unit) if g.unit else ''}",
                         g.verdict + (f" (by {g.by()})" if g.by() else "")] for g in goals],
                       md))
    lines.append("")
    left = o.get("leftovers") or {}
    kept = left.get("files", [])
    logs = sum(1 for f in kept if f.endswith(".log"))
    lines.append("Left after cleanup: processes, namespaces, sockets, pin dirs, state files: "
                 f"{', '.join(left.get('objects', [])) or 'none'}; left by `natgw down` on "
                 f"purpose or not: {len(kept) - logs} lock files, {logs} wireguard-go logs "
                 "(/run/natgw/wg/<dev>.log), removed by the soak after counting.")
    return "\n".join(lines)


def write_markdown(path: Path, o: dict, command: str) -> None:
    section = "\n".join([BEGIN, f"<!-- generated by `{command}`; edit outside the markers -->",
                         "", f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                         f"prefix {o['prefix']}.", "", render(o, md=True), "", END])
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n## Soak (`make soak`)\n\n" + section + "\n"
    path.write_text(text)


# --- cleanup check ---------------------------------------------------------------------


def leftovers(prefix: str) -> dict[str, list[str]]:
    """What of run `prefix` is still there after cleanup.

    "objects": processes, namespaces, wireguard-go sockets, pin dirs, state
    and pid files (there must be none); "files": logs and lock files natgw
    keeps on purpose (a lock file may stay; wireguard-go logs are reported).
    """
    found: dict[str, list[str]] = {"objects": [], "files": []}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = p.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if prefix in argv and int(p.name) != os.getpid():
            found["objects"].append(f"process {p.name}: {argv[:80]}")
    for d, what in ((Path("/var/run/netns"), "netns"), (Path("/var/run/wireguard"), "socket"),
                    (Path("/sys/fs/bpf/natgw"), "pin dir")):
        if d.is_dir():
            found["objects"] += [f"{what} {q}" for q in d.iterdir() if q.name.startswith(prefix)]
    state = Path("/run/natgw")
    if state.is_dir():
        for q in state.rglob(f"*{prefix}*"):
            kept = q.suffix in (".lock", ".log")
            found["files" if kept else "objects"].append(str(q))
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="faults run this long (10)")
    p.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md",
                   help="file whose soak section is rewritten (default BENCHMARKS.md)")
    p.add_argument("--no-markdown", action="store_true", help="print only")
    p.add_argument("--json", type=Path, default=ROOT / "bench-results" / "soak.json")
    p.add_argument("--seed", type=int, default=None, help="seed of the edit intervals")
    args = p.parse_args(argv)
    if args.minutes <= 0:
        p.error("--minutes must be positive")
    if os.geteuid() != 0:
        print("soak: needs root (network namespaces)", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    run = None
    soak = None
    try:
        run = build(Topology(clusters=N), label="soak")
        print(f"soak: run {run.prefix}, {args.minutes:g} min", flush=True)
        soak = Soak(run, args.minutes, rng)
        soak.start_gateways()
        seconds = START_DELAY + args.minutes * 60 + SETTLE
        procs = soak.start_traffic(seconds)
        start = time.monotonic() + START_DELAY
        soak.out["start"] = start
        time.sleep(START_DELAY)
        soak.faults(start)
        settle_until = start + args.minutes * 60 + SETTLE - 3
        while time.monotonic() < settle_until:
            time.sleep(0.5)
        soak.out["maps"] = soak.check_maps()
        soak.sample("end", wait=True)
        soak.out["fds_end"] = {i: fg.fd_kinds() for i, fg in soak.fgs.items()}
        run_end = time.monotonic()
        for proc in procs:
            try:
                proc.wait(timeout=max(5.0, start + seconds + 30 - time.monotonic()))
            except subprocess.TimeoutExpired:
                run.end(proc.pid)
            run.forget(proc.pid)
        soak.summarise_faults()
        soak.collect(run_end)
        soak.out["rcvbuf_errors"] = sum(udp_rcvbuf_errors(run.pod(i)) for i in range(1, N + 1))
        soak.out["load"] = Path("/proc/loadavg").read_text().split()[0]
    except LabError as e:
        print(f"soak: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        return 1
    finally:
        if run is not None:
            if soak is not None:
                for fg in soak.fgs.values():
                    run.end(fg.pid, timeout=10)
                    fg.close_log()
            # The logs outlive the run (its work directory goes): natgw's, the agents'.
            keep = Path("/tmp") / f"soak-{run.prefix}"
            shutil.copytree(run.workdir, keep, ignore=shutil.ignore_patterns("*.key", "*.times"),
                            dirs_exist_ok=True)
            destroy(run)
            if soak is not None:
                soak.out["leftovers"] = leftovers(run.prefix)
                for f in soak.out["leftovers"]["files"]:  # counted; ours: not left behind
                    Path(f).unlink(missing_ok=True)
                print(f"soak: logs of the run in {keep}", flush=True)
    o = soak.out
    o["figures"] = soak.figures()
    o["targets"] = [{"name": g.name, "value": g.value, "op": g.op, "limit": g.limit,
                     "verdict": g.verdict} for g in S.judge(o["figures"])]
    print(render(o, md=False))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(o, indent=1, default=str))
    if not args.no_markdown:
        write_markdown(args.markdown, o, "make soak" if args.minutes == 10 else
                       f"python -m bench.soak --minutes {args.minutes:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
