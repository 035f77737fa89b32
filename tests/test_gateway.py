"""natgw.gateway without namespaces: host-wide device names, endpoint resolution."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from natgw import keys, state
from natgw.cli import app
from natgw.config import parse_config, parse_host_port
from natgw.gateway import Gateway, GatewayError
from natgw.resolve import resolve
from natgw.state import GatewayState, PeerState, save_state
from natgw.wireguard import DeviceConfig, DeviceStatus, PeerStatus

PRIVATE = keys.genkey()
PEER_KEY = keys.pubkey(keys.genkey())


def config(name: str = "cluster1", **peer: object):
    data = {"name": name, "cidrs": ["10.244.0.0/16"], "privateKey": PRIVATE,
            "peers": [{"name": "cluster2", "publicKey": PEER_KEY, "listenPort": 51820,
                       "remote": [{"cidr": "10.244.0.0/16", "as": "10.245.0.0/16"}], **peer}]}
    return parse_config(data, Path("."))


@pytest.fixture
def state_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(state, "STATE_DIR", tmp_path)
    return tmp_path


def record(gateway: str, device: str, engine: str = "wireguard-go",
           netns: str | None = "other") -> None:
    save_state(GatewayState(gateway, netns, "", [PeerState("p", device, 7, engine)]))


def test_a_device_of_another_gateway_stops_up(state_dir) -> None:
    # core1's default for peer cluster2 is c1-cluster2 too.
    record("core1", "c1-cluster2")
    gw = Gateway(config(), netns="mine")
    with pytest.raises(GatewayError) as e:
        gw.preflight()
    assert str(e.value) == ("peers[0]: device c1-cluster2 is used by gateway core1 in netns "
                            "other; set device: to choose another")
    # The way out the message names.
    Gateway(config(device="c1-east"), netns="mine")._check_devices_free()


def test_own_devices_and_other_gateways_interfaces_are_fine(state_dir) -> None:
    record("cluster1", "c1-cluster2")  # our own previous apply
    record("core1", "c1-cluster2", engine="interface")  # an existing link, not a tunnel
    Gateway(config(), netns="mine")._check_devices_free()


# -- endpoints named by hostname ---------------------------------------------------


def fake_getaddrinfo(answers: dict[str, list[str]], calls: list[str]):
    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        calls.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_DGRAM,
                 socket.IPPROTO_UDP, "", (a, port) if ":" not in a else (a, port, 0, 0))
                for a in answers[host]]
    return getaddrinfo


@pytest.fixture
def dns(monkeypatch):
    """answers: hostname -> addresses, first preferred; calls: the hosts looked up."""
    answers: dict[str, list[str]] = {}
    calls: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo(answers, calls))
    return answers, calls


@pytest.mark.parametrize(("answer", "endpoint"), [
    (["192.0.2.5", "2001:db8::5"], "192.0.2.5:8765"),
    (["2001:db8::5", "192.0.2.5"], "[2001:db8::5]:8765"),  # the system's preference wins
    (["fe80::5%eth0"], "[fe80::5]:8765"),
])
def test_hostname_resolves_to_the_first_answer(dns, answer, endpoint) -> None:
    answers, _ = dns
    answers["gw.example.net"] = answer
    assert resolve(parse_host_port("gw.example.net:8765")) == endpoint


@pytest.mark.parametrize(("given", "endpoint"), [
    ("192.0.2.7:51820", "192.0.2.7:51820"), ("[2001:db8:0::7]:51820", "[2001:db8::7]:51820")])
def test_ip_literals_are_not_looked_up(dns, given, endpoint) -> None:
    assert resolve(parse_host_port(given)) == endpoint
    assert dns[1] == []


def test_unresolvable_name_fails_apply_before_anything_changes(dns, monkeypatch) -> None:
    gw = Gateway(config(endpoint="gw.example.net:8765"), netns="mine")
    monkeypatch.setattr(Gateway, "_apply", lambda self: pytest.fail("the host was changed"))
    with pytest.raises(GatewayError) as e:
        gw.apply()
    assert str(e.value) == (
        "peers[0].endpoint: cannot resolve gw.example.net: Name or service not known")


def test_up_with_an_unresolvable_name_exits_1_with_one_line(dns, tmp_path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({
        "name": "t-resolve", "cidrs": ["10.244.0.0/16"], "privateKey": PRIVATE,
        "peers": [{"name": "hub", "publicKey": PEER_KEY, "endpoint": "gw.example.net:8765",
                   "remote": [{"cidr": "10.244.0.0/16", "as": "10.245.0.0/16"}]}]}))
    result = CliRunner().invoke(app, ["up", str(path), "--detach"])
    assert (result.exit_code, result.stderr) == (
        1, "natgw: peers[0].endpoint: cannot resolve gw.example.net: Name or service not known\n")


@dataclass
class FakeEngine:
    """Just what reresolve_stale uses: status and configure of one device."""

    latest_handshake: int
    endpoint: str | None
    configured: list[DeviceConfig] = field(default_factory=list)
    name: str = "fake"

    def status(self, ifname: str, netns: str | None, timeout: float | None = None
               ) -> DeviceStatus:
        peer = PeerStatus(b"\1" * 32, self.endpoint, (), self.latest_handshake, 0, 0, None)
        return DeviceStatus(ifname, "wireguard-go", None, 51820, (peer,), 1)

    def configure(self, ifname: str, netns: str | None, cfg: DeviceConfig) -> None:
        self.configured.append(cfg)
        self.endpoint = cfg.peers[0].endpoint


NOW = 1_000_000.0


def running(endpoint: str, handshake_age: float | None, current: str) -> tuple[Gateway, FakeEngine]:
    """A running gateway on a fake engine, its endpoint not looked up for a while."""
    engine = FakeEngine(0 if handshake_age is None else int(NOW - handshake_age), current)
    gw = Gateway(config(endpoint=endpoint), netns="mine")
    gw._engine = engine  # type: ignore[assignment]
    return gw, engine


def test_stale_handshake_reresolves_and_moves_the_peer(dns) -> None:
    answers, calls = dns
    answers["gw.example.net"] = ["192.0.2.9"]
    gw, engine = running("gw.example.net:8765", handshake_age=200, current="192.0.2.5:8765")
    assert gw.reresolve_stale(now=NOW) == ["cluster2"]
    assert calls == ["gw.example.net"]
    ((peer,),) = [c.peers for c in engine.configured]
    assert peer.endpoint == "192.0.2.9:8765" and peer.public_key == keys.decode_key(PEER_KEY)
    # Looked up again only after RERESOLVE_INTERVAL, however often the loop asks.
    assert gw.reresolve_stale(now=NOW) == [] and calls == ["gw.example.net"]


def test_a_never_seen_peer_is_stale_too(dns) -> None:
    answers, _ = dns
    answers["gw.example.net"] = ["2001:db8::9"]
    gw, engine = running("gw.example.net:8765", handshake_age=None, current="192.0.2.5:8765")
    assert gw.reresolve_stale(now=NOW) == ["cluster2"]
    assert engine.endpoint == "[2001:db8::9]:8765"


def test_fresh_handshake_same_address_or_ip_literal_leave_the_device_alone(dns) -> None:
    answers, calls = dns
    answers["gw.example.net"] = ["192.0.2.5"]
    gw, engine = running("gw.example.net:8765", handshake_age=100, current="192.0.2.9:8765")
    assert gw.reresolve_stale(now=NOW) == [] and calls == []  # fresh: not even looked up
    gw, engine = running("gw.example.net:8765", handshake_age=500, current="192.0.2.5:8765")
    assert gw.reresolve_stale(now=NOW) == [] and calls == ["gw.example.net"]
    gw, engine = running("192.0.2.5:8765", handshake_age=500, current="192.0.2.5:8765")
    assert gw.reresolve_stale(now=NOW) == [] and calls == ["gw.example.net"]
    assert engine.configured == []


def test_failed_reresolve_keeps_the_address_and_is_logged(dns, caplog) -> None:
    gw, engine = running("gw.example.net:8765", handshake_age=500, current="192.0.2.5:8765")
    assert gw.reresolve_stale(now=NOW) == []
    assert engine.configured == [] and engine.endpoint == "192.0.2.5:8765"
    assert "cannot resolve gw.example.net" in caplog.text


def test_states_of_other_natgw_versions_are_read(state_dir) -> None:
    # A newer natgw on the host may record more; the device check must still read it.
    (state_dir / "core1.json").write_text(json.dumps({
        "gateway": "core1", "netns": "other", "config": "", "sysctls": {"x": 1},
        "peers": [{"name": "p", "device": "c1-cluster2", "ifindex": 7,
                   "engine": "wireguard-go", "mtu": 1420}]}))
    with pytest.raises(GatewayError, match="used by gateway core1"):
        Gateway(config(), netns="mine")._check_devices_free()
