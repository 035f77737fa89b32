"""wireguard-go engine end to end: two netns joined by a veth, a tunnel across it.

netns a: veth 192.0.2.1/24  wg 198.51.100.1/24  <-->  netns b: veth 192.0.2.2/24  wg 198.51.100.2/24
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from lab.net import add_address, link_up, ping
from lab.netnslab import NetnsLab
from natgw.keys import new_private_key, public_key
from natgw.wireguard import DeviceConfig, PeerConfig, WireGuardError, WireGuardGoEngine
from natgw.wireguard.uapi import socket_path

pytestmark = pytest.mark.netns

PORT = 51820


@dataclass
class Side:
    netns: str
    ifname: str
    cfg: DeviceConfig
    tunnel_ip: str


@dataclass
class Tunnel:
    engine: WireGuardGoEngine
    lab: NetnsLab
    a: Side
    b: Side

    def bring_up(self, side: Side) -> None:
        """What natgw's caller does after ensure_device + configure."""
        self.engine.ensure_device(side.ifname, side.netns)
        self.engine.configure(side.ifname, side.netns, side.cfg)
        add_address(side.netns, side.ifname, f"{side.tunnel_ip}/24")
        link_up(side.netns, side.ifname)


def owned_by_lab(lab: NetnsLab, engine: WireGuardGoEngine, ifname: str, netns: str) -> None:
    # Registered after the netns: runs before it is deleted, even if the test failed.
    lab.on_cleanup(lambda: engine.delete(ifname, netns))


@pytest.fixture
def tunnel(netns_lab: NetnsLab, tmp_path: Path) -> Tunnel:
    if shutil.which("wireguard-go") is None:
        pytest.skip("needs wireguard-go (Debian package wireguard-go)")
    lab = netns_lab
    ns_a, ns_b = lab.netns("a"), lab.netns("b")
    lab.veth(ns_a, "192.0.2.1/24", ns_b, "192.0.2.2/24")
    key_a, key_b = new_private_key(), new_private_key()
    a = Side(
        ns_a,
        lab.name("wga"),
        DeviceConfig(
            key_a,
            PORT,
            (PeerConfig(public_key(key_b), f"192.0.2.2:{PORT}", ("198.51.100.2/32",)),),  # type: ignore[arg-type]
        ),
        "198.51.100.1",
    )
    b = Side(
        ns_b,
        lab.name("wgb"),
        DeviceConfig(
            key_b,
            PORT,
            (PeerConfig(public_key(key_a), f"192.0.2.1:{PORT}", ("198.51.100.1/32",)),),  # type: ignore[arg-type]
        ),
        "198.51.100.2",
    )
    t = Tunnel(WireGuardGoEngine(run_dir=tmp_path / "run"), lab, a, b)
    for side in (a, b):
        owned_by_lab(lab, t.engine, side.ifname, side.netns)
        t.bring_up(side)
    return t


def link_exists(netns: str, ifname: str) -> bool:
    result = subprocess.run(["ip", "-n", netns, "link", "show", "dev", ifname], capture_output=True)
    return result.returncode == 0


def wait_gone(pid: int, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return
        if state == "Z":
            return
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} still running")


def test_ping_across_tunnel_and_status(tunnel: Tunnel) -> None:
    assert ping(tunnel.a.netns, tunnel.b.tunnel_ip, count=3) == 3

    st = tunnel.engine.status(tunnel.a.ifname, tunnel.a.netns)
    assert (st.engine, st.ifname, st.listen_port) == ("wireguard-go", tunnel.a.ifname, PORT)
    # UAPI has only the private key, and status does not derive from it (natgw.gateway does).
    assert st.public_key is None
    (peer,) = st.peers
    assert peer.public_key == tunnel.a.cfg.peers[0].public_key
    assert peer.endpoint == f"192.0.2.2:{PORT}"
    assert abs(peer.latest_handshake - time.time()) < 60
    assert peer.rx_bytes > 0 and peer.tx_bytes > 0
    pid_file = tunnel.engine.pid_path(tunnel.a.ifname)
    assert st.pid == int(pid_file.read_text())
    assert tunnel.engine.is_alive(tunnel.a.ifname, tunnel.a.netns)
    assert tunnel.engine.log_path(tunnel.a.ifname).exists()


def test_reapplying_the_same_config_keeps_session_and_process(tunnel: Tunnel) -> None:
    a = tunnel.a
    assert ping(a.netns, tunnel.b.tunnel_ip) == 3
    before = tunnel.engine.status(a.ifname, a.netns)
    tunnel.engine.ensure_device(a.ifname, a.netns)
    tunnel.engine.configure(a.ifname, a.netns, a.cfg)
    after = tunnel.engine.status(a.ifname, a.netns)
    assert after.pid == before.pid
    assert after.peers[0].latest_handshake == before.peers[0].latest_handshake > 0
    assert after.peers[0].rx_bytes >= before.peers[0].rx_bytes > 0


