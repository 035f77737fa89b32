"""A whole gateway from a GatewayConfig: tunnels, dataplane, mappings, routes.

`apply` reconciles the host to the config as a difference against what the
previous `apply` recorded (natgw.state): unchanged peers are not touched
(same device, same WireGuard sessions, same filters, same counters), removed
peers are torn down, new or edited ones are brought to the config. `down`
removes everything natgw made. natgw.status reads it all back.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from natgw import addresses, faults, multipath, routes
from natgw.config import ConfigError, GatewayConfig, Peer, parse_config
from natgw.dataplane import Dataplane, DataplaneError, Mapping
from natgw.dataplane.hooks import TC, detach_pinned_links, has_clsact, mechanism
from natgw.dataplane.layout import DEV_F_OWN_QDISC
from natgw.dataplane.loader import (
    detach,
    missing_pins,
    pin_dir,
    programs_for,
    repin_attached,
)
from natgw.failure import one_line
from natgw.health import READ_TIMEOUT, Health
from natgw.keys import encode_key
from natgw.lan import LanError, apply_lan, remove_lan, sweep_lan, wanted_lan_devices
from natgw.lock import LockTimeout, gateway_lock
from natgw.netns import NetnsNotFound, iproute, netns_exists, require_netns
from natgw.resolve import ResolveError, is_hostname, resolve
from natgw.state import (
    GatewayState,
    GroupState,
    HubState,
    PeerState,
    all_states,
    applied_path,
    load_state,
    remove_state,
    save_applied,
    save_state,
)
from natgw.tunnel_address import place_address, tunnel_address, tunnel_network
from natgw.wireguard import (
    DeviceConfig,
    DeviceStatus,
    PeerConfig,
    WireGuardError,
    select_engine,
)
from natgw.wireguard.engines import Engine
from natgw.wireguard.model import handshake_fresh

log = logging.getLogger(__name__)

# Seconds between two lookups of one peer's hostname while its handshake stays stale
# (the interval of wireguard-tools' reresolve-dns timer).
RERESOLVE_INTERVAL = 30
# Seconds a health route change waits for the gateway's lock (a drift check holds it
# while it reads the engines, each within ENGINE_READ_TIMEOUT of natgw.drift).
HEALTH_LOCK_WAIT = 1.5


class GatewayError(Exception):
    """Applying, removing or reading a gateway failed; one-line message."""


def peer_mappings(peer: Peer) -> list[Mapping]:
    out = [Mapping("remote", r.cidr, r.as_) for r in peer.remote if r.as_ is not None]
    out += [Mapping("local", m.cidr, m.as_) for m in peer.local]
    return out


def device_config(cfg: GatewayConfig, peer: Peer, endpoint: str | None) -> DeviceConfig:
    """The WireGuard device of a tunnel peer; `endpoint` is peer.endpoint resolved."""
    from natgw.keys import decode_key  # noqa: PLC0415

    # The peer's tunnel address: its kernel answers health probes from it, and
    # cryptokey routing vouches for who asks for a pipe.
    allowed = (*peer.allowed_ips, tunnel_network(peer.public_key))
    return DeviceConfig(
        private_key=cfg.private_key.get_secret_value(),
        listen_port=peer.listen_port,
        peers=(PeerConfig(public_key=decode_key(peer.public_key), endpoint=endpoint,
                          allowed_ips=allowed,
                          persistent_keepalive=peer.persistent_keepalive),),
    )


@dataclass
class ApplyReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


class Gateway:
    """One gateway in one network namespace (None: natgw's own)."""

    def __init__(self, cfg: GatewayConfig, netns: str | None = None,
                 config_path: Path | None = None) -> None:
        self.cfg = cfg
        self.netns = netns
        self.config_path = str(config_path.resolve()) if config_path else ""
        self._engine: Engine | None = None
        self._endpoints: dict[str, str] = {}  # peer name -> its endpoint resolved (ip:port)
        self._resolved_at: dict[str, float] = {}  # peer name -> time.monotonic() of the lookup
        # The applied record as this Gateway last wrote or read it (None: never):
        # another natgw's `up` replaces the file, and this Gateway is then superseded.
        self._applied: tuple[int, int] | None = None
        # Reconcile the hub's device in full, not as a difference against the record
        # (a drift repair: the record says what should be, not what is).
        self._full = False
        # The replica groups' health, judged by the foreground `up` (None: every member
        # is in its group's route, as with --detach).
        self.health: Health | None = None
        self._health_error = ""  # the last failure to change a route for health, logged once
        self._health_resync = False  # route every group by the verdicts at the next tick

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = select_engine(self.cfg.engine)
        return self._engine

    # -- apply -----------------------------------------------------------

    def preflight(self) -> None:
        """Check what can be checked before anything changes."""
        self._check_devices_free()
        try:
            require_netns(self.netns)
        except NetnsNotFound as e:
            raise GatewayError(str(e)) from None
        if self.cfg.tunnel_peers or self.cfg.hub is not None:
            try:
                _ = self.engine
            except WireGuardError as e:
                raise GatewayError(str(e)) from None
        if self.cfg.fast and self.cfg.lan_devices:
            try:
                with iproute(self.netns) as ipr:
                    wanted_lan_devices(self.cfg, self.netns, ipr)
            except LanError as e:
                raise GatewayError(str(e)) from None
        if not self.cfg.interface_peers:
            return  # (a netns socket costs tens of ms: only open one to look something up)
        with iproute(self.netns) as ipr:
            for i, peer in enumerate(self.cfg.peers):
                if not peer.is_tunnel and not ipr.link_lookup(ifname=peer.interface):
                    raise GatewayError(
                        f"peers[{i}].interface: device {peer.interface} not found"
                        + (f" in netns {self.netns}" if self.netns else ""))

    def check_foreign_devices(self, previous: GatewayState | None) -> None:
        """Refuse a tunnel device that exists and is not in natgw's record.

        Adopting it would make `down` delete someone else's link.
        """
        recorded = [*previous.peers, *([previous.hub.device] if previous.hub else [])] \
            if previous else []
        ours = {p.device for p in recorded if p.created_device}
        wanted = [p.device for p in self.cfg.tunnel_peers]
        if self.cfg.hub is not None:
            wanted.append(self.cfg.hub.device)
        check = [d for d in wanted if d not in ours]
        if not check:
            return  # (a netns socket costs tens of ms: a hub's edit opens none)
        with iproute(self.netns) as ipr:
            for dev in check:
                if ipr.link_lookup(ifname=dev):
                    raise GatewayError(f"device {dev} exists and natgw did not create it"
                                       + (f" (netns {self.netns})" if self.netns else ""))

    def _check_devices_free(self) -> None:
        """Refuse a tunnel device name another gateway on this host uses.

        The file's own names are checked unique by natgw.config; across gateways
        only the states in /run/natgw know. Host-wide, not per netns: wireguard-go's
        UAPI sockets share one directory.
        """
        taken = {ps.device: st for st in all_states() if st.gateway != self.cfg.name
                 for ps in [*st.peers, *([st.hub.device] if st.hub else [])]
                 if ps.engine != "interface"}
        wanted = [(f"peers[{i}]", peer.device, "device:") for i, peer in
                  enumerate(self.cfg.peers) if peer.is_tunnel]
        if self.cfg.hub is not None:
            wanted.append(("hub", self.cfg.hub.device, "hub.device:"))
        for path, device, setting in wanted:
            other = taken.get(device)
            if other is not None:
                where = f" in netns {other.netns}" if other.netns else ""
                raise GatewayError(f"{path}: device {device} is used by gateway "
                                   f"{other.gateway}{where}; set {setting} to choose another")

    def resolve_endpoints(self) -> None:
        """Resolve every peer endpoint now; GatewayError (one line) names one that fails."""
        for peer in self.cfg.peers:
            if peer.endpoint is not None:
                self._endpoints[peer.name] = self._resolve(peer)

    def _resolve(self, peer: Peer) -> str:
        assert peer.endpoint is not None
        self._resolved_at[peer.name] = time.monotonic()
        try:
            return resolve(peer.endpoint)
        except ResolveError as e:
            raise GatewayError(f"peers[{self.cfg.peers.index(peer)}].endpoint: {e}") from None

    def apply(self) -> ApplyReport:
        """Reconcile under the gateway's lock; on failure, go back to the last configuration
        applied in full."""
        # Before anything changes: a hostname that does not resolve leaves the host as it is.
        self.resolve_endpoints()
        try:
            with gateway_lock(self.cfg.name):
                return self._apply_or_restore()
        except LockTimeout as e:
            raise GatewayError(str(e)) from None

    def _apply_or_restore(self) -> ApplyReport:
        try:
            report = self._apply()
        except Exception as e:  # noqa: BLE001 - every failure is one line and rolled back
            msg = str(e) if isinstance(e, GatewayError) else one_line(e)
            raise GatewayError(f"{msg}; {self._restore_previous()}") from None
        if self.config_path:
            save_applied(self.cfg.name, applied_record(Path(self.config_path)))
        self._applied = _applied_stamp(self.cfg.name)
        faults.step("applied")
        return report

    def repair(self, drift: list[str]) -> bool:
        """Apply again to repair drift; count each kind repaired in the state. False: busy."""
        try:
            with gateway_lock(self.cfg.name, timeout=0):
                if self.superseded():
                    return False  # never put back what a newer `up` changed
                self._full = True
                try:
                    self._apply_or_restore()
                finally:
                    self._full = False
                state = load_state(self.cfg.name)
                if state is not None:
                    for kind in sorted({d.split()[0] for d in drift}):
                        state.repairs[kind] = state.repairs.get(kind, 0) + 1
                    state.last_repair = f"{time.strftime('%Y-%m-%d %H:%M:%S')} " \
                        + "; ".join(drift)
                    save_state(state)
        except LockTimeout:
            return False
        return True

    def drift(self) -> list[str] | None:
        """What was removed by hand, one "kind what" string each; None while locked or
        superseded."""
        from natgw.drift import detect  # noqa: PLC0415

        try:
            with gateway_lock(self.cfg.name, timeout=0):
                if self.superseded():
                    return None
                state = load_state(self.cfg.name)
                return detect(self, state) if state is not None else []
        except LockTimeout:
            return None

    def superseded(self) -> bool:
        """Another natgw applied (or removed) this gateway after this Gateway applied it."""
        return self._applied is not None and _applied_stamp(self.cfg.name) != self._applied

    def adopt_record(self) -> bool:
        """Take the configuration last applied by any natgw as this Gateway's own, so that
        supervision keeps it instead of reverting it. False: locked, or no record (down)."""
        try:
            with gateway_lock(self.cfg.name, timeout=0):
                stamp = _applied_stamp(self.cfg.name)
                try:
                    cfg = self._recorded_config()
                except ConfigError as e:
                    raise GatewayError(f"the applied record: {e}") from None
                self._applied = stamp
        except LockTimeout:
            return False
        if cfg is None:
            return False
        # No config_path: a repair re-applies the record and never rewrites it.
        self.cfg, self.config_path, self._engine = cfg, "", None
        self._endpoints.clear()
        self._resolved_at.clear()
        return True

    def _recorded_config(self) -> GatewayConfig | None:
        """The configuration last applied in full, from its record; None if there is none."""
        previous = load_state(self.cfg.name)
        path = applied_path(self.cfg.name)
        if previous is None or not path.exists() or not previous.config:
            return None
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and "privateKey" not in data \
                and "privateKeyFile" not in data and self.cfg.private_key is not None:
            # The record never holds an inline key: the gateway's key is the same.
            data["privateKey"] = encode_key(self.cfg.private_key.get_secret_value())
        return parse_config(data, Path(previous.config).parent)

    def _restore_previous(self) -> str:
        try:
            cfg = self._recorded_config()
            if cfg is None:
                return "nothing to restore"
            Gateway(cfg, self.netns, None)._apply()
        except Exception as e:  # noqa: BLE001
            msg = str(e) if isinstance(e, (ConfigError, GatewayError)) else one_line(e)
            return f"restoring the previous configuration failed too: {msg}"
        return "the previous configuration is restored"

    def _apply(self) -> ApplyReport:
        self.preflight()
        previous = load_state(self.cfg.name)
        if previous is not None and previous.netns != self.netns:
            raise GatewayError(
                f"gateway {self.cfg.name} is up in netns {previous.netns or '(default)'}; "
                "run natgw down there first")
        self.check_foreign_devices(previous)
        # The record is the intent: it is written before anything is created and
        # keeps every peer until that peer is gone, so a kill at any point leaves
        # `down` (and the next `up`) a complete list of what may exist.
        state = GatewayState(self.cfg.name, self.netns,
                             self.config_path or (previous.config if previous else ""),
                             public_key=self.cfg.public_key)
        if previous is not None:
            state.peers = list(previous.peers)
            state.hub = previous.hub
            state.groups = dict(previous.groups)
            state.lan = list(previous.lan)
            state.sysctls, state.repairs = previous.sysctls, previous.repairs
            state.last_repair = previous.last_repair
            state.programs = previous.programs
        # Until every device runs the new fastpath's programs, the record keeps the old
        # one: a kill half-way leaves the next apply reconciling every device (hub too).
        state.fastpath = previous.fastpath if previous is not None else ""
        save_state(state)
        faults.step("intent-recorded")
        if not state.sysctls:
            state.sysctls = routes.read_forwarding(self.netns)
            save_state(state)
            faults.step("sysctls-saved")
        routes.enable_forwarding(self.netns)
        faults.step("forwarding-set")
        need = programs_for(self.cfg.fast, self.cfg.xdp)
        if previous is not None and missing_pins(pin_dir(self.cfg.name), need):
            # Pins removed by hand while the links (or filters) still run: pin those
            # again, so that mappings and counters are kept and nothing is recompiled.
            repin_attached(self.cfg.name, self.netns, [p.device for p in previous.peers]
                           + ([previous.hub.device.device] if previous.hub else [])
                           + [ls.device for ls in previous.lan],
                           previous.programs)
        try:
            dp = Dataplane.load(self.cfg.name, need=need)
        except (DataplaneError, OSError) as e:
            raise GatewayError(f"dataplane: {e}") from e
        tags = dp.programs.tags() if dp.programs is not None else {}
        if state.programs != tags:  # what repin_attached needs after the pins are gone
            state.programs = tags
            save_state(state)
        faults.step("dataplane-loaded")
        report = ApplyReport()
        old = {p.name: p for p in (previous.peers if previous else [])}
        try:
            for peer in self.cfg.peers:
                before = old.pop(peer.name, None)
                if before is not None and before.device != peer.device:
                    self._remove_recorded(dp, state, before)
                    before = None
                try:
                    changed = self._apply_peer(dp, state, peer, before)
                except GatewayError:
                    raise
                except Exception as e:  # noqa: BLE001 - named, one line, rolled back
                    raise GatewayError(f"peer {peer.name}: {one_line(e)}") from None
                (report.added if before is None else
                 report.updated if changed else report.unchanged).append(peer.name)
            # Before removed peers go: deleting a device that is still a member would
            # take its nexthop out of the group behind natgw's back.
            self._apply_groups(state, report)
            for gone in old.values():
                self._remove_recorded(dp, state, gone)
                report.removed.append(gone.name)
            self._apply_hub(dp, state, report)
            self._apply_lan(dp, state)
        finally:
            dp.close()
        return report

    def _apply_lan(self, dp: Dataplane, state: GatewayState) -> None:
        """The fast path's LAN devices (natgw.lan), after the devices they send to."""
        if self.cfg.fast or state.lan:  # else nothing to do: no netns socket (tens of ms)
            with iproute(self.netns) as ipr:
                try:
                    wanted = wanted_lan_devices(self.cfg, self.netns, ipr)
                except LanError as e:
                    raise GatewayError(str(e)) from None
                apply_lan(dp, self.netns, ipr, state.lan, wanted, lambda: save_state(state),
                          xdp=self.cfg.xdp)
        if state.fastpath != self.cfg.fastpath:
            state.fastpath = self.cfg.fastpath
            save_state(state)

    def _apply_hub(self, dp: Dataplane, state: GatewayState, report: ApplyReport) -> None:
        """The hub's part of an apply (natgw.hub), recorded as it goes; its clients join
        the report."""
        from natgw import hub  # noqa: PLC0415

        before = state.hub
        if before is not None and (self.cfg.hub is None
                                   or before.device.device != self.cfg.hub.device):
            faults.step("hub-remove-intent")
            try:
                hub.remove_hub(self.netns, before, dp, engine_for(before.device))
            except Exception as e:  # noqa: BLE001 - one line, rolled back
                raise GatewayError(f"hub: {one_line(e)}") from None
            report.removed += [c.name for c in before.clients]
            state.hub = before = None
            save_state(state)
            faults.step("hub-removed")
        if self.cfg.hub is None:
            return

        def record(hs: HubState) -> None:
            state.hub = hs
            save_state(state)

        try:
            changes = hub.apply_hub(self.cfg, self.netns, self.engine, dp, before, record,
                                    full=self._full or state.fastpath != self.cfg.fastpath)
        except Exception as e:  # noqa: BLE001 - one line, rolled back
            raise GatewayError(f"hub: {one_line(e)}") from None
        for kind in ("added", "updated", "removed", "unchanged"):
            getattr(report, kind).extend(getattr(changes, kind))

    def _remove_recorded(self, dp: Dataplane, state: GatewayState, ps: PeerState) -> None:
        faults.step("peer-remove-intent")
        self._remove_peer(dp, ps)
        state.peers = [p for p in state.peers if p.name != ps.name]
        save_state(state)
        faults.step("peer-removed")

    def _apply_peer(self, dp: Dataplane, state: GatewayState, peer: Peer,
                    before: PeerState | None) -> bool:
        """Bring one peer to the config. Returns whether anything changed.

        Order: the device, then its dataplane entry, filters and mappings, and
        only then the tunnel's keys and peers, the link and the routes: no packet
        can cross before it would be translated.
        """
        dev = peer.device
        wanted_routes = [str(n) for n in self.cfg.device_routes(peer)]
        old_routes = before.routes if before else []
        # A range that moves to a group's route is replaced there, not deleted first.
        grouped = {str(n) for g in self.cfg.groups for n in self.cfg.group_networks(g)}
        engine_name = self.engine.name if peer.is_tunnel else "interface"
        ps = PeerState(peer.name, dev, before.ifindex if before else 0, engine_name,
                       sorted(set(old_routes) | set(wanted_routes)),
                       created_device=peer.is_tunnel or bool(before and before.created_device),
                       own_qdisc=bool(before and before.own_qdisc),
                       address=before.address if before else None,
                       pipe_address=before.pipe_address if before else "")
        if before is not None:  # a member's part in its group, until _apply_groups
            ps.group, ps.in_route, ps.health = before.group, before.in_route, before.health
        state.put_peer(ps)
        save_state(state)
        faults.step("peer-intent")
        if peer.is_tunnel:
            self.engine.ensure_device(dev, self.netns)
            faults.step("device-created")
            mtu = self.cfg.mtu
        else:
            mtu = self._link_mtu(dev)
        ifindex = dp.ifindex(dev, self.netns)
        if before is not None and before.ifindex and before.ifindex != ifindex:
            # The device was recreated (e.g. wireguard-go restarted): drop stale entries.
            dp.forget_device(before.ifindex)
        if ps.ifindex != ifindex or (not ps.own_qdisc and mechanism() == TC):
            # Recorded before natgw may add the clsact qdisc (tcx needs none).
            if mechanism() == TC:
                with iproute(self.netns) as ipr:
                    ps.own_qdisc = ps.own_qdisc or not has_clsact(ipr, ifindex)
            ps.ifindex = ifindex
            save_state(state)
        faults.step("device-entry")
        mappings = peer_mappings(peer)
        installed = {m.mapping for m in dp.mappings(ifindex)}
        info = dp.attach(dev, self.netns, mtu=mtu, fast=self.cfg.fast, own_qdisc=ps.own_qdisc)
        if ps.own_qdisc and not info.own_qdisc:  # moved to tcx: natgw's clsact went
            ps.own_qdisc = False
            save_state(state)
        faults.step("filters-attached")
        dp.set_mappings(dev, mappings, self.netns)
        faults.step("mappings-set")
        # XDP translates with the mappings: after them (tunnels have none: L3 devices).
        dp.set_xdp(dev, self.netns, self.cfg.xdp and not peer.is_tunnel)
        if peer.is_tunnel:
            endpoint = None
            if peer.endpoint is not None:  # resolved by apply, not yet on a restore
                endpoint = self._endpoints.get(peer.name) or self._resolve(peer)
            self.engine.configure(dev, self.netns, device_config(self.cfg, peer, endpoint))
            faults.step("tunnel-configured")
            routes.set_link(self.netns, dev, self.cfg.mtu)
            faults.step("link-up")
            # With or without pipes: health probes come from it. Read back on a full
            # apply (a drift repair) or a new device only.
            place_address(self.netns, ps, tunnel_address(self.cfg.public_key),
                          lambda: save_state(state),
                          check=self._full or before is None or before.ifindex != ifindex)
        # Only when there is or was an address: each netns socket costs tens of ms.
        readdressed = False
        if peer.is_tunnel and (peer.address is not None or (before and before.address)):
            readdressed = addresses.set_addresses(
                self.netns, dev, [peer.address] if peer.address else [])
        via = str(peer.via) if peer.via else None
        routes.set_routes(self.netns, dev, wanted_routes, via=via,
                          stale=[n for n in old_routes if n not in grouped])
        faults.step("routes-set")
        ps.routes = wanted_routes
        ps.address = str(peer.address) if peer.address else None
        save_state(state)
        faults.step("peer-recorded")
        return (before is None or readdressed or before.ifindex != ifindex
                or installed != set(mappings) or sorted(old_routes) != sorted(wanted_routes))

    def group_hops(self, group: str) -> list[multipath.Hop]:
        """The members (device, weight) a group's route goes over: those the health
        check has in, else every member."""
        if self.health is not None:
            return self.health.hops(group)
        return [(p.device, p.route_weight) for p in self.cfg.groups[group]]

    def _apply_groups(self, state: GatewayState, report: ApplyReport) -> None:
        """One multipath route per range of each replica group (natgw.multipath); the
        groups gone from the file are removed. Recorded before each change."""
        groups = self.cfg.groups
        for name in groups:
            nets = [str(n) for n in self.cfg.group_networks(name)]
            devices = [p.device for p in groups[name]]
            hops = self.group_hops(name)
            before = state.groups.get(name, GroupState())
            if not hops:
                continue  # every member's device is down: the kernel took the route
            # The intent: everything that may exist once this is done or half-done.
            state.groups[name] = GroupState(sorted(set(before.routes) | set(nets)),
                                            sorted(set(before.devices) | set(devices)),
                                            before.hops)
            save_state(state)
            faults.step("group-intent")
            try:
                multipath.set_group(self.netns, self.cfg.name, name, nets, hops,
                                    before.routes, before.devices)
            except routes.RouteError as e:
                raise GatewayError(f"group {name}: {e}") from None
            faults.step("group-routes-set")
            self._record_group(state, name, GroupState(nets, devices, [list(h) for h in hops]))
            if (before.routes, before.hops) != (nets, [list(h) for h in hops]):
                for p in groups[name]:
                    if p.name in report.unchanged:
                        report.unchanged.remove(p.name)
                        report.updated.append(p.name)
        plain = {str(n) for p in self.cfg.peers for n in self.cfg.device_routes(p)}
        for name in [g for g in state.groups if g not in groups]:
            gs = state.groups[name]
            try:
                multipath.remove_group(self.netns, self.cfg.name, name, gs.routes, gs.devices,
                                       keep=sorted(plain))
            except routes.RouteError as e:
                raise GatewayError(f"group {name}: {e}") from None
            del state.groups[name]
            save_state(state)
            faults.step("group-removed")

    def _record_group(self, state: GatewayState, name: str, gs: GroupState) -> None:
        """Record a group's route as installed, and each member's part in it."""
        state.groups[name] = gs
        inside = {dev for dev, _ in gs.hops}
        for p in self.cfg.groups[name]:
            ps = state.peer(p.name)
            if ps is not None:
                m = self.health.member(p.name) if self.health is not None else None
                ps.group, ps.in_route = name, p.device in inside
                ps.health = m.why if m is not None else ""  # "": static (natgw.status)
        save_state(state)

    # -- replica group health (the foreground `up`) ------------------------

    def watch_health(self, before: Health | None = None) -> None:
        """Judge the groups' members from now on (carrying what `before` knew)."""
        self.health = Health.of(self.cfg, time.monotonic(), before) \
            if self.cfg.groups else None
        if self.health is None and before is not None:
            before.close()

    def check_health(self) -> list[str]:
        """One tick: read every member, judge, and replace the route of each group
        whose members changed (recorded first). Returns the log lines."""
        if self.health is None:
            return []
        now = time.monotonic()
        samples = self.health.read(self.netns, self._member_status)
        lines, changed, retold = self.health.observe(samples, now)
        if changed or retold or self._health_resync:
            error = self._route_groups(sorted(self.cfg.groups) if self._health_resync
                                       else sorted(changed), sorted(retold))
            if error and error != self._health_error:
                lines.append(error)
            # A failed change is tried again at each tick until it is done.
            self._health_error, self._health_resync = error, bool(error)
        # After the route: a probe answered now is read at the next tick.
        return lines + self.health.probe(self.netns, now)

    def _member_status(self, device: str) -> DeviceStatus:
        return self.engine.status(device, self.netns, timeout=READ_TIMEOUT)

    def resync_health(self) -> None:
        """At the next tick, route every group by the verdicts again (after an apply of
        another configuration failed and restored this one with every member in)."""
        self._health_resync = self.health is not None

    def release_health(self) -> list[str]:
        """Stop judging: every member whose device is up goes back in (the static
        route of --detach). Returns the log lines."""
        if self.health is None:
            return []
        samples = self.health.read(self.netns, self._member_status)
        for m in self.health.members:
            m.in_route = samples[m.peer].link is None
            m.why = "" if m.in_route else samples[m.peer].link
        error = self._route_groups(sorted(self.cfg.groups))
        self.health.close()
        self.health = None
        return [error] if error else []

    def _route_groups(self, groups: list[str], retold: list[str] = ()) -> str:
        """Record the members' verdicts and replace these groups' routes (only record
        them for `retold` groups); "" when done, else why not (tried again at the
        next tick)."""
        try:
            # Health ticks in a thread of its own (natgw.health_ticker): it can wait out
            # a drift check, which holds the lock while it reads the engines.
            with gateway_lock(self.cfg.name, timeout=HEALTH_LOCK_WAIT):
                if self.superseded():
                    return ""  # the newer `up` owns the routes now
                state = load_state(self.cfg.name)
                if state is None:
                    return ""  # gone down
                for name in [*groups, *retold]:
                    gs = state.groups.get(name)
                    if gs is None or name not in self.cfg.groups:
                        continue
                    hops = self.group_hops(name)
                    # The intent first: status, metrics and drift read the record.
                    self._record_group(state, name, GroupState(gs.routes, gs.devices,
                                                               [list(h) for h in hops]))
                    if hops and name in groups:
                        multipath.set_group(self.netns, self.cfg.name, name, gs.routes, hops,
                                            gs.routes, gs.devices, trusted=True)
        except LockTimeout:
            return "health: the gateway is locked (another natgw at work); route change deferred"
        except routes.RouteError as e:
            return f"health: {e}"
        return ""

    def _link_mtu(self, dev: str) -> int:
        with iproute(self.netns) as ipr:
            idx = ipr.link_lookup(ifname=dev)
            if not idx:
                raise GatewayError(f"device {dev} not found")
            return ipr.get_links(idx[0])[0].get_attr("IFLA_MTU")

    def _remove_peer(self, dp: Dataplane | None, ps: PeerState) -> None:
        remove_peer(self.netns, ps, dp, engine_for(ps))

    # -- supervision -------------------------------------------------------

    def dead_tunnels(self) -> list[str]:
        """Tunnel peers (and the hub) whose engine process died (wireguard-go)."""
        dead = [p.name for p in self.cfg.tunnel_peers
                if not self.engine.is_alive(p.device, self.netns)]
        if self.cfg.hub is not None and not self.engine.is_alive(self.cfg.hub.device, self.netns):
            dead.append("hub")
        return dead

    def reresolve_stale(self, now: float | None = None) -> list[str]:
        """Look up again the hostname endpoints of peers whose handshake went stale.

        As wireguard-tools' reresolve-dns: a peer whose name now points elsewhere
        is found again. One lookup per peer every RERESOLVE_INTERVAL seconds at
        most; a name that fails to resolve keeps its last address (logged). Only a
        changed address is written to the device. Returns the peers moved.
        """
        now = time.time() if now is None else now
        moved = []
        for peer in self.cfg.tunnel_peers:
            if peer.endpoint is None or not is_hostname(peer.endpoint):
                continue
            last = self._resolved_at.get(peer.name)
            if last is not None and time.monotonic() - last < RERESOLVE_INTERVAL:
                continue
            try:
                st = self.engine.status(peer.device, self.netns)
            except (WireGuardError, NetnsNotFound, OSError):
                continue  # a dead engine is for dead_tunnels and apply
            latest = max((p.latest_handshake for p in st.peers), default=0)
            if handshake_fresh(latest, now):
                continue
            try:
                addr = self._resolve(peer)
            except GatewayError as e:
                log.warning("%s (keeping %s)", e, self._endpoints.get(peer.name, "no address"))
                continue
            self._endpoints[peer.name] = addr
            if st.peers and st.peers[0].endpoint == addr:
                continue
            try:
                self.engine.configure(peer.device, self.netns,
                                      device_config(self.cfg, peer, addr))
            except WireGuardError as e:
                raise GatewayError(f"peer {peer.name}: {e}") from e
            log.info("peer %s: handshake stale, %s now resolves to %s", peer.name,
                     peer.endpoint.host, addr)
            moved.append(peer.name)
        return moved


def _applied_stamp(gateway: str) -> tuple[int, int]:
    """Identity of the applied record: every write replaces the file (a new inode)."""
    try:
        st = applied_path(gateway).stat()
    except FileNotFoundError:
        return (0, 0)
    return (st.st_ino, st.st_mtime_ns)


def applied_record(config: Path) -> str:
    """The applied cluster.yaml as recorded: without an inline privateKey, and with
    privateKeyFile absolute (the record lives elsewhere)."""
    data = yaml.safe_load(config.read_text())
    if not isinstance(data, dict):
        return ""
    data.pop("privateKey", None)
    if isinstance(data.get("privateKeyFile"), str):
        data["privateKeyFile"] = str((config.parent / data["privateKeyFile"]).absolute())
    return yaml.safe_dump(data, sort_keys=False)


def engine_for(ps: PeerState) -> Engine | None:
    if ps.engine == "interface":
        return None
    try:
        return select_engine(ps.engine)
    except WireGuardError:
        return None


def remove_peer(netns: str | None, ps: PeerState, dp: Dataplane | None,
                engine: Engine | None) -> None:
    """Undo one peer: routes, filters, map entries, and the tunnel device natgw made.

    Works from the record alone: natgw's routes (proto 78) into the device and
    its filters (by priority and handle) go even if they were never recorded or
    the pins are gone. Something that is already gone is not an error; a
    failure to remove something that is there raises.
    """
    try:
        require_netns(netns)
    except NetnsNotFound:
        # The netns went and took the links, filters and routes with it; only a
        # process (wireguard-go) may be left.
        if engine is not None and ps.created_device:
            engine.delete(ps.device, netns)
        return
    routes.remove_routes(netns, ps.routes)
    routes.sweep_routes(netns, [ps.device])
    faults.step("peer-routes-removed")
    with iproute(netns) as ipr:
        idx = ipr.link_lookup(ifname=ps.device)
        if idx:
            detach(ipr, idx[0], remove_qdisc=ps.own_qdisc or _dp_owns_qdisc(dp, idx[0]),
                   pins=dp.pin_dir if dp is not None else None)
    if dp is not None:
        if idx:
            dp.forget_device(idx[0])
        if ps.ifindex:
            dp.forget_device(ps.ifindex)
    faults.step("peer-detached")
    if engine is not None and ps.created_device:
        engine.delete(ps.device, netns)
        faults.step("peer-device-deleted")


def _dp_owns_qdisc(dp: Dataplane | None, ifindex: int) -> bool:
    if dp is None:
        return False
    dev = dp.tables.device(ifindex)
    return bool(dev and dev.flags & DEV_F_OWN_QDISC)


def down(gateway: str, netns: str | None = None) -> bool:
    """Remove everything `up` made for a gateway. False if there was nothing (a no-op)."""
    try:
        pins = pin_dir(gateway)
    except DataplaneError as e:
        raise GatewayError(str(e)) from None
    try:
        with gateway_lock(gateway):
            return _down(gateway, netns, pins)
    except LockTimeout as e:
        raise GatewayError(str(e)) from None


def _down(gateway: str, netns: str | None, pins: str) -> bool:
    state = load_state(gateway)
    if state is None and not os.path.isdir(pins):
        return False
    if state is not None and state.netns != netns:
        raise GatewayError(f"gateway {gateway} is up in netns {state.netns or '(default)'}, "
                           f"not {netns or '(default)'}: pass --netns accordingly")
    dp = None
    if os.path.isdir(pins):
        try:
            dp = Dataplane.open(gateway)
        except (DataplaneError, OSError):
            dp = None
    try:
        # The LAN programs first: nothing is fast-forwarded to a peer being taken apart.
        for ls in list(state.lan if state else []):
            try:
                remove_lan(dp, netns, ls)
            except Exception as e:  # noqa: BLE001 - one line; the record stays for a retry
                raise GatewayError(f"LAN device {ls.device}: {one_line(e)}") from None
            state.lan.remove(ls)
            save_state(state)
        if dp is not None:
            try:
                sweep_lan(dp, netns)
            except Exception as e:  # noqa: BLE001 - one line; the pins stay for a retry
                raise GatewayError(f"LAN devices: {one_line(e)}") from None
        for name, gs in list(state.groups.items() if state else []):
            try:
                multipath.remove_group(netns, gateway, name, gs.routes, gs.devices)
            except routes.RouteError as e:
                if netns is None or netns_exists(netns):  # else it went with its netns
                    raise GatewayError(f"group {name}: {e}") from None
            del state.groups[name]
            save_state(state)
        for ps in list(state.peers if state else []):
            try:
                remove_peer(netns, ps, dp, engine_for(ps))
            except Exception as e:  # noqa: BLE001 - one line; the record stays for a retry
                raise GatewayError(f"peer {ps.name}: {one_line(e)}") from None
            state.peers.remove(ps)
            save_state(state)
        if state is not None and state.hub is not None:
            from natgw.hub import remove_hub  # noqa: PLC0415

            try:
                remove_hub(netns, state.hub, dp, engine_for(state.hub.device))
            except Exception as e:  # noqa: BLE001 - one line; the record stays for a retry
                raise GatewayError(f"hub: {one_line(e)}") from None
            state.hub = None
            save_state(state)
        faults.step("down-peers-removed")
    finally:
        if dp is not None:
            dp.close()
    if state is not None and state.sysctls:
        _restore_forwarding(state)
    # Links on devices no record names (or held by a foreground `up`): unpinning alone
    # would leave a held one running.
    detach_pinned_links(pins)
    shutil.rmtree(pins, ignore_errors=True)
    faults.step("down-unpinned")
    from natgw.pipes import publish  # noqa: PLC0415

    if publish.read(gateway) is None:
        # Left by a foreground `up` that was killed; a live one removes its own.
        publish.remove(gateway)
    remove_state(gateway)
    return True


def _restore_forwarding(state: GatewayState) -> None:
    """Put the forwarding sysctls back, unless another gateway still runs in the netns:
    then it inherits the values to put back when it goes down."""
    others = [s for s in all_states() if s.gateway != state.gateway and s.netns == state.netns]
    if others:
        heir = others[0]
        heir.sysctls = dict(state.sysctls)
        save_state(heir)
        return
    try:
        routes.restore_sysctls(state.netns, state.sysctls)
    except (routes.RouteError, NetnsNotFound) as e:
        if state.netns is None or netns_exists(state.netns):
            raise GatewayError(str(e)) from None
