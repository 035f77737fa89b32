"""Replica groups end to end: one gateway, a group of two WireGuard replicas, one topology.

  gw ==wg (dev …wa, 192.168.81.0/24)== r1
     ==wg (dev …wb, 192.168.82.0/24)== r2

r1 and r2 are bare wireguard-go devices (peer: gw), both replicas of one remote
cluster: gw routes 10.245.0.0/16 and fd00:245::/64 over both devices with one
multipath route (nexthop objects), weights 1 and 3. Keepalives every second, so a
member is stale after the default 2.5 s. Like a natgw replica, each carries its
tunnel address and allows gw's, so its kernel answers gw's probes. Silence is made
in the replica's netns (nftables): nothing leaves the namespaces.
The tests run in file order on one topology: each leaves it as it found it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from gateways import free_port, scrape, write_config

from lab.keys import new_key
from lab.net import NATGW, ip, natgw
from lab.netnslab import NetnsLab, netns_unavailable_reason
from natgw import keys
from natgw.faults import GROUP_STEPS, KILL_ENV
from natgw.multipath import group_id, hop_id
from natgw.netns import netns_socket
from natgw.status import STATIC
from natgw.tunnel_address import tunnel_address
from natgw.wireguard import DeviceConfig, PeerConfig, WireGuardGoEngine

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

RANGES = ["10.245.0.0/16", "fd00:245::/64"]


@dataclass
class Topology:
    gw: str  # our gateway's netns (and gateway name)
    config: Path
    devices: dict[str, str]  # member peer -> its device in gw
    keys: dict[str, str]  # member peer (and "gw") -> its public key
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
    # The replicas are bare wireguard-go devices: all they must do is answer and keep alive.
    engine = WireGuardGoEngine(run_dir=tmp / "wg")
    with NetnsLab() as lab:
        gw = lab.netns("gw")
        ours = new_key(tmp / "gw.key")
        members, devices, replicas = [], {}, {}
        for i, tag in ((1, "a"), (2, "b")):
            r = lab.netns(f"r{i}")
            lab.veth(gw, f"192.168.8{i}.1/24", r, f"192.168.8{i}.2/24")
            name, dev, rdev = f"r{i}", lab.name(f"w{tag}"), lab.name(f"x{tag}")
            devices[name], replicas[name] = dev, r
            private = keys.genkey()
            members.append({"name": name, "device": dev, "publicKey": keys.pubkey(private),
                            "endpoint": f"192.168.8{i}.2:51820", "listenPort": 51820 + i,
                            "persistentKeepalive": 1, "group": "far", "weight": 2 * i - 1,
                            "remote": [{"cidr": "10.244.0.0/16", "as": RANGES[0]},
                                       {"cidr": "fd00:244::/64", "as": RANGES[1]}]})
            lab.on_cleanup(lambda d=rdev, r=r: engine.delete(d, r))
            engine.ensure_device(rdev, r)
            engine.configure(rdev, r, DeviceConfig(
                private_key=keys.decode_key(private), listen_port=51820,
                peers=(PeerConfig(keys.decode_key(ours), f"192.168.8{i}.1:{51820 + i}",
                                  ("10.244.0.0/16", f"{tunnel_address(ours)}/128"),
                                  persistent_keepalive=1),)))
            ip("-n", r, "link", "set", rdev, "up")
            ip("-n", r, "addr", "add", f"{tunnel_address(keys.pubkey(private))}/64", "dev", rdev,
               "nodad")
        config = write_config(tmp / "gw.yaml", {
            "name": gw, "cidrs": ["10.244.0.0/16", "fd00:244::/64"],
            "privateKeyFile": str(tmp / "gw.key"), "engine": "wireguard-go",
            "metrics": f"127.0.0.1:{free_port()}", "peers": members})
        lab.on_cleanup(lambda: natgw("--netns", gw, "down", str(config), check=False))
        r = natgw("--netns", gw, "up", str(config), "--detach")
        assert r.returncode == 0, r.stderr
        yield Topology(gw, config, devices,
                       {"gw": ours} | {m["name"]: m["publicKey"] for m in members}, replicas,
                       lab)


def routes(netns: str) -> dict[str, list[tuple[str, int | None]]]:
    """natgw's routes (proto 78): destination -> sorted (device, weight) next hops."""
    out = {}
    for family in ("-4", "-6"):
        text = subprocess.run(["ip", "-n", netns, "-j", family, "route", "show", "proto", "78"],
                              capture_output=True, text=True, check=True).stdout
        for r in json.loads(text or "[]"):
            hops = r.get("nexthops") or [{"dev": r["dev"]}]
            # A single next hop has no weight that matters (None).
            out[r["dst"]] = [(hops[0]["dev"], None)] if len(hops) == 1 else \
                sorted((h["dev"], h.get("weight", 1)) for h in hops)
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
        assert (st[peer]["group"], st[peer]["in_route"], st[peer]["why"]) == ("far", True, STATIC)
        assert st[peer]["routes"] == []  # the group's route carries them


