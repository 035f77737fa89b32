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

from .. import faults
from . import layout as L
from .bpfsys import Map

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MappingKind = Literal["remote", "local"]

# What each mapping kind does, the one table of it (see natgw_shared.h): per
# direction, the side of the packet rewritten, and whether the packet carries
# the mapping's "as" prefix on that side (else its real cidr). A "remote"
# mapping renames the peer's addresses, a "local" one ours.
KIND_RULES: dict[tuple[str, int], tuple[int, bool]] = {
    ("remote", L.DIR_EGRESS): (L.SIDE_DST, True),    # dst as -> cidr
    ("remote", L.DIR_INGRESS): (L.SIDE_SRC, False),  # src cidr -> as
    ("local", L.DIR_EGRESS): (L.SIDE_SRC, False),    # src cidr -> as
    ("local", L.DIR_INGRESS): (L.SIDE_DST, True),    # dst as -> cidr
}
# The kind owning each (direction, side) table.
TABLE_KIND: dict[tuple[int, int], str] = {
    (direction, side): kind for (kind, direction), (side, _) in KIND_RULES.items()
}
# (table, whether the key is the mapping's "as" side) for each kind, egress
# first: the key prefix is what a packet carries, the value what it becomes.
_ENTRIES: dict[str, tuple[tuple[int, bool], ...]] = {
    kind: tuple((L.table(d, KIND_RULES[(kind, d)][0]), KIND_RULES[(kind, d)][1])
                for d in (L.DIR_EGRESS, L.DIR_INGRESS))
    for kind in ("remote", "local")
}
# The egress entry identifies a mapping when reading the tables back.
_EGRESS_TABLE = {kind: entries[0] for kind, entries in _ENTRIES.items()}
_INGRESS_TABLE = {kind: entries[1][0] for kind, entries in _ENTRIES.items()}


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


def _entry_keys(mapping: Mapping) -> list[tuple[int, IPNetwork]]:
    """(table, key prefix) of a mapping's entries, egress first."""
    return [(tbl, mapping.as_ if key_is_as else mapping.cidr)
            for tbl, key_is_as in _ENTRIES[mapping.kind]]


