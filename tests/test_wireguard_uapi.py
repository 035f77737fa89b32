"""The UAPI client against a fake wireguard-go on a temporary unix socket."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from natgw.wireguard.model import DeviceState, PeerConfig, PeerStatus, WireGuardError
from natgw.wireguard.plan import Plan
from natgw.wireguard.uapi import UapiClient, parse_get, render_set

PRIV = bytes(range(1, 33))
K1, K2 = b"\x11" * 32, b"\x22" * 32

# A get=1 reply as wireguard-go writes it: device, then each peer from public_key on.
GET_TWO_PEERS = f"""private_key={PRIV.hex()}
listen_port=51820
public_key={K1.hex()}
preshared_key={"00" * 32}
protocol_version=1
endpoint=192.0.2.2:51820
last_handshake_time_sec=1700000000
last_handshake_time_nsec=123
tx_bytes=1000
rx_bytes=2000
persistent_keepalive_interval=25
allowed_ip=10.1.0.0/16
allowed_ip=fd00:1::/64
public_key={K2.hex()}
preshared_key={"00" * 32}
protocol_version=1
last_handshake_time_sec=0
last_handshake_time_nsec=0
tx_bytes=0
rx_bytes=0
persistent_keepalive_interval=0
some_future_key=whatever
errno=0

