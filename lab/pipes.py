"""cloud-gateway's two pipe demos, built from natgw gateways in network namespaces.

Used by tests/test_e2e_pipes.py and bench/pipes.py.

minimal:   pod --- client ==wg== legacy --- web (172.25.0.3: HTTP and test services)
           pipes: client nginx port 8080 -> peer legacy -> remote 172.25.0.3:80
reverse:   edge --- server ==wg== cloud --- web ; edge ==wg== server
           pipes: edge (client-legacy) port 8080 -> peer server -> peer cloud
                  -> remote 172.25.0.3:80  (the service sits behind the far client)

Each demo carries the same extra pipes, so one battery of tests runs on both:
    nginx  8080 -> web:80      (from: the asking peer)
    data   8081 -> web:9000    (upload: sha256 back after EOF; download 8086 -> web:9001)
    echo   8082 -> web:9002    (echo)
    closed 8083 -> web:9999    (nothing listens: refused)
    reset  8087 -> web:9003    (the service resets the connection)
    ghost  8084 -> a pipe the far side does not name
    loop   8088 -> the first hop sends it back to the near gateway (a loop, refused)
    secret 8085 -> far pipe whose from: names only another peer
Test services run in threads of the test process that entered the web netns.
"""

from __future__ import annotations

import hashlib
import http.server
import signal
import socket
import socketserver
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lab.keys import new_key
from lab.net import NATGW, LabError
from lab.netnslab import NetnsLab
from natgw.netns import in_netns

WEB = "172.25.0.3"
PAGE = b"<html><body>natgw pipe: legacy nginx</body></html>\n"
SIZE = 20 * 1024 * 1024
PORTS = {"nginx": (8080, 80), "data": (8081, 9000), "download": (8086, 9001),
         "echo": (8082, 9002), "closed": (8083, 9999), "reset": (8087, 9003)}


def connect(netns: str, host: str, port: int, timeout: float = 10) -> socket.socket:
    def make() -> socket.socket:
        return socket.create_connection((host, port), timeout=timeout)

    return in_netns(netns, make)


def reset_within(netns: str, host: str, port: int, payload: bytes = b"hello") -> float:
    """Seconds until the pipe resets a connection it cannot carry (a reset is required).

    The reset may land before connect() returns: the kernel completes the handshake with the
    pipe's listener at once, and under load the pipe can hear the far side's refusal and reset
    before this thread reads SO_ERROR. So connect, send and recv may each be the one to see it.
    """
    start = time.monotonic()
    try:
        with connect(netns, host, port) as s:
            s.sendall(payload)
            answer = s.recv(100)
    except (ConnectionResetError, BrokenPipeError):
        return time.monotonic() - start
    raise AssertionError(f"expected a reset from {host}:{port}, got {answer!r}")


def pattern(size: int) -> bytes:
    """Deterministic, incompressible-looking bytes."""
    block = hashlib.sha256(b"natgw").digest() * 2048  # 64 KiB
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(i.to_bytes(8, "big")).digest() + block[: 65536 - 32]
        i += 1
    return bytes(out[:size])


# -- services behind the far gateway ------------------------------------------------------


class _Page(http.server.BaseHTTPRequestHandler):
    body = PAGE

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


class _Upload(socketserver.BaseRequestHandler):
    """Reads to end of stream, then answers the sha256 of what came (half-close)."""

    def handle(self) -> None:
        h = hashlib.sha256()
        while chunk := self.request.recv(1 << 16):
            h.update(chunk)
        self.request.sendall(h.hexdigest().encode())


class _Download(socketserver.BaseRequestHandler):
    """Sends SIZE bytes of pattern() then closes."""

    data = b""

    def handle(self) -> None:
        self.request.sendall(self.data)


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while chunk := self.request.recv(1 << 16):
            self.request.sendall(chunk)


class _Reset(socketserver.BaseRequestHandler):
    """Reads something, then resets the connection (SO_LINGER 0)."""

    def handle(self) -> None:
        self.request.recv(100)
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.request.close()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


def start_services(lab: NetnsLab, netns: str) -> None:
    _Download.data = pattern(SIZE)
    handlers = {80: _Page, 9000: _Upload, 9001: _Download, 9002: _Echo, 9003: _Reset}
    for port, handler in handlers.items():
        srv = in_netns(netns, lambda p=port, h=handler: _Server((WEB, p), h))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        lab.on_cleanup(lambda s=srv: (s.shutdown(), s.server_close()))


