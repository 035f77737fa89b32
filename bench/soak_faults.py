"""The soak's gateways and faults: foreground natgw processes, config edits, kills, deletions.

Each fault is measured from the outside, by polling what natgw is supposed to
put back (a new wireguard-go, the device's filters, its routes, a handshake),
never by trusting natgw's own log. Times are CLOCK_MONOTONIC seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.soak_stats import Window
from lab.harness import Run
from lab.net import NATGW, WG_SOCKET_DIR, LabError, natgw, natgw_hooks, remove_natgw_hook

WG_PID_DIR = Path("/run/natgw/wg")  # natgw.wireguard.userspace.RUN_DIR
POLL = 0.1
GIVE_UP = 60.0  # a fault not repaired by then stays open until the end of the run


def _out(argv: list[str]) -> str | None:
    """argv's output, or None when it fails (e.g. the device is gone)."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    return r.stdout if r.returncode == 0 else None


def write_config(path: str, cfg: dict) -> None:
    """Replace a cluster.yaml atomically: a reload never reads half a file."""
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
    tmp.replace(path)


class Foreground:
    """One `natgw --netns NS up FILE` in the foreground, its log lines timestamped."""

    def __init__(self, run: Run, i: int, log: Path) -> None:
        self.i, self.netns, self.config = i, run.gw(i), run.config(i)
        self.lines: list[tuple[float, str]] = []
        self._log = open(log, "w")  # noqa: SIM115 - closed by stop()
        self.proc = run.spawn(None, [NATGW, "--netns", self.netns, "up", self.config],
                              marker=self.config, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))
            self._log.write(f"{time.monotonic():.3f} {line}")
            self._log.flush()

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not any("running in the foreground" in line for _, line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = "; ".join(line for _, line in self.lines[-3:])
                raise LabError(f"natgw up {self.config} did not reach the foreground: "
                               f"{tail or 'no output'}")
            time.sleep(0.1)

    def since(self, t: float, text: str) -> float | None:
        """Time of the first log line after t containing text."""
        return next((ts for ts, line in list(self.lines) if ts > t and text in line), None)

    def count(self, text: str) -> int:
        return sum(1 for _, line in list(self.lines) if text in line)

    def sample(self, readings: int = 12, every: float = 0.25) -> dict:
        """RSS (KiB) and open fds of the process, from /proc: the least of `readings`
        over a span longer than a supervision cycle (2 s), so that what a drift
        check or an apply holds for a moment (its lock, netlink sockets, map fds)
        is not taken for growth; a leak stays in every reading."""
        t, rss, fds = time.monotonic(), [], []
        for k in range(readings):
            if k:
                time.sleep(every)
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss.append(int(line.split()[1]))
            fds.append(len(os.listdir(f"/proc/{self.pid}/fd")))
        return {"t": t, "rss_kib": min(rss), "fds": min(fds), "fds_max": max(fds)}

    def fd_kinds(self) -> dict[str, int]:
        """The open fds by what they point to (socket, pipe, anon_inode:bpf-map, a path)."""
        kinds: dict[str, int] = {}
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
            except OSError:
                continue
            kind = target.split(":[", 1)[0] if ":[" in target else target
            kinds[kind] = kinds.get(kind, 0) + 1
        return kinds

    def metrics(self, port: int) -> dict[str, float]:
        """natgw_drift_repairs_total by kind, scraped from the metrics endpoint."""
        out: dict[str, float] = {}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return out
        for line in text.splitlines():
            if line.startswith("natgw_drift_repairs_total{"):
                labels, _, value = line.rpartition(" ")
                kind = labels.split('kind="', 1)[1].split('"', 1)[0] if 'kind="' in labels \
                    else "?"
                out[kind] = out.get(kind, 0) + float(value)
        return out

    def close_log(self) -> None:
        self._log.close()


@dataclass
class Log:
    """Everything the faults did and how long each took (thread-safe appends)."""

    windows: list[Window] = field(default_factory=list)
    restarts: list[dict] = field(default_factory=list)
    repairs: list[dict] = field(default_factory=list)
    edits: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, rec: dict) -> None:
        with self.lock:
            getattr(self, kind).append(rec)


class Tunnel:
    """Looks at one gateway's tunnel device from outside natgw."""

    def __init__(self, run: Run, i: int, j: int) -> None:
        self.i, self.j, self.netns, self.dev = i, j, run.gw(i), run.tunnel_dev(i, j)
        self.view = run.topology.view(i, j)

    def engine_pid(self) -> int | None:
        try:
            pid = int((WG_PID_DIR / f"{self.dev}.pid").read_text().strip())
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if b"wireguard-go" in argv[0] + (argv[1] if len(argv) > 1 else b"") \
            and self.dev.encode() in argv else None

    def has_filter(self, direction: str) -> bool:
        """natgw's program on a hook: a tcx link, or before tcx a tc filter."""
        try:
            return direction in natgw_hooks(self.netns, self.dev)
        except (OSError, subprocess.TimeoutExpired):
            return False

    def has_route(self) -> bool:
        out = _out(["ip", "-n", self.netns, "-j", "route", "show", "proto", "78",
                    "dev", self.dev])
        return out is not None and any(r.get("dst") == self.view for r in json.loads(out or "[]"))

    def handshaken(self) -> bool:
        out = _out(["ip", "netns", "exec", self.netns, "wg", "show", self.dev,
                    "latest-handshakes"])
        return out is not None and any(int(line.split()[-1]) > 0
                                       for line in out.splitlines() if line.strip())

    def whole(self) -> bool:
        return self.has_filter("egress") and self.has_filter("ingress") and self.has_route()


