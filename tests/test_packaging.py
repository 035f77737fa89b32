"""The wheel is the product: it carries the dataplane and runs from a fresh venv.

The end-to-end test builds the wheel from this checkout, installs it into a venv
outside the checkout and drives a small gateway (one `interface:` peer on a veth,
no WireGuard) with that venv's `natgw`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from natgw.dataplane import loader
from natgw.dataplane.loader import DataplaneError, bpf_dir

REPO = Path(__file__).resolve().parents[1]
BPF_FILES = sorted(p.name for p in (REPO / "bpf").iterdir() if p.suffix in (".c", ".h"))


# -- where the loader finds the C source --------------------------------------


def test_editable_install_reads_the_checkout() -> None:
    # The test venv is an editable install of this checkout (make setup).
    assert bpf_dir() == REPO / "bpf"
    assert "natgw_egress" in loader.inline_source()


def test_installed_package_data_comes_first(tmp_path, monkeypatch) -> None:
    pkg = tmp_path / "natgw"
    (pkg / "bpf").mkdir(parents=True)
    monkeypatch.setattr(loader.resources, "files", lambda _name: pkg)
    monkeypatch.setattr(loader, "_editable_checkout", lambda: REPO)
    assert bpf_dir() == pkg / "bpf"


def test_missing_source_is_a_one_line_error(tmp_path, monkeypatch) -> None:
    # Not editable (or editable from another checkout) and no natgw/bpf: no guessing.
    monkeypatch.setattr(loader.resources, "files", lambda _name: tmp_path)
    monkeypatch.setattr(loader, "_editable_checkout", lambda: None)
    with pytest.raises(DataplaneError, match="natgw/bpf is missing"):
        bpf_dir()


def test_editable_checkout_must_be_this_package(monkeypatch, tmp_path) -> None:
    class Dist:
        def __init__(self, url: str) -> None:
            self.doc = json.dumps({"url": url, "dir_info": {"editable": True}})

        def read_text(self, _name: str) -> str:
            return self.doc

    monkeypatch.setattr(loader.metadata, "distribution", lambda _n: Dist(REPO.as_uri()))
    assert loader._editable_checkout() == REPO
    monkeypatch.setattr(loader.metadata, "distribution", lambda _n: Dist(tmp_path.as_uri()))
    assert loader._editable_checkout() is None


# -- the wheel, built and used ----------------------------------------------------


def _run(*args: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    # No PYTHONPATH or VIRTUAL_ENV of the test venv: the new venv stands alone.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # pip's cache stays on: the build backend and dependencies come from it when they can.
    r = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, REPO, cwd=out)
    assert r.returncode == 0, r.stderr
    (whl,) = out.glob("natgw-*.whl")
    return whl


def test_wheel_carries_the_dataplane(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n.removeprefix("natgw/bpf/") for n in names
                  if n.startswith("natgw/bpf/")) == BPF_FILES
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "natgw = natgw.cli:app" in zipfile.ZipFile(wheel).read(entry).decode()


@pytest.mark.netns
@pytest.mark.bpf
def test_installed_wheel_runs_a_gateway(wheel: Path, netns_lab, tmp_path_factory) -> None:
    home = tmp_path_factory.mktemp("venv")
    assert REPO not in home.parents
    venv = home / "venv"
    # Debian's bcc is only seen through the system site packages.
    r = _run("/usr/bin/python3", "-m", "venv", "--system-site-packages", "--without-pip", venv,
             cwd=home)
    assert r.returncode == 0, r.stderr
    r = _run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q",
             wheel, cwd=home)
    assert r.returncode == 0, r.stderr
    r = _run(venv / "bin" / "python", "-c", "import natgw; print(natgw.__file__)", cwd=home)
    assert Path(r.stdout.strip()).is_relative_to(venv), r.stdout + r.stderr

    ns = netns_lab.netns("w")
    other = netns_lab.netns("o")
    dev, _ = netns_lab.veth(ns, "192.0.2.1/24", other, "192.0.2.2/24")
    name = netns_lab.name("gw")
    config = home / "gw.yaml"
    config.write_text(yaml.safe_dump({
        "name": name,
        "cidrs": ["10.244.0.0/16"],
        "peers": [{"name": "lab", "interface": dev, "via": "192.0.2.2",
                   "remote": [{"cidr": "10.244.0.0/16", "as": "10.245.0.0/16"}]}],
    }))
    natgw = venv / "bin" / "natgw"
    pins = Path(loader.PIN_ROOT) / name
    netns_lab.on_cleanup(lambda: _run(natgw, "--netns", ns, "down", config, cwd=home))

    r = _run(natgw, "--netns", ns, "up", config, "--detach", cwd=home)
    assert r.returncode == 0, r.stderr
    assert pins.is_dir()
    r = _run(natgw, "--netns", ns, "maps", cwd=home)
    assert r.returncode == 0, r.stderr
    assert f"gateway {name}" in r.stdout
    assert "10.245.0.0/16" in r.stdout and "10.244.0.0/16" in r.stdout, r.stdout
    r = _run(natgw, "--netns", ns, "down", config, cwd=home)
    assert r.returncode == 0, r.stderr
    assert not pins.exists()
