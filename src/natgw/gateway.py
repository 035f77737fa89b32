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
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from natgw import routes
from natgw.config import ConfigError, GatewayConfig, Peer, parse_config
from natgw.dataplane import Dataplane, DataplaneError, Mapping, TableError
from natgw.dataplane.loader import pin_dir
from natgw.netns import NetnsNotFound, iproute, require_netns
from natgw.resolve import ResolveError, is_hostname, resolve
from natgw.state import (
    GatewayState,
    PeerState,
    all_states,
    applied_path,
    load_state,
    remove_state,
    save_applied,
    save_state,
)
from natgw.wireguard import (
    DeviceConfig,
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


class GatewayError(Exception):
    """Applying, removing or reading a gateway failed; one-line message."""


def peer_mappings(peer: Peer) -> list[Mapping]:
    out = [Mapping("remote", r.cidr, r.as_) for r in peer.remote if r.as_ is not None]
    out += [Mapping("local", m.cidr, m.as_) for m in peer.local]
    return out


def device_config(cfg: GatewayConfig, peer: Peer, endpoint: str | None) -> DeviceConfig:
    """The WireGuard device of a tunnel peer; `endpoint` is peer.endpoint resolved."""
    from natgw.keys import decode_key  # noqa: PLC0415

    allowed = tuple(peer.allowed_ips)
    if cfg.pipes:
        # The peer's pipe address: cryptokey routing then vouches for who asks for a pipe.
        from natgw.pipes.addressing import pipe_network  # noqa: PLC0415

        allowed += (pipe_network(peer.public_key),)
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
        if self.cfg.tunnel_peers:
            try:
                _ = self.engine
            except WireGuardError as e:
                raise GatewayError(str(e)) from None
        with iproute(self.netns) as ipr:
            for i, peer in enumerate(self.cfg.peers):
                if not peer.is_tunnel and not ipr.link_lookup(ifname=peer.interface):
                    raise GatewayError(
                        f"peers[{i}].interface: device {peer.interface} not found"
                        + (f" in netns {self.netns}" if self.netns else ""))

    def _check_devices_free(self) -> None:
        """Refuse a tunnel device name another gateway on this host uses.

        The file's own names are checked unique by natgw.config; across gateways
        only the states in /run/natgw know. Host-wide, not per netns: wireguard-go's
        UAPI sockets share one directory.
        """
        taken = {ps.device: st for st in all_states() if st.gateway != self.cfg.name
                 for ps in st.peers if ps.engine != "interface"}
        for i, peer in enumerate(self.cfg.peers):
            other = taken.get(peer.device) if peer.is_tunnel else None
            if other is not None:
                where = f" in netns {other.netns}" if other.netns else ""
                raise GatewayError(f"peers[{i}]: device {peer.device} is used by gateway "
                                   f"{other.gateway}{where}; set device: to choose another")

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
        """Reconcile; on failure, go back to the last configuration applied in full."""
        # Before anything changes: a hostname that does not resolve leaves the host as it is.
        self.resolve_endpoints()
        source = Path(self.config_path).read_text() if self.config_path else None
        try:
            report = self._apply()
        except GatewayError as e:
            raise GatewayError(f"{e}; {self._restore_previous()}") from e
        if source is not None:
            save_applied(self.cfg.name, source)
        return report

    def _restore_previous(self) -> str:
        previous = load_state(self.cfg.name)
        path = applied_path(self.cfg.name)
        if previous is None or not path.exists() or not previous.config:
            return "nothing to restore"
        try:
            cfg = parse_config(yaml.safe_load(path.read_text()), Path(previous.config).parent)
            Gateway(cfg, self.netns, None)._apply()
        except (ConfigError, GatewayError, OSError, yaml.YAMLError) as e:
            return f"restoring the previous configuration failed too: {e}"
        return "the previous configuration is restored"

    def _apply(self) -> ApplyReport:
        self.preflight()
        previous = load_state(self.cfg.name)
        if previous is not None and previous.netns != self.netns:
            raise GatewayError(
                f"gateway {self.cfg.name} is up in netns {previous.netns or '(default)'}; "
                "run natgw down there first")
        try:
            dp = Dataplane.load(self.cfg.name)
        except (DataplaneError, OSError) as e:
            raise GatewayError(f"dataplane: {e}") from e
        report = ApplyReport()
        old = {p.name: p for p in (previous.peers if previous else [])}
        state = GatewayState(self.cfg.name, self.netns,
                             self.config_path or (previous.config if previous else ""),
                             public_key=self.cfg.public_key)
        try:
            routes.enable_forwarding(self.netns)
            for peer in self.cfg.peers:
                before = old.pop(peer.name, None)
                if before is not None and before.device != peer.device:
                    self._remove_peer(dp, before)
                    before = None
                try:
                    ps, changed = self._apply_peer(dp, peer, before)
                except (WireGuardError, DataplaneError, TableError, routes.RouteError,
                        OSError) as e:
                    # Record the half-made peer so that the rollback removes it.
                    state.peers.append(before or PeerState(
                        peer.name, peer.device, 0, "interface" if not peer.is_tunnel
                        else self.engine.name, [str(n) for n in peer.routed_networks],
                        peer.is_tunnel))
                    raise GatewayError(f"peer {peer.name}: {e}") from e
                state.peers.append(ps)
                (report.added if before is None else
                 report.updated if changed else report.unchanged).append(peer.name)
            for gone in old.values():
                self._remove_peer(dp, gone)
                report.removed.append(gone.name)
        finally:
            # Record what exists even after a failure, so `down` can remove it.
            done = {p.name for p in state.peers}
            state.peers += [p for p in old.values() if p.name not in done
                            and p.name not in report.removed]
            save_state(state)
            dp.close()
        return report

    def _apply_peer(self, dp: Dataplane, peer: Peer,
                    before: PeerState | None) -> tuple[PeerState, bool]:
        dev = peer.device
        created = before.created_device if before else False
        if peer.is_tunnel:
            self.engine.ensure_device(dev, self.netns)
            created = True
            endpoint = None
            if peer.endpoint is not None:  # resolved by apply, not yet on a restore
                endpoint = self._endpoints.get(peer.name) or self._resolve(peer)
            self.engine.configure(dev, self.netns, device_config(self.cfg, peer, endpoint))
            routes.set_link(self.netns, dev, self.cfg.mtu)
            if self.cfg.pipes:
                from natgw.pipes.addressing import ensure_address, pipe_address  # noqa: PLC0415

                ensure_address(self.netns, dev, pipe_address(self.cfg.public_key))
            mtu = self.cfg.mtu
            engine_name = self.engine.name
        else:
            mtu = self._link_mtu(dev)
            engine_name = "interface"
        ifindex = dp.ifindex(dev, self.netns)
        if before is not None and before.ifindex != ifindex:
            # The device was recreated (e.g. wireguard-go restarted): drop stale entries.
            dp.forget_device(before.ifindex)
        mappings = peer_mappings(peer)
        installed = {m.mapping for m in dp.mappings(ifindex)}
        dp.attach(dev, self.netns, mtu=mtu)
        dp.set_mappings(dev, mappings, self.netns)
        wanted_routes = [str(n) for n in peer.routed_networks]
        old_routes = before.routes if before else []
        via = str(peer.via) if peer.via else None
        routes.set_routes(self.netns, dev, wanted_routes, via=via, stale=old_routes)
        changed = (before is None or before.ifindex != ifindex or installed != set(mappings)
                   or sorted(old_routes) != sorted(wanted_routes))
        return PeerState(peer.name, dev, ifindex, engine_name, wanted_routes, created), changed

    def _link_mtu(self, dev: str) -> int:
        with iproute(self.netns) as ipr:
            return ipr.get_links(ipr.link_lookup(ifname=dev)[0])[0].get_attr("IFLA_MTU")

    def _remove_peer(self, dp: Dataplane | None, ps: PeerState) -> None:
        remove_peer(self.netns, ps, dp, engine_for(ps))

    # -- supervision -------------------------------------------------------

    def dead_tunnels(self) -> list[str]:
        """Tunnel peers whose engine process died (wireguard-go)."""
        return [p.name for p in self.cfg.tunnel_peers
                if not self.engine.is_alive(p.device, self.netns)]

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


def engine_for(ps: PeerState) -> Engine | None:
    if ps.engine == "interface":
        return None
    try:
        return select_engine(ps.engine)
    except WireGuardError:
        return None


def remove_peer(netns: str | None, ps: PeerState, dp: Dataplane | None,
                engine: Engine | None) -> None:
    """Undo one peer: routes, filters, map entries, and the tunnel device natgw made."""
    try:
        routes.remove_routes(netns, ps.routes)
    except (NetnsNotFound, OSError):
        pass
    if dp is not None:
        try:
            dp.detach(ps.device, netns)
        except (DataplaneError, NetnsNotFound, OSError):
            pass
        dp.forget_device(ps.ifindex)
    if engine is not None and ps.created_device:
        try:
            engine.delete(ps.device, netns)
        except (WireGuardError, NetnsNotFound):
            pass


def down(gateway: str, netns: str | None = None) -> bool:
    """Remove everything `up` made for a gateway. False if there was nothing (a no-op)."""
    state = load_state(gateway)
    pins = pin_dir(gateway)
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
    for ps in state.peers if state else []:
        remove_peer(netns, ps, dp, engine_for(ps))
    if dp is not None:
        dp.destroy()
    else:
        import shutil  # noqa: PLC0415

        shutil.rmtree(pins, ignore_errors=True)
    remove_state(gateway)
    return True
