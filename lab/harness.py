"""The netns harness: N clusters joined by natgw gateways, by hand or from tests.

By hand (as root, from the repository root; scripts/netns/up.sh and down.sh wrap it)::

    python -m lab up 3                  # three clusters; prints the run prefix
    python -m lab up 2 --ipv6           # dual stack pods
    python -m lab up 2 --plain 2        # cluster 2's gateway is plain WireGuard
    python -m lab up 2 --interface      # gateways on the bare underlay, no tunnel
    python -m lab up 2 --routed         # distinct pod CIDRs, peers without `as`
    python -m lab up --hub 3            # one natgw hub and 3 clients (see lab.hub)
    python -m lab up 3 --pipes          # plus pipes: pod i reaches pod j's port 8080 at
                                        # its own gateway's port 8000 + j (pipe web<j>)
    python -m lab up 2 --replicas 2     # two natgw gateways per cluster, pods over ECMP
    python -m lab up 2 --replicas 2 --conntrack   # the same with conntrack NAT gateways
    python -m lab list                  # runs that exist
    python -m lab down [PREFIX]         # remove one run, or every run not in use
    python -m lab demo                  # two clusters, an HTTP fetch (make demo)

`down` without a prefix keeps runs whose builder still runs (a test session
removes its own runs); `demo` replaces the previous demo only.

From Python (the e2e tests do this in a fixture)::

    from lab.harness import Topology, build, destroy
    run = build(Topology(clusters=2, ipv6=True))
    try:
        run.topology.addr_of(1, 2, 6)   # how cluster 1's pod reaches cluster 2's pod
    finally:
        destroy(run)

The topology. Per cluster i (1-based) a gateway netns <p>g<i> and a pod netns
<p>p<i> (p: the run prefix), joined by a veth (<p>p<i>e in the pod, <p>g<i>p in
the gateway). Every gateway links to every other by a veth pair, the underlay:
<p>u<i><j> in gateway i, 192.168.<i><j>.0/24 with .1 on the lower-numbered
side. Gateways connect over WireGuard on it (device <p>w<i><j> in gateway i,
listening on port 51820 + j), or with `interface: <p>u<i><j>` and `via:` the
other side straight on it (--interface: no tunnel, natgw translates on the veth).

Addresses. By default every cluster has the same pods: 10.244.1.10/24 behind
10.244.1.1 (with --ipv6 also fd00:244::10/64 behind fd00:244::1). Cluster i
knows cluster j as 10.<100 + 10 i + j>.0.0/16 (and fd00:<100 + 10 i + j>::/64),
a different range for every ordered pair, so a swapped or mis-chosen mapping
cannot pass: from cluster 1's pod, cluster 2's pod is 10.112.1.10, and cluster 2
sees cluster 1's pod as 10.121.1.10. Pods route only those ranges, via their
gateway. --routed gives cluster i the pods 10.<240 + i>.0.0/16 (fd00:<240 + i>::/64)
instead and peers without `as`: plain routing through natgw.

Gateways. Every gateway runs `natgw --netns <p>g<i> up --detach` on its file
<workdir>/c<i>.yaml, except --plain ones: those know nothing of the overlap.
They get wireguard-go (started here as `wireguard-go -f`, in its own session,
its PID recorded), configured with `wg set`, and routes for their view of the
other clusters, which natgw on the other side provides with `local:` mappings.
Over --interface a plain gateway has only routes.

Replicas (--replicas R, 2 to 4). Cluster i has R gateway namespaces
<p>g<i><x> (x = a, b, c, d) and every device name carries the replica's letter:
<p>w1a2b is replica a of cluster 1's tunnel to replica b of cluster 2. Every
replica peers with every replica of the other clusters (R x R tunnels per pair
of clusters), each over its own underlay veth <p>u1a2b, one /28 of
192.168.<i><j>.0/24 per pair of replicas. The replicas of a cluster run the same
file but for what is per host: `name`, `privateKeyFile`, the metrics port and
each peer's `endpoint` (the other end of this host's own underlay link; the
listen ports are the same on every replica). The peers of one remote cluster
are one `group: c<j>`, with `persistentKeepalive` 1 s by default (--keepalive):
health needs something received. The gateways run `natgw up` in the foreground
(health is the foreground's), started here and ended by PID; their metrics are
on free loopback ports. The pod has a veth to every replica (<p>p<i>e<x> in the
pod, <p>g<i><x>p in the gateway), replica x being 10.244.1.<n> (a: .1, b: .2,
...), its own address on its loopback, and its routes to the other clusters
over a nexthop group of the replicas (`ip nexthop`, id 100), hashing flows by
ports (fib_multipath_hash_policy 1, also in the gateways): ECMP. The kernel
drops a member whose link loses its carrier or goes away, like a router's
link detection; set_pod_route() forces paths or weights. IPv4 only.

Conntrack (--conntrack). No natgw: every gateway is wireguard-go configured
with `wg`, a route (a multipath route over a group's devices) to its view of
each other cluster, and iptables-legacy NETMAP of its own cluster (lab.conntrack,
the benchmark's iptables mode): the competitor, for the contrast on asymmetric
paths and failover.

Pipes (--pipes, over tunnels). Every natgw gateway i also has, for each other
natgw gateway j, the pipe web<j> on port 8000 + j with peer c<j>, and its own
pipe web<i> whose remote is its pod's port 8080, where an HTTP server runs
(`python -m http.server`, a page naming the cluster). So from pod i,
`curl <pod gateway>:800<j>` (10.244.1.1:8002 by default) fetches cluster j's page
through the pipe, with no route or mapping involved. Gateways with pipes run
`natgw up` in the foreground (it serves them), started here and ended by PID.

Checksums. Veths vouch for no checksum (rx off everywhere), so a pod verifies
every checksum it receives in software, like a host behind a real NIC. The
gateways' veth ends and tunnel devices have tx checksumming off: what a gateway
sends is complete on the wire, and so in a capture on it (the capture tap sees
a packet after the kernel completed it). Pods keep TSO, so natgw sees their
CHECKSUM_PARTIAL super-packets, except with fastpath xdp: XDP_REDIRECT loses
CHECKSUM_PARTIAL, so there pods send complete checksums (tx off, hence no TSO),
and every veth end that receives redirected frames (pod ends, underlay) has GRO
on: a veth receives XDP frames only with NAPI. A gateway's first address is its pod-side one,
which it takes as the source of the ICMP errors it sends into a tunnel (the
peer's allowed-ips admit only cluster addresses). Pods have rp_filter off: an
ICMP error over --interface comes from an underlay address they do not route.

Safety. Nothing is connected to the root namespace and no default route is
added anywhere. Names carry the run prefix (5 characters, checked unused, also
by wireguard-go's host-wide sockets). Everything made is recorded in
/run/natgw/harness/<prefix>.json as it is made, and `down` (destroy) reads it:
processes it started are ended by PID, gateways brought down, namespaces deleted.
A build that fails removes what it made.

Looking around: `ip netns exec <p>p1 ping 10.112.1.10`, `ip netns exec <p>g1 wg
show <p>w12`, `natgw --netns <p>g1 status <workdir>/c1.yaml`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from lab.conntrack import iptables_rules
from lab.keys import new_key
from lab.net import (
    NATGW,
    LabError,
    add_address,
    free_port,
    ip,
    natgw,
    offloads,
    sh,
    sysctl,
    unique_prefix,
    veth,
)
from lab.record import Record
from natgw.netmap import netmap

HARNESS_DIR = Path("/run/natgw/harness")
TUNNEL_MTU = 1420
WG_PORT = 51820
REPLICA_LETTERS = "abcd"  # replica r of cluster i: gateway netns <p>g<i><letter>
POD_GROUP = 100  # the pods' nexthop group over their gateway replicas (ip nexthop id)
PIPE_PORT_BASE = 8000  # pipe web<j> listens on 8000 + j
POD_WEB_PORT = 8080  # the pods' HTTP servers (--pipes)

# Kept for the demo and for readers: the overlapping default.
POD_ADDR = "10.244.1.10"


def _host(net: str, host_bits: str) -> str:
    return str(netmap(host_bits, net))


@dataclass(frozen=True)
class Topology:
    """What to build, and every address in it (cluster numbers are 1-based)."""

    clusters: int = 2
    ipv6: bool = False  # dual stack pods
    plain: tuple[int, ...] = ()  # clusters whose gateway is plain WireGuard, no natgw
    link: str = "tunnel"  # tunnel: WireGuard over the underlay; interface: no tunnel
    overlap: bool = True  # every cluster on the same pod CIDR, remapped with `as`
    hub: int = 0  # N > 0: one natgw hub and N clients instead (lab.hub), nothing else applies
    pipes: bool = False  # pipes web<j> between the natgw gateways (see the module doc)
    replicas: int = 1  # gateways per cluster, a group over ECMP (see the module doc)
    conntrack: bool = False  # every gateway: WireGuard + iptables NETMAP (lab.conntrack)
    keepalive: int | None = None  # persistentKeepalive of every peer (default: 1 s with replicas)
    stale_after: int | None = None  # staleAfter (s) of every grouped peer (None: natgw's default)
    fastpath: str = "auto"  # the natgw gateways' fastpath: (auto: the key is left out)

    def check(self) -> None:
        if self.hub:
            if not 1 <= self.hub <= 9:
                raise ValueError("hub: 1 to 9 clients (names and addresses use one digit)")
            if self.ipv6 or self.plain or self.link != "tunnel" or not self.overlap:
                raise ValueError("--hub takes no other option")
            return
        if not 2 <= self.clusters <= 9:
            raise ValueError("clusters: 2 to 9 (names and addresses use one digit)")
        if self.link not in ("tunnel", "interface"):
            raise ValueError(f"link {self.link!r}: tunnel or interface")
        if any(not 1 <= i <= self.clusters for i in self.plain):
            raise ValueError(f"plain {self.plain}: not clusters of 1..{self.clusters}")
        if self.overlap and len(set(self.plain)) > 1:
            raise ValueError("two plain gateways cannot join overlapping clusters: "
                             "nobody would translate between them")
        if self.pipes and self.link != "tunnel":
            raise ValueError("--pipes runs over WireGuard tunnels, not --interface")
        if self.ipv6 and self.link == "interface":
            raise ValueError("--interface is IPv4 only: an interface peer has one `via`, "
                             "and the underlay is IPv4")
        if not 1 <= self.replicas <= len(REPLICA_LETTERS):
            raise ValueError(f"replicas: 1 to {len(REPLICA_LETTERS)}")
        if (self.replicas > 1 or self.conntrack) and (
                self.ipv6 or self.plain or self.pipes or self.link != "tunnel"
                or not self.overlap):
            raise ValueError("--replicas and --conntrack: IPv4 clusters on the same pod CIDR "
                             "over tunnels, without --plain, --pipes or --ipv6")
        if self.keepalive is not None and not 0 <= self.keepalive <= 65535:
            raise ValueError("keepalive: 0 to 65535 seconds")

    @property
    def families(self) -> tuple[int, ...]:
        return (4, 6) if self.ipv6 else (4,)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """Every ordered pair of clusters."""
        n = range(1, self.clusters + 1)
        return [(i, j) for i in n for j in n if i != j]

    def is_plain(self, i: int) -> bool:
        """Cluster i's gateway knows nothing of the overlap (--plain): the other side's
        natgw shows its cluster to it. Conntrack gateways translate for themselves."""
        return i in self.plain

    @property
    def replica_ids(self) -> range:
        return range(1, self.replicas + 1)

    def suffix(self, r: int) -> str:
        """Replica r's letter in names ("" with one replica: the names of old)."""
        return "" if self.replicas == 1 else REPLICA_LETTERS[r - 1]

    @property
    def persistent_keepalive(self) -> int | None:
        """Every peer's keepalive: health needs something received, so replicas get 1 s."""
        if self.keepalive is None:
            return 1 if self.replicas > 1 else None
        return self.keepalive or None

    def wg_port(self, j: int, s: int = 1) -> int:
        """The port on which a gateway's device for replica s of cluster j listens."""
        return WG_PORT + j if self.replicas == 1 else WG_PORT + 10 * j + s

    def pod_cidr(self, i: int, v: int = 4) -> str:
        """Cluster i's real pod network."""
        if self.overlap:
            return "10.244.0.0/16" if v == 4 else "fd00:244::/64"
        return f"10.{240 + i}.0.0/16" if v == 4 else f"fd00:{240 + i}::/64"

    def pod_addr(self, i: int, v: int = 4) -> str:
        """Cluster i's pod, by its real address: x.x.1.10 or x::10."""
        return _host(self.pod_cidr(i, v), "0.0.1.10" if v == 4 else "::10")

    def pod_gw(self, i: int, v: int = 4, r: int = 1) -> str:
        """Cluster i's gateway (replica r) as its pod sees it: x.x.1.r or x::1."""
        return _host(self.pod_cidr(i, v), f"0.0.1.{r}" if v == 4 else "::1")

    def pod_prefixlen(self, v: int) -> int:
        return 24 if v == 4 else 64

    def view(self, i: int, j: int, v: int = 4) -> str:
        """The network by which cluster i reaches cluster j's pods."""
        if not self.overlap:
            return self.pod_cidr(j, v)
        return f"10.{100 + 10 * i + j}.0.0/16" if v == 4 else f"fd00:{100 + 10 * i + j}::/64"

    def addr_of(self, i: int, j: int, v: int = 4) -> str:
        """The address by which cluster i's pod reaches cluster j's pod.

        It is also the address under which cluster j's pod sees cluster i's pod
        with i and j swapped: a server in j sees a client of i as addr_of(j, i).
        """
        return str(netmap(self.pod_addr(j, v), self.view(i, j, v)))

    def wire(self, i: int, j: int, v: int = 4) -> tuple[str, str]:
        """(src, dst) of a packet from i's pod to j's pod between the two gateways.

        natgw puts real addresses on the wire; only the side of a plain gateway
        is seen through that gateway's own view (natgw's `local` mapping).
        """
        src = self.addr_of(j, i, v) if self.is_plain(j) else self.pod_addr(i, v)
        dst = self.addr_of(i, j, v) if self.is_plain(i) else self.pod_addr(j, v)
        return src, dst

    def underlay_addr(self, i: int, j: int, r: int = 1, s: int = 1) -> str:
        """Gateway i's (replica r's) address on its underlay link to gateway j (replica s).

        192.168.<lo><hi>.0/24 per pair of clusters, .1 on the lower-numbered side;
        with replicas, one /28 of it per pair of replicas.
        """
        lo, hi = min(i, j), max(i, j)
        r_lo, r_hi = (r, s) if i == lo else (s, r)
        block = 16 * ((r_lo - 1) * self.replicas + r_hi - 1)
        return f"192.168.{lo}{hi}.{block + (1 if i == lo else 2)}"

    @property
    def underlay_prefixlen(self) -> int:
        return 24 if self.replicas == 1 else 28


