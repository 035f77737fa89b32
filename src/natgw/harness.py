"""The netns harness: N clusters on the same pod CIDR, joined by natgw gateways.

    python -m natgw.harness up 3      # build, print the run prefix
    python -m natgw.harness down      # remove every run (or: down PREFIX)
    python -m natgw.harness demo      # two clusters, an HTTP fetch across natgw

Per cluster i (1-based): a gateway netns <p>g<i> and a pod netns <p>p<i>, the
pod at 10.244.1.10 (the same address in every cluster) behind 10.244.1.1. The
gateways are linked pairwise by veth pairs (a full mesh underlay on
192.168.<i><j>.0/24) and run `natgw --netns <p>g<i> up --detach`. Cluster i
knows cluster j as 10.<100 + 10 i + j>.0.0/16: a different range for every
ordered pair, so a swapped mapping cannot pass. Nothing is connected to the
root namespace and no default route is added. Everything made is recorded in
/run/natgw/harness/<prefix>.json, which `down` reads.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from natgw import keys

HARNESS_DIR = Path("/run/natgw/harness")
POD_ADDR = "10.244.1.10"
POD_GW = "10.244.1.1"
POD_CIDR = "10.244.0.0/16"
NATGW = str(Path(sys.executable).with_name("natgw"))


def remote_as(i: int, j: int) -> str:
    """How cluster i addresses cluster j."""
    return f"10.{100 + 10 * i + j}.0.0/16"


def seen_as(i: int, j: int, addr: str = POD_ADDR) -> str:
    """The address by which cluster i reaches cluster j's pod address."""
    return f"10.{100 + 10 * i + j}." + ".".join(addr.split(".")[2:])


@dataclass
class Run:
    prefix: str
    n: int
    workdir: str
    namespaces: list[str] = field(default_factory=list)
    configs: dict[str, str] = field(default_factory=dict)  # gateway netns -> cluster.yaml
    pids: list[int] = field(default_factory=list)  # processes the harness started

    def gw(self, i: int) -> str:
        return f"{self.prefix}g{i}"

    def pod(self, i: int) -> str:
        return f"{self.prefix}p{i}"

    def save(self) -> None:
        HARNESS_DIR.mkdir(parents=True, exist_ok=True)
        (HARNESS_DIR / f"{self.prefix}.json").write_text(json.dumps(asdict(self), indent=2))


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def sh(netns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], check=True,
                          capture_output=True, text=True, timeout=60).stdout


