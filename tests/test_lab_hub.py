"""The harness's hub topology (`scripts/netns/up.sh --hub N`) builds, works, and goes away."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

from lab import hub
from lab.harness import Topology, build, destroy
from lab.net import natgw, ping
from natgw.netns import netns_exists, netns_socket

pytestmark = [pytest.mark.netns, pytest.mark.bpf]


def get(ns: str, host: str, port: int, timeout: float = 20) -> bytes:
    deadline = time.time() + timeout
    while True:
        try:
            with netns_socket(ns, socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect((host, port))
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                return data
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.3)


def test_hub_topology():
    if shutil.which("wireguard-go") is None:
        pytest.skip("needs wireguard-go")
    with pytest.raises(ValueError, match="--hub takes no other option"):
        Topology(hub=2, ipv6=True).check()
    run = build(Topology(hub=2))
    try:
        # Each client's pod fetches the legacy page through the hub's one port ...
        for i in (1, 2):
            assert b"hello from the legacy network" in get(run.pod(i), hub.web_seen(),
                                                           hub.WEB_PORT)
        # ... and the web server saw each by the range the hub knows it as.
        log = (Path(run.workdir) / "http.log").read_text()
        seen = {line.split(" ")[0] for line in log.splitlines() if '"GET / ' in line}
        assert seen == {hub.client_pod_seen(1), hub.client_pod_seen(2)}
        # Client pods reach each other through the hub (both translate their own pods).
        assert ping(run.pod(1), hub.client_pod_seen(2), count=5) >= 3
        st = natgw("--netns", hub.hub_netns(run), "status", hub.hub_config(run)).stdout
        assert "client: c1" in st and "client: c2" in st and "listening port: 8765" in st
    finally:
        destroy(run)
    assert not netns_exists(hub.hub_netns(run)) and not netns_exists(run.gw(1))
    assert not Path(run.workdir).exists()
