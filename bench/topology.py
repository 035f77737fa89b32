"""The two-gateway topology, in network namespaces, in each benchmarked mode.

    pod1 e1 ---- p1 gw1 u1 ==== u2 gw2 p2 ---- e2 pod2
                        v1 ==== v2                       (underlay, IPv6)
                        (w1 ~~~~ w2: wireguard-go over u1/u2, both families)

Modes (how gw1 and gw2 join the clusters; MODE_TABLE):

- route:     distinct CIDRs (pod1 10.244.1.10, pod2 10.245.1.10), plain routing, no
             conntrack: the limit;
- route-ct:  the same routing with conntrack on every forwarded packet, as on a
             typical Kubernetes node: an nft `inet` forward chain with `ct state
             established,related accept` (conntrack for both families), no NAT;
- iptables:  both pods 10.244.1.10; conntrack NAT with iptables-legacy NETMAP
             (ip6tables for IPv6). Each gateway translates its *own* cluster: SNAT on
             the way out of the peer device (POSTROUTING), DNAT on the way in
             (PREROUTING, before routing, which is right since the destination is
             then local). DNAT of the peer's range on the sending side cannot work:
             it runs before routing, so the rewritten (overlapping) destination would
             route back into the local pod;
- nftables:  the same with nftables prefix NAT (`snat/dnat ip prefix to ... map`, as
             Liqo; `ip6` tables for IPv6);
- natgw:     the product, `natgw --netns gwN up cluster.yaml --detach`: stateless
             eBPF translation on the peer device, with natgw's default fast path;
- natgw-off: the same with `fastpath: off` (translation after the kernel's routing);
- natgw-xdp: the same with `fastpath: xdp` (not run by default). XDP on veth needs
             the senders' tx checksum offload off: when it is measured, every mode
             of the run is built so (Topology(tx_csum_off=True)) and the report says so.

In every overlapping mode cluster1 reaches pod2 as 10.212.1.10 (fd00:212:0:1::10) and
pod2 sees pod1 as 10.221.1.10 (fd00:221:0:1::10); FAMILY has both address plans.
Transports: the direct underlay veths (natgw: `interface:` peers) or a WireGuard
tunnel run by wireguard-go in every mode (the benchmark starts and configures it
with `wg` for the non-natgw modes; natgw runs its own). Over the underlay each
family has its own veth pair (u: IPv4, v: IPv6) in every mode: a natgw `interface:`
peer has one `via` next hop, and Linux routes IPv6 through an IPv4 next hop never.
A veth pair costs the same per packet whichever family it carries.

CPU placement on the 2-core VM: the pods' processes (traffic generator, iperf3,
echo) run on CPU 0; everything the gateways do runs on CPU 1: RPS steers packets
entering gw1 and gw2 from the pods to CPU 1, from where forwarding through both
gateways (and the pods' receive paths: pod2 only drops the UDP flood) continues on
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

from lab.conntrack import conntrack_ruleset, iptables_rules, nftables_ruleset
from lab.keys import new_key
from lab.net import (
    NATGW,
    LabError,
    add_address,
    in_ns,
    ip,
    offloads,
    run,
    sysctl,
    unique_prefix,
    veth,
)
from lab.record import Record
from natgw.netmap import netmap
from natgw.netns import netns_socket

RECORD_DIR = Path("/run/natgw/bench")


@dataclass(frozen=True)
class Mode:
    """One benchmarked mode: how its gateways are built."""

    name: str
    kind: str                  # route | iptables | nftables | natgw
    letter: str                # in the topology's device and namespace names
    conntrack: bool = False    # conntrack runs on every forwarded packet
    fastpath: str | None = None  # natgw: cluster.yaml `fastpath:` (None: natgw's default)
    tx_csum_off: bool = False  # needs the senders' tx checksum offload off (XDP on veth)

    @property
    def overlapping(self) -> bool:
        """Both clusters on the same pod CIDR, translated (every mode but routing)."""
        return self.kind != "route"


MODE_TABLE = {m.name: m for m in (
    Mode("route", "route", "r"),
    Mode("route-ct", "route", "c", conntrack=True),
    Mode("iptables", "iptables", "i", conntrack=True),
    Mode("nftables", "nftables", "n", conntrack=True),
    Mode("natgw", "natgw", "g"),
    Mode("natgw-off", "natgw", "o", fastpath="off"),
    Mode("natgw-xdp", "natgw", "x", fastpath="xdp", tx_csum_off=True),
)}
ALL_MODES = tuple(MODE_TABLE)
MODES = ("route", "route-ct", "iptables", "nftables", "natgw", "natgw-off")  # by default
WG_MODES = ("route", "natgw", "natgw-off")  # by default over WireGuard: natgw against route
TRANSPORTS = ("underlay", "wg")


@dataclass(frozen=True)
class Family:
    """The address plan of one IP family."""

    version: int
    pod_cidr: str        # both clusters' pods (overlapping modes); cluster1's in route mode
    pod_addr: str        # pod1 (and pod2 in the overlapping modes)
    pod_gw: str          # the gateway's address on the pod link
    pod_len: int         # prefix length of the pod link
    c2_seen_by_c1: str   # how cluster1 addresses cluster2 (overlapping modes)
    c1_seen_by_c2: str   # how cluster2 addresses cluster1
    route_c2_cidr: str   # cluster2's own CIDR in the routing modes (no overlap)
    underlay: tuple[str, str]  # gw1's and gw2's addresses on the underlay link
    underlay_len: int


FAMILY = {
    4: Family(4, "10.244.0.0/16", "10.244.1.10", "10.244.1.1", 24, "10.212.0.0/16",
              "10.221.0.0/16", "10.245.0.0/16", ("192.168.77.1", "192.168.77.2"), 24),
    6: Family(6, "fd00:244::/48", "fd00:244:0:1::10", "fd00:244:0:1::1", 64, "fd00:212::/48",
              "fd00:221::/48", "fd00:245::/48", ("fd00:77::1", "fd00:77::2"), 64),
}
FAMILIES = tuple(FAMILY)
# IPv4's plan under its earlier names (control.py, micro.py and the tests use them).
POD_CIDR, POD_ADDR = FAMILY[4].pod_cidr, FAMILY[4].pod_addr
C2_SEEN_BY_C1, C1_SEEN_BY_C2 = FAMILY[4].c2_seen_by_c1, FAMILY[4].c1_seen_by_c2
ROUTE_C2_CIDR, UNDERLAY = FAMILY[4].route_c2_cidr, FAMILY[4].underlay
EXTRA_C2_CIDR = "10.247.0.0/16"  # a second real range of cluster2 (config-change test)
EXTRA_C2_AS = "10.214.0.0/16"    # ... and how cluster1 would address it
WG_PORT = 51820
WG_MTU = 1420
VERIFY_PORT = 7000  # the check's datagrams, each way
# conntrack's timeout of unreplied UDP in the modes that track (30 s by default): a
# new-flow sample leaves ~10^5 entries, which must be gone before the next sample
# so that every one starts from a near-empty table, never at nf_conntrack_max, and
# no gateway's table lengthens the chains of the one hash all namespaces share.
CT_UDP_TIMEOUT = 3
SINK_PORT = 9  # UDP flood destination port: dropped at pod2's ingress (nft netdev)
GW_CPU, POD_CPU = 1, 0
MAX_LIFETIME = 3600  # seconds: wireguard-go the benchmark starts ends by itself after this
MAC = {"e1": "02:00:00:00:01:0a", "p1": "02:00:00:00:01:01",
       "e2": "02:00:00:00:02:0a", "p2": "02:00:00:00:02:01"}
_TRANSPORT_LETTER = {"underlay": "u", "wg": "w"}


def natgw_knows(key: str) -> bool:
    """Whether this checkout's cluster.yaml has the top-level key (e.g. `fastpath`)."""
    from natgw.config import GatewayConfig  # noqa: PLC0415

    return any(key in (name, f.alias) for name, f in GatewayConfig.model_fields.items())


