"""The hub: one WireGuard device and one UDP port for many clients.

`apply_hub` reconciles the hub's device as a difference against what the last
apply recorded for it (natgw.state.HubState): only the WireGuard peers whose key
or allowed-ips changed are written (Engine.apply_plan), only the mappings that
changed are installed or removed (unchanged ones keep their ids and counters),
only the routes that changed are added or deleted (one `ip -batch`). So adding,
editing or removing one client leaves every other client's session, counters and
routes alone, and costs little with a thousand clients. A device that was
recreated, or a changed port or key, gets a full, read-back configure. Client
addresses come from natgw.pool, recorded before they are configured.

As for peers (natgw.gateway), the hub's device and every route an apply may add
are recorded (incomplete) before anything is created, and filters and mappings
come before the WireGuard peers and routes. An incomplete record (a kill) or a
drift repair makes the next apply reconcile the whole device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from natgw import addresses, faults, ipbatch, pool, routes
from natgw.config import GatewayConfig, Hub, HubClient, IPAddress
from natgw.dataplane import Dataplane, Mapping, mss_for_mtu
from natgw.keys import decode_key
from natgw.netns import netns_exists
from natgw.state import ClientState, HubState, PeerState
from natgw.tunnel_address import place_address, tunnel_address, tunnel_network
from natgw.wireguard import DeviceConfig, PeerConfig
from natgw.wireguard.engines import Engine
from natgw.wireguard.plan import Plan


def client_mappings(client: HubClient) -> list[Mapping]:
    return [Mapping("remote", r.cidr, r.as_) for r in client.remote if r.as_ is not None]


def hub_mappings(hub: Hub) -> list[Mapping]:
    """Every client's remote mappings and hub.local, all on the one device."""
    out = [m for c in hub.clients for m in client_mappings(c)]
    return out + [Mapping("local", loc.cidr, loc.as_) for loc in hub.local]


@functools.lru_cache(maxsize=1 << 16)
def text(net) -> str:
    """str() of an IPv4 network or address, in C and remembered: with a thousand
    clients ipaddress's own str() was the largest cost of an apply that changes nothing."""
    if net.version == 4:
        if hasattr(net, "prefixlen"):
            return f"{socket.inet_ntoa(net.network_address.packed)}/{net.prefixlen}"
        return socket.inet_ntoa(net.packed)
    return str(net)


def client_allowed_ips(c: HubClient, address: IPAddress, pipes: bool = False) -> list:
    """Its address (a /32 or /128) and its remote cidrs, and with pipes in the file its
    pipe address (natgw.tunnel_address): cryptokey routing then vouches for who asks."""
    out = [ipaddress.ip_network(address), *(r.cidr for r in c.remote)]
    if pipes and c.public_key is not None:
        out.append(tunnel_network(c.public_key))
    return out


def device_config(cfg: GatewayConfig, assigned: dict[str, IPAddress]) -> DeviceConfig:
    """One WireGuard peer per client with a key.

    No endpoint: clients dial in, and the hub answers wherever they roam.
    """
    assert cfg.hub is not None and cfg.private_key is not None
    peers = tuple(
        PeerConfig(public_key=decode_key(c.public_key),
                   allowed_ips=tuple(client_allowed_ips(c, assigned[c.name],
                                                        bool(cfg.pipes))))
        for c in cfg.hub.clients if c.public_key is not None
    )
    return DeviceConfig(private_key=cfg.private_key.get_secret_value(),
                        listen_port=cfg.hub.listen_port, peers=peers)


def client_plan(before: list[ClientState], after: list[ClientState]) -> Plan:
    """The WireGuard peers to write, from the recorded clients and the wanted ones."""
    old = {c.public_key: c for c in before if c.public_key}
    new = {c.public_key: c for c in after if c.public_key}
    return Plan(
        remove=tuple(decode_key(k) for k in old if k not in new),
        upsert=tuple(PeerConfig(public_key=decode_key(k), allowed_ips=tuple(c.allowed_ips))
                     for k, c in new.items()
                     if k not in old or old[k].allowed_ips != c.allowed_ips),
    )


def wanted_routes(hub: Hub) -> list[str]:
    """The pool, then each client's routed ranges."""
    return [text(hub.pool), *(text(n) for c in hub.clients for n in c.routed_networks)]


def client_states(hub: Hub, assigned: dict[str, IPAddress],
                  pipes: bool = False) -> list[ClientState]:
    out = []
    for c in hub.clients:
        addr = assigned[c.name]
        allowed = [f"{text(addr)}/{addr.max_prefixlen}", *(text(r.cidr) for r in c.remote)]
        if pipes and c.public_key is not None:
            allowed.append(str(tunnel_network(c.public_key)))
        out.append(ClientState(
            c.name, c.public_key or "", text(addr), [text(n) for n in c.routed_networks],
            [f"remote:{text(r.as_)}" for r in c.remote if r.as_ is not None], allowed))
    return out


