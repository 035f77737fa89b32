"""natgw SIGKILLed at every named step: the next `up` converges, a `down` leaves nothing.

The kills go through natgw's test-only hook (NATGW_TEST_KILL_AT=<step>, see
natgw.faults): natgw SIGKILLs itself on reaching the step, the way a crash or
an OOM kill would stop it there.
"""

from __future__ import annotations

import os
import shutil
import signal

import pytest
from crash_world import build, clean, converged, run, sysctls

from natgw.faults import KILL_ENV, STEPS

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

KILLED = -signal.SIGKILL
# Steps of `down` itself are killed in test_down_after_a_kill_leaves_nothing.
APPLY_STEPS = [s for s in STEPS if not s.startswith("down-")]
# Each down after a kill costs a fresh compile on the next up (~15 s here); these
# cover every phase (record, load, per-peer creation, removal, mapping entries).
DOWN_SAMPLE = ["intent-recorded", "dataplane-loaded", "peer-intent", "device-created",
               "filters-attached", "mapping-ingress-written", "tunnel-configured", "routes-set",
               "peer-remove-intent", "peer-device-deleted", "mapping-egress-removed",
               "down-peers-removed", "down-unpinned"]
if os.environ.get("NATGW_CRASH_ALL"):
    DOWN_SAMPLE = list(STEPS)


@pytest.fixture()
def setup(netns_lab, tmp_path):
    if shutil.which("wireguard-go") is None:
        pytest.skip("needs wireguard-go")
    return build(netns_lab, tmp_path)


def kill_at(s, step: str, tag: str):
    return run("--netns", s.gw, "up", str(s.files[tag]), "--detach", env={KILL_ENV: step})


def test_every_step_killed_then_up_converges(setup):
    s = setup
    assert len(APPLY_STEPS) >= 20
    # The first apply of a gateway records the sysctls: kill it there and at its intent.
    for step in ("intent-recorded", "sysctls-saved", "forwarding-set"):
        r = kill_at(s, step, "A")
        assert r.returncode == KILLED, (step, r.stderr)
    r = run("--netns", s.gw, "up", str(s.files["A"]), "--detach")
    assert r.returncode == 0, r.stderr
    assert converged(s, "A") == []
    current = "A"
    unreached = []
    for step in APPLY_STEPS:
        target = "B" if current == "A" else "A"
        r = kill_at(s, step, target)
        if r.returncode != KILLED:
            # Some steps only happen in one direction (removing a tunnel peer: B -> A).
            assert r.returncode == 0, (step, r.stderr)
            current = target
            target = "B" if current == "A" else "A"
            r = kill_at(s, step, target)
        if r.returncode != KILLED:
            unreached.append(step)
        assert r.returncode in (KILLED, 0), (step, r.stderr)
        r = run("--netns", s.gw, "up", str(s.files[target]), "--detach")
        assert r.returncode == 0, (step, r.stderr)
        assert converged(s, target) == [], step
        current = target
    # sysctls-saved happens once per gateway: it was killed above.
    assert unreached == ["sysctls-saved"]


@pytest.mark.parametrize("step", DOWN_SAMPLE)
def test_down_after_a_kill_leaves_nothing(setup, step):
    s = setup
    before = sysctls(s.gw)
    r = run("--netns", s.gw, "up", str(s.files["A"]), "--detach")
    assert r.returncode == 0, r.stderr
    if step.startswith("down-"):
        r = run("--netns", s.gw, "down", s.name, env={KILL_ENV: step})
    else:
        r = kill_at(s, step, "B")
        if r.returncode != KILLED:  # reached only going B -> A
            assert r.returncode == 0, r.stderr
            r = kill_at(s, step, "A")
    assert r.returncode == KILLED, r.stderr
    r = run("--netns", s.gw, "down", s.name)
    assert r.returncode == 0, r.stderr
    assert clean(s, before) == []
