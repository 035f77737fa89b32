"""One gateway in one netns, two files that differ in every way, and a look at the world.

File A and file B share a tunnel peer whose mappings change, and each has a
peer of its own (A: an interface peer, B: a tunnel and an interface peer), so
going A -> B or B -> A adds, edits and removes peers and mappings. `world()`
reads what exists independently of natgw's own code paths (ip, tc, /proc,
the pins), so that a test can compare it with what a file asks for, or with
nothing at all after `down`.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from gateways import free_port

from lab.net import NATGW, natgw_hooks, natgw_programs
from natgw import keys

STATE_DIR = Path(os.environ.get("NATGW_STATE_DIR", "/run/natgw"))
FORWARDING = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")


def run(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([NATGW, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _out(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=20).stdout


@dataclass
class Setup:
    gw: str  # netns
    name: str  # gateway
    files: dict[str, Path]
    tunnels: dict[str, str]  # file -> tunnel device names
    veths: list[str]  # the admin's devices natgw attaches to
    expect: dict[str, dict] = field(default_factory=dict)  # file -> expected world


def build(lab, tmp: Path) -> Setup:
    gw, side = lab.netns("g"), lab.netns("s")
    v1, _ = lab.veth(gw, "192.168.91.1/24", side, "192.168.91.2/24")
    v2, _ = lab.veth(gw, "192.168.92.1/24", side, "192.168.92.2/24")
    # The LAN side: the route to cidrs makes v3 the fast path's LAN device; file B
    # names v4 too (lanDevices), so that going between the files adds and removes one.
    v3, _ = lab.veth(gw, "10.60.0.1/16", side, "10.60.0.2/16")
    v4, _ = lab.veth(gw, "10.61.0.1/16", side, "10.61.0.2/16")
    name = lab.name("k")
    key = tmp / "gw.key"
    key.write_text(keys.genkey() + "\n")
    key.chmod(0o600)
    pub = [keys.pubkey(keys.genkey()) for _ in range(2)]
    d1, d2 = lab.name("d1"), lab.name("d2")
    shared_a = [{"cidr": "10.244.0.0/16", "as": "10.245.0.0/16"},
                {"cidr": "172.30.0.0/24", "as": "10.250.0.0/24"}]
    shared_b = [{"cidr": "10.244.0.0/16", "as": "10.245.0.0/16"},
                {"cidr": "172.31.0.0/24", "as": "10.251.0.0/24"}]
    base = {"name": name, "cidrs": ["10.60.0.0/16"], "privateKeyFile": str(key),
            "engine": "wireguard-go", "mtu": 1420, "metrics": f"127.0.0.1:{free_port()}"}
    a = dict(base, peers=[
        {"name": "t1", "device": d1, "publicKey": pub[0], "listenPort": 51901,
         "remote": shared_a, "local": [{"cidr": "10.60.1.0/24", "as": "10.70.1.0/24"}]},
        {"name": "i1", "interface": v1, "remote": [{"cidr": "10.244.0.0/16",
                                                    "as": "10.246.0.0/16"}]},
    ])
    b = dict(base, lanDevices=[v3, v4], peers=[
        {"name": "t1", "device": d1, "publicKey": pub[0], "listenPort": 51901,
         "remote": shared_b},
        {"name": "t2", "device": d2, "publicKey": pub[1], "listenPort": 51902,
         "remote": [{"cidr": "10.244.0.0/16", "as": "10.247.0.0/16"}]},
        {"name": "i2", "interface": v2, "remote": [{"cidr": "10.244.0.0/16",
                                                    "as": "10.248.0.0/16"}]},
    ])
    files = {}
    for tag, data in (("A", a), ("B", b)):
        files[tag] = tmp / f"{tag}.yaml"
        files[tag].write_text(yaml.safe_dump(data, sort_keys=False))
    setup = Setup(gw, name, files, {"A": [d1], "B": [d1, d2]}, [v1, v2, v3, v4])
    setup.expect = {"A": expected(a, [v3]), "B": expected(b, [v3, v4])}
    lab.on_cleanup(lambda: run("--netns", gw, "down", name))
    return setup


def expected(data: dict, lan: list[str]) -> dict:
    """The world a file asks for, in world()'s terms (lan: its LAN devices)."""
    filters, routes, mappings = set(), set(), {}
    tunnels = set()
    for p in data["peers"]:
        dev = p.get("interface") or p["device"]
        if "interface" not in p:
            tunnels.add(dev)
        filters.add(dev)
        routes |= {(r.get("as", r["cidr"]), dev) for r in p["remote"]}
        mappings[dev] = {("remote", r["cidr"], r["as"]) for r in p["remote"] if "as" in r} | \
            {("local", m["cidr"], m["as"]) for m in p.get("local", [])}
    return {"tunnels": tunnels, "filters": filters, "lan": set(lan), "routes": routes,
            "mappings": mappings,
            "orphans": [], "peers": {p["name"] for p in data["peers"]}, "pins": True}