@pytest.fixture(scope="module")
def fg(topo):
    """The foreground `natgw up` of gw (it judges the members), its log file."""
    t = topo
    logfile = t.config.with_suffix(".log")
    with logfile.open("w") as out:
        proc = subprocess.Popen([NATGW, "--netns", t.gw, "up", str(t.config)], stdout=out,
                                stderr=subprocess.STDOUT)

    def stop() -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=30)

    t.lab.on_cleanup(stop)
    # The first verdicts are recorded at the first tick after the file is applied.
    assert wait_for(lambda: in_route(t) == {"r1": (True, "receiving"),
                                            "r2": (True, "receiving")}, timeout=60), \
        (in_route(t), logfile.read_text())
    return proc, logfile, stop


def in_route(t: Topology) -> dict[str, tuple[bool, str]]:
    return {name: (p["in_route"], p["why"]) for name, p in status(t).items()}


def in_route_metric(t: Topology) -> dict[str, float]:
    address = yaml.safe_load(t.config.read_text())["metrics"]
    return {dict(labels)["peer"]: v for (name, labels), v in scrape(address).items()
            if name == "natgw_peer_in_route" and dict(labels)["group"] == "far"}


def silence(t: Topology, peer: str, on: bool = True) -> None:
    """Drop everything the replica sends to gw, keepalives included: an nftables rule in
    the replica's netns (a blackhole route would not do: wireguard-go sends with
    IP_PKTINFO's interface, and such a lookup passes a blackhole by)."""
    argv = ["ip", "netns", "exec", t.replicas[peer], "nft"]
    if not on:
        subprocess.run([*argv, "delete", "table", "inet", "natgwtest"], check=True)
        return
    port = 51820 + int(peer[-1])  # gw's listenPort for this member
    subprocess.run([*argv, "-f", "-"], check=True, text=True, input=(
        "table inet natgwtest { chain out { type filter hook output priority 0; "
        f"udp dport {port} drop; }}; }}\n"))


def test_silence_takes_a_member_out_and_back(topo, fg):
    t, (_, logfile, _) = topo, fg
    a, b = t.devices["r1"], t.devices["r2"]
    silence(t, "r2")
    try:
        assert wait_for(lambda: in_route(t)["r2"] == (False, "nothing received for 2.5 s")), \
            (in_route(t), logfile.read_text())
        assert routes(t.gw) == {net: [(a, None)] for net in RANGES}
        assert in_route(t)["r1"] == (True, "receiving")
        assert in_route_metric(t) == {"r1": 1, "r2": 0}
        log = logfile.read_text()
        assert "group far: r2 out of the route (nothing received for 2.5 s); route over r1" \
            in log
        assert "drift" not in log  # the route changed as recorded: nothing to repair
        text = natgw("--netns", t.gw, "status", str(t.config)).stdout
        assert "group: far, in route: no (nothing received for 2.5 s)" in text
    finally:
        silence(t, "r2", on=False)
    assert wait_for(lambda: in_route(t)["r2"] == (True, "receiving"))
    assert routes(t.gw) == {net: [(a, 1), (b, 3)] for net in RANGES}
    assert in_route_metric(t) == {"r1": 1, "r2": 1}
    assert "group far: r2 back in the route (receiving); route over r1, r2" in logfile.read_text()


