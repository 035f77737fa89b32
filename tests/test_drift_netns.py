"""Drift: what natgw made and someone removed by hand comes back under a foreground `up`,
within 5 s, with one log line, a metric and a line in `status`."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import yaml
from crash_world import build, converged, expected, run
from gateways import scrape

from lab.net import NATGW, remove_natgw_hook

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

REPAIR_WITHIN = 5.0  # seconds, the target
PIN_REPAIR_WITHIN = REPAIR_WITHIN  # pinned again from the running filters: no compile


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


def remove_route(s):
    _ip("-n", s.gw, "route", "del", "10.245.0.0/16", "proto", "78")


def remove_filter(s):
    """natgw's ingress program off the tunnel by hand (its tcx link detached: the
    foreground holds it, unpinning alone would not; before tcx its tc filter deleted)."""
    remove_natgw_hook(s.gw, s.tunnels["A"][0], "ingress")


def kill_engine(s):
    os.kill(int(open(f"/run/natgw/wg/{s.tunnels['A'][0]}.pid").read()), signal.SIGKILL)


def remove_mapping_entry(s):
    # The ingress entry of the local mapping: leaves a one-way orphan.
    from natgw.dataplane import Dataplane
    from natgw.dataplane import layout as L
    from natgw.dataplane.tables import _key

    idx = tunnel_ifindex(s)
    with Dataplane.open(s.name) as dp:
        key = _key(4, idx, L.table(L.DIR_INGRESS, L.SIDE_DST),
                   ipaddress.ip_network("10.70.1.0/24"))
        assert dp.tables.v4.delete(key)


def tunnel_ifindex(s) -> int:
    return json.loads(subprocess.run(["ip", "-n", s.gw, "-j", "link", "show",
                                      s.tunnels["A"][0]], capture_output=True, text=True,
                                     check=True).stdout)[0]["ifindex"]


def hide_by_skip_bitmap(s) -> int:
    """Set the skip bit over the local mapping's /24 (ingress destination table), as a
    kill between the entry's write and the bitmaps' rewrite leaves it."""
    from bpf_run import set_skip_bit

    from natgw.dataplane import Dataplane
    from natgw.dataplane import layout as L

    idx = tunnel_ifindex(s)
    with Dataplane.open(s.name) as dp:
        set_skip_bit(dp.tables, idx, L.table(L.DIR_INGRESS, L.SIDE_DST), "10.70.1.0")
        assert dp.tables.hidden_by_skip(idx) == [ipaddress.ip_network("10.70.1.0/24")]
    return idx


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
    with _foreground(netns_lab, tmp_path) as (s, logfile, _):
        yield s, logfile


@pytest.fixture()
def foreground_lock_1s(netns_lab, tmp_path):
    # Waits of 1 s for the gateway's lock: a reload meets a busy gateway quickly.
    with _foreground(netns_lab, tmp_path, dict(os.environ, NATGW_LOCK_TIMEOUT="1")) as fg:
        yield fg


@contextlib.contextmanager
def _foreground(netns_lab, tmp_path, env=None):
    if shutil.which("wireguard-go") is None:
        pytest.skip("needs wireguard-go")
    s = build(netns_lab, tmp_path)
    log = open(tmp_path / "natgw.log", "w+")
    fg = subprocess.Popen([NATGW, "--netns", s.gw, "up", str(s.files["A"])],
                          stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and "running in the foreground" not in \
                (tmp_path / "natgw.log").read_text():
            time.sleep(0.2)
        assert converged(s, "A") == []
        yield s, tmp_path / "natgw.log", fg
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


def test_a_prefix_its_skip_bitmap_hides_is_found_and_shown_again(foreground):
    from natgw.dataplane import Dataplane

    s, logfile = foreground
    lines_before = len(logfile.read_text().splitlines())
    idx = hide_by_skip_bitmap(s)
    t0 = time.monotonic()
    while not [line for line in _new_lines(logfile, lines_before) if "drift repaired" in line] \
            and time.monotonic() - t0 < REPAIR_WITHIN + 5:
        time.sleep(0.1)
    assert time.monotonic() - t0 <= REPAIR_WITHIN
    lines = [line for line in _new_lines(logfile, lines_before) if "drift repaired" in line]
    assert lines and lines[0].startswith("natgw: drift repaired: mapping entry 10.70.1.0/24 "), \
        lines
    with Dataplane.open(s.name) as dp:
        assert dp.tables.hidden_by_skip(idx) == []


def _new_lines(logfile, since: int) -> list[str]:
    return logfile.read_text().splitlines()[since:]


def _wait_converged(s, tag: str, within: float) -> list[str]:
    t0 = time.monotonic()
    while (diffs := converged(s, tag)) and time.monotonic() - t0 < within:
        time.sleep(0.2)
    return diffs


def test_a_second_up_is_kept_not_reverted(foreground):
    s, logfile = foreground
    since = len(logfile.read_text().splitlines())
    # While a foreground up serves the gateway, another file is refused (one line)...
    r = run("--netns", s.gw, "up", "--detach", str(s.files["B"]))
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "served by natgw up" in r.stderr and converged(s, "A") == []
    # ...and its own file, edited, is handed over to it. File B drops peer i1 and
    # t1's local mapping, adds t2 and i2.
    s.files["A"].write_text(s.files["B"].read_text())
    r = run("--netns", s.gw, "up", "--detach", str(s.files["A"]))
    assert r.returncode == 0, r.stderr
    time.sleep(5)  # more than two drift checks
    assert converged(s, "B") == []
    assert not [line for line in _new_lines(logfile, since) if "repair" in line]
    # Drift is now repaired to B, what was applied last.
    _ip("-n", s.gw, "route", "del", "10.247.0.0/16", "proto", "78")
    assert _wait_converged(s, "B", REPAIR_WITHIN + 5) == []
    # The line is logged when the repair's whole apply is done, a little after the
    # route is back.
    t0 = time.monotonic()
    while not (done := [line for line in _new_lines(logfile, since)
                        if "drift repaired: route" in line]) \
            and time.monotonic() - t0 < REPAIR_WITHIN:
        time.sleep(0.2)
    assert done, _new_lines(logfile, since)
    # down ends the engines and leaves no file of theirs in /run/natgw/wg.
    assert run("--netns", s.gw, "down", s.name).returncode == 0
    left = [f for f in os.listdir("/run/natgw/wg") for dev in s.tunnels["B"]
            if f.startswith(dev + ".")]
    assert left == []


def test_a_reload_that_failed_is_tried_again(foreground_lock_1s, tmp_path):
    s, logfile, fg = foreground_lock_1s
    data = yaml.safe_load(s.files["A"].read_text())
    data["peers"][0].pop("local")  # the edit: t1 loses its local mapping
    s.files["A"].write_text(yaml.safe_dump(data, sort_keys=False))
    s.expect["A2"] = expected(data, sorted(s.expect["A"]["lan"]))
    since = len(logfile.read_text().splitlines())
    from natgw.lock import lock_path

    # Another natgw busy with the gateway when SIGHUP comes: that reload fails.
    with open(lock_path(s.name), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.kill(fg.pid, signal.SIGHUP)
        t0 = time.monotonic()
        while not [line for line in _new_lines(logfile, since) if "is busy" in line]:
            assert time.monotonic() - t0 < 30, _new_lines(logfile, since)
            time.sleep(0.1)
    t0 = time.monotonic()
    while not [line for line in _new_lines(logfile, since) if "reloaded" in line]:
        assert time.monotonic() - t0 < 8, _new_lines(logfile, since)
        time.sleep(0.1)
    assert converged(s, "A2") == []


def _addresses(ns: str, dev: str) -> set[str]:
    out = json.loads(subprocess.run(["ip", "-n", ns, "-j", "-6", "addr", "show", "dev", dev],
                                    capture_output=True, text=True, check=True).stdout)
    return {a["local"] for link in out for a in link.get("addr_info", [])}


def _allowed_ips(dev: str) -> set[str]:
    out = subprocess.run(["wg", "show", dev, "allowed-ips"], capture_output=True, text=True,
                         check=True).stdout
    return set(out.split()[1:])


def test_tunnel_address_and_allowed_ips_come_back_and_stay_without_pipes(netns_lab, tmp_path):
    """The tunnel's address and the peer's /128 are natgw's too: removed by hand they
    come back; a reload without pipes keeps both (health probes use them too)."""
    from natgw.tunnel_address import tunnel_address

    if shutil.which("wireguard-go") is None or shutil.which("wg") is None:
        pytest.skip("needs wireguard-go and wg")
    s = build(netns_lab, tmp_path)
    data = yaml.safe_load(s.files["A"].read_text())
    peer = data["peers"][0]
    data["pipes"] = [{"name": "relay", "peer": peer["name"]}]  # no port: relays only
    s.files["A"].write_text(yaml.safe_dump(data, sort_keys=False))
    from natgw.config import load_config

    own = str(tunnel_address(load_config(s.files["A"]).public_key))
    theirs = f"{tunnel_address(peer['publicKey'])}/128"
    dev = s.tunnels["A"][0]
    logfile = tmp_path / "natgw.log"
    log = open(logfile, "w+")
    fg = subprocess.Popen([NATGW, "--netns", s.gw, "up", str(s.files["A"])],
                          stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and "running in the foreground" not in logfile.read_text():
            time.sleep(0.2)
        assert own in _addresses(s.gw, dev)
        assert theirs in _allowed_ips(dev)
        for kind, remove, back in [
            ("address", lambda: _ip("-n", s.gw, "addr", "del", f"{own}/64", "dev", dev),
             lambda: own in _addresses(s.gw, dev)),
            ("allowed-ips", lambda: subprocess.run(
                ["wg", "set", dev, "peer", peer["publicKey"], "allowed-ips",
                 ",".join(sorted(_allowed_ips(dev) - {theirs}))], check=True),
             lambda: theirs in _allowed_ips(dev)),
        ]:
            lines_before = len(logfile.read_text().splitlines())
            remove()
            assert not back(), kind
            t0 = time.monotonic()

            def repaired(lines_before: int = lines_before) -> list[str]:
                new = logfile.read_text().splitlines()[lines_before:]
                return [line for line in new if "drift repaired" in line]

            while (not back() or not repaired()) and time.monotonic() - t0 < REPAIR_WITHIN + 5:
                time.sleep(0.1)
            assert back(), f"{kind} not repaired"
            took = time.monotonic() - t0
            assert took <= REPAIR_WITHIN, f"{kind}: repaired after {took:.1f}s"
            time.sleep(0.5)  # a second repair line would come now
            new = logfile.read_text().splitlines()[lines_before:]
            lines = [line for line in new if "drift repaired" in line]
            assert len(lines) == 1 and lines[0].startswith(
                f"natgw: drift repaired: {kind} "), (kind, new)
        del data["pipes"]
        s.files["A"].write_text(yaml.safe_dump(data, sort_keys=False))
        lines_before = len(logfile.read_text().splitlines())
        fg.send_signal(signal.SIGHUP)
        t0 = time.monotonic()
        while "reloaded" not in "".join(logfile.read_text().splitlines()[lines_before:]) \
                and time.monotonic() - t0 < 60:
            time.sleep(0.2)
        assert own in _addresses(s.gw, dev)
        assert theirs in _allowed_ips(dev)
        assert json.load(open(f"/run/natgw/{s.name}.json"))["peers"][0]["pipe_address"] == own
    finally:
        fg.send_signal(signal.SIGTERM)
        fg.wait(timeout=30)
        log.close()
