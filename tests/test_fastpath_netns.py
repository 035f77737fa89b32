"""The fast path under the control plane: LAN devices, fastpath: switches, down.

Gateway netns G: a LAN veth (the route to cidrs 10.60.0.0/16) whose admin has
put a clsact qdisc and a filter of their own on it, and an `interface:` peer.
No tunnel: no wireguard-go needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lab.net import natgw, natgw_programs, sh
from natgw.state import STATE_DIR

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

FOREIGN_PREF = 7  # the admin's filter on the LAN device


@pytest.fixture()
def gw(netns_lab, tmp_path):
    lab = netns_lab
    g, side = lab.netns("G"), lab.netns("S")
    lan, _ = lab.veth(g, "10.60.0.1/16", side, "10.60.0.2/16")
    ifc, _ = lab.veth(g, "192.168.95.1/24", side, "192.168.95.2/24")
    sh(g, "tc", "qdisc", "add", "dev", lan, "clsact")
    # A classic BPF filter that matches nothing (cls_bpf is there: natgw uses it too).
    sh(g, "tc", "filter", "add", "dev", lan, "ingress", "pref", str(FOREIGN_PREF), "bpf",
       "bytecode", "1,6 0 0 0,", "classid", "1:1")
    name = lab.name("fp")
    data = {"name": name, "cidrs": ["10.60.0.0/16"], "metrics": "127.0.0.1:1",
            "peers": [{"name": "i1", "interface": ifc, "via": "192.168.95.2",
                       "remote": [{"cidr": "10.244.0.0/16", "as": "10.246.0.0/16"}]}]}
    path = tmp_path / "gw.yaml"

    def up(**top) -> str:
        path.write_text(yaml.safe_dump(data | top))
        return natgw("--netns", g, "up", str(path), "--detach").stderr

    lab.on_cleanup(lambda: natgw("--netns", g, "down", name, check=False))
    return {"g": g, "lan": lan, "ifc": ifc, "name": name, "up": up, "path": path}


def ingress(g: str, dev: str) -> str:
    return sh(g, "tc", "filter", "show", "dev", dev, "ingress")


def on(g: str, dev: str) -> str | None:
    """The natgw program on a device's ingress (tcx link or tc filter), None if none."""
    return natgw_programs(g, dev).get("ingress")


def lan_report(name: str) -> list[dict]:
    (doc,) = json.loads(natgw("maps", name, "--json").stdout)
    return [d for d in doc["devices"] if d["lan"]]


def test_lan_program_follows_the_file_and_down_leaves_the_admins_things(gw):
    """One gateway through a sequence of files (one compile: every `down` costs one)."""
    g, lan, ifc, name = gw["g"], gw["lan"], gw["ifc"], gw["name"]
    gw["up"]()
    assert on(g, lan) == "lan" and f"pref {FOREIGN_PREF} " in ingress(g, lan)
    assert on(g, ifc) == "ingress_fast"
    (report,) = lan_report(name)
    assert report["ifname"] == lan and report["mappings"] == []
    assert set(report["fastpath"]) >= {"redirect_l3", "redirect_eth", "ttl", "no_neigh"}
    state = json.loads((STATE_DIR / f"{name}.json").read_text())
    assert [x["device"] for x in state["lan"]] == [lan] and not state["lan"][0]["own_qdisc"]

    gw["up"](fastpath="off")  # the kernel's path alone: nothing on the LAN device
    assert on(g, lan) is None and f"pref {FOREIGN_PREF} " in ingress(g, lan)
    assert on(g, ifc) == "ingress"
    assert lan_report(name) == []

    err = gw["up"](cidrs=["10.61.0.0/16"])  # no route to cidrs: no LAN device, one line
    assert "no route to cidrs leaves through a LAN device" in err
    assert on(g, lan) is None and on(g, ifc) == "ingress_fast"
    gw["up"](cidrs=["10.61.0.0/16"], lanDevices=[lan])  # named by the file
    assert on(g, lan) == "lan"
    r = natgw("--netns", g, "up", str(_with(gw["path"], lanDevices=["nosuchdev"])), "--detach",
              check=False)
    assert r.returncode == 1, r.stderr
    assert f"lanDevices[0]: device nosuchdev not found in netns {g}" in r.stderr
    assert on(g, lan) == "lan"  # the previous file is restored

    # down takes the LAN program off even when the record lost it (a sweep by the
    # gateway's own maps), and leaves the admin's filter and qdisc.
    path = STATE_DIR / f"{name}.json"
    state = json.loads(path.read_text())
    state["lan"] = []
    path.write_text(json.dumps(state))
    natgw("--netns", g, "down", name)
    assert on(g, lan) is None and f"pref {FOREIGN_PREF} " in ingress(g, lan)
    assert "clsact" in sh(g, "tc", "qdisc", "show", "dev", lan)


def _with(path: Path, **top) -> Path:
    data = yaml.safe_load(path.read_text()) | top
    out = path.with_name("other.yaml")
    out.write_text(yaml.safe_dump(data))
    return out
