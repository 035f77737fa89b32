"""The foreground's supervision loop (natgw.cli.gateway._foreground) with a stand-in gateway:
a dead engine is noticed well within a drift period, and drift checks keep their cadence."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from natgw import health_ticker
from natgw.cli import gateway as cli


class NoPipes:
    """The part of natgw.pipes.server.PipeServer the loop uses, serving nothing."""

    def __init__(self, netns, publish) -> None:
        pass

    def start(self) -> None:
        pass

    def apply(self, plan) -> list[str]:
        return []

    def set_reload(self, error) -> None:
        pass

    def stop(self) -> None:
        pass


class StandIn:
    """The part of natgw.gateway.Gateway the loop uses; one tunnel whose engine can die."""

    cfg = SimpleNamespace(name="standin-supervise", groups={})
    config_path = None

    def __init__(self) -> None:
        self.died_at: float | None = None
        self.repaired_at: float | None = None
        self.checks: list[float] = []
        self.engine_checks: list[float] = []
        self.health_checks: list[float] = []

    def dead_tunnels(self) -> list[str]:
        self.engine_checks.append(time.monotonic())
        return ["t1"] if self.died_at is not None and self.repaired_at is None else []

    def superseded(self) -> bool:
        return False

    def drift(self) -> list[str]:
        self.checks.append(time.monotonic())
        return ["engine d1"] if self.dead_tunnels() else []

    def repair(self, drift: list[str]) -> bool:
        self.repaired_at = time.monotonic()
        return True

    def reresolve_stale(self) -> list[str]:
        return []

    # No replica groups: nothing to judge.
    health = None

    def watch_health(self, before=None) -> None:
        pass

    def check_health(self) -> list[str]:
        self.health_checks.append(time.monotonic())
        return []

    def release_health(self) -> list[str]:
        return []


class WithGroups(StandIn):
    """A gateway with replica groups: its health is judged (natgw.health)."""

    health = object()


@pytest.fixture()
def loop(request, monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "_start_metrics", lambda gw: None)
    monkeypatch.setattr("natgw.pipes.server.PipeServer", NoPipes)
    monkeypatch.setattr("natgw.pipes.server.plan_for", lambda cfg, path: None)
    kind = getattr(request, "param", StandIn)
    gw, stop, reload, wake = kind(), threading.Event(), threading.Event(), threading.Event()
    t = threading.Thread(target=cli._foreground,
                         args=(gw, Path(tmp_path / "cluster.yaml"), None, stop, reload, wake))
    t.start()
    try:
        yield gw
    finally:
        stop.set()
        wake.set()
        t.join(10)


def test_a_dead_engine_is_repaired_well_within_a_drift_period(loop):
    gw = loop
    time.sleep(0.3)  # between two drift checks
    gw.died_at = time.monotonic()
    while gw.repaired_at is None and time.monotonic() - gw.died_at < 5:
        time.sleep(0.05)
    assert gw.repaired_at is not None
    # The engine check runs every ENGINE_INTERVAL (0.5 s); the drift check only
    # every SUPERVISE_INTERVAL (2 s) would have come 1.7 s after the death.
    assert gw.repaired_at - gw.died_at < 1.2


def test_drift_checks_keep_their_cadence(loop):
    time.sleep(3 * cli.SUPERVISE_INTERVAL + 0.5)
    # A drift check per SUPERVISE_INTERVAL, not per engine check.
    assert 2 <= len(loop.checks) <= 3


@pytest.mark.parametrize("loop", [WithGroups], indirect=True)
def test_groups_are_judged_every_health_tick_and_engines_at_their_own_pace(loop):
    # A dead replica is seen within two health ticks of its staleAfter (the failover
    # target); the engine checks do not speed up with it.
    time.sleep(2.0)
    assert len(loop.health_checks) >= 2.0 / health_ticker.INTERVAL - 2
    assert 2.0 / cli.ENGINE_INTERVAL - 2 <= len(loop.engine_checks) <= 2.0 / cli.ENGINE_INTERVAL + 1


class StalledDrift(WithGroups):
    """Its drift check waits 1.5 s, as one reading a wireguard-go that blocks in its
    sends (a peer's endpoint without a neighbour entry) does until its reads time out."""

    def drift(self) -> list[str]:
        self.checks.append(time.monotonic())
        time.sleep(1.5)
        return []


@pytest.mark.parametrize("loop", [StalledDrift], indirect=True)
def test_a_stalled_supervision_step_does_not_stall_health(loop):
    # A stalled step once stopped every judgement: a live replica, unheard meanwhile,
    # left the route with the dead one. Health now ticks on through it.
    time.sleep(cli.SUPERVISE_INTERVAL + 2.0)
    assert loop.checks, "no drift check ran"
    ticks = loop.health_checks
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert max(gaps) < 3 * health_ticker.INTERVAL, gaps
