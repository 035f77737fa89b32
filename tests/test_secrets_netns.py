"""The private key never shows: one test per surface (outputs, errors and logs at every level,
metrics, state files, tracebacks, child processes), files 0600 from creation, and an inline
privateKey kept out of the applied-config record."""

from __future__ import annotations

import base64
import logging
import os
import shutil
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from crash_world import STATE_DIR, build, converged, run

from lab.netnslab import NetnsLab, netns_unavailable_reason
from natgw.faults import FAIL_ENV

pytestmark = [pytest.mark.netns, pytest.mark.bpf]


def forms(key_b64: str) -> list[str]:
    """Every way the key could be written out: base64, hex (as UAPI speaks it), raw repr."""
    raw = base64.b64decode(key_b64)
    return [key_b64, key_b64.rstrip("="), raw.hex(), repr(raw)[2:-1]]


def assert_no_key(text: str, key: str, where: str) -> None:
    for form in forms(key):
        assert form not in text, f"the private key appears in {where}"


@pytest.fixture(scope="module")
def s(tmp_path_factory):
    reason = netns_unavailable_reason() or (None if shutil.which("wireguard-go")
                                            else "needs wireguard-go")
    if reason:
        pytest.skip(reason)
    with NetnsLab() as lab:
        setup = build(lab, tmp_path_factory.mktemp("secrets"))
        # File A with the key inline, the form that must not be copied anywhere.
        for tag in ("A", "B"):
            data = yaml.safe_load(setup.files[tag].read_text())
            keyfile = Path(data.pop("privateKeyFile"))
            data["privateKey"] = keyfile.read_text().strip()
            setup.files[tag].write_text(yaml.safe_dump(data, sort_keys=False))
        setup.key = data["privateKey"]
        # umask 0: a file natgw created with default permissions would be world-readable.
        r = subprocess.run([*natgw_argv(), "--netns", setup.gw, "up", str(setup.files["A"]),
                            "--detach"], capture_output=True, text=True, timeout=300,
                           preexec_fn=lambda: os.umask(0))
        assert r.returncode == 0, r.stderr
        assert_no_key(r.stdout + r.stderr, setup.key, "up's output")
        yield setup


def natgw_argv():
    from lab.net import NATGW
    return [NATGW]


def test_not_in_status_status_json_or_maps(s):
    for args in (["status", s.name], ["status", s.name, "--json"], ["maps"],
                 ["maps", "--json"]):
        r = run("--netns", s.gw, *args)
        assert r.returncode == 0, (args, r.stderr)
        assert_no_key(r.stdout + r.stderr, s.key, " ".join(args))


def test_not_in_errors_or_logs_at_any_level(s, monkeypatch):
    from natgw.config import load_config
    from natgw.gateway import Gateway, GatewayError

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Keep(level=logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        monkeypatch.setenv(FAIL_ENV, "tunnel-configured:subprocess")
        with pytest.raises(GatewayError) as failed:
            Gateway(load_config(s.files["B"]), s.gw, s.files["B"]).apply()
        bad = s.files["A"].with_name("bad.yaml")
        data = yaml.safe_load(s.files["A"].read_text())
        data["privateKey"] = s.key[:-4] + "!!!="
        bad.write_text(yaml.safe_dump(data))
        r = run("check", str(bad))
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert records, "natgw logged nothing: the test would prove nothing"
    assert_no_key("\n".join(records), s.key, "the log")
    assert_no_key(str(failed.value), s.key, "an apply error")
    assert r.returncode == 2 and "privateKey" in r.stderr
    assert_no_key(r.stderr, s.key[:-4], "check's error")
    assert converged(s, "A") == []


def test_not_in_metrics(s):
    from gateways import free_port

    from natgw.metrics import NatgwCollector, serve_metrics, state_peer_health
    from natgw.state import load_state

    port = free_port()
    collector = NatgwCollector([s.name], peers=lambda: state_peer_health([load_state(s.name)]))
    with serve_metrics("127.0.0.1", port, collector):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    assert "natgw_peer_up" in text
    assert_no_key(text, s.key, "the metrics")


def test_not_in_state_files_which_are_0600(s):
    files = [p for p in STATE_DIR.glob(f"{s.name}.*")]
    files += [p for d in s.tunnels["A"] for p in (STATE_DIR / "wg").glob(f"{d}.*")]
    names = {p.name for p in files}
    assert {f"{s.name}.json", f"{s.name}.applied.yaml", f"{s.name}.lock"} <= names
    assert any(n.endswith(".pid") for n in names) and any(n.endswith(".log") for n in names)
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        assert_no_key(p.read_text(errors="replace"), s.key, p.name)
    applied = yaml.safe_load((STATE_DIR / f"{s.name}.applied.yaml").read_text())
    assert "privateKey" not in applied and applied["name"] == s.name


def test_not_in_a_traceback(s):
    # An exception natgw did not expect, raised where the key is a local variable.
    code = (
        "import sys, natgw.gateway as g\n"
        "def apply(self):\n"
        "    secret = self.cfg.private_key.get_secret_value()\n"
        "    raise RuntimeError('unexpected')\n"
        "g.Gateway.apply = apply\n"
        "from natgw.cli import app\n"
        "sys.argv[0] = 'natgw'\n"
        "app()\n"
    )
    r = subprocess.run([sys.executable, "-c", code, "--netns", s.gw, "up", str(s.files["A"]),
                        "--detach"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip() == "natgw: internal error: unexpected"
    assert_no_key(r.stdout + r.stderr, s.key, "a traceback")


def test_not_in_a_child_command_line_or_environment(s):
    pid = int((STATE_DIR / "wg" / f"{s.tunnels['A'][0]}.pid").read_text())
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    assert "wireguard-go" in cmdline
    assert_no_key(cmdline, s.key, "wireguard-go's command line")
    assert_no_key(environ, s.key, "wireguard-go's environment")


def test_a_failed_apply_restores_without_the_inline_key_on_disk(s):
    # The record holds no key: the restore takes the gateway's key from the file being applied.
    r = run("--netns", s.gw, "up", str(s.files["B"]), "--detach",
            env={FAIL_ENV: "routes-set:netlink"})
    assert r.returncode == 1 and r.stderr.strip().endswith("the previous configuration is "
                                                           "restored"), r.stderr
    assert converged(s, "A") == []
