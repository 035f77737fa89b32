"""Attaching and detaching: idempotent, atomic, and removing only what natgw added."""

from __future__ import annotations

import json
import subprocess

import pytest

from natgw.dataplane import Dataplane, Mapping
from natgw.dataplane.loader import ETH_P_ALL, PARENTS, ipr_in

pytestmark = [pytest.mark.bpf, pytest.mark.netns]


def tc_json(ns: str, *args: str) -> list[dict]:
    out = subprocess.run(["ip", "netns", "exec", ns, "tc", "-j", *args], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out or "[]")


def bpf_filters(ns: str, dev: str) -> dict[str, list]:
    """Program ids of the bpf filters on each clsact hook."""
    out = {}
    for hook in ("ingress", "egress"):
        out[hook] = sorted(f["options"]["prog"]["id"] for f in tc_json(
            ns, "filter", "show", "dev", dev, hook) if f.get("kind") == "bpf" and "options" in f)
    return out


def has_clsact(ns: str, dev: str) -> bool:
    return any(q["kind"] == "clsact" for q in tc_json(ns, "qdisc", "show", "dev", dev))


@pytest.fixture()
def veth(netns_lab):
    a, b = netns_lab.netns("A"), netns_lab.netns("B")
    dev, _ = netns_lab.veth(a, "192.0.2.1/24", b, "192.0.2.2/24")
    dp = Dataplane.load(netns_lab.name("gw"))
    netns_lab.on_cleanup(dp.destroy)
    return dp, a, dev


def test_attach_is_idempotent_and_mapping_updates_keep_the_programs(veth):
    dp, ns, dev = veth
    info = dp.attach(dev, ns, mtu=1420)
    assert info.l3_offset == 14 and (info.mss_v4, info.mss_v6) == (1380, 1360)
    first = bpf_filters(ns, dev)
    assert len(first["ingress"]) == 1 and len(first["egress"]) == 1
    dp.attach(dev, ns, mtu=1420)
    dp.set_mappings(dev, [Mapping.parse("remote", "10.244.0.0/16", "10.245.0.0/16")], ns)
    dp.set_mappings(dev, [Mapping.parse("remote", "10.244.0.0/16", "10.247.0.0/16")], ns)
    assert bpf_filters(ns, dev) == first
    # Another process (no compile) sees the same build: it reuses the pinned programs.
    again = Dataplane.load(dp.gateway)
    try:
        again.attach(dev, ns, mtu=1420)
        assert bpf_filters(ns, dev) == first
    finally:
        again.close()


def test_detach_removes_only_what_natgw_added(veth):
    dp, ns, dev = veth
    dp.attach(dev, ns)
    assert has_clsact(ns, dev)
    dp.detach(dev, ns)
    assert not has_clsact(ns, dev)
    assert dev not in [str(i) for i in dp.tables.all_devices()]
    assert dp.tables.all_devices() == {}
    dp.detach(dev, ns)  # again: a no-op

    # A clsact qdisc the user made, with a filter of their own (any bpf program at
    # another priority: this kernel has no other classifier), stays.
    subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "clsact"],
                   check=True)
    with ipr_in(ns) as ipr:
        idx = ipr.link_lookup(ifname=dev)[0]
        ipr.tc("add-filter", "bpf", idx, 7, fd=dp.programs.egress_fd, name="user",
               parent=PARENTS["ingress"], classid=1, direct_action=True, prio=7,
               protocol=ETH_P_ALL)
    dp.attach(dev, ns)
    assert len(bpf_filters(ns, dev)["ingress"]) == 2
    dp.detach(dev, ns)
    assert has_clsact(ns, dev)
    names = [f["options"].get("bpf_name") for f in tc_json(ns, "filter", "show", "dev", dev,
                                                            "ingress") if "options" in f]
    assert names == ["user"]
    assert bpf_filters(ns, dev)["egress"] == []