@dataclass
class HubChanges:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def diff_clients(before: list[ClientState], after: list[ClientState],
                 device_changed: bool) -> HubChanges:
    """Which clients an apply added, changed, removed or left alone."""
    old = {c.name: c for c in before}
    out = HubChanges()
    for c in after:
        prev = old.pop(c.name, None)
        if prev is None:
            out.added.append(c.name)
        elif device_changed or prev != c:
            out.updated.append(c.name)
        else:
            out.unchanged.append(c.name)
    out.removed = list(old)
    return out


def intent_state(cfg: GatewayConfig, engine: Engine, before: HubState | None,
                 wanted: list[str]) -> HubState:
    """What to record before anything of this apply is created (natgw.state's intent).

    The last record plus every route this apply may add, marked incomplete: a
    `down` after a kill removes them all, and the next `up` reconciles the whole
    device instead of a difference against a record the kill made stale.
    """
    hub = cfg.hub
    assert hub is not None
    had = before.device.routes if before else []
    device = PeerState(hub.device, hub.device, before.device.ifindex if before else 0,
                       engine.name, sorted(set(had) | set(wanted)), created_device=True,
                       own_qdisc=True,  # natgw made the device: any clsact on it is natgw's
                       pipe_address=before.device.pipe_address if before else "")
    if before is None:
        return HubState(device, str(hub.address), complete=False)
    return dataclasses.replace(before, device=device, complete=False)


def link_lines(dev: str, cfg: GatewayConfig, before: HubState | None,
               recreated: bool) -> list[str]:
    """`ip` commands that bring the device up with the hub's address (no prefix route:
    the pool is routed like every natgw route)."""
    hub = cfg.hub
    assert hub is not None
    lines = [f"link set dev {dev} up mtu {cfg.mtu}"]
    if recreated or before is None or before.address != str(hub.address):
        nodad = " nodad" if hub.address.version == 6 else ""
        lines.append(f"address replace {hub.address} dev {dev} noprefixroute{nodad}")
        if not recreated and before is not None and before.address != str(hub.address):
            lines.append(f"address del {before.address} dev {dev}")
    return lines


def route_lines(dev: str, wanted: list[str], have: list[str]) -> tuple[list[str], list[str]]:
    """`ip` commands adding the routes not there yet, and removing those no longer wanted."""
    proto = routes.RTPROT_NATGW
    had = set(have)
    add = [f"route replace {n} dev {dev} proto {proto}" for n in wanted if n not in had]
    gone = had - set(wanted)
    return add, [f"route del {n} dev {dev} proto {proto}" for n in sorted(gone)]


def mapping_text(m: Mapping) -> str:
    return f"{m.kind} {text(m.cidr)} {text(m.as_)}"


def _mapping_of(text: str) -> Mapping:
    kind, cidr, as_ = text.split()
    return Mapping.parse(kind, cidr, as_)  # type: ignore[arg-type]


def _mapping_changes(dp: Dataplane, ifindex: int, wanted: list[Mapping],
                     recorded: list[str] | None) -> list[Mapping]:
    """Install the mappings that are new since the recorded apply; return those to remove
    once the clients that used them are gone (remove_mappings).

    Without a record (a new or recreated device, or an apply a kill cut short)
    the tables are read and made equal (set_mappings, which also completes or
    removes one-way entries); with one, unchanged mappings are not even read: a
    thousand clients' entries cost two passes over the maps otherwise.
    """
    if recorded is None:
        dp.tables.set_mappings(ifindex, wanted)
        return []
    had = set(recorded)  # compared as text: parsing a thousand back costs more
    texts = [mapping_text(m) for m in wanted]
    new = [m for m, t in zip(wanted, texts, strict=True) if t not in had]
    gone = [_mapping_of(t) for t in sorted(had - set(texts))]
    if new and gone and _share_keys(new, gone):
        # A client's mapping moved to another range under the same key: rewritten in place.
        dp.tables.set_mappings(ifindex, wanted)
        return []
    if new:
        dp.tables.add_mappings(ifindex, new)
    return gone


def _share_keys(new: list[Mapping], gone: list[Mapping]) -> bool:
    from natgw.dataplane.tables import _entry_keys  # noqa: PLC0415

    keys = {k for m in gone for k in _entry_keys(m)}
    return any(k in keys for m in new for k in _entry_keys(m))


