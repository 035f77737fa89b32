"""Hub scale: 1,000 clients on one hub. Reconcile, one-client edit and status times.

    .venv/bin/python -m bench.hub_scale [--clients 1000] [--rounds 5] [--no-write]

A benchmark, not a test: it prints medians and spreads and rewrites the "Hub
scale" section of BENCHMARKS.md; it asserts nothing about speed.

wireguard-go: a real hub in a throwaway network namespace (run-unique names,
removed in `finally`), with the dataplane loaded (the BPF compile is timed
apart: it is a build, not a reconcile). Each round: `down`, then a first `up`
of all clients, then edits of one client (a new remote range, a removal, an
addition), then `status` (gateway status and the hub's per-client status).

kernel engine: this machine has no WireGuard module, so the engine's own code
runs against a stand-in for the generic-netlink socket: reading back a device
of N peers (parse_info over the dump messages), planning, and building the
per-peer `set` calls. The netlink round trips themselves are not in it.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
BEGIN, END = "<!-- hub_scale:begin -->", "<!-- hub_scale:end -->"


def client_entry(i: int, pub: str) -> dict[str, Any]:
    """Client i: a /24 of its own behind it, shown to the hub under another /24."""
    real = ipaddress.ip_network("100.64.0.0/24").network_address + 256 * i
    shown = ipaddress.ip_network("10.128.0.0/24").network_address + 256 * i
    return {"name": f"c{i}", "publicKey": pub,
            "remote": [{"cidr": f"{real}/24", "as": f"{shown}/24"}]}


def hub_data(name: str, key_file: Path, device: str, clients: list[dict]) -> dict[str, Any]:
    return {
        "name": name, "cidrs": ["172.25.0.0/16"], "privateKeyFile": str(key_file),
        "engine": "wireguard-go",
        "hub": {"address": "10.192.0.1/20", "listenPort": 8765, "device": device,
                "local": [{"cidr": "172.25.0.0/16", "as": "10.250.0.0/16"}],
                "clients": clients},
    }


@dataclass(frozen=True)
class Sample:
    wall: float  # seconds
    cpu: float  # CPU seconds of natgw's process and its `ip` children (not wireguard-go)


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Sample, Any]:
    t, c = time.perf_counter(), _cpu()
    out = fn(*args)
    return Sample(time.perf_counter() - t, _cpu() - c), out


def record(results: dict[str, list[Sample]], key: str, sample: Sample) -> None:
    results.setdefault(key, []).append(sample)


def summary(xs: list[Sample]) -> str:
    ms = sorted(x.wall * 1000 for x in xs)
    if len(ms) == 1:
        return f"{ms[0]:.0f} ms (1 run)"
    return f"{statistics.median(ms):.0f} ms (min {ms[0]:.0f}, max {ms[-1]:.0f}, n={len(ms)})"


# -- wireguard-go: a real hub ------------------------------------------------


def run_wireguard_go(n: int, rounds: int) -> dict[str, list[Sample]]:
    import yaml

    from natgw import keys
    from natgw.config import parse_config
    from natgw.dataplane import Dataplane
    from natgw.gateway import Gateway, down
    from natgw.status import status

    prefix = f"b{os.getpid() % 10000}{secrets.token_hex(1)}"
    netns, name, device = f"{prefix}hub", f"{prefix}legacy", f"{prefix}hub"
    tmp = Path(tempfile.mkdtemp(prefix="natgw-hub-scale-"))
    os.environ["NATGW_LIB_DIR"] = str(tmp / "lib")
    from natgw import pool  # after NATGW_LIB_DIR: the pool record stays in tmp

    pool.LIB_DIR = tmp / "lib"
    key_file = tmp / "hub.key"
    key_file.write_text(keys.genkey() + "\n")
    key_file.chmod(0o600)
    pubs = [keys.pubkey(keys.genkey()) for _ in range(n + rounds * 3 + 1)]
    clients = [client_entry(i, pubs[i]) for i in range(n)]
    out: dict[str, list[Sample]] = {k: [] for k in (
        "parse", "compile", "first_up", "edit_remote", "edit_remove", "edit_add",
        "reapply_unchanged", "status")}
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        t, dp = timed(lambda: Dataplane.load(name))
        dp.close()
        record(out, "compile", t)

        def cfg_of(cl: list[dict]):
            return parse_config(hub_data(name, key_file, device, cl), tmp)

        def both_status(gw: str, ns: str) -> tuple[Any, Any]:
            report = status(gw, ns)[0]
            return report.peers, report.hub

        extra = n
        for r in range(rounds):
            down(name, netns)  # also unpins the dataplane: load it again, untimed
            pool.forget(name)
            Dataplane.load(name).close()
            t, cfg = timed(cfg_of, clients)
            record(out, "parse", t)
            t, rep = timed(Gateway(cfg, netns).apply)
            assert len(rep.added) == n, rep
            record(out, "first_up", t)
            t, rep = timed(Gateway(cfg, netns).apply)
            assert len(rep.unchanged) == n, rep
            record(out, "reapply_unchanged", t)
            # One client gets another remote range.
            edited = [dict(c) for c in clients]
            k = (r * 37) % n
            edited[k] = dict(edited[k], remote=[*edited[k]["remote"],
                                                {"cidr": f"198.18.{r}.0/24"}])
            cfg = cfg_of(edited)
            t, rep = timed(Gateway(cfg, netns).apply)
            assert rep.updated == [f"c{k}"], rep.updated
            record(out, "edit_remote", t)
            # One client removed, then one new client added.
            del edited[(k + 1) % n]
            cfg = cfg_of(edited)
            t, rep = timed(Gateway(cfg, netns).apply)
            assert len(rep.removed) == 1, rep.removed
            record(out, "edit_remove", t)
            edited.append(client_entry(extra, pubs[extra]))
            extra += 1
            cfg = cfg_of(edited)
            t, rep = timed(Gateway(cfg, netns).apply)
            assert len(rep.added) == 1, rep.added
            record(out, "edit_add", t)
            for _ in range(3):
                t, (_peers, hub) = timed(both_status, name, netns)
                assert hub is not None and len(hub.clients) == len(edited)
                record(out, "status", t)
        # Keep the yaml import honest: the config a user would write parses the same.
        assert yaml.safe_load(yaml.safe_dump(hub_data(name, key_file, device, clients[:1])))
    finally:
        try:
            down(name, netns)
        finally:
            subprocess.run(["ip", "netns", "del", netns], check=False)
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# -- the kernel engine's code path, without the module -----------------------


class _Msg:
    """Stand-in for one pyroute2 WireGuard dump message (only get_attr is used)."""

    def __init__(self, attrs: dict[str, Any]) -> None:
        self.attrs = attrs

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)


class _Addr(dict):
    pass


class FakeWireGuard:
    """A device in memory that answers `info` with dump messages and counts `set` calls."""

    def __init__(self, peers: dict[bytes, list[str]], private_key: bytes, port: int) -> None:
        self.peers, self.private_key, self.port, self.sets = peers, private_key, port, 0
        self.dump: list[_Msg] = []

    def __enter__(self) -> FakeWireGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def info(self, ifname: str) -> list[_Msg]:
        return self.dump

    def snapshot(self) -> None:
        """Build the dump `info` answers with (what the kernel would send)."""
        import base64

        peer_msgs = [
            _Msg({"WGPEER_A_PUBLIC_KEY": base64.b64encode(k).decode(),
                  "WGPEER_A_ALLOWEDIPS": [_Addr(addr=a) for a in ips],
                  "WGPEER_A_RX_BYTES": 0, "WGPEER_A_TX_BYTES": 0})
            for k, ips in self.peers.items()]
        head = {"WGDEVICE_A_PRIVATE_KEY": base64.b64encode(self.private_key).decode(),
                "WGDEVICE_A_LISTEN_PORT": self.port}
        # The kernel splits a big dump over messages; ~100 peers each is in its range.
        chunks = [peer_msgs[i:i + 100] for i in range(0, len(peer_msgs), 100)] or [[]]
        self.dump = [_Msg({**head, "WGDEVICE_A_PEERS": c}) for c in chunks]

    def set(self, **call: Any) -> None:
        import base64

        self.sets += 1
        if "peer" in call:
            p = call["peer"]
            key = base64.b64decode(p["public_key"])
            if p.get("remove"):
                self.peers.pop(key, None)
            else:
                self.peers[key] = list(p["allowed_ips"])
        if "private_key" in call:
            self.private_key = base64.b64decode(call["private_key"])
        if "listen_port" in call:
            self.port = call["listen_port"]


def run_kernel_path(n: int, rounds: int) -> dict[str, list[Sample]]:
    from natgw import keys
    from natgw.config import parse_config
    from natgw.hub import device_config
    from natgw.pool import assign
    from natgw.wireguard import KernelEngine

    tmp = Path(tempfile.mkdtemp(prefix="natgw-hub-kernel-"))
    try:
        key_file = tmp / "hub.key"
        key_file.write_text(keys.genkey() + "\n")
        key_file.chmod(0o600)
        pubs = [keys.pubkey(keys.genkey()) for _ in range(n + 1)]
        clients = [client_entry(i, pubs[i]) for i in range(n)]
        cfg = parse_config(hub_data("k", key_file, "khub", clients), tmp)
        edited = [dict(c) for c in clients]
        edited[3] = dict(edited[3], remote=[*edited[3]["remote"], {"cidr": "198.18.0.0/24"}])
        cfg2 = parse_config(hub_data("k", key_file, "khub", edited), tmp)
        out: dict[str, list[Sample]] = {"kernel_first": [], "kernel_edit": [], "kernel_status": []}
        sets = {}
        for _ in range(rounds):
            dev = FakeWireGuard({}, bytes(32), 0)
            engine = KernelEngine(iproute=lambda ns: None, wireguard=lambda ns, d=dev: d)
            dc = device_config(cfg, assign(cfg.hub, {}))
            dev.snapshot()
            t, _ = timed(engine.configure, "khub", None, dc)
            record(out, "kernel_first", t)
            sets["first"] = dev.sets
            dev.sets = 0
            dc2 = device_config(cfg2, assign(cfg2.hub, {}))
            dev.snapshot()  # the stand-in's dump is built outside the timing
            t, _ = timed(engine.configure, "khub", None, dc2)
            record(out, "kernel_edit", t)
            sets["edit"] = dev.sets
            dev.snapshot()
            t, st = timed(engine.status, "khub", None)
            assert len(st.peers) == n
            record(out, "kernel_status", t)
        print(f"kernel path: set calls first up {sets['first']}, edit {sets['edit']}")
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- report ------------------------------------------------------------------

ROWS = [
    ("first_up", "first `up` of all clients (reconcile: Gateway.apply)", 2.0),
    ("edit_remote", "edit of one client (a remote range added)", 0.2),
    ("edit_remove", "one client removed", 0.2),
    ("edit_add", "one client added", 0.2),
    ("reapply_unchanged", "re-apply, nothing changed", None),
    ("status", "status (gateway status + per-client hub status)", 1.0),
    ("parse", "parse and validate the file (not reconcile; `up` adds it)", None),
    ("compile", "dataplane compile and load (once per boot; not reconcile)", None),
    ("kernel_first", "kernel engine path: first configure (plan + set calls)", None),
    ("kernel_edit", "kernel engine path: one-client edit (dump, plan, 1 set call)", None),
    ("kernel_status", "kernel engine path: status (parse a 1,000-peer dump)", None),
]


def _other_states() -> int:
    return len(list(Path("/run/natgw").glob("*.json"))) if Path("/run/natgw").is_dir() else 0


def render(n: int, results: dict[str, list[Sample]]) -> str:
    lines = [
        BEGIN,
        f"{n} clients on one hub, one /24 remote mapping and route each, `hub.local` one "
        f"mapping; pool /20. Median over rounds (min, max). Written by "
        f"`python -m bench.hub_scale` on {time.strftime('%Y-%m-%d')}; the machine is shared "
        "with other jobs, so spreads are wide.",
        "",
        f"Load average while it ran: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
        f"{_other_states()} other gateways' state files in /run/natgw (every apply reads "
        "them: the host-wide device-name check). CPU is natgw's own process and its `ip` "
        "children (not wireguard-go's).",
        "",
        "| what | wall time | CPU time (median) | target (wall) |",
        "|---|---|---|---|",
    ]
    for key, label, target in ROWS:
        if results.get(key):
            med = statistics.median(x.wall for x in results[key])
            verdict = "" if target is None else (
                f"< {target:g} s: {'met' if med < target else 'NOT met'}")
            cpu = f"{statistics.median(x.cpu for x in results[key]) * 1000:.0f} ms"
            lines.append(f"| {label} | {summary(results[key])} | {cpu} | {verdict} |")
    lines += ["", END]
    return "\n".join(lines)


INTRO = """\
```sh
.venv/bin/python -m bench.hub_scale            # ~5 min: 5 rounds, rewrites the table below
.venv/bin/python -m bench.hub_scale --no-write --rounds 1 --clients 200
```

