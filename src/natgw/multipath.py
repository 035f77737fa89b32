"""A replica group's route: each of its ranges routed over the members' devices, weighted.

Linux refuses device-only next hops in an IPv6 RTA_MULTIPATH route ("Device only
routes can not be added for IPv6 using the multipath API"), and a tunnel has no
next-hop address. So natgw uses nexthop objects (Linux 5.3): one per member
device (device-only, AF_INET6, which IPv4 routes may use too), one group object
per replica group with the members' weights, and every range of the group routed
to it (`nhid`), IPv4 and IPv6 alike. Changing members or weights replaces the
group object in one RTM_NEWNEXTHOP: the routes point at it all along, so no
packet meets a missing route. The kernel itself drops a member's nexthop (from
the group, at once) when its device goes down or away; natgw's health check
(natgw.health) puts it back when it recovers.

Every object carries proto 78 like natgw's routes. Ids are derived from the
gateway and group or device names, so the record (natgw.state: group name, its
ranges and member devices) names every object natgw may have made; an object
with such an id and another proto is refused, never replaced or deleted.

pyroute2 (0.9) has no nexthop objects: iproute2 makes them, one `ip -batch` for
the member nexthops (AF_INET6: `-6`) and one for the group and its routes (a
group object must be AF_UNSPEC). Only a change costs these two runs; reading
for drift goes through pyroute2's route dump (natgw.drift).
"""

from __future__ import annotations

import hashlib
import json
import subprocess

from natgw import ipbatch
from natgw.routes import RTPROT_NATGW, RouteError

# Hop: (member device, weight 1..256).
Hop = tuple[str, int]


def _object_id(text: str) -> int:
    # 1..2^31-1: 0 is "no id" to the kernel; below 2^31 stays clear of sign confusions.
    return 1 + int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % (2**31 - 1)


def group_id(gateway: str, group: str) -> int:
    return _object_id(f"natgw/{gateway}/group/{group}")


def hop_id(gateway: str, device: str) -> int:
    return _object_id(f"natgw/{gateway}/hop/{device}")


def _nexthops(netns: str | None) -> dict[int, dict]:
    """Every nexthop object in the netns, by id (`ip -j nexthop show`)."""
    try:
        done = subprocess.run(ipbatch.ip_argv(netns, "-j", "nexthop", "show"),
                              capture_output=True, text=True, timeout=ipbatch.TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RouteError(f"ip nexthop show: {e}") from None
    if done.returncode != 0:
        raise RouteError(f"ip nexthop show: {done.stderr.strip() or 'failed'}")
    return {int(nh["id"]): nh for nh in json.loads(done.stdout or "[]")}


def _ours(nh: dict) -> bool:
    return str(nh.get("protocol", "")) == str(RTPROT_NATGW)


def _refuse_foreign(have: dict[int, dict], ids: list[int]) -> None:
    for i in ids:
        if i in have and not _ours(have[i]):
            raise RouteError(f"nexthop id {i} exists (proto {have[i].get('protocol', 0)}) "
                             "and natgw did not create it")


def set_group(netns: str | None, gateway: str, group: str, networks: list[str],
              hops: list[Hop], stale_networks: list[str] = (),
              stale_devices: list[str] = (), trusted: bool = False) -> None:
    """Route `networks` over `hops` (at least one); drop the group's stale ranges and
    members. Idempotent: run again, it replaces everything with the same.

    trusted: the group was applied and every object of it is natgw's (a health
    change): the foreign checks, three `ip` runs, are skipped to act sooner.
    """
    if not hops:
        raise RouteError(f"group {group}: no member to route over")
    gid = group_id(gateway, group)
    wanted = {dev: hop_id(gateway, dev) for dev, _ in hops}
    gone = [hop_id(gateway, d) for d in stale_devices if d not in wanted]
    if trusted:
        have = dict.fromkeys(gone, {})
    else:
        have = _nexthops(netns)
        _refuse_foreign(have, [gid, *wanted.values(), *gone])
        ipbatch.refuse_foreign_routes(netns, list(networks))
    ipbatch.run_batch(netns, [f"nexthop replace id {wanted[dev]} dev {dev} proto {RTPROT_NATGW}"
                              for dev, _ in hops], family="-6")
    members = "/".join(f"{wanted[dev]},{weight}" for dev, weight in hops)
    ipbatch.run_batch(netns, [f"nexthop replace id {gid} group {members} proto {RTPROT_NATGW}"]
                      + [f"route replace {net} nhid {gid} proto {RTPROT_NATGW}"
                         for net in networks])
    # After the group no longer holds them: deleting a member nexthop takes it out
    # of its group, and the last one would take the group and its routes with it.
    ipbatch.run_batch(netns, [f"route del {net} proto {RTPROT_NATGW}" for net in stale_networks
                              if net not in networks]
                      + [f"nexthop del id {i}" for i in gone if i in have], force=True)


def remove_group(netns: str | None, gateway: str, group: str, networks: list[str],
                 devices: list[str], keep: list[str] = ()) -> None:
    """Remove a group's routes (but those in `keep`: now routed otherwise), its group
    object and its members' nexthops; what is already gone is fine."""
    have = _nexthops(netns)
    ids = [group_id(gateway, group), *(hop_id(gateway, d) for d in devices)]
    ipbatch.run_batch(netns, [f"route del {net} proto {RTPROT_NATGW}" for net in networks
                              if net not in keep]
                      + [f"nexthop del id {i}" for i in ids if i in have and _ours(have[i])],
                      force=True)


def route_hops(route) -> frozenset[tuple[int, int | None]]:
    """A dumped route's next hops as (ifindex, weight); weight None for a single one
    (a group left with one member routes like a plain route: its weight means nothing)."""
    multipath = route.get_attr("RTA_MULTIPATH")
    if multipath and len(multipath) > 1:
        return frozenset((nh["oif"], nh["hops"] + 1) for nh in multipath)
    if multipath:  # IPv6 dumps a group of one as a multipath of one
        return frozenset({(multipath[0]["oif"], None)})
    oif = route.get_attr("RTA_OIF")
    return frozenset() if oif is None else frozenset({(oif, None)})


def wanted_hops(ifindex: dict[str, int], hops: list[Hop]) -> frozenset[tuple[int, int | None]]:
    """What route_hops reads back once `hops` are installed (devices by ifindex)."""
    if len(hops) == 1:
        return frozenset({(ifindex.get(hops[0][0], 0), None)})
    return frozenset((ifindex.get(dev, 0), weight) for dev, weight in hops)