def _poll(pred, start: float, timeout: float = GIVE_UP) -> float | None:
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic()
        time.sleep(POLL)
    return None


def kill_engine(t: Tunnel, log: Log) -> None:
    """SIGKILL the tunnel's wireguard-go; time its restart and the tunnel's recovery."""
    old = t.engine_pid()
    if old is None:
        log.add("restarts", {"dev": t.dev, "error": "no running engine to kill"})
        return
    start = time.monotonic()
    os.kill(old, signal.SIGKILL)
    sock = WG_SOCKET_DIR / f"{t.dev}.sock"
    restarted = _poll(lambda: t.engine_pid() not in (None, old) and sock.exists(), start)
    ready = None
    if restarted is not None:
        ready = _poll(lambda: t.whole() and t.handshaken(), start)
    log.add("windows", Window("engine", t.i, t.j, start, ready))
    log.add("restarts", {"dev": t.dev, "start": start,
                         "restart": None if restarted is None else restarted - start,
                         "ready": None if ready is None else ready - start})


def delete_by_hand(t: Tunnel, what: str, log: Log) -> None:
    """Delete natgw's filter (what: egress/ingress) or its route; time the repair."""
    start = time.monotonic()
    if what == "route":
        back = t.has_route
        deleted = _out(["ip", "-n", t.netns, "route", "del", t.view, "dev", t.dev, "proto",
                        "78"]) is not None
    else:
        back = lambda: t.has_filter(what)  # noqa: E731
        try:
            remove_natgw_hook(t.netns, t.dev, what)  # a tcx link or a tc filter
            deleted = True
        except LabError:
            deleted = False
    if not deleted:
        log.add("repairs", {"dev": t.dev, "what": what, "error": "could not delete"})
        return
    done = _poll(back, start)
    log.add("windows", Window(what if what == "route" else "filter", t.i, t.j, start, done))
    log.add("repairs", {"dev": t.dev, "what": what, "start": start,
                        "repair": None if done is None else done - start})


class Editor:
    """Edits that carry no measured traffic: an extra mapping, an extra peer.

    Per gateway, in turn: add a mapping (172.16.<k>.0/24 as 10.<200+k>...),
    change its `as`, remove it; add an extra peer (its own device, an endpoint
    nobody answers), remove it. Applied alternately by `natgw up --detach` and
    by SIGHUP to the foreground.
    """

    MAP_STEPS = ("add mapping", "change mapping", "remove mapping")

    def __init__(self, run: Run, fgs: dict[int, Foreground], extra_pub: str) -> None:
        self.run, self.fgs, self.extra_pub = run, fgs, extra_pub
        self.cfgs = {i: yaml.safe_load(Path(run.config(i)).read_text()) for i in fgs}
        self.step = dict.fromkeys(fgs, 0)
        self.n = 0

    def _edit(self, i: int) -> str:
        cfg, k = self.cfgs[i], self.step[i]
        self.step[i] += 1
        first = cfg["peers"][0]
        extra = [p for p in cfg["peers"] if p["name"] == "xtra"]
        if k % 2 == 0:  # the mapping cycle
            what = self.MAP_STEPS[(k // 2) % 3]
            first["remote"] = [m for m in first["remote"] if not m["cidr"].startswith("172.16.")]
            if what != "remove mapping":
                third = 1 if what == "add mapping" else 2
                first["remote"].append({"cidr": f"172.16.{i}.0/24",
                                        "as": f"10.{200 + 10 * i + third}.{i}.0/24"})
            return what
        if extra:
            cfg["peers"].remove(extra[0])
            return "remove peer"
        cfg["peers"].append({"name": "xtra", "device": f"{self.run.prefix}x{i}",
                             "publicKey": self.extra_pub,
                             "endpoint": f"192.0.2.{i}:51999", "listenPort": 52000 + i,
                             "remote": [{"cidr": "172.17.0.0/24", "as": f"10.{230 + i}.0.0/24"}]})
        return "add peer"

    def edit_and_apply(self, log: Log) -> None:
        i = 1 + self.n % len(self.fgs)
        how = "up" if (self.n // len(self.fgs)) % 2 == 0 else "sighup"
        self.n += 1
        what = self._edit(i)
        write_config(self.run.config(i), self.cfgs[i])
        start = time.monotonic()
        rec = {"gw": i, "how": how, "what": what, "start": start, "ok": False}
        fg = self.fgs[i]
        if how == "up":
            r = natgw("--netns", fg.netns, "up", fg.config, "--detach", check=False)
            rec["ok"] = r.returncode == 0
            if not rec["ok"]:
                rec["error"] = (r.stderr or r.stdout).strip()[-200:]
        else:
            os.kill(fg.pid, signal.SIGHUP)
            # A reload logs its apply's lines, then "reloaded FILE" (or its error).
            done = _poll(lambda: fg.since(start, "reloaded") is not None, start)
            rec["ok"] = done is not None
            if not rec["ok"]:
                rec["error"] = "no 'reloaded' within 60 s: " + "; ".join(
                    line for ts, line in fg.lines[-3:] if ts > start)
        rec["end"] = time.monotonic()
        log.add("edits", rec)