One hub (`hub:`) with a thousand clients, in a throwaway netns, wireguard-go as the
engine (no clients dial in: the cost measured is natgw's reconcile, not WireGuard
handshakes). Each round: `down`, the dataplane loaded again (timed apart: a BPF
compile, once per boot), then `Gateway.apply` of all clients (first up), a re-apply
of the same file, one client edited (a remote range added), one removed, one added,
and three `status` reads. Times are Python wall clock of the library calls, without
the `natgw` process start and the file parse (listed apart).

How an edit stays small: the hub's WireGuard peers, mappings, routes and address are
diffed against what the last apply recorded for the same device (`natgw.hub`), and
written with one `ip -batch` and one UAPI `set`; a recreated device gets everything
again. The kernel engine's rows run `KernelEngine.configure`/`status` against a
stand-in for the generic-netlink socket (this machine has no WireGuard module): they
include reading a 1,000-peer dump back, planning and building the `set` calls, not
the netlink round trips (one per changed peer; a first up makes 1,001).
"""


def write_section(text: str) -> None:
    doc = BENCHMARKS.read_text()
    if BEGIN in doc:
        doc = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: text, doc, flags=re.S)
    else:
        doc = doc.rstrip("\n") + "\n\n## Hub scale\n\n" + INTRO + "\n" + text + "\n"
    BENCHMARKS.write_text(doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md")
    ap.add_argument("--kernel-only", action="store_true")
    args = ap.parse_args(argv)
    results: dict[str, list[Sample]] = {}
    results.update(run_kernel_path(args.clients, args.rounds))
    if not args.kernel_only:
        if os.geteuid() != 0 or shutil.which("wireguard-go") is None:
            print("hub_scale: the wireguard-go part needs root and wireguard-go", file=sys.stderr)
            return 1
        results.update(run_wireguard_go(args.clients, args.rounds))
    text = render(args.clients, results)
    print(text)
    if not args.no_write:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
