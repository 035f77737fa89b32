"""natgw.gateway without namespaces: host-wide device names, endpoint resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from natgw import keys, state
from natgw.config import parse_config
from natgw.gateway import Gateway, GatewayError
from natgw.state import GatewayState, PeerState, save_state

PRIVATE = keys.genkey()
PEER_KEY = keys.pubkey(keys.genkey())


def config(name: str = "cluster1", **peer: object):
    data = {"name": name, "cidrs": ["10.244.0.0/16"], "privateKey": PRIVATE,
            "peers": [{"name": "cluster2", "publicKey": PEER_KEY, "listenPort": 51820,
                       "remote": [{"cidr": "10.244.0.0/16", "as": "10.245.0.0/16"}], **peer}]}
    return parse_config(data, Path("."))


@pytest.fixture
def state_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(state, "STATE_DIR", tmp_path)
    return tmp_path


def record(gateway: str, device: str, engine: str = "wireguard-go",
           netns: str | None = "other") -> None:
    save_state(GatewayState(gateway, netns, "", [PeerState("p", device, 7, engine)]))


def test_a_device_of_another_gateway_stops_up(state_dir) -> None:
    # core1's default for peer cluster2 is c1-cluster2 too.
    record("core1", "c1-cluster2")
    gw = Gateway(config(), netns="mine")
    with pytest.raises(GatewayError) as e:
        gw.preflight()
    assert str(e.value) == ("peers[0]: device c1-cluster2 is used by gateway core1 in netns "
                            "other; set device: to choose another")
    # The way out the message names.
    Gateway(config(device="c1-east"), netns="mine")._check_devices_free()


def test_own_devices_and_other_gateways_interfaces_are_fine(state_dir) -> None:
    record("cluster1", "c1-cluster2")  # our own previous apply
    record("core1", "c1-cluster2", engine="interface")  # an existing link, not a tunnel
    Gateway(config(), netns="mine")._check_devices_free()
