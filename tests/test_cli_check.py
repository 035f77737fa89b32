"""CLI: `check`, `genkey`, `pubkey`, the global --netns option and exit codes."""

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from natgw import keys
from natgw.cli import app
from natgw.cli.options import Options

NATGW = Path(sys.executable).parent / "natgw"
runner = CliRunner()


def write_config(tmp_path: Path, peers: int = 2) -> Path:
    key = tmp_path / "gw.key"
    key.write_text(keys.genkey() + "\n")
    key.chmod(0o600)
    data = {
        "name": "gw",
        "cidrs": ["10.244.0.0/16"],
        "privateKeyFile": "gw.key",
        "peers": [
            {
                "name": f"p{i}",
                "publicKey": keys.pubkey(keys.genkey()),
                "endpoint": f"192.0.2.{i + 1}:51820",
                "remote": [{"cidr": "10.244.0.0/16", "as": f"10.{245 + i}.0.0/16"}],
            }
            for i in range(peers)
        ],
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("peers", "summary"), [(0, "0 peers"), (1, "1 peer"), (2, "2 peers")])
def test_check_ok(tmp_path: Path, peers: int, summary: str) -> None:
    path = write_config(tmp_path, peers)
    result = runner.invoke(app, ["check", str(path)])
    assert (result.exit_code, result.stdout) == (0, f"{path}: ok ({summary})\n")


EDITS: list[tuple[Callable[[dict[str, Any]], None], str]] = [
    (
        lambda d: d["peers"][0]["remote"][0].update({"as": "10.245.0.0/24"}),
        "peers[0].remote[0].as: /24 does not match cidr 10.244.0.0/16",
    ),
    (lambda d: d["peers"][1].update(colour="blue"), "peers[1].colour: unknown field"),
    (lambda d: d.update(mtu=9), "mtu: 9 is out of range 1280..65535"),
]


@pytest.mark.parametrize(("edit", "message"), EDITS)
def test_check_invalid_file_exits_2_with_one_line(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    path = write_config(tmp_path)
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["check", str(path)])
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", f"natgw: {message}\n")


def test_check_yaml_error_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: gw\ncidrs: [10.0.0.0/8\n")
    result = runner.invoke(app, ["check", str(bad)])
    assert result.exit_code == 2
    assert (
        result.stderr
        == f"natgw: {bad}: line 3, column 1: expected ',' or ']', but got '<stream end>'\n"
    )  # noqa: E501
    result = runner.invoke(app, ["check", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert result.stderr == f"natgw: {tmp_path}/nope.yaml: cannot read: No such file or directory\n"


def test_check_key_file_mode(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    (tmp_path / "gw.key").chmod(0o644)
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 2
    assert result.stderr == (
        f"natgw: privateKeyFile: {tmp_path}/gw.key: permissions 0644 are too open "
        "(must not be readable by group or others; chmod 600 it)\n"
    )


def test_genkey_then_pubkey() -> None:
    private = runner.invoke(app, ["genkey"]).stdout
    assert keys.decode_key(private) and private.endswith("\n")
    result = runner.invoke(app, ["pubkey"], input=private)
    assert (result.exit_code, result.stdout) == (0, keys.pubkey(private) + "\n")


@pytest.mark.skipif(not shutil.which("wg"), reason="wireguard-tools (wg) not installed")
def test_genkey_and_pubkey_agree_with_wg() -> None:
    private = runner.invoke(app, ["genkey"]).stdout
    wg = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True)
    assert runner.invoke(app, ["pubkey"], input=private).stdout == wg.stdout


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("", "not a WireGuard key: expected 44 base64 characters, got 0"),
        ("not a key\n", "not a WireGuard key: expected 44 base64 characters, got 9"),
    ],
)
def test_pubkey_invalid_input_exits_2(stdin: str, message: str) -> None:
    result = runner.invoke(app, ["pubkey"], input=stdin)
    assert (result.exit_code, result.stdout, result.stderr) == (2, "", f"natgw: {message}\n")


@pytest.mark.parametrize(
    "args",
    [["check"], ["frobnicate"], ["check", "a.yaml", "b.yaml"], ["--bogus", "version"], ["--netns"]],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert runner.invoke(app, args).exit_code == 2


def test_netns_option_is_stored_in_context() -> None:
    command = get_command(app)
    for args, netns in [(["--netns", "blue", "version"], "blue"), (["version"], None)]:
        ctx = command.make_context("natgw", args)
        with ctx:
            command.invoke(ctx)
        assert ctx.obj == Options(netns=netns)


def test_installed_entry_point_errors_without_traceback(tmp_path: Path) -> None:
    # The real console script: exit code and a single stderr line, no traceback.
    path = write_config(tmp_path)
    (tmp_path / "gw.key").write_text("garbage\n")
    run = subprocess.run([NATGW, "check", str(path)], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"natgw: privateKeyFile: {tmp_path}/gw.key: not a WireGuard key: "
        "expected 44 base64 characters, got 7"
    ]
    ok = subprocess.run([NATGW, "check", str(write_config(tmp_path))], capture_output=True)
    assert ok.returncode == 0
