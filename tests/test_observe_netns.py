"""What an operator sees, end to end: exact counter deltas for real traffic.

N datagrams of a known size cross the tunnel from cluster1's pod; cluster1's
`natgw maps --json` and a Prometheus scrape of its foreground `natgw up` must
both count exactly N packets and N IP packet sizes more on the egress side of
the remote mapping, and cluster2 the same on its ingress side.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time

import pytest
import yaml
from gateways import C1_SEEN_BY_C2, C2_SEEN_BY_C1, POD, build, scrape, wait_ping

from lab.net import NATGW, natgw
from natgw.netns import netns_socket

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

N, PAYLOAD = 37, 333
IP_BYTES = 20 + 8 + PAYLOAD


def maps_counters(c, label: str) -> dict:
    r = natgw("--netns", c.gw, "maps", c.name, "--json")
    dev = next(d for d in json.loads(r.stdout)[0]["devices"] if d["ifname"] == c.device)
    return next(m for m in dev["mappings"] if m["label"] == label)


def scraped(address: str, gateway: str, peer: str, direction: str, label: str) -> tuple:
    m = scrape(address)
    labels = frozenset({"gateway": gateway, "peer": peer, "direction": direction,
                        "mapping": label}.items())
    return (m.get(("natgw_translated_packets_total", labels), 0),
            m.get(("natgw_translated_bytes_total", labels), 0))


def test_maps_and_metrics_count_exactly_the_traffic_sent(netns_lab, tmp_path):
    if shutil.which("wireguard-go") is None:
        pytest.skip("needs wireguard-go")
    c1, c2 = build(netns_lab, tmp_path)
    natgw("--netns", c2.gw, "up", str(c2.config), "--detach")
    log_path = tmp_path / "natgw.log"
    log = open(log_path, "w+")
    fg = subprocess.Popen([NATGW, "--netns", c1.gw, "up", str(c1.config)],
                          stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        # The first apply compiles the dataplane: on a busy machine that alone can
        # outlast wait_ping's budget, so wait for the apply, then for the tunnel.
        deadline = time.time() + 120
        while time.time() < deadline and fg.poll() is None and \
                "running in the foreground" not in log_path.read_text():
            time.sleep(0.2)
        assert "running in the foreground" in log_path.read_text(), log_path.read_text()
        assert wait_ping(c1.pod, C2_SEEN_BY_C1)
        address = yaml.safe_load(c1.config.read_text())["metrics"]
        peer1 = yaml.safe_load(c1.config.read_text())["peers"][0]["name"]
        out_label, in_label = "remote:10.245.0.0/16", "remote:10.246.0.0/16"
        before_maps = maps_counters(c1, out_label)["egress"]
        before_in = maps_counters(c2, in_label)["ingress"]
        before_scrape = scraped(address, c1.name, peer1, "egress", out_label)

        with netns_socket(c2.pod, socket.AF_INET, socket.SOCK_DGRAM) as srv, \
                netns_socket(c1.pod, socket.AF_INET, socket.SOCK_DGRAM) as cli:
            srv.bind((POD, 7200))
            srv.settimeout(5)
            for i in range(N):
                cli.sendto(bytes([i]) * PAYLOAD, (C2_SEEN_BY_C1, 7200))
            for _ in range(N):
                data, peer = srv.recvfrom(2048)
                assert len(data) == PAYLOAD and peer[0] == C1_SEEN_BY_C2

        after_maps = maps_counters(c1, out_label)["egress"]
        assert after_maps["packets"] - before_maps["packets"] == N
        assert after_maps["bytes"] - before_maps["bytes"] == N * IP_BYTES
        after_in = maps_counters(c2, in_label)["ingress"]
        assert after_in["packets"] - before_in["packets"] == N
        assert after_in["bytes"] - before_in["bytes"] == N * IP_BYTES
        after_scrape = scraped(address, c1.name, peer1, "egress", out_label)
        assert after_scrape[0] - before_scrape[0] == N
        assert after_scrape[1] - before_scrape[1] == N * IP_BYTES
    finally:
        fg.send_signal(signal.SIGTERM)
        fg.wait(timeout=20)
        log.close()
