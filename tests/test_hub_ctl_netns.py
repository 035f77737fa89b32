"""A hub under the control plane's guarantees: killed at each of its steps, `up` converges
and `down` leaves nothing; a device or route natgw did not make is refused and kept;
what is removed by hand from the hub is found and put back.

One gateway whose hub changes between two files (A: clients a and b; B: b edited, c
added, a removed, a hub.local mapping), and a third file without a hub (C). world()
reads the netns with ip, tc and wg, not through natgw's own code.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from crash_world import STATE_DIR, run, sysctls, wireguard_go_processes
from gateways import free_port

from lab.net import natgw_hooks, remove_natgw_hook
from natgw import keys
from natgw.faults import HUB_STEPS, KILL_ENV

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

KILLED = -9
POOL = "10.192.0.0/24"


def _out(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=20).stdout


@dataclass
class Hub:
    gw: str  # netns
    name: str  # gateway
    dev: str  # the hub's device
    files: dict[str, Path]
    expect: dict[str, dict]


def client(name: str, pub: str, remote: list[dict] | None = None) -> dict:
    return {"name": name, "publicKey": pub, **({"remote": remote} if remote else {})}


@pytest.fixture()
def hub(netns_lab, tmp_path, monkeypatch) -> Hub:
    if shutil.which("wireguard-go") is None or shutil.which("wg") is None:
        pytest.skip("needs wireguard-go and wg")
    monkeypatch.setenv("NATGW_LIB_DIR", str(tmp_path / "lib"))  # the pool record
    gw = netns_lab.netns("g")
    name, dev = netns_lab.name("hk"), netns_lab.name("hd")
    key = tmp_path / "gw.key"
    key.write_text(keys.genkey() + "\n")
    key.chmod(0o600)
    pub = [keys.pubkey(keys.genkey()) for _ in range(3)]
    base = {"name": name, "cidrs": ["10.60.0.0/16"], "privateKeyFile": str(key),
            "engine": "wireguard-go", "mtu": 1420, "metrics": f"127.0.0.1:{free_port()}",
            "peers": []}
    hub_base = {"address": "10.192.0.1/24", "listenPort": free_port(), "device": dev}
    a = dict(base, hub=dict(hub_base, clients=[
        client("a", pub[0], [{"cidr": "10.244.0.0/16", "as": "10.201.0.0/16"}]),
        client("b", pub[1], [{"cidr": "10.8.0.0/16"}]),
    ]))
    b = dict(base, hub=dict(hub_base, local=[{"cidr": "10.60.1.0/24", "as": "10.70.1.0/24"}],
                            clients=[
        client("b", pub[1], [{"cidr": "10.9.0.0/16"}]),
        client("c", pub[2], [{"cidr": "10.244.0.0/16", "as": "10.203.0.0/16"}]),
    ]))
    files = {}
    for tag, data in (("A", a), ("B", b), ("C", base)):
        files[tag] = tmp_path / f"{tag}.yaml"
        files[tag].write_text(yaml.safe_dump(data, sort_keys=False))
    netns_lab.on_cleanup(lambda: run("--netns", gw, "down", name))
    return Hub(gw, name, dev, files, {"A": expected(a, dev), "B": expected(b, dev),
                                      "C": expected(base, dev)})


def expected(data: dict, dev: str) -> dict:
    """The world a file asks for, in world()'s terms."""
    hub = data.get("hub")
    if hub is None:
        return {"device": False, "filters": False, "routes": set(), "mappings": set(),
                "peers": {}, "orphans": [], "processes": 0}
    routes = {(POOL, dev)} | {(r.get("as", r["cidr"]), dev)
                              for c in hub["clients"] for r in c.get("remote", [])}
    mappings = {("remote", r["cidr"], r["as"]) for c in hub["clients"]
                for r in c.get("remote", []) if "as" in r}
    mappings |= {("local", m["cidr"], m["as"]) for m in hub.get("local", [])}
    return {"device": True, "filters": True, "routes": routes, "mappings": mappings,
            "peers": {c["publicKey"]: {r["cidr"] for r in c.get("remote", [])}
                      for c in hub["clients"]},
            "orphans": [], "processes": 1, "address": "10.192.0.1/24"}


def world(h: Hub) -> dict:
    """What exists of the hub now."""
    from natgw.dataplane import Dataplane

    links = {link["ifname"]: link["ifindex"]
             for link in json.loads(_out("ip", "-n", h.gw, "-j", "link"))}
    present = h.dev in links
    routes = {(r["dst"], r["dev"]) for r in
              json.loads(_out("ip", "-n", h.gw, "-j", "route", "show", "proto", "78"))}
    filters = present and len(natgw_hooks(h.gw, h.dev)) == 2
    mappings, orphans = set(), []
    if Path(f"/sys/fs/bpf/natgw/{h.name}").is_dir() and present:
        with Dataplane.open(h.name) as dp:
            mappings = {(m.mapping.kind, str(m.mapping.cidr), str(m.mapping.as_))
                        for m in dp.mappings(links[h.dev])}
            orphans = dp.tables.orphans()
    peers: dict[str, set] = {}
    address = None
    if present:
        dump = _out("ip", "netns", "exec", h.gw, "wg", "show", h.dev, "allowed-ips")
        for line in dump.splitlines():
            key, *nets = line.split()
            peers[key] = {n for n in nets if not n.startswith("10.192.0.")}
        addrs = json.loads(_out("ip", "-n", h.gw, "-j", "addr", "show", "dev", h.dev))
        address = [f"{a['local']}/{a['prefixlen']}" for a in addrs[0]["addr_info"]
                   if a.get("scope") == "global"]
        address = address[0] if len(address) == 1 else address
    out = {"device": present, "filters": filters, "routes": routes, "mappings": mappings,
           "peers": peers, "orphans": orphans,
           "processes": len(wireguard_go_processes([h.dev]))}
    if present:
        out["address"] = address
    return out


