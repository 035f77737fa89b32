"""The two-gateway topology, in network namespaces, in each benchmarked mode.

    pod1 e1 ---- p1 gw1 u1 ==== u2 gw2 p2 ---- e2 pod2
                        (w1 ~~~~ w2: wireguard-go over u1/u2)

Modes (how gw1 and gw2 join the clusters):

- route:    distinct CIDRs (pod1 10.244.1.10, pod2 10.245.1.10), plain routing: the limit;
- iptables: both pods 10.244.1.10; conntrack NAT with iptables-legacy NETMAP. Each
            gateway translates its *own* cluster: SNAT on the way out of the peer
            device (POSTROUTING), DNAT on the way in (PREROUTING, before routing,
            which is right since the destination is then local). DNAT of the peer's
            range on the sending side cannot work: it runs before routing, so the
            rewritten (overlapping) destination would route back into the local pod;
- nftables: the same with nftables prefix NAT (`snat/dnat ip prefix to ... map`, as Liqo);
- natgw:    the product, `natgw --netns gwN up cluster.yaml --detach`: stateless tc-eBPF
            translation on the peer device (remote mappings on both gateways).

In every overlapping mode cluster1 reaches pod2 as 10.212.1.10 and pod2 sees pod1
as 10.221.1.10. Transports: the direct underlay veth (natgw: an `interface:` peer)
or a WireGuard tunnel run by wireguard-go in every mode (the benchmark starts and
configures it with `wg` for the non-natgw modes; natgw runs its own).

CPU placement on the 2-core VM: the pods' processes (traffic generator, iperf3,
echo) run on CPU 0; everything the gateways do runs on CPU 1: RPS steers packets
entering gw1 and gw2 from the pods to CPU 1, from where forwarding through both
gateways (and pod2's receive path, which only drops the UDP flood) continues on
that CPU, and wireguard-go runs pinned to CPU 1. So the gateways, not the
generator, are what saturates.

Nothing is linked to the root namespace and no default route is added. Every name
starts with the run prefix; everything made is recorded in
/run/natgw/bench/<prefix>.json (a lab record) so that `python -m bench --cleanup`
can remove what a killed run left. Namespaces, veths, keys and processes are the
lab's (lab/), as for the netns harness and the tests.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from lab.conntrack import iptables_rules, nftables_ruleset
from lab.keys import new_key
from lab.net import NATGW, LabError, add_address, in_ns, ip, run, sysctl, unique_prefix, veth
from lab.record import Record
from natgw.netmap import netmap
from natgw.netns import netns_socket

RECORD_DIR = Path("/run/natgw/bench")
MODES = ("route", "iptables", "nftables", "natgw")
TRANSPORTS = ("underlay", "wg")
POD_CIDR = "10.244.0.0/16"
POD_ADDR = "10.244.1.10"
C2_SEEN_BY_C1 = "10.212.0.0/16"  # how cluster1 addresses cluster2 (overlapping modes)
C1_SEEN_BY_C2 = "10.221.0.0/16"  # how cluster2 addresses cluster1
ROUTE_C2_CIDR = "10.245.0.0/16"  # cluster2's own CIDR in route mode (no overlap)
EXTRA_C2_CIDR = "10.247.0.0/16"  # a second real range of cluster2 (config-change test)
EXTRA_C2_AS = "10.214.0.0/16"    # ... and how cluster1 would address it
UNDERLAY = ("192.168.77.1", "192.168.77.2")
WG_PORT = 51820
WG_MTU = 1420
SINK_PORT = 9  # UDP flood destination port: dropped at pod2's ingress (nft netdev)
GW_CPU, POD_CPU = 1, 0
MAX_LIFETIME = 3600  # seconds: wireguard-go the benchmark starts ends by itself after this
MAC = {"e1": "02:00:00:00:01:0a", "p1": "02:00:00:00:01:01",
       "e2": "02:00:00:00:02:0a", "p2": "02:00:00:00:02:01"}
_LETTER = {"route": "r", "iptables": "i", "nftables": "n", "natgw": "g",
           "underlay": "u", "wg": "w"}


def host_in(net: str, ref: str = POD_ADDR) -> str:
    """`ref` (the pod's address by default) moved into `net` by NETMAP."""
    return str(netmap(ref, net))


@dataclass(frozen=True)
class Plan:
    """Addresses and routes of one mode: what pod1 sends to, what pod2 must see."""

    mode: str
    transport: str
    pod2_addr: str
    pod2_gw: str
    target: str          # the destination pod1 uses for pod2
    pod1_seen_as: str    # the source pod2 sees for pod1
    gw1_routes: str      # routed from gw1 into the peer link
    gw2_routes: str
    wg_allowed: tuple[str, str]  # allowed-ips of gw1's and gw2's peer (non-natgw modes)


def plan(mode: str, transport: str) -> Plan:
    if mode not in MODES or transport not in TRANSPORTS:
        raise LabError(f"unknown mode/transport {mode}/{transport}")
    if mode == "route":
        pod2 = host_in(ROUTE_C2_CIDR)
        return Plan(mode, transport, pod2, host_in(ROUTE_C2_CIDR, "0.0.1.1"), pod2, POD_ADDR,
                    ROUTE_C2_CIDR, POD_CIDR, (ROUTE_C2_CIDR, POD_CIDR))
    return Plan(mode, transport, POD_ADDR, "10.244.1.1", host_in(C2_SEEN_BY_C1),
                host_in(C1_SEEN_BY_C2), C2_SEEN_BY_C1, C1_SEEN_BY_C2,
                (C2_SEEN_BY_C1, C1_SEEN_BY_C2))


def extra_mappings(n: int) -> list[tuple[str, str]]:
    """n (cidr, as) /24 pairs spread over 10.0.0.0/8, clear of the benchmark's ranges.

    Dense around the translated prefixes, so the LPM lookups of real traffic walk
    a trie full of neighbours rather than an empty one.
    """
    taken = {int(ipaddress.ip_network(n).network_address.packed[1]) for n in (
        POD_CIDR, C2_SEEN_BY_C1, C1_SEEN_BY_C2, ROUTE_C2_CIDR, EXTRA_C2_CIDR, EXTRA_C2_AS)}
    octets = [o for o in range(256) if o not in taken]
    if n > len(octets) * 256:
        raise LabError(f"{n} extra mappings: at most {len(octets) * 256}")
    out = []
    for i in range(n):
        second, third = octets[i % len(octets)], i // len(octets)
        cidr = f"10.{second}.{third}.0/24"
        as_ = f"10.{second}.{255 - third}.0/24"
        out.append((cidr, as_))
    return out


# -- runs ---------------------------------------------------------------------


def new_record(prefix: str | None = None) -> Record:
    """A new lab record under /run/natgw/bench (prefix: "nb" + 4 unused hex digits)."""
    return Record.create(RECORD_DIR, prefix or unique_prefix("nb", also=(RECORD_DIR,)))


def cleanup(rec: Record) -> None:
    """Remove a run: processes by PID, gateways with `natgw down`, then the namespaces."""
    rec.remove(_natgw_down)


def load_records(prefix: str | None = None) -> list[Record]:
    return Record.load(RECORD_DIR, prefix)


# -- the topology ------------------------------------------------------------


class Topology:
    """pod1 - gw1 - gw2 - pod2 in one mode over one transport."""

    def __init__(self, rec: Record, mode: str, transport: str, extra: int = 0,
                 hooks: str = "") -> None:
        """extra: natgw mode with that many more mappings; hooks: route mode with natgw's
        programs attached to the peer devices but no mapping matching the traffic (what
        the hooks and programs cost before any translation), by "tcx" links or by "tc"
        clsact + cls_bpf filters (natgw.dataplane.hooks)."""
        if extra and mode != "natgw":
            raise LabError("extra mappings exist only in natgw mode")
        if hooks and mode != "route":
            raise LabError("natgw hooks without translation: route mode only")
        if hooks not in ("", "tcx", "tc"):
            raise LabError(f"natgw hooks: tcx or tc, not {hooks}")
        self.rec = rec
        self.mode, self.transport, self.extra, self.hooks = mode, transport, extra, hooks
        self.plan = plan(mode, transport)
        self.tag = (_LETTER[mode] + _LETTER[transport] + (str(len(str(extra))) if extra else "")
                    + {"": "", "tcx": "h", "tc": "c"}[hooks])
        p = rec.prefix + self.tag
        self.pod1, self.gw1, self.gw2, self.pod2 = p + "p1", p + "g1", p + "g2", p + "p2"
        self.dev = {d: p + d for d in ("e1", "p1", "u1", "u2", "p2", "e2", "w1", "w2")}
        for name in self.dev.values():
            if len(name) > 15:
                raise LabError(f"device name {name} is longer than 15 characters")
        self.gateways = [p + "1", p + "2"]  # natgw gateway names
        self.configs: list[Path] = []
        self.wg_pids: list[int] = []
        self.install_times: list[dict] = []

    @property
    def key(self) -> str:
        mode = f"natgw-m{self.extra + 1}" if self.extra else self.mode
        if self.hooks:
            mode = "route+natgw-hooks" + ("-tc" if self.hooks == "tc" else "")
        return f"{mode}/{self.transport}"

    @property
    def peer_dev(self) -> tuple[str, str]:
        """The device of each gateway that leads to the other gateway."""
        if self.transport == "wg":
            return self.dev["w1"], self.dev["w2"]
        return self.dev["u1"], self.dev["u2"]

    def __repr__(self) -> str:
        return f"Topology({self.key})"

    # -- build ---------------------------------------------------------------

    def _veth(self, ns_a: str, a: str, addr_a: str, ns_b: str, b: str, addr_b: str) -> None:
        veth(ns_a, self.dev[a], ns_b, self.dev[b], MAC.get(a), MAC.get(b))
        add_address(ns_a, self.dev[a], addr_a)
        add_address(ns_b, self.dev[b], addr_b)

    def _rps(self, ns: str, dev: str, cpu: int) -> None:
        path = f"/sys/class/net/{dev}/queues/rx-0/rps_cpus"
        run(in_ns(ns, ["sh", "-c", f"echo {1 << cpu:x} > {path}"]))

    def build(self) -> None:
        pl = self.plan
        for ns in (self.pod1, self.gw1, self.gw2, self.pod2):
            self.rec.netns(ns)
        self._veth(self.pod1, "e1", f"{POD_ADDR}/24", self.gw1, "p1", "10.244.1.1/24")
        self._veth(self.pod2, "e2", f"{pl.pod2_addr}/24", self.gw2, "p2", f"{pl.pod2_gw}/24")
        self._veth(self.gw1, "u1", f"{UNDERLAY[0]}/24", self.gw2, "u2", f"{UNDERLAY[1]}/24")
        ip("-n", self.pod1, "route", "add", pl.gw1_routes, "via", "10.244.1.1")
        ip("-n", self.pod2, "route", "add", pl.gw2_routes, "via", pl.pod2_gw)
        if self.mode == "natgw":
            # A second real range behind pod2, reachable once a mapping is added.
            ip("-n", self.pod1, "route", "add", EXTRA_C2_AS, "via", "10.244.1.1")
            ip("-n", self.pod2, "addr", "add", f"{host_in(EXTRA_C2_CIDR)}/24",
               "dev", self.dev["e2"])
            ip("-n", self.gw2, "route", "add", EXTRA_C2_CIDR, "via", POD_ADDR)
        for ns in (self.gw1, self.gw2):
            sysctl(ns, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                         "net.ipv4.conf.default.rp_filter=0")
        for ns, dev in ((self.gw1, "p1"), (self.gw2, "p2")):
            sysctl(ns, f"net.ipv4.conf.{self.dev[dev]}.rp_filter=0")
            if dev == "p2" or self.transport == "underlay":
                self._rps(ns, self.dev[dev], GW_CPU)
        # Replies to pod1 are processed on the pods' CPU. What enters pod2 stays on
        # the gateway CPU, where forwarding put it: pod2 only drops the flood at its
        # ingress (cheap, the same in every mode), and the generator's CPU keeps
        # headroom so the gateway CPU is the one that saturates.
        self._rps(self.pod1, self.dev["e1"], POD_CPU)
        run(in_ns(self.pod2, ["nft", "-f", "-"]), input=f"""table netdev sink {{
  chain in {{
    type filter hook ingress device "{self.dev['e2']}" priority 0;
    udp dport {SINK_PORT} drop
  }}
}}
""")
        if self.mode == "natgw":
            self._build_natgw()
            if self.extra:
                self.install_extra_mappings()
        else:
            if self.transport == "wg":
                self._build_wg()
            self._build_routes()
            if self.hooks:
                self._attach_hooks()
            if self.mode == "iptables":
                self._build_iptables()
            elif self.mode == "nftables":
                self._build_nftables()

    def _gw_peer(self) -> list[tuple[str, str, str, str]]:
        """Per gateway: (netns, peer device, underlay address of the other side, routes)."""
        d1, d2 = self.peer_dev
        return [(self.gw1, d1, UNDERLAY[1], self.plan.gw1_routes),
                (self.gw2, d2, UNDERLAY[0], self.plan.gw2_routes)]

    def _build_routes(self) -> None:
        for ns, dev, other, net in self._gw_peer():
            if self.transport == "wg":
                ip("-n", ns, "route", "add", net, "dev", dev)
            else:
                ip("-n", ns, "route", "add", net, "via", other, "dev", dev)

    def _build_iptables(self) -> None:
        for (ns, dev, _, _), seen in zip(self._gw_peer(), (C1_SEEN_BY_C2, C2_SEEN_BY_C1),
                                         strict=True):
            for rule in iptables_rules(POD_CIDR, seen, dev):
                run(in_ns(ns, ["iptables-legacy", "-w", *rule]))

    def _build_nftables(self) -> None:
        for (ns, dev, _, _), seen in zip(self._gw_peer(), (C1_SEEN_BY_C2, C2_SEEN_BY_C1),
                                         strict=True):
            run(in_ns(ns, ["nft", "-f", "-"]),
                input=nftables_ruleset(POD_CIDR, seen, dev, f"{self.rec.prefix}nat"))

    def _attach_hooks(self) -> None:
        """natgw's programs on both peer devices through the library (by self.hooks'
        mechanism), with a mapping that matches none of the benchmark's addresses."""
        from natgw.dataplane import Dataplane, Mapping  # noqa: PLC0415
        from natgw.dataplane.hooks import MECHANISM_ENV  # noqa: PLC0415

        before = os.environ.get(MECHANISM_ENV)
        os.environ[MECHANISM_ENV] = self.hooks
        try:
            for gw, ns, dev in zip(self.gateways, (self.gw1, self.gw2), self.peer_dev,
                                   strict=True):
                self.rec.gateways[gw] = ns  # `natgw down NAME` removes pins it has no state for
                self.rec.save()
                with Dataplane.load(gw) as dp:
                    dp.attach(dev, ns, mtu=None)
                    dp.set_mappings(dev, [Mapping.parse("remote", "10.99.0.0/16",
                                                        "10.98.0.0/16")], ns)
        finally:
            if before is None:
                del os.environ[MECHANISM_ENV]
            else:
                os.environ[MECHANISM_ENV] = before

    def _keys(self, kind: str) -> tuple[list[Path], list[str]]:
        """Two new key files of this topology (kind: "wg" or "gw"), and their public keys."""
        paths = [Path(self.rec.workdir) / f"{self.tag}{kind}{i}.key" for i in (0, 1)]
        return paths, [new_key(p) for p in paths]

    def _build_wg(self) -> None:
        """wireguard-go on both gateways, pinned to the gateway CPU, configured with wg."""
        keyfiles, pubs = self._keys("wg")
        for i, (ns, dev, other, _) in enumerate(self._gw_peer()):
            self.wg_pids.append(self.rec.start_wireguard_go(ns, dev, cpu=GW_CPU,
                                                            lifetime=MAX_LIFETIME))
            run(in_ns(ns, ["wg", "set", dev, "private-key", str(keyfiles[i]),
                           "listen-port", str(WG_PORT), "peer", pubs[1 - i], "endpoint",
                           f"{other}:{WG_PORT}", "allowed-ips", self.plan.wg_allowed[i]]))
            ip("-n", ns, "link", "set", dev, "mtu", str(WG_MTU), "up")

    def natgw_config(self, i: int, extra_mapping: bool = False,
                     pubs: list[str] | None = None, keyfile: Path | None = None) -> dict:
        """The cluster.yaml of gateway i (0 or 1)."""
        seen = (C2_SEEN_BY_C1, C1_SEEN_BY_C2)[i]
        remote = [{"cidr": POD_CIDR, "as": seen}]
        if extra_mapping and i == 0:
            remote.append({"cidr": EXTRA_C2_CIDR, "as": EXTRA_C2_AS})
        d1, d2 = self.peer_dev
        peer: dict = {"name": "peer"}
        if self.transport == "wg":
            peer.update({"device": (d1, d2)[i], "publicKey": (pubs or ["", ""])[1 - i],
                         "endpoint": f"{UNDERLAY[1 - i]}:{WG_PORT}", "listenPort": WG_PORT})
        else:
            peer.update({"interface": (d1, d2)[i], "via": UNDERLAY[1 - i]})
        peer["remote"] = remote
        cfg: dict = {"name": self.gateways[i], "cidrs": [POD_CIDR]}
        if keyfile is not None:
            cfg["privateKeyFile"] = str(keyfile)
        cfg.update({"engine": "wireguard-go", "mtu": WG_MTU,
                    "metrics": f"127.0.0.1:{_metrics_port(self.rec.prefix, self.tag, i)}",
                    "peers": [peer]})
        return cfg

    def write_natgw_configs(self, extra_mapping: bool = False) -> None:
        """(Re)write both cluster.yaml files; keys are made once."""
        if not hasattr(self, "_pubs"):
            self._keyfiles, self._pubs = self._keys("gw")
        self.configs = []
        for i in (0, 1):
            path = Path(self.rec.workdir) / f"{self.gateways[i]}.yaml"
            keyfile = self._keyfiles[i] if self.transport == "wg" else None
            path.write_text(yaml.safe_dump(
                self.natgw_config(i, extra_mapping, self._pubs, keyfile), sort_keys=False))
            self.configs.append(path)

    def natgw_up(self, i: int, foreground: bool = False) -> subprocess.Popen | float:
        """`natgw --netns gwN up FILE --detach` on the gateway CPU; returns its wall time.

        The wireguard-go it starts inherits the CPU (and so GOMAXPROCS=1), like
        the one the benchmark starts in the other modes.
        """
        ns = (self.gw1, self.gw2)[i]
        argv = [NATGW, "--netns", ns, "up", str(self.configs[i])]
        if foreground:  # recorded, so that a killed run still ends it
            return self.rec.spawn(None, argv, cpu=GW_CPU, marker=str(self.configs[i]),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        run([*in_ns(None, argv, GW_CPU), "--detach"], timeout=180)
        return time.monotonic() - t0

    def natgw_down(self, i: int) -> None:
        ns = (self.gw1, self.gw2)[i]
        run([NATGW, "--netns", ns, "down", str(self.configs[i])], timeout=120)

    def _build_natgw(self) -> None:
        self.write_natgw_configs()
        for i in (0, 1):
            self.rec.gateways[str(self.configs[i])] = (self.gw1, self.gw2)[i]
            self.rec.save()
            self.natgw_up(i)

    def install_extra_mappings(self) -> list[dict]:
        """self.extra more mappings on both peer devices, through the library."""
        from bench.mappings import install  # noqa: PLC0415

        self.install_times = [
            install(gw, ns, dev, extra_mappings(self.extra)).as_dict()
            for gw, ns, dev in zip(self.gateways, (self.gw1, self.gw2), self.peer_dev,
                                   strict=True)]
        return self.install_times

    def engine_pids(self) -> list[int]:
        """PIDs of the wireguard-go processes of this topology (none over the underlay)."""
        if self.transport != "wg":
            return []
        if self.mode == "natgw":
            out = []
            for dev in self.peer_dev:
                try:
                    out.append(int(Path(f"/run/natgw/wg/{dev}.pid").read_text()))
                except (OSError, ValueError):
                    pass
            return out
        out = []
        for pid in self.wg_pids:  # `timeout`, whose child is wireguard-go
            try:
                out += [int(c) for c in
                        Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            except OSError:
                pass
        return out

    # -- checks -----------------------------------------------------------------

    def verify(self, timeout: float = 10.0) -> tuple[str, str]:
        """One UDP datagram each way; returns (pod1 as pod2 saw it, pod2 as pod1 saw it)."""
        port = 7000
        rx2 = netns_socket(self.pod2, socket.AF_INET, socket.SOCK_DGRAM)
        rx2.bind((self.plan.pod2_addr, port))
        rx2.settimeout(0.2)
        tx1 = netns_socket(self.pod1, socket.AF_INET, socket.SOCK_DGRAM)
        tx1.bind((POD_ADDR, port))
        tx1.settimeout(0.2)
        try:
            deadline = time.monotonic() + timeout
            seen2 = seen1 = None
            while seen2 is None:  # WireGuard needs a handshake: retry
                if time.monotonic() > deadline:
                    raise LabError(f"{self.key}: pod1 -> {self.plan.target} got no answer")
                tx1.sendto(b"ping", (self.plan.target, port))
                try:
                    _, (seen2, _) = rx2.recvfrom(100)
                except TimeoutError:
                    continue
            while seen1 is None:
                if time.monotonic() > deadline:
                    raise LabError(f"{self.key}: pod2 -> {seen2} got no answer")
                rx2.sendto(b"pong", (seen2, port))
                try:
                    _, (seen1, _) = tx1.recvfrom(100)
                except TimeoutError:
                    continue
            return seen2, seen1
        finally:
            rx2.close()
            tx1.close()

    def check(self) -> None:
        """verify(), and insist on the addresses the mode promises."""
        seen2, seen1 = self.verify()
        if (seen2, seen1) != (self.plan.pod1_seen_as, self.plan.target):
            raise LabError(f"{self.key}: pod2 saw pod1 as {seen2} (want "
                             f"{self.plan.pod1_seen_as}), pod1 saw pod2 as {seen1} "
                             f"(want {self.plan.target})")

    # -- teardown ---------------------------------------------------------------

    def teardown(self) -> None:
        for pid in self.wg_pids:
            self.rec.end(pid)
        for i, cfg in enumerate(self.configs):
            if str(cfg) in self.rec.gateways:
                _natgw_down((self.gw1, self.gw2)[i], str(cfg))
                del self.rec.gateways[str(cfg)]
        for gw in self.gateways if self.hooks else []:
            if gw in self.rec.gateways:
                _natgw_down(self.rec.gateways.pop(gw), gw)
        for ns in (self.pod1, self.gw1, self.gw2, self.pod2):
            if ns in self.rec.namespaces:
                self.rec.delete_netns(ns)
        self.rec.save()


def _natgw_down(netns: str, config: str) -> None:
    """`natgw down`, after emptying the tables (it removes mappings one by one)."""
    from bench.mappings import clear_mappings  # noqa: PLC0415

    clear_mappings(Path(config).stem)
    run([NATGW, "--netns", netns, "down", config], timeout=120, check=False)


def _metrics_port(prefix: str, tag: str, i: int) -> int:
    """A port for the foreground natgw's metrics, stable per run and gateway."""
    h = int.from_bytes(f"{prefix}{tag}{i}".encode()[-6:], "big")
    return 20000 + h % 20000