def test_changing_one_peer_leaves_the_others_alone(tunnel: Tunnel) -> None:
    a, engine = tunnel.a, tunnel.engine
    real = a.cfg.peers[0]
    dummy = PeerConfig(public_key(new_private_key()), None, ("203.0.113.0/25",))  # type: ignore[arg-type]
    engine.configure(a.ifname, a.netns, replace(a.cfg, peers=(real, dummy)))
    assert ping(a.netns, tunnel.b.tunnel_ip) == 3
    # wireguard-go lists peers in no fixed order: look them up by key
    peers = {p.public_key: p for p in engine.status(a.ifname, a.netns).peers}
    handshake = peers[real.public_key].latest_handshake
    assert handshake > 0 and peers[dummy.public_key].latest_handshake == 0

    # allowed-ips of the dummy change; the real peer's session stays
    moved = replace(dummy, allowed_ips=("203.0.113.0/25", "203.0.113.128/25"))
    engine.configure(a.ifname, a.netns, replace(a.cfg, peers=(real, moved)))
    peers = {p.public_key: p for p in engine.status(a.ifname, a.netns).peers}
    assert [str(n) for n in peers[dummy.public_key].allowed_ips] == [
        "203.0.113.0/25",
        "203.0.113.128/25",
    ]
    assert peers[real.public_key].latest_handshake == handshake

    # removing the dummy leaves only the real peer, session intact
    engine.configure(a.ifname, a.netns, a.cfg)
    (peer,) = engine.status(a.ifname, a.netns).peers
    assert peer.public_key == real.public_key and peer.latest_handshake == handshake
    assert ping(a.netns, tunnel.b.tunnel_ip) == 3


def test_allowed_ips_change_takes_effect_on_traffic(tunnel: Tunnel) -> None:
    a, engine = tunnel.a, tunnel.engine
    assert ping(a.netns, tunnel.b.tunnel_ip) == 3
    # Without 198.51.100.2 in the peer's allowed-ips, wireguard-go has nowhere to send it.
    narrowed = replace(a.cfg.peers[0], allowed_ips=("198.51.100.64/26",))
    engine.configure(a.ifname, a.netns, replace(a.cfg, peers=(narrowed,)))
    assert [str(n) for n in engine.status(a.ifname, a.netns).peers[0].allowed_ips] == [
        "198.51.100.64/26"
    ]
    assert ping(a.netns, tunnel.b.tunnel_ip, count=1, timeout=0.5) == 0
    engine.configure(a.ifname, a.netns, a.cfg)
    assert ping(a.netns, tunnel.b.tunnel_ip) == 3


def test_killed_wireguard_go_is_detected_and_restarted(tunnel: Tunnel) -> None:
    a, engine = tunnel.a, tunnel.engine
    assert ping(a.netns, tunnel.b.tunnel_ip) == 3
    old_pid = engine.status(a.ifname, a.netns).pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    wait_gone(old_pid)
    assert not engine.is_alive(a.ifname, a.netns)
    assert socket_path(a.ifname).exists()  # left behind by SIGKILL: must not block a restart

    tunnel.bring_up(a)
    assert engine.is_alive(a.ifname, a.netns)
    assert engine.status(a.ifname, a.netns).pid != old_pid
    assert ping(a.netns, tunnel.b.tunnel_ip) == 3


def wait_stopped(pid: int, timeout: float = 5.0) -> None:
    """Until every thread of pid is stopped (SIGSTOP takes effect thread by thread)."""
    deadline = time.monotonic() + timeout
    while True:
        states = [Path(f"/proc/{pid}/task/{t}/stat").read_text().rpartition(")")[2].split()[0]
                  for t in os.listdir(f"/proc/{pid}/task")]
        if all(st in ("T", "t") for st in states):
            return
        assert time.monotonic() < deadline, f"{pid} not stopped: thread states {states}"
        time.sleep(0.01)


def test_a_stalled_wireguard_go_answers_status_within_the_callers_timeout(tunnel: Tunnel) -> None:
    # Health reads each member within natgw.health.READ_TIMEOUT: an engine that does not
    # answer (here stopped; in the field blocked in its sends) must not hold the caller
    # for the engine's default 2 s.
    a, engine = tunnel.a, tunnel.engine
    pid = engine.status(a.ifname, a.netns).pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_stopped(pid)  # every thread: one still running could answer
        start = time.monotonic()
        with pytest.raises(WireGuardError, match="no UAPI reply within 0.3s"):
            engine.status(a.ifname, a.netns, timeout=0.3)
        assert time.monotonic() - start < 1.5
    finally:
        os.kill(pid, signal.SIGCONT)
    assert engine.status(a.ifname, a.netns, timeout=0.3).pid == pid