def _targets(mapping: Mapping) -> list[IPNetwork]:
    """What each entry of _entry_keys(mapping) rewrites to, in the same order."""
    return [mapping.cidr if key_is_as else mapping.as_ for _, key_is_as in _ENTRIES[mapping.kind]]


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
        # Absent on a gateway loaded by a natgw without the fast path (until its next
        # `up` loads the new programs, which create it).
        self.fast_stats = None
        if os.path.exists(p(L.MAP_FAST_STATS)):
            self.fast_stats = Map.open_pinned(p(L.MAP_FAST_STATS), ctypes.c_uint32,
                                              ctypes.c_uint64, percpu=True)

    def close(self) -> None:
        for m in (self.v4, self.v6, self.devices, self.map_stats, self.dev_stats,
                  self.fast_stats):
            if m is not None:
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
        """Forget a device and every mapping installed for it (one pass over the maps)."""
        for lpm in (self.v4, self.v6):
            for key in lpm.keys():
                if key.ifindex == ifindex:
                    lpm.delete(key)
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
        if self.fast_stats is not None:
            for reason in L.FAST_NAMES:
                self.fast_stats.update(ctypes.c_uint32(slot * L.FAST_MAX + reason),
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

    def fast_stats_of(self, ifindex: int) -> dict[str, int]:
        """Fast-path decisions of a device by name, summed over CPUs ({} without the map)."""
        dev = self.device(ifindex)
        if dev is None:
            raise TableError(f"ifindex {ifindex}: not a natgw device")
        if self.fast_stats is None:
            return {}
        out = {}
        for reason, name in L.FAST_NAMES.items():
            values = self.fast_stats.lookup(ctypes.c_uint32(dev.slot * L.FAST_MAX + reason))
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

    def _free_id(self, used: set[int], start: int = 0) -> int:
        for i in range(start, L.MAX_MAPPINGS):
            if i not in used:
                return i
        raise TableError(f"no free mapping id: natgw holds at most {L.MAX_MAPPINGS} mappings")

    @staticmethod
    def _owners(mappings: Iterable[Mapping]) -> dict[tuple, Mapping]:
        """The map key each mapping's entries take; two mappings sharing a key conflict.

        They would silently overwrite each other's entries.
        """
        owner: dict[tuple, Mapping] = {}
        for m in mappings:
            for key in _entry_keys(m):
                other = owner.setdefault(key, m)
                if other != m:
                    raise TableError(f"{m}: conflicts with {other}")
        return owner

    def add_mapping(self, ifindex: int, mapping: Mapping) -> InstalledMapping:
        """Install a mapping on a device (idempotent); counters start at zero."""
        return self.add_mappings(ifindex, [mapping])[0]

    def add_mappings(self, ifindex: int, mappings: Iterable[Mapping]) -> list[InstalledMapping]:
        """Install mappings on a device (idempotent), reading the maps once.

        Cost: one pass over the installed entries plus the new ones, however many.
        """
        new = list(dict.fromkeys(mappings))
        installed = {e.mapping: e for e in self.mappings(ifindex)}
        self._owners([*installed, *(m for m in new if m not in installed)])
        used = self._used_ids()
        out, next_id = [], 0
        for m in new:
            if m in installed:
                out.append(installed[m])
                continue
            entry = self._install(ifindex, m, used, next_id)
            next_id = entry.mapping_id + 1
            out.append(entry)
        return out

    def _install(self, ifindex: int, mapping: Mapping, used: set[int] | None = None,
                 start: int = 0, mapping_id: int | None = None) -> InstalledMapping:
        """Write a mapping's entries: ingress first, then egress, then read both back.

        Ingress first: until the egress entry exists nothing is translated
        outbound, so no reply can come back to a missing ingress entry, and the
        egress entry (which identifies an installed mapping) marks it complete.
        """
        if mapping_id is None:
            used = self._used_ids() if used is None else used
            mapping_id = self._free_id(used, start)
            for direction in (L.DIR_EGRESS, L.DIR_INGRESS):
                self.map_stats.update(ctypes.c_uint32(mapping_id * 2 + direction), L.Counter())
        if used is not None:
            used.add(mapping_id)
        version = mapping.cidr.version
        lpm = self._lpm(version)
        for (tbl, key_net), target in reversed(list(zip(_entry_keys(mapping),
                                                        _targets(mapping), strict=True))):
            lpm.update(_key(version, ifindex, tbl, key_net), _value(target, mapping_id))
            if tbl == _INGRESS_TABLE[mapping.kind]:
                faults.step("mapping-ingress-written")
        for (tbl, key_net), target in zip(_entry_keys(mapping), _targets(mapping), strict=True):
            if self._entry_id(ifindex, tbl, key_net, target) != mapping_id:
                raise TableError(f"{mapping}: entry {key_net} did not read back as written")
        return InstalledMapping(ifindex, mapping, mapping_id)

    def _entry_id(self, ifindex: int, tbl: int, key_net: IPNetwork,
                  target: IPNetwork) -> int | None:
        """The mapping id of this exact entry, None if absent or pointing elsewhere."""
        found = self._lpm(key_net.version).lookup(_key(key_net.version, ifindex, tbl, key_net))
        # A trie lookup is longest-prefix: the entry found is this key's own only
        # if its prefix length is the key's; then its value must match.
        if (found is None or found.prefixlen != target.prefixlen
                or _value_net(found, target.version) != target):
            return None
        return int(found.mapping_id)

    def orphans(self, ifindex: int | None = None) -> list[tuple[int, str, IPNetwork]]:
        """One-way entries: (ifindex, "egress"/"ingress", key prefix) whose twin is missing.

        A mapping killed half-way through being written or removed leaves one.
        """
        pairs: dict[tuple, set[int]] = {}
        for version in (4, 6):
            for key, value in self._lpm(version).items():
                if ifindex is not None and key.ifindex != ifindex:
                    continue
                knet, vnet = _key_net(key), _value_net(value, version)
                for kind, entries in _ENTRIES.items():
                    for pos, (tbl, key_is_as) in enumerate(entries):
                        if key.table != tbl:
                            continue
                        cidr, as_ = (vnet, knet) if key_is_as else (knet, vnet)
                        pairs.setdefault((key.ifindex, kind, cidr, as_), set()).add(pos)
        out = []
        for (idx, kind, cidr, as_), seen in pairs.items():
            if seen == {0}:
                out.append((idx, "egress", _entry_keys(Mapping(kind, cidr, as_))[0][1]))
            elif seen == {1}:
                out.append((idx, "ingress", _entry_keys(Mapping(kind, cidr, as_))[1][1]))
        return sorted(out, key=str)

    def remove_mapping(self, ifindex: int, mapping: Mapping) -> bool:
        """Remove a mapping from a device (egress entry first); False if it was not installed."""
        keys = list(zip(_entry_keys(mapping), _targets(mapping), strict=True))
        if any(self._entry_id(ifindex, tbl, net, target) is None
               for (tbl, net), target in keys):
            return False
        self._delete_entries(ifindex, mapping, keys=None)
        return True

    def _delete_entries(self, ifindex: int, mapping: Mapping,
                        keys: set[tuple[int, IPNetwork]] | None) -> None:
        """Delete a mapping's entries (only those in `keys` if given): egress, then ingress.

        The reverse of writing: outbound translation stops before inbound does.
        """
        lpm = self._lpm(mapping.cidr.version)
        for tbl, net in _entry_keys(mapping):
            if keys is None or (tbl, net) in keys:
                lpm.delete(_key(mapping.cidr.version, ifindex, tbl, net))
                if tbl == _EGRESS_TABLE[mapping.kind][0]:
                    faults.step("mapping-egress-removed")

    def set_mappings(self, ifindex: int, mappings: Iterable[Mapping]) -> None:
        """Make a device's mappings exactly these, touching only the differences.

        Unchanged mappings keep their ids and counters. New entries are added
        before stale ones are removed, so a changed mapping never leaves a gap; an
        entry whose key a new mapping takes over is rewritten in place. A one-way
        entry (its twin lost to a crash or a hand edit) is repaired: completed if
        its mapping is wanted, else removed. One pass over the maps, however many
        mappings.
        """
        wanted = list(dict.fromkeys(mappings))
        owner = self._owners(wanted)
        # Every entry of the device: (table, key prefix) -> (target, mapping id).
        entries: dict[tuple[int, IPNetwork], tuple[IPNetwork, int]] = {}
        used: set[int] = set()
        for version in (4, 6):
            for key, value in self._lpm(version).items():
                used.add(int(value.mapping_id))
                if key.ifindex == ifindex:
                    entries[(key.table, _key_net(key))] = (_value_net(value, version),
                                                           int(value.mapping_id))
        next_id = 0
        for m in wanted:
            have = [entries.get(k) for k in _entry_keys(m)]
            ids = {h[1] for h, t in zip(have, _targets(m), strict=True) if h and h[0] == t}
            if len(ids) == 1 and all(h and h[0] == t
                                     for h, t in zip(have, _targets(m), strict=True)):
                continue  # installed, both ways
            # Half there (an orphan): complete it under the id it has, keeping its counters.
            keep = ids.pop() if len(ids) == 1 else None
            entry = self._install(ifindex, m, used, next_id, mapping_id=keep)
            if keep is None:
                next_id = entry.mapping_id + 1
        stale: dict[Mapping, set[tuple[int, IPNetwork]]] = {}
        for (tbl, knet), (vnet, _) in entries.items():
            if (tbl, knet) in owner:
                continue
            for kind, table_entries in _ENTRIES.items():
                for t, key_is_as in table_entries:
                    if t == tbl and knet.prefixlen == vnet.prefixlen:
                        cidr, as_ = (vnet, knet) if key_is_as else (knet, vnet)
                        stale.setdefault(Mapping(kind, cidr, as_), set()).add((tbl, knet))
        for m, keys in stale.items():
            self._delete_entries(ifindex, m, keys)

    def counters(self, mapping_id: int) -> dict[str, Counter]:
        """Packets and bytes of a mapping per direction, summed over CPUs."""
        out = {}
        for direction, name in L.DIRECTIONS.items():
            values = self.map_stats.lookup(ctypes.c_uint32(mapping_id * 2 + direction)) or []
            out[name] = Counter(sum(v.packets for v in values), sum(v.bytes for v in values))
        return out
