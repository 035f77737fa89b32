"""A hub and its clients, modelled on cloud-gateway's demo, all in network namespaces.

    web 172.25.0.10 (HTTP: answers with the client address it sees)
     |  legacy 172.25.0.0/16, shown to clients as 10.250.0.0/16
    hub ---- one UDP port 8765, pool 10.192.0.0/24 (hub 10.192.0.1) ----+
     | 198.18.1.0/24            | 198.18.2.0/24           | 198.18.3.0/24
    c1 gw (natgw)              c2 gw (natgw)             laptop (wireguard-go + wg setconf,
     | pod 10.244.1.10          | pod 10.244.1.10          configured from client-config)
       hub knows it as          c2 shows 10.244/16 as 10.245/16;
       10.201.0.0/16            the hub knows it as 10.202.0.0/16

c1 takes its tunnel address from the pool, c2 has a fixed one (10.192.0.5).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from gateways import wait_ping, write_config

from lab.keys import new_key
from lab.net import natgw, ping, udp_stream
from lab.netnslab import NetnsLab
from natgw.netns import exec_argv, netns_socket

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

POD = "10.244.1.10"
WEB = "172.25.0.10"
WEB_SEEN = "10.250.0.10"  # the web server as every client addresses it
PORT = 8080
C2_ADDRESS = "10.192.0.5"

# Answers every GET with the client address the server sees: what the legacy side logs.
WEB_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.client_address[0].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def fetch(ns: str, host: str = WEB_SEEN, timeout: float = 10) -> str:
    """GET / from inside `ns`; the body (the address the server saw)."""
    deadline = time.time() + timeout
    while True:
        try:
            with netns_socket(ns, socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect((host, PORT))
                s.sendall(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            return data.split(b"\r\n\r\n", 1)[1].decode()
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.3)


def up(ns: str, cfg: Path) -> subprocess.CompletedProcess:
    r = natgw("--netns", ns, "up", str(cfg), "--detach", check=False)
    assert r.returncode == 0, r.stderr
    return r


def hub_status(ns: str, cfg: Path) -> dict:
    r = natgw("--netns", ns, "status", str(cfg), "--json")
    return json.loads(r.stdout)[0]["hub"]


def clients_by_name(ns: str, cfg: Path) -> dict[str, dict]:
    return {c["name"]: c for c in hub_status(ns, cfg)["clients"]}


def keyfile(tmp: Path, name: str) -> tuple[Path, str]:
    path = tmp / f"{name}.key"
    return path, new_key(path)


@pytest.fixture()
def world(netns_lab: NetnsLab, tmp_path: Path, monkeypatch):
    if shutil.which("wireguard-go") is None or shutil.which("wg-quick") is None:
        pytest.skip("needs wireguard-go and wireguard-tools")
    # Pool records of this run stay in its own directory.
    monkeypatch.setenv("NATGW_LIB_DIR", str(tmp_path / "lib"))
    lab = netns_lab
    ns = {t: lab.netns(t) for t in ("hub", "web", "g1", "p1", "g2", "p2", "lap")}
    lab.veth(ns["web"], f"{WEB}/16", ns["hub"], "172.25.0.1/16")
    for i, t in ((1, "g1"), (2, "g2"), (3, "lap")):
        lab.veth(ns[t], f"198.18.{i}.2/24", ns["hub"], f"198.18.{i}.1/24")
    for g, p in (("g1", "p1"), ("g2", "p2")):
        lab.veth(ns[p], f"{POD}/24", ns[g], "10.244.1.1/24")
        ip("-n", ns[p], "route", "add", "10.250.0.0/16", "via", "10.244.1.1")
    # The legacy network routes the tunnel side back to the hub (no default route).
    for net in ("10.192.0.0/24", "10.201.0.0/16", "10.202.0.0/16"):
        ip("-n", ns["web"], "route", "add", net, "via", "172.25.0.1")
    web = subprocess.Popen(exec_argv(ns["web"], [sys.executable, "-c", WEB_SERVER, WEB,
                                                 str(PORT)]))
    lab.on_cleanup(lambda: (web.kill(), web.wait()))

    hub_key, hub_pub = keyfile(tmp_path, "hub")
    c1_key, c1_pub = keyfile(tmp_path, "c1")
    c2_key, c2_pub = keyfile(tmp_path, "c2")
    hub_name = lab.name("legacy")
    hub_cfg = write_config(tmp_path / "hub.yaml", {
        "name": hub_name, "cidrs": ["172.25.0.0/16"], "privateKeyFile": str(hub_key),
        "engine": "wireguard-go",
        "hub": {
            "address": "10.192.0.1/24", "listenPort": 8765, "device": lab.name("hub"),
            "endpoint": "198.18.3.1:8765",
            "local": [{"cidr": "172.25.0.0/16", "as": "10.250.0.0/16"}],
            "clients": [
                {"name": "c1", "publicKey": c1_pub,
                 "remote": [{"cidr": "10.244.0.0/16", "as": "10.201.0.0/16"}]},
                {"name": "c2", "publicKey": c2_pub, "address": C2_ADDRESS,
                 "remote": [{"cidr": "10.245.0.0/16", "as": "10.202.0.0/16"}]},
            ],
        },
    })
    lab.on_cleanup(lambda: natgw("--netns", ns["hub"], "down", str(hub_cfg), check=False))
    up(ns["hub"], hub_cfg)
    c1_address = clients_by_name(ns["hub"], hub_cfg)["c1"]["address"]

    def client_cfg(i: int, key: Path, address: str, extra: dict) -> Path:
        name = lab.name(f"c{i}")
        path = write_config(tmp_path / f"c{i}.yaml", {
            "name": name, "cidrs": ["10.244.0.0/16"], "privateKeyFile": str(key),
            "engine": "wireguard-go",
            "peers": [{
                "name": "legacy", "device": lab.name(f"w{i}"), "publicKey": hub_pub,
                "endpoint": f"198.18.{i}.1:8765", "address": f"{address}/24",
                "persistentKeepalive": 25,
                "remote": [{"cidr": "10.192.0.0/24"}, {"cidr": "10.250.0.0/16"}],
                **extra,
            }],
        })
        lab.on_cleanup(lambda: natgw("--netns", ns[f"g{i}"], "down", str(path), check=False))
        up(ns[f"g{i}"], path)
        return path

    c1_cfg = client_cfg(1, c1_key, c1_address, {})
    # c2 shows its pods to the hub as 10.245.0.0/16 (its own translation).
    c2_cfg = client_cfg(2, c2_key, C2_ADDRESS,
                        {"local": [{"cidr": "10.244.0.0/16", "as": "10.245.0.0/16"}]})
    return {"ns": ns, "tmp": tmp_path, "lab": lab, "hub_cfg": hub_cfg, "c1_cfg": c1_cfg,
            "c2_cfg": c2_cfg, "c1_address": c1_address}


def start_plain_client(world: dict, conf_text: str) -> str:
    """A plain WireGuard client from a wg-quick file: wireguard-go, `wg setconf` of
    `wg-quick strip`, then the address and routes wg-quick would add. Returns the address."""
    from natgw.wireguard import WireGuardGoEngine

    ns, tmp, lab = world["ns"]["lap"], world["tmp"], world["lab"]
    dev = lab.name("pl")
    conf = tmp / f"{dev}.conf"
    conf.write_text(conf_text)
    conf.chmod(0o600)
    stripped = subprocess.run(["wg-quick", "strip", str(conf)], capture_output=True, text=True,
                              check=True).stdout
    (tmp / "stripped.conf").write_text(stripped)
    engine = WireGuardGoEngine(run_dir=tmp / "wg")
    lab.on_cleanup(lambda: engine.delete(dev, ns))
    engine.ensure_device(dev, ns)
    subprocess.run(["wg", "setconf", dev, str(tmp / "stripped.conf")], check=True,
                   capture_output=True)
    settings = {}
    for line in conf_text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings[key.strip()] = value.strip()
    ip("-n", ns, "address", "add", settings["Address"], "dev", dev)
    ip("-n", ns, "link", "set", dev, "up", "mtu", settings["MTU"])
    for net in settings["AllowedIPs"].split(", "):
        ip("-n", ns, "route", "add", net, "dev", dev)
    return settings["Address"].split("/")[0]


def test_hub_and_clients(world):
    ns, hub_cfg = world["ns"], world["hub_cfg"]

    # Every natgw client's pod fetches the legacy page through the hub's one port, and the
    # server sees each one by the address the hub's file promises (its remote `as`).
    assert fetch(ns["p1"]) == "10.201.1.10"
    assert fetch(ns["p2"]) == "10.202.1.10"
    # A gateway itself speaks from its tunnel address.
    assert fetch(ns["g2"]) == C2_ADDRESS
    assert fetch(ns["g1"]) == world["c1_address"]

    # The natgw clients reach each other through the hub, by their tunnel addresses.
    assert wait_ping(ns["g1"], C2_ADDRESS)
    assert ping(ns["g2"], world["c1_address"]) == 3

    st = hub_status(ns["hub"], hub_cfg)
    assert st["listen_port"] == 8765 and st["address"] == "10.192.0.1/24"
    assert [m["as"] for m in st["mappings"]] == ["10.250.0.0/16"]  # hub.local, shared
    clients = {c["name"]: c for c in st["clients"]}
    assert clients["c2"]["address"] == C2_ADDRESS
    for name in ("c1", "c2"):
        c = clients[name]
        assert c["up"] and c["latest_handshake"] > 0 and c["rx_bytes"] > 0
        assert c["endpoint"].startswith(f"198.18.{name[1]}.2:")  # all dialled the one port
        assert [m["as"] for m in c["mappings"]] == [f"10.20{name[1]}.0.0/16"]
        assert c["mappings"][0]["ingress_packets"] > 0
    # Metrics: the client is the `peer` label of its mapping and of its tunnel health.
    from natgw import introspect as I
    from natgw.metrics import dataplane_metrics, state_peer_health
    from natgw.state import load_state

    name = yaml.safe_load(hub_cfg.read_text())["name"]
    health = {p.peer: p for p in state_peer_health([load_state(name)])}
    assert health["c1"].latest_handshake and health["c2"].latest_handshake
    samples = {(s.labels["peer"], s.labels["mapping"], s.labels["direction"]): s.value
               for fam in dataplane_metrics([I.read_gateway(name)])
               if fam.name == "natgw_translated_packets" for s in fam.samples}
    assert samples[("c1", "remote:10.201.0.0/16", "ingress")] > 0
    assert samples[("c2", "remote:10.202.0.0/16", "ingress")] > 0

    # A plain client is added while c1's traffic flows: first its name (address reserved),
    # then the key that client-config --genkey made. c2 keeps its session and counters,
    # and not one of c1's datagrams is lost.
    before = clients_by_name(ns["hub"], hub_cfg)
    data = yaml.safe_load(hub_cfg.read_text())
    with udp_stream(ns["p1"], ns["web"], WEB, WEB_SEEN) as sent_received:
        data["hub"]["clients"].append({"name": "laptop"})
        hub_cfg.write_text(yaml.safe_dump(data))
        assert "added laptop" in up(ns["hub"], hub_cfg).stdout
        r = natgw("client-config", str(hub_cfg), "laptop", "--genkey")
        pub = r.stderr.split()[1]
        data["hub"]["clients"][-1]["publicKey"] = pub
        hub_cfg.write_text(yaml.safe_dump(data))
        out = up(ns["hub"], hub_cfg).stdout
        assert "updated laptop" in out and "unchanged c1, c2" in out, out
    sent, received = sent_received
    assert sent > 50 and received == sent
    after = clients_by_name(ns["hub"], hub_cfg)
    for name in ("c1", "c2"):
        assert after[name]["latest_handshake"] == before[name]["latest_handshake"]
        assert after[name]["address"] == before[name]["address"]
        assert after[name]["rx_bytes"] >= before[name]["rx_bytes"]
        for m_before, m_after in zip(before[name]["mappings"], after[name]["mappings"],
                                     strict=True):
            for k in ("egress_packets", "ingress_packets"):
                assert m_after[k] >= m_before[k], (name, k)
    assert after["c1"]["mappings"][0]["ingress_packets"] > \
        before["c1"]["mappings"][0]["ingress_packets"] + 50

    # The plain client, configured only from client-config's output, fetches the page; the
    # server sees the pool address the config promised.
    laptop_address = start_plain_client(world, r.stdout)
    assert laptop_address == after["laptop"]["address"]
    assert fetch(ns["lap"]) == laptop_address

    # Assignments survive a restart (down, then up with the clients listed the other way).
    assert natgw("--netns", ns["hub"], "down", str(hub_cfg)).returncode == 0
    data["hub"]["clients"].reverse()
    hub_cfg.write_text(yaml.safe_dump(data))
    up(ns["hub"], hub_cfg)
    again = clients_by_name(ns["hub"], hub_cfg)
    assert {n: c["address"] for n, c in again.items()} == \
        {n: c["address"] for n, c in after.items()}
    assert fetch(ns["p1"], timeout=30) == "10.201.1.10"
    assert fetch(ns["lap"], timeout=30) == laptop_address
