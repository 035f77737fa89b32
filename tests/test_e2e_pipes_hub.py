"""Pipes over a hub (issue 12 over issue 11): cloud-gateway's demos where the far side is a
hub, whose clients share one WireGuard device (lab/pipes.py build_hub).

The hub tells its clients apart by their pipe addresses on that one device: WireGuard's
cryptokey routing admits each address only from the client whose key it derives from.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from gateways import scrape

from lab.netnslab import NetnsLab, netns_unavailable_reason
from lab.pipes import BACK_PAGE, PAGE, build_hub, connect, reset_within, wait_for
from natgw.tunnel_address import tunnel_address

pytestmark = [pytest.mark.netns, pytest.mark.bpf]


@pytest.fixture(scope="module")
def demo():
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    if shutil.which("wireguard-go") is None:
        pytest.skip("needs wireguard-go")
    with tempfile.TemporaryDirectory() as tmp, NetnsLab() as lab:
        yield build_hub(lab, Path(tmp))


def get_page(netns: str, port: int) -> bytes:
    with connect(netns, "127.0.0.1", port) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: nginx\r\n\r\n")
        chunks = []
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)


def counted(gw, pipe: str, peer: str, result: str) -> float:
    labels = frozenset({"pipe": pipe, "peer": peer, "result": result}.items())
    return scrape(gw.metrics).get(("natgw_pipe_connections_total", labels), 0)


def hub_device(demo) -> str:
    return demo.hub.data["hub"]["device"]


def test_a_hub_client_reaches_the_hubs_pipe(demo) -> None:
    assert get_page(demo.client.netns, 8080).endswith(PAGE)
    assert counted(demo.hub, "nginx", demo.client.name, "ok") >= 1


def test_a_pipe_through_the_hub_reaches_another_client(demo) -> None:
    # client -> hub (peer: back, a hub client on the same device) -> back -> its service.
    assert get_page(demo.client.netns, 8090).endswith(BACK_PAGE)
    assert counted(demo.hub, "back", demo.client.name, "ok") >= 1
    assert counted(demo.back, "back", demo.hub.name, "ok") >= 1


def test_the_hub_tells_its_clients_apart_on_one_device(demo) -> None:
    # The hub's nginx names only `client` in from:; `back` asks over the same device.
    assert reset_within(demo.back.netns, "127.0.0.1", 8080, b"GET / HTTP/1.0\r\n\r\n") < 1.0
    assert counted(demo.hub, "nginx", demo.back.name, "forbidden") >= 1


def test_hub_device_pipe_address_and_client_allowed_ips_repaired(demo) -> None:
    dev, ns = hub_device(demo), demo.hub.netns
    own = str(tunnel_address(demo.hub.key))

    def addresses() -> str:
        return subprocess.run(["ip", "-n", ns, "-6", "addr", "show", "dev", dev],
                              capture_output=True, text=True, check=True).stdout

    def allowed() -> str:
        return subprocess.run(["ip", "netns", "exec", ns, "wg", "show", dev, "allowed-ips"],
                              capture_output=True, text=True, check=True).stdout

    assert f"{own}/64" in addresses()
    for g in (demo.client, demo.back):
        line = next(ln for ln in allowed().splitlines() if ln.startswith(g.key))
        assert f"{tunnel_address(g.key)}/128" in line
    # Taken off by hand: the foreground `up` finds the drift and puts it back.
    subprocess.run(["ip", "-n", ns, "addr", "del", f"{own}/64", "dev", dev], check=True)
    wait_for(lambda: f"{own}/64" in addresses(), 30, "the hub's pipe address restored")
    assert get_page(demo.client.netns, 8080).endswith(PAGE)


def test_a_clients_pipe_allowed_ip_removed_by_hand_is_repaired(demo) -> None:
    dev, ns, key = hub_device(demo), demo.hub.netns, demo.client.key
    mine = f"{tunnel_address(key)}/128"

    def client_allowed() -> str:
        out = subprocess.run(["ip", "netns", "exec", ns, "wg", "show", dev, "allowed-ips"],
                             capture_output=True, text=True, check=True).stdout
        return next(ln for ln in out.splitlines() if ln.startswith(key))

    assert mine in client_allowed()
    subprocess.run(["ip", "netns", "exec", ns, "wg", "set", dev, "peer", key,
                    "allowed-ips", "10.192.0.2/32"], check=True)
    assert mine not in client_allowed()
    wait_for(lambda: mine in client_allowed(), 30, "the client's pipe address restored")
    assert get_page(demo.client.netns, 8080).endswith(PAGE)


def test_a_reload_without_pipes_takes_the_hubs_pipe_addresses_off(demo) -> None:
    # Last: it leaves the hub without pipes. Unlike a tunnel peer's device, the hub's
    # carries the tunnel addresses only for pipes: its clients are no group members
    # (nothing probes them), and plain wg-quick clients would not answer anyway.
    dev, ns = hub_device(demo), demo.hub.netns
    own = f"{tunnel_address(demo.hub.key)}/64"
    show = ["ip", "-n", ns, "-6", "addr", "show", "dev", dev]
    assert own in subprocess.run(show, capture_output=True, text=True, check=True).stdout
    demo.hub.data["pipes"] = []
    demo.hub.write()
    demo.hub.reload()
    assert own not in subprocess.run(show, capture_output=True, text=True, check=True).stdout
    allowed = subprocess.run(["ip", "netns", "exec", ns, "wg", "show", dev, "allowed-ips"],
                             capture_output=True, text=True, check=True).stdout
    assert "fe80::" not in allowed
    assert "10.192.0.2/32" in allowed and "10.192.0.3/32" in allowed  # the clients stay
