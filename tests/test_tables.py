"""Mapping tables: idempotent, conflict-checked, linear in the number of mappings."""

from __future__ import annotations

import ctypes
import ipaddress

import pytest
from bpf_run import LO_IFINDEX, Runner, run_gateway_name, set_skip_bit
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


# -- entry order and one-way orphans ------------------------------------------------


def entries(dp) -> list[tuple[str, str]]:
    """(direction, key prefix) of every entry of LO_IFINDEX, read straight from the map."""
    from natgw.dataplane import layout
    from natgw.dataplane.tables import _key_net

    out = []
    for key, _ in dp.tables.v4.items():
        if key.ifindex == LO_IFINDEX:
            direction = "egress" if key.table // 2 == layout.DIR_EGRESS else "ingress"
            out.append((direction, str(_key_net(key))))
    return sorted(out)


def test_ingress_entry_is_written_before_egress(dp, monkeypatch):
    # Stop the write right after the first entry: it must be the ingress one.
    monkeypatch.setenv("NATGW_TEST_FAIL_AT", "mapping-ingress-written:index")
    with pytest.raises(IndexError):
        dp.tables.set_mappings(LO_IFINDEX, [R])
    assert entries(dp) == [("ingress", "10.244.0.0/16")]
    assert installed(dp) == set()  # not a mapping until its egress entry exists
    assert dp.tables.orphans(LO_IFINDEX) == [(LO_IFINDEX, "ingress",
                                              ipaddress.ip_network("10.244.0.0/16"))]


def test_egress_entry_is_removed_before_ingress(dp, monkeypatch):
    dp.tables.set_mappings(LO_IFINDEX, [R, L])
    monkeypatch.setenv("NATGW_TEST_FAIL_AT", "mapping-egress-removed:index")
    with pytest.raises(IndexError):
        dp.tables.set_mappings(LO_IFINDEX, [L])
    # R's egress entry (key: its as) is gone, its ingress entry (key: its cidr) not yet.
    assert ("egress", "10.245.0.0/16") not in entries(dp)
    assert ("ingress", "10.244.0.0/16") in entries(dp)
    assert installed(dp) == {L}


@pytest.mark.parametrize("lost", ["egress", "ingress"])
def test_a_one_way_orphan_is_repaired_keeping_its_id(dp, lost):
    from natgw.dataplane import layout
    from natgw.dataplane.tables import _key

    first = dp.tables.add_mapping(LO_IFINDEX, R)
    table, net = ((layout.table(layout.DIR_EGRESS, layout.SIDE_DST), R.as_) if lost == "egress"
                  else (layout.table(layout.DIR_INGRESS, layout.SIDE_SRC), R.cidr))
    assert dp.tables.v4.delete(_key(4, LO_IFINDEX, table, net))
    kept = "ingress" if lost == "egress" else "egress"
    assert [(o[1]) for o in dp.tables.orphans(LO_IFINDEX)] == [kept]
    dp.tables.set_mappings(LO_IFINDEX, [R])
    assert dp.tables.orphans(LO_IFINDEX) == []
    assert dp.mappings(LO_IFINDEX)[0].mapping_id == first.mapping_id
    assert len(entries(dp)) == 2


def test_an_orphan_of_an_unwanted_mapping_is_removed(dp):
    from natgw.dataplane import layout
    from natgw.dataplane.tables import _key

    dp.tables.set_mappings(LO_IFINDEX, [R, L])
    assert dp.tables.v4.delete(_key(4, LO_IFINDEX, layout.table(layout.DIR_EGRESS,
                                                                 layout.SIDE_SRC), L.cidr))
    dp.tables.set_mappings(LO_IFINDEX, [R])
    assert dp.tables.orphans(LO_IFINDEX) == [] and installed(dp) == {R}
    assert len(entries(dp)) == 2


# -- prefix length bits (what the dataplane probes) ---------------------------------




