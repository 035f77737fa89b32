"""Two overlapping clusters joined by natgw, in network namespaces, for tests.

  pod1 10.244.1.10 -- gw1 ==wireguard over veth 192.168.77.0/24== gw2 -- pod2 10.244.1.10

Both pods have the same address. cluster1 knows cluster2 as 10.245.0.0/16,
cluster2 knows cluster1 as 10.246.0.0/16 (different ranges per direction, so
a swapped mapping fails). Pods only have routes to the remapped ranges, via
their gateway: nothing leaves the namespaces.
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from lab.keys import new_key
from lab.net import free_port, ip, natgw, ping
from lab.netnslab import NetnsLab

POD = "10.244.1.10"
C2_SEEN_BY_C1 = "10.245.1.10"
C1_SEEN_BY_C2 = "10.246.1.10"


@dataclass
class Cluster:
    name: str
    gw: str  # netns
    pod: str  # netns
    device: str
    config: Path


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def build(lab: NetnsLab, tmp: Path) -> tuple[Cluster, Cluster]:
    gw1, gw2 = lab.netns("g1"), lab.netns("g2")
    pod1, pod2 = lab.netns("p1"), lab.netns("p2")
    lab.veth(gw1, "192.168.77.1/24", gw2, "192.168.77.2/24")
    for gw, pod in ((gw1, pod1), (gw2, pod2)):
        lab.veth(pod, f"{POD}/24", gw, "10.244.1.1/24")
    ip("-n", pod1, "route", "add", "10.245.0.0/16", "via", "10.244.1.1")
    ip("-n", pod2, "route", "add", "10.246.0.0/16", "via", "10.244.1.1")
    keyfiles = [tmp / f"{lab.name(f'c{i}')}.key" for i in (1, 2)]
    pubs = [new_key(k) for k in keyfiles]
    clusters = []
    for i, (gw, pod) in enumerate(((gw1, pod1), (gw2, pod2))):
        name, peer = lab.name(f"c{i + 1}"), lab.name(f"c{2 - i}")
        keyfile = keyfiles[i]
        device = lab.name(f"w{i + 1}")
        data = {
            "name": name,
            "cidrs": ["10.244.0.0/16"],
            "privateKeyFile": str(keyfile),
            "engine": "wireguard-go",
            "mtu": 1420,
            "metrics": f"127.0.0.1:{free_port()}",
            "peers": [{
                "name": peer,
                "device": device,
                "publicKey": pubs[1 - i],
                "endpoint": f"192.168.77.{2 - i}:51820",
                "listenPort": 51820,
                "remote": [{"cidr": "10.244.0.0/16",
                            "as": "10.245.0.0/16" if i == 0 else "10.246.0.0/16"}],
            }],
        }
        clusters.append(Cluster(name, gw, pod, device, write_config(tmp / f"{name}.yaml", data)))
        lab.on_cleanup(lambda gw=gw, cfg=clusters[-1].config: natgw("--netns", gw, "down",
                                                                     str(cfg), check=False))
    return clusters[0], clusters[1]


def wait_ping(ns: str, dst: str, timeout: float = 15) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ping(ns, dst, count=1, timeout=0.5) == 1:
            return True
    return False


def scrape(address: str) -> dict:
    """(metric name, labels) -> value from a Prometheus scrape of address."""
    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.time() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=2) as r:
                text = r.read().decode()
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}
