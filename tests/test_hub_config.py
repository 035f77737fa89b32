"""The hub: section of cluster.yaml: each case is a file (as a dict) and the one error it must produce."""

# ruff: noqa: E501 - the error table keeps one case per line, like a fixture table.

from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
from test_config import OWN_PUBLIC, PUB_A, PUB_B, PUB_C, _key, cfg, error_of, m, tunnel

from natgw import keys
from natgw.config import parse_config, pool_capacity


def client(name: str, key: str | None, *remote: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"name": name, **({"publicKey": key} if key else {}), **({"remote": list(remote)} if remote else {}), **extra}


def hub(*clients: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"address": "10.192.0.1/24", "listenPort": 8765, "clients": list(clients), **extra}


def hubcfg(*clients: dict[str, Any], peers: tuple = (), **extra: Any) -> dict[str, Any]:
    return cfg(*peers, hub=hub(*clients, **extra))


CLOUD = client("cloud", PUB_A, m("10.244.0.0/16", "10.201.0.0/16"))
EDGE = client("edge", PUB_B, m("10.244.0.0/16", "10.202.0.0/16"))

CASES: list[tuple[str, dict[str, Any], str]] = [
    # shape
    ("hub without address", cfg(hub={"listenPort": 8765}), "hub.address: field required"),
    ("hub without listenPort", cfg(hub={"address": "10.192.0.1/24"}), "hub.listenPort: field required"),
    ("hub address without prefix", cfg(hub=hub() | {"address": "10.192.0.1"}), "hub.address: 10.192.0.1 has no prefix length (write 10.192.0.1/32)"),
    ("hub address is the network", cfg(hub=hub() | {"address": "10.192.0.0/24"}), "hub.address: 10.192.0.0 is the network address of 10.192.0.0/24"),
    ("client without name", hubcfg({"publicKey": PUB_A}), "hub.clients[0].name: field required"),
    ("unknown client field", hubcfg(CLOUD | {"endpoint": "192.0.2.1:1"}), "hub.clients[0].endpoint: unknown field"),
    ("client address with prefix", hubcfg(CLOUD | {"address": "10.192.0.2/32"}), "hub.clients[0].address: invalid IP address 10.192.0.2/32"),
    ("hub endpoint without port", hubcfg(endpoint="gw.example.net"), "hub.endpoint: expected host:port, got 'gw.example.net'"),
    ("hub without key", {"name": "c1", "cidrs": ["10.244.0.0/16"], "hub": hub()}, "privateKeyFile: required for a hub (or an inline privateKey)"),
    # client addresses and the pool
    ("address outside the pool", hubcfg(CLOUD | {"address": "10.193.0.2"}), "hub.clients[0].address: 10.193.0.2 is outside the pool 10.192.0.0/24 (hub.address)"),
    ("address of the other family", hubcfg(CLOUD | {"address": "fd00::2"}), "hub.clients[0].address: fd00::2 is outside the pool 10.192.0.0/24 (hub.address)"),
    ("address is the hub's", hubcfg(CLOUD | {"address": "10.192.0.1"}), "hub.clients[0].address: 10.192.0.1 is the hub's own address (hub.address)"),
    ("address is the pool's network", hubcfg(CLOUD | {"address": "10.192.0.0"}), "hub.clients[0].address: 10.192.0.0 is the network address of the pool 10.192.0.0/24 (hub.address)"),
    ("address is the pool's broadcast", hubcfg(CLOUD | {"address": "10.192.0.255"}), "hub.clients[0].address: 10.192.0.255 is the broadcast address of the pool 10.192.0.0/24 (hub.address)"),
    ("duplicate address", hubcfg(CLOUD | {"address": "10.192.0.7"}, EDGE | {"address": "10.192.0.7"}), "hub.clients[1].address: 10.192.0.7 is also the address of hub.clients[0] (cloud)"),
    ("pool too small", cfg(hub=hub(client("a", PUB_A), client("b", PUB_B)) | {"address": "10.192.0.1/30"}), "hub.address: the pool 10.192.0.0/30 has room for 1 client, not 2; use a shorter prefix"),
    ("pool overlaps our cidrs", cfg(hub=hub() | {"address": "10.244.9.1/24"}), "hub.address: 10.244.9.0/24 overlaps our cidrs[0] 10.244.0.0/16; routes would collide"),
    ("pool overlaps a peer's range", hubcfg(peers=(tunnel("a", PUB_C, m("10.192.0.0/16")),)), "hub.address: 10.192.0.0/24 overlaps peers[0].remote[0].cidr 10.192.0.0/16; routes would collide"),
    ("pool overlaps a peer's address", hubcfg(peers=(tunnel("a", PUB_C, m("10.1.0.0/16"), address="10.192.0.9/24"),)), "hub.address: 10.192.0.0/24 overlaps peers[0].address 10.192.0.0/24; routes would collide"),
    # the clients' networks share the device's allowed-ips
    ("clients' cidrs overlap", hubcfg(client("a", PUB_A, m("10.9.0.0/16", "10.201.0.0/16")), client("b", PUB_B, m("10.9.1.0/24", "10.202.1.0/24"))), "hub.clients[1].remote[0].cidr: 10.9.1.0/24 overlaps hub.clients[0].remote[0].cidr 10.9.0.0/16: the clients share one device and its allowed-ips, so their networks must not overlap; make this client a separate peer under peers: instead"),
    ("client cidr in the pool", hubcfg(client("a", PUB_A, m("10.192.0.0/28"))), "hub.clients[0].remote[0].cidr: 10.192.0.0/28 overlaps hub.address 10.192.0.0/24: the clients share one device and its allowed-ips, so their networks must not overlap; make this client a separate peer under peers: instead"),
    ("client as overlaps another's", hubcfg(client("a", PUB_A, m("10.8.0.0/16", "10.201.0.0/16")), client("b", PUB_B, m("10.9.0.0/16", "10.201.0.0/16"))), "hub.clients[1].remote[0].as: 10.201.0.0/16 overlaps hub.clients[0].remote[0].as 10.201.0.0/16; routes would collide"),
    ("client as overlaps our cidrs", hubcfg(client("a", PUB_A, m("10.8.0.0/16", "10.244.0.0/16"))), "hub.clients[0].remote[0].as: 10.244.0.0/16 overlaps our cidrs[0] 10.244.0.0/16; routes would collide"),
    ("client cidr overlaps our cidrs", hubcfg(client("a", PUB_A, m("10.244.0.0/16"))), "hub.clients[0].remote[0].cidr: 10.244.0.0/16 overlaps our cidrs[0] 10.244.0.0/16; add an as: to remap it"),
    ("client as overlaps a peer's", hubcfg(client("a", PUB_A, m("10.8.0.0/16", "10.245.0.0/16")), peers=(tunnel("p", PUB_C, m("10.244.0.0/16", "10.245.0.0/16")),)), "hub.clients[0].remote[0].as: 10.245.0.0/16 overlaps peers[0].remote[0].as 10.245.0.0/16; routes would collide"),
    ("client as prefix mismatch", hubcfg(client("a", PUB_A, m("10.8.0.0/16", "10.201.0.0/24"))), "hub.clients[0].remote[0].as: /24 does not match cidr 10.8.0.0/16"),
    # names, keys, port, device
    ("duplicate client names", hubcfg(CLOUD, EDGE | {"name": "cloud"}), "hub.clients[1].name: duplicate client name (also hub.clients[0])"),
    ("client named like a peer", hubcfg(CLOUD, peers=(tunnel("cloud", PUB_C, m("10.1.0.0/16")),)), "hub.clients[0].name: cloud is also the name of peers[0]; status and metrics name clients and peers alike"),
    ("duplicate client keys", hubcfg(CLOUD, EDGE | {"publicKey": PUB_A}), "hub.clients[1].publicKey: same key as hub.clients[0] (cloud)"),
    ("client key is a peer's", hubcfg(CLOUD, peers=(tunnel("p", PUB_A, m("10.1.0.0/16")),)), "hub.clients[0].publicKey: same key as peers[0] (p)"),
    ("client key is ours", hubcfg(CLOUD | {"publicKey": OWN_PUBLIC}), "hub.clients[0].publicKey: is our own public key, not the client's"),
    ("listenPort shared with a peer", hubcfg(peers=(tunnel("p", PUB_C, m("10.1.0.0/16"), listenPort=8765),)), "hub.listenPort: 8765 is also the listenPort of peers[0] (p)"),
    ("hub device is a peer's", hubcfg(peers=(tunnel("hub", PUB_C, m("10.1.0.0/16")),)), "hub.device: device c1-hub is also the device of peers[0] (hub); device names must be unique on the whole host, since wireguard-go's UAPI sockets in /var/run/wireguard are shared by all network namespaces; set hub.device: to choose another"),
    # hub.local
    ("local outside our cidrs", hubcfg(local=[m("172.25.0.0/16", "10.250.0.0/16")]), "hub.local[0].cidr: 172.25.0.0/16 is not inside our cidrs"),
    ("local as overlaps the pool", hubcfg(local=[m("10.244.0.0/16", "10.192.0.0/16")]), "hub.local[0].as: 10.192.0.0/16 overlaps hub.address 10.192.0.0/24"),
    ("local as overlaps a client's as", hubcfg(CLOUD, local=[m("10.244.0.0/16", "10.201.0.0/16")]), "hub.local[0].as: 10.201.0.0/16 overlaps hub.clients[0].remote[0].as 10.201.0.0/16"),
    ("local as is a client's real network", hubcfg(client("a", PUB_A, m("10.9.0.0/16", "10.201.0.0/16")), local=[m("10.244.0.0/16", "10.9.0.0/16")]), "hub.local[0].as: 10.9.0.0/16 overlaps hub.clients[0].remote[0].cidr 10.9.0.0/16, a client's own network"),
    ("local prefix mismatch", hubcfg(local=[m("10.244.0.0/16", "10.250.0.0/24")]), "hub.local[0].as: /24 does not match cidr 10.244.0.0/16"),
    ("peer local as overlaps the pool", hubcfg(peers=(tunnel("p", PUB_C, m("10.1.0.0/16"), local=[m("10.244.0.0/16", "10.192.0.0/16")]),)), "peers[0].local[0].as: 10.192.0.0/16 overlaps hub.address 10.192.0.0/24"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_hub(data: dict[str, Any], message: str) -> None:
    assert error_of(data) == message


def test_valid_hub_and_accessors() -> None:
    data = hubcfg(
        CLOUD | {"address": "10.192.0.2"},
        client("laptop", PUB_C),
        endpoint="gw.example.net:8765",
        local=[m("10.244.0.0/16", "10.250.0.0/16")],
        peers=(tunnel("site", PUB_B, m("10.244.0.0/16", "10.245.0.0/16")),),
    )
    cfg_ = parse_config(data, Path("."))
    assert cfg_.hub is not None
    assert cfg_.hub.device == "c1-hub" and cfg_.hub.pool == ip_network("10.192.0.0/24")
    assert str(cfg_.hub.endpoint) == "gw.example.net:8765"
    assert cfg_.hub.client("cloud").address == ip_address("10.192.0.2")
    assert cfg_.hub.client("laptop").address is None and cfg_.hub.client("laptop").remote == []
    assert cfg_.hub.client("cloud").routed_networks == [ip_network("10.201.0.0/16")]
    assert cfg_.peer("site").device != cfg_.hub.device


def test_a_client_without_a_key_yet_is_valid() -> None:
    # Its address is reserved; `natgw client-config --genkey` makes its keys.
    cfg_ = parse_config(hubcfg(client("new", None), client("new2", None)), Path("."))
    assert cfg_.hub is not None and cfg_.hub.client("new").public_key is None


def test_clients_may_share_a_real_range_only_as_separate_peers() -> None:
    # The suggested fix of "clients' cidrs overlap" is accepted: one of them a peer.
    data = hubcfg(CLOUD, peers=(tunnel("edge", PUB_B, m("10.244.0.0/16", "10.202.0.0/16")),))
    parse_config(data, Path("."))


@pytest.mark.parametrize(
    ("pool", "room"),
    [("10.192.0.0/24", 253), ("10.192.0.0/30", 1), ("10.192.0.0/31", 1), ("10.192.0.0/32", 0),
     ("10.192.0.0/22", 1021), ("fd00::/120", 254), ("fd00::/127", 1)],
)
def test_pool_capacity(pool: str, room: int) -> None:
    assert pool_capacity(ip_network(pool)) == room


def test_a_full_pool_is_accepted() -> None:
    # A /29 holds the hub and five clients; a sixth is refused.
    clients = [client(f"c{i}", keys.pubkey(_key(10 + i))) for i in range(6)]
    parse_config(cfg(hub=hub(*clients[:5]) | {"address": "10.192.0.1/29"}), Path("."))
    assert error_of(cfg(hub=hub(*clients) | {"address": "10.192.0.1/29"})) == (
        "hub.address: the pool 10.192.0.0/29 has room for 5 clients, not 6; use a shorter prefix")