def bits(dp, ifindex=LO_IFINDEX, table=None) -> set[int]:
    from natgw.dataplane import layout

    t = layout.table(layout.DIR_EGRESS, layout.SIDE_DST) if table is None else table
    return dp.tables.plens(ifindex, 4, t)


def test_bits_follow_the_entries(dp):
    narrow = Mapping.parse("remote", "172.16.5.0/24", "10.245.9.0/24")
    dp.tables.add_mappings(LO_IFINDEX, [R, narrow])
    assert bits(dp) == {16, 24}
    other24 = Mapping.parse("remote", "172.16.6.0/24", "10.245.8.0/24")
    dp.tables.add_mapping(LO_IFINDEX, other24)
    assert dp.tables.remove_mapping(LO_IFINDEX, narrow)
    assert bits(dp) == {16, 24}  # another /24 is left
    assert dp.tables.remove_mapping(LO_IFINDEX, other24)
    assert bits(dp) == {16}
    dp.tables.set_mappings(LO_IFINDEX, [L])
    assert bits(dp) == set()
    assert bits(dp, table=_local_egress_table()) == {16}
    dp.tables.remove_device(LO_IFINDEX)
    assert dp.tables.plens(LO_IFINDEX, 4, 0) == set()


def _local_egress_table() -> int:
    from natgw.dataplane import layout

    return layout.table(layout.DIR_EGRESS, layout.SIDE_SRC)


def test_a_device_created_after_its_entries_takes_their_bits(dp):
    dp.tables.add_mapping(998, R)  # no device entry yet: nothing to set
    assert dp.tables.device(998) is None
    dp.tables.set_device(998, 0, 0, 0)
    assert bits(dp, 998) == {16}


def test_a_bit_is_cleared_before_the_last_entry_goes(dp, monkeypatch):
    dp.tables.set_mappings(LO_IFINDEX, [R, L])
    # (A failure fires once per process: another kind than the test above uses.)
    monkeypatch.setenv("NATGW_TEST_FAIL_AT", "mapping-egress-removed:oserror")
    with pytest.raises(FileNotFoundError):
        dp.tables.remove_mapping(LO_IFINDEX, R)
    # Stopped right after R's egress entry was deleted: its bit went before it.
    assert bits(dp) == set()
    assert ("ingress", "10.244.0.0/16") in entries(dp)


def test_set_mappings_repairs_bits_left_out_of_step(dp):
    from natgw.dataplane.tables import set_plens

    dp.tables.set_mappings(LO_IFINDEX, [R])
    dev = dp.tables.device(LO_IFINDEX)
    set_plens(dev, 4, 0, {7})  # wrong: a length with no entry, and /16 missing
    dp.tables.devices.update(ctypes.c_uint32(LO_IFINDEX), dev)
    assert Runner(dp).run("egress", IP(src="192.0.2.1", dst="10.245.3.4") / UDP()).out == bytes(
        IP(src="192.0.2.1", dst="10.245.3.4") / UDP())  # the bits are what the dataplane uses
    dp.tables.set_mappings(LO_IFINDEX, [R])
    assert bits(dp) == {16}
    assert Runner(dp).run("egress", IP(src="192.0.2.1", dst="10.245.3.4") / UDP()).out == bytes(
        IP(src="192.0.2.1", dst="10.244.3.4") / UDP())


# -- long-prefix skip bitmaps (natgw_shared.h: NATGW_SKIP_PLEN) -----------------