def natgw_refuses(mode: str) -> str | None:
    """Why this checkout's natgw cannot run `mode` (None: it can): a `fastpath:`
    value it does not have or refuses (natgw-xdp before XDP exists)."""
    spec = MODE_TABLE[mode]
    if spec.fastpath is None:
        return None
    if not natgw_knows("fastpath"):
        return "this natgw has no `fastpath:` setting"
    from natgw.config import ConfigError, parse_config  # noqa: PLC0415

    probe = {"name": "nbprobe", "cidrs": [POD_CIDR], "fastpath": spec.fastpath,
             "peers": [{"name": "peer", "interface": "nbprobe0", "via": UNDERLAY[1],
                        "remote": [{"cidr": POD_CIDR, "as": C2_SEEN_BY_C1}]}]}
    try:
        parse_config(probe, Path("."))
    except ConfigError as e:
        return f"natgw refuses `fastpath: {spec.fastpath}`: {e.reason}"
    return None


def host_in(net: str, ref: str = POD_ADDR) -> str:
    """`ref` (the pod's address by default) moved into `net` by NETMAP."""
    return str(netmap(ref, net))


@dataclass(frozen=True)
class Plan:
    """Addresses and routes of one mode and family: what pod1 sends to, what pod2 must see."""

    mode: str
    transport: str
    family: int
    pod1_addr: str
    pod1_gw: str
    pod2_addr: str
    pod2_gw: str
    prefixlen: int       # of both pod links
    target: str          # the destination pod1 uses for pod2
    pod1_seen_as: str    # the source pod2 sees for pod1
    gw1_routes: str      # routed from gw1 into the peer link
    gw2_routes: str
    wg_allowed: tuple[str, str]  # allowed-ips of gw1's and gw2's peer (non-natgw modes)


