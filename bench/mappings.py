"""Extra mappings for the mapping-count measure, installed through the library.

`Tables.add_mapping` reads the installed mappings back from the pinned maps (to
find duplicates, conflicts and a free id) before writing, so one call costs
O(installed) map syscalls. The benchmark times single `add_mapping` calls at low
and at full occupancy, and installs the bulk with `Tables.add_mappings`, which
reads the maps once for the whole batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from natgw.dataplane import Dataplane, Mapping


@dataclass
class InstallTimes:
    public_calls: int = 0        # mappings added with Tables.add_mapping
    public_s: float = 0.0
    bulk_calls: int = 0          # mappings added with one Tables.add_mappings call
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
        if bulk:
            t0 = time.monotonic()
            dp.tables.add_mappings(idx, bulk)
            times.bulk_calls, times.bulk_s = len(bulk), time.monotonic() - t0
    if last:
        with Dataplane.open(gateway) as dp:
            t0 = time.monotonic()
            dp.tables.add_mapping(idx, last[0])
            times.last_call_s = time.monotonic() - t0
            times.public_calls += 1
    return times


def clear_mappings(gateway: str) -> int:
    """Delete every translation entry of a gateway in one pass; entries deleted.

    Between measures the benchmark empties the tables in one pass, whatever
    device holds them. Missing pins (gateway already down) are not an error.
    """
    try:
        dp = Dataplane.open(gateway)
    except Exception:  # noqa: BLE001 - not up: nothing to clear
        return 0
    with dp:
        return dp.tables.clear_mappings()
