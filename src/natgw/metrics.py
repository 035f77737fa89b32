"""Prometheus metrics read from the pinned maps at scrape time.

    collector = NatgwCollector(peers=lambda: state_peer_health(all_states()))
    server = serve_metrics("127.0.0.1", 9469, collector)
    ...
    server.shutdown()

Metrics (label values are short and stable; no per-address labels):

    natgw_translated_packets_total{gateway,peer,direction,mapping}   counter
    natgw_translated_bytes_total{gateway,peer,direction,mapping}     counter (IP bytes)
    natgw_dropped_packets_total{gateway,peer,reason}                 counter
    natgw_packet_events_total{gateway,peer,event}                    counter
        (unmatched, unparsed, mss_clamped: packets passed, not dropped)
    natgw_fastpath_packets_total{gateway,device,decision}            counter
        (redirect_*: forwarded by the fast path; any other: handed to the stack)
    natgw_peer_up{gateway,peer}                                      gauge 0/1
    natgw_peer_last_handshake_timestamp_seconds{gateway,peer}        gauge (0: never)
    natgw_peer_receive_bytes_total{gateway,peer}                     counter
    natgw_peer_transmit_bytes_total{gateway,peer}                    counter
    natgw_build_info{gateway,version,dataplane_build}                gauge 1
    natgw_scrape_error{gateway}          gauge 1 when a gateway's maps could not be read
    natgw_drift_repairs_total{gateway,kind}                          counter
        (kind: pin, engine, device, filter, route, mapping; see natgw.drift)

mapping is "<kind>:<as prefix>" (e.g. "remote:10.245.0.0/16"): unique per
device. peer is the peer name from the state file, else the interface name,
else "ifindex:N". direction is "egress" or "ingress"; reason and event are
the names in natgw.dataplane.layout.DEV_STAT_NAMES, decision those of FAST_NAMES;
device is the same label as peer (a LAN device: its interface name).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from natgw import __version__
from natgw import introspect as I
from natgw.dataplane.layout import DROP_REASONS
from natgw.dataplane.loader import PIN_ROOT
from natgw.netns import iproute
from natgw.state import GatewayState, load_state
from natgw.wireguard.model import HANDSHAKE_FRESH_SECONDS, handshake_fresh

if TYPE_CHECKING:
    from natgw.gateway import Gateway

DEFAULT_PORT = 9469
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000


@dataclass(frozen=True)
class PeerHealth:
    """A peer's tunnel as seen at scrape time.

    Tunnel peers carry latest_handshake (unix seconds, 0 = never) and the
    tunnel's byte counters; interface peers (no tunnel) carry link_up only.
    A tunnel whose device cannot be read has everything None: it is down.
    """

    gateway: str
    peer: str
    latest_handshake: int | None = None
    rx_bytes: int | None = None
    tx_bytes: int | None = None
    link_up: bool | None = None

    def up(self, now: float) -> bool:
        if self.link_up is not None:
            return self.link_up
        return handshake_fresh(self.latest_handshake, now)


PeerSource = Callable[[], Iterable[PeerHealth]]


class NatgwCollector(Collector):
    """Reads every gateway's maps (and peer health, if given) on each scrape.

    gateways None: every gateway pinned under root at scrape time.
    """

    def __init__(self, gateways: Iterable[str] | None = None, root: str = PIN_ROOT,
                 peers: PeerSource | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.gateways = list(gateways) if gateways is not None else None
        self.root = root
        self.peers = peers
        self.clock = clock

    def describe(self) -> Iterator[Metric]:
        # Describing without reading keeps registration free of map access.
        return iter(())

    def collect(self) -> Iterator[Metric]:
        names = self.gateways if self.gateways is not None else I.gateway_names(self.root)
        # A gateway that cannot be read is left out of this scrape, and flagged.
        errors = GaugeMetricFamily("natgw_scrape_error",
                                   "1 if a gateway's maps could not be read in this scrape",
                                   labels=["gateway"])
        reports = I.read_gateways(names, self.root,
                                  on_error=lambda gw, _msg: errors.add_metric([gw], 1))
        yield from dataplane_metrics(reports)
        yield errors
        yield drift_metrics({gw: state.repairs for gw in names
                             if (state := load_state(gw)) is not None})
        if self.peers is not None:
            yield from peer_metrics(self.peers(), self.clock())


def drift_metrics(repairs_by_gateway: dict[str, dict[str, int]]) -> Metric:
    """natgw_drift_repairs_total{gateway,kind}: repairs the foreground `up` made, as
    counted in the state file (it outlives a restart of natgw, like the pinned counters)."""
    repairs = CounterMetricFamily("natgw_drift_repairs",
                                  "Things removed by hand that natgw put back, per kind",
                                  labels=["gateway", "kind"])
    for gw, counts in sorted(repairs_by_gateway.items()):
        for kind, n in sorted(counts.items()):
            repairs.add_metric([gw, kind], n)
    return repairs


def dataplane_metrics(reports: Iterable[I.GatewayReport]) -> list[Metric]:
    """Translation, drop, event and build metrics of read gateways."""
    dev_labels = ["gateway", "peer"]
    packets = CounterMetricFamily("natgw_translated_packets",
                                  "Packets translated, per mapping and direction",
                                  labels=[*dev_labels, "direction", "mapping"])
    nbytes = CounterMetricFamily("natgw_translated_bytes",
                                 "IP bytes of translated packets, per mapping and direction",
                                 labels=[*dev_labels, "direction", "mapping"])
    drops = CounterMetricFamily("natgw_dropped_packets",
                                "Packets dropped because they could not be translated safely",
                                labels=[*dev_labels, "reason"])
    events = CounterMetricFamily("natgw_packet_events",
                                 "Packets passed untranslated (unmatched, unparsed) "
                                 "or with their TCP MSS clamped",
                                 labels=[*dev_labels, "event"])
    build = GaugeMetricFamily("natgw_build_info", "natgw version and pinned dataplane build",
                              labels=["gateway", "version", "dataplane_build"])
    fast = CounterMetricFamily("natgw_fastpath_packets",
                               "Fast-path decisions: packets redirected, or handed to the "
                               "kernel's forwarding path, by reason",
                               labels=["gateway", "device", "decision"])
    drop_names = set(DROP_REASONS.values())
    for g in reports:
        build.add_metric([g.gateway, __version__, g.build or ""], 1)
        for d in g.devices:
            peer = d.label
            for m in d.mappings:
                for direction in ("egress", "ingress"):
                    rule = m.rule(direction)
                    # On a hub's device a client's mapping carries the client's name.
                    labels = [g.gateway, m.peer or peer, direction, m.label]
                    packets.add_metric(labels, rule.packets)
                    nbytes.add_metric(labels, rule.bytes)
            for name, count in d.stats.items():
                if d.lan:
                    continue  # nothing is translated on a LAN device
                family = drops if name in drop_names else events
                family.add_metric([g.gateway, peer, name], count)
            for name, count in d.fastpath.items():
                fast.add_metric([g.gateway, peer, name], count)
    return [packets, nbytes, drops, events, fast, build]


def peer_metrics(peers: Iterable[PeerHealth], now: float) -> list[Metric]:
    """Up, handshake and tunnel byte metrics of peers."""
    labels = ["gateway", "peer"]
    up = GaugeMetricFamily("natgw_peer_up",
                           f"1 if the tunnel had a handshake in the last "
                           f"{HANDSHAKE_FRESH_SECONDS}s, or the interface link is up",
                           labels=labels)
    handshake = GaugeMetricFamily("natgw_peer_last_handshake_timestamp_seconds",
                                  "Unix time of the latest WireGuard handshake (0: never)",
                                  labels=labels)
    rx = CounterMetricFamily("natgw_peer_receive_bytes", "Bytes received through the tunnel",
                             labels=labels)
    tx = CounterMetricFamily("natgw_peer_transmit_bytes", "Bytes sent through the tunnel",
                             labels=labels)
    for p in peers:
        key = [p.gateway, p.peer]
        up.add_metric(key, 1 if p.up(now) else 0)
        if p.latest_handshake is not None:
            handshake.add_metric(key, p.latest_handshake)
        if p.rx_bytes is not None:
            rx.add_metric(key, p.rx_bytes)
        if p.tx_bytes is not None:
            tx.add_metric(key, p.tx_bytes)
    return [up, handshake, rx, tx]


# -- peer health from what `natgw up` recorded ---------------------------------


def _default_engine(name: str) -> Any:
    # Built directly, not by select_engine: a scrape must never modprobe.
    from natgw.wireguard import KernelEngine, WireGuardGoEngine  # noqa: PLC0415

    return KernelEngine() if name == "kernel" else WireGuardGoEngine()


def link_up(ifname: str, netns: str | None) -> bool:
    """Administratively up with carrier (`ip link`: UP,LOWER_UP); False if absent."""
    try:
        ipr = iproute(netns)
    except Exception:
        return False
    try:
        links = ipr.link("get", ifname=ifname)
    except Exception:
        return False
    finally:
        ipr.close()
    flags = links[0]["flags"] if links else 0
    return bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP)


def state_peer_health(states: Iterable[GatewayState],
                      engine_for: Callable[[str], Any] = _default_engine) -> list[PeerHealth]:
    """Peer health of gateways from their state: WireGuard status or link state.

    engine_for(engine name) returns an object with the natgw.wireguard Engine
    `status(ifname, netns)`. A device's WireGuard peers are summed: its
    newest handshake and total bytes stand for the natgw peer.
    """
    out = []
    for state in states:
        for p in state.peers:
            if p.engine == "interface":
                out.append(PeerHealth(state.gateway, p.name,
                                      link_up=link_up(p.device, state.netns)))
                continue
            try:
                status = engine_for(p.engine).status(p.device, state.netns)
            except Exception:
                # Device gone or engine broken: reported as down, not as a failed scrape.
                out.append(PeerHealth(state.gateway, p.name))
                continue
            wg = status.peers
            out.append(PeerHealth(
                state.gateway, p.name,
                latest_handshake=max((w.latest_handshake for w in wg), default=0),
                rx_bytes=sum(w.rx_bytes for w in wg),
                tx_bytes=sum(w.tx_bytes for w in wg),
            ))
        if state.hub is not None:
            out += hub_client_health(state, engine_for)
    return out


def hub_client_health(state: GatewayState,
                      engine_for: Callable[[str], Any] = _default_engine) -> list[PeerHealth]:
    """One PeerHealth per hub client (the client is the `peer` label), from one status read."""
    from natgw.keys import encode_key  # noqa: PLC0415

    hub = state.hub
    assert hub is not None
    try:
        status = engine_for(hub.device.engine).status(hub.device.device, state.netns)
    except Exception:
        return [PeerHealth(state.gateway, c.name) for c in hub.clients]
    by_key = {encode_key(w.public_key): w for w in status.peers}
    out = []
    for c in hub.clients:
        w = by_key.get(c.public_key)
        out.append(PeerHealth(state.gateway, c.name) if w is None else PeerHealth(
            state.gateway, c.name, latest_handshake=w.latest_handshake,
            rx_bytes=w.rx_bytes, tx_bytes=w.tx_bytes))
    return out


# -- HTTP server ---------------------------------------------------------------


@dataclass
class MetricsServer:
    """A running /metrics endpoint; shutdown() stops it and closes its socket."""

    httpd: Any
    thread: Any
    registry: CollectorRegistry

    @property
    def host(self) -> str:
        return self.httpd.server_address[0]

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def serve_metrics(host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                  collector: Collector | None = None) -> MetricsServer:
    """Serve natgw's metrics over HTTP in a daemon thread (port 0: any free port).

    A dedicated registry: only natgw's metrics, never the process-global ones.
    Loopback by default; bind elsewhere only on a trusted network.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector if collector is not None else NatgwCollector())
    httpd, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(httpd, thread, registry)


def serve_gateway_metrics(gw: Gateway) -> MetricsServer:
    """Metrics of one running gateway at its config's `metrics` address.

    Peer health comes from the gateway's state file at each scrape, so peers
    added by a reload show up without restarting the server.
    """
    name = gw.cfg.name

    def peers() -> list[PeerHealth]:
        state = load_state(name)
        return state_peer_health([state]) if state is not None else []

    host, port = gw.cfg.metrics
    return serve_metrics(host, port, NatgwCollector([name], peers=peers))