def natgw(*args: str) -> str:
    r = subprocess.run([NATGW, *args], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"natgw {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def build(n: int, prefix: str | None = None) -> Run:
    """Create n clusters and bring their gateways up; returns the recorded run."""
    prefix = prefix or f"ng{secrets.token_hex(2)}"
    workdir = Path(f"/run/natgw/harness/{prefix}")
    workdir.mkdir(parents=True, exist_ok=True)
    run = Run(prefix, n, str(workdir))
    run.save()
    for i in range(1, n + 1):
        for ns in (run.gw(i), run.pod(i)):
            ip("netns", "add", ns)
            run.namespaces.append(ns)
            run.save()
            ip("-n", ns, "link", "set", "lo", "up")
        veth(run.pod(i), f"{prefix}p{i}e", f"{POD_ADDR}/24",
             run.gw(i), f"{prefix}g{i}p", f"{POD_GW}/24")
        for j in range(1, n + 1):
            if j != i:
                ip("-n", run.pod(i), "route", "add", remote_as(i, j), "via", POD_GW)
    for i in range(1, n + 1):
        for j in range(i + 1, n + 1):
            veth(run.gw(i), f"{prefix}u{i}{j}", f"192.168.{i}{j}.1/24",
                 run.gw(j), f"{prefix}u{j}{i}", f"192.168.{i}{j}.2/24")
    privs = {i: keys.genkey() for i in range(1, n + 1)}
    for i in range(1, n + 1):
        keyfile = workdir / f"c{i}.key"
        keyfile.write_text(privs[i] + "\n")
        os.chmod(keyfile, 0o600)
        peers = []
        for j in range(1, n + 1):
            if j == i:
                continue
            lo, hi = min(i, j), max(i, j)
            peers.append({
                "name": f"c{j}",
                "device": f"{prefix}w{i}{j}",
                "publicKey": keys.pubkey(privs[j]),
                "endpoint": f"192.168.{lo}{hi}.{1 if j == lo else 2}:{51820 + i}",
                "listenPort": 51820 + j,
                "remote": [{"cidr": POD_CIDR, "as": remote_as(i, j)}],
            })
        cfg = {"name": f"{prefix}c{i}", "cidrs": [POD_CIDR], "privateKeyFile": str(keyfile),
               "engine": "auto", "mtu": 1420, "metrics": f"127.0.0.1:{9100 + i}",
               "peers": peers}
        path = workdir / f"c{i}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        run.configs[run.gw(i)] = str(path)
        run.save()
        natgw("--netns", run.gw(i), "up", str(path), "--detach")
    return run


def veth(ns_a: str, a: str, addr_a: str, ns_b: str, b: str, addr_b: str) -> None:
    ip("link", "add", a, "netns", ns_a, "type", "veth", "peer", b, "netns", ns_b)
    for ns, dev, addr in ((ns_a, a, addr_a), (ns_b, b, addr_b)):
        ip("-n", ns, "addr", "add", addr, "dev", dev)
        ip("-n", ns, "link", "set", dev, "up")


def load_runs(prefix: str | None = None) -> list[Run]:
    if not HARNESS_DIR.is_dir():
        return []
    out = []
    for p in sorted(HARNESS_DIR.glob("*.json")):
        if prefix is None or p.stem == prefix:
            out.append(Run(**json.loads(p.read_text())))
    return out


def destroy(run: Run) -> None:
    """Remove a run: gateways down, processes ended by PID, namespaces deleted."""
    for pid in run.pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for gw, cfg in run.configs.items():
        subprocess.run([NATGW, "--netns", gw, "down", cfg], capture_output=True, timeout=120)
    for ns in run.namespaces:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
    subprocess.run(["rm", "-rf", run.workdir], check=False)
    (HARNESS_DIR / f"{run.prefix}.json").unlink(missing_ok=True)


def demo() -> None:
    run = build(2)
    site = Path(run.workdir) / "site"
    site.mkdir()
    (site / "index.html").write_text(
        f"<h1>hello from cluster2's pod {POD_ADDR}</h1>\n")
    log = open(Path(run.workdir) / "http.log", "w")
    server = subprocess.Popen(["ip", "netns", "exec", run.pod(2), sys.executable, "-m",
                               "http.server", "--bind", POD_ADDR, "--directory", str(site),
                               "8080"], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    run.pids.append(server.pid)
    run.save()
    url = f"http://{seen_as(1, 2)}:8080/"
    page = ""
    for _ in range(50):  # the server and the first handshake take a moment
        r = subprocess.run(["ip", "netns", "exec", run.pod(1), "curl", "-sS", "-m", "2", url],
                           capture_output=True, text=True)
        if r.returncode == 0:
            page = r.stdout
            break
        time.sleep(0.2)
    log.flush()
    print(f"== both pods are {POD_ADDR}; cluster1 reaches cluster2 as {remote_as(1, 2)}, "
          f"cluster2 reaches cluster1 as {remote_as(2, 1)}")
    print(f"== {run.pod(1)}$ curl {url}")
    print(page or "(no answer)", end="")
    requests = [line.split(" ")[0] for line in
                (Path(run.workdir) / "http.log").read_text().splitlines() if '"GET ' in line]
    print(f"== cluster2's HTTP server saw the client as: {requests[-1] if requests else '?'}"
          f" (cluster1's pod as cluster2 knows it: {seen_as(2, 1)})")
    for i in (1, 2):
        print(f"== natgw --netns {run.gw(i)} status")
        print(natgw("--netns", run.gw(i), "status", run.configs[run.gw(i)]))
    print(f"""== the topology stays up for exploring (run prefix {run.prefix}):
   ip netns exec {run.pod(1)} curl {url}
   ip netns exec {run.pod(1)} ping -c 3 {seen_as(1, 2)}
   ip netns exec {run.gw(1)} tc filter show dev {run.prefix}w12 egress
   ip netns exec {run.gw(1)} wg show
   .venv/bin/natgw --netns {run.gw(1)} status {run.configs[run.gw(1)]}
   make demo-down        # removes it (scripts/netns/down.sh)""")
    if not page:
        raise SystemExit("demo: the fetch across natgw failed")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("up", "down", "demo", "list"):
        print(__doc__)
        return 2
    if argv[0] == "up":
        run = build(int(argv[1]) if len(argv) > 1 else 2)
        print(run.prefix)
    elif argv[0] == "down":
        for run in load_runs(argv[1] if len(argv) > 1 else None):
            destroy(run)
            print(f"removed {run.prefix}")
    elif argv[0] == "list":
        for run in load_runs():
            print(run.prefix, run.n)
    else:
        demo()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
