"""The pipes: section: each bad file and the one line it must produce (exit 2)."""

# ruff: noqa: E501 - one case per line, like a fixture table.

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from natgw import keys
from natgw.cli import app
from natgw.config import ConfigError, parse_config

OWN = keys.genkey()
PEER_KEY = keys.pubkey(keys.genkey())
OTHER_KEY = keys.pubkey(keys.genkey())


def cfg(*pipes: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "name": "client",
        "cidrs": ["10.244.0.0/16"],
        "privateKey": OWN,
        "peers": [
            {"name": "legacy", "publicKey": PEER_KEY, "endpoint": "192.0.2.1:8765",
             "remote": [{"cidr": "172.25.0.0/16"}]},
            {"name": "cloud", "publicKey": OTHER_KEY, "listenPort": 51821,
             "remote": [{"cidr": "10.9.0.0/16"}]},
            {"name": "lan", "interface": "eth1", "remote": [{"cidr": "10.10.0.0/16"}]},
        ],
        "pipes": list(pipes),
    } | top


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(data, Path("."))
    return str(e.value)


NGINX = {"name": "nginx", "port": 8080, "peer": "legacy"}

CASES = [
    ("both peer and remote", cfg({"name": "nginx", "port": 8080, "peer": "legacy", "remote": "nginx:80"}), "pipes[0]: set one of peer and remote, not both"),
    ("neither peer nor remote", cfg({"name": "nginx", "port": 8080}), "pipes[0]: set one of peer (pass connections on to that peer's natgw) or remote (dial host:port from here)"),
    ("unknown peer", cfg({"name": "nginx", "port": 8080, "peer": "legacyy"}), "pipes[0].peer: no peer named legacyy"),
    ("peer without tunnel", cfg({"name": "nginx", "port": 8080, "peer": "lan"}), "pipes[0].peer: peer lan has no WireGuard tunnel (interface:); pipes run only inside tunnels"),
    ("unknown peer in from", cfg({"name": "nginx", "remote": "nginx:80", "from": ["cloud", "ghost"]}), "pipes[0].from[1]: no peer named ghost"),
    ("same port twice", cfg(NGINX, {"name": "web", "port": 8080, "remote": "web:80"}), "pipes[1].port: [::]:8080 is also where pipes[0] listens ([::]:8080)"),
    ("address inside a port", cfg(NGINX, {"name": "web", "listen": "127.0.0.1:8080", "remote": "web:80"}), "pipes[1].listen: 127.0.0.1:8080 is also where pipes[0] listens ([::]:8080)"),
    ("same address twice", cfg({"name": "a", "listen": "[::1]:81", "remote": "a:80"}, {"name": "b", "listen": "[::1]:81", "remote": "b:80"}), "pipes[1].listen: [::1]:81 is also where pipes[0] listens ([::1]:81)"),
    ("the metrics address", cfg({"name": "m", "port": 9000, "remote": "a:80"}), "pipes[0].port: [::]:9000 is also the metrics address 127.0.0.1:9000"),
    ("natgw's pipe port", cfg({"name": "m", "port": 51870, "remote": "a:80"}), "pipes[0].port: port 51870 is natgw's own pipe port between gateways"),
    ("name used twice", cfg(NGINX, {"name": "nginx", "port": 8081, "peer": "legacy"}), "pipes[1].name: duplicate pipe name nginx (also pipes[0])"),
    ("remote without port", cfg({"name": "nginx", "peer": None, "remote": "nginx"}), "pipes[0].remote: expected host:port, got 'nginx'"),
    ("remote port out of range", cfg({"name": "nginx", "remote": "nginx:70000"}), "pipes[0].remote: invalid port '70000': expected 1..65535"),
    ("remote bad host", cfg({"name": "nginx", "remote": "ngi nx:80"}), "pipes[0].remote: ngi nx is neither an IP address nor a hostname"),
    ("remote v6 without brackets", cfg({"name": "nginx", "remote": "fd00::1:80"}), "pipes[0].remote: write an IPv6 address in brackets: [address]:port, got 'fd00::1:80'"),
    ("listen on a hostname", cfg({"name": "nginx", "listen": "localhost:8080", "remote": "a:80"}), "pipes[0].listen: localhost is not an IP address; listen on an address of this gateway"),
    ("port and listen", cfg({"name": "nginx", "port": 8080, "listen": "127.0.0.1:8081", "remote": "a:80"}), "pipes[0].listen: set port (every address) or listen (one address), not both"),
    ("port out of range", cfg({"name": "nginx", "port": 0, "remote": "a:80"}), "pipes[0].port: 0 is out of range 1..65535"),
    ("bad pipe name", cfg({"name": "my pipe", "remote": "a:80"}), "pipes[0].name: invalid name 'my pipe': use letters, digits, '_', '.' and '-', starting with a letter or digit"),
    ("unknown field", cfg({"name": "nginx", "remote": "a:80", "remot": "b:80"}), "pipes[0].remot: unknown field"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_pipes(data: dict[str, Any], message: str) -> None:
    assert error_of(data) == message


def test_valid_pipes() -> None:
    c = parse_config(cfg(
        NGINX,
        {"name": "api", "listen": "127.0.0.1:8081", "remote": "api.internal:443"},
        {"name": "relay", "peer": "cloud", "from": ["legacy"]},  # no own port: a hop
        {"name": "db", "listen": "10.244.0.1:5432", "remote": "[fd00::5]:5432", "from": []},
    ), Path("."))
    assert [str(p.bind) if p.bind else None for p in c.pipes] == [
        "[::]:8080", "127.0.0.1:8081", None, "10.244.0.1:5432"]
    assert [p.target for p in c.pipes] == [
        "peer legacy", "remote api.internal:443", "peer cloud", "remote [fd00::5]:5432"]
    assert c.pipes[2].allows("legacy") and not c.pipes[2].allows("cloud")
    assert c.pipes[0].allows("anyone") and not c.pipes[3].allows("legacy")


HUB = {"address": "10.192.0.1/24", "listenPort": 8765, "clients": [
    {"name": "laptop", "publicKey": keys.pubkey(keys.genkey())},
    {"name": "newbie"},  # no key yet: client-config --genkey makes one
]}


def test_hub_clients_with_a_key_are_pipe_peers() -> None:
    c = parse_config(cfg({"name": "nginx", "remote": "nginx:80", "from": ["laptop", "cloud"]},
                         {"name": "back", "port": 8090, "peer": "laptop"}, hub=HUB), Path("."))
    assert [p.target for p in c.pipes] == ["remote nginx:80", "peer laptop"]


@pytest.mark.parametrize("pipe", [{"name": "back", "port": 8090, "peer": "newbie"},
                                  {"name": "nginx", "remote": "nginx:80", "from": ["newbie"]}])
def test_hub_client_without_a_key_is_not_a_pipe_peer(pipe: dict[str, Any]) -> None:
    field = "peer" if "peer" in pipe else "from[0]"
    assert error_of(cfg(pipe, hub=HUB)) == (
        f"pipes[0].{field}: hub client newbie has no publicKey yet; pipes need its key")


def test_check_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg({"name": "nginx", "port": 8080, "peer": "nope"})))
    r = CliRunner().invoke(app, ["check", str(path)])
    assert r.exit_code == 2
    assert r.output == "natgw: pipes[0].peer: no peer named nope\n"


def test_detach_with_pipes_and_no_foreground_refuses_before_changing_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from natgw import gateway

    monkeypatch.setattr(gateway.Gateway, "apply", lambda self: pytest.fail("applied"))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg(NGINX, name="pipes-test-no-such-gateway")))
    r = CliRunner().invoke(app, ["up", "--detach", str(path)])
    assert r.exit_code == 1
    assert r.output.count("\n") == 1
    assert r.output.startswith("natgw: pipes need the foreground natgw up")
