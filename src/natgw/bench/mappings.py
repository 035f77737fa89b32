"""Extra mappings for the mapping-count measure, installed through the library.

`Tables.add_mapping` reads every installed mapping back from the pinned maps
(to find duplicates, conflicts and a free id) before writing, so each call costs
O(installed) map syscalls and installing 10,000 one by one is quadratic: about
15 minutes per gateway on the benchmark VM (see BENCHMARKS.md). The benchmark
therefore times `add_mapping` as the public API is, then fills the bulk with
`_BulkTables`, which runs the very same `_install` (identical map entries) but
keeps the set of used ids in memory instead of rescanning the maps per mapping.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from natgw.dataplane import Dataplane, Mapping, Tables


class _BulkTables(Tables):
    """Tables whose id allocation remembers what it handed out (one scan, not n)."""

    def __init__(self, pin_dir: str) -> None:
        super().__init__(pin_dir)
        self._ids: set[int] = super()._used_ids()
        self._next = 0

    def _used_ids(self) -> set[int]:
        return self._ids

    def _free_id(self, used: set[int]) -> int:
        while self._next in used:
            self._next += 1
        used.add(self._next)
        return self._next


@dataclass
class InstallTimes:
    public_calls: int = 0        # mappings added with Tables.add_mapping
    public_s: float = 0.0
    bulk_calls: int = 0          # mappings added with _BulkTables._install
    bulk_s: float = 0.0
    last_call_s: float = 0.0     # the final add_mapping, with all the others installed

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def install(gateway: str, netns: str, device: str, pairs: list[tuple[str, str]],
            public_first: int = 100) -> InstallTimes:
    """Add remote mappings (cidr, as) to a running gateway's device.

    The first `public_first` and the last one go through `Tables.add_mapping`
    (timed: the API's cost at low and at full occupancy), the rest in bulk.
    """
    times = InstallTimes()
    maps = [Mapping.parse("remote", c, a) for c, a in pairs]
    head, bulk, last = maps[:public_first], maps[public_first:-1], maps[-1:]
    if len(maps) <= public_first:
        head, bulk, last = maps, [], []
    with Dataplane.open(gateway) as dp:
        idx = dp.ifindex(device, netns)
        t0 = time.monotonic()
        for m in head:
            dp.tables.add_mapping(idx, m)
        times.public_calls, times.public_s = len(head), time.monotonic() - t0
        pin_dir = dp.pin_dir
    if bulk:
        tables = _BulkTables(pin_dir)
        try:
            t0 = time.monotonic()
            for m in bulk:
                tables._install(idx, m)
            times.bulk_calls, times.bulk_s = len(bulk), time.monotonic() - t0
        finally:
            tables.close()
    if last:
        with Dataplane.open(gateway) as dp:
            t0 = time.monotonic()
            dp.tables.add_mapping(idx, last[0])
            times.last_call_s = time.monotonic() - t0
            times.public_calls += 1
    return times


def clear_mappings(gateway: str) -> int:
    """Delete every translation entry of a gateway in one pass; entries deleted.

    `natgw down` removes mappings one by one, each removal rescanning the maps
    (quadratic: minutes with 10,000 mappings), so the benchmark empties the
    tables first. Missing pins (gateway already down) are not an error.
    """
    try:
        dp = Dataplane.open(gateway)
    except Exception:  # noqa: BLE001 - not up: nothing to clear
        return 0
    n = 0
    with dp:
        for lpm in (dp.tables.v4, dp.tables.v6):
            for key in [k for k, _ in lpm.items()]:
                lpm.delete(key)
                n += 1
    return n
