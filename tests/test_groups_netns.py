"""Replica groups end to end: one gateway, a group of two WireGuard replicas, one topology.

  gw ==wg (dev …wa, 192.168.81.0/24)== r1
     ==wg (dev …wb, 192.168.82.0/24)== r2

r1 and r2 are natgw gateways too (one peer each: gw), both replicas of one remote
cluster: gw routes 10.245.0.0/16 and fd00:245::/64 over both devices with one
multipath route (nexthop objects), weights 1 and 3. Keepalives every second, so a
member is stale after the default 4 s. Silence is made in the replica's netns (a
blackhole route to gw): nothing leaves the namespaces.
The tests run in file order on one topology: each leaves it as it found it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from gateways import free_port, write_config

from lab.keys import new_key
from lab.net import ip, natgw
from lab.netnslab import NetnsLab, netns_unavailable_reason

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

RANGES = ["10.245.0.0/16", "fd00:245::/64"]


@dataclass
class Topology:
    gw: str  # our gateway's netns (and gateway name)
    config: Path
    devices: dict[str, str]  # member peer -> its device in gw
    replicas: dict[str, str]  # member peer -> the replica's netns
    lab: NetnsLab


@pytest.fixture(scope="module")
def topo(tmp_path_factory):
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    if shutil.which("wireguard-go") is None:
        pytest.skip("needs wireguard-go")
    tmp = tmp_path_factory.mktemp("groups")
    with NetnsLab() as lab:
        gw = lab.netns("gw")
        ours = new_key(tmp / "gw.key")
        members, devices, replicas = [], {}, {}
        for i, tag in ((1, "a"), (2, "b")):
            r = lab.netns(f"r{i}")
            lab.veth(gw, f"192.168.8{i}.1/24", r, f"192.168.8{i}.2/24")
            name, dev = f"r{i}", lab.name(f"w{tag}")
            devices[name], replicas[name] = dev, r
            rkey = new_key(tmp / f"r{i}.key")
            members.append({"name": name, "device": dev, "publicKey": rkey,
                            "endpoint": f"192.168.8{i}.2:51820", "listenPort": 51820 + i,
                            "persistentKeepalive": 1, "group": "far", "weight": 2 * i - 1,
                            "remote": [{"cidr": "10.244.0.0/16", "as": RANGES[0]},
                                       {"cidr": "fd00:244::/64", "as": RANGES[1]}]})
            rcfg = write_config(tmp / f"r{i}.yaml", {
                "name": r, "cidrs": ["10.244.0.0/16", "fd00:244::/64"],
                "privateKeyFile": str(tmp / f"r{i}.key"), "engine": "wireguard-go",
                "metrics": f"127.0.0.1:{free_port()}",
                "peers": [{"name": "gw", "device": lab.name(f"x{tag}"), "publicKey": ours,
                           "endpoint": f"192.168.8{i}.1:{51820 + i}", "listenPort": 51820,
                           "persistentKeepalive": 1,
                           "remote": [{"cidr": "10.244.0.0/16", "as": "10.246.0.0/16"},
                                      {"cidr": "fd00:244::/64", "as": "fd00:246::/64"}]}]})
            lab.on_cleanup(lambda r=r, c=rcfg: natgw("--netns", r, "down", str(c), check=False))
            natgw("--netns", r, "up", str(rcfg), "--detach")
        config = write_config(tmp / "gw.yaml", {
            "name": gw, "cidrs": ["10.244.0.0/16", "fd00:244::/64"],
            "privateKeyFile": str(tmp / "gw.key"), "engine": "wireguard-go",
            "metrics": f"127.0.0.1:{free_port()}", "peers": members})
        lab.on_cleanup(lambda: natgw("--netns", gw, "down", str(config), check=False))
        r = natgw("--netns", gw, "up", str(config), "--detach")
        assert r.returncode == 0, r.stderr
        yield Topology(gw, config, devices, replicas, lab)


def routes(netns: str) -> dict[str, list[tuple[str, int]]]:
    """natgw's routes (proto 78): destination -> sorted (device, weight) next hops."""
    out = {}
    for family in ("-4", "-6"):
        text = subprocess.run(["ip", "-n", netns, "-j", family, "route", "show", "proto", "78"],
                              capture_output=True, text=True, check=True).stdout
        for r in json.loads(text or "[]"):
            hops = r.get("nexthops") or [{"dev": r["dev"], "weight": 1}]
            out[r["dst"]] = sorted((h["dev"], h.get("weight", 1)) for h in hops)
    return out


def nexthops(netns: str) -> list[dict]:
    text = subprocess.run(["ip", "-n", netns, "-j", "nexthop", "show"], capture_output=True,
                          text=True, check=True).stdout
    return json.loads(text or "[]")


def status(t: Topology) -> dict[str, dict]:
    r = natgw("--netns", t.gw, "status", str(t.config), "--json")
    (gateway,) = json.loads(r.stdout)
    return {p["name"]: p for p in gateway["peers"]}


def test_detach_routes_every_range_over_every_member(topo):
    t = topo
    a, b = t.devices["r1"], t.devices["r2"]
    assert routes(t.gw) == {net: [(a, 1), (b, 3)] for net in RANGES}
    st = status(t)
    for peer in ("r1", "r2"):
        assert st[peer]["group"] == "far" and st[peer]["in_route"] is True
        assert st[peer]["routes"] == []  # the group's route carries them


def test_down_removes_the_group_and_nothing_foreign(topo):
    t = topo
    # Someone else's nexthop object in the gateway's netns, on a member's underlay link.
    link = t.lab.name("v1a")
    ip("-n", t.gw, "-6", "nexthop", "add", "id", "7", "dev", link)
    r = natgw("--netns", t.gw, "down", str(t.config))
    assert r.returncode == 0, r.stderr
    assert routes(t.gw) == {}
    assert [nh["id"] for nh in nexthops(t.gw)] == [7]
    ip("-n", t.gw, "nexthop", "del", "id", "7")
    r = natgw("--netns", t.gw, "up", str(t.config), "--detach")
    assert r.returncode == 0, r.stderr
    assert routes(t.gw) == {net: [(t.devices["r1"], 1), (t.devices["r2"], 3)] for net in RANGES}


def wait_for(predicate, timeout: float = 15.0, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def edit(t: Topology, **weights: int) -> None:
    data = yaml.safe_load(t.config.read_text())
    for p in data["peers"]:
        p["weight"] = weights[p["name"]]
    write_config(t.config, data)
