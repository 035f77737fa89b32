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
CHECKSUM_PARTIAL super-packets. A gateway's first address is its pod-side one,
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
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lab.keys import new_key
from lab.net import (
    NATGW,
    LabError,
    add_address,
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

    @property
    def families(self) -> tuple[int, ...]:
        return (4, 6) if self.ipv6 else (4,)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """Every ordered pair of clusters."""
        n = range(1, self.clusters + 1)
        return [(i, j) for i in n for j in n if i != j]

    def is_plain(self, i: int) -> bool:
        return i in self.plain

    def pod_cidr(self, i: int, v: int = 4) -> str:
        """Cluster i's real pod network."""
        if self.overlap:
            return "10.244.0.0/16" if v == 4 else "fd00:244::/64"
        return f"10.{240 + i}.0.0/16" if v == 4 else f"fd00:{240 + i}::/64"

    def pod_addr(self, i: int, v: int = 4) -> str:
        """Cluster i's pod, by its real address: x.x.1.10 or x::10."""
        return _host(self.pod_cidr(i, v), "0.0.1.10" if v == 4 else "::10")

    def pod_gw(self, i: int, v: int = 4) -> str:
        """Cluster i's gateway as its pod sees it (its pod-side address): x.x.1.1 or x::1."""
        return _host(self.pod_cidr(i, v), "0.0.1.1" if v == 4 else "::1")

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

    def underlay_addr(self, i: int, j: int) -> str:
        """Gateway i's address on its underlay link to gateway j."""
        lo, hi = min(i, j), max(i, j)
        return f"192.168.{lo}{hi}.{1 if i == lo else 2}"


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

    def gw(self, i: int) -> str:
        """Cluster i's gateway netns."""
        return f"{self.prefix}g{i}"

    def pod(self, i: int) -> str:
        """Cluster i's pod netns."""
        return f"{self.prefix}p{i}"

    def config(self, i: int) -> str:
        """Cluster i's cluster.yaml (natgw gateways only)."""
        return str(Path(self.workdir) / f"c{i}.yaml")

    def pod_link(self, i: int) -> str:
        """The gateway's end of the veth to its pod (in gw(i))."""
        return f"{self.prefix}g{i}p"

    def underlay_dev(self, i: int, j: int) -> str:
        """Gateway i's end of the underlay veth to gateway j."""
        return f"{self.prefix}u{i}{j}"

    def tunnel_dev(self, i: int, j: int) -> str:
        """Gateway i's WireGuard device for cluster j (tunnel topologies)."""
        return f"{self.prefix}w{i}{j}"

    def link_dev(self, i: int, j: int) -> str:
        """The device in gateway i that carries cluster j's pod traffic."""
        return self.tunnel_dev(i, j) if self.topology.link == "tunnel" else self.underlay_dev(i, j)

    @classmethod
    def from_json(cls, data: dict) -> Run:
        data = dict(data)
        if "topology" not in data:  # a run recorded before topologies existed
            data["topology"] = {"clusters": data.pop("n")}
        if "configs" in data:  # recorded as netns -> config before the common record
            data["gateways"] = {cfg: ns for ns, cfg in data.pop("configs").items()}
        topo = dict(data["topology"], plain=tuple(data["topology"].get("plain", ())))
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
        run.netns(run.gw(i))
        run.netns(run.pod(i))
        # Before any device exists, so that every device inherits it.
        sysctl(run.pod(i), "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
        pod_end = f"{run.prefix}p{i}e"
        veth(run.pod(i), pod_end, run.gw(i), run.pod_link(i))
        for v in topo.families:
            plen = topo.pod_prefixlen(v)
            add_address(run.pod(i), pod_end, f"{topo.pod_addr(i, v)}/{plen}")
            add_address(run.gw(i), run.pod_link(i), f"{topo.pod_gw(i, v)}/{plen}")
            for j in range(1, n + 1):
                if j != i:
                    ip("-n", run.pod(i), f"-{v}", "route", "add", topo.view(i, j, v),
                       "via", topo.pod_gw(i, v))
        offloads(run.pod(i), pod_end, "rx", "off")
        offloads(run.gw(i), run.pod_link(i), "rx", "off", "tx", "off")
    for i, j in topo.pairs:
        if i < j:
            veth(run.gw(i), run.underlay_dev(i, j), run.gw(j), run.underlay_dev(j, i))
            for a, b in ((i, j), (j, i)):
                add_address(run.gw(a), run.underlay_dev(a, b), f"{topo.underlay_addr(a, b)}/24")
                offloads(run.gw(a), run.underlay_dev(a, b), "rx", "off", "tx", "off")
    pubs = {i: new_key(_keyfile(run, i)) for i in range(1, n + 1)}
    for i in range(1, n + 1):
        if topo.is_plain(i):
            _plain_gateway(run, i, pubs)
        else:
            _natgw_gateway(run, i, pubs)
        if topo.link == "tunnel":
            for j in range(1, n + 1):
                if j != i:
                    offloads(run.gw(i), run.tunnel_dev(i, j), "tx", "off")
    if topo.pipes:
        _pod_servers(run)


def _keyfile(run: Run, i: int) -> Path:
    return Path(run.workdir) / f"c{i}.key"


def _natgw_gateway(run: Run, i: int, pubs: dict[int, str]) -> None:
    topo = run.topology
    peers = []
    for j in range(1, topo.clusters + 1):
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
        peer: dict = {"name": f"c{j}"}
        if topo.link == "tunnel":
            peer |= {"device": run.tunnel_dev(i, j), "publicKey": pubs[j],
                     "endpoint": f"{topo.underlay_addr(j, i)}:{WG_PORT + i}",
                     "listenPort": WG_PORT + j}
        else:
            peer |= {"interface": run.underlay_dev(i, j), "via": topo.underlay_addr(j, i)}
        peer["remote"] = remote
        if local:
            peer["local"] = local
        peers.append(peer)
    cfg = {"name": f"{run.prefix}c{i}",
           "cidrs": [topo.pod_cidr(i, v) for v in topo.families],
           "privateKeyFile": str(_keyfile(run, i)),
           "engine": "auto", "mtu": TUNNEL_MTU, "metrics": f"127.0.0.1:{9100 + i}",
           "peers": peers}
    if topo.pipes:
        cfg["pipes"] = _pipes(topo, i)
    if topo.fastpath != "auto":
        cfg["fastpath"] = topo.fastpath
    path = Path(run.config(i))
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run.gateways[str(path)] = run.gw(i)
    run.save()
    if topo.pipes:
        _foreground(run, i, cfg["name"], path)
    else:
        natgw("--netns", run.gw(i), "up", str(path), "--detach")


def _pipes(topo: Topology, i: int) -> list[dict]:
    """web<j> to every other natgw gateway's pod, and web<i>, our own pod's server."""
    out = [{"name": f"web{j}", "port": PIPE_PORT_BASE + j, "peer": f"c{j}"}
           for j in range(1, topo.clusters + 1) if j != i and not topo.is_plain(j)]
    return out + [{"name": f"web{i}", "remote": f"{topo.pod_addr(i)}:{POD_WEB_PORT}"}]


def _foreground(run: Run, i: int, name: str, path: Path, timeout: float = 180) -> None:
    """`natgw up` in the foreground (pipes need it), recorded; waits until it serves."""
    from natgw.pipes import publish  # noqa: PLC0415

    log_path = Path(run.workdir) / f"c{i}.log"
    with open(log_path, "ab") as log:
        # From the root mount namespace, with --netns: natgw needs /sys/fs/bpf.
        proc = run.spawn(None, [NATGW, "--netns", run.gw(i), "up", str(path)],
                         marker=str(path), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout  # the first up compiles the dataplane
    while publish.read(name) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            lines = log_path.read_text(errors="replace").strip().splitlines()
            raise LabError(f"natgw up c{i}: {lines[-1] if lines else 'no output'}")
        time.sleep(0.2)


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


def _plain_gateway(run: Run, i: int, pubs: dict[int, str]) -> None:
    """A gateway without natgw: wireguard-go + `wg set` + routes to its own view of peers."""
    topo, gw = run.topology, run.gw(i)
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
        dev = run.tunnel_dev(i, j)
        run.start_wireguard_go(gw, dev)
        sh(gw, "wg", "set", dev, "private-key", str(_keyfile(run, i)),
           "listen-port", str(WG_PORT + j), "peer", pubs[j],
           "endpoint", f"{topo.underlay_addr(j, i)}:{WG_PORT + i}",
           "allowed-ips", ",".join(views))
        ip("-n", gw, "link", "set", dev, "mtu", str(TUNNEL_MTU), "up")
        for net in views:
            ip("-n", gw, "route", "add", net, "dev", dev)


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
   ip netns exec {run.gw(1)} tc filter show dev {run.prefix}w12 egress
   ip netns exec {run.gw(1)} wg show {run.prefix}w12
   .venv/bin/natgw --netns {run.gw(1)} status {run.config(1)}
   make demo-down        # removes it (scripts/netns/down.sh)""")
    if not page:
        raise LabError("demo: the fetch across natgw failed")