"""


def test_parse_get_with_two_peers() -> None:
    state = parse_get(GET_TWO_PEERS)
    assert state == DeviceState(
        PRIV,
        51820,
        (
            PeerStatus(
                K1,
                "192.0.2.2:51820",
                (ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("fd00:1::/64")),
                1700000000,
                2000,
                1000,
                25,
            ),
            PeerStatus(K2, None, (), 0, 0, 0, None),
        ),
    )


def test_parse_get_of_fresh_device() -> None:
    assert parse_get("errno=0\n\n") == DeviceState(None, 0, ())


PARSE_ERRORS = [
    ("errno reply", "errno=-22\n\n", "errno 22 (Invalid argument)"),
    ("no errno", "listen_port=1\n\n", "no errno line"),
    ("peer field before a peer", "allowed_ip=10.0.0.0/8\nerrno=0\n\n", "before any peer"),
    ("line without =", "garbage\nerrno=0\n\n", "malformed"),
    ("bad private key hex", "private_key=zz\nerrno=0\n\n", "bad value for private_key"),
]


@pytest.mark.parametrize("name, reply, message", PARSE_ERRORS, ids=[e[0] for e in PARSE_ERRORS])
def test_parse_get_errors(name: str, reply: str, message: str) -> None:
    with pytest.raises(WireGuardError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_get(reply)


def test_render_set_writes_removals_then_full_peers() -> None:
    plan = Plan(
        private_key=PRIV,
        listen_port=51821,
        remove=(K2,),
        upsert=(PeerConfig(K1, "[2001:db8::1]:51820", ("10.1.0.0/16", "10.9.0.0/24")),),  # type: ignore[arg-type]
    )
    assert render_set(plan) == (
        "set=1\n"
        f"private_key={PRIV.hex()}\n"
        "listen_port=51821\n"
        f"public_key={K2.hex()}\n"
        "remove=true\n"
        f"public_key={K1.hex()}\n"
        "endpoint=[2001:db8::1]:51820\n"
        "persistent_keepalive_interval=0\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=10.1.0.0/16\n"
        "allowed_ip=10.9.0.0/24\n"
        "\n"
    )


def test_render_set_never_replaces_all_peers() -> None:
    # replace_peers would drop every session on each re-apply.
    text = render_set(Plan(upsert=(PeerConfig(K1),)))
    assert "replace_peers" not in text and "private_key" not in text


# --- fake server ------------------------------------------------------------------


class FakeWireGuardGo:
    """Serves canned UAPI replies on <dir>/<ifname>.sock, recording each request."""

    def __init__(
        self, socket_dir: Path, ifname: str, replies: list[bytes | None], chunk: int = 1 << 20
    ) -> None:
        self.chunk = chunk  # reply sent in pieces of this size, to exercise reassembly
        self.path = socket_dir / f"{ifname}.sock"
        self.replies = replies  # None: close without answering
        self.requests: list[str] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(self.path))
        self.server.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for reply in self.replies:
            conn, _ = self.server.accept()
            with conn:
                buf = b""
                while not buf.endswith(b"\n\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                self.requests.append(buf.decode())
                for i in range(0, len(reply or b""), self.chunk):
                    conn.sendall(reply[i : i + self.chunk])  # type: ignore[index]
                    time.sleep(0.001)

    def close(self) -> None:
        self.server.close()
        self.thread.join(timeout=2)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Short path: unix socket paths are limited to 107 bytes.
    d = Path(tempfile.mkdtemp(prefix="wgu", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def serve(sock_dir: Path, *replies: bytes | None) -> FakeWireGuardGo:
    return FakeWireGuardGo(sock_dir, "wgt0", list(replies))


def test_client_get_parses_reply(sock_dir: Path) -> None:
    fake = serve(sock_dir, GET_TWO_PEERS.encode())
    try:
        state = UapiClient("wgt0", sock_dir).get()
    finally:
        fake.close()
    assert fake.requests == ["get=1\n\n"]
    assert [p.public_key for p in state.peers] == [K1, K2]


def test_client_reads_a_reply_split_in_small_chunks(sock_dir: Path) -> None:
    fake = FakeWireGuardGo(sock_dir, "wgt0", [GET_TWO_PEERS.encode()], chunk=7)
    client = UapiClient("wgt0", sock_dir)
    try:
        assert len(client.get().peers) == 2
    finally:
        fake.close()


def test_client_set_sends_plan_and_accepts_errno_0(sock_dir: Path) -> None:
    fake = serve(sock_dir, b"errno=0\n\n")
    plan = Plan(listen_port=1234)
    try:
        UapiClient("wgt0", sock_dir).set(plan)
    finally:
        fake.close()
    assert fake.requests == [render_set(plan)]


def test_client_set_error_is_wireguard_error_without_key(sock_dir: Path) -> None:
    fake = serve(sock_dir, b"errno=-22\n\n")
    try:
        with pytest.raises(WireGuardError) as info:
            UapiClient("wgt0", sock_dir).set(Plan(private_key=PRIV))
    finally:
        fake.close()
    assert str(info.value) == "wireguard-go wgt0: set failed: errno 22 (Invalid argument)"
    shown = "".join(traceback.format_exception(info.value))
    assert PRIV.hex() not in shown and "\n" not in str(info.value)


def test_client_get_error_reply(sock_dir: Path) -> None:
    fake = serve(sock_dir, b"errno=-5\n\n")
    try:
        with pytest.raises(WireGuardError, match=r"wireguard-go wgt0: get failed: errno 5"):
            UapiClient("wgt0", sock_dir).get()
    finally:
        fake.close()


def test_client_reply_cut_short(sock_dir: Path) -> None:
    fake = serve(sock_dir, b"listen_port=1\n")  # then the server closes the connection
    try:
        with pytest.raises(WireGuardError, match="closed before the reply ended"):
            UapiClient("wgt0", sock_dir).get()
    finally:
        fake.close()


def test_client_times_out_on_silent_server(sock_dir: Path) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_dir / "wgt0.sock"))
    server.listen(1)  # accepts in the backlog, never answers
    try:
        with pytest.raises(WireGuardError, match="no UAPI reply within 0.2s"):
            UapiClient("wgt0", sock_dir, timeout=0.2).get()
    finally:
        server.close()


def test_missing_and_stale_sockets(sock_dir: Path) -> None:
    client = UapiClient("wgt0", sock_dir)
    assert client.server_pid() is None
    with pytest.raises(WireGuardError, match="device not running"):
        client.get()
    # A socket file with no listener behind it, as a SIGKILLed wireguard-go leaves.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_dir / "wgt0.sock"))
    stale.close()
    assert client.server_pid() is None
    with pytest.raises(WireGuardError, match="stale"):
        client.get()


def test_server_pid_is_the_listening_process(sock_dir: Path) -> None:
    fake = serve(sock_dir)
    try:
        assert UapiClient("wgt0", sock_dir).server_pid() == os.getpid()
    finally:
        fake.close()
