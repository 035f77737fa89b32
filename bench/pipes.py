"""Pipes against natgw's L3 path through the same WireGuard tunnel (cloud-gateway's minimal demo).

    pod 10.244.0.10 -- client gw ==wireguard-go== legacy gw -- web 172.25.0.3
    L3:    pod dials 172.25.0.3:PORT (routed through the tunnel)
    pipe:  pod dials 10.244.0.1:PIPE (client natgw -> tunnel -> legacy natgw -> web:PORT)

Measures, interleaved round by round so that the shared machine's load hits both alike:
  - bulk throughput (iperf3, both directions), pipe / L3;
  - connection setup: connect + a 1-byte request and its answer, sequentially, p50 and p99,
    and what the pipe adds over L3 at p50;
  - 1,000 concurrent connections held through the pipe: both natgw processes' memory and fds.

    python -m bench.pipes [--rounds N] [--seconds S] [--json PATH] [--markdown BENCHMARKS.md]

It asserts nothing; targets are reported as met or not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from lab.netnslab import NetnsLab
from lab.pipes import WEB, build
from natgw.netns import in_netns

ROOT = Path(__file__).resolve().parents[1]

IPERF_PORT, ECHO_PORT = 5201, 9004
PIPE_IPERF, PIPE_ECHO = 8091, 8092
BEGIN, END = "<!-- pipes:begin -->", "<!-- pipes:end -->"


def start_echo(lab: NetnsLab, netns: str) -> None:
    """A one-thread asyncio echo service (1,000 connections need no 1,000 threads)."""
    loop = asyncio.new_event_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        writer.close()

    def run() -> None:
        from natgw.netns import enter_netns

        enter_netns(netns)
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(handle, WEB, ECHO_PORT,
                                                              backlog=2048))
        loop.run_forever()
        server.close()
        tasks = asyncio.all_tasks(loop)
        for t in tasks:
            t.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    lab.on_cleanup(lambda: (loop.call_soon_threadsafe(loop.stop), thread.join(10)))


def start_iperf(lab: NetnsLab, netns: str) -> None:
    proc = subprocess.Popen(["ip", "netns", "exec", netns, "iperf3", "-s", "-B", WEB, "-p",
                             str(IPERF_PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.on_cleanup(lambda: (proc.terminate(), proc.wait()))
    time.sleep(0.5)


def iperf(netns: str, host: str, port: int, seconds: float, reverse: bool) -> float:
    """Bits per second received, one TCP stream."""
    argv = ["ip", "netns", "exec", netns, "iperf3", "-c", host, "-p", str(port), "-t",
            str(seconds), "-J"] + (["-R"] if reverse else [])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    data = json.loads(out.stdout)
    if "error" in data:
        raise RuntimeError(f"iperf3: {data['error']}")
    return data["end"]["sum_received"]["bits_per_second"]


def setup_times(netns: str, targets: list[tuple[str, int]], n: int) -> list[list[float]]:
    """Seconds for connect + 1-byte echo, alternating between targets, n each."""
    def run() -> list[list[float]]:
        out: list[list[float]] = [[] for _ in targets]
        for _ in range(n):
            for i, addr in enumerate(targets):
                t0 = time.perf_counter()
                s = socket.create_connection(addr, timeout=10)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(b"x")
                if s.recv(1) != b"x":
                    raise RuntimeError("echo answered wrong")
                out[i].append(time.perf_counter() - t0)
                s.close()
        return out

    return in_netns(netns, run)


def hold(netns: str, addr: tuple[str, int], n: int) -> list[socket.socket]:
    def run() -> list[socket.socket]:
        socks = []
        for i in range(n):
            s = socket.create_connection(addr, timeout=30)
            s.sendall(f"{i}\n".encode())
            socks.append(s)
        for i, s in enumerate(socks):
            want = f"{i}\n".encode()
            got = b""
            while len(got) < len(want):
                got += s.recv(64)
            if got != want:
                raise RuntimeError("echo answered wrong")
        return socks

    return in_netns(netns, run)


def proc_memory(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    kb = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
          if line.startswith(("VmRSS", "RssAnon"))}
    return {"rss_kib": kb["VmRSS"], "anon_kib": kb["RssAnon"],
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def kernel_pipe_kib() -> int:
    # Socket buffers and pipe pages are kernel memory, not the process's RSS.
    meminfo = Path("/proc/meminfo").read_text()
    return next(int(line.split()[1]) for line in meminfo.splitlines()
                if line.startswith("Slab:"))


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def measure(rounds: int, seconds: float, setups: int, held: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp, NetnsLab() as lab:
        demo = build("minimal", lab, Path(tmp),
                     extra=[("iperf", PIPE_IPERF, IPERF_PORT), ("echo2", PIPE_ECHO, ECHO_PORT)])
        subprocess.run(["ip", "-n", demo.pod, "route", "add", "172.25.0.0/16", "via",
                        demo.near_lan], check=True)
        start_echo(lab, demo.web)
        start_iperf(lab, demo.web)
        l3 = (WEB, IPERF_PORT)
        pipe = (demo.near_lan, PIPE_IPERF)
        res: dict = {"rounds": rounds, "seconds": seconds, "throughput": {}, "setup": {},
                     "held": {}, "load_before": os.getloadavg()[0], "cpus": os.cpu_count()}
        tp: dict[str, list[float]] = {}
        for r in range(rounds):
            order = [("l3", l3), ("pipe", pipe)]
            if r % 2:
                order.reverse()
            for reverse in (False, True):
                for label, (host, port) in order:
                    key = f"{label}/{'download' if reverse else 'upload'}"
                    bps = iperf(demo.pod, host, port, seconds, reverse)
                    tp.setdefault(key, []).append(bps)
                    print(f"round {r + 1}: {key} {bps / 1e6:.0f} Mbit/s", flush=True)
        res["throughput"] = tp
        near_pid, far_pid = demo.near.proc.pid, demo.far.proc.pid
        cpu0 = cpu_seconds(near_pid) + cpu_seconds(far_pid)
        times = setup_times(demo.pod, [(WEB, ECHO_PORT), (demo.near_lan, PIPE_ECHO)], setups)
        # L3 connections never touch the natgw processes: all their CPU is the pipe's.
        res["setup_cpu_seconds"] = cpu_seconds(near_pid) + cpu_seconds(far_pid) - cpu0
        res["setup"] = {"l3": times[0], "pipe": times[1]}
        before = {"near": proc_memory(near_pid), "far": proc_memory(far_pid),
                  "slab_kib": kernel_pipe_kib()}
        t0 = time.monotonic()
        socks = hold(demo.pod, (demo.near_lan, PIPE_ECHO), held)
        opened = time.monotonic() - t0
        time.sleep(1.5)
        active = next(p["active"] for p in demo.near.published()["pipes"] if p["name"] == "echo2")
        after = {"near": proc_memory(near_pid), "far": proc_memory(far_pid),
                 "slab_kib": kernel_pipe_kib()}
        for s in socks:
            s.close()
        res["load_after"] = os.getloadavg()[0]
        res["held"] = {"connections": held, "active_in_status": active, "open_seconds": opened,
                       "before": before, "after": after}
        return res


def summarize(res: dict) -> dict:
    tp = {k: statistics.median(v) for k, v in res["throughput"].items()}
    spread = {k: (max(v) - min(v)) / statistics.median(v) for k, v in res["throughput"].items()}
    ms = {k: [t * 1000 for t in v] for k, v in res["setup"].items()}
    setup = {k: {"p50": pct(v, 0.5), "p99": pct(v, 0.99)} for k, v in ms.items()}
    h = res["held"]
    n = h["connections"]
    mem = {side: {"rss_kib_per_conn": (h["after"][side]["rss_kib"] - h["before"][side]["rss_kib"])
                  / n, "fds": h["after"][side]["fds"] - h["before"][side]["fds"],
                  "rss_kib": h["after"][side]["rss_kib"]} for side in ("near", "far")}
    return {
        "throughput_mbit": {k: v / 1e6 for k, v in tp.items()},
        "spread": spread,
        "ratio": {d: tp[f"pipe/{d}"] / tp[f"l3/{d}"] for d in ("upload", "download")},
        "setup_ms": setup,
        "setup_added_p50_ms": setup["pipe"]["p50"] - setup["l3"]["p50"],
        "setup_added_p99_ms": setup["pipe"]["p99"] - setup["l3"]["p99"],
        "setup_cpu_ms_per_conn": res["setup_cpu_seconds"] * 1000 / len(res["setup"]["pipe"]),
        "held": {"connections": n, "active_in_status": h["active_in_status"],
                 "open_seconds": h["open_seconds"], "memory": mem,
                 "slab_kib_per_conn": (h["after"]["slab_kib"] - h["before"]["slab_kib"]) / n},
    }


def render(s: dict, res: dict) -> str:
    t, r = s["throughput_mbit"], s["ratio"]
    ok = lambda b: "met" if b else "NOT met"  # noqa: E731
    lines = [
        f"{res['rounds']} interleaved rounds of {res['seconds']:.0f} s iperf3 (one TCP stream), "
        f"{len(res['setup']['l3'])} sequential connections per path; medians. Load average "
        f"{res['load_before']:.1f} before, {res['load_after']:.1f} after, on {res['cpus']} CPUs "
        "(a shared machine: every extra process wakeup on the pipe's path waits for a CPU).",
        "",
        "| path | upload Mbit/s | spread | download Mbit/s | spread |",
        "|---|---|---|---|---|",
    ]
    for p in ("l3", "pipe"):
        lines.append(f"| {'natgw L3 (routed, same tunnel)' if p == 'l3' else 'pipe'} | "
                     f"{t[f'{p}/upload']:.0f} | {s['spread'][f'{p}/upload'] * 100:.0f}% | "
                     f"{t[f'{p}/download']:.0f} | {s['spread'][f'{p}/download'] * 100:.0f}% |")
    su = s["setup_ms"]
    h = s["held"]
    m = h["memory"]
    lines += [
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| throughput pipe / L3, upload | {r['upload']:.2f} | >= 0.9: {ok(r['upload'] >= 0.9)} |",
        f"| throughput pipe / L3, download | {r['download']:.2f} | >= 0.9: "
        f"{ok(r['download'] >= 0.9)} |",
        f"| connect + 1-byte echo, L3 p50 / p99 | {su['l3']['p50']:.2f} / "
        f"{su['l3']['p99']:.2f} ms | |",
        f"| connect + 1-byte echo, pipe p50 / p99 | {su['pipe']['p50']:.2f} / "
        f"{su['pipe']['p99']:.2f} ms | |",
        f"| added by the pipe at p50 (p99) | {s['setup_added_p50_ms']:.2f} "
        f"({s['setup_added_p99_ms']:.2f}) ms | <= 1 ms at p50: "
        f"{ok(s['setup_added_p50_ms'] <= 1.0)} |",
        f"| natgw CPU per pipe connection set up and closed (both gateways) | "
        f"{s['setup_cpu_ms_per_conn']:.2f} ms | |",
        f"| {h['connections']} connections held (status shows {h['active_in_status']} active),"
        f" opened in | {h['open_seconds']:.1f} s | held: "
        f"{ok(h['active_in_status'] == h['connections'])} |",
        f"| client natgw: RSS per connection, fds added | {m['near']['rss_kib_per_conn']:.1f} KiB,"
        f" {m['near']['fds']} (RSS {m['near']['rss_kib'] / 1024:.0f} MiB) | |",
        f"| legacy natgw: RSS per connection, fds added | {m['far']['rss_kib_per_conn']:.1f} KiB, "
        f"{m['far']['fds']} (RSS {m['far']['rss_kib'] / 1024:.0f} MiB) | |",
        f"| kernel slab growth per connection (both gateways, service, client) | "
        f"{h['slab_kib_per_conn']:.1f} KiB | |",
    ]
    return "\n".join(lines)


def write_markdown(path: Path, body: str) -> None:
    text = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{body}\n{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = (text.rstrip("\n") + "\n\n## Pipes: natgw's TCP relay against its L3 path\n\n"
                + block + "\n")
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pipes", description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--setups", type=int, default=500)
    ap.add_argument("--held", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=ROOT / "bench-results" / "pipes.json")
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    res = measure(args.rounds, args.seconds, args.setups, args.held)
    s = summarize(res)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"raw": res, "summary": s}, indent=2) + "\n")
    body = render(s, res)
    print(body)
    if args.markdown:
        write_markdown(args.markdown, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
