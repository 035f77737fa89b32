"""The hub topology of the harness: one natgw hub and N natgw clients (`up --hub N`).

    python -m lab up --hub 3            # scripts/netns/up.sh --hub 3

Modelled on cloud-gateway's demo. Names carry the run prefix p:

    <p>l  legacy network 172.25.0.0/16: a web server, 172.25.0.10:8080 (http.server)
     |    veth <p>le (172.25.0.10) -- <p>hl (172.25.0.1)
    <p>h  the hub: natgw gateway <p>hub, device <p>hw, UDP port 8765, pool
     |    10.192.0.0/24 (hub 10.192.0.1); shows the legacy network as 10.250.0.0/16
     |    veth <p>u<i> (198.18.<i>.1) -- <p>g<i>u (198.18.<i>.2), one per client
    <p>g<i>  client i: natgw gateway <p>c<i>, device <p>w<i>0, tunnel address 10.192.0.<10+i>,
     |        its pods 10.244.0.0/16 shown to the hub as 10.<200+i>.0.0/16 (its own
     |        `local:` mapping: every client has the same pods, the hub's clients must not)
    <p>p<i>  client i's pod, 10.244.1.10 behind 10.244.1.1

From client i's pod the legacy web server is 10.250.0.10:8080 and client j's pod is
10.<200+j>.1.10 (through the hub: hub and spoke); the web server sees client i's pod
as 10.<200+i>.1.10 and client i's gateway as 10.192.0.<10+i>. The hub's file also has
`endpoint:`, so `natgw client-config <workdir>/hub.yaml c1` works on it.

Everything is recorded in the run (lab.record) as it is made and removed by
`python -m lab down PREFIX`, like the mesh topology. No default route anywhere.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from lab.keys import new_key
from lab.net import add_address, ip, natgw, offloads, sysctl, veth

HUB_PORT = 8765
POOL = "10.192.0.0/24"
HUB_ADDRESS = "10.192.0.1/24"
LEGACY = "172.25.0.0/16"
LEGACY_AS = "10.250.0.0/16"
WEB = "172.25.0.10"
WEB_PORT = 8080
POD_CIDR = "10.244.0.0/16"
POD = "10.244.1.10"
POD_GW = "10.244.1.1"
TUNNEL_MTU = 1420


def client_address(i: int) -> str:
    """Client i's tunnel address (fixed in both files, so no pool record is needed)."""
    return f"10.192.0.{10 + i}"


def client_view(i: int) -> str:
    """How the hub (and every other client) knows client i's pods."""
    return f"10.{200 + i}.0.0/16"


def client_pod_seen(i: int) -> str:
    """Client i's pod as the hub, the legacy network and the other clients see it."""
    return f"10.{200 + i}.1.10"


def web_seen() -> str:
    """The legacy web server as every client addresses it."""
    return "10.250.0.10"


def hub_netns(run) -> str:
    return f"{run.prefix}h"


def legacy_netns(run) -> str:
    return f"{run.prefix}l"


def hub_config(run) -> str:
    return str(Path(run.workdir) / "hub.yaml")


def build_hub(run) -> None:
    """Build the hub topology of `run` (run.topology.hub clients); recorded as it goes."""
    n = run.topology.hub
    hub, legacy = run.netns(hub_netns(run)), run.netns(legacy_netns(run))
    veth(legacy, f"{run.prefix}le", hub, f"{run.prefix}hl")
    add_address(legacy, f"{run.prefix}le", f"{WEB}/16")
    add_address(hub, f"{run.prefix}hl", "172.25.0.1/16")
    for net in (POOL, *(client_view(i) for i in range(1, n + 1))):
        ip("-n", legacy, "route", "add", net, "via", "172.25.0.1")
    for i in range(1, n + 1):
        gw, pod = run.netns(run.gw(i)), run.netns(run.pod(i))
        sysctl(pod, "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
        veth(pod, f"{run.prefix}p{i}e", gw, run.pod_link(i))
        add_address(pod, f"{run.prefix}p{i}e", f"{POD}/24")
        add_address(gw, run.pod_link(i), f"{POD_GW}/24")
        for net in (LEGACY_AS, *(client_view(j) for j in range(1, n + 1) if j != i)):
            ip("-n", pod, "route", "add", net, "via", POD_GW)
        # As in the mesh topology: receivers verify checksums, gateways send them complete.
        offloads(pod, f"{run.prefix}p{i}e", "rx", "off")
        offloads(gw, run.pod_link(i), "rx", "off", "tx", "off")
        veth(hub, f"{run.prefix}u{i}", gw, f"{run.prefix}g{i}u")
        add_address(hub, f"{run.prefix}u{i}", f"198.18.{i}.1/24")
        add_address(gw, f"{run.prefix}g{i}u", f"198.18.{i}.2/24")
    work = Path(run.workdir)
    hub_pub = new_key(work / "hub.key")
    pubs = {i: new_key(work / f"c{i}.key") for i in range(1, n + 1)}
    _write(run, hub_config(run), hub, {
        "name": f"{run.prefix}hub", "cidrs": [LEGACY], "privateKeyFile": str(work / "hub.key"),
        "engine": "auto", "mtu": TUNNEL_MTU, "metrics": "127.0.0.1:9100",
        "hub": {
            "address": HUB_ADDRESS, "listenPort": HUB_PORT, "device": f"{run.prefix}hw",
            "endpoint": f"198.18.1.1:{HUB_PORT}",
            "local": [{"cidr": LEGACY, "as": LEGACY_AS}],
            "clients": [{"name": f"c{i}", "publicKey": pubs[i], "address": client_address(i),
                         "remote": [{"cidr": client_view(i)}]} for i in range(1, n + 1)],
        },
    })
    for i in range(1, n + 1):
        others = [{"cidr": client_view(j)} for j in range(1, n + 1) if j != i]
        _write(run, run.config(i), run.gw(i), {
            "name": f"{run.prefix}c{i}", "cidrs": [POD_CIDR],
            "privateKeyFile": str(work / f"c{i}.key"), "engine": "auto", "mtu": TUNNEL_MTU,
            "metrics": f"127.0.0.1:{9100 + i}",
            "peers": [{
                "name": "hub", "device": run.tunnel_dev(i, 0), "publicKey": hub_pub,
                "endpoint": f"198.18.{i}.1:{HUB_PORT}", "address": f"{client_address(i)}/24",
                "persistentKeepalive": 25,
                "remote": [{"cidr": POOL}, {"cidr": LEGACY_AS}, *others],
                "local": [{"cidr": POD_CIDR, "as": client_view(i)}],
            }],
        })
    site = work / "site"
    site.mkdir(exist_ok=True)
    (site / "index.html").write_text("<h1>hello from the legacy network</h1>\n")
    with open(work / "http.log", "w") as log:
        run.spawn(legacy, [sys.executable, "-m", "http.server", "--bind", WEB,
                           "--directory", str(site), str(WEB_PORT)],
                  marker="http.server", stdout=log, stderr=subprocess.STDOUT)


def _write(run, path: str, netns: str, cfg: dict) -> None:
    """Write a gateway's file, record it (so that `down` finds it), bring it up."""
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False))
    run.gateways[path] = netns
    run.save()
    natgw("--netns", netns, "up", path, "--detach")
