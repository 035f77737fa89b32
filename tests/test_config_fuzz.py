"""Config fuzz: 2,000 mutated cluster.yaml files through `natgw check` (exit 0 or 2, one line,
never a traceback); hostile files refused; a sample of accepted files applied and removed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from config_fuzz import cases, templates
from crash_world import STATE_DIR, run, sysctls, wireguard_go_processes
from typer.testing import CliRunner

from natgw import keys
from natgw.cli import app
from natgw.config import default_device_name

N = int(os.environ.get("NATGW_CONFIG_FUZZ", "2000"))
PREFIX = "fz"
runner = CliRunner()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    key = d / "gw.key"
    key.write_text(keys.genkey() + "\n")
    key.chmod(0o600)
    return d, templates(PREFIX, key, keys.genkey())


def check(path: Path):
    result = runner.invoke(app, ["check", str(path)])
    return result


def assert_one_line(result, case) -> None:
    out = (result.stdout if result.exit_code == 0 else result.stderr).strip()
    assert result.exit_code in (0, 2), (case, result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        (case, repr(result.exception))
    assert "Traceback" not in result.output and len(out.splitlines()) == 1, (case, out)
    assert out.startswith("natgw: ") or out.endswith(")"), (case, out)


def test_templates_are_valid(base):
    d, bases = base
    for i, data in enumerate(bases):
        p = d / f"t{i}.yaml"
        p.write_text(yaml.safe_dump(data))
        r = check(p)
        assert r.exit_code == 0, r.output


def test_mutations_exit_0_or_2_with_one_line(base):
    d, bases = base
    path = d / "case.yaml"
    outcomes = {0: 0, 2: 0}
    for case in cases(bases, N):
        path.write_text(case.text, encoding="utf-8", errors="surrogatepass")
        r = check(path)
        assert_one_line(r, f"seed {case.seed} (template {case.template}):\n{case.text}")
        outcomes[r.exit_code] += 1
    # Mutations that keep a file valid and ones that break it: both kinds are exercised.
    assert outcomes[0] >= N // 50 and outcomes[2] >= N // 2, outcomes


@pytest.mark.parametrize("what,text,shown", [
    ("over 1 MiB", "name: big\n" + "# padding\n" * 110_000, "larger than 1 MiB"),
    ("alias bomb", "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)) + "name: *i\n",
     "YAML aliases expand to more than 100000 nodes (an alias bomb?)"),
    ("deep nesting", "name: " + "[" * 5000 + "]" * 5000 + "\n", "nested"),
])
def test_hostile_files_are_refused(tmp_path, what, text, shown):
    p = tmp_path / "hostile.yaml"
    p.write_text(text)
    r = check(p)
    assert r.exit_code == 2, (what, r.output)
    assert_one_line(r, what)
    assert shown in r.stderr


@pytest.mark.parametrize("field", ["name", "peers[0].name", "peers[0].device",
                                   "peers[0].interface"])
@pytest.mark.parametrize("value", ["../x", "a/../../b", "..", "a/b"])
def test_names_escaping_a_path_are_refused(base, field, value):
    d, bases = base
    data = yaml.safe_load(yaml.safe_dump(bases[0]))
    target = data["peers"][0] if field.startswith("peers") else data
    key = field.rsplit(".", 1)[-1]
    target[key] = value
    if key == "interface":
        for k in ("publicKey", "endpoint", "listenPort", "persistentKeepalive"):
            target.pop(k)
    p = d / "escape.yaml"
    p.write_text(yaml.safe_dump(data))
    r = check(p)
    assert r.exit_code == 2, r.output
    assert_one_line(r, field)
    assert r.stderr.startswith(f"natgw: {field}: "), r.stderr


# -- a sample of accepted files, applied and removed ------------------------------


def _accepted_sample(d: Path, bases: list[dict], prefix: str, want: int) -> list[str]:
    """Accepted mutations, renamed into this run's namespace of names, that differ from
    their template and name only devices of this run."""
    out, seen = [], set()
    path = d / "pick.yaml"
    for case in cases(bases, N, seed=1):
        text = case.text.replace(PREFIX, prefix)
        if text in seen:
            continue
        path.write_text(text)
        if check(path).exit_code != 0:
            continue
        data = yaml.safe_load(text)
        if data == bases[case.template] or not str(data["name"]).startswith(prefix):
            continue
        devices = [p.get("device") or p.get("interface")
                   or default_device_name(data["name"], p["name"])
                   for p in data.get("peers", [])]
        if any(not dev.startswith(prefix) or len(dev) > 15 for dev in devices):
            continue
        seen.add(text)
        out.append(text)
        if len(out) == want:
            break
    return out


@pytest.mark.netns
@pytest.mark.bpf
def test_accepted_files_apply_and_go_away_leaving_nothing(base, netns_lab):
    if shutil.which("wireguard-go") is None:
        pytest.skip("needs wireguard-go")
    d, bases = base
    gw = netns_lab.netns("fz")
    prefix = netns_lab.prefix
    # The interface template's device, with its next hop's network.
    subprocess.run(["ip", "-n", gw, "link", "add", f"{prefix}v1", "type", "veth", "peer",
                    "name", f"{prefix}v1p"], check=True)
    subprocess.run(["ip", "-n", gw, "addr", "add", "192.168.95.1/24", "dev", f"{prefix}v1"],
                   check=True)
    for dev in (f"{prefix}v1", f"{prefix}v1p"):
        subprocess.run(["ip", "-n", gw, "link", "set", dev, "up"], check=True)
    links_before = {link["ifname"] for link in json.loads(subprocess.run(
        ["ip", "-n", gw, "-j", "link"], capture_output=True, text=True, check=True).stdout)}
    forwarding = sysctls(gw)
    samples = _accepted_sample(d, [yaml.safe_load(yaml.safe_dump(b).replace(PREFIX, prefix))
                                   for b in bases], prefix, int(os.environ.get(
                                       "NATGW_CONFIG_FUZZ_APPLY", "4")))
    assert samples
    applied = 0
    for i, text in enumerate(samples):
        path = d / f"apply{i}.yaml"
        path.write_text(text)
        name = yaml.safe_load(text)["name"]
        netns_lab.on_cleanup(lambda name=name: run("--netns", gw, "down", name))
        r = run("--netns", gw, "up", str(path), "--detach")
        # Applied, or a runtime failure (e.g. an engine this host lacks) in one line.
        assert r.returncode in (0, 1), (text, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 1, r.stderr
        applied += r.returncode == 0
        print(f"sample {i}: exit {r.returncode} {r.stderr.strip()}")
        r = run("--netns", gw, "down", name)
        assert r.returncode == 0, (text, r.stderr)
        links = {link["ifname"] for link in json.loads(subprocess.run(
            ["ip", "-n", gw, "-j", "link"], capture_output=True, text=True, check=True).stdout)}
        assert links == links_before, text
        routes = subprocess.run(["ip", "-n", gw, "route", "show", "proto", "78"],
                                capture_output=True, text=True, check=True).stdout + \
            subprocess.run(["ip", "-n", gw, "-6", "route", "show", "proto", "78"],
                           capture_output=True, text=True, check=True).stdout
        assert routes.strip() == "", text
        qdiscs = subprocess.run(["ip", "netns", "exec", gw, "tc", "qdisc"], capture_output=True,
                                text=True, check=True).stdout
        assert "clsact" not in qdiscs, text
        assert not os.path.exists(f"/sys/fs/bpf/natgw/{name}"), text
        assert [p.name for p in STATE_DIR.glob(f"{name}.*") if p.suffix != ".lock"] == [], text
        data = yaml.safe_load(text)
        tunnels = [p.get("device") or default_device_name(name, p["name"])
                   for p in data.get("peers", []) if "interface" not in p]
        assert wireguard_go_processes(tunnels) == [], text
        assert sysctls(gw) == forwarding, text
    assert applied >= len(samples) // 2
