"""natgw's control plane: cold start, config changes under load, memory.

All of it on a natgw Topology that is already up, which each function leaves up
and forwarding as it found it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from bench.stats import median, seq_loss
from bench.topology import EXTRA_C2_AS, EXTRA_C2_CIDR, POD_CPU, Topology, host_in
from bench.traffic import endpoint_argv
from lab.net import LabError, in_ns, run

STREAM_PORT, NEW_PORT = 7100, 7101
PIN_ROOT = Path("/sys/fs/bpf/natgw")


class _Streams:
    """A receiver in pod2 and numbered UDP senders in pod1, stopped by PID."""

    def __init__(self, topo: Topology, seconds: float) -> None:
        self.topo = topo
        self.seconds = seconds
        self.procs: list[subprocess.Popen] = []
        self.recv: subprocess.Popen | None = None

    def _start(self, ns: str, argv: list[str]) -> subprocess.Popen:
        p = self.topo.rec.spawn(ns, argv, cpu=POD_CPU, marker="bench.endpoints",
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def receive(self, binds: list[str], times: list[str] = ()) -> None:
        self.recv = self._start(self.topo.pod2, endpoint_argv(
            "stream-recv", "--bind", *binds, "--times", *times,
            "--seconds", f"{self.seconds + 10:.0f}"))
        line = self.recv.stdout.readline()
        if "listening" not in line:
            raise LabError(f"stream-recv: {line or self.recv.stderr.read()[-300:]}")

    def send(self, dst: str, port: int, rate: float, flows: int = 1) -> subprocess.Popen:
        return self._start(self.topo.pod1, endpoint_argv(
            "stream-send", "--dst", dst, "--port", str(port), "--rate", str(rate),
            "--flows", str(flows), "--seconds", f"{self.seconds:.0f}"))

    def finish(self, senders: list[subprocess.Popen]) -> tuple[list[dict], dict]:
        """Stop the senders, let the last datagrams land, stop the receiver: outputs."""
        outs = [self._result(p) for p in senders]
        time.sleep(0.3)
        return outs, self._result(self.recv)

    def _result(self, p: subprocess.Popen) -> dict:
        p.send_signal(signal.SIGINT)
        try:
            out, err = p.communicate(timeout=15)
        finally:
            self.topo.rec.forget(p.pid)
            self.procs.remove(p)
        lines = [ln for ln in out.splitlines() if ln.startswith("{") and "listening" not in ln]
        if not lines:
            raise LabError(f"stream endpoint: no result ({err.strip()[-300:]})")
        return json.loads(lines[-1])

    def close(self) -> None:
        for p in list(self.procs):
            self.topo.rec.end(p.pid)
        self.procs.clear()


def _apply_in_process(topo: Topology) -> tuple[int, float]:
    """The reconcile `natgw up` runs, through the library: (start ns, seconds).

    The file is loaded first (what the CLI does before applying too); the time
    is that of `Gateway.apply`, the change itself.
    """
    from natgw.config import load_config  # noqa: PLC0415
    from natgw.gateway import Gateway  # noqa: PLC0415

    cfg = load_config(topo.configs[0])
    t0 = time.monotonic_ns()
    Gateway(cfg, topo.gw1, topo.configs[0]).apply()
    return t0, (time.monotonic_ns() - t0) / 1e9


def config_change(topo: Topology, cycles: int, rate: float = 20000, flows: int = 8,
                  settle: float = 0.7) -> dict:
    """Add and remove one mapping on gw1 while numbered flows cross the existing one.

    Each cycle: `natgw up` with the mapping added, then without it (CLI wall time,
    interpreter start included), then the same two changes through the library
    (`Gateway.apply`, what the CLI runs after its imports). Loss is counted by
    sequence number on the other flows; a second stream towards the new mapping
    shows when it starts forwarding.
    """
    pod2 = topo.plan.pod2_addr
    new_dst, new_real = host_in(EXTRA_C2_AS), host_in(EXTRA_C2_CIDR)
    # A bound only: the streams are stopped after the last change. It must outlast the
    # changes, which take many times their usual 0.1-0.7 s on a loaded machine (a
    # stream that ended early would leave later changes unobserved).
    seconds = 2 + cycles * 4 * (settle + 2.5) + 120
    streams = _Streams(topo, seconds)
    changes: list[dict] = []
    try:
        drops_before = udp_receive_errors(topo.pod2)
        streams.receive([f"{pod2}:{STREAM_PORT}", f"{new_real}:{NEW_PORT}"],
                        times=[f"{new_real}:{NEW_PORT}"])
        main = streams.send(topo.plan.target, STREAM_PORT, rate, flows)
        probe = streams.send(new_dst, NEW_PORT, 2000)
        time.sleep(1.0)
        for _ in range(cycles):
            for how in ("cli", "library"):
                for added in (True, False):
                    topo.write_natgw_configs(extra_mapping=added)
                    if how == "cli":
                        t0 = time.monotonic_ns()
                        took = topo.natgw_up(0)
                    else:
                        t0, took = _apply_in_process(topo)
                    changes.append({"how": how, "added": added, "t0_ns": t0, "seconds": took})
                    time.sleep(settle)
        time.sleep(0.5)
        (sent_main, _), got = streams.finish([main, probe])
        drops_after = udp_receive_errors(topo.pod2)
    finally:
        streams.close()
        topo.write_natgw_configs(extra_mapping=False)
    received = got["seqs"][f"{pod2}:{STREAM_PORT}"]
    missing = sorted(set(range(sent_main["sent"])) - set(received))
    lost_at = attribute_loss(missing, sent_main["start_ns"], rate, changes)
    arrivals = sorted(got["times"][f"{new_real}:{NEW_PORT}"])
    for c in changes:
        if c["added"]:
            after = [t for t in arrivals if t >= c["t0_ns"]]
            c["first_packet_s"] = (after[0] - c["t0_ns"]) / 1e9 if after else None
    def pick(how: str, added: bool, field: str) -> list[float]:
        return [c[field] for c in changes if c["how"] == how and c["added"] == added
                and c.get(field) is not None]
    return {
        "cycles": cycles, "stream_pps": rate, "stream_flows": flows,
        "stream_sent": sent_main["sent"], "stream_lost": seq_loss(sent_main["sent"], received),
        "lost_during": lost_at, "lost_in_changes": sum(
            n for k, n in lost_at.items() if k != "none"),
        "loss_bursts": loss_bursts(missing, rate), "receiver_drops": drops_after - drops_before,
        "add_cli_s": median(pick("cli", True, "seconds")),
        "remove_cli_s": median(pick("cli", False, "seconds")),
        "add_library_s": median(pick("library", True, "seconds")),
        "remove_library_s": median(pick("library", False, "seconds")),
        "add_cli_first_packet_s": median(pick("cli", True, "first_packet_s")),
        "add_library_first_packet_s": median(pick("library", True, "first_packet_s")),
        "changes": changes,
    }


def attribute_loss(missing: list[int], start_ns: int, rate: float,
                   changes: list[dict]) -> dict[str, int]:
    """Lost datagrams by the change during which they were sent ("none": no change ran).

    A datagram numbered n left about start + n / rate (the sender paces in 1 ms
    steps); a change runs from its t0 for its duration, plus 50 ms of slack.
    """
    out: dict[str, int] = {}
    for seq in missing:
        t = start_ns + seq / rate * 1e9
        label = "none"
        for c in changes:
            if c["t0_ns"] - 5e6 <= t <= c["t0_ns"] + c["seconds"] * 1e9 + 50e6:
                label = f"{c['how']} {'add' if c['added'] else 'remove'}"
                break
        out[label] = out.get(label, 0) + 1
    return out


def loss_bursts(missing: list[int], rate: float, limit: int = 20) -> list[list[float]]:
    """[seconds after the stream started, datagrams] of each run of consecutive losses."""
    runs: list[list[float]] = []
    for seq in missing:
        if runs and seq - runs[-1][2] <= 8:  # 8 flows round robin: a gap of a few is one run
            runs[-1][1] += 1
            runs[-1][2] = seq
        else:
            runs.append([seq / rate, 1, seq])
    return [[round(t, 3), n] for t, n, _ in runs[:limit]]


def udp_receive_errors(ns: str) -> int:
    """Datagrams a namespace's UDP sockets dropped (full buffers): the receiver's losses."""
    r = run(in_ns(ns, ["cat", "/proc/net/snmp"]), check=False)
    lines = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("Udp:")]
    if len(lines) < 2:
        return 0
    row = dict(zip(lines[0][1:], lines[1][1:], strict=False))
    return int(row.get("RcvbufErrors", 0)) + int(row.get("InErrors", 0))


def cold_up(topo: Topology, repeats: int) -> dict:
    """`natgw down` gw1 (pins gone), then `natgw up`: time to the first translated packet."""
    out = []
    for _ in range(repeats):
        topo.natgw_down(0)
        if (PIN_ROOT / topo.gateways[0]).exists():
            raise LabError(f"{topo.gateways[0]}: pins survived natgw down")
        streams = _Streams(topo, 60)
        try:
            streams.receive([f"{topo.plan.pod2_addr}:{STREAM_PORT}"])
            sender = streams.send(topo.plan.target, STREAM_PORT, 2000)
            time.sleep(0.3)
            t0 = time.monotonic_ns()
            wall = topo.natgw_up(0)
            time.sleep(2.0)  # over WireGuard the handshake follows the first packet
            _, got = streams.finish([sender])
        finally:
            streams.close()
        first = got.get("first", {}).get(f"{topo.plan.pod2_addr}:{STREAM_PORT}")
        out.append({"up_s": wall,
                    "first_packet_s": (first["t_ns"] - t0) / 1e9 if first else None,
                    "first_src": first["src"] if first else None,
                    "translated": bool(first) and first["src"] == topo.plan.pod1_seen_as})
    topo.check()
    return {"repeats": repeats, "runs": out,
            "up_s": median(r["up_s"] for r in out),
            "first_packet_s": median(r["first_packet_s"] for r in out),
            "all_translated": all(r["translated"] for r in out)}


def noop_up(topo: Topology, repeats: int) -> float | None:
    """`natgw up` with an unchanged file: the CLI's fixed cost."""
    return median(topo.natgw_up(0) for _ in range(repeats))


