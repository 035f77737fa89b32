"""natgw up / down / status end to end: two gateways with wireguard-go in namespaces."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest
import yaml
from gateways import (
    C1_SEEN_BY_C2,
    C2_SEEN_BY_C1,
    POD,
    build,
    scrape,
    wait_ping,
    write_config,
)

from lab.net import NATGW, natgw, ping, udp_stream
from natgw import keys
from natgw import status as natgw_status
from natgw.metrics import state_peer_health
from natgw.netns import netns_socket
from natgw.state import load_state

pytestmark = [pytest.mark.netns, pytest.mark.bpf]


@pytest.fixture()
def clusters(netns_lab, tmp_path):
    if shutil.which("wireguard-go") is None:
        pytest.skip("needs wireguard-go")
    c1, c2 = build(netns_lab, tmp_path)
    for c in (c1, c2):
        r = natgw("--netns", c.gw, "up", str(c.config), "--detach")
        assert r.returncode == 0, r.stderr
    return c1, c2




def data_peer(c) -> str:
    return yaml.safe_load(c.config.read_text())["peers"][0]["name"]


def process_gone(pid: int) -> bool:
    """Exited: no process, or a zombie (an orphan's reaping is up to PID 1)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def status(c) -> dict:
    return status_of(c.gw, c.config)


def status_of(netns: str, config) -> dict:
    r = natgw("--netns", netns, "status", str(config), "--json")
    assert r.returncode == 0, r.stderr
    (gateway,) = json.loads(r.stdout)
    return gateway


def wg_pid(c) -> int:
    return int(open(f"/run/natgw/wg/{c.device}.pid").read())


def test_overlapping_pods_reach_each_other(clusters):
    c1, c2 = clusters
    assert wait_ping(c1.pod, C2_SEEN_BY_C1)
    assert ping(c2.pod, C1_SEEN_BY_C2) == 3
    # The server sees the client under the address its cluster uses for it.
    with netns_socket(c2.pod, socket.AF_INET, socket.SOCK_DGRAM) as srv, \
            netns_socket(c1.pod, socket.AF_INET, socket.SOCK_DGRAM) as cli:
        srv.bind((POD, 7000))
        srv.settimeout(5)
        cli.settimeout(5)
        cli.sendto(b"hello", (C2_SEEN_BY_C1, 7000))
        data, peer = srv.recvfrom(100)
        assert data == b"hello" and peer[0] == C1_SEEN_BY_C2
        srv.sendto(b"back", peer)
        assert cli.recvfrom(100) == (b"back", (C2_SEEN_BY_C1, 7000))
    st = status(c1)["peers"][0]
    assert st["engine"] == "wireguard-go" and st["up"] and st["latest_handshake"] > 0
    assert st["mappings"][0]["cidr"] == "10.244.0.0/16" and st["mappings"][0]["as"] == \
        "10.245.0.0/16"
    assert st["mappings"][0]["egress_packets"] > 0 and st["mappings"][0]["ingress_packets"] > 0


def test_public_key_is_carried_from_apply_not_derived_again(clusters, monkeypatch):
    c1, _ = clusters
    data = yaml.safe_load(c1.config.read_text())
    ours = keys.pubkey(open(data["privateKeyFile"]).read())
    assert status(c1)["peers"][0]["public_key"] == ours
    # Neither status nor a metrics scrape derives it (from the key wireguard-go hands back).
    monkeypatch.setattr(keys, "public_key", lambda _k: pytest.fail("public key derived again"))
    (gw,) = natgw_status.status(c1.name, c1.gw)
    assert gw.peers[0].public_key == ours and gw.peers[0].error is None
    (health,) = state_peer_health([load_state(c1.name)])
    assert health.latest_handshake is not None


def test_endpoint_hostname_is_resolved_at_up(netns_lab, tmp_path):
    if shutil.which("wireguard-go") is None:
        pytest.skip("needs wireguard-go")
    ns, name = netns_lab.netns("h"), netns_lab.name("gh")
    data = {"name": name, "cidrs": ["10.244.0.0/16"], "privateKey": keys.genkey(),
            "engine": "wireguard-go",
            "peers": [{"name": "hub", "device": netns_lab.name("wh"),
                       "publicKey": keys.pubkey(keys.genkey()),
                       "endpoint": "no-such-host.invalid:51999",
                       "remote": [{"cidr": "10.244.0.0/16", "as": "10.245.0.0/16"}]}]}
    config = write_config(tmp_path / "gw.yaml", data)
    netns_lab.on_cleanup(lambda: natgw("--netns", ns, "down", str(config), check=False))
    r = natgw("--netns", ns, "up", str(config), "--detach", check=False)
    assert r.returncode == 1 and r.stderr.startswith(
        "natgw: peers[0].endpoint: cannot resolve no-such-host.invalid: "), r.stderr
    assert r.stderr.count("\n") == 1
    assert not os.path.exists(f"/run/natgw/{name}.json")  # nothing was made
    assert not os.path.exists(f"/sys/fs/bpf/natgw/{name}")
    # A name the host resolves (from /etc/hosts: natgw stays in the root mount namespace).
    data["peers"][0]["endpoint"] = "localhost:51999"
    write_config(config, data)
    r = natgw("--netns", ns, "up", str(config), "--detach", check=False)
    assert r.returncode == 0, r.stderr
    assert status_of(ns, config)["peers"][0]["endpoint"] in ("127.0.0.1:51999", "[::1]:51999")


def test_reapplying_the_same_file_changes_nothing(clusters):
    c1, c2 = clusters
    assert wait_ping(c1.pod, C2_SEEN_BY_C1)
    pid, hs = wg_pid(c1), status(c1)["peers"][0]["latest_handshake"]
    with udp_stream(c1.pod, c2.pod, POD, C2_SEEN_BY_C1) as sent_and_received:
        r = natgw("--netns", c1.gw, "up", str(c1.config), "--detach")
    assert r.returncode == 0 and "unchanged" in r.stdout, r.stdout + r.stderr
    sent, received = sent_and_received
    assert sent > 50 and received == sent  # not one datagram lost while re-applying
    assert wg_pid(c1) == pid
    assert status(c1)["peers"][0]["latest_handshake"] == hs
    assert ping(c1.pod, C2_SEEN_BY_C1) == 3


def test_edited_file_is_applied_as_a_difference(clusters):
    c1, _ = clusters
    assert wait_ping(c1.pod, C2_SEEN_BY_C1)
    pid = wg_pid(c1)
    data = yaml.safe_load(c1.config.read_text())
    data["peers"][0]["remote"].append({"cidr": "172.20.0.0/24", "as": "10.250.0.0/24"})
    c1.config.write_text(yaml.safe_dump(data))
    r = natgw("--netns", c1.gw, "up", str(c1.config), "--detach")
    assert r.returncode == 0 and "updated" in r.stdout, r.stdout + r.stderr
    assert wg_pid(c1) == pid  # same tunnel, same sessions
    st = status(c1)["peers"][0]
    assert {m["as"] for m in st["mappings"]} == {"10.245.0.0/16", "10.250.0.0/24"}
    assert "10.250.0.0/24" in st["routes"]
    assert ping(c1.pod, C2_SEEN_BY_C1) == 3


def test_invalid_file_changes_nothing(clusters):
    c1, _ = clusters
    data = yaml.safe_load(c1.config.read_text())
    data["peers"][0]["remote"][0]["as"] = "10.245.0.0/24"
    bad = c1.config.with_name("bad.yaml")
    bad.write_text(yaml.safe_dump(data))
    r = natgw("--netns", c1.gw, "up", str(bad), "--detach", check=False)
    assert r.returncode == 2
    assert r.stderr.strip() == ("natgw: peers[0].remote[0].as: /24 does not match cidr "
                                "10.244.0.0/16")
    assert wait_ping(c1.pod, C2_SEEN_BY_C1)


def test_failed_apply_restores_the_previous_state(clusters):
    c1, _ = clusters
    assert wait_ping(c1.pod, C2_SEEN_BY_C1)
    data = yaml.safe_load(c1.config.read_text())
    extra = dict(data["peers"][0], name="c9", device=c1.device[:-1] + "9", listenPort=51999,
                 publicKey=natgw("pubkey", input=natgw("genkey").stdout).stdout.strip(),
                 remote=[{"cidr": "172.21.0.0/24", "as": "10.251.0.0/24"}])
    data["peers"].append(extra)
    c1.config.write_text(yaml.safe_dump(data))
    # Something else holds the new peer's port: wireguard-go cannot listen there.
    with netns_socket(c1.gw, socket.AF_INET6, socket.SOCK_DGRAM) as busy:
        busy.bind(("::", 51999))
        r = natgw("--netns", c1.gw, "up", str(c1.config), "--detach", check=False)
    assert r.returncode == 1
    assert r.stderr.startswith("natgw: peer c9: ")
    assert r.stderr.strip().endswith("the previous configuration is restored")
    peers = status(c1)["peers"]
    assert [p["name"] for p in peers] == [data["peers"][0]["name"]]
    links = subprocess.run(["ip", "-n", c1.gw, "-j", "link"], capture_output=True,
                           text=True, check=True).stdout
    assert extra["device"] not in links
    assert ping(c1.pod, C2_SEEN_BY_C1) == 3


def test_foreground_restarts_a_dead_engine_and_exits_leaving_traffic(clusters):
    c1, _ = clusters
    assert wait_ping(c1.pod, C2_SEEN_BY_C1)
    fg = subprocess.Popen([NATGW, "--netns", c1.gw, "up", str(c1.config)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1)
        old = wg_pid(c1)
        os.kill(old, signal.SIGKILL)
        deadline = time.time() + 20
        while time.time() < deadline and (not os.path.exists(f"/run/natgw/wg/{c1.device}.pid")
                                          or wg_pid(c1) == old):
            time.sleep(0.2)
        assert wg_pid(c1) != old
        assert wait_ping(c1.pod, C2_SEEN_BY_C1, timeout=20)
        # Metrics are served at the file's `metrics` address while in the foreground.
        metrics = scrape(yaml.safe_load(c1.config.read_text())["metrics"])
        labels = {"gateway": c1.name, "peer": data_peer(c1)}
        assert metrics[("natgw_peer_up", frozenset(labels.items()))] == 1
        assert metrics[("natgw_translated_packets_total", frozenset(
            dict(labels, direction="egress", mapping="remote:10.245.0.0/16").items()))] > 0
        # SIGHUP reloads the edited file.
        data = yaml.safe_load(c1.config.read_text())
        data["peers"][0]["remote"].append({"cidr": "172.22.0.0/24", "as": "10.252.0.0/24"})
        c1.config.write_text(yaml.safe_dump(data))
        fg.send_signal(signal.SIGHUP)
        deadline = time.time() + 15
        while time.time() < deadline and "10.252.0.0/24" not in status(c1)["peers"][0]["routes"]:
            time.sleep(0.3)
        assert "10.252.0.0/24" in status(c1)["peers"][0]["routes"]
    finally:
        fg.send_signal(signal.SIGTERM)
        out, _ = fg.communicate(timeout=20)
    assert fg.returncode == 0, out
    assert ping(c1.pod, C2_SEEN_BY_C1) == 3  # natgw gone, dataplane still forwarding


def test_down_removes_everything_and_is_idempotent(clusters):
    c1, c2 = clusters
    pid = wg_pid(c1)
    # down needs only the file's name: it works with the key file already gone.
    os.unlink(yaml.safe_load(c1.config.read_text())["privateKeyFile"])
    for c in (c1, c2):
        r = natgw("--netns", c.gw, "down", str(c.config))
        assert r.returncode == 0 and "down" in r.stdout
    links = subprocess.run(["ip", "-n", c1.gw, "-j", "link"], capture_output=True,
                           text=True, check=True).stdout
    assert c1.device not in links
    qdiscs = subprocess.run(["ip", "netns", "exec", c1.gw, "tc", "qdisc"], capture_output=True,
                            text=True, check=True).stdout
    assert "clsact" not in qdiscs
    routes = subprocess.run(["ip", "-n", c1.gw, "route", "show", "proto", "78"],
                            capture_output=True, text=True, check=True).stdout
    assert routes.strip() == ""
    assert not os.path.exists(f"/sys/fs/bpf/natgw/{c1.name}")
    assert not os.path.exists(f"/run/natgw/{c1.name}.json")
    assert process_gone(pid)
    assert not os.path.exists(f"/var/run/wireguard/{c1.device}.sock")
    r = natgw("--netns", c1.gw, "down", str(c1.config))
    assert r.returncode == 0 and "was not up" in r.stdout


def _set_tunnel_address(c, address: str) -> None:
    data = yaml.safe_load(c.config.read_text())
    data["peers"][0]["address"] = address
    if {"cidr": "10.192.0.0/24"} not in data["peers"][0]["remote"]:
        data["peers"][0]["remote"].append({"cidr": "10.192.0.0/24"})
    c.config.write_text(yaml.safe_dump(data))
    r = natgw("--netns", c.gw, "up", str(c.config), "--detach")
    assert r.returncode == 0, r.stderr


def _device_addresses(c) -> list[str]:
    out = subprocess.run(["ip", "-n", c.gw, "-j", "addr", "show", "dev", c.device],
                         capture_output=True, text=True, check=True).stdout
    return [f"{a['local']}/{a['prefixlen']}" for link in json.loads(out)
            for a in link["addr_info"] if a.get("scope") == "global"]


def test_peer_address_is_set_on_the_device_and_follows_edits(clusters):
    c1, c2 = clusters
    _set_tunnel_address(c1, "10.192.0.1/24")
    _set_tunnel_address(c2, "10.192.0.2/24")
    assert _device_addresses(c1) == ["10.192.0.1/24"]
    # The gateways reach each other by their tunnel addresses (routed by natgw, proto 78).
    assert wait_ping(c1.gw, "10.192.0.2")
    routes = subprocess.run(["ip", "-n", c1.gw, "route", "show", "10.192.0.0/24"],
                            capture_output=True, text=True, check=True).stdout
    assert f"dev {c1.device} proto 78" in routes, routes
    _set_tunnel_address(c1, "10.192.0.5/24")
    assert _device_addresses(c1) == ["10.192.0.5/24"]
    assert wait_ping(c2.gw, "10.192.0.5")
    assert ping(c1.pod, C2_SEEN_BY_C1) == 3  # the pods' traffic is not disturbed