def _links(ns: str) -> dict[str, int]:
    return {link["ifname"]: link["ifindex"] for link in json.loads(_out("ip", "-n", ns, "-j",
                                                                       "link"))}


def _tc_show(ns: str, *args: str) -> str:
    """`tc ... show` output; "" for a device that went since the links were listed (a
    killed wireguard-go takes its device with it)."""
    r = subprocess.run(["ip", "netns", "exec", ns, "tc", *args], capture_output=True,
                       text=True, timeout=20)
    if r.returncode != 0 and "Cannot find device" in r.stderr:
        return ""
    r.check_returncode()
    return r.stdout


def _natgw_filter(ns: str, dev: str) -> bool:
    """natgw's programs on both hooks (tcx links or tc filters)."""
    try:
        return len(natgw_hooks(ns, dev)) == 2
    except subprocess.TimeoutExpired:
        return False


def _lan_filter(ns: str, dev: str) -> bool:
    """natgw's LAN program on the device's ingress (tcx link or tc filter)."""
    try:
        return natgw_programs(ns, dev).get("ingress") == "lan"
    except subprocess.TimeoutExpired:
        return False


def _clsact(ns: str, dev: str) -> bool:
    return "clsact" in _tc_show(ns, "qdisc", "show", "dev", dev)


def wireguard_go_processes(devices: list[str]) -> list[int]:
    """PIDs of any live `wireguard-go -f <device>`, recorded or not."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[:-1]
            stat = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if stat not in ("Z", "X") and len(argv) >= 2 and argv[0].endswith(b"wireguard-go") \
                and argv[-1].decode() in devices:
            out.append(int(entry))
    return out


def world(s: Setup) -> dict:
    """What exists of the gateway now."""
    from natgw.dataplane import Dataplane

    links = _links(s.gw)
    devices = set(s.tunnels["B"]) | set(s.veths)
    routes = set()
    for r in json.loads(_out("ip", "-n", s.gw, "-j", "route", "show", "proto", "78")):
        routes.add((r["dst"], r["dev"]))
    for r in json.loads(_out("ip", "-n", s.gw, "-6", "-j", "route", "show", "proto", "78")):
        routes.add((r["dst"], r["dev"]))
    by_index = {i: n for n, i in links.items()}
    mappings: dict[str, set] = {}
    orphans: list = []
    pins = os.path.isdir(f"/sys/fs/bpf/natgw/{s.name}")
    if pins:
        from natgw.dataplane.bpfsys import BpfError

        try:
            dp = Dataplane.open(s.name)
        except BpfError as e:  # being re-pinned right now
            pins = f"partial: {e}"
        else:
            with dp:
                for m in dp.mappings():
                    dev = by_index.get(m.ifindex, f"ifindex:{m.ifindex}")
                    mappings.setdefault(dev, set()).add(
                        (m.mapping.kind, str(m.mapping.cidr), str(m.mapping.as_)))
                orphans = dp.tables.orphans()
    state = None
    try:
        state = json.loads((STATE_DIR / f"{s.name}.json").read_text())
    except FileNotFoundError:
        pass
    return {
        "tunnels": {d for d in s.tunnels["B"] if d in links},
        "filters": {d for d in devices if d in links and _natgw_filter(s.gw, d)},
        "lan": {d for d in devices if d in links and _lan_filter(s.gw, d)},
        "clsact": {d for d in devices if d in links and _clsact(s.gw, d)},
        "routes": routes,
        "mappings": mappings,
        "orphans": orphans,
        "peers": {p["name"] for p in state["peers"]} if state else None,
        "pins": pins,
        "processes": wireguard_go_processes(s.tunnels["B"]),
        "files": sorted(p.name for p in STATE_DIR.glob(f"{s.name}.*")
                        if not p.name.endswith(".lock")),
        "sysctls": sysctls(s.gw),
    }


def sysctls(ns: str) -> dict[str, str]:
    return {k: _out("ip", "netns", "exec", ns, "sysctl", "-n", k).strip() for k in FORWARDING}


def converged(s: Setup, tag: str) -> list[str]:
    """Differences between the world and file `tag`; [] when it is exactly the file."""
    w, e = world(s), s.expect[tag]
    diffs = [f"{k}: have {w[k]!r}, want {e[k]!r}" for k in e if w[k] != e[k]]
    if len(w["processes"]) != len(e["tunnels"]):
        diffs.append(f"wireguard-go processes {w['processes']} for tunnels {e['tunnels']}")
    return diffs


def clean(s: Setup, sysctls_before: dict[str, str]) -> list[str]:
    """What is left of the gateway; [] when nothing is (a lock file may stay)."""
    w = world(s)
    left = [f"{k}: {w[k]!r}" for k in ("tunnels", "filters", "lan", "clsact", "routes",
                                        "mappings",
                                        "processes", "files") if w[k]]
    if w["pins"]:
        left.append("pins")
    if w["sysctls"] != sysctls_before:
        left.append(f"sysctls {w['sysctls']} (were {sysctls_before})")
    return left
