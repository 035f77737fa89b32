"""A running gateway's translation tables, counters and drops, as plain data.

The library behind `natgw maps`, `natgw lookup` and the metrics collector
(named introspect, not inspect: that is a standard library module).
Everything is read from the pinned maps (no compiler, no programs loaded),
so it answers in milliseconds and never changes the dataplane.

JSON (`natgw maps --json`, from `to_json`): a list, one object per gateway,
sorted by name; keys are stable, counters are exact integers:

    [{"gateway": "gw1",
      "netns": "gw1",               # from the state file; null: unknown or own netns
      "dataplane_build": "1a2b3c4d5e6f",   # null when no program is pinned
      "devices": [{
        "ifindex": 5,
        "ifname": "c2",             # null when the name cannot be looked up
        "peer": "cluster2",         # from the state file; null when unknown
        "mappings": [{
          "id": 0, "kind": "remote", "cidr": "10.244.0.0/16", "as": "10.245.0.0/16",
          "label": "remote:10.245.0.0/16",   # the metrics' mapping label
          "egress":  {"side": "dst", "match": "10.245.0.0/16",
                      "rewrite": "10.244.0.0/16", "packets": 3, "bytes": 252},
          "ingress": {"side": "src", "match": "10.244.0.0/16",
                      "rewrite": "10.245.0.0/16", "packets": 0, "bytes": 0}}],
        "drops":  {"truncated": 0, "icmp_inner": 0, "ipv6_exthdr": 0, "rewrite_failed": 0,
                   "ipv6_routing": 0},
        "events": {"unmatched": 0, "unparsed": 0, "mss_clamped": 0},
        "lan": false,               # a LAN-side device of the fast path (no mappings)
        "fastpath": {"redirect_l3": 0, "redirect_eth": 0, ...}}]}]
                                    # decisions of its fast-path program by name
                                    # (layout.FAST_NAMES); {} when it runs none

"match" is the prefix a packet's address must fall in on that side
("src"/"dst"), "rewrite" the prefix it becomes (host bits kept). Packets and
bytes count packets translated by the mapping in that direction; bytes are
IP bytes, header included. Devices are sorted by ifindex, mappings by id.

JSON of `natgw lookup ADDRESS --json` (from `translation_json`): a list, empty
when nothing translates the address; one object per (device, direction, side)
that does, with the keys of `Translation`:

    [{"gateway": "gw1", "ifindex": 5, "ifname": "c2", "peer": "cluster2",
      "direction": "egress", "side": "dst", "kind": "remote",
      "address": "10.245.3.4", "translated": "10.244.3.4",
      "match": "10.245.0.0/16", "rewrite": "10.244.0.0/16",
      "mapping": {"id": 0, "cidr": "10.244.0.0/16", "as": "10.245.0.0/16"}}]
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from natgw.dataplane import layout as L
from natgw.dataplane.bpfsys import BpfError
from natgw.dataplane.loader import PIN_ROOT, DataplaneError, pin_dir
from natgw.dataplane.tables import KIND_RULES, TABLE_KIND, IPNetwork, TableError, Tables
from natgw.netmap import netmap
from natgw.netns import link_names
from natgw.state import GatewayState, load_state

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SIDES = {L.SIDE_DST: "dst", L.SIDE_SRC: "src"}
_DIRECTION = {name: d for d, name in L.DIRECTIONS.items()}


class InspectError(Exception):
    """A gateway cannot be read; one-line message."""


class GatewayGone(InspectError):
    """The gateway is not loaded, or was torn down while being read."""


@dataclass(frozen=True)
class Rule:
    """What one mapping does in one direction, and how often it did it."""

    side: str  # "src" or "dst"
    match: IPNetwork
    rewrite: IPNetwork
    packets: int
    bytes: int


@dataclass(frozen=True)
class MappingReport:
    mapping_id: int
    kind: str  # "remote" or "local"
    cidr: IPNetwork
    as_: IPNetwork
    egress: Rule
    ingress: Rule
    peer: str | None = None  # a hub client's mapping: the client (the device is shared)

    @property
    def label(self) -> str:
        """Short, stable name: the "as" prefix is unique per device and kind."""
        return f"{self.kind}:{self.as_}"

    def rule(self, direction: str) -> Rule:
        return self.egress if direction == "egress" else self.ingress


@dataclass(frozen=True)
class DeviceReport:
    ifindex: int
    ifname: str | None
    peer: str | None
    mappings: tuple[MappingReport, ...]
    stats: dict[str, int]  # layout.DEV_STAT_NAMES -> count
    lan: bool = False  # a LAN-side device of the fast path
    # layout.FAST_NAMES -> count; empty when the device has no fast-path program
    fastpath: dict[str, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The peer name if known, else the interface name, else "ifindex:N"."""
        return self.peer or self.ifname or f"ifindex:{self.ifindex}"

    @property
    def drops(self) -> dict[str, int]:
        return {n: self.stats.get(n, 0) for n in L.DROP_REASONS.values()}

    @property
    def events(self) -> dict[str, int]:
        drops = set(L.DROP_REASONS.values())
        return {n: c for n, c in self.stats.items() if n not in drops}


