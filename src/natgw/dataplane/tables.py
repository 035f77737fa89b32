"""The dataplane's pinned maps as typed tables: devices, mappings, counters.

Works on the pins alone (no compiler), so any process can read and update a
running gateway: `natgw maps`, the metrics collector, the control plane.

Translation entries are exact (ifindex, table, prefix) keys of a hash map per
family; each device records which prefix lengths its tables hold (its plens
bits), and the dataplane probes those, longest first. Every write keeps the
bits in step with the entries: a bit is set only after an entry of its length
exists, and cleared before the last such entry is deleted; `set_mappings`
rewrites them from the entries, repairing what a kill left half done.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
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
    key = (L.XlateV4Key if version == 4 else L.XlateV6Key)()
    key.ifindex = ifindex
    key.table = table
    key.prefixlen = net.prefixlen
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
    return ipaddress.ip_network((bytes(key.addr), key.prefixlen))


def _value_net(value: L.Xlate, version: int) -> IPNetwork:
    raw = bytes(value.addr)[: 4 if version == 4 else 16]
    return ipaddress.ip_network((raw, value.prefixlen))


# -- prefix lengths present (natgw_device.plens_v4 / plens_v6) --------------------

# (ifindex, version, table) -> prefix lengths of its entries
PlenSets = dict[tuple[int, int, int], set[int]]
# Translation entries as read from the maps: (IP version, key, value).
Entries = list[tuple[int, L.XlateV4Key | L.XlateV6Key, L.Xlate]]


def plens(dev: L.Device, version: int, table: int) -> set[int]:
    """The prefix lengths a device's table holds, as its bits say."""
    if version == 4:
        word = int(dev.plens_v4[table])
        return {n for n in range(L.V4_PLEN_MAX + 1) if word >> n & 1}
    base = table * L.V6_PLEN_WORDS
    words = [int(w) for w in dev.plens_v6[base:base + L.V6_PLEN_WORDS]]
    return {n for n in range(L.V6_PLEN_MAX + 1) if words[n // 64] >> (n % 64) & 1}


def set_plens(dev: L.Device, version: int, table: int, lengths: Iterable[int]) -> None:
    """Make a device's bits for one table exactly `lengths`."""
    if version == 4:
        dev.plens_v4[table] = sum(1 << n for n in set(lengths))
        return
    words = [0] * L.V6_PLEN_WORDS
    for n in set(lengths):
        words[n // 64] |= 1 << (n % 64)
    for i, w in enumerate(words):
        dev.plens_v6[table * L.V6_PLEN_WORDS + i] = w


def _all_plens(dev: L.Device) -> dict[tuple[int, int], set[int]]:
    return {(v, t): plens(dev, v, t) for v in (4, 6) for t in range(L.TABLES)}


class Tables:
    """Typed access to the pinned maps of one gateway."""

    def __init__(self, pin_dir: str) -> None:
        self.pin_dir = pin_dir
        p = lambda name: os.path.join(pin_dir, name)  # noqa: E731
        self.v4 = Map.open_pinned(p(L.MAP_XLATE_V4), L.XlateV4Key, L.Xlate)
        self.v6 = Map.open_pinned(p(L.MAP_XLATE_V6), L.XlateV6Key, L.Xlate)
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
        # Likewise the long-prefix skip bitmaps (without them every length is probed).
        self.v4_skip = None
        if os.path.exists(p(L.MAP_XLATE_V4_SKIP)):
            self.v4_skip = Map.open_pinned(p(L.MAP_XLATE_V4_SKIP), ctypes.c_uint32,
                                           ctypes.c_uint64)
        # Likewise the XDP maps (fastpath: xdp).
        self.xdp_tx = self.xdp_macs = None
        if os.path.exists(p(L.MAP_XDP_TX)) and os.path.exists(p(L.MAP_XDP_MACS)):
            self.xdp_tx = Map.open_pinned(p(L.MAP_XDP_TX), ctypes.c_uint32, ctypes.c_uint32)
            self.xdp_macs = Map.open_pinned(p(L.MAP_XDP_MACS), ctypes.c_uint32, L.Mac)

    def close(self) -> None:
        for m in (self.v4, self.v6, self.devices, self.map_stats, self.dev_stats,
                  self.fast_stats, self.xdp_tx, self.xdp_macs, self.v4_skip):
            if m is not None:
                m.close()

    def __enter__(self) -> Tables:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _xlate(self, version: int) -> Map:
        return self.v4 if version == 4 else self.v6

    # -- devices -----------------------------------------------------------

    def device(self, ifindex: int) -> L.Device | None:
        return self.devices.lookup(ctypes.c_uint32(ifindex))

    def all_devices(self) -> dict[int, L.Device]:
        return {int(k.value): v for k, v in self.devices.items()}

    def set_device(self, ifindex: int, l3_offset: int, mss_v4: int, mss_v6: int,
                   flags: int = 0) -> L.Device:
        """Create or update a device entry, keeping its counter slot and prefix lengths.

        A new entry takes the prefix lengths of entries already written for the
        device (mappings may be installed before their device is).
        """
        dev = self.device(ifindex)
        new = dev is None
        if new:
            dev = L.Device()
            dev.slot = self._free_slot()
            self._reset_dev_stats(dev.slot)
            for (_, version, table), lengths in self._entry_plens(ifindex).items():
                set_plens(dev, version, table, lengths)
            if self.xdp_tx is not None and self.xdp_macs is not None:
                # A slot freed by a killed run may keep its XDP entries: XDP starts off.
                self.xdp_tx.delete(ctypes.c_uint32(dev.slot))
                self.xdp_macs.update(ctypes.c_uint32(dev.slot), L.Mac())
        dev.l3_offset, dev.mss_v4, dev.mss_v6, dev.flags = l3_offset, mss_v4, mss_v6, flags
        self.devices.update(ctypes.c_uint32(ifindex), dev)
        if new:  # the slot's bitmaps may be a former device's
            self._write_skip(ifindex)
        return dev

    def remove_device(self, ifindex: int) -> None:
        """Forget a device and every mapping installed for it (one pass over the maps)."""
        self.clear_mappings(ifindex)
        dev = self.device(ifindex)
        if dev is not None:
            self._write_skip_words(dev.slot, None)  # zero: what a new map holds
        self.clear_xdp(ifindex)
        self.devices.delete(ctypes.c_uint32(ifindex))

    def clear_mappings(self, ifindex: int | None = None) -> int:
        """Delete every entry of a device (None: of every device); entries deleted.

        The devices' bits are cleared first, so no packet probes a vanishing entry.
        """
        for idx in self.all_devices():
            if ifindex is None or idx == ifindex:
                self._write_plens(idx, {})
        n = 0
        for xlate in (self.v4, self.v6):
            for key in xlate.keys():
                if ifindex is None or key.ifindex == ifindex:
                    n += xlate.delete(key)
        for idx in self.all_devices():
            if ifindex is None or idx == ifindex:
                self._write_skip(idx)
        return n

    def _write_skip(self, ifindex: int,
                    entries: Iterable[tuple[int, IPNetwork]] | None = None) -> None:
        """Rewrite a device's long-prefix skip bitmaps from its IPv4 entries.

        Called after entries are written and after they are deleted: until then a
        new long prefix in a skipped bucket is not probed yet (as a new prefix
        length is not before its bit is set), and a bucket just emptied is probed
        for nothing. entries: the device's entries as (table, key prefix), where the
        caller has just written them (set_mappings); else one pass over the IPv4 keys.
        """
        dev = self.device(ifindex)
        if self.v4_skip is None or dev is None:
            return
        long: dict[int, set[int]] = {t: set() for t in range(L.TABLES)}
        if entries is None:
            for key, bucket in self._long_v4_keys(ifindex):
                long[key.table].add(bucket)
        else:
            for table, net in entries:
                if net.version == 4 and net.prefixlen > L.SKIP_PLEN:
                    long[table].add(L.skip_bucket(net.network_address.packed))
        self._write_skip_words(dev.slot, long)

    def _long_v4_keys(self, ifindex: int, keys: Iterable[L.XlateV4Key] | None = None
                      ) -> Iterator[tuple[L.XlateV4Key, int]]:
        """A device's IPv4 keys (of `keys`, else the map's) longer than SKIP_PLEN, each
        with its skip bucket."""
        for key in self.v4.keys() if keys is None else keys:
            if key.ifindex == ifindex and key.prefixlen > L.SKIP_PLEN:
                yield key, L.skip_bucket(bytes(key.addr))

    def _write_skip_words(self, slot: int, long: dict[int, set[int]] | None) -> None:
        """Set a slot's bitmaps: a bucket's bit set unless `long` names it (None: all zero,
        every length probed). Only changed words are written."""
        if self.v4_skip is None:
            return
        for table in range(L.TABLES):
            words = [0 if long is None else (1 << 64) - 1] * L.SKIP_WORDS
            for bucket in long[table] if long is not None else ():
                words[bucket // 64] &= ~(1 << (bucket % 64))
            for word, bits in enumerate(words):
                key = ctypes.c_uint32(L.skip_index(slot, table, word))
                have = self.v4_skip.lookup(key)
                if have is None or int(have.value) != bits:
                    self.v4_skip.update(key, ctypes.c_uint64(bits))

    def skip_words(self, ifindex: int, table: int) -> list[int]:
        """A device's skip bitmap of a table, word by word, as the dataplane reads it."""
        dev = self.device(ifindex)
        if self.v4_skip is None or dev is None:
            return []
        out = []
        for word in range(L.SKIP_WORDS):
            v = self.v4_skip.lookup(ctypes.c_uint32(L.skip_index(dev.slot, table, word)))
            out.append(int(v.value) if v is not None else 0)
        return out

    def hidden_by_skip(self, ifindex: int, entries: Entries | None = None) -> list[IPNetwork]:
        """A device's IPv4 entries its skip bitmaps hide: prefixes longer than
        SKIP_PLEN in a bucket whose bit says it holds none (of `entries`,
        read_entries' answer, if given). A kill between an entry's write and the
        bitmaps' rewrite leaves that; any apply repairs it."""
        dev = self.device(ifindex)
        if self.v4_skip is None or dev is None:
            return []
        keys = (self.v4.keys() if entries is None
                else (key for version, key, _ in entries if version == 4))
        words: dict[int, list[int]] = {}
        out = []
        for key, bucket in self._long_v4_keys(ifindex, keys):
            table = words.setdefault(key.table, self.skip_words(ifindex, key.table))
            if table[bucket // 64] >> (bucket % 64) & 1:
                out.append(_key_net(key))
        return sorted(out, key=str)

    def _entry_plens(self, ifindex: int | None = None) -> PlenSets:
        """Prefix lengths of the entries in the maps (keys only: one pass)."""
        out: PlenSets = {}
        for version in (4, 6):
            for key in self._xlate(version).keys():
                if ifindex is None or key.ifindex == ifindex:
                    out.setdefault((key.ifindex, version, key.table), set()).add(key.prefixlen)
        return out

    def _write_plens(self, ifindex: int, lengths: dict[tuple[int, int], set[int]]) -> None:
        """Set a device's bits to `lengths` ((version, table) -> lengths; absent: none).

        Read-modify-write of the device entry (its other fields are kept); nothing
        is written when the bits are already so, or the device has no entry (it
        takes its bits from the entries when created, see set_device).
        """
        dev = self.device(ifindex)
        if dev is None:
            return
        before = _all_plens(dev)
        for version in (4, 6):
            for table in range(L.TABLES):
                set_plens(dev, version, table, lengths.get((version, table), set()))
        if _all_plens(dev) != before:
            self.devices.update(ctypes.c_uint32(ifindex), dev)

    def _add_plen(self, ifindex: int, version: int, table: int, plen: int,
                  seen: PlenSets | None = None) -> None:
        """Set one bit (after its entry is written); no write when it is already set.

        seen: bits known to be set, shared by the calls of one batch so that most
        entries cost no device read at all.
        """
        if seen is not None and plen in seen.get((ifindex, version, table), ()):
            return
        dev = self.device(ifindex)
        if dev is None:
            return
        have = plens(dev, version, table)
        if plen not in have:
            set_plens(dev, version, table, have | {plen})
            self.devices.update(ctypes.c_uint32(ifindex), dev)
        if seen is not None:
            seen[(ifindex, version, table)] = have | {plen}

    def plens(self, ifindex: int, version: int, table: int) -> set[int]:
        """The prefix lengths the dataplane probes in a device's table."""
        dev = self.device(ifindex)
        return plens(dev, version, table) if dev is not None else set()

    def lookup(self, ifindex: int, table: int,
               address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> L.Xlate | None:
        """The entry the dataplane uses for `address` in a table: the longest prefix
        holding it, probing the lengths the device's bits name, as the programs do."""
        dev = self.device(ifindex)
        if dev is None:
            return None
        xlate = self._xlate(address.version)
        for plen in sorted(plens(dev, address.version, table), reverse=True):
            net = ipaddress.ip_network((address, plen), strict=False)
            value = xlate.lookup(_key(address.version, ifindex, table, net))
            if value is not None:
                return value
        return None

    # -- XDP (fastpath: xdp) -----------------------------------------------

    def _xdp_slot(self, ifindex: int) -> int:
        dev = self.device(ifindex)
        if dev is None:
            raise TableError(f"ifindex {ifindex}: not a natgw device")
        if self.xdp_tx is None or self.xdp_macs is None:
            raise TableError("the loaded dataplane has no XDP maps: run natgw up again")
        return int(dev.slot)

    def set_xdp(self, ifindex: int, mac: bytes, transmit: bool) -> None:
        """The XDP program's view of a device: frames to `mac` are for this host, and
        XDP_REDIRECT may send to it if `transmit`.

        Run it in the device's netns (netns.in_netns): a devmap entry names its
        device by ifindex in the netns of the process writing it.
        """
        slot = self._xdp_slot(ifindex)
        value = L.Mac()
        ctypes.memmove(value.addr, mac, 6)
        self.xdp_macs.update(ctypes.c_uint32(slot), value)
        if transmit:
            self.xdp_tx.update(ctypes.c_uint32(slot), ctypes.c_uint32(ifindex))
        else:
            self.xdp_tx.delete(ctypes.c_uint32(slot))

    def clear_xdp(self, ifindex: int) -> None:
        """The XDP program leaves the device to tc again (a no-op without XDP maps)."""
        dev = self.device(ifindex)
        if dev is None or self.xdp_tx is None or self.xdp_macs is None:
            return
        self.xdp_tx.delete(ctypes.c_uint32(dev.slot))
        self.xdp_macs.update(ctypes.c_uint32(dev.slot), L.Mac())

    def xdp_transmits(self, ifindex: int) -> bool:
        """Whether XDP_REDIRECT may send to the device (it is in xdp_tx)."""
        dev = self.device(ifindex)
        if dev is None or self.xdp_tx is None:
            return False
        return self.xdp_tx.lookup(ctypes.c_uint32(dev.slot)) is not None

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

    def read_entries(self, ifindex: int | None = None) -> Entries:
        """The translation entries (of one device, or all), read once: for callers
        that ask several questions of them (drift's mappings, orphans and hidden
        entries), each of which would otherwise walk both maps again."""
        return [(version, key, value) for version in (4, 6)
                for key, value in self._xlate(version).items()
                if ifindex is None or key.ifindex == ifindex]

    def mappings(self, ifindex: int | None = None,
                 entries: Entries | None = None) -> list[InstalledMapping]:
        """Installed mappings, read back from their egress entries (of `entries`,
        read_entries' answer, if given)."""
        out = []
        for version, key, value in self._entries(ifindex, entries):
            for kind, (tbl, key_is_as) in _EGRESS_TABLE.items():
                if key.table != tbl:
                    continue
                knet, vnet = _key_net(key), _value_net(value, version)
                cidr, as_ = (vnet, knet) if key_is_as else (knet, vnet)
                out.append(InstalledMapping(key.ifindex, Mapping(kind, cidr, as_),
                                            value.mapping_id))
        return sorted(out, key=lambda m: (m.ifindex, m.mapping_id))

    def _entries(self, ifindex: int | None, entries: Entries | None) -> Entries:
        """`entries` (or the maps' own, read now) of one device, or all."""
        if entries is None:
            return self.read_entries(ifindex)
        return [e for e in entries if ifindex is None or e[1].ifindex == ifindex]

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
        out, next_id, seen = [], 0, {}
        for m in new:
            if m in installed:
                out.append(installed[m])
                continue
            entry = self._install(ifindex, m, used, next_id, seen=seen)
            next_id = entry.mapping_id + 1
            out.append(entry)
        self._write_skip(ifindex)
        return out

    def _install(self, ifindex: int, mapping: Mapping, used: set[int] | None = None,
                 start: int = 0, mapping_id: int | None = None,
                 seen: PlenSets | None = None) -> InstalledMapping:
        """Write a mapping's entries: ingress first, then egress, then read both back.

        Ingress first: until the egress entry exists nothing is translated
        outbound, so no reply can come back to a missing ingress entry, and the
        egress entry (which identifies an installed mapping) marks it complete.
        Each entry's prefix length bit is set right after the entry is written.
        """
        if mapping_id is None:
            used = self._used_ids() if used is None else used
            mapping_id = self._free_id(used, start)
            for direction in (L.DIR_EGRESS, L.DIR_INGRESS):
                self.map_stats.update(ctypes.c_uint32(mapping_id * 2 + direction), L.Counter())
        if used is not None:
            used.add(mapping_id)
        version = mapping.cidr.version
        xlate = self._xlate(version)
        for (tbl, key_net), target in reversed(list(zip(_entry_keys(mapping),
                                                        _targets(mapping), strict=True))):
            xlate.update(_key(version, ifindex, tbl, key_net), _value(target, mapping_id))
            self._add_plen(ifindex, version, tbl, key_net.prefixlen, seen)
            if tbl == _INGRESS_TABLE[mapping.kind]:
                faults.step("mapping-ingress-written")
        for (tbl, key_net), target in zip(_entry_keys(mapping), _targets(mapping), strict=True):
            if self._entry_id(ifindex, tbl, key_net, target) != mapping_id:
                raise TableError(f"{mapping}: entry {key_net} did not read back as written")
        return InstalledMapping(ifindex, mapping, mapping_id)

    def _entry_id(self, ifindex: int, tbl: int, key_net: IPNetwork,
                  target: IPNetwork) -> int | None:
        """The mapping id of this exact entry, None if absent or pointing elsewhere."""
        found = self._xlate(key_net.version).lookup(_key(key_net.version, ifindex, tbl,
                                                         key_net))
        if (found is None or found.prefixlen != target.prefixlen
                or _value_net(found, target.version) != target):
            return None
        return int(found.mapping_id)

    def orphans(self, ifindex: int | None = None,
                entries: Entries | None = None) -> list[tuple[int, str, IPNetwork]]:
        """One-way entries: (ifindex, "egress"/"ingress", key prefix) whose twin is missing
        (of `entries`, read_entries' answer, if given).

        A mapping killed half-way through being written or removed leaves one.
        """
        pairs: dict[tuple, set[int]] = {}
        for version, key, value in self._entries(ifindex, entries):
            knet, vnet = _key_net(key), _value_net(value, version)
            for kind, twins in _ENTRIES.items():
                for pos, (tbl, key_is_as) in enumerate(twins):
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
        return self.remove_mappings(ifindex, [mapping]) == [True]

    def remove_mappings(self, ifindex: int, mappings: Iterable[Mapping]) -> list[bool]:
        """Remove mappings from a device; for each, False if it was not installed.

        One pass over the map keys (to know which prefix lengths stay), however many.
        """
        mappings = list(mappings)
        present = [all(self._entry_id(ifindex, tbl, net, target) is not None
                       for (tbl, net), target in zip(_entry_keys(m), _targets(m), strict=True))
                   for m in mappings]
        if any(present):
            counts = self._plen_counts(ifindex)
            for m, here in zip(mappings, present, strict=True):
                if here:
                    self._delete_entries(ifindex, m, None, counts)
            self._write_skip(ifindex)
        return present

    def _plen_counts(self, ifindex: int) -> Tally:
        """(version, table, prefix length) -> entries of a device (keys only: one pass)."""
        return Tally((version, key.table, key.prefixlen)
                     for version in (4, 6) for key in self._xlate(version).keys()
                     if key.ifindex == ifindex)

    def _delete_entries(self, ifindex: int, mapping: Mapping,
                        keys: set[tuple[int, IPNetwork]] | None,
                        counts: Tally | None) -> None:
        """Delete a mapping's entries (only those in `keys` if given): egress, then ingress.

        The reverse of writing: outbound translation stops before inbound does.
        `counts` (see _plen_counts) says when an entry is the last of its prefix
        length: that length's bit is cleared first, and `counts` kept up to
        date. None: the caller has cleared the bits already.
        """
        version = mapping.cidr.version
        xlate = self._xlate(version)
        for tbl, net in _entry_keys(mapping):
            if keys is None or (tbl, net) in keys:
                length = (version, tbl, net.prefixlen)
                if counts is not None and counts[length] <= 1:
                    dev = self.device(ifindex)
                    if dev is not None and net.prefixlen in plens(dev, version, tbl):
                        set_plens(dev, version, tbl, plens(dev, version, tbl) - {net.prefixlen})
                        self.devices.update(ctypes.c_uint32(ifindex), dev)
                if xlate.delete(_key(version, ifindex, tbl, net)) and counts is not None:
                    counts[length] -= 1
                if tbl == _EGRESS_TABLE[mapping.kind][0]:
                    faults.step("mapping-egress-removed")

    def set_mappings(self, ifindex: int, mappings: Iterable[Mapping]) -> None:
        """Make a device's mappings exactly these, touching only the differences.

        Unchanged mappings keep their ids and counters. New entries are added
        before stale ones are removed, so a changed mapping never leaves a gap; an
        entry whose key a new mapping takes over is rewritten in place. A one-way
        entry (its twin lost to a crash or a hand edit) is repaired: completed if
        its mapping is wanted, else removed. One pass over the maps, however many
        mappings. The device's prefix length bits are rewritten from the entries
        once the new ones are written and before stale ones are deleted, which
        also repairs bits a kill left out of step.
        """
        wanted = list(dict.fromkeys(mappings))
        owner = self._owners(wanted)
        # Every entry of the device: (table, key prefix) -> (target, mapping id).
        entries: dict[tuple[int, IPNetwork], tuple[IPNetwork, int]] = {}
        used: set[int] = set()
        for version in (4, 6):
            for key, value in self._xlate(version).items():
                used.add(int(value.mapping_id))
                if key.ifindex == ifindex:
                    entries[(key.table, _key_net(key))] = (_value_net(value, version),
                                                           int(value.mapping_id))
        next_id, seen = 0, {}
        for m in wanted:
            have = [entries.get(k) for k in _entry_keys(m)]
            ids = {h[1] for h, t in zip(have, _targets(m), strict=True) if h and h[0] == t}
            if len(ids) == 1 and all(h and h[0] == t
                                     for h, t in zip(have, _targets(m), strict=True)):
                continue  # installed, both ways
            # Half there (an orphan): complete it under the id it has, keeping its counters.
            keep = ids.pop() if len(ids) == 1 else None
            entry = self._install(ifindex, m, used, next_id, mapping_id=keep, seen=seen)
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
        gone = {k for keys in stale.values() for k in keys}
        kept = [*owner, *(k for k in entries if k not in gone)]  # the device's, once done
        lengths: dict[tuple[int, int], set[int]] = {}
        for tbl, knet in kept:
            lengths.setdefault((knet.version, tbl), set()).add(knet.prefixlen)
        self._write_plens(ifindex, lengths)
        for m, keys in stale.items():
            self._delete_entries(ifindex, m, keys, None)
        self._write_skip(ifindex, kept)

    def counters(self, mapping_id: int) -> dict[str, Counter]:
        """Packets and bytes of a mapping per direction, summed over CPUs."""
        out = {}
        for direction, name in L.DIRECTIONS.items():
            values = self.map_stats.lookup(ctypes.c_uint32(mapping_id * 2 + direction)) or []
            out[name] = Counter(sum(v.packets for v in values), sum(v.bytes for v in values))
        return out
