"""natgw.hub's pure parts: which clients an apply touches, and the ip commands it runs."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest
from test_config import PUB_A, PUB_B, cfg

from natgw.config import parse_config
from natgw.hub import device_config, diff_clients, hub_mappings, link_lines, route_lines
from natgw.state import ClientState, HubState, PeerState


def cs(name: str, addr: str = "10.192.0.2", routes: tuple = ()) -> ClientState:
    return ClientState(name, "k" + name, addr, list(routes))


@pytest.mark.parametrize(("before", "after", "recreated", "expected"), [
    ([], [cs("a"), cs("b")], True, {"added": ["a", "b"]}),
    ([cs("a"), cs("b")], [cs("a"), cs("b")], False, {"unchanged": ["a", "b"]}),
    ([cs("a"), cs("b")], [cs("b"), cs("a", routes=("10.9.0.0/16",))], False,
     {"updated": ["a"], "unchanged": ["b"]}),
    ([cs("a"), cs("b")], [cs("b"), cs("c")], False,
     {"added": ["c"], "unchanged": ["b"], "removed": ["a"]}),
    ([cs("a")], [cs("a")], True, {"updated": ["a"]}),  # a new device: every client again
])
def test_diff_clients(before, after, recreated, expected) -> None:
    got = diff_clients(before, after, recreated)
    assert {k: v for k, v in vars(got).items() if v} == expected


def test_route_lines_add_only_the_missing_and_remove_only_the_gone() -> None:
    add, remove = route_lines("hub0", ["10.192.0.0/24", "10.201.0.0/16", "10.202.0.0/16"],
                              ["10.192.0.0/24", "10.203.0.0/16"])
    assert add == ["route replace 10.201.0.0/16 dev hub0 proto 78",
                   "route replace 10.202.0.0/16 dev hub0 proto 78"]
    assert remove == ["route del 10.203.0.0/16 dev hub0 proto 78"]


def hub_cfg(address: str = "10.192.0.1/24", pipes: tuple = ()):
    return parse_config(cfg(pipes=list(pipes), hub={
        "address": address, "listenPort": 8765,
        "local": [{"cidr": "10.244.0.0/16", "as": "10.250.0.0/16"}],
        "clients": [{"name": "a", "publicKey": PUB_A,
                     "remote": [{"cidr": "10.9.0.0/16", "as": "10.201.0.0/16"}]},
                    {"name": "b", "publicKey": PUB_B, "remote": [{"cidr": "10.8.0.0/16"}]},
                    {"name": "c"}]}), Path("."))


def test_link_lines_set_the_address_once_and_move_it_on_change() -> None:
    c = hub_cfg()
    dev = PeerState("c1-hub", "c1-hub", 5, "wireguard-go")
    assert link_lines("c1-hub", c, None, True) == [
        "link set dev c1-hub up mtu 1420",
        "address replace 10.192.0.1/24 dev c1-hub noprefixroute"]
    same = HubState(dev, "10.192.0.1/24")
    assert link_lines("c1-hub", c, same, False) == ["link set dev c1-hub up mtu 1420"]
    moved = HubState(dev, "10.192.0.9/24")
    assert link_lines("c1-hub", c, moved, False)[1:] == [
        "address replace 10.192.0.1/24 dev c1-hub noprefixroute",
        "address del 10.192.0.9/24 dev c1-hub"]
    v6 = hub_cfg("fd00:192::1/64")
    assert link_lines("c1-hub", v6, None, True)[1].endswith("noprefixroute nodad")


def test_device_config_one_peer_per_keyed_client() -> None:
    c = hub_cfg()
    assigned = {"a": ip_address("10.192.0.2"), "b": ip_address("10.192.0.3"),
                "c": ip_address("10.192.0.4")}
    dc = device_config(c, assigned)
    assert dc.listen_port == 8765
    assert [[str(n) for n in p.allowed_ips] for p in dc.peers] == [
        ["10.192.0.2/32", "10.9.0.0/16"], ["10.192.0.3/32", "10.8.0.0/16"]]  # c: no key yet
    assert all(p.endpoint is None for p in dc.peers)  # clients dial in
    assert [str(m) for m in hub_mappings(c.hub)] == [
        "remote 10.9.0.0/16 as 10.201.0.0/16", "local 10.244.0.0/16 as 10.250.0.0/16"]


def test_with_pipes_each_keyed_client_allows_its_pipe_address() -> None:
    from natgw.hub import client_states
    from natgw.tunnel_address import tunnel_network

    c = hub_cfg(pipes=({"name": "web", "port": 8080, "peer": "a"},))
    assigned = {"a": ip_address("10.192.0.2"), "b": ip_address("10.192.0.3"),
                "c": ip_address("10.192.0.4")}
    dc = device_config(c, assigned)
    assert [[str(n) for n in p.allowed_ips] for p in dc.peers] == [
        ["10.192.0.2/32", "10.9.0.0/16", str(tunnel_network(PUB_A))],
        ["10.192.0.3/32", "10.8.0.0/16", str(tunnel_network(PUB_B))]]
    # What is recorded is what the device gets: the next apply's difference is empty.
    recorded = client_states(c.hub, assigned, pipes=True)
    assert [r.allowed_ips for r in recorded[:2]] == [
        [str(n) for n in p.allowed_ips] for p in dc.peers]
    assert recorded[2].allowed_ips == ["10.192.0.4/32"]  # no key: no pipe address
    assert str(tunnel_network(PUB_A)) not in client_states(c.hub, assigned)[0].allowed_ips


def test_status_text_has_a_block_per_client() -> None:
    from natgw.hubstatus import ClientReport, HubReport, format_hub

    m = {"kind": "remote", "cidr": "10.9.0.0/16", "as": "10.201.0.0/16", "egress_packets": 3,
         "egress_bytes": 300, "ingress_packets": 4, "ingress_bytes": 400}
    rep = HubReport("c1-hub", "wireguard-go", "10.192.0.1/24", 8765, clients=[
        ClientReport("a", "10.192.0.2", "KEY=", "198.18.1.2:4000", 0, 10, 20, False,
                     ["10.201.0.0/16"], [m]),
        ClientReport("new", "10.192.0.3", ""),
    ])
    assert format_hub(rep, 0) == [
        "", "hub: c1-hub (wireguard-go)", "  address: 10.192.0.1/24", "  listening port: 8765",
        "", "client: a", "  address: 10.192.0.2", "  public key: KEY=",
        "  endpoint: 198.18.1.2:4000", "  latest handshake: never",
        "  transfer: 10 B received, 20 B sent", "  up: no", "  routes: 10.201.0.0/16",
        "  remote 10.9.0.0/16 as 10.201.0.0/16: egress 3 pkts 300 B, ingress 4 pkts 400 B",
        "", "client: new", "  address: 10.192.0.3",
        "  public key: (none yet: natgw client-config --genkey)", "  endpoint: (none)",
        "  latest handshake: never", "  transfer: 0 B received, 0 B sent", "  up: no",
        "  routes: (none)",
    ]