@dataclass(frozen=True)
class GatewayReport:
    gateway: str
    netns: str | None
    build: str | None
    devices: tuple[DeviceReport, ...]


# -- which gateways ------------------------------------------------------------


def _state(gateway: str) -> GatewayState | None:
    # Peer names are labels: an unreadable state file means unlabelled, not a failure.
    try:
        return load_state(gateway)
    except (OSError, ValueError, TypeError):
        return None


def gateway_names(root: str = PIN_ROOT, netns: str | None = None) -> list[str]:
    """Gateways pinned under root; with netns, only those whose state says that netns."""
    try:
        names = sorted(e.name for e in os.scandir(root) if e.is_dir())
    except FileNotFoundError:
        return []
    if netns is None:
        return names
    out = []
    for name in names:
        state = _state(name)
        if state is not None and state.netns == netns:
            out.append(name)
    return out


def pinned_build(gateway: str, root: str = PIN_ROOT) -> str | None:
    """Build hash of the pinned programs (prog_egress_<build>), None if none is pinned."""
    prefix = "prog_egress_"
    try:
        builds = sorted(n[len(prefix):] for n in os.listdir(pin_dir(gateway, root))
                        if n.startswith(prefix))
    except FileNotFoundError:
        return None
    return builds[-1] if builds else None


def open_tables(gateway: str, root: str = PIN_ROOT) -> Tables:
    """The pinned maps of a gateway; InspectError when it is not loaded or unreadable."""
    try:
        pdir = pin_dir(gateway, root)
    except DataplaneError as e:
        raise InspectError(str(e)) from None
    # All pins present: a gateway being set up or torn down counts as not loaded.
    # (fast_stats is missing on a gateway an older natgw loaded: Tables does without.)
    if not all(os.path.exists(os.path.join(pdir, m)) for m in L.MAP_NAMES
               if m != L.MAP_FAST_STATS):
        raise GatewayGone(f"gateway {gateway}: not loaded (no maps in {pdir})")
    try:
        return Tables(pdir)
    except BpfError as e:
        raise _read_error(gateway, e) from None


def _read_error(gateway: str, exc: OSError) -> InspectError:
    if exc.errno == errno.ENOENT:
        return GatewayGone(f"gateway {gateway}: torn down while reading")
    return InspectError(f"gateway {gateway}: {exc}")


# -- reading -------------------------------------------------------------------


def interface_names(netns: str | None) -> dict[int, str]:
    """ifindex -> name in a netns; empty when it cannot be read (names are a nicety)."""
    try:
        return link_names(netns)
    except (OSError, ValueError, LookupError):
        return {}


def _rule(kind: str, direction: str, cidr: IPNetwork, as_: IPNetwork, packets: int,
          nbytes: int) -> Rule:
    side, carries_as = KIND_RULES[(kind, _DIRECTION[direction])]
    match, rewrite = (as_, cidr) if carries_as else (cidr, as_)
    return Rule(SIDES[side], match, rewrite, packets, nbytes)


def read_tables(gateway: str, tables: Tables, state: GatewayState | None,
                names: dict[int, str], build: str | None = None) -> GatewayReport:
    """Everything `natgw maps` shows, from already opened tables."""
    by_dev: dict[int, list[MappingReport]] = {}
    hub = state.hub if state else None
    owners = {label: c.name for c in hub.clients for label in c.mappings} if hub else {}
    for entry in tables.mappings():
        m = entry.mapping
        c = tables.counters(entry.mapping_id)
        on_hub = hub is not None and entry.ifindex == hub.device.ifindex
        by_dev.setdefault(entry.ifindex, []).append(MappingReport(
            entry.mapping_id, m.kind, m.cidr, m.as_,
            _rule(m.kind, "egress", m.cidr, m.as_, c["egress"].packets, c["egress"].bytes),
            _rule(m.kind, "ingress", m.cidr, m.as_, c["ingress"].packets, c["ingress"].bytes),
            owners.get(f"{m.kind}:{m.as_}") if on_hub else None,
        ))
    devices = []
    for ifindex, dev in sorted(tables.all_devices().items()):
        peer = state.peer_by_ifindex(ifindex) if state else None
        try:
            stats = tables.device_stats(ifindex)
            fast = tables.fast_stats_of(ifindex)
        except TableError:
            continue  # removed between the reads
        lan = bool(dev.flags & L.DEV_F_LAN)
        if not lan and not any(fast.values()):
            fast = {}  # fastpath off, or nothing forwarded yet: no section to show
        devices.append(DeviceReport(ifindex, names.get(ifindex), peer.name if peer else None,
                                    tuple(by_dev.get(ifindex, [])), stats, lan, fast))
    return GatewayReport(gateway, state.netns if state else None, build, tuple(devices))


