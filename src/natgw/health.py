"""Replica group health: which members a group's route goes over, judged every tick.

Only the foreground `natgw up` judges (natgw.cli.gateway, at each engine tick);
with `--detach` a group's route is static, with every member in.

A member is out of its group's route when its device is gone or down (not up,
or without carrier), or when nothing has been received from it for its
`staleAfter` (natgw.config.Peer.stale_seconds). Received means its WireGuard
receive counter grew: keepalives count, and a handshake would not do, since a
live tunnel handshakes only every two minutes. A member without keepalives is
judged by its device alone. A member comes back as soon as it recovers: its
device up and, with keepalives, something received again.

WireGuard postpones its keepalives while it receives: a live replica that only
receives from us would send nothing. So a member silent for one keepalive
interval is probed (natgw.probe: an echo its kernel answers through the
tunnel), at most once per interval: a live member is then heard at least every
interval plus a tick and a round trip, whatever the traffic's direction, and
silence for `staleAfter` means dead.

When every member of a group is out, every member whose device is up is kept
in the route (Envoy's panic mode, and what an ECMP router does with a route
whose health checks all fail but whose links are up): silence on every tunnel
at once says more about the checker or a shared path than about each replica,
and removing the route would send the remote cluster's ranges wherever the
rest of the routing table points (a default route: out untranslated). It lasts
only while every member is out: as soon as one is heard again, the silent ones
leave the route again.

Cheap by design: per tick one netlink link dump (one socket kept open for the
life of the foreground) and one engine status read per member device; per
silent member at most one probe per keepalive interval.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv6Address
from typing import TYPE_CHECKING, Any

from natgw.netns import NetnsNotFound, iproute
from natgw.probe import Prober

if TYPE_CHECKING:
    from natgw.config import GatewayConfig

log = logging.getLogger(__name__)

# Seconds a member's engine may take to answer a tick's status read: a stalled one
# (natgw.health_ticker) must not hold up the judgement of the others.
READ_TIMEOUT = 0.25

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000

GONE = "device gone"
DOWN = "device down"
RECEIVING = "receiving"
DEVICE_ONLY = "device up (no keepalive: judged by its device alone)"
STARTING = "in until judged"


def silent(seconds: float) -> str:
    return f"nothing received for {seconds:g} s"


def kept(why: str) -> str:
    return f"kept: every member is out ({why})"


@dataclass
class Member:
    """One member as the checker knows it: what it last saw and what it decided."""

    peer: str
    group: str
    device: str
    weight: int
    stale_after: float | None  # None: judged by its device alone
    in_route: bool = True
    why: str = STARTING
    rx: int | None = None  # the receive counter last read (None: never read)
    heard: float = 0.0  # monotonic time the counter last grew (or the watch began)
    probe_every: float | None = None  # its keepalive interval (None: not probed)
    target: IPv6Address | None = None  # its tunnel address, which answers probes
    probed: float = float("-inf")  # monotonic time of the last probe sent
    up: bool = False  # its device was up at the last tick
    ifindex: int = 0  # its device's, at the last read (0: gone)


@dataclass(frozen=True)
class Sample:
    """One tick's reading of a member: link None when up, else GONE or DOWN; rx None
    when the engine could not be read."""

    link: str | None
    rx: int | None = None


def judge(m: Member, s: Sample, now: float) -> tuple[bool, str]:
    """Whether the member is healthy, and why; updates what it last heard."""
    if s.rx is not None:
        if m.rx is not None and s.rx > m.rx:
            m.heard = now
        # A smaller counter is a restarted engine: a new baseline, nothing received yet.
        m.rx = s.rx
    if s.link is not None:
        return False, s.link
    if m.stale_after is None:
        return True, DEVICE_ONLY
    if now - m.heard >= m.stale_after:
        return False, silent(m.stale_after)
    return True, RECEIVING


@dataclass
class Health:
    """Every group member of a gateway, with its last verdict."""

    members: list[Member] = field(default_factory=list)
    _ipr: Any = field(default=None, repr=False)
    _prober: Prober | None = field(default=None, repr=False)
    _source: IPv6Address | None = None  # our tunnel address: where probes come from
    _probe_errors: dict[str, str] = field(default_factory=dict, repr=False)  # by peer

    @classmethod
    def of(cls, cfg: GatewayConfig, now: float, before: Health | None = None) -> Health:
        """Members of cfg's groups; what `before` knew of a member with the same device
        is kept (a reload must not reset who is out)."""
        from natgw.tunnel_address import tunnel_address  # noqa: PLC0415

        known = {(m.peer, m.device): m for m in before.members} if before else {}
        out = []
        for group, peers in cfg.groups.items():
            for p in peers:
                ka = float(p.persistent_keepalive) if p.persistent_keepalive else None
                fresh = Member(p.name, group, p.device, p.route_weight, p.stale_seconds,
                               heard=now, probe_every=ka, target=tunnel_address(p.public_key))
                old = known.get((p.name, p.device))
                out.append(fresh if old is None else replace(
                    old, group=group, weight=fresh.weight, stale_after=fresh.stale_after,
                    probe_every=fresh.probe_every, target=fresh.target))
        h = cls(out, _source=tunnel_address(cfg.public_key))
        if before is not None:
            h._ipr, before._ipr = before._ipr, None  # the open sockets go along
            if before._source == h._source:
                h._prober, before._prober = before._prober, None
        return h

    def hops(self, group: str) -> list[tuple[str, int]]:
        """(device, weight) of the members in the group's route."""
        return [(m.device, m.weight) for m in self.members if m.group == group and m.in_route]

    def member(self, peer: str) -> Member | None:
        return next((m for m in self.members if m.peer == peer), None)

    def observe(self, samples: dict[str, Sample], now: float
                ) -> tuple[list[str], set[str], set[str]]:
        """Judge every member from this tick's samples (by peer). Returns one log line
        per member that went in or out, the groups whose route changes, and those
        where only a reason changed (e.g. kept -> receiving: to record, not to route)."""
        lines, changed, retold = [], set(), set()
        groups: dict[str, list[Member]] = {}
        for m in self.members:
            groups.setdefault(m.group, []).append(m)
        for group, members in groups.items():
            verdicts = {m.peer: judge(m, samples.get(m.peer, Sample(GONE)), now)
                        for m in members}
            healthy = any(ok for ok, _ in verdicts.values())
            moved = []
            for m in members:
                ok, why = verdicts[m.peer]
                link_up = samples.get(m.peer, Sample(GONE)).link is None
                inside = ok or (not healthy and link_up)
                why = why if ok or not inside else kept(why)
                m.up = link_up
                if inside != m.in_route:
                    moved.append(m)
                elif why != m.why:
                    retold.add(group)
                m.in_route, m.why = inside, why
            if moved:
                changed.add(group)
                over = ", ".join(m.peer for m in members if m.in_route) or "no member"
                lines += [f"group {group}: {m.peer} {'back in' if m.in_route else 'out of'} "
                          f"the route ({m.why}); route over {over}" for m in moved]
                if not healthy:  # each member's own reason, which the lines above hide
                    lines.append(f"group {group}: every member is out (" + "; ".join(
                        f"{m.peer}: {verdicts[m.peer][1]}" for m in members) + ")")
        return lines, changed, retold - changed

    def due(self, now: float) -> list[Member]:
        """The members to probe now: device up, silent for a keepalive interval, and not
        probed within one."""
        return [m for m in self.members if m.probe_every is not None and m.up
                and now - m.heard >= m.probe_every and now - m.probed >= m.probe_every]

    def probe(self, netns: str | None, now: float) -> list[str]:
        """Probe the members due (natgw.probe). Returns one line per member whose probes
        started failing (or failing otherwise), once."""
        if self._source is None:
            return []
        if self._prober is None:
            self._prober = Prober(netns, self._source)
        self._prober.keep_only({m.device for m in self.members})
        lines = []
        for m in self.due(now):
            m.probed = now
            error = self._prober.send(m.device, m.ifindex, m.target) if m.ifindex \
                and m.target is not None else ""
            if error and error != self._probe_errors.get(m.peer):
                lines.append(f"group {m.group}: {m.peer}: {error}")
            self._probe_errors[m.peer] = error
        return lines

    def read(self, netns: str | None, status: Callable[[str], Any]) -> dict[str, Sample]:
        """This tick's samples: one link dump, and status(device) (an engine's status)
        of each member whose device is up."""
        links = self._links(netns)
        out = {}
        for m in self.members:
            flags, m.ifindex = links.get(m.device, (None, 0))
            if flags is None:
                out[m.peer] = Sample(GONE)
                continue
            if not (flags & IFF_UP and flags & IFF_LOWER_UP):
                out[m.peer] = Sample(DOWN)
                continue
            try:
                peers = status(m.device).peers
                rx = sum(p.rx_bytes for p in peers)
            except Exception:  # noqa: BLE001 - an engine that does not answer: nothing heard
                rx = None
            out[m.peer] = Sample(None, rx)
        return out

    def _links(self, netns: str | None) -> dict[str, tuple[int, int]]:
        """Device name -> (flags, ifindex), from one dump on the socket kept open."""
        for attempt in (1, 2):
            try:
                if self._ipr is None:
                    self._ipr = iproute(netns)
                return {link.get_attr("IFLA_IFNAME"): (link["flags"], link["index"])
                        for link in self._ipr.get_links()}
            except NetnsNotFound:
                return {}
            except Exception:  # noqa: BLE001 - a broken socket: open another, once
                self.close()
                if attempt == 2:
                    raise
        return {}

    def close(self) -> None:
        if self._prober is not None:
            self._prober.close()
            self._prober = None
        if self._ipr is not None:
            try:
                self._ipr.close()
            finally:
                self._ipr = None
