"""The dataplane's pinned maps as typed tables: devices, mappings, counters.

Works on the pins alone (no compiler), so any process can read and update a
running gateway: `natgw maps`, the metrics collector, the control plane.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from . import layout as L
from .bpfsys import Map

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MappingKind = Literal["remote", "local"]

# (table, whether the key is the mapping's "as" side) for each kind: the
# key prefix is what a packet carries, the value what it is rewritten to.
_ENTRIES: dict[str, tuple[tuple[int, bool], ...]] = {
    "remote": (
        (L.table(L.DIR_EGRESS, L.SIDE_DST), True),    # dst as -> cidr
        (L.table(L.DIR_INGRESS, L.SIDE_SRC), False),  # src cidr -> as
    ),
    "local": (
        (L.table(L.DIR_EGRESS, L.SIDE_SRC), False),   # src cidr -> as
        (L.table(L.DIR_INGRESS, L.SIDE_DST), True),   # dst as -> cidr
    ),
}
# The egress entry identifies a mapping when reading the tables back.
_EGRESS_TABLE = {kind: entries[0] for kind, entries in _ENTRIES.items()}


class TableError(Exception):
    """A mapping or device operation that cannot be done; one-line message."""


@dataclass(frozen=True)
class Mapping:
    """One 1:1 prefix translation: `cidr` (real) <-> `as_` (how the other side sees it)."""

    kind: MappingKind
    cidr: IPNetwork
    as_: IPNetwork

    def __post_init__(self) -> None:
        if self.kind not in _ENTRIES:
            raise TableError(f"mapping kind {self.kind!r}: must be remote or local")
        if self.cidr.version != self.as_.version:
            raise TableError(f"{self}: cidr and as are of different families")
        if self.cidr.prefixlen != self.as_.prefixlen:
            raise TableError(f"{self}: cidr and as have different prefix lengths")

    @classmethod
    def parse(cls, kind: MappingKind, cidr: str, as_: str) -> Mapping:
        return cls(kind, ipaddress.ip_network(cidr), ipaddress.ip_network(as_))

    def __str__(self) -> str:
        return f"{self.kind} {self.cidr} as {self.as_}"


@dataclass(frozen=True)
class InstalledMapping:
    ifindex: int
    mapping: Mapping
    mapping_id: int


@dataclass(frozen=True)
class Counter:
    packets: int
    bytes: int


def _key(version: int, ifindex: int, table: int, net: IPNetwork):
    key = (L.LpmV4Key if version == 4 else L.LpmV6Key)()
    key.prefixlen = L.KEY_FIXED_BITS + net.prefixlen
    key.ifindex = ifindex
    key.table = table
    ctypes.memmove(key.addr, net.network_address.packed, len(net.network_address.packed))
    return key


def _value(net: IPNetwork, mapping_id: int) -> L.Xlate:
    value = L.Xlate()
    packed = net.network_address.packed
    ctypes.memmove(value.addr, packed, len(packed))
    value.prefixlen = net.prefixlen
    value.mapping_id = mapping_id
    return value


def _key_net(key) -> IPNetwork:
    plen = key.prefixlen - L.KEY_FIXED_BITS
    return ipaddress.ip_network((bytes(key.addr), plen))


def _value_net(value: L.Xlate, version: int) -> IPNetwork:
    raw = bytes(value.addr)[: 4 if version == 4 else 16]
    return ipaddress.ip_network((raw, value.prefixlen))


class Tables:
    """Typed access to the pinned maps of one gateway."""

    def __init__(self, pin_dir: str) -> None:
        self.pin_dir = pin_dir
        p = lambda name: os.path.join(pin_dir, name)  # noqa: E731
        self.v4 = Map.open_pinned(p(L.MAP_XLATE_V4), L.LpmV4Key, L.Xlate)
        self.v6 = Map.open_pinned(p(L.MAP_XLATE_V6), L.LpmV6Key, L.Xlate)
        self.devices = Map.open_pinned(p(L.MAP_DEVICES), ctypes.c_uint32, L.Device)
        self.map_stats = Map.open_pinned(p(L.MAP_MAP_STATS), ctypes.c_uint32, L.Counter,
                                         percpu=True)
        self.dev_stats = Map.open_pinned(p(L.MAP_DEV_STATS), ctypes.c_uint32, ctypes.c_uint64,
                                         percpu=True)

    def close(self) -> None:
        for m in (self.v4, self.v6, self.devices, self.map_stats, self.dev_stats):
            m.close()

    def __enter__(self) -> Tables:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lpm(self, version: int) -> Map:
        return self.v4 if version == 4 else self.v6

    # -- devices -----------------------------------------------------------

    def device(self, ifindex: int) -> L.Device | None:
        return self.devices.lookup(ctypes.c_uint32(ifindex))

    def all_devices(self) -> dict[int, L.Device]:
        return {int(k.value): v for k, v in self.devices.items()}

    def set_device(self, ifindex: int, l3_offset: int, mss_v4: int, mss_v6: int,
                   flags: int = 0) -> L.Device:
        """Create or update a device entry, keeping its counter slot."""
        dev = self.device(ifindex)
        if dev is None:
            dev = L.Device()
            dev.slot = self._free_slot()
            self._reset_dev_stats(dev.slot)
        dev.l3_offset, dev.mss_v4, dev.mss_v6, dev.flags = l3_offset, mss_v4, mss_v6, flags
        self.devices.update(ctypes.c_uint32(ifindex), dev)
        return dev

    def remove_device(self, ifindex: int) -> None:
        """Forget a device and every mapping installed for it."""
        for entry in self.mappings(ifindex):
            self.remove_mapping(ifindex, entry.mapping)
        self.devices.delete(ctypes.c_uint32(ifindex))

    def _free_slot(self) -> int:
        used = {d.slot for d in self.all_devices().values()}
        for slot in range(L.MAX_DEVICES):
            if slot not in used:
                return slot
        raise TableError(f"no free device slot: natgw handles at most {L.MAX_DEVICES} devices")

    def _reset_dev_stats(self, slot: int) -> None:
        for stat in range(L.DEV_STAT_MAX):
            self.dev_stats.update(ctypes.c_uint32(slot * L.DEV_STAT_MAX + stat),
                                  ctypes.c_uint64(0))

    def device_stats(self, ifindex: int) -> dict[str, int]:
        """Drops and events of a device by name, summed over CPUs."""
        dev = self.device(ifindex)
        if dev is None:
            raise TableError(f"ifindex {ifindex}: not a natgw device")
        out = {}
        for stat, name in L.DEV_STAT_NAMES.items():
            values = self.dev_stats.lookup(ctypes.c_uint32(dev.slot * L.DEV_STAT_MAX + stat))
            out[name] = sum(int(v.value) for v in values or [])
        return out

    # -- mappings ----------------------------------------------------------

    def mappings(self, ifindex: int | None = None) -> list[InstalledMapping]:
        """Installed mappings, read back from their egress entries."""
        out = []
        for version in (4, 6):
            for key, value in self._lpm(version).items():
                if ifindex is not None and key.ifindex != ifindex:
                    continue
                for kind, (tbl, key_is_as) in _EGRESS_TABLE.items():
                    if key.table != tbl:
                        continue
                    knet, vnet = _key_net(key), _value_net(value, version)
                    cidr, as_ = (vnet, knet) if key_is_as else (knet, vnet)
                    out.append(InstalledMapping(key.ifindex, Mapping(kind, cidr, as_),
                                                value.mapping_id))
        return sorted(out, key=lambda m: (m.ifindex, m.mapping_id))

    def _used_ids(self) -> set[int]:
        return {v.mapping_id for m in (self.v4, self.v6) for _, v in m.items()}

    def _free_id(self, used: set[int]) -> int:
        for i in range(L.MAX_MAPPINGS):
            if i not in used:
                return i
        raise TableError(f"no free mapping id: natgw holds at most {L.MAX_MAPPINGS} mappings")

    def _check_conflict(self, ifindex: int, mapping: Mapping,
                        installed: list[InstalledMapping]) -> None:
        # Two mappings on one device whose keys coincide would silently
        # overwrite each other's entries.
        for entry in installed:
            other = entry.mapping
            if other == mapping or other.cidr.version != mapping.cidr.version:
                continue
            for (tbl, key_is_as), (otbl, okey_is_as) in zip(
                _ENTRIES[mapping.kind], _ENTRIES[other.kind], strict=True
            ):
                if tbl != otbl:
                    continue
                mine = mapping.as_ if key_is_as else mapping.cidr
                theirs = other.as_ if okey_is_as else other.cidr
                if mine == theirs:
                    raise TableError(f"{mapping}: conflicts with installed {other}")

    def add_mapping(self, ifindex: int, mapping: Mapping) -> InstalledMapping:
        """Install a mapping on a device (idempotent); counters start at zero."""
        installed = self.mappings(ifindex)
        for entry in installed:
            if entry.mapping == mapping:
                return entry
        self._check_conflict(ifindex, mapping, installed)
        return self._install(ifindex, mapping)

    def _install(self, ifindex: int, mapping: Mapping) -> InstalledMapping:
        mapping_id = self._free_id(self._used_ids())
        for direction in (L.DIR_EGRESS, L.DIR_INGRESS):
            self.map_stats.update(ctypes.c_uint32(mapping_id * 2 + direction), L.Counter())
        lpm = self._lpm(mapping.cidr.version)
        for tbl, key_is_as in _ENTRIES[mapping.kind]:
            src, dst = (mapping.as_, mapping.cidr) if key_is_as else (mapping.cidr, mapping.as_)
            lpm.update(_key(mapping.cidr.version, ifindex, tbl, src), _value(dst, mapping_id))
        return InstalledMapping(ifindex, mapping, mapping_id)

    def remove_mapping(self, ifindex: int, mapping: Mapping) -> bool:
        """Remove a mapping from a device; False if it was not installed."""
        if not any(e.mapping == mapping for e in self.mappings(ifindex)):
            return False
        lpm = self._lpm(mapping.cidr.version)
        for tbl, key_is_as in _ENTRIES[mapping.kind]:
            net = mapping.as_ if key_is_as else mapping.cidr
            lpm.delete(_key(mapping.cidr.version, ifindex, tbl, net))
        return True

    def set_mappings(self, ifindex: int, mappings: Iterable[Mapping]) -> None:
        """Make a device's mappings exactly these, touching only the differences.

        Unchanged mappings keep their ids and counters. New entries are added
        before stale ones are removed, so a changed mapping never leaves a gap.
        """
        wanted = list(dict.fromkeys(mappings))
        installed = {e.mapping for e in self.mappings(ifindex)}
        stale = [m for m in installed if m not in wanted]
        for m in wanted:
            if m not in installed:
                # A stale entry holding the same key is replaced in place.
                self._check_conflict(ifindex, m, [
                    InstalledMapping(ifindex, s, 0) for s in installed
                    if s not in stale and s != m
                ])
                self._install(ifindex, m)
        for m in stale:
            self._remove_entries_not_shared(ifindex, m, wanted)

    def _remove_entries_not_shared(self, ifindex: int, mapping: Mapping,
                                   wanted: list[Mapping]) -> None:
        # Skip keys a wanted mapping now owns (it overwrote them in place).
        owned = set()
        for m in wanted:
            if m.cidr.version != mapping.cidr.version:
                continue
            for tbl, key_is_as in _ENTRIES[m.kind]:
                owned.add((tbl, m.as_ if key_is_as else m.cidr))
        lpm = self._lpm(mapping.cidr.version)
        for tbl, key_is_as in _ENTRIES[mapping.kind]:
            net = mapping.as_ if key_is_as else mapping.cidr
            if (tbl, net) not in owned:
                lpm.delete(_key(mapping.cidr.version, ifindex, tbl, net))

    def counters(self, mapping_id: int) -> dict[str, Counter]:
        """Packets and bytes of a mapping per direction, summed over CPUs."""
        out = {}
        for direction, name in L.DIRECTIONS.items():
            values = self.map_stats.lookup(ctypes.c_uint32(mapping_id * 2 + direction)) or []
            out[name] = Counter(sum(v.packets for v in values), sum(v.bytes for v in values))
        return out