def _skipped(dp, block: str, table: int = 0) -> bool:
    """Whether lookups in the /16 block of `block` skip lengths above /16 (egress dst)."""
    from natgw.dataplane import layout

    bucket = layout.skip_bucket(ipaddress.ip_address(block).packed)
    return bool(dp.tables.skip_words(LO_IFINDEX, table)[bucket // 64] >> (bucket % 64) & 1)


def test_skip_bits_follow_the_long_prefixes(dp):
    """A /16 among /24s of other blocks costs one probe; a /24 in its own block is found."""
    others = [Mapping.parse("remote", f"172.20.{i}.0/24", f"10.{100 + i}.7.0/24")
              for i in range(3)]
    dp.tables.set_mappings(LO_IFINDEX, [R, *others])
    assert bits(dp) == {16, 24}
    assert _skipped(dp, "10.245.0.0") and not _skipped(dp, "10.100.0.0")
    run = Runner(dp)
    out = run.run("egress", IP(src="192.0.2.1", dst="10.245.3.4") / UDP()).out
    assert out == bytes(IP(src="192.0.2.1", dst="10.244.3.4") / UDP())

    inside = Mapping.parse("remote", "172.21.0.0/24", "10.245.3.0/24")  # in the /16's block
    dp.tables.add_mapping(LO_IFINDEX, inside)
    assert not _skipped(dp, "10.245.0.0")
    out = run.run("egress", IP(src="192.0.2.1", dst="10.245.3.4") / UDP()).out
    assert out == bytes(IP(src="192.0.2.1", dst="172.21.0.4") / UDP())  # the longer prefix

    assert dp.tables.remove_mapping(LO_IFINDEX, inside)
    assert _skipped(dp, "10.245.0.0")
    dp.tables.remove_device(LO_IFINDEX)
    assert not any(dp.tables.skip_words(LO_IFINDEX, 0))  # gone with the device


def test_set_mappings_writes_the_skip_bits_from_its_own_read(dp, monkeypatch):
    """set_mappings reads the maps once; the skip bitmaps it writes from that read and
    its changes are those a read of the maps afterwards gives."""
    from natgw.dataplane import layout

    inside = Mapping.parse("remote", "172.21.0.0/24", "10.245.3.0/24")
    others = [Mapping.parse("remote", f"172.20.{i}.0/24", f"10.{100 + i}.7.0/24")
              for i in range(3)]
    t = dp.tables
    t.set_mappings(LO_IFINDEX, [R, inside, *others])
    assert not _skipped(dp, "10.245.0.0")
    reads, keys = [], type(t.v4).keys

    def counted(self):
        reads.append(self is t.v4)
        return keys(self)

    monkeypatch.setattr(type(t.v4), "keys", counted)
    new = Mapping.parse("remote", "172.22.0.0/24", "10.246.9.0/24")
    t.set_mappings(LO_IFINDEX, [R, others[0], new])  # inside and two others go
    monkeypatch.undo()
    assert reads.count(True) == 1  # its items(), once
    written = {tb: t.skip_words(LO_IFINDEX, tb) for tb in range(layout.TABLES)}
    t._write_skip(LO_IFINDEX)  # from a read of the maps
    assert written == {tb: t.skip_words(LO_IFINDEX, tb) for tb in range(layout.TABLES)}
    assert _skipped(dp, "10.245.0.0") and _skipped(dp, "10.101.0.0")
    assert not _skipped(dp, "10.100.0.0") and not _skipped(dp, "10.246.0.0")


def test_zeroed_skip_bits_probe_every_length(dp):
    """A map a newer natgw created over an older gateway's entries starts at zero:
    every length is probed, so nothing is missed before the control plane writes it."""
    inside = Mapping.parse("remote", "172.21.0.0/24", "10.245.3.0/24")
    dp.tables.set_mappings(LO_IFINDEX, [R, inside])
    dp.tables._write_skip_words(dp.tables.device(LO_IFINDEX).slot, None)
    run = Runner(dp)
    out = run.run("egress", IP(src="192.0.2.1", dst="10.245.3.4") / UDP()).out
    assert out == bytes(IP(src="192.0.2.1", dst="172.21.0.4") / UDP())
    out = run.run("egress", IP(src="192.0.2.1", dst="10.245.4.4") / UDP()).out
    assert out == bytes(IP(src="192.0.2.1", dst="10.244.4.4") / UDP())


def test_a_long_prefix_hidden_by_its_skip_bit_is_found_and_an_apply_repairs_it(dp):
    """A kill between an entry's write and the bitmaps' rewrite leaves the entry's bucket
    marked "no long prefix": drift finds it, and any apply of the mappings rewrites it."""
    from natgw.dataplane import layout

    inside = Mapping.parse("remote", "172.21.0.0/24", "10.245.3.0/24")
    dp.tables.set_mappings(LO_IFINDEX, [R, inside])
    assert dp.tables.hidden_by_skip(LO_IFINDEX) == []
    egress_dst = layout.table(layout.DIR_EGRESS, layout.SIDE_DST)
    set_skip_bit(dp.tables, LO_IFINDEX, egress_dst, "10.245.3.0")  # the kill
    assert dp.tables.hidden_by_skip(LO_IFINDEX) == [ipaddress.ip_network("10.245.3.0/24")]
    run = Runner(dp)
    out = run.run("egress", IP(src="192.0.2.1", dst="10.245.3.4") / UDP()).out
    assert out == bytes(IP(src="192.0.2.1", dst="10.244.3.4") / UDP())  # hidden: the /16's

    dp.tables.set_mappings(LO_IFINDEX, [R, inside])  # what the repair's apply does
    assert dp.tables.hidden_by_skip(LO_IFINDEX) == []
    out = run.run("egress", IP(src="192.0.2.1", dst="10.245.3.4") / UDP()).out
    assert out == bytes(IP(src="192.0.2.1", dst="172.21.0.4") / UDP())


def test_one_read_of_the_entries_answers_every_question_of_them(dp, monkeypatch):
    """drift asks mappings, orphans and hidden entries of every device: one read of the
    maps (read_entries) answers them all, as each alone would from the maps."""
    from natgw.dataplane import layout

    inside = Mapping.parse("remote", "172.21.0.0/24", "10.245.3.0/24")
    other = Mapping.parse("remote", "fd00:a::/48", "fd00:b::/48")
    dp.tables.set_mappings(LO_IFINDEX, [R, inside])
    dp.tables.set_mappings(999, [other])
    set_skip_bit(dp.tables, LO_IFINDEX, layout.table(layout.DIR_EGRESS, layout.SIDE_DST),
                 "10.245.3.0")
    from natgw import faults

    # An injected failure fires once per process: another test here may have fired it.
    monkeypatch.setattr(faults, "_fired", set())
    monkeypatch.setenv("NATGW_TEST_FAIL_AT", "mapping-ingress-written:index")
    with pytest.raises(IndexError):  # leaves an ingress entry without its egress twin
        dp.tables.set_mappings(999, [other, Mapping.parse("remote", "10.9.0.0/16",
                                                          "10.19.0.0/16")])
    t = dp.tables
    entries = t.read_entries()
    for idx in (LO_IFINDEX, 999):
        assert t.mappings(idx, entries) == t.mappings(idx)
        assert t.orphans(idx, entries) == t.orphans(idx)
        assert t.hidden_by_skip(idx, entries) == t.hidden_by_skip(idx)
    assert t.orphans(999, entries) == [(999, "ingress", ipaddress.ip_network("10.9.0.0/16"))]
    assert t.hidden_by_skip(LO_IFINDEX, entries) == [ipaddress.ip_network("10.245.3.0/24")]
    # The answers come from the entries given, not from the maps read again.
    monkeypatch.setattr(type(t.v4), "items", lambda self: pytest.fail("read again"))
    monkeypatch.setattr(type(t.v4), "keys", lambda self: pytest.fail("read again"))
    assert {m.mapping for m in t.mappings(999, entries)} == {other}
    assert t.orphans(LO_IFINDEX, entries) == []
    assert t.hidden_by_skip(LO_IFINDEX, entries) != []
