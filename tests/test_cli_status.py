"""`natgw status`: every gateway of a netns like `wg show`, narrowed by FILE or name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from natgw import state
from natgw.cli import app
from natgw.state import GatewayState, PeerState

runner = CliRunner()


def natgw(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "run"
    monkeypatch.setattr(state, "STATE_DIR", d)
    return d


def up(name: str, netns: str | None, peers: list[PeerState]) -> None:
    state.save_state(GatewayState(name, netns, f"/etc/natgw/{name}.yaml", peers))


LAB = PeerState("lab", "lo", 1, "interface", routes=["10.247.0.0/16"])


def test_nothing_running_says_so(state_dir) -> None:
    assert natgw("status") == (0, "no natgw gateway is running\n", "")
    assert natgw("status", "--json") == (0, "[]\n", "")


def test_lists_every_gateway_of_the_netns(state_dir, netns_lab) -> None:
    ns = netns_lab.netns("s")
    up("gwb", None, [LAB])
    up("gwa", None, [LAB, PeerState("c2", "gwa-c2", 9, "wireguard-go")])
    up("gwn", ns, [LAB])
    code, out, err = natgw("status")
    assert (code, err) == (0, "")
    blocks = out.split("\n\n")
    assert [b.splitlines()[0] for b in blocks if b.startswith("gateway:")] == [
        "gateway: gwa", "gateway: gwb"]
    assert "gateway: gwn" not in out
    # The tunnel's device does not exist: reported down with the reason, not a failure.
    assert "peer: c2\n  device: gwa-c2 (wireguard-go)" in out
    assert "  up: no\n  error: " in out
    code, out, _ = natgw("status", "--json")
    doc = json.loads(out)
    assert [(g["gateway"], g["netns"], [p["name"] for p in g["peers"]]) for g in doc] == [
        ("gwa", None, ["lab", "c2"]), ("gwb", None, ["lab"])]
    lab = doc[1]["peers"][0]
    assert (lab["up"], lab["routes"], lab["engine"]) == (True, ["10.247.0.0/16"], "interface")
    code, out, _ = natgw("--netns", ns, "status", "--json")
    assert (code, [g["gateway"] for g in json.loads(out)]) == (0, ["gwn"])
    code, out, _ = natgw("--netns", ns, "status")
    assert out.startswith(f"gateway: gwn\n  netns: {ns}\n\npeer: lab\n")


def test_nothing_running_in_a_netns(state_dir, netns_lab) -> None:
    ns = netns_lab.netns("e")
    up("gwa", None, [LAB])
    assert natgw("--netns", ns, "status") == (0, f"no natgw gateway is running in netns {ns}\n",
                                              "")
    assert natgw("--netns", ns, "status", "-j") == (0, "[]\n", "")


def test_file_or_name_narrows(state_dir, tmp_path) -> None:
    up("gwa", None, [LAB])
    up("gwb", None, [LAB])
    cfg = tmp_path / "b.yaml"
    cfg.write_text("name: gwb\npeers: []\n")  # only name: is read
    for arg in ("gwb", str(cfg)):
        code, out, _ = natgw("status", arg, "--json")
        assert (code, [g["gateway"] for g in json.loads(out)]) == (0, ["gwb"])
        code, out, _ = natgw("status", arg)
        assert out.startswith("gateway: gwb\n\npeer: lab\n") and "gwa" not in out


def test_named_gateway_in_another_netns(state_dir, netns_lab) -> None:
    ns, other = netns_lab.netns("a"), netns_lab.netns("b")
    up("gwn", ns, [LAB])
    # No --netns: found where it runs.
    code, out, _ = natgw("status", "gwn", "--json")
    assert (code, json.loads(out)[0]["netns"]) == (0, ns)
    assert natgw("--netns", other, "status", "gwn") == (
        1, "", f"natgw: gateway gwn is up in netns {ns}, not {other}: pass --netns accordingly\n")


@pytest.mark.parametrize(("args", "code", "err"), [
    (["status", "natgw-test-absent"], 1,
     "natgw: gateway natgw-test-absent: not up (no state in /run/natgw)\n"),
    (["--netns", "natgw-test-absent", "status"], 1,
     "natgw: netns natgw-test-absent: does not exist\n"),
])
def test_errors(state_dir, args, code, err) -> None:
    assert natgw(*args) == (code, "", err)


def test_file_without_name_is_invalid(state_dir, tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("peers: []\n")
    assert natgw("status", str(cfg)) == (2, "", f"natgw: {cfg}: name: field required\n")
