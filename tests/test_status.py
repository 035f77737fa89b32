"""natgw.status and the handshake-freshness rule status and metrics share."""

from __future__ import annotations

from pathlib import Path

import pytest

from natgw import state
from natgw import status as st
from natgw.metrics import PeerHealth
from natgw.state import GatewayState, PeerState
from natgw.wireguard import DeviceStatus, PeerStatus
from natgw.wireguard.model import HANDSHAKE_FRESH_SECONDS, handshake_fresh

NOW = 1_700_000_000.0


@pytest.mark.parametrize(("age", "fresh"), [
    (0, True),
    (HANDSHAKE_FRESH_SECONDS - 1, True),
    (HANDSHAKE_FRESH_SECONDS - 0.001, True),
    # WireGuard rejects a session this old: the boundary itself is stale.
    (HANDSHAKE_FRESH_SECONDS, False),
    (HANDSHAKE_FRESH_SECONDS + 1, False),
])
def test_handshake_fresh_boundary(age: float, fresh: bool) -> None:
    assert handshake_fresh(NOW - age, NOW) is fresh


def test_never_handshaked_is_not_fresh() -> None:
    assert not handshake_fresh(0, NOW)
    assert not handshake_fresh(None, NOW)


class FakeEngine:
    def __init__(self, handshake: int) -> None:
        self.handshake = handshake

    def status(self, ifname: str, netns: str | None, timeout: float | None = None
               ) -> DeviceStatus:
        peer = PeerStatus(bytes(32), "192.0.2.2:51820", (), self.handshake, 10, 20, 25)
        return DeviceStatus(ifname, "wireguard-go", None, 51820, (peer,), 1)


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(state, "STATE_DIR", tmp_path)
    return tmp_path


@pytest.mark.parametrize("age", [HANDSHAKE_FRESH_SECONDS - 1, HANDSHAKE_FRESH_SECONDS])
def test_status_and_metrics_agree_at_the_boundary(state_dir, monkeypatch, age: int) -> None:
    handshake = int(NOW) - age
    monkeypatch.setattr(st, "_engine", lambda name: FakeEngine(handshake))
    gs = GatewayState("gwa", None, "/c.yaml", [PeerState("p", "gwa-p", 7, "wireguard-go")])
    (report,) = st.report(gs, now=NOW).peers
    metric = PeerHealth("gwa", "p", latest_handshake=handshake).up(NOW)
    assert report.up is metric is (age < HANDSHAKE_FRESH_SECONDS)
    assert (report.endpoint, report.rx_bytes, report.tx_bytes, report.listen_port) == (
        "192.0.2.2:51820", 10, 20, 51820)


def test_status_lists_the_gateways_of_one_netns(state_dir) -> None:
    for name, netns in (("gwb", None), ("gwa", None), ("gwc", "elsewhere")):
        state.save_state(GatewayState(name, netns, "/c.yaml",
                                      [PeerState("p", "lo", 1, "interface")]))
    (state_dir / "broken.json").write_text("{")  # skipped, not fatal
    assert [g.gateway for g in st.status(None, None)] == ["gwa", "gwb"]
    assert [g.gateway for g in st.status(None, "elsewhere")] == ["gwc"]
    assert st.status(None, "nowhere") == []
    # A name narrows; it is found in its own netns unless one is required.
    assert [g.netns for g in st.status("gwc", None, any_netns=True)] == ["elsewhere"]
    with pytest.raises(st.StatusError, match="gateway gwc is up in netns elsewhere, not"):
        st.status("gwc", None)
    with pytest.raises(st.StatusError, match=r"gateway nope: not up \(no state"):
        st.status("nope", None, any_netns=True)