def test_a_member_that_only_receives_stays_in(topo, fg):
    """WireGuard sends no keepalive while it receives: r2, sent a one-way stream it
    answers nothing to, is heard only through gw's probes, and stays in the route with
    the default staleAfter, also when r1 dies meanwhile (r1 goes out, and stays out)."""
    t, (_, logfile, _) = topo, fg
    r2 = t.replicas["r2"]
    ours = tunnel_address(t.keys["gw"])
    theirs = tunnel_address(t.keys["r2"])
    index = int(json.loads(subprocess.run(["ip", "-n", t.gw, "-j", "link", "show",
                                            t.devices["r2"]], capture_output=True, text=True,
                                           check=True).stdout)[0]["ifindex"])
    # r2 drops the stream unanswered (no port unreachable either).
    nft = ["ip", "netns", "exec", r2, "nft"]
    subprocess.run([*nft, "-f", "-"], check=True, text=True, input=(
        "table inet natgwsink { chain in { type filter hook input priority 0; "
        "udp dport 9 drop; }; }\n"))
    sock = netns_socket(t.gw, socket.AF_INET6, socket.SOCK_DGRAM)
    before = len(logfile.read_text())
    try:
        sock.bind((str(ours), 0, 0, index))
        start = time.monotonic()
        seen, dead = set(), False
        while time.monotonic() < start + 10:  # 4 x the default staleAfter
            if not dead and time.monotonic() > start + 4:
                silence(t, "r1")
                dead = True
            sock.sendto(b"x" * 64, (str(theirs), 9, 0, index))
            seen.add(in_route(t)["r2"])
            time.sleep(0.05)
        assert in_route(t)["r1"] == (False, "nothing received for 2.5 s")
        assert routes(t.gw) == {net: [(t.devices["r2"], None)] for net in RANGES}
    finally:
        sock.close()
        subprocess.run([*nft, "delete", "table", "inet", "natgwsink"], check=True)
        if dead:
            silence(t, "r1", on=False)
    assert seen == {(True, "receiving")}, (seen, logfile.read_text())
    log = logfile.read_text()[before:]
    assert "r2 out of the route" not in log and log.count("r1 out of the route") == 1, log
    assert wait_for(lambda: in_route(t)["r1"] == (True, "receiving"))


def test_a_member_whose_device_goes_down_is_out_until_it_receives_again(topo, fg):
    t = topo
    a, b = t.devices["r1"], t.devices["r2"]
    ip("-n", t.gw, "link", "set", a, "down")
    try:
        assert wait_for(lambda: in_route(t)["r1"] == (False, "device down"), timeout=5)
        assert routes(t.gw) == {net: [(b, None)] for net in RANGES}
        assert in_route_metric(t) == {"r1": 0, "r2": 1}
    finally:
        ip("-n", t.gw, "link", "set", a, "up")
    assert wait_for(lambda: in_route(t)["r1"] == (True, "receiving"))
    assert routes(t.gw) == {net: [(a, 1), (b, 3)] for net in RANGES}


