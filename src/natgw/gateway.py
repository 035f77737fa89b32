"""A whole gateway from a GatewayConfig: tunnels, dataplane, mappings, routes.

`apply` reconciles the host to the config as a difference against what the
previous `apply` recorded (natgw.state): unchanged peers are not touched
(same device, same WireGuard sessions, same filters, same counters), removed
peers are torn down, new or edited ones are brought to the config. `down`
removes everything natgw made. `status` reads it all back.
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
from natgw.state import (
    GatewayState,
    PeerState,
    applied_path,
    load_state,
    remove_state,
    save_applied,
    save_state,
)
from natgw.wireguard import (
    DeviceConfig,
    DeviceStatus,
    PeerConfig,
    WireGuardError,
    select_engine,
)
from natgw.wireguard.engines import Engine

log = logging.getLogger(__name__)

HANDSHAKE_FRESH = 180  # seconds: WireGuard rekeys every 120 s; older means the peer is gone


class GatewayError(Exception):
    """Applying, removing or reading a gateway failed; one-line message."""


def peer_mappings(peer: Peer) -> list[Mapping]:
    out = [Mapping("remote", r.cidr, r.as_) for r in peer.remote if r.as_ is not None]
    out += [Mapping("local", m.cidr, m.as_) for m in peer.local]
    return out


def device_config(cfg: GatewayConfig, peer: Peer) -> DeviceConfig:
    from natgw.keys import decode_key  # noqa: PLC0415

    endpoint = str(peer.endpoint) if peer.endpoint else None
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

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = select_engine(self.cfg.engine)
        return self._engine

    # -- apply -----------------------------------------------------------

    def preflight(self) -> None:
        """Check what can be checked before anything changes."""
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

    def apply(self) -> ApplyReport:
        """Reconcile; on failure, go back to the last configuration applied in full."""
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
                             self.config_path or (previous.config if previous else ""))
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
            self.engine.configure(dev, self.netns, device_config(self.cfg, peer))
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


# -- status ----------------------------------------------------------------


@dataclass
class PeerReport:
    name: str
    device: str
    engine: str
    endpoint: str | None = None
    listen_port: int | None = None
    latest_handshake: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    up: bool = False
    mappings: list[dict] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    error: str | None = None


def status(gateway: str, netns: str | None = None) -> list[PeerReport]:
    state = load_state(gateway)
    if state is None:
        raise GatewayError(f"gateway {gateway}: not up (no state in /run/natgw)")
    netns = state.netns if netns is None else netns
    dp = None
    try:
        dp = Dataplane.open(gateway)
    except (DataplaneError, OSError):
        dp = None
    out = []
    now = time.time()
    try:
        for ps in state.peers:
            rep = PeerReport(ps.name, ps.device, ps.engine, routes=list(ps.routes))
            engine = engine_for(ps)
            if engine is not None:
                try:
                    st: DeviceStatus = engine.status(ps.device, netns)
                    rep.listen_port = st.listen_port
                    if st.peers:
                        p = st.peers[0]
                        rep.endpoint = p.endpoint
                        rep.latest_handshake = p.latest_handshake
                        rep.rx_bytes, rep.tx_bytes = p.rx_bytes, p.tx_bytes
                        rep.up = bool(p.latest_handshake) and now - p.latest_handshake < \
                            HANDSHAKE_FRESH
                except (WireGuardError, NetnsNotFound, OSError) as e:
                    rep.error = str(e)
            else:
                rep.up = True
            if dp is not None:
                for m in dp.mappings(ps.ifindex):
                    c = dp.tables.counters(m.mapping_id)
                    rep.mappings.append({
                        "kind": m.mapping.kind, "cidr": str(m.mapping.cidr),
                        "as": str(m.mapping.as_),
                        **{f"{d}_{k}": getattr(c[d], k) for d in c for k in ("packets", "bytes")},
                    })
            out.append(rep)
    finally:
        if dp is not None:
            dp.close()
    return out


def format_status(gateway: str, reports: list[PeerReport]) -> str:
    """`wg show`-like text."""
    lines = [f"gateway: {gateway}"]
    now = time.time()
    for r in reports:
        lines.append("")
        lines.append(f"peer: {r.name}")
        lines.append(f"  device: {r.device} ({r.engine})")
        if r.engine != "interface":
            lines.append(f"  endpoint: {r.endpoint or '(none)'}")
            if r.listen_port:
                lines.append(f"  listening port: {r.listen_port}")
            hs = (f"{int(now - r.latest_handshake)} seconds ago" if r.latest_handshake
                  else "never")
            lines.append(f"  latest handshake: {hs}")
            lines.append(f"  transfer: {r.rx_bytes} B received, {r.tx_bytes} B sent")
        lines.append(f"  up: {'yes' if r.up else 'no'}")
        if r.error:
            lines.append(f"  error: {r.error}")
        lines.append(f"  routes: {', '.join(r.routes) or '(none)'}")
        for m in r.mappings:
            lines.append(
                f"  {m['kind']} {m['cidr']} as {m['as']}: egress {m['egress_packets']} pkts "
                f"{m['egress_bytes']} B, ingress {m['ingress_packets']} pkts "
                f"{m['ingress_bytes']} B")
    return "\n".join(lines)
