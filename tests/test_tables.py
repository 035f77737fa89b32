"""Mapping tables: idempotent, conflict-checked, linear in the number of mappings."""

from __future__ import annotations

import ipaddress

import pytest
from bpf_run import LO_IFINDEX, Runner, run_gateway_name
from scapy.layers.inet import IP, UDP

from natgw.dataplane import Dataplane, Mapping, TableError

pytestmark = pytest.mark.bpf

R = Mapping.parse("remote", "10.244.0.0/16", "10.245.0.0/16")
L = Mapping.parse("local", "10.244.0.0/16", "10.246.0.0/16")


@pytest.fixture()
def dp():
    dp = Dataplane.load(run_gateway_name() + "t")
    dp.tables.set_device(LO_IFINDEX, 14, 0, 0)
    dp.tables.set_device(999, 0, 0, 0)
    try:
        yield dp
    finally:
        dp.destroy()


def installed(dp, ifindex=LO_IFINDEX) -> set[Mapping]:
    return {e.mapping for e in dp.mappings(ifindex)}


def test_add_is_idempotent_and_keeps_the_id(dp):
    first = dp.tables.add_mapping(LO_IFINDEX, R)
    assert dp.tables.add_mapping(LO_IFINDEX, R) == first
    assert installed(dp) == {R}


def test_conflicting_mappings_are_refused_and_change_nothing(dp):
    dp.tables.add_mapping(LO_IFINDEX, R)
    same_as = Mapping.parse("remote", "172.16.0.0/16", "10.245.0.0/16")  # same egress key
    with pytest.raises(TableError, match="conflicts with remote 10.244.0.0/16 as 10.245"):
        dp.tables.add_mapping(LO_IFINDEX, same_as)
    with pytest.raises(TableError, match="conflicts"):
        dp.tables.set_mappings(LO_IFINDEX, [same_as, Mapping.parse(
            "remote", "172.17.0.0/16", "10.245.0.0/16")])
    assert installed(dp) == {R}
    # The same key on another device is no conflict.
    dp.tables.add_mapping(999, same_as)
    assert installed(dp, 999) == {same_as}


def test_remove_only_what_is_installed(dp):
    dp.tables.add_mappings(LO_IFINDEX, [R, L])
    sharing_a_key = Mapping.parse("remote", "172.16.0.0/16", "10.245.0.0/16")
    narrower = Mapping.parse("remote", "10.244.0.0/24", "10.245.0.0/24")
    assert not dp.tables.remove_mapping(LO_IFINDEX, sharing_a_key)
    assert not dp.tables.remove_mapping(LO_IFINDEX, narrower)
    assert not dp.tables.remove_mapping(999, R)
    assert installed(dp) == {R, L}
    assert dp.tables.remove_mapping(LO_IFINDEX, R)
    assert installed(dp) == {L}


def test_remove_device_leaves_other_devices(dp):
    dp.tables.add_mappings(LO_IFINDEX, [R, L])
    dp.tables.add_mapping(999, R)
    dp.tables.remove_device(LO_IFINDEX)
    assert installed(dp) == set() and dp.tables.device(LO_IFINDEX) is None
    assert installed(dp, 999) == {R}


def test_changed_as_is_rewritten_in_place_and_translates(dp):
    dp.tables.set_mappings(LO_IFINDEX, [R])
    moved = Mapping.parse("remote", "10.244.0.0/16", "10.247.0.0/16")  # same ingress key
    dp.tables.set_mappings(LO_IFINDEX, [moved])
    assert installed(dp) == {moved}
    run = Runner(dp)
    pkt = IP(src="192.0.2.1", dst="10.247.3.4") / UDP()
    assert run.run("egress", pkt).out == bytes(IP(src="192.0.2.1", dst="10.244.3.4") / UDP())
    back = IP(src="10.244.3.4", dst="192.0.2.1") / UDP()
    assert run.run("ingress", back).out == bytes(IP(src="10.247.3.4", dst="192.0.2.1") / UDP())


def test_ten_thousand_mappings_install_and_reconcile(dp):
    base = ipaddress.ip_network("100.64.0.0/10")
    many = [Mapping("remote", cidr, ipaddress.ip_network((int(cidr.network_address)
                                                          + (1 << 24), 24)))
            for cidr in list(base.subnets(new_prefix=24))[:10_000]]
    dp.tables.set_mappings(LO_IFINDEX, many)
    ids = {e.mapping: e.mapping_id for e in dp.mappings(LO_IFINDEX)}
    assert set(ids) == set(many) and len(set(ids.values())) == 10_000
    dp.tables.set_mappings(LO_IFINDEX, many[1:] + [R])
    after = {e.mapping: e.mapping_id for e in dp.mappings(LO_IFINDEX)}
    assert set(after) == set(many[1:]) | {R}
    assert all(after[m] == ids[m] for m in many[1:])  # unchanged mappings keep their counters
    dp.tables.remove_device(LO_IFINDEX)
    assert dp.mappings() == [e for e in dp.mappings() if e.ifindex == 999]