def apply_hub(cfg: GatewayConfig, netns: str | None, engine: Engine, dp: Dataplane,
              before: HubState | None, record: Callable[[HubState], None],
              full: bool = False) -> HubChanges:
    """Bring the hub's device to the config, writing only differences.

    The difference is taken against what the last apply recorded for this device
    (same ifindex); a device that was recreated, a record left incomplete by a
    kill, or `full` (a drift repair) gets everything again. That keeps an edit of
    one client at a handful of syscalls with a thousand clients.

    Order, as for peers (natgw.gateway): the intent is recorded, then the
    device, its filters and new mappings, and only then the WireGuard peers,
    the link, its address and the routes; mappings no client uses any more go
    last. record(state) saves the gateway's state with this hub state.

    Raises PoolError, WireGuardError, DataplaneError, TableError, RouteError, OSError.
    """
    hub = cfg.hub
    assert hub is not None
    dev = hub.device
    assigned = pool.assign_for(cfg)  # recorded before anything uses it
    wanted = wanted_routes(hub)
    intent = intent_state(cfg, engine, before, wanted)
    record(intent)
    faults.step("hub-intent")
    engine.ensure_device(dev, netns)
    faults.step("hub-device-created")
    ifindex = ipbatch.link_index(netns, dev)
    recreated = before is None or before.device.ifindex != ifindex
    full = full or recreated or not before.complete
    if before is not None and recreated and before.device.ifindex:
        # Recreated (wireguard-go restarted): its entries and routes went with it.
        dp.forget_device(before.device.ifindex)
    if intent.device.ifindex != ifindex:
        intent.device.ifindex = ifindex
        record(intent)
    faults.step("hub-device-entry")
    entry = dp.tables.device(ifindex)
    if full or entry is None or entry.mss_v4 != mss_for_mtu(cfg.mtu)[0]:
        # A netns socket: only when something changed (a new fastpath: makes it full).
        dp.attach(dev, netns, mtu=cfg.mtu, fast=cfg.fast)
    faults.step("hub-filters-attached")
    mappings = hub_mappings(hub)
    gone = _mapping_changes(dp, ifindex, mappings, None if full else before.mappings)
    faults.step("hub-mappings-set")
    clients = client_states(hub, assigned, bool(cfg.pipes))
    if (full or before.listen_port != hub.listen_port
            or before.public_key != cfg.public_key):
        engine.configure(dev, netns, device_config(cfg, assigned))  # reads the device back
    else:
        # Same device as recorded: write only the clients that changed, unread.
        engine.apply_plan(dev, netns, client_plan(before.clients, clients))
    faults.step("hub-tunnel-configured")
    if full:
        ipbatch.run_batch(netns, link_lines(dev, cfg, None, True)[:1])
        # The address exactly (a kill may have left the old one, or both).
        addresses.set_addresses(netns, dev, [hub.address])
    else:
        ipbatch.run_batch(netns, link_lines(dev, cfg, before, False))
    faults.step("hub-link-up")
    # The hub's own pipe address, with pipes in the file only (natgw.tunnel_address).
    place_address(netns, intent.device,
                  tunnel_address(cfg.public_key) if cfg.pipes and cfg.public_key else None,
                  lambda: record(intent), check=full)
    add, remove = route_lines(dev, wanted, [] if full else before.device.routes)
    if full:
        remove = route_lines(dev, [], [n for n in intent.device.routes if n not in wanted])[1]
    ipbatch.refuse_foreign_routes(netns, _added(add))
    ipbatch.run_batch(netns, add)
    ipbatch.run_batch(netns, remove, force=True)  # already gone is fine
    faults.step("hub-routes-set")
    dp.tables.remove_mappings(ifindex, gone)  # one pass over the maps for all of them
    state = HubState(PeerState(dev, dev, ifindex, engine.name, wanted, True, own_qdisc=True,
                               pipe_address=intent.device.pipe_address),
                     str(hub.address), clients, [mapping_text(m) for m in mappings],
                     hub.listen_port, cfg.public_key or "")
    record(state)
    faults.step("hub-recorded")
    return diff_clients(before.clients if before else [], clients, recreated)


def _added(lines: list[str]) -> list[str]:
    """The destinations of `route replace` lines."""
    return [ln.split()[2] for ln in lines]


def remove_hub(netns: str | None, hs: HubState, dp: Dataplane | None,
               engine: Engine | None) -> None:
    """Undo the hub: its routes, filters, map entries and device (pool records stay).

    The routes go in one `ip -batch` (a route per client: one netlink call each
    would take seconds), then the device as for a peer.
    """
    from natgw.gateway import remove_peer  # noqa: PLC0415

    dev = hs.device.device
    lines = [f"route del {n} dev {dev} proto {routes.RTPROT_NATGW}" for n in hs.device.routes]
    if netns is None or netns_exists(netns):
        with contextlib.suppress(routes.RouteError):
            ipbatch.run_batch(netns, lines, force=True)
    remove_peer(netns, dataclasses.replace(hs.device, routes=[]), dp, engine)
