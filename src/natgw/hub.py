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
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import socket
from dataclasses import dataclass, field

from natgw import ipbatch, pool, routes
from natgw.config import GatewayConfig, Hub, HubClient, IPAddress
from natgw.dataplane import Dataplane, Mapping, mss_for_mtu
from natgw.keys import decode_key
from natgw.netns import netns_exists
from natgw.state import ClientState, HubState, PeerState
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


def client_allowed_ips(c: HubClient, address: IPAddress) -> list:
    """Its address (a /32 or /128) and its remote cidrs."""
    return [ipaddress.ip_network(address), *(r.cidr for r in c.remote)]


def device_config(cfg: GatewayConfig, assigned: dict[str, IPAddress]) -> DeviceConfig:
    """One WireGuard peer per client with a key.

    No endpoint: clients dial in, and the hub answers wherever they roam.
    """
    assert cfg.hub is not None and cfg.private_key is not None
    peers = tuple(
        PeerConfig(public_key=decode_key(c.public_key),
                   allowed_ips=tuple(client_allowed_ips(c, assigned[c.name])))
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


def client_states(hub: Hub, assigned: dict[str, IPAddress]) -> list[ClientState]:
    out = []
    for c in hub.clients:
        addr = assigned[c.name]
        out.append(ClientState(
            c.name, c.public_key or "", text(addr), [text(n) for n in c.routed_networks],
            [f"remote:{text(r.as_)}" for r in c.remote if r.as_ is not None],
            [f"{text(addr)}/{addr.max_prefixlen}", *(text(r.cidr) for r in c.remote)]))
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


def provisional_state(cfg: GatewayConfig, engine: Engine,
                      before: HubState | None) -> HubState:
    """What to record if applying fails half-way, so that `down` or the rollback removes it."""
    if before is not None:
        return before
    hub = cfg.hub
    assert hub is not None
    return HubState(PeerState(hub.device, hub.device, 0, engine.name, wanted_routes(hub), True),
                    str(hub.address))


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


def _sync_mappings(dp: Dataplane, ifindex: int, wanted: list[Mapping],
                   recorded: list[str] | None) -> None:
    """Install the mappings that changed since the recorded apply (all: set_mappings).

    Without a record (a new or recreated device) the tables are read and made equal;
    with one, unchanged mappings are not even read: a thousand clients' entries
    cost two passes over the maps otherwise.
    """
    if recorded is None:
        dp.tables.set_mappings(ifindex, wanted)
        return
    had = set(recorded)  # compared as text: parsing a thousand back costs more
    texts = [mapping_text(m) for m in wanted]
    new = [m for m, t in zip(wanted, texts, strict=True) if t not in had]
    gone = had - set(texts)
    if new:
        dp.tables.add_mappings(ifindex, new)
    for text in gone:
        dp.tables.remove_mapping(ifindex, _mapping_of(text))


def apply_hub(cfg: GatewayConfig, netns: str | None, engine: Engine, dp: Dataplane,
              before: HubState | None) -> tuple[HubState, HubChanges]:
    """Bring the hub's device to the config, writing only differences.

    The difference is taken against what the last apply recorded for this device
    (same ifindex); a device that was recreated gets everything again. That keeps
    an edit of one client at a handful of syscalls with a thousand clients.

    Raises PoolError, WireGuardError, DataplaneError, TableError, RouteError, OSError.
    """
    hub = cfg.hub
    assert hub is not None
    dev = hub.device
    assigned = pool.assign_for(cfg)  # recorded before anything uses it
    engine.ensure_device(dev, netns)
    ifindex = ipbatch.link_index(netns, dev)
    recreated = before is None or before.device.ifindex != ifindex
    clients = client_states(hub, assigned)
    if (recreated or before.listen_port != hub.listen_port
            or before.public_key != cfg.public_key):
        engine.configure(dev, netns, device_config(cfg, assigned))  # reads the device back
    else:
        # Same device as recorded: write only the clients that changed, unread.
        engine.apply_plan(dev, netns, client_plan(before.clients, clients))
    if before is not None and recreated:
        # Recreated (wireguard-go restarted): its entries and routes went with it.
        dp.forget_device(before.device.ifindex)
    wanted = wanted_routes(hub)
    add, remove = route_lines(dev, wanted, [] if recreated else before.device.routes)
    ipbatch.run_batch(netns, link_lines(dev, cfg, before, recreated) + add)
    ipbatch.run_batch(netns, remove, force=True)  # already gone is fine
    entry = dp.tables.device(ifindex)
    if recreated or entry is None or entry.mss_v4 != mss_for_mtu(cfg.mtu)[0]:
        dp.attach(dev, netns, mtu=cfg.mtu)  # a netns socket: only when something changed
    mappings = hub_mappings(hub)
    _sync_mappings(dp, ifindex, mappings, None if recreated else before.mappings)
    state = HubState(PeerState(dev, dev, ifindex, engine.name, wanted, True), str(hub.address),
                     clients, [mapping_text(m) for m in mappings], hub.listen_port,
                     cfg.public_key or "")
    return state, diff_clients(before.clients if before else [], clients, recreated)


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
