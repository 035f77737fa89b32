"""Config validation and the config -> device diff (no root needed); keys: test_keys.py."""

from __future__ import annotations

import ipaddress
import traceback
from collections.abc import Callable

import pytest

from natgw.keys import encode_key
from natgw.wireguard.model import (
    DeviceConfig,
    DeviceState,
    PeerConfig,
    PeerStatus,
    WireGuardError,
    check_ifname,
    normalize_endpoint,
)
from natgw.wireguard.plan import Plan, plan_changes

PRIV = bytes(range(1, 33))
K1, K2, K3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def net(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# --- validation --------------------------------------------------------------

ENDPOINTS = [
    ("192.0.2.1:51820", "192.0.2.1:51820"),
    ("[2001:db8:0::1]:51820", "[2001:db8::1]:51820"),
    ("192.0.2.1:0051820", "192.0.2.1:51820"),
]


@pytest.mark.parametrize("given, canonical", ENDPOINTS)
def test_endpoint_is_normalized(given: str, canonical: str) -> None:
    assert normalize_endpoint(given) == canonical


@pytest.mark.parametrize(
    "bad",
    [
        "192.0.2.1",
        "192.0.2.1:0",
        "192.0.2.1:70000",
        "2001:db8::1:51820",
        "[192.0.2.1]:1",
        "gw.example:51820",
        "",
    ],
)
def test_bad_endpoint_is_refused(bad: str) -> None:
    with pytest.raises(WireGuardError):
        normalize_endpoint(bad)


@pytest.mark.parametrize(
    "name, ok",
    [
        ("wg0", True),
        ("t1234abwgA", True),
        ("a" * 15, True),
        ("a" * 16, False),
        ("", False),
        ("../x", False),
        ("wg 0", False),
        ("-wg", False),
    ],
)
def test_ifname_check(name: str, ok: bool) -> None:
    if ok:
        check_ifname(name)
    else:
        with pytest.raises(WireGuardError):
            check_ifname(name)


def test_peer_config_normalizes_fields() -> None:
    p = PeerConfig(K1, "[2001:db8::0001]:1", ("10.1.2.3/16", "10.1.0.0/16"), 0)  # type: ignore[arg-type]
    assert p.endpoint == "[2001:db8::1]:1"
    assert p.allowed_ips == net("10.1.0.0/16")  # host bits masked, duplicate dropped
    assert p.persistent_keepalive is None


BAD_DEVICE_CONFIGS = [
    ("short private key", lambda: DeviceConfig(b"x" * 31)),
    ("port 0", lambda: DeviceConfig(PRIV, listen_port=0)),
    ("short peer key", lambda: PeerConfig(b"k")),
    ("keepalive too big", lambda: PeerConfig(K1, persistent_keepalive=70000)),
    ("duplicate peer", lambda: DeviceConfig(PRIV, peers=(PeerConfig(K1), PeerConfig(K1)))),
    (
        "prefix on two peers",
        lambda: DeviceConfig(
            PRIV,
            peers=(
                PeerConfig(K1, allowed_ips=net("10.0.0.0/8")),
                PeerConfig(K2, allowed_ips=net("10.0.0.0/8")),
            ),
        ),
    ),
]


@pytest.mark.parametrize("what, build", BAD_DEVICE_CONFIGS, ids=[c[0] for c in BAD_DEVICE_CONFIGS])
def test_bad_config_is_refused(what: str, build: Callable[[], object]) -> None:
    with pytest.raises(WireGuardError):
        build()


def test_private_key_never_shown() -> None:
    cfg = DeviceConfig(PRIV, 51820, (PeerConfig(K1),))
    state = DeviceState(PRIV, 51820, ())
    shown = [repr(cfg), str(cfg), repr(state), repr(Plan(private_key=PRIV))]
    for text in shown:
        assert PRIV.hex() not in text and encode_key(PRIV) not in text and repr(PRIV) not in text


def test_validation_error_does_not_carry_key() -> None:
    try:
        DeviceConfig(PRIV + b"x")
    except WireGuardError:
        text = traceback.format_exc()
    assert "must be 32 raw bytes" in text and repr(PRIV + b"x") not in text


# --- plan: current device state + desired config -> changes ----------------------------


def status(
    key: bytes,
    endpoint: str | None = None,
    ips: tuple[str, ...] = (),
    keepalive: int | None = None,
    handshake: int = 0,
) -> PeerStatus:
    return PeerStatus(key, endpoint, net(*ips), handshake, 0, 0, keepalive)


A_CUR = status(K1, "192.0.2.1:51820", ("10.1.0.0/16",), 25, handshake=1700000000)
A_CFG = PeerConfig(K1, "192.0.2.1:51820", net("10.1.0.0/16"), 25)

PLANS = [
    # (name, current, desired, expected plan)
    (
        "empty device gets everything",
        DeviceState(None, 0, ()),
        DeviceConfig(PRIV, 51820, (A_CFG,)),
        Plan(private_key=PRIV, listen_port=51820, upsert=(A_CFG,)),
    ),
    (
        "same config: nothing to do",
        DeviceState(PRIV, 51820, (A_CUR,)),
        DeviceConfig(PRIV, 51820, (A_CFG,)),
        Plan(),
    ),
    (
        "no listen port wanted: keep the current one",
        DeviceState(PRIV, 40000, (A_CUR,)),
        DeviceConfig(PRIV, None, (A_CFG,)),
        Plan(),
    ),
    (
        "allowed-ips order does not matter",
        DeviceState(PRIV, 1, (status(K1, None, ("10.2.0.0/16", "10.1.0.0/16")),)),
        DeviceConfig(PRIV, 1, (PeerConfig(K1, None, net("10.1.0.0/16", "10.2.0.0/16")),)),
        Plan(),
    ),
    (
        "no endpoint wanted: a roamed endpoint is kept",
        DeviceState(PRIV, 1, (status(K1, "198.51.100.7:999"),)),
        DeviceConfig(PRIV, 1, (PeerConfig(K1),)),
        Plan(),
    ),
    (
        "keepalive 0 on the device equals None",
        DeviceState(PRIV, 1, (status(K1, keepalive=None),)),
        DeviceConfig(PRIV, 1, (PeerConfig(K1, persistent_keepalive=0),)),
        Plan(),
    ),
    (
        "changed endpoint is written",
        DeviceState(PRIV, 1, (A_CUR,)),
        DeviceConfig(PRIV, 1, (PeerConfig(K1, "192.0.2.9:51820", net("10.1.0.0/16"), 25),)),
        Plan(listen_port=None, upsert=(PeerConfig(K1, "192.0.2.9:51820", net("10.1.0.0/16"), 25),)),
    ),
    (
        "only the changed peer is written, the removed one removed",
        DeviceState(PRIV, 1, (A_CUR, status(K2, None, ("10.2.0.0/16",)), status(K3))),
        DeviceConfig(PRIV, 1, (A_CFG, PeerConfig(K2, None, net("10.2.0.0/16", "10.3.0.0/16")))),
        Plan(remove=(K3,), upsert=(PeerConfig(K2, None, net("10.2.0.0/16", "10.3.0.0/16")),)),
    ),
    (
        "new private key and port",
        DeviceState(K3, 1, ()),
        DeviceConfig(PRIV, 2, ()),
        Plan(private_key=PRIV, listen_port=2),
    ),
]


@pytest.mark.parametrize("name, current, desired, expected", PLANS, ids=[p[0] for p in PLANS])
def test_plan_changes(
    name: str, current: DeviceState, desired: DeviceConfig, expected: Plan
) -> None:
    got = plan_changes(current, desired)
    assert got == expected
    assert got.is_empty() == (expected == Plan())