@dataclass
class Run(Record):
    """One built topology, recorded as it is made (gateways: cluster.yaml -> netns)."""

    topology: Topology = field(default_factory=Topology)
    owner: int = 0  # PID of the process that built it (a test session, or the CLI that exited)
    label: str = ""  # "demo" for the demo's run

    def in_use(self) -> bool:
        """Its builder still runs (e.g. a test session that will remove it itself)."""
        return self.owner not in (0, os.getpid()) and Path(f"/proc/{self.owner}").exists()

    @property
    def n(self) -> int:
        return self.topology.hub or self.topology.clusters

    def gw(self, i: int, r: int = 1) -> str:
        """Cluster i's gateway netns (replica r)."""
        return f"{self.prefix}g{i}{self.topology.suffix(r)}"

    def pod(self, i: int) -> str:
        """Cluster i's pod netns."""
        return f"{self.prefix}p{i}"

    def config(self, i: int, r: int = 1) -> str:
        """Cluster i's cluster.yaml (natgw gateways only; replica r's)."""
        return str(Path(self.workdir) / f"c{i}{self.topology.suffix(r)}.yaml")

    def pod_link(self, i: int, r: int = 1) -> str:
        """The gateway's end of the veth to its pod (in gw(i, r))."""
        return f"{self.prefix}g{i}{self.topology.suffix(r)}p"

    def pod_end(self, i: int, r: int = 1) -> str:
        """The pod's end of the veth to its gateway (replica r)."""
        return f"{self.prefix}p{i}e{self.topology.suffix(r)}"

    def underlay_dev(self, i: int, j: int, r: int = 1, s: int = 1) -> str:
        """Gateway i's (replica r's) end of the underlay veth to gateway j (replica s)."""
        t = self.topology
        return f"{self.prefix}u{i}{t.suffix(r)}{j}{t.suffix(s)}"

    def tunnel_dev(self, i: int, j: int, r: int = 1, s: int = 1) -> str:
        """Gateway i's (replica r's) WireGuard device for cluster j (replica s)."""
        t = self.topology
        return f"{self.prefix}w{i}{t.suffix(r)}{j}{t.suffix(s)}"

    def link_dev(self, i: int, j: int, r: int = 1, s: int = 1) -> str:
        """The device in gateway i (replica r) that carries cluster j's (replica s's)
        pod traffic."""
        if self.topology.link == "tunnel":
            return self.tunnel_dev(i, j, r, s)
        return self.underlay_dev(i, j, r, s)

    def replicas(self) -> list[tuple[int, int]]:
        """Every gateway: (cluster, replica)."""
        t = self.topology
        return [(i, r) for i in range(1, t.clusters + 1) for r in t.replica_ids]

    @classmethod
    def from_json(cls, data: dict) -> Run:
        data = dict(data)
        if "topology" not in data:  # a run recorded before topologies existed
            data["topology"] = {"clusters": data.pop("n")}
        if "configs" in data:  # recorded as netns -> config before the common record
            data["gateways"] = {cfg: ns for ns, cfg in data.pop("configs").items()}
        topo = dict(data["topology"], plain=tuple(data["topology"].get("plain", ())))
        # A run recorded by another checkout may know options this one does not: its
        # record (namespaces, processes, gateways) is all that removing it needs.
        known = {f.name for f in fields(Topology)}
        topo = {k: v for k, v in topo.items() if k in known}
        return super().from_json(dict(data, topology=Topology(**topo)))


