"""`natgw client-config`: wg-quick files for plain clients, and `check` of the hub examples."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from natgw import keys, pool
from natgw.cli import app

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
runner = CliRunner()


@pytest.fixture(autouse=True)
def lib_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "LIB_DIR", tmp_path / "lib")


@pytest.fixture()
def hub_file(tmp_path: Path) -> Path:
    """examples/hub.yaml with a fresh key."""
    shutil.copy(EXAMPLES / "hub.yaml", tmp_path / "hub.yaml")
    key = tmp_path / "legacy.key"
    key.write_text(keys.genkey() + "\n")
    key.chmod(0o600)
    return tmp_path / "hub.yaml"


def hub_public_key(hub_file: Path) -> str:
    return keys.pubkey((hub_file.parent / "legacy.key").read_text())


def settings(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of every setting, comments left out."""
    out, section = [], ""
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("["):
            section = line
        elif line:
            key, _, value = line.partition("=")
            out.append((section, key.strip(), value.strip()))
    return out


def test_plain_client_config(hub_file: Path) -> None:
    r = runner.invoke(app, ["client-config", str(hub_file), "laptop"])
    assert r.exit_code == 0, r.stderr
    assert settings(r.stdout) == [
        ("[Interface]", "PrivateKey", "<PLACEHOLDER: this client's private key>"),
        ("[Interface]", "Address", "10.192.0.3/32"),  # .2 is cloud's, fixed in the file
        ("[Interface]", "MTU", "1420"),
        ("[Peer]", "PublicKey", hub_public_key(hub_file)),
        ("[Peer]", "Endpoint", "gw.example.net:8765"),
        ("[Peer]", "AllowedIPs", "10.192.0.0/24, 10.250.0.0/16"),
        ("[Peer]", "PersistentKeepalive", "25"),
    ]
    assert r.stderr == ""
    # The address is recorded: the hub configures the same one, and it does not move.
    assert pool.load("legacy") == {"laptop": "10.192.0.3"}
    again = runner.invoke(app, ["client-config", str(hub_file), "laptop"])
    assert again.stdout == r.stdout


def test_fixed_address_client(hub_file: Path) -> None:
    r = runner.invoke(app, ["client-config", str(hub_file), "cloud"])
    assert ("[Interface]", "Address", "10.192.0.2/32") in settings(r.stdout)


def test_genkey_puts_the_private_key_in_and_the_public_key_on_stderr(hub_file: Path) -> None:
    r = runner.invoke(app, ["client-config", str(hub_file), "laptop", "--genkey"])
    assert r.exit_code == 0, r.stderr
    private = dict((k, v) for s, k, v in settings(r.stdout) if s == "[Interface]")["PrivateKey"]
    keys.decode_key(private)
    assert r.stderr.startswith(f"publicKey: {keys.pubkey(private)}")
    assert "PLACEHOLDER" not in r.stdout


def test_without_endpoint_a_comment_says_where_to_fill_it_in(hub_file: Path) -> None:
    data = yaml.safe_load(hub_file.read_text())
    del data["hub"]["endpoint"]
    hub_file.write_text(yaml.safe_dump(data))
    r = runner.invoke(app, ["client-config", str(hub_file), "laptop"])
    assert r.exit_code == 0
    assert "Endpoint" not in {k for _, k, _ in settings(r.stdout)}
    assert "# public address here: Endpoint = <host>:8765" in r.stdout
    assert "No hub.endpoint: in the hub's file" in r.stdout


def test_untranslated_cidrs_are_shown_as_they_are(hub_file: Path) -> None:
    data = yaml.safe_load(hub_file.read_text())
    data["cidrs"].append("192.168.50.0/24")
    hub_file.write_text(yaml.safe_dump(data))
    r = runner.invoke(app, ["client-config", str(hub_file), "laptop"])
    assert ("[Peer]", "AllowedIPs", "10.192.0.0/24, 10.250.0.0/16, 192.168.50.0/24") in \
        settings(r.stdout)


@pytest.mark.parametrize(("edit", "args", "message"), [
    (None, ["nobody"], "hub.clients: no client named nobody (clients: cloud, laptop)"),
    (lambda d: d.pop("hub"), ["laptop"], "hub: the file has no hub: section"),
    (lambda d: d["hub"].update(listenPort=0), ["laptop"],
     "hub.listenPort: 0 is out of range 1..65535"),
])
def test_errors_exit_2_with_one_line(hub_file: Path, edit, args, message) -> None:
    if edit is not None:
        data = yaml.safe_load(hub_file.read_text())
        edit(data)
        hub_file.write_text(yaml.safe_dump(data))
    r = runner.invoke(app, ["client-config", str(hub_file), *args])
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", f"natgw: {message}\n")


@pytest.mark.skipif(shutil.which("wg-quick") is None, reason="needs wg-quick")
@pytest.mark.parametrize("genkey", [False, True])
def test_output_passes_wg_quick_strip(hub_file: Path, genkey: bool) -> None:
    r = runner.invoke(app, ["client-config", str(hub_file), "laptop",
                            *(["--genkey"] if genkey else [])])
    conf = hub_file.parent / "legacy.conf"
    conf.write_text(r.stdout)
    conf.chmod(0o600)
    stripped = subprocess.run(["wg-quick", "strip", str(conf)], capture_output=True, text=True)
    assert stripped.returncode == 0, stripped.stderr
    # strip keeps exactly what `wg setconf` reads.
    assert {k for _, k, _ in settings(stripped.stdout)} == {
        "PrivateKey", "PublicKey", "Endpoint", "AllowedIPs", "PersistentKeepalive"}


@pytest.mark.parametrize(("name", "summary"), [
    ("hub.yaml", "ok (0 peers, a hub with 2 clients)"),
    ("hub-client.yaml", "ok (1 peer)"),
])
def test_check_accepts_the_hub_examples(tmp_path: Path, name: str, summary: str) -> None:
    shutil.copy(EXAMPLES / name, tmp_path / name)
    data = yaml.safe_load((EXAMPLES / name).read_text())
    key = tmp_path / data["privateKeyFile"]
    key.write_text(keys.genkey() + "\n")
    key.chmod(0o600)
    r = runner.invoke(app, ["check", str(tmp_path / name)])
    assert (r.exit_code, r.stdout) == (0, f"{tmp_path / name}: {summary}\n")