def test_every_member_out_keeps_the_route_over_all(topo, fg):
    t = topo
    a, b = t.devices["r1"], t.devices["r2"]
    kept = "kept: every member is out (nothing received for 2.5 s)"
    for peer in ("r1", "r2"):
        silence(t, peer)
    try:
        assert wait_for(lambda: in_route(t) == {"r1": (True, kept), "r2": (True, kept)})
        assert routes(t.gw) == {net: [(a, 1), (b, 3)] for net in RANGES}
        assert in_route_metric(t) == {"r1": 1, "r2": 1}
    finally:
        for peer in ("r1", "r2"):
            silence(t, peer, on=False)
    assert wait_for(lambda: in_route(t) == {"r1": (True, "receiving"),
                                            "r2": (True, "receiving")})
    assert routes(t.gw) == {net: [(a, 1), (b, 3)] for net in RANGES}


def test_reload_replaces_the_weights_in_place_and_drift_is_repaired(topo, fg):
    t, (proc, logfile, _) = topo, fg
    a, b = t.devices["r1"], t.devices["r2"]
    monitor = subprocess.Popen(["ip", "-n", t.gw, "monitor", "route"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        edit(t, r1=2, r2=1)
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: routes(t.gw) == {net: [(a, 2), (b, 1)] for net in RANGES})
    finally:
        monitor.terminate()
        seen = monitor.communicate(timeout=10)[0]
    # The routes point at the group all along: never deleted, only the group object changes.
    assert not [line for line in seen.splitlines() if line.startswith("Deleted")], seen
    # A range removed by hand comes back, over the same members.
    ip("-n", t.gw, "route", "del", RANGES[0])
    assert wait_for(lambda: routes(t.gw) == {net: [(a, 2), (b, 1)] for net in RANGES})
    # Logged once the repair's whole apply is done, a little after the route is back.
    assert wait_for(lambda: f"drift repaired: route {RANGES[0]} group far"
                    in logfile.read_text()), logfile.read_text()
    edit(t, r1=1, r2=3)
    proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: routes(t.gw) == {net: [(a, 1), (b, 3)] for net in RANGES})


def test_exit_puts_every_member_back_static(topo, fg):
    t, (_, logfile, stop) = topo, fg
    a, b = t.devices["r1"], t.devices["r2"]
    silence(t, "r2")
    try:
        assert wait_for(lambda: in_route(t)["r2"][0] is False)
        assert stop() == 0, logfile.read_text()
        # Nothing judges the members any more: the route is --detach's, over every member.
        assert routes(t.gw) == {net: [(a, 1), (b, 3)] for net in RANGES}
        assert all(v == (True, STATIC) for v in in_route(t).values()), in_route(t)
    finally:
        silence(t, "r2", on=False)


@pytest.mark.parametrize("step", GROUP_STEPS)
def test_killed_at_a_group_step_the_next_up_converges(topo, step):
    t = topo
    a, b = t.devices["r1"], t.devices["r2"]
    data = yaml.safe_load(t.config.read_text())
    if step == "group-removed":  # reached when a group goes: here it shrinks to one member
        changed = dict(data, peers=data["peers"][:1])
        expected = {net: [(a, None)] for net in RANGES}
    else:
        changed = dict(data, peers=[dict(p, weight=4 - p["weight"]) for p in data["peers"]])
        expected = {net: [(a, 3), (b, 1)] for net in RANGES}
    try:
        write_config(t.config, changed)
        r = subprocess.run([NATGW, "--netns", t.gw, "up", str(t.config), "--detach"],
                           capture_output=True, text=True, env=os.environ | {KILL_ENV: step})
        assert r.returncode == -signal.SIGKILL, r.stderr
        r = natgw("--netns", t.gw, "up", str(t.config), "--detach")
        assert r.returncode == 0, r.stderr
        assert routes(t.gw) == expected
    finally:
        write_config(t.config, data)
    r = natgw("--netns", t.gw, "up", str(t.config), "--detach")
    assert r.returncode == 0, r.stderr
    assert routes(t.gw) == {net: [(a, 1), (b, 3)] for net in RANGES}
    # Nothing left over: the group's object and one nexthop per member.
    assert {nh["id"] for nh in nexthops(t.gw)} == {group_id(t.gw, "far"), hop_id(t.gw, a),
                                                     hop_id(t.gw, b)}


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