def converged(h: Hub, tag: str) -> list[str]:
    w, e = world(h), h.expect[tag]
    return [f"{k}: have {w.get(k)!r}, want {v!r}" for k, v in e.items() if w.get(k) != v]


def clean(h: Hub, sysctls_before: dict) -> list[str]:
    w = world(h)
    left = [f"{k}: {w[k]!r}" for k in ("device", "filters", "routes", "processes") if w[k]]
    if Path(f"/sys/fs/bpf/natgw/{h.name}").exists():
        left.append("pins")
    files = sorted(p.name for p in STATE_DIR.glob(f"{h.name}.*") if not p.name.endswith(".lock"))
    if files:
        left.append(f"files {files}")
    if sysctls(h.gw) != sysctls_before:
        left.append("sysctls")
    return left


def up(h: Hub, tag: str, env: dict | None = None):
    return run("--netns", h.gw, "up", str(h.files[tag]), "--detach", env=env)


def test_hub_killed_at_each_step_then_up_converges(hub):
    h = hub
    r = up(h, "A")
    assert r.returncode == 0, r.stderr
    assert converged(h, "A") == []
    current, reached = "A", set()
    # A <-> B walks the hub's apply steps; B -> C removes the hub (its remove steps).
    for step in HUB_STEPS:
        target = "C" if step.startswith("hub-remove") else ("B" if current == "A" else "A")
        if target == "C" and current != "B":
            assert up(h, "B").returncode == 0
            current = "B"
        r = up(h, target, env={KILL_ENV: step})
        assert r.returncode in (KILLED, 0), (step, r.stderr)
        if r.returncode == KILLED:
            reached.add(step)
        r = up(h, target)
        assert r.returncode == 0, (step, r.stderr)
        assert converged(h, target) == [], step
        current = target
        if target == "C":
            assert up(h, "B").returncode == 0
            current = "B"
    assert reached == set(HUB_STEPS)


@pytest.mark.parametrize("step", ["hub-intent", "hub-device-created", "hub-filters-attached",
                                  "hub-tunnel-configured", "hub-routes-set"])
def test_down_after_a_hub_kill_leaves_nothing(hub, step):
    h = hub
    before = sysctls(h.gw)
    r = up(h, "A", env={KILL_ENV: step})  # the hub's first apply, cut short
    assert r.returncode == KILLED, r.stderr
    r = run("--netns", h.gw, "down", h.name)
    assert r.returncode == 0, r.stderr
    assert clean(h, before) == []


def test_foreign_device_and_route_are_refused_and_kept(hub):
    h = hub
    subprocess.run(["ip", "-n", h.gw, "link", "add", h.dev, "type", "veth", "peer", "name",
                    h.dev + "x"], check=True)
    r = up(h, "A")
    assert r.returncode == 1 and "exists and natgw did not create it" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert json.loads(_out("ip", "-n", h.gw, "-j", "-d", "link", "show", h.dev))[0][
        "linkinfo"]["info_kind"] == "veth"  # someone else's, kept
    subprocess.run(["ip", "-n", h.gw, "link", "del", h.dev], check=True)
    assert up(h, "A").returncode == 0
    # B routes 10.203.0.0/16 into the hub; someone else routes it already.
    subprocess.run(["ip", "-n", h.gw, "route", "add", "blackhole", "10.203.0.0/16",
                    "proto", "static"], check=True)
    r = up(h, "B")
    assert r.returncode == 1, r.stderr
    assert "route 10.203.0.0/16 exists (proto 4) and natgw did not create it" in r.stderr
    assert "the previous configuration is restored" in r.stderr
    kept = _out("ip", "-n", h.gw, "route", "show", "10.203.0.0/16")
    assert "blackhole" in kept and "proto static" in kept
    assert converged(h, "A") == []


def test_hub_drift_found_and_repaired(hub):
    from natgw.config import load_config
    from natgw.gateway import Gateway

    h = hub
    assert up(h, "B").returncode == 0
    gw = Gateway(load_config(h.files["B"]), h.gw, h.files["B"])
    assert gw.drift() == []
    subprocess.run(["ip", "-n", h.gw, "route", "del", "10.203.0.0/16", "proto", "78"],
                   check=True)
    remove_natgw_hook(h.gw, h.dev, "ingress")
    found = gw.drift()
    assert f"route 10.203.0.0/16 dev {h.dev}" in found
    assert f"filter {h.dev} ingress" in found
    assert gw.repair(found)
    assert converged(h, "B") == []
    assert gw.drift() == []