# -- gateways ---------------------------------------------------------------------------------


@dataclass
class Gw:
    name: str
    netns: str
    config: Path
    data: dict
    key: str
    proc: subprocess.Popen | None = None
    log: Path | None = None

    @property
    def metrics(self) -> str:
        return self.data["metrics"]

    def write(self) -> None:
        self.config.write_text(yaml.safe_dump(self.data, sort_keys=False))

    def natgw(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([NATGW, "--netns", self.netns, *args], capture_output=True,
                              text=True, timeout=120, check=check)

    def start(self) -> None:
        assert self.log is not None
        out = self.log.open("ab")
        self.proc = subprocess.Popen([NATGW, "--netns", self.netns, "up", str(self.config)],
                                     stdout=out, stderr=out)
        out.close()

    def reload(self) -> None:
        """SIGHUP, then wait until the published state shows the reload."""
        before = self.published()["reloads"]
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: self.published()["reloads"] > before, 30, f"{self.name} reload")

    def published(self) -> dict:
        from natgw.pipes import publish

        data = publish.read(self.name)
        assert data is not None, f"{self.name}: no pipe state published"
        return data

    def down(self) -> None:
        """natgw down by name; a failure raises (NetnsLab.close goes on, then reports it):
        a silent one would leave wireguard-go processes and pins behind."""
        r = self.natgw("down", self.name, check=False)
        if r.returncode != 0:
            raise LabError(f"natgw down {self.name}: exit {r.returncode}: {r.stderr.strip()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except (AssertionError, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Demo:
    kind: str
    lab: NetnsLab
    near: Gw  # where clients connect (the pipes' own ports)
    far: Gw  # the gateway that dials the service
    gws: list[Gw] = field(default_factory=list)
    pod: str = ""  # a pod of the near gateway's cluster
    near_lan: str = ""  # the near gateway's address in that cluster
    web: str = ""

    def gw(self, name: str) -> Gw:
        return next(g for g in self.gws if g.name == name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keypair(tmp: Path, name: str) -> tuple[str, str]:
    """A key file for gateway `name`, and its public key."""
    path = tmp / f"{name}.key"
    return str(path), new_key(path)


def _gateway(lab: NetnsLab, tmp: Path, tag: str, netns: str, cidrs: list[str]) -> Gw:
    name = lab.name(tag)
    keyfile, pub = _keypair(tmp, name)
    data = {"name": name, "cidrs": cidrs, "privateKeyFile": keyfile, "engine": "wireguard-go",
            "metrics": f"127.0.0.1:{free_port()}", "peers": [], "pipes": []}
    gw = Gw(name, netns, tmp / f"{name}.yaml", data, pub, log=tmp / f"{name}.log")
    # By name: the config file may be gone by then (a temporary directory closed first).
    lab.on_cleanup(gw.down)
    lab.on_cleanup(gw.stop)
    return gw


def _link(lab: NetnsLab, a: Gw, b: Gw, net: int, a_remote: list[dict], b_remote: list[dict],
          dev: str) -> None:
    """A WireGuard site-to-site link between two gateways over a veth (192.168.<net>.0/24)."""
    lab.veth(a.netns, f"192.168.{net}.1/24", b.netns, f"192.168.{net}.2/24")
    a.data["peers"].append({"name": b.name, "device": lab.name(f"{dev}a"), "publicKey": b.key,
                            "listenPort": 51820 + net, "remote": a_remote})
    b.data["peers"].append({"name": a.name, "device": lab.name(f"{dev}b"), "publicKey": a.key,
                            "endpoint": f"192.168.{net}.1:{51820 + net}", "remote": b_remote,
                            "persistentKeepalive": 25})


def _pipes_far(asker: str, other: str) -> list[dict]:
    return [
        {"name": "nginx", "remote": f"{WEB}:80", "from": [asker]},
        {"name": "data", "remote": f"{WEB}:9000"},
        {"name": "download", "remote": f"{WEB}:9001"},
        {"name": "echo", "remote": f"{WEB}:9002"},
        {"name": "closed", "remote": f"{WEB}:9999"},
        {"name": "reset", "remote": f"{WEB}:9003"},
        {"name": "secret", "remote": f"{WEB}:80", "from": [other]},
    ]


def _pipes_near(peer: str) -> list[dict]:
    out = [{"name": n, "port": p[0], "peer": peer} for n, p in PORTS.items()]
    return out + [{"name": "ghost", "port": 8084, "peer": peer},
                  {"name": "secret", "port": 8085, "peer": peer}]


def build(kind: str, lab: NetnsLab, tmp: Path,
          extra: list[tuple[str, int, int]] = ()) -> Demo:
    """The demo `kind`; extra: more pipes (name, near port, service port on web)."""
    web = lab.netns("web")
    pod = lab.netns("pod")
    if kind == "minimal":
        legacy_ns, client_ns = lab.netns("lg"), lab.netns("cl")
        legacy = _gateway(lab, tmp, "legacy", legacy_ns, ["172.25.0.0/16"])
        client = _gateway(lab, tmp, "client", client_ns, ["10.244.0.0/16"])
        other = _gateway(lab, tmp, "other", lab.netns("ot"), ["10.9.0.0/16"])
        _link(lab, legacy, client, 77, [{"cidr": "10.244.0.0/16"}],
              [{"cidr": "172.25.0.0/16"}], "w1")
        _link(lab, legacy, other, 78, [{"cidr": "10.9.0.0/16"}], [{"cidr": "172.25.0.0/16"}],
              "w2")
        lab.veth(legacy_ns, "172.25.0.1/16", web, f"{WEB}/16")
        legacy.data["pipes"] = _pipes_far(client.name, other.name)
        client.data["pipes"] = _pipes_near(legacy.name)
        gws, near, far = [legacy, client, other], client, legacy
    else:
        server_ns, edge_ns, cloud_ns = lab.netns("sv"), lab.netns("ed"), lab.netns("cn")
        server = _gateway(lab, tmp, "server", server_ns, ["10.192.0.0/24"])
        edge = _gateway(lab, tmp, "edge", edge_ns, ["10.244.0.0/16"])
        cloud = _gateway(lab, tmp, "cloud", cloud_ns, ["172.25.0.0/16"])
        _link(lab, server, edge, 77, [{"cidr": "10.244.0.0/16"}],
              [{"cidr": "10.192.0.0/24"}, {"cidr": "172.25.0.0/16"}], "w1")
        _link(lab, server, cloud, 78, [{"cidr": "172.25.0.0/16"}],
              [{"cidr": "10.192.0.0/24"}, {"cidr": "10.244.0.0/16"}], "w2")
        lab.veth(cloud_ns, "172.25.0.1/16", web, f"{WEB}/16")
        # server: relays every pipe to cloud; cloud dials the service.
        server.data["pipes"] = [{"name": n, "peer": cloud.name}
                                for n in ("nginx", "data", "download", "echo", "closed",
                                          "reset", "secret")]
        cloud.data["pipes"] = _pipes_far(server.name, "nobody-else")
        cloud.data["pipes"][-1]["from"] = [edge.name]  # edge is not cloud's peer at all
        cloud.data["peers"].append({"name": edge.name, "publicKey": _keypair(tmp, "x")[1],
                                    "listenPort": 51899, "device": lab.name("w3"),
                                    "remote": [{"cidr": "10.77.0.0/16"}]})
        cloud.data["pipes"][0]["from"] = [server.name]
        edge.data["pipes"] = _pipes_near(server.name)
        gws, near, far = [server, edge, cloud], edge, cloud
    # A loop: the first hop sends pipe "loop" back to the near gateway, already on the chain.
    hop = near.data["pipes"][0]["peer"]
    near.data["pipes"].append({"name": "loop", "port": 8088, "peer": hop})
    next(g for g in gws if g.name == hop).data["pipes"].append({"name": "loop", "peer": near.name})
    for name, port, service in extra:
        near.data["pipes"].append({"name": name, "port": port, "peer": hop})
        far.data["pipes"].append({"name": name, "remote": f"{WEB}:{service}"})
        for g in gws:
            if g not in (near, far) and g.data["pipes"]:
                g.data["pipes"].append({"name": name, "peer": far.name})
    subprocess.run(["ip", "-n", web, "route", "add", "default", "via", "172.25.0.1"], check=True)
    lab.veth(near.netns, "10.244.0.1/16", pod, "10.244.0.10/16")
    demo = Demo(kind, lab, near, far, gws, pod, "10.244.0.1", web)
    start_services(lab, web)
    for g in gws:
        g.write()
    for g in gws:
        g.start()
    for g in gws:  # each compiles its dataplane first: slow on a busy machine
        wait_for(lambda g=g: g.published()["tunnels"] is not None, 180, f"{g.name} serving")
    return demo


# -- both demos over a hub ----------------------------------------------------------------

HUB_PORT = 8765
BACK_PAGE = b"<html><body>natgw pipe: behind a hub client</body></html>\n"
BACK_SERVICE = 8000  # the page behind the second client, on its loopback


class _BackPage(_Page):
    body = BACK_PAGE


@dataclass
class HubDemo:
    lab: NetnsLab
    hub: Gw  # "legacy": a hub, with the web server in its network
    client: Gw  # a natgw client of the hub: pipes nginx (8080) and back (8090)
    back: Gw  # another client of the hub, with a page of its own behind it

    @property
    def gws(self) -> list[Gw]:
        return [self.hub, self.client, self.back]


def build_hub(lab: NetnsLab, tmp: Path) -> HubDemo:
    """cloud-gateway's demos over a hub (one device, one port for both clients):

    client ==wg==> legacy (hub) --- web (172.25.0.3)     back ==wg==> legacy
    minimal: client nginx 8080 -> peer legacy -> remote web:80
    reverse: client back 8090 -> peer legacy -> hub client back -> remote 127.0.0.1:8000
    back's own nginx 8080 -> peer legacy, whose nginx has from: [client] only: refused,
    which shows that the hub tells its clients apart on the one shared device.
    """
    web = lab.netns("web")
    legacy = _gateway(lab, tmp, "legacy", lab.netns("lg"), ["172.25.0.0/16"])
    client = _gateway(lab, tmp, "client", lab.netns("cl"), ["10.244.0.0/16"])
    back = _gateway(lab, tmp, "back", lab.netns("bk"), ["10.245.0.0/16"])
    legacy.data["hub"] = {
        "address": "10.192.0.1/24", "listenPort": HUB_PORT, "device": lab.name("hw"),
        "clients": [{"name": g.name, "publicKey": g.key, "address": f"10.192.0.{i}"}
                    for i, g in ((2, client), (3, back))],
    }
    for i, g in ((2, client), (3, back)):
        lab.veth(legacy.netns, f"192.168.{70 + i}.1/24", g.netns, f"192.168.{70 + i}.2/24")
        g.data["peers"].append({
            "name": legacy.name, "device": lab.name(f"w{i}"), "publicKey": legacy.key,
            "endpoint": f"192.168.{70 + i}.1:{HUB_PORT}", "address": f"10.192.0.{i}/24",
            "persistentKeepalive": 25, "remote": [{"cidr": "10.192.0.0/24"}]})
    lab.veth(legacy.netns, "172.25.0.1/16", web, f"{WEB}/16")
    legacy.data["pipes"] = [{"name": "nginx", "remote": f"{WEB}:80", "from": [client.name]},
                            {"name": "back", "peer": back.name, "from": [client.name]}]
    client.data["pipes"] = [{"name": "nginx", "port": 8080, "peer": legacy.name},
                            {"name": "back", "port": 8090, "peer": legacy.name}]
    back.data["pipes"] = [{"name": "back", "remote": f"127.0.0.1:{BACK_SERVICE}"},
                          {"name": "nginx", "port": 8080, "peer": legacy.name}]
    srv = in_netns(web, lambda: _Server((WEB, 80), _Page))
    behind = in_netns(back.netns, lambda: _Server(("127.0.0.1", BACK_SERVICE), _BackPage))
    for server in (srv, behind):
        threading.Thread(target=server.serve_forever, daemon=True).start()
        lab.on_cleanup(lambda s=server: (s.shutdown(), s.server_close()))
    demo = HubDemo(lab, legacy, client, back)
    for g in demo.gws:
        g.write()
    for g in demo.gws:
        g.start()
    for g in demo.gws:  # each compiles its dataplane first: slow on a busy machine
        wait_for(lambda g=g: g.published()["tunnels"] is not None, 180, f"{g.name} serving")
    return demo
