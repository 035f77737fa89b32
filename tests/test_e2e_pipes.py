"""Pipes end to end: cloud-gateway's minimal and reverse demos (natgw.pipes, lab/pipes.py).

Every test runs on both demos: a client of the near gateway (in its netns, or a pod of
its cluster) reaches a service behind the far gateway through the pipe's port.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from gateways import free_port, scrape

from lab.netnslab import NetnsLab, netns_unavailable_reason
from lab.pipes import PAGE, SIZE, build, connect, pattern, reset_within, wait_for
from natgw.netns import in_netns

pytestmark = [pytest.mark.netns, pytest.mark.bpf]


@pytest.fixture(scope="module", params=["minimal", "reverse"])
def demo(request):
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    if shutil.which("wireguard-go") is None:
        pytest.skip("needs wireguard-go")
    with tempfile.TemporaryDirectory() as tmp, NetnsLab() as lab:
        yield build(request.param, lab, Path(tmp))


def get_page(netns: str, host: str, port: int) -> bytes:
    with connect(netns, host, port) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: nginx\r\n\r\n")
        return read_all(s)


def read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def counted(gw, pipe: str, peer: str, result: str) -> float:
    labels = frozenset({"pipe": pipe, "peer": peer, "result": result}.items())
    return scrape(gw.metrics).get(("natgw_pipe_connections_total", labels), 0)


def first_hop(demo):
    """The gateway the near gateway asks: it names (or does not name) the pipes."""
    return demo.far if demo.kind == "minimal" else demo.gws[0]


def test_page_in_the_client_netns_and_from_a_pod(demo) -> None:
    assert get_page(demo.near.netns, "127.0.0.1", 8080).endswith(PAGE)
    assert get_page(demo.pod, demo.near_lan, 8080).endswith(PAGE)


def test_upload_20mb_hash_checked_with_half_close(demo) -> None:
    data = pattern(SIZE)
    with connect(demo.pod, demo.near_lan, 8081, timeout=60) as s:
        s.sendall(data)
        # Half-close: the service answers only once it has seen our end of stream,
        # so the answer proves the FIN went through and the way back stayed open.
        s.shutdown(socket.SHUT_WR)
        assert read_all(s).decode() == hashlib.sha256(data).hexdigest()


def test_download_20mb_hash_checked(demo) -> None:
    with connect(demo.pod, demo.near_lan, 8086, timeout=60) as s:
        got = read_all(s)
    assert len(got) == SIZE
    assert hashlib.sha256(got).digest() == hashlib.sha256(pattern(SIZE)).digest()


def test_200_concurrent_connections(demo) -> None:
    def open_all() -> list[socket.socket]:
        return [socket.create_connection((demo.near_lan, 8082), timeout=30) for _ in range(200)]

    socks = in_netns(demo.pod, open_all)
    try:
        for i, s in enumerate(socks):
            s.sendall(f"connection {i}\n".encode() * 50)
        for i, s in enumerate(socks):
            want = f"connection {i}\n".encode() * 50
            got = b""
            while len(got) < len(want):
                got += s.recv(len(want) - len(got))
            assert got == want
        wait_for(lambda: pipe_state(demo.near, "echo")["active"] == 200, 10,
                 "200 active connections in status")
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: pipe_state(demo.near, "echo")["active"] == 0, 10, "0 active")


def pipe_state(gw, name: str) -> dict:
    return next(p for p in gw.published()["pipes"] if p["name"] == name)


def test_refused_far_end_closes_the_client_within_1s(demo) -> None:
    assert reset_within(demo.pod, demo.near_lan, 8083) < 1.0
    assert counted(demo.near, "closed", "local", "refused") >= 1
    assert counted(demo.far, "closed", demo.gws[0].name if demo.kind == "reverse"
                   else demo.near.name, "refused") >= 1


def test_reset_propagates(demo) -> None:
    with connect(demo.pod, demo.near_lan, 8087) as s:
        s.sendall(b"reset me")
        with pytest.raises(ConnectionResetError):
            s.recv(100)


def test_pipe_the_far_side_does_not_name_is_refused(demo) -> None:
    assert reset_within(demo.pod, demo.near_lan, 8084) < 1.0
    assert counted(demo.near, "ghost", "local", "unknown_pipe") >= 1
    assert counted(first_hop(demo), "(unknown)", demo.near.name, "unknown_pipe") >= 1


def test_a_chain_back_to_a_gateway_on_it_is_refused(demo) -> None:
    assert reset_within(demo.pod, demo.near_lan, 8088) < 1.0
    hop = first_hop(demo)
    # The near gateway refuses the request the first hop passed back, and the client
    # learns why through the hop's relayed reply.
    assert counted(demo.near, "loop", hop.name, "loop") >= 1
    assert counted(hop, "loop", demo.near.name, "loop") >= 1
    assert counted(demo.near, "loop", "local", "loop") >= 1


def test_from_excluding_the_asking_peer_is_refused(demo) -> None:
    assert reset_within(demo.pod, demo.near_lan, 8085) < 1.0
    assert counted(demo.near, "secret", "local", "forbidden") >= 1
    asker = demo.near.name if demo.kind == "minimal" else demo.gws[0].name
    assert counted(demo.far, "secret", asker, "forbidden") >= 1


def test_reload_adding_a_pipe_leaves_a_running_transfer_alone(demo) -> None:
    result: dict = {}
    reloaded = threading.Event()

    def slow_download() -> None:
        try:
            with connect(demo.pod, demo.near_lan, 8086, timeout=60) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
                h, n = hashlib.sha256(), 0
                while chunk := s.recv(1 << 16):
                    h.update(chunk)
                    n += len(chunk)
                    if not reloaded.is_set():
                        # Slow, so that bytes flow during the reloads; and never done
                        # before they are (a slow reload must not end the transfer first).
                        time.sleep(0.02)
                        if n > SIZE // 2:
                            reloaded.wait(120)
                result["digest"], result["n"] = h.digest(), n
        except OSError as e:
            result["error"] = e

    t = threading.Thread(target=slow_download)
    t.start()
    wait_for(lambda: pipe_state(demo.near, "download")["active"] == 1, 10, "download running")
    for gw in reversed(demo.gws):  # the far end first: each hop names the pipe before it is asked
        if gw is demo.near:
            gw.data["pipes"].append({"name": "extra", "port": 8090, "peer": demo.near.data[
                "pipes"][0]["peer"]})
        elif gw is demo.far:
            gw.data["pipes"].append({"name": "extra", "remote": "172.25.0.3:80"})
        elif gw.data["pipes"]:
            gw.data["pipes"].append({"name": "extra", "peer": demo.far.name})
        else:
            continue
        gw.write()
        gw.reload()
        assert gw.published()["reload_error"] is None
    try:
        assert pipe_state(demo.near, "download")["active"] == 1, "the transfer was cut"
        assert get_page(demo.pod, demo.near_lan, 8090).endswith(PAGE)
        assert "n" not in result, "the transfer ended before the reloads: the test proves nothing"
    finally:
        reloaded.set()
        t.join(120)
    assert "error" not in result, result.get("error")
    assert result["n"] == SIZE
    assert result["digest"] == hashlib.sha256(pattern(SIZE)).digest()


def test_status_json_and_metrics(demo) -> None:
    out = demo.near.natgw("status", "--json", str(demo.near.config))
    [data] = json.loads(out.stdout)
    nginx = next(p for p in data["pipes"] if p["name"] == "nginx")
    assert nginx["listen"] == "[::]:8080"
    assert nginx["to"] == f"peer {demo.near.data['pipes'][0]['peer']}"
    assert nginx["active"] == 0
    assert data["pipes_served_by"] == demo.near.proc.pid
    text = demo.near.natgw("status", str(demo.near.config)).stdout
    assert "pipe: nginx\n  listens: [::]:8080\n" in text
    m = scrape(demo.near.metrics)
    up = m[("natgw_pipe_bytes_total", frozenset({"pipe": "data", "direction": "upstream"}.items()))]
    assert up >= SIZE
    assert ("natgw_pipe_active_connections", frozenset({"pipe": "nginx"}.items())) in m


def test_detach_with_pipes_hands_over_to_the_foreground(demo) -> None:
    cfg = yaml.safe_load(demo.near.config.read_text())
    assert cfg["pipes"]
    r = demo.near.natgw("up", "--detach", str(demo.near.config), check=False)
    assert r.returncode == 0, r.stderr
    assert f"reloaded by natgw up, pid {demo.near.proc.pid}" in r.stdout
    r = demo.near.natgw("up", str(demo.near.config), check=False)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "already served by natgw up" in r.stderr


def test_removing_a_pipe_resets_its_connections_only(demo) -> None:
    with connect(demo.pod, demo.near_lan, 8082) as doomed, \
            connect(demo.pod, demo.near_lan, 8081) as kept:
        doomed.sendall(b"before\n")
        assert doomed.recv(100) == b"before\n"
        kept.sendall(b"before ")
        demo.near.data["pipes"] = [p for p in demo.near.data["pipes"] if p["name"] != "echo"]
        demo.near.write()
        demo.near.reload()
        with pytest.raises(ConnectionResetError):
            doomed.recv(100)
        kept.sendall(b"after")
        kept.shutdown(socket.SHUT_WR)
        assert read_all(kept).decode() == hashlib.sha256(b"before after").hexdigest()
    with pytest.raises(ConnectionRefusedError):
        connect(demo.pod, demo.near_lan, 8082)


def test_a_port_already_taken(demo, tmp_path) -> None:
    """At up: exit 1 naming the port. On a reload: logged, the other pipes go on."""
    if demo.kind != "minimal":
        pytest.skip("the same code on every demo")
    taken = in_netns(demo.near.netns, lambda: socket.create_server(("127.0.0.1", 8095)))
    try:
        demo.near.data["pipes"].append({"name": "busy", "listen": "127.0.0.1:8095",
                                        "peer": demo.far.name})
        demo.near.write()
        demo.near.reload()
        assert demo.near.published()["reload_error"] == (
            "pipe busy: cannot listen on 127.0.0.1:8095: address already in use")
        assert get_page(demo.pod, demo.near_lan, 8080).endswith(PAGE)
        solo = demo.lab.name("solo")
        path = tmp_path / "solo.yaml"
        path.write_text(yaml.safe_dump({
            "name": solo, "cidrs": ["10.250.0.0/16"], "metrics": f"127.0.0.1:{free_port()}",
            "pipes": [{"name": "busy", "listen": "127.0.0.1:8095", "remote": "172.25.0.3:80"}]}))
        try:
            r = demo.near.natgw("up", str(path), check=False)
            assert r.returncode == 1
            assert r.stderr == ("natgw: pipe busy: cannot listen on 127.0.0.1:8095: "
                                "address already in use\n")
        finally:
            demo.near.natgw("down", solo, check=False)
    finally:
        taken.close()
        demo.near.data["pipes"] = [p for p in demo.near.data["pipes"] if p["name"] != "busy"]
        demo.near.write()
        demo.near.reload()


def test_legs_have_keepalive(demo) -> None:
    """An idle connection stays open: every leg natgw holds probes its peer."""
    with connect(demo.pod, demo.near_lan, 8081):
        def legs(netns: str) -> list[str]:
            out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-tnoH", "state",
                                  "established"], capture_output=True, text=True, check=True)
            return [line for line in out.stdout.splitlines() if ":8081 " in line
                    or ":51870 " in line]

        wait_for(lambda: len(legs(demo.near.netns)) >= 2, 10, "both legs on the near gateway")
        near = legs(demo.near.netns)
        # The accepted leg (local port 8081) and the leg to the next gateway (port 51870).
        assert any(line.split()[2].endswith(":8081") for line in near), near
        assert any(line.split()[3].endswith(":51870") for line in near), near
        assert all("timer:(keepalive" in line for line in near), near


def test_harness_pipes_between_three_clusters() -> None:
    """`scripts/netns/up.sh 3 --pipes`: every pod reaches every other pod's page by a pipe."""
    from lab.harness import PIPE_PORT_BASE, Topology, build, destroy

    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    run = build(Topology(clusters=3, pipes=True))
    try:
        topo = run.topology
        for i, j in topo.pairs:
            page = get_page(run.pod(i), topo.pod_gw(i), PIPE_PORT_BASE + j)
            assert page.endswith(f"<h1>hello from cluster{j}'s pod, pipe web{j}</h1>\n".encode())
    finally:
        destroy(run)