def _status_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def pinned_memory(gateway: str) -> dict:
    """Kernel memory of a gateway's pinned maps and programs (bpftool's memlock)."""
    maps, progs = {}, {}
    pdir = PIN_ROOT / gateway
    for entry in sorted(os.listdir(pdir)):
        kind = "prog" if entry.startswith("prog_") else "map"
        r = run(["bpftool", "-j", kind, "show", "pinned", str(pdir / entry)], check=False)
        if r.returncode != 0:
            continue
        info = json.loads(r.stdout)
        if kind == "map":
            maps[entry] = {"memlock": info.get("bytes_memlock"), "type": info.get("type"),
                           "max_entries": info.get("max_entries")}
        else:
            progs[entry] = {"memlock": info.get("bytes_memlock"),
                            "jited": info.get("bytes_jited"),
                            "xlated": info.get("bytes_xlated")}
    return {"maps": maps, "progs": progs,
            "maps_memlock": sum(m["memlock"] or 0 for m in maps.values()),
            "progs_memlock": sum(p["memlock"] or 0 for p in progs.values())}


def memory(topo: Topology, settle: float = 3.0) -> dict:
    """RSS of a foreground `natgw up` (after its no-op apply), and of wireguard-go."""
    proc = topo.natgw_up(0, foreground=True)
    try:
        time.sleep(settle)
        if proc.poll() is not None:
            raise LabError(f"foreground natgw up exited with {proc.returncode}")
        rss, hwm = _status_kb(proc.pid, "VmRSS"), _status_kb(proc.pid, "VmHWM")
    finally:
        topo.rec.end(proc.pid, timeout=10)
    engines = [_status_kb(pid, "VmRSS") for pid in topo.engine_pids()]
    topo.check()  # SIGTERM leaves the dataplane forwarding
    return {"natgw_rss_kb": rss, "natgw_hwm_kb": hwm,
            "wireguard_go_rss_kb": [e for e in engines if e is not None]}