def test_delete_leaves_nothing_behind(tunnel: Tunnel) -> None:
    engine = tunnel.engine
    for side in (tunnel.a, tunnel.b):
        pid = engine.status(side.ifname, side.netns).pid
        assert pid is not None
        engine.delete(side.ifname, side.netns)
        wait_gone(pid, timeout=0.5)
        assert not engine.pid_path(side.ifname).exists()
        assert not engine.log_path(side.ifname).exists()
        assert not socket_path(side.ifname).exists()
        assert not link_exists(side.netns, side.ifname)
        assert not engine.is_alive(side.ifname, side.netns)
        engine.delete(side.ifname, side.netns)  # idempotent
    with pytest.raises(WireGuardError, match="device not running"):
        engine.configure(tunnel.a.ifname, tunnel.a.netns, tunnel.a.cfg)


def test_same_device_name_in_another_netns_is_refused(tunnel: Tunnel) -> None:
    a, b, engine = tunnel.a, tunnel.b, tunnel.engine
    pattern = f"outside netns {b.netns} \\(device names must be unique host-wide\\)"
    with pytest.raises(WireGuardError, match=pattern):
        engine.ensure_device(a.ifname, b.netns)
    with pytest.raises(WireGuardError, match=pattern):
        engine.configure(a.ifname, b.netns, b.cfg)
    engine.delete(a.ifname, b.netns)  # not b's device: must leave a's process alone
    assert not engine.is_alive(a.ifname, b.netns)
    assert engine.is_alive(a.ifname, a.netns)
    assert ping(a.netns, b.tunnel_ip) == 3


def test_delete_after_the_netns_lost_its_name(tunnel: Tunnel) -> None:
    engine, lab = tunnel.engine, tunnel.lab
    # A same-named device in a live netns is not the vanished netns's: left alone.
    engine.delete(tunnel.a.ifname, lab.name("gone"))
    assert engine.is_alive(tunnel.a.ifname, tunnel.a.netns)

    ns_c = lab.netns("c")
    ifname = lab.name("wgc")
    owned_by_lab(lab, engine, ifname, ns_c)
    engine.ensure_device(ifname, ns_c)
    pid = int(engine.pid_path(ifname).read_text())
    subprocess.run(["ip", "netns", "del", ns_c], check=True)  # wireguard-go keeps it alive
    engine.delete(ifname, ns_c)
    wait_gone(pid, timeout=0.5)
    assert not engine.pid_path(ifname).exists() and not socket_path(ifname).exists()
    assert not engine.log_path(ifname).exists()


def test_wireguard_go_outlives_the_process_that_started_it(tunnel: Tunnel) -> None:
    engine, ns_a = tunnel.engine, tunnel.a.netns
    ifname = tunnel.lab.name("wgc")
    owned_by_lab(tunnel.lab, engine, ifname, ns_a)
    code = (
        "import sys; from pathlib import Path; from natgw.wireguard import WireGuardGoEngine; "
        "WireGuardGoEngine(run_dir=Path(sys.argv[1])).ensure_device(sys.argv[2], sys.argv[3])"
    )
    subprocess.run([sys.executable, "-c", code, str(engine.run_dir), ifname, ns_a], check=True)
    assert engine.is_alive(ifname, ns_a)
    pid = int(engine.pid_path(ifname).read_text())
    assert os.getsid(pid) == pid  # its own session: natgw's terminal signals do not reach it
    engine.delete(ifname, ns_a)
    wait_gone(pid, timeout=0.5)
    assert not engine.is_alive(ifname, ns_a)


def test_start_errors_are_clear(tunnel: Tunnel, tmp_path: Path) -> None:
    with pytest.raises(WireGuardError, match="netns natgw-no-such-ns: does not exist"):
        tunnel.engine.ensure_device("wgx0", "natgw-no-such-ns")
    missing = WireGuardGoEngine(run_dir=tmp_path / "x", binary="no-such-wireguard-go")
    with pytest.raises(WireGuardError, match="no-such-wireguard-go not found on PATH"):
        missing.ensure_device(tunnel.lab.name("wgd"), tunnel.a.netns)
    with pytest.raises(WireGuardError, match="device name"):
        tunnel.engine.ensure_device("a-name-that-is-too-long", tunnel.a.netns)