def plan(mode: str, transport: str, family: int = 4) -> Plan:
    if mode not in MODE_TABLE or transport not in TRANSPORTS or family not in FAMILY:
        raise LabError(f"unknown mode/transport/family {mode}/{transport}/{family}")
    f = FAMILY[family]
    if not MODE_TABLE[mode].overlapping:
        pod2 = host_in(f.route_c2_cidr, f.pod_addr)
        return Plan(mode, transport, family, f.pod_addr, f.pod_gw, pod2,
                    host_in(f.route_c2_cidr, f.pod_gw), f.pod_len, pod2, f.pod_addr,
                    f.route_c2_cidr, f.pod_cidr, (f.route_c2_cidr, f.pod_cidr))
    return Plan(mode, transport, family, f.pod_addr, f.pod_gw, f.pod_addr, f.pod_gw,
                f.pod_len, host_in(f.c2_seen_by_c1, f.pod_addr),
                host_in(f.c1_seen_by_c2, f.pod_addr), f.c2_seen_by_c1, f.c1_seen_by_c2,
                (f.c2_seen_by_c1, f.c1_seen_by_c2))


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
    """pod1 - gw1 - gw2 - pod2 in one mode over one transport, both IP families."""

    def __init__(self, rec: Record, mode: str, transport: str, hooks: str = "",
                 tx_csum_off: bool = False) -> None:
        """hooks: route mode with natgw's
        programs attached to the peer devices but no mapping matching the traffic (what
        the hooks and programs cost before any translation), by "tcx" links or by "tc"
        clsact + cls_bpf filters (natgw.dataplane.hooks); tx_csum_off: the pods' devices
        send without tx checksum offload (what XDP on veth needs)."""
        if mode not in MODE_TABLE:
            raise LabError(f"unknown mode {mode} (modes: {', '.join(ALL_MODES)})")
        self.spec = MODE_TABLE[mode]
        if hooks and mode != "route":
            raise LabError("natgw hooks without translation: route mode only")
        if hooks not in ("", "tcx", "tc"):
            raise LabError(f"natgw hooks: tcx or tc, not {hooks}")
        self.rec = rec
        self.mode, self.transport, self.hooks = mode, transport, hooks
        self.tx_csum_off = tx_csum_off
        self.plans = {f: plan(mode, transport, f) for f in FAMILIES}
        self.plan = self.plans[4]
        self.tag = (self.spec.letter + _TRANSPORT_LETTER[transport]
                    + {"": "", "tcx": "h", "tc": "c"}[hooks]
                    + ("t" if tx_csum_off else ""))
        p = rec.prefix + self.tag
        self.pod1, self.gw1, self.gw2, self.pod2 = p + "p1", p + "g1", p + "g2", p + "p2"
        self.dev = {d: p + d for d in ("e1", "p1", "u1", "u2", "v1", "v2", "p2", "e2",
                                       "w1", "w2")}
        for name in self.dev.values():
            if len(name) > 15:
                raise LabError(f"device name {name} is longer than 15 characters")
        self.gateways = [p + "1", p + "2"]  # natgw gateway names
        self.configs: list[Path] = []
        self.wg_pids: list[int] = []
        self.extra_installed = 0  # extra mappings on the peer devices now (natgw modes)

    @property
    def key(self) -> str:
        mode = self.mode
        if self.hooks:
            mode = "route+natgw-hooks" + ("-tc" if self.hooks == "tc" else "")
        return f"{mode}/{self.transport}"

    @property
    def peer_dev(self) -> tuple[str, str]:
        """The device of each gateway that leads to the other gateway (IPv4)."""
        return self.peer_devs(4)

    def peer_devs(self, family: int) -> tuple[str, str]:
        """gw1's and gw2's device towards the other gateway for one family: the tunnel
        carries both, the underlay has a veth pair per family."""
        if self.transport == "wg":
            return self.dev["w1"], self.dev["w2"]
        a, b = ("u1", "u2") if family == 4 else ("v1", "v2")
        return self.dev[a], self.dev[b]

    def __repr__(self) -> str:
        return f"Topology({self.key})"

    # -- build ---------------------------------------------------------------

    def _veth(self, ns_a: str, a: str, ns_b: str, b: str) -> None:
        veth(ns_a, self.dev[a], ns_b, self.dev[b], MAC.get(a), MAC.get(b))

    def _rps(self, ns: str, dev: str, cpu: int) -> None:
        path = f"/sys/class/net/{dev}/queues/rx-0/rps_cpus"
        run(in_ns(ns, ["sh", "-c", f"echo {1 << cpu:x} > {path}"]))

    def build(self) -> None:
        for ns in (self.pod1, self.gw1, self.gw2, self.pod2):
            self.rec.netns(ns)
        self._veth(self.pod1, "e1", self.gw1, "p1")
        self._veth(self.pod2, "e2", self.gw2, "p2")
        self._veth(self.gw1, "u1", self.gw2, "u2")
        if self.transport == "underlay":
            self._veth(self.gw1, "v1", self.gw2, "v2")
        for fam, pl in self.plans.items():
            add_address(self.pod1, self.dev["e1"], f"{pl.pod1_addr}/{pl.prefixlen}")
            add_address(self.gw1, self.dev["p1"], f"{pl.pod1_gw}/{pl.prefixlen}")
            add_address(self.pod2, self.dev["e2"], f"{pl.pod2_addr}/{pl.prefixlen}")
            add_address(self.gw2, self.dev["p2"], f"{pl.pod2_gw}/{pl.prefixlen}")
            f = FAMILY[fam]
            if self.transport == "underlay" or fam == 4:  # the tunnel's underlay is IPv4
                a, b = (("u1", "u2") if fam == 4 else ("v1", "v2"))
                add_address(self.gw1, self.dev[a], f"{f.underlay[0]}/{f.underlay_len}")
                add_address(self.gw2, self.dev[b], f"{f.underlay[1]}/{f.underlay_len}")
            ip("-n", self.pod1, "route", "add", pl.gw1_routes, "via", pl.pod1_gw)
            ip("-n", self.pod2, "route", "add", pl.gw2_routes, "via", pl.pod2_gw)
        if self.spec.kind == "natgw":
            # A second real range behind pod2, reachable once a mapping is added.
            ip("-n", self.pod1, "route", "add", EXTRA_C2_AS, "via", self.plan.pod1_gw)
            ip("-n", self.pod2, "addr", "add", f"{host_in(EXTRA_C2_CIDR)}/24",
               "dev", self.dev["e2"])
            ip("-n", self.gw2, "route", "add", EXTRA_C2_CIDR, "via", POD_ADDR)
        for ns in (self.gw1, self.gw2):
            sysctl(ns, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                   "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
        for ns, dev in ((self.gw1, "p1"), (self.gw2, "p2")):
            sysctl(ns, f"net.ipv4.conf.{self.dev[dev]}.rp_filter=0")
            if dev == "p2" or self.transport == "underlay":
                self._rps(ns, self.dev[dev], GW_CPU)
        # What enters either pod stays on the gateway CPU, where forwarding put it:
        # pod2 only drops the flood at its ingress (cheap, the same in every mode),
        # and the generator's CPU keeps headroom so the gateway CPU is the one that
        # saturates. No RPS on the pods' devices: natgw's bpf_redirect_peer hands a
        # packet to the pod's device without the backlog, where RPS would act, so
        # with RPS there only the other modes would move the pods' receive work (TCP
        # ACKs, and the data they release) off the gateway CPU.
        if self.tx_csum_off:  # the pods compute their checksums in full (XDP on veth)
            offloads(self.pod1, self.dev["e1"], "tx", "off")
            offloads(self.pod2, self.dev["e2"], "tx", "off")
            # XDP_REDIRECT into a veth needs NAPI at its peer (GRO on): in every mode of
            # such a run alike, so that the receive path compared is the same.
            offloads(self.pod1, self.dev["e1"], "gro", "on")
            offloads(self.pod2, self.dev["e2"], "gro", "on")
            pairs = [(self.gw1, "u1"), (self.gw2, "u2")]
            if self.transport == "underlay":
                pairs += [(self.gw1, "v1"), (self.gw2, "v2")]
            for ns, dev in pairs:  # the gateways send to each other's XDP devices too
                offloads(ns, self.dev[dev], "tx", "off", "gro", "on")
        run(in_ns(self.pod2, ["nft", "-f", "-"]), input=f"""table netdev sink {{
  chain in {{
    type filter hook ingress device "{self.dev['e2']}" priority 0;
    udp dport {SINK_PORT} drop
  }}
}}
""")
        if self.spec.kind == "natgw":
            self._build_natgw()
            return
        if self.spec.conntrack:
            for ns in (self.gw1, self.gw2):
                sysctl(ns, f"net.netfilter.nf_conntrack_udp_timeout={CT_UDP_TIMEOUT}")
        if self.transport == "wg":
            self._build_wg()
        self._build_routes()
        if self.hooks:
            self._attach_hooks()
        if self.spec.kind == "route" and self.spec.conntrack:
            for ns in (self.gw1, self.gw2):
                run(in_ns(ns, ["nft", "-f", "-"]),
                    input=conntrack_ruleset(f"{self.rec.prefix}kube"))
        elif self.spec.kind == "iptables":
            self._build_iptables()
        elif self.spec.kind == "nftables":
            self._build_nftables()

    def _gw_peer(self, family: int) -> list[tuple[str, str, str, str, str]]:
        """Per gateway, for one family: (netns, peer device, the other side's underlay
        address, what it routes there, how the peer sees its own cluster)."""
        d1, d2 = self.peer_devs(family)
        f, pl = FAMILY[family], self.plans[family]
        return [(self.gw1, d1, f.underlay[1], pl.gw1_routes, f.c1_seen_by_c2),
                (self.gw2, d2, f.underlay[0], pl.gw2_routes, f.c2_seen_by_c1)]

    def _build_routes(self) -> None:
        for fam in FAMILIES:
            for ns, dev, other, net, _ in self._gw_peer(fam):
                if self.transport == "wg":
                    ip("-n", ns, "route", "add", net, "dev", dev)
                else:
                    ip("-n", ns, "route", "add", net, "via", other, "dev", dev)

    def _build_iptables(self) -> None:
        for fam, tool in ((4, "iptables-legacy"), (6, "ip6tables-legacy")):
            for ns, dev, _, _, seen in self._gw_peer(fam):
                for rule in iptables_rules(FAMILY[fam].pod_cidr, seen, dev):
                    run(in_ns(ns, [tool, "-w", *rule]))

    def _build_nftables(self) -> None:
        for fam in FAMILIES:
            for ns, dev, _, _, seen in self._gw_peer(fam):
                run(in_ns(ns, ["nft", "-f", "-"]),
                    input=nftables_ruleset(FAMILY[fam].pod_cidr, seen, dev,
                                           f"{self.rec.prefix}nat"))

    def _attach_hooks(self) -> None:
        """natgw's programs on both (IPv4) peer devices through the library (by
        self.hooks' mechanism), with a mapping that matches none of the benchmark's
        addresses."""
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
        for i, (ns, dev, other, _, _) in enumerate(self._gw_peer(4)):
            self.wg_pids.append(self.rec.start_wireguard_go(ns, dev, cpu=GW_CPU,
                                                            lifetime=MAX_LIFETIME))
            allowed = ",".join(self.plans[f].wg_allowed[i] for f in FAMILIES)
            run(in_ns(ns, ["wg", "set", dev, "private-key", str(keyfiles[i]),
                           "listen-port", str(WG_PORT), "peer", pubs[1 - i], "endpoint",
                           f"{other}:{WG_PORT}", "allowed-ips", allowed]))
            ip("-n", ns, "link", "set", dev, "mtu", str(WG_MTU), "up")

    def natgw_config(self, i: int, extra_mapping: bool = False,
                     pubs: list[str] | None = None, keyfile: Path | None = None) -> dict:
        """The cluster.yaml of gateway i (0 or 1): both families, one remote mapping each."""
        def remote(fam: int) -> list[dict]:
            f = FAMILY[fam]
            out = [{"cidr": f.pod_cidr, "as": (f.c2_seen_by_c1, f.c1_seen_by_c2)[i]}]
            if fam == 4 and extra_mapping and i == 0:
                out.append({"cidr": EXTRA_C2_CIDR, "as": EXTRA_C2_AS})
            return out

        cfg: dict = {"name": self.gateways[i], "cidrs": [FAMILY[f].pod_cidr for f in FAMILIES]}
        if self.spec.fastpath is not None:
            cfg["fastpath"] = self.spec.fastpath
        if keyfile is not None:
            cfg["privateKeyFile"] = str(keyfile)
        cfg.update({"engine": "wireguard-go", "mtu": WG_MTU,
                    "metrics": f"127.0.0.1:{_metrics_port(self.rec.prefix, self.tag, i)}"})
        if self.transport == "wg":
            cfg["peers"] = [{"name": "peer", "device": self.peer_devs(4)[i],
                             "publicKey": (pubs or ["", ""])[1 - i],
                             "endpoint": f"{UNDERLAY[1 - i]}:{WG_PORT}", "listenPort": WG_PORT,
                             "remote": remote(4) + remote(6)}]
        else:  # an interface: peer has one next hop: one peer (and veth pair) per family
            cfg["peers"] = [{"name": name, "interface": self.peer_devs(fam)[i],
                             "via": FAMILY[fam].underlay[1 - i], "remote": remote(fam)}
                            for name, fam in (("peer", 4), ("peer6", 6))]
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

    def peer_tables(self) -> list[tuple[str, str, str]]:
        """(gateway, netns, device) of both gateways' IPv4 peer devices."""
        if self.spec.kind != "natgw":
            raise LabError("extra mappings exist only in the natgw modes")
        return list(zip(self.gateways, (self.gw1, self.gw2), self.peer_dev, strict=True))

    def set_extra_mappings(self, n: int) -> None:
        """Make the first n of extra_mappings() the extra ones installed on both (IPv4)
        peer devices, adding or removing the difference in bulk through the library."""
        from natgw.dataplane import Dataplane, Mapping  # noqa: PLC0415

        have = self.extra_installed
        if n == have:
            return
        diff = [Mapping.parse("remote", c, a)
                for c, a in extra_mappings(max(n, have))[min(n, have):]]
        for gw, ns, dev in self.peer_tables():
            with Dataplane.open(gw) as dp:
                idx = dp.ifindex(dev, ns)
                if n > have:
                    dp.tables.add_mappings(idx, diff)
                else:
                    dp.tables.remove_mappings(idx, diff)
        self.extra_installed = n

    def time_extra_mappings(self, n: int) -> list[dict]:
        """Install n extra mappings on both peer devices as bench.mappings.install
        times it (the public call at low and full occupancy, the bulk), then remove
        them: the times, per gateway."""
        from bench.mappings import install  # noqa: PLC0415

        self.set_extra_mappings(0)
        try:
            return [install(gw, ns, dev, extra_mappings(n)).as_dict()
                    for gw, ns, dev in self.peer_tables()]
        finally:
            self.extra_installed = n  # what install left, removed below
            self.set_extra_mappings(0)

    def prepare(self) -> None:
        """Bring the topology back to what its key names: no extra mappings."""
        self.set_extra_mappings(0)

    def engine_pids(self) -> list[int]:
        """PIDs of the wireguard-go processes of this topology (none over the underlay)."""
        if self.transport != "wg":
            return []
        if self.spec.kind == "natgw":
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

    def fastpath_decisions(self) -> dict[str, int]:
        """natgw's fast-path decisions so far by reason (redirect_eth, no_neigh, ...),
        summed over both gateways and their devices; {} outside the natgw modes (or
        with a natgw that counts none)."""
        if self.spec.kind != "natgw":
            return {}
        from natgw.dataplane import Dataplane  # noqa: PLC0415

        out: dict[str, int] = {}
        for gw in self.gateways:
            with Dataplane.open(gw) as dp:
                count = getattr(dp.tables, "fast_stats_of", None)
                for idx in dp.tables.all_devices() if count else ():
                    for reason, n in count(idx).items():
                        out[reason] = out.get(reason, 0) + n
        return {k: v for k, v in sorted(out.items()) if v}

    # -- checks -----------------------------------------------------------------

    def verify(self, family: int = 4, timeout: float = 10.0,
               port: int = VERIFY_PORT) -> tuple[str, str]:
        """One UDP datagram each way; returns (pod1 as pod2 saw it, pod2 as pod1 saw it)."""
        pl = self.plans[family]
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        rx2 = netns_socket(self.pod2, af, socket.SOCK_DGRAM)
        rx2.bind((pl.pod2_addr, port))
        rx2.settimeout(0.2)
        tx1 = netns_socket(self.pod1, af, socket.SOCK_DGRAM)
        tx1.bind((pl.pod1_addr, port))
        tx1.settimeout(0.2)
        try:
            deadline = time.monotonic() + timeout
            seen2 = seen1 = None
            while seen2 is None:  # WireGuard needs a handshake, IPv6 neighbours: retry
                if time.monotonic() > deadline:
                    raise LabError(f"{self.key}: pod1 -> {pl.target} got no answer")
                tx1.sendto(b"ping", (pl.target, port))
                try:
                    seen2 = rx2.recvfrom(100)[1][0]
                except TimeoutError:
                    continue
            while seen1 is None:
                if time.monotonic() > deadline:
                    raise LabError(f"{self.key}: pod2 -> {seen2} got no answer")
                rx2.sendto(b"pong", (seen2, port))
                try:
                    seen1 = tx1.recvfrom(100)[1][0]
                except TimeoutError:
                    continue
            return seen2, seen1
        finally:
            rx2.close()
            tx1.close()

    def check(self) -> None:
        """verify() for each family, and insist on the addresses the mode promises and
        on conntrack seeing the datagrams exactly in the modes that have it."""
        for fam, pl in self.plans.items():
            seen2, seen1 = self.verify(fam)
            if (seen2, seen1) != (pl.pod1_seen_as, pl.target):
                raise LabError(f"{self.key}: pod2 saw pod1 as {seen2} (want "
                               f"{pl.pod1_seen_as}), pod1 saw pod2 as {seen1} "
                               f"(want {pl.target})")
            for ns in (self.gw1, self.gw2):
                n = len(conntrack_entries(ns, fam, VERIFY_PORT))
                if self.spec.conntrack and n == 0:
                    raise LabError(f"{self.key}: no IPv{fam} conntrack entry in {ns}")
                if not self.spec.conntrack and n:
                    raise LabError(f"{self.key}: {n} IPv{fam} conntrack entries in {ns}, "
                                   "which should not track connections")

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


def conntrack_entries(ns: str, family: int, port: int) -> list[str]:
    """A namespace's conntrack entries of UDP port `port` to `port` in one family
    (/proc/net/nf_conntrack is per namespace; empty where nothing tracks)."""
    r = run(in_ns(ns, ["cat", "/proc/net/nf_conntrack"]), check=False, timeout=10)
    name = f"ipv{family}"
    return [ln for ln in r.stdout.splitlines()
            if ln.split()[:1] == [name] and " udp " in ln
            and f"sport={port} dport={port}" in ln]


def _natgw_down(netns: str, config: str) -> None:
    """`natgw down`, after emptying the tables (it removes mappings one by one)."""
    from bench.mappings import clear_mappings  # noqa: PLC0415

    clear_mappings(Path(config).stem)
    run([NATGW, "--netns", netns, "down", config], timeout=120, check=False)


def _metrics_port(prefix: str, tag: str, i: int) -> int:
    """A port for the foreground natgw's metrics, stable per run and gateway."""
    h = int.from_bytes(f"{prefix}{tag}{i}".encode()[-6:], "big")
    return 20000 + h % 20000


class WithMappings:
    """A natgw topology seen with `extra` more mappings per gateway (the mapping
    series). The series measures one gateway pair with 1, 100 and 10,000 mappings in
    turn, installing or removing the difference before each sample (`prepare`), so
    that a pair of samples differs in the tables alone, not also in the namespaces,
    devices and memory that carried the traffic. Samples go under
    "natgw-m<N>/<transport>"; the rest is the topology's."""

    def __init__(self, topo: Topology, extra: int) -> None:
        self.topo, self.extra = topo, extra

    @property
    def key(self) -> str:
        return f"{self.topo.mode}-m{self.extra + 1}/{self.topo.transport}"

    def prepare(self) -> None:
        self.topo.set_extra_mappings(self.extra)

    def __getattr__(self, name: str) -> object:
        return getattr(self.topo, name)  # what a sample reads: namespaces, devices, plans

    def __repr__(self) -> str:
        return f"WithMappings({self.key})"
