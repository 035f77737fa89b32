"""Attaching and detaching: idempotent, atomic, and removing only what natgw added."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import time

import pytest

from lab.net import add_address
from natgw.dataplane import Dataplane, Mapping
from natgw.dataplane.loader import ETH_P_ALL, FILTER_PRIO, PARENTS, ipr_in
from natgw.netns import netns_socket

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


# A later filter on the same hook: counts the IPv4 packets it sees by the
# address natgw translates there (source on ingress, destination on egress).
COUNTER_SRC = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>

BPF_HASH(seen, __u32, __u64, 64);

static __always_inline int count(struct __sk_buff *skb, int off)
{
    __u32 addr;
    __u64 one = 1, *n;

    if (skb->protocol != bpf_htons(ETH_P_IP) ||
        bpf_skb_load_bytes(skb, ETH_HLEN + off, &addr, 4) < 0)
        return TC_ACT_UNSPEC;
    n = seen.lookup(&addr);
    if (n)
        __sync_fetch_and_add(n, 1);
    else
        seen.update(&addr, &one);
    return TC_ACT_UNSPEC;
}

int count_ingress(struct __sk_buff *skb) { return count(skb, offsetof(struct iphdr, saddr)); }
int count_egress(struct __sk_buff *skb) { return count(skb, offsetof(struct iphdr, daddr)); }
"""


def add_counter_filter(ns: str, dev: str, hook: str):
    """Attach the counting program after natgw's filter; return the bcc object (its map)."""
    from bcc import BPF

    bpf = BPF(text=COUNTER_SRC.encode())
    fd = bpf.load_func(f"count_{hook}".encode(), BPF.SCHED_CLS).fd
    with ipr_in(ns) as ipr:
        idx = ipr.link_lookup(ifname=dev)[0]
        ipr.tc("add-filter", "bpf", idx, FILTER_PRIO + 1, fd=fd, name=f"count_{hook}",
               parent=PARENTS[hook], classid=1, direct_action=True, prio=FILTER_PRIO + 1,
               protocol=ETH_P_ALL)
    return bpf


def seen_counts(bpf) -> dict[str, int]:
    return {str(ipaddress.IPv4Address(bytes(k.value.to_bytes(4, "little")))): v.value
            for k, v in bpf[b"seen"].items()}


def send_udp(ns: str, src: str | None, dst: str, count: int) -> None:
    with netns_socket(ns, socket.AF_INET, socket.SOCK_DGRAM) as s:
        if src:
            s.bind((src, 0))
        for i in range(count):
            s.sendto(i.to_bytes(2, "big"), (dst, 9000))


@pytest.mark.parametrize("hook", ["ingress", "egress"])
def test_a_later_filter_on_the_same_hook_sees_every_packet(netns_lab, hook):
    """natgw passes with TC_ACT_UNSPEC: the chain goes on, for unmatched
    packets untouched and for translated ones rewritten."""
    a, b = netns_lab.netns("A"), netns_lab.netns("B")
    a0, b0 = netns_lab.veth(a, "192.0.2.1/24", b, "192.0.2.2/24")
    add_address(b, b0, "198.51.100.7/24")
    subprocess.run(["ip", "netns", "exec", a, "ip", "route", "add", "10.245.0.0/24", "via",
                    "192.0.2.2"], check=True)
    dp = Dataplane.load(netns_lab.name("gw"))
    netns_lab.on_cleanup(dp.destroy)
    dp.attach(a0, a)
    netns_lab.on_cleanup(lambda: dp.detach(a0, a))
    dp.set_mappings(a0, [Mapping.parse("remote", "198.51.100.0/24", "10.245.0.0/24")], a)
    counter = add_counter_filter(a, a0, hook)
    netns_lab.on_cleanup(counter.cleanup)
    assert bpf_filters(a, a0)[hook] and len(bpf_filters(a, a0)[hook]) == 2

    if hook == "ingress":  # B -> A: plain, then from the mapped range (source translated)
        send_udp(b, None, "192.0.2.1", 5)
        send_udp(b, "198.51.100.7", "192.0.2.1", 3)
        want = {"192.0.2.2": 5, "10.245.0.7": 3}
    else:  # A -> B: plain, then to the mapped view (destination translated)
        send_udp(a, None, "192.0.2.2", 5)
        send_udp(a, None, "10.245.0.7", 3)
        want = {"192.0.2.2": 5, "198.51.100.7": 3}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and seen_counts(counter) != want:
        time.sleep(0.05)
    assert seen_counts(counter) == want
    stats = dp.tables.device_stats(dp.ifindex(a0, a))
    assert stats["unmatched"] >= 5