def read_gateway(gateway: str, root: str = PIN_ROOT, netns: str | None = None,
                 with_names: bool = True) -> GatewayReport:
    """Read one gateway. netns: where its devices live when no state file says so."""
    state = _state(gateway)
    where = state.netns if state else netns
    with open_tables(gateway, root) as tables:
        try:
            return read_tables(gateway, tables, state,
                               interface_names(where) if with_names else {},
                               pinned_build(gateway, root))
        except OSError as e:
            raise _read_error(gateway, e) from None


def read_gateways(names: Iterable[str], root: str = PIN_ROOT, netns: str | None = None,
                  with_names: bool = True,
                  on_error: Callable[[str, str], None] | None = None) -> list[GatewayReport]:
    """Read several gateways, skipping any torn down meanwhile.

    Other failures go to on_error(gateway, one-line message) and the gateway
    is skipped; without on_error they raise InspectError.
    """
    out = []
    for name in names:
        try:
            out.append(read_gateway(name, root, netns, with_names))
        except GatewayGone:
            continue
        except InspectError as e:
            if on_error is None:
                raise
            on_error(name, str(e))
    return out


# -- JSON ----------------------------------------------------------------------


def _rule_json(rule: Rule) -> dict[str, Any]:
    return {"side": rule.side, "match": str(rule.match), "rewrite": str(rule.rewrite),
            "packets": rule.packets, "bytes": rule.bytes}


def to_json(reports: Iterable[GatewayReport]) -> list[dict[str, Any]]:
    """The `natgw maps --json` document (shape in the module docstring)."""
    return [{
        "gateway": g.gateway,
        "netns": g.netns,
        "dataplane_build": g.build,
        "devices": [{
            "ifindex": d.ifindex,
            "ifname": d.ifname,
            "peer": d.peer,
            "mappings": [{
                "id": m.mapping_id, "kind": m.kind, "cidr": str(m.cidr), "as": str(m.as_),
                "label": m.label,
                "egress": _rule_json(m.egress), "ingress": _rule_json(m.ingress),
            } for m in d.mappings],
            "drops": d.drops,
            "events": d.events,
            "lan": d.lan,
            "fastpath": d.fastpath,
        } for d in g.devices],
    } for g in reports]


# -- rates (for --watch) -------------------------------------------------------

# (gateway, ifindex, mapping label, direction): identifies a counter across
# reads even if a mapping was removed and its id reused by another.
RateKey = tuple[str, int, str, str]


@dataclass(frozen=True)
class Rate:
    packets_per_second: float
    bytes_per_second: float


def counter_sample(reports: Iterable[GatewayReport]) -> dict[RateKey, tuple[int, int]]:
    """(packets, bytes) of every mapping and direction, keyed for `rates`."""
    return {
        (g.gateway, d.ifindex, m.label, direction): (m.rule(direction).packets,
                                                      m.rule(direction).bytes)
        for g in reports for d in g.devices for m in d.mappings
        for direction in ("egress", "ingress")
    }


def rates(before: dict[RateKey, tuple[int, int]], after: dict[RateKey, tuple[int, int]],
          seconds: float) -> dict[RateKey, Rate | None]:
    """Per-second rates between two samples; None for counters new in `after`.

    A counter lower than before was reset (the mapping was reinstalled and
    counts from zero), so all of its current value is new.
    """
    out: dict[RateKey, Rate | None] = {}
    for key, (packets, nbytes) in after.items():
        prev = before.get(key)
        if prev is None or seconds <= 0:
            out[key] = None
            continue
        dp = packets - prev[0] if packets >= prev[0] else packets
        db = nbytes - prev[1] if nbytes >= prev[1] else nbytes
        out[key] = Rate(dp / seconds, db / seconds)
    return out


