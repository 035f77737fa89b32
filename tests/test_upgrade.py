"""A gateway pinned by the LPM-trie layout is taken over by `Dataplane.load` of this one.

The old maps are made here as the previous version pinned them (same types,
key and value sizes, names), filled, and then loaded over: every device,
mapping, id and counter must be found in the new maps, the old pins gone,
and the new programs must translate with them. Pins of a layout this version
does not know are refused in one line before anything is compiled.
"""

from __future__ import annotations

import ctypes
import os
import shutil

import pytest
from bpf_run import LO_IFINDEX, Runner, run_gateway_name
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from natgw import introspect
from natgw.dataplane import Dataplane, DataplaneError, InstalledMapping, Mapping, layout
from natgw.dataplane.bpfsys import (
    BPF_MAP_TYPE_HASH,
    BPF_MAP_TYPE_LPM_TRIE,
    BPF_MAP_TYPE_PERCPU_ARRAY,
    Map,
    _check,
    _lib,
    obj_pin,
    possible_cpus,
)
from natgw.dataplane.loader import pin_dir
from natgw.dataplane.upgrade import KEY_FIXED_BITS, Device, LpmV4Key, LpmV6Key

pytestmark = pytest.mark.bpf

BPF_F_NO_PREALLOC = 1
REMOTE = Mapping.parse("remote", "10.244.0.0/16", "10.245.0.0/16")
LOCAL6 = Mapping.parse("local", "fd00:a::/64", "fd00:c::/64")


class _CreateOpts(ctypes.Structure):
    # struct bpf_map_create_opts of libbpf 1.x
    _fields_ = [("sz", ctypes.c_size_t), ("btf_fd", ctypes.c_uint32),
                ("btf_key_type_id", ctypes.c_uint32), ("btf_value_type_id", ctypes.c_uint32),
                ("btf_vmlinux_value_type_id", ctypes.c_uint32),
                ("inner_map_fd", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("map_extra", ctypes.c_uint64), ("numa_node", ctypes.c_uint32),
                ("map_ifindex", ctypes.c_uint32)]


def pin_map(pdir: str, name: str, kind: int, key: type, value: type, entries: int,
            flags: int = 0) -> Map:
    opts = _CreateOpts(sz=ctypes.sizeof(_CreateOpts), map_flags=flags)
    lib = _lib()
    lib.bpf_map_create.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32,
                                   ctypes.c_uint32, ctypes.c_uint32,
                                   ctypes.POINTER(_CreateOpts)]
    fd = _check(lib.bpf_map_create(kind, name.encode(), ctypes.sizeof(key),
                                   ctypes.sizeof(value), entries, ctypes.byref(opts)),
                f"create {name}")
    obj_pin(fd, os.path.join(pdir, name))
    return Map(fd, key, value, name, percpu=kind == BPF_MAP_TYPE_PERCPU_ARRAY)


def lpm_key(version: int, ifindex: int, table: int, net) -> ctypes.Structure:
    key = (LpmV4Key if version == 4 else LpmV6Key)()
    key.prefixlen, key.ifindex, key.table = KEY_FIXED_BITS + net.prefixlen, ifindex, table
    ctypes.memmove(key.addr, net.network_address.packed, len(net.network_address.packed))
    return key


def xlate(net, mapping_id: int) -> layout.Xlate:
    value = layout.Xlate(prefixlen=net.prefixlen, mapping_id=mapping_id)
    ctypes.memmove(value.addr, net.network_address.packed, len(net.network_address.packed))
    return value