# --- build -----------------------------------------------------------------------------


def build(topology: Topology | int = 2, prefix: str | None = None, label: str = "") -> Run:
    """Create the clusters and bring their gateways up; returns the recorded run.

    On failure everything made so far is removed before the error propagates.
    """
    topo = Topology(clusters=topology) if isinstance(topology, int) else topology
    topo.check()
    # 5 characters, unused by any netns, WireGuard socket or recorded run.
    prefix = prefix or unique_prefix("h", also=(HARNESS_DIR,))
    run = Run.create(HARNESS_DIR, prefix, topology=topo, owner=os.getpid(), label=label)
    try:
        _build(run)
    except BaseException:
        destroy(run)
        raise
    return run


def _build(run: Run) -> None:
    if run.topology.hub:
        from lab.hub import build_hub  # noqa: PLC0415

        build_hub(run)
        return
    topo, n = run.topology, run.topology.clusters
    for i in range(1, n + 1):
        for r in topo.replica_ids:
            run.netns(run.gw(i, r))
        run.netns(run.pod(i))
        # Before any device exists, so that every device inherits it.
        sysctl(run.pod(i), "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
        if topo.replicas == 1:
            _pod_link(run, i)
        else:
            _pod_links(run, i)
    for i, j in topo.pairs:
        if i > j:
            continue
        for r in topo.replica_ids:
            for s in topo.replica_ids:
                veth(run.gw(i, r), run.underlay_dev(i, j, r, s),
                     run.gw(j, s), run.underlay_dev(j, i, s, r))
                for a, b, ra, rb in ((i, j, r, s), (j, i, s, r)):
                    add_address(run.gw(a, ra), run.underlay_dev(a, b, ra, rb),
                                f"{topo.underlay_addr(a, b, ra, rb)}/{topo.underlay_prefixlen}")
                    offloads(run.gw(a, ra), run.underlay_dev(a, b, ra, rb),
                             "rx", "off", "tx", "off",
                             *(("gro", "on") if topo.fastpath == "xdp" else ()))
    pubs = {(i, r): new_key(_keyfile(run, i, r)) for i, r in run.replicas()}
    foreground = []
    for i, r in run.replicas():
        if topo.replicas > 1:  # flows, not host pairs, spread over the group
            sysctl(run.gw(i, r), "net.ipv4.fib_multipath_hash_policy=1")
        if topo.is_plain(i) or topo.conntrack:
            _wireguard_gateway(run, i, r, pubs)
        elif _natgw_gateway(run, i, r, pubs):
            foreground.append((i, r))
    start_foregrounds(run, foreground)
    for i, r in run.replicas():
        if topo.link == "tunnel":
            for j, s in run.replicas():
                if j != i:
                    offloads(run.gw(i, r), run.tunnel_dev(i, j, r, s), "tx", "off")
    if topo.replicas > 1:
        wait_handshakes(run)
    if topo.pipes:
        _pod_servers(run)


def _pod_link(run: Run, i: int) -> None:
    """One gateway: a veth to the pod, a /24 (/64) on it, the pod's routes via the gateway."""
    topo = run.topology
    veth(run.pod(i), run.pod_end(i), run.gw(i), run.pod_link(i))
    for v in topo.families:
        plen = topo.pod_prefixlen(v)
        add_address(run.pod(i), run.pod_end(i), f"{topo.pod_addr(i, v)}/{plen}")
        add_address(run.gw(i), run.pod_link(i), f"{topo.pod_gw(i, v)}/{plen}")
        for j in range(1, topo.clusters + 1):
            if j != i:
                ip("-n", run.pod(i), f"-{v}", "route", "add", topo.view(i, j, v),
                   "via", topo.pod_gw(i, v))
    offloads(run.pod(i), run.pod_end(i), "rx", "off")
    if topo.fastpath == "xdp":
        # XDP_REDIRECT loses CHECKSUM_PARTIAL: the pod sends complete checksums. GRO
        # gives its end NAPI, without which a veth receives no redirected frame.
        offloads(run.pod(i), run.pod_end(i), "tx", "off", "gro", "on")
    offloads(run.gw(i), run.pod_link(i), "rx", "off", "tx", "off")


def _pod_links(run: Run, i: int) -> None:
    """Replicas: a veth from the pod to every replica, and the pod's routes over a nexthop
    group of them (ECMP, hashing flows by ports).

    The pod's address is on its loopback, so that no replica's link owns it. A
    nexthop group, unlike a multipath route, loses only the member whose link
    loses its carrier or goes away (a multipath route is deleted whole when one
    nexthop's device is): the kernel does for the pod what a router's link
    detection would.
    """
    topo, pod = run.topology, run.pod(i)
    sysctl(pod, "net.ipv4.fib_multipath_hash_policy=1")
    add_address(pod, "lo", f"{topo.pod_addr(i)}/32")
    for r in topo.replica_ids:
        veth(pod, run.pod_end(i, r), run.gw(i, r), run.pod_link(i, r))
        add_address(run.gw(i, r), run.pod_link(i, r), f"{topo.pod_gw(i, 4, r)}/24")
        ip("-n", pod, "route", "add", topo.pod_gw(i, 4, r), "dev", run.pod_end(i, r),
           "src", topo.pod_addr(i))
        offloads(pod, run.pod_end(i, r), "rx", "off")
        offloads(run.gw(i, r), run.pod_link(i, r), "rx", "off", "tx", "off")
    set_pod_route(run, i)
    for j in range(1, topo.clusters + 1):
        if j != i:
            ip("-n", pod, "route", "add", topo.view(i, j), "nhid", str(POD_GROUP),
               "src", topo.pod_addr(i))


def set_pod_route(run: Run, i: int, weights: dict[int, int] | None = None) -> None:
    """Cluster i's pod reaches the other clusters over these replicas (replica -> weight;
    default: all, equal). One replica forces a path; a member the kernel removed (its
    link went down or away) is put back if its link is up."""
    topo, pod = run.topology, run.pod(i)
    weights = weights or dict.fromkeys(topo.replica_ids, 1)
    for r in weights:
        ip("-n", pod, "nexthop", "replace", "id", str(r), "via", topo.pod_gw(i, 4, r),
           "dev", run.pod_end(i, r))
    ip("-n", pod, "nexthop", "replace", "id", str(POD_GROUP), "group",
       "/".join(f"{r},{w}" for r, w in sorted(weights.items())))


def set_tunnel(run: Run, i: int, r: int, j: int, s: int, up: bool) -> None:
    """The tunnel between gateways (i, r) and (j, s) down (or up) at both ends: the
    kernel skips a down device's nexthop in a multipath route, and natgw's health
    takes the member out of its route."""
    for a, ra, b, rb in ((i, r, j, s), (j, s, i, r)):
        ip("-n", run.gw(a, ra), "link", "set", run.tunnel_dev(a, b, ra, rb),
           "up" if up else "down")


def use_paths(run: Run, out: dict[int, int], cut: set[tuple[int, int, int, int]] = frozenset()
              ) -> None:
    """Force paths: cluster i's pod leaves only through replica out[i]; the tunnels
    (i, r, j, s) in `cut` are down (both ends), every other tunnel up."""
    for i, r in out.items():
        set_pod_route(run, i, {r: 1})
    for i, r in run.replicas():
        for j, s in run.replicas():
            if i < j:
                set_tunnel(run, i, r, j, s, up=(i, r, j, s) not in cut and
                           (j, s, i, r) not in cut)


def wait_handshakes(run: Run, timeout: float = 60) -> None:
    """Until every tunnel of every gateway has had a handshake (the keepalives start them)."""
    deadline = time.monotonic() + timeout
    for i, r in run.replicas():
        for j, s in run.replicas():
            if j == i:
                continue
            dev = run.tunnel_dev(i, j, r, s)
            while not any(line.split()[-1] != "0" for line in
                          sh(run.gw(i, r), "wg", "show", dev, "latest-handshakes").splitlines()):
                if time.monotonic() > deadline:
                    raise LabError(f"{dev} in {run.gw(i, r)}: no handshake in {timeout:.0f} s")
                time.sleep(0.2)


def _keyfile(run: Run, i: int, r: int = 1) -> Path:
    return Path(run.workdir) / f"c{i}{run.topology.suffix(r)}.key"


def gateway_name(run: Run, i: int, r: int = 1) -> str:
    """natgw's name for cluster i's gateway (replica r): unique host-wide (pins, state)."""
    return f"{run.prefix}c{i}{run.topology.suffix(r)}"


def _natgw_gateway(run: Run, i: int, r: int, pubs: dict[tuple[int, int], str]) -> bool:
    """Write the gateway's file and bring it up with --detach; True: it wants `natgw up`
    in the foreground instead (started by the caller, all at once)."""
    topo = run.topology
    peers = []
    for j, s in run.replicas():
        if j == i:
            continue
        remote, local = [], []
        for v in topo.families:
            m = {"cidr": topo.pod_cidr(j, v)}
            if topo.overlap:
                m["as"] = topo.view(i, j, v)
            remote.append(m)
            if topo.overlap and topo.is_plain(j):  # show ourselves as the plain side knows us
                local.append({"cidr": topo.pod_cidr(i, v), "as": topo.view(j, i, v)})
        peer: dict = {"name": f"c{j}{topo.suffix(s)}"}
        if topo.replicas > 1:
            peer["group"] = f"c{j}"
        if topo.link == "tunnel":
            peer |= {"device": run.tunnel_dev(i, j, r, s), "publicKey": pubs[(j, s)],
                     "endpoint": f"{topo.underlay_addr(j, i, s, r)}:{topo.wg_port(i, r)}",
                     "listenPort": topo.wg_port(j, s)}
            if topo.persistent_keepalive:
                peer["persistentKeepalive"] = topo.persistent_keepalive
            if topo.stale_after is not None and topo.replicas > 1:
                peer["staleAfter"] = topo.stale_after
        else:
            peer |= {"interface": run.underlay_dev(i, j), "via": topo.underlay_addr(j, i)}
        peer["remote"] = remote
        if local:
            peer["local"] = local
        peers.append(peer)
    cfg = {"name": gateway_name(run, i, r),
           "cidrs": [topo.pod_cidr(i, v) for v in topo.families],
           "privateKeyFile": str(_keyfile(run, i, r)),
           "engine": "auto", "mtu": TUNNEL_MTU, "metrics": f"127.0.0.1:{9100 + i}",
           "peers": peers}
    foreground = topo.pipes or topo.replicas > 1  # pipes and health need it
    if foreground:
        cfg["metrics"] = f"127.0.0.1:{free_port()}"
    if topo.pipes:
        cfg["pipes"] = _pipes(topo, i)
    if topo.fastpath != "auto":
        cfg["fastpath"] = topo.fastpath
    path = Path(run.config(i, r))
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run.gateways[str(path)] = run.gw(i, r)
    run.save()
    if not foreground:
        natgw("--netns", run.gw(i, r), "up", str(path), "--detach")
    return foreground


def _pipes(topo: Topology, i: int) -> list[dict]:
    """web<j> to every other natgw gateway's pod, and web<i>, our own pod's server."""
    out = [{"name": f"web{j}", "port": PIPE_PORT_BASE + j, "peer": f"c{j}"}
           for j in range(1, topo.clusters + 1) if j != i and not topo.is_plain(j)]
    return out + [{"name": f"web{i}", "remote": f"{topo.pod_addr(i)}:{POD_WEB_PORT}"}]


def start_foreground(run: Run, i: int, r: int = 1, timeout: float = 180) -> int:
    """`natgw up` in the foreground for gateway (i, r), recorded; waits until it runs
    (and, with pipes, serves them); returns its PID."""
    return start_foregrounds(run, [(i, r)], timeout)[0]


def start_foregrounds(run: Run, gateways: list[tuple[int, int]], timeout: float = 180
                      ) -> list[int]:
    """start_foreground for several gateways at once (their first `up` compiles the
    dataplane: on two CPUs, two at a time halve the wait)."""
    from natgw.pipes import publish  # noqa: PLC0415

    started = []
    for i, r in gateways:
        path = run.config(i, r)
        log_path = Path(run.workdir) / f"{Path(path).stem}.log"
        start = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            # From the root mount namespace, with --netns: natgw needs /sys/fs/bpf.
            proc = run.spawn(None, [NATGW, "--netns", run.gw(i, r), "up", path],
                             marker=path, stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT)
        started.append((i, r, proc, log_path, start))
    deadline = time.monotonic() + timeout

    def ready(i: int, r: int, log_path: Path, start: int) -> bool:
        with open(log_path, "rb") as f:
            f.seek(start)
            if b"running in the foreground" not in f.read():
                return False
        return not run.topology.pipes or publish.read(gateway_name(run, i, r)) is not None

    for i, r, proc, log_path, start in started:
        while not ready(i, r, log_path, start):
            if proc.poll() is not None or time.monotonic() > deadline:
                for *_, other, _, _ in started:
                    run.end(other.pid)
                lines = log_path.read_text(errors="replace").strip().splitlines()
                raise LabError(f"natgw up {log_path.stem}: "
                               f"{lines[-1] if lines else 'no output'}")
            time.sleep(0.2)
    return [proc.pid for _, _, proc, _, _ in started]


def _pod_servers(run: Run) -> None:
    """An HTTP server on every natgw pod's port 8080, for the pipes to reach."""
    topo = run.topology
    for i in range(1, topo.clusters + 1):
        if topo.is_plain(i):
            continue
        site = Path(run.workdir) / f"site{i}"
        site.mkdir(exist_ok=True)
        (site / "index.html").write_text(f"<h1>hello from cluster{i}'s pod, pipe web{i}</h1>\n")
        with open(Path(run.workdir) / f"http{i}.log", "w") as log:
            run.spawn(run.pod(i), [sys.executable, "-m", "http.server", "--bind",
                                   topo.pod_addr(i), "--directory", str(site),
                                   str(POD_WEB_PORT)],
                      marker="http.server", stdout=log, stderr=subprocess.STDOUT)
    for i in range(1, topo.clusters + 1):  # listening before anyone is told to fetch
        deadline = time.monotonic() + 30
        while not topo.is_plain(i) and not sh(run.pod(i), "ss", "-Hltn",
                                                f"sport = :{POD_WEB_PORT}").strip():
            if time.monotonic() > deadline:
                raise LabError(f"the HTTP server of {run.pod(i)} does not listen")
            time.sleep(0.1)


def _wireguard_gateway(run: Run, i: int, r: int, pubs: dict[tuple[int, int], str]) -> None:
    """A gateway without natgw: wireguard-go + `wg set` + routes to its own view of peers
    (over a group's devices: one multipath route).

    --plain: it knows nothing of the overlap; the other side's natgw shows its
    cluster to it (`local:` mappings). --conntrack: it NETMAPs its own cluster
    with iptables (lab.conntrack), so the view of it the peer has is on the wire.
    """
    topo, gw = run.topology, run.gw(i, r)
    sysctl(gw, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    for j in range(1, topo.clusters + 1):
        if j == i:
            continue
        views = [topo.view(i, j, v) for v in topo.families]
        if topo.link == "interface":
            for net in views:
                ip("-n", gw, "route", "add", net, "via", topo.underlay_addr(j, i),
                   "dev", run.underlay_dev(i, j))
            continue
        devs = [run.tunnel_dev(i, j, r, s) for s in topo.replica_ids]
        for s, dev in zip(topo.replica_ids, devs, strict=True):
            run.start_wireguard_go(gw, dev)
            keepalive = (["persistent-keepalive", str(topo.persistent_keepalive)]
                         if topo.persistent_keepalive else [])
            sh(gw, "wg", "set", dev, "private-key", str(_keyfile(run, i, r)),
               "listen-port", str(topo.wg_port(j, s)), "peer", pubs[(j, s)],
               "endpoint", f"{topo.underlay_addr(j, i, s, r)}:{topo.wg_port(i, r)}",
               "allowed-ips", ",".join(views), *keepalive)
            ip("-n", gw, "link", "set", dev, "mtu", str(TUNNEL_MTU), "up")
            if topo.conntrack:
                for rule in iptables_rules(topo.pod_cidr(i), topo.view(j, i), dev):
                    sh(gw, "iptables-legacy", "-w", *rule)
        for net in views:
            ip("-n", gw, "route", "add", net,
               *(["dev", devs[0]] if len(devs) == 1 else
                 [a for dev in devs for a in ("nexthop", "dev", dev)]))


# --- removal ---------------------------------------------------------------------------


def destroy(run: Run) -> None:
    """Remove a run: processes ended by PID, gateways down, namespaces deleted."""
    run.remove(lambda netns, cfg: natgw("--netns", netns, "down", cfg, check=False,
                                        timeout=120))


def load_runs(prefix: str | None = None) -> list[Run]:
    return Run.load(HARNESS_DIR, prefix)


# --- the demo ----------------------------------------------------------------------------


def demo() -> None:
    for old in load_runs():
        if old.label == "demo":  # running the demo again replaces it
            destroy(old)
    run = build(2, label="demo")
    topo = run.topology
    site = Path(run.workdir) / "site"
    site.mkdir()
    (site / "index.html").write_text(
        f"<h1>hello from cluster2's pod {POD_ADDR}</h1>\n")
    with open(Path(run.workdir) / "http.log", "w") as log:
        run.spawn(run.pod(2), [sys.executable, "-m", "http.server", "--bind", POD_ADDR,
                               "--directory", str(site), "8080"],
                  marker="http.server", stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{topo.addr_of(1, 2)}:8080/"
    page = ""
    for _ in range(50):  # the server and the first handshake take a moment
        r = subprocess.run(["ip", "netns", "exec", run.pod(1), "curl", "-sS", "-m", "2", url],
                           capture_output=True, text=True)
        if r.returncode == 0:
            page = r.stdout
            break
        time.sleep(0.2)
    print(f"== both pods are {POD_ADDR}; cluster1 reaches cluster2 as {topo.view(1, 2)}, "
          f"cluster2 reaches cluster1 as {topo.view(2, 1)}")
    print(f"== {run.pod(1)}$ curl {url}")
    print(page or "(no answer)", end="")
    requests = [line.split(" ")[0] for line in
                (Path(run.workdir) / "http.log").read_text().splitlines() if '"GET ' in line]
    print(f"== cluster2's HTTP server saw the client as: {requests[-1] if requests else '?'}"
          f" (cluster1's pod as cluster2 knows it: {topo.addr_of(2, 1)})")
    for i in (1, 2):
        print(f"== natgw --netns {run.gw(i)} status")
        print(natgw("--netns", run.gw(i), "status", run.config(i)).stdout)
    print(f"""== the topology stays up for exploring (run prefix {run.prefix}):
   ip netns exec {run.pod(1)} curl {url}
   ip netns exec {run.pod(1)} ping -c 3 {topo.addr_of(1, 2)}
   bpftool link show    # natgw's tcx links (type 11: tcx, in this bpftool)
   ip netns exec {run.gw(1)} wg show {run.prefix}w12
   .venv/bin/natgw --netns {run.gw(1)} status {run.config(1)}
   make demo-down        # removes it (scripts/netns/down.sh)""")
    if not page:
        raise LabError("demo: the fetch across natgw failed")