def watch(read: Callable[[], list[GatewayReport]],
          show: Callable[[list[GatewayReport], dict[RateKey, Rate | None]], None],
          interval: float, count: int | None = None,
          sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], float] = time.monotonic) -> int:
    """Read, compute rates since the previous read, show; every `interval` seconds.

    Runs until interrupted, or `count` times. The first frame has no rates
    (None). Returns the number of frames shown.
    """
    shown = 0
    prev: dict[RateKey, tuple[int, int]] = {}
    prev_t: float | None = None
    while count is None or shown < count:
        if shown:
            sleep(interval)
        reports = read()
        now = clock()
        sample = counter_sample(reports)
        show(reports, rates(prev, sample, now - prev_t if prev_t is not None else 0.0))
        prev, prev_t = sample, now
        shown += 1
    return shown


# -- lookup --------------------------------------------------------------------


@dataclass(frozen=True)
class Translation:
    """How one device rewrites an address in one direction, on one side."""

    gateway: str
    ifindex: int
    ifname: str | None
    peer: str | None
    direction: str
    side: str
    kind: str
    address: IPAddress
    translated: IPAddress
    match: IPNetwork  # the installed prefix that matched (longest)
    rewrite: IPNetwork
    mapping_id: int
    cidr: IPNetwork | None  # the mapping, None if it vanished between reads
    as_: IPNetwork | None


def _full_key(address: IPAddress, ifindex: int, table: int) -> ctypes.Structure:
    # The dataplane's own lookup: a key as long as the address, so the trie
    # returns the longest installed prefix containing it.
    key = (L.LpmV4Key if address.version == 4 else L.LpmV6Key)()
    key.prefixlen = L.KEY_FIXED_BITS + address.max_prefixlen
    key.ifindex = ifindex
    key.table = table
    packed = address.packed
    ctypes.memmove(key.addr, packed, len(packed))
    return key


def lookup_tables(gateway: str, tables: Tables, address: IPAddress,
                  state: GatewayState | None, names: dict[int, str]) -> list[Translation]:
    """Every translation of `address` by one gateway, by real LPM lookups."""
    lpm = tables.v4 if address.version == 4 else tables.v6
    width = 4 if address.version == 4 else 16
    mappings = {e.mapping_id: e.mapping for e in tables.mappings()}
    out = []
    for ifindex in sorted(tables.all_devices()):
        peer = state.peer_by_ifindex(ifindex) if state else None
        for direction in (L.DIR_EGRESS, L.DIR_INGRESS):
            # Destination first: it is what a user usually asks about.
            for side in (L.SIDE_DST, L.SIDE_SRC):
                value = lpm.lookup(_full_key(address, ifindex, L.table(direction, side)))
                if value is None:
                    continue
                rewrite = ipaddress.ip_network((bytes(value.addr)[:width], value.prefixlen))
                match = ipaddress.ip_network((address, value.prefixlen), strict=False)
                m = mappings.get(value.mapping_id)
                out.append(Translation(
                    gateway, ifindex, names.get(ifindex), peer.name if peer else None,
                    L.DIRECTIONS[direction], SIDES[side], TABLE_KIND[(direction, side)],
                    address, netmap(address, rewrite), match, rewrite, value.mapping_id,
                    m.cidr if m else None, m.as_ if m else None,
                ))
    return out


def lookup(address: IPAddress | str, gateways: Iterable[str] | None = None,
           root: str = PIN_ROOT, netns: str | None = None,
           with_names: bool = True) -> list[Translation]:
    """How the dataplane translates `address`: every gateway, device, direction, side.

    gateways None: every gateway under root (only those in `netns` if given,
    as `gateway_names`). Empty list: the address is not translated.
    """
    addr = ipaddress.ip_address(address) if isinstance(address, str) else address
    names_list = gateway_names(root, netns) if gateways is None else list(gateways)
    out = []
    for gateway in names_list:
        state = _state(gateway)
        try:
            tables = open_tables(gateway, root)
        except GatewayGone:
            if gateways is None:
                continue
            raise
        with tables:
            where = state.netns if state else netns
            try:
                out.extend(lookup_tables(gateway, tables, addr, state,
                                         interface_names(where) if with_names else {}))
            except OSError as e:
                err = _read_error(gateway, e)
                if gateways is None and isinstance(err, GatewayGone):
                    continue
                raise err from None
    return out


def translation_json(items: Iterable[Translation]) -> list[dict[str, Any]]:
    """The `natgw lookup --json` document (shape in the module docstring)."""
    return [{
        "gateway": t.gateway, "ifindex": t.ifindex, "ifname": t.ifname, "peer": t.peer,
        "direction": t.direction, "side": t.side, "kind": t.kind,
        "address": str(t.address), "translated": str(t.translated),
        "match": str(t.match), "rewrite": str(t.rewrite),
        "mapping": {"id": t.mapping_id,
                    "cidr": str(t.cidr) if t.cidr else None,
                    "as": str(t.as_) if t.as_ else None},
    } for t in items]