@pytest.fixture()
def old_gateway():
    """Pins as the LPM version left them: a device, two mappings, a counter."""
    gateway = run_gateway_name() + "u"
    pdir = pin_dir(gateway)
    os.makedirs(pdir)
    try:
        lpm = {v: pin_map(pdir, f"xlate_v{v}", BPF_MAP_TYPE_LPM_TRIE, k, layout.Xlate,
                          layout.XLATE_ENTRIES, BPF_F_NO_PREALLOC)
               for v, k in ((4, LpmV4Key), (6, LpmV6Key))}
        devices = pin_map(pdir, "devices", BPF_MAP_TYPE_HASH, ctypes.c_uint32, Device,
                          layout.MAX_DEVICES)
        stats = pin_map(pdir, layout.MAP_MAP_STATS, BPF_MAP_TYPE_PERCPU_ARRAY,
                        ctypes.c_uint32, layout.Counter, 2 * layout.MAX_MAPPINGS)
        dev_stats = pin_map(pdir, layout.MAP_DEV_STATS, BPF_MAP_TYPE_PERCPU_ARRAY,
                            ctypes.c_uint32, ctypes.c_uint64,
                            layout.MAX_DEVICES * layout.DEV_STAT_MAX)
        devices.update(ctypes.c_uint32(LO_IFINDEX),
                       Device(slot=3, l3_offset=14, mss_v4=1380, mss_v6=1360,
                              flags=layout.DEV_F_OWN_QDISC))
        # Each mapping's egress and ingress entry: (table, key prefix, target), id.
        t = layout.table
        old_entries = [
            (5, [(t(layout.DIR_EGRESS, layout.SIDE_DST), REMOTE.as_, REMOTE.cidr),
                 (t(layout.DIR_INGRESS, layout.SIDE_SRC), REMOTE.cidr, REMOTE.as_)]),
            (9, [(t(layout.DIR_EGRESS, layout.SIDE_SRC), LOCAL6.cidr, LOCAL6.as_),
                 (t(layout.DIR_INGRESS, layout.SIDE_DST), LOCAL6.as_, LOCAL6.cidr)]),
        ]
        for mid, entries in old_entries:
            for table, key_net, target in entries:
                lpm[key_net.version].update(lpm_key(key_net.version, LO_IFINDEX, table, key_net),
                                            xlate(target, mid))
        per_cpu = [layout.Counter(packets=7, bytes=700)] + [layout.Counter()] * (
            possible_cpus() - 1)
        stats.update(ctypes.c_uint32(5 * 2 + layout.DIR_EGRESS), per_cpu)
        dev_stats.update(ctypes.c_uint32(3 * layout.DEV_STAT_MAX + layout.EV_UNMATCHED),
                         [ctypes.c_uint64(4)] + [ctypes.c_uint64(0)] * (possible_cpus() - 1))
        for m in (*lpm.values(), devices, stats, dev_stats):
            m.close()
        yield gateway
    finally:
        shutil.rmtree(pdir, ignore_errors=True)


def test_old_pins_are_taken_over_with_ids_and_counters(old_gateway):
    with pytest.raises(introspect.InspectError, match="earlier natgw version; `natgw up`"):
        introspect.read_gateway(old_gateway, with_names=False)
    with Dataplane.load(old_gateway) as dp:
        pdir = dp.pin_dir
        assert not {"xlate_v4", "xlate_v6", "devices"} & set(os.listdir(pdir))
        assert dp.mappings() == [InstalledMapping(LO_IFINDEX, REMOTE, 5),
                                 InstalledMapping(LO_IFINDEX, LOCAL6, 9)]
        dev = dp.tables.device(LO_IFINDEX)
        assert (dev.slot, dev.l3_offset, dev.mss_v4, dev.mss_v6, dev.flags) == (
            3, 14, 1380, 1360, layout.DEV_F_OWN_QDISC)
        assert dp.tables.counters(5)["egress"].packets == 7
        assert dp.tables.device_stats(LO_IFINDEX)["unmatched"] == 4
        run = Runner(dp)
        assert run.run("egress", IP(src="192.0.2.1", dst="10.245.3.4") / UDP()).out == bytes(
            IP(src="192.0.2.1", dst="10.244.3.4") / UDP())
        assert run.run("egress", IPv6(src="fd00:a::5", dst="2001:db8::1") / UDP()).out == bytes(
            IPv6(src="fd00:c::5", dst="2001:db8::1") / UDP())
        assert dp.tables.counters(5)["egress"].packets == 8
    # Loading again finds nothing left to take over and keeps everything.
    with Dataplane.load(old_gateway) as dp:
        assert [m.mapping_id for m in dp.mappings()] == [5, 9]


def test_pins_of_an_unknown_layout_are_refused_in_one_line():
    gateway = run_gateway_name() + "v"
    pdir = pin_dir(gateway)
    os.makedirs(pdir)
    try:
        # An xlate_v4 that is no LPM trie: not the layout this version takes over.
        pin_map(pdir, "xlate_v4", BPF_MAP_TYPE_HASH, ctypes.c_uint32, ctypes.c_uint32,
                4).close()
        with pytest.raises(DataplaneError) as e:
            Dataplane.load(gateway)
        msg = str(e.value)
        assert "\n" not in msg and msg.endswith(
            "run `natgw down` with the version that started the gateway, then `natgw up`")
        assert not any(n.startswith("prog_") for n in os.listdir(pdir))  # nothing compiled
    finally:
        shutil.rmtree(pdir, ignore_errors=True)
