"""One change at a time, every failure one line and rolled back, and what is not natgw's
left alone. One gateway (see crash_world) shared by the tests of this module, which
each leave it applied from file A."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
from crash_world import STATE_DIR, build, converged, run, world

from lab.net import natgw_hooks
from lab.netnslab import NetnsLab, netns_unavailable_reason
from natgw.dataplane.hooks import MECHANISM_ENV, tcx_available
from natgw.faults import FAIL_ENV
from natgw.lock import gateway_lock

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

RESTORED = "the previous configuration is restored"


@pytest.fixture(scope="module")
def s(tmp_path_factory):
    reason = netns_unavailable_reason() or (None if shutil.which("wireguard-go")
                                            else "needs wireguard-go")
    if reason:
        pytest.skip(reason)
    with NetnsLab() as lab:
        setup = build(lab, tmp_path_factory.mktemp("polite"))
        r = run("--netns", setup.gw, "up", str(setup.files["A"]), "--detach")
        assert r.returncode == 0, r.stderr
        yield setup


def one_line(r) -> str:
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr.strip()


@pytest.mark.parametrize("step,kind,shown", [
    ("tunnel-configured", "subprocess", "natgw: peer t1: injected tunnel-configured: "
                                        "injected failure; " + RESTORED),
    ("routes-set", "netlink", "natgw: peer t1: netlink: Device or resource busy (EBUSY): "
                              "injected failure; " + RESTORED),
    ("filters-attached", "index", "natgw: peer t1: IndexError: list index out of range; "
                                  + RESTORED),
    ("peer-intent", "oserror", "natgw: peer t1: peer-intent: injected failure; " + RESTORED),
    ("dataplane-loaded", "netlink", "natgw: netlink: Device or resource busy (EBUSY): "
                                    "injected failure; " + RESTORED),
    ("peer-detached", "subprocess", "natgw: injected peer-detached: injected failure; "
                                    + RESTORED),
])
def test_each_kind_of_failure_is_one_line_and_rolled_back(s, step, kind, shown):
    r = run("--netns", s.gw, "up", str(s.files["B"]), "--detach",
            env={FAIL_ENV: f"{step}:{kind}"})
    assert r.returncode == 1
    assert one_line(r) == shown
    assert converged(s, "A") == []


def test_a_second_up_waits_then_names_the_holder(s):
    with gateway_lock(s.name):
        t0 = time.monotonic()
        r = run("--netns", s.gw, "up", str(s.files["B"]), "--detach",
                env={"NATGW_LOCK_TIMEOUT": "1.5"})
        waited = time.monotonic() - t0
    assert r.returncode == 1 and waited >= 1.5
    import os
    assert one_line(r).startswith(f"natgw: gateway {s.name} is busy: pid {os.getpid()} holds ")
    assert converged(s, "A") == []


def test_concurrent_ups_are_serialised(s):
    procs = [subprocess.Popen([*run_argv(s, tag)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for tag in ("B", "A", "B", "A")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    # Whichever took the lock last, the world is exactly one of the files, never a mix.
    assert converged(s, "A") == [] or converged(s, "B") == []
    r = run("--netns", s.gw, "up", str(s.files["A"]), "--detach")
    assert r.returncode == 0, r.stderr
    assert converged(s, "A") == []


def run_argv(s, tag):
    from lab.net import NATGW
    return [NATGW, "--netns", s.gw, "up", str(s.files[tag]), "--detach"]


def test_a_device_natgw_did_not_create_is_refused_and_kept(s):
    d2 = s.tunnels["B"][1]
    subprocess.run(["ip", "-n", s.gw, "link", "add", d2, "type", "veth", "peer", "name",
                    d2 + "x"], check=True)
    try:
        r = run("--netns", s.gw, "up", str(s.files["B"]), "--detach")
        assert r.returncode == 1
        assert one_line(r) == (f"natgw: device {d2} exists and natgw did not create it "
                               f"(netns {s.gw}); {RESTORED}")
        # The admin's d2 counts as a "tunnel" by its name only.
        assert [d for d in converged(s, "A") if not d.startswith("tunnels")] == []
        links = subprocess.run(["ip", "-n", s.gw, "link", "show", d2], capture_output=True)
        assert links.returncode == 0
    finally:
        subprocess.run(["ip", "-n", s.gw, "link", "del", d2], check=False)


def test_a_route_natgw_did_not_create_is_refused_and_kept(s):
    # The admin's own route to a range file B routes into its interface peer.
    subprocess.run(["ip", "-n", s.gw, "route", "add", "10.248.0.0/16", "dev", s.veths[0]],
                   check=True)
    try:
        r = run("--netns", s.gw, "up", str(s.files["B"]), "--detach")
        assert r.returncode == 1
        assert one_line(r) == ("natgw: peer i2: route 10.248.0.0/16 exists (proto 3) and natgw "
                               f"did not create it; {RESTORED}")
        assert converged(s, "A") == []
        r = run("--netns", s.gw, "down", s.name)
        assert r.returncode == 0
        routes = subprocess.run(["ip", "-n", s.gw, "route", "show", "10.248.0.0/16"],
                                capture_output=True, text=True, check=True).stdout
        assert f"dev {s.veths[0]}" in routes
    finally:
        subprocess.run(["ip", "-n", s.gw, "route", "del", "10.248.0.0/16"], check=False)
        r = run("--netns", s.gw, "up", str(s.files["A"]), "--detach")
        assert r.returncode == 0, r.stderr


def test_a_gateway_on_tc_filters_moves_to_tcx_on_its_next_up(s):
    """As natgw attached before tcx (clsact + cls_bpf, the qdiscs its own; here by moving
    the running gateway there with NATGW_ATTACH=tc, no recompile): the next `up` moves
    every device to tcx links and takes its filters and qdiscs away; the record no
    longer claims a qdisc, so `down` later leaves a user's alone."""
    if not tcx_available():
        pytest.skip("the kernel has no tcx (< 6.6)")
    devices = [*s.tunnels["A"], s.veths[0]]  # file A's peers (its LAN device: ingress only)

    def own_qdisc() -> dict[str, bool]:
        state = json.loads((STATE_DIR / f"{s.name}.json").read_text())
        return {p["device"]: p["own_qdisc"] for p in state["peers"]}

    r = run("--netns", s.gw, "up", str(s.files["A"]), "--detach", env={MECHANISM_ENV: "tc"})
    assert r.returncode == 0, r.stderr
    assert converged(s, "A") == []
    assert {d: natgw_hooks(s.gw, d) for d in devices} == \
        {d: {"ingress": 0, "egress": 0} for d in devices}  # filters, no links
    # File A's LAN device (derived from the route to its cidrs) gets natgw's clsact too.
    assert world(s)["clsact"] == {*devices, s.veths[2]}
    assert own_qdisc() == dict.fromkeys(devices, True)
    r = run("--netns", s.gw, "up", str(s.files["A"]), "--detach")
    assert r.returncode == 0, r.stderr
    assert converged(s, "A") == []
    hooks = {d: natgw_hooks(s.gw, d) for d in devices}
    assert all(sorted(h) == ["egress", "ingress"] and all(h.values()) for h in hooks.values()), \
        hooks  # tcx links, ids > 0
    assert world(s)["clsact"] == set() and own_qdisc() == dict.fromkeys(devices, False)


@pytest.mark.parametrize("arg,code,shown", [
    ("/nonexistent/cluster.yaml", 2,
     "natgw: /nonexistent/cluster.yaml: no such file, and not a gateway name"),
    ("../escape", 2, "natgw: ../escape: no such file, and not a gateway name"),
    ("nosuchgateway-x1", 0, None),
])
def test_down_of_a_missing_file_is_one_line(arg, code, shown):
    r = run("down", arg)
    assert r.returncode == code
    if shown is None:
        assert r.stdout.strip() == f"natgw: gateway {arg} was not up" and r.stderr == ""
    else:
        assert one_line(r) == shown


def test_concurrent_ups_from_nothing_both_succeed(netns_lab, tmp_path):
    if shutil.which("wireguard-go") is None:
        pytest.skip("needs wireguard-go")
    fresh = build(netns_lab, tmp_path)
    procs = [subprocess.Popen(run_argv(fresh, "A"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert converged(fresh, "A") == []
