"""Pool assignment: a client keeps its address across applies, restarts and others' edits."""

# ruff: noqa: E501 - the case table keeps one case per entry, like a fixture table.

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_config import _key, cfg

from natgw import keys, pool
from natgw.config import parse_config

KEYS = [keys.pubkey(_key(20 + i)) for i in range(40)]


def hub_cfg(names: list[str], address: str = "10.192.0.1/24", explicit: dict[str, str] | None = None):
    explicit = explicit or {}
    clients: list[dict[str, Any]] = [
        {"name": n, "publicKey": KEYS[int(n[1:])]} | ({"address": explicit[n]} if n in explicit else {})
        for n in names
    ]
    return parse_config(cfg(hub={"address": address, "listenPort": 8765, "clients": clients}), Path("."))


def addrs(assigned: dict) -> dict[str, str]:
    return {k: str(v) for k, v in assigned.items()}


@pytest.fixture(autouse=True)
def lib_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "LIB_DIR", tmp_path / "lib")


# (case, clients before, record, clients after, explicit addresses, expected after)
CASES = [
    ("first assignment: lowest free, in file order, skipping the hub",
     ["c1", "c2", "c3"], {}, {}, {"c1": "10.192.0.2", "c2": "10.192.0.3", "c3": "10.192.0.4"}),
    ("explicit addresses are skipped",
     ["c1", "c2", "c3"], {}, {"c1": "10.192.0.2"}, {"c1": "10.192.0.2", "c2": "10.192.0.3", "c3": "10.192.0.4"}),
    ("explicit taken first, wherever it is listed",
     ["c1", "c2"], {}, {"c2": "10.192.0.2"}, {"c1": "10.192.0.3", "c2": "10.192.0.2"}),
    ("a new client listed first does not move the others",
     ["c9", "c1", "c2"], {"c1": "10.192.0.2", "c2": "10.192.0.3"}, {}, {"c9": "10.192.0.4", "c1": "10.192.0.2", "c2": "10.192.0.3"}),
    ("a removed client's address is reused, the others stay",
     ["c1", "c3", "c4"], {"c1": "10.192.0.2", "c2": "10.192.0.3", "c3": "10.192.0.4"}, {}, {"c1": "10.192.0.2", "c3": "10.192.0.4", "c4": "10.192.0.3"}),
    ("an explicit address that takes a record moves only that client",
     ["c1", "c2", "c3"], {"c1": "10.192.0.2", "c2": "10.192.0.3"}, {"c3": "10.192.0.2"}, {"c1": "10.192.0.4", "c2": "10.192.0.3", "c3": "10.192.0.2"}),
    ("a record outside a changed pool is replaced",
     ["c1", "c2"], {"c1": "10.192.0.2", "c2": "10.193.0.9"}, {}, {"c1": "10.192.0.2", "c2": "10.192.0.3"}),
    ("a record of the hub's own address is replaced",
     ["c1"], {"c1": "10.192.0.1"}, {}, {"c1": "10.192.0.2"}),
    ("a garbled record is replaced",
     ["c1"], {"c1": "not-an-address"}, {}, {"c1": "10.192.0.2"}),
]  # fmt: skip


@pytest.mark.parametrize(("names", "record", "explicit", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_assign(names, record, explicit, expected) -> None:
    assert addrs(pool.assign(hub_cfg(names, explicit=explicit).hub, record)) == expected


def test_v6_pool_is_walked_lazily() -> None:
    hub = hub_cfg(["c1", "c2"], address="fd00:192::1/64").hub
    assert addrs(pool.assign(hub, {})) == {"c1": "fd00:192::2", "c2": "fd00:192::3"}


def test_assign_for_records_and_survives_a_restart() -> None:
    first = pool.assign_for(hub_cfg(["c1", "c2"]))
    assert pool.load("c1") == {"c1": "10.192.0.2", "c2": "10.192.0.3"}
    # A "restart": a fresh load of the file, the same clients reordered and one more.
    again = pool.assign_for(hub_cfg(["c3", "c2", "c1"]))
    assert again["c1"] == first["c1"] and again["c2"] == first["c2"]
    assert again["c3"] == ip_address("10.192.0.4")
    assert pool.pool_path("c1").read_text().startswith("{")


def test_explicit_addresses_are_not_recorded() -> None:
    pool.assign_for(hub_cfg(["c1", "c2"], explicit={"c1": "10.192.0.9"}))
    assert pool.load("c1") == {"c2": "10.192.0.2"}


def test_unreadable_record_is_an_error(tmp_path) -> None:
    pool.LIB_DIR.mkdir(parents=True)
    pool.pool_path("c1").write_text("[1, 2]")
    with pytest.raises(pool.PoolError, match="not a pool record"):
        pool.assign_for(hub_cfg(["c1"]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 39)), min_size=1, max_size=30))
def test_edits_never_move_a_remaining_client(edits) -> None:
    """Any sequence of adds and removes: a client present before and after keeps its address."""
    record: dict[str, str] = {}
    names: list[str] = []
    before: dict[str, str] = {}
    for add, n in edits:
        name = f"c{n}"
        if add and name not in names:
            names.insert(n % (len(names) + 1), name)  # anywhere in the list
        elif not add and name in names:
            names.remove(name)
        hub = hub_cfg(names).hub
        now = addrs(pool.assign(hub, record))
        assert len(set(now.values())) == len(now) and "10.192.0.1" not in now.values()
        for kept in set(before) & set(now):
            assert now[kept] == before[kept]
        record = before = now
