"""Drift: what natgw made and someone removed by hand comes back under a foreground `up`,
within 5 s, with one log line, a metric and a line in `status`."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import yaml
from crash_world import build, converged, run
from gateways import scrape

from lab.net import NATGW

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

REPAIR_WITHIN = 5.0  # seconds, the target
PIN_REPAIR_WITHIN = REPAIR_WITHIN  # pinned again from the running filters: no compile


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


def remove_route(s):
    _ip("-n", s.gw, "route", "del", "10.245.0.0/16", "proto", "78")


def remove_filter(s):
    _ip("netns", "exec", s.gw, "tc", "filter", "del", "dev", s.tunnels["A"][0], "ingress",
        "pref", str(0x4E47))


def kill_engine(s):
    os.kill(int(open(f"/run/natgw/wg/{s.tunnels['A'][0]}.pid").read()), signal.SIGKILL)


def remove_mapping_entry(s):
    # The ingress entry of the local mapping: leaves a one-way orphan.
    from natgw.dataplane import Dataplane
    from natgw.dataplane import layout as L
    from natgw.dataplane.tables import _key

    idx = json.loads(subprocess.run(["ip", "-n", s.gw, "-j", "link", "show",
                                     s.tunnels["A"][0]], capture_output=True, text=True,
                                    check=True).stdout)[0]["ifindex"]
    with Dataplane.open(s.name) as dp:
        key = _key(4, idx, L.table(L.DIR_INGRESS, L.SIDE_DST),
                   ipaddress.ip_network("10.70.1.0/24"))
        assert dp.tables.v4.delete(key)


def mapping_ids(s) -> dict:
    from natgw.dataplane import Dataplane

    with Dataplane.open(s.name) as dp:
        return {(m.ifindex, m.mapping): m.mapping_id for m in dp.mappings()}


def remove_pins(s):
    shutil.rmtree(f"/sys/fs/bpf/natgw/{s.name}")


CASES = [  # (what is removed, how, the kind it counts as, within)
    ("route", remove_route, "route", REPAIR_WITHIN),
    ("filter", remove_filter, "filter", REPAIR_WITHIN),
    ("engine", kill_engine, "engine", REPAIR_WITHIN),
    ("mapping entry", remove_mapping_entry, "mapping", REPAIR_WITHIN),
    ("pins", remove_pins, "pin", PIN_REPAIR_WITHIN),
]


@pytest.fixture()
def foreground(netns_lab, tmp_path):
    if shutil.which("wireguard-go") is None:
        pytest.skip("needs wireguard-go")
    s = build(netns_lab, tmp_path)
    log = open(tmp_path / "natgw.log", "w+")
    fg = subprocess.Popen([NATGW, "--netns", s.gw, "up", str(s.files["A"])],
                          stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and "running in the foreground" not in \
                (tmp_path / "natgw.log").read_text():
            time.sleep(0.2)
        assert converged(s, "A") == []
        yield s, tmp_path / "natgw.log"
    finally:
        fg.send_signal(signal.SIGTERM)
        fg.wait(timeout=30)
        log.close()


def test_what_is_removed_by_hand_comes_back(foreground):
    s, logfile = foreground
    metrics = yaml.safe_load(s.files["A"].read_text())["metrics"]
    for what, remove, kind, within in CASES:
        lines_before = len(logfile.read_text().splitlines())
        ids_before = mapping_ids(s)
        remove(s)
        t0 = time.monotonic()

        def repaired(lines_before: int = lines_before) -> list[str]:
            new = logfile.read_text().splitlines()[lines_before:]
            return [line for line in new if "drift repaired" in line]

        while (converged(s, "A") or not repaired()) and time.monotonic() - t0 < within + 5:
            time.sleep(0.1)
        took = time.monotonic() - t0
        assert converged(s, "A") == [], what
        assert took <= within, f"{what}: repaired after {took:.1f}s"
        time.sleep(0.5)  # a second repair line would come now
        new = logfile.read_text().splitlines()[lines_before:]
        lines = [line for line in new if "drift repaired" in line]
        assert len(lines) == 1 and lines[0].startswith(f"natgw: drift repaired: {kind} "), \
            (what, new)
        if kind == "pin":  # the same maps pinned again: entries and their ids kept
            assert mapping_ids(s) == ids_before
        m = scrape(metrics)
        assert m[("natgw_drift_repairs_total",
                  frozenset({"gateway": s.name, "kind": kind}.items()))] == 1, what
    st = run("--netns", s.gw, "status", s.name, "--json")
    assert st.returncode == 0, st.stderr
    assert json.loads(st.stdout)[0]["repairs"] == {k: 1 for *_, k, _ in CASES}
    text = run("--netns", s.gw, "status", s.name).stdout
    assert "drift repairs: engine 1, filter 1, mapping 1, pin 1, route 1 (last: " in text
