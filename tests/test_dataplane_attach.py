"""Attaching and detaching, by tcx links and by clsact + cls_bpf filters: idempotent,
atomic, moving from one mechanism to the other without a gap, and removing only what
natgw added."""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from lab.net import add_address, tcx_programs
from lab.netnslab import NetnsLab, netns_unavailable_reason
from natgw.dataplane import Dataplane, Mapping
from natgw.dataplane import bpfsys as B
from natgw.dataplane.hooks import (
    ETH_P_ALL,
    FILTER_PRIO,
    MECHANISM_ENV,
    PARENTS,
    LinkHolder,
    attach_hook,
    tcx_available,
)
from natgw.dataplane.layout import DEV_F_OWN_QDISC
from natgw.dataplane.loader import ipr_in
from natgw.netns import in_netns, netns_socket

pytestmark = [pytest.mark.bpf, pytest.mark.netns]
TCX_TYPES = {"ingress": B.BPF_TCX_INGRESS, "egress": B.BPF_TCX_EGRESS}


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


def tcx_progs(ns: str, dev: str) -> dict[str, list[tuple[int, int]]]:
    """(program id, link id) of the programs on each tcx hook, in the order they run."""
    return {h: [(pid, link) for _, pid, link in e] for h, e in tcx_programs(ns, dev).items()}


def has_clsact(ns: str, dev: str) -> bool:
    return any(q["kind"] == "clsact" for q in tc_json(ns, "qdisc", "show", "dev", dev))


def prog_id(fd: int) -> int:
    return B.prog_info(fd).id


@pytest.fixture()
def mech(request, monkeypatch):
    """The attach mechanism of a test (NATGW_ATTACH)."""
    if request.param == "tcx" and not tcx_available():
        pytest.skip("the kernel has no tcx (< 6.6)")
    monkeypatch.setenv(MECHANISM_ENV, request.param)
    return request.param


@pytest.fixture(scope="module")
def compiled():
    """One veth pair and one compiled dataplane for the module's tests (compiling costs)."""
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with NetnsLab() as lab:
        dp = Dataplane.load(lab.name("gw"))
        lab.on_cleanup(dp.destroy)
        yield lab, dp


_pairs = itertools.count()


@pytest.fixture()
def pair(compiled):
    """(dataplane, netns A, A's end, netns B, B's end) of a fresh veth pair."""
    lab, dp = compiled
    n = next(_pairs)
    a, b = lab.netns(f"A{n}"), lab.netns(f"B{n}")
    dev, peer = lab.veth(a, "192.0.2.1/24", b, "192.0.2.2/24")
    yield dp, a, dev, b, peer
    dp.detach(dev, a)


@pytest.fixture()
def veth(pair):
    return pair[:3]


@pytest.mark.parametrize("mech", ["tcx", "tc"], indirect=True)
def test_attach_is_idempotent_and_mapping_updates_keep_the_programs(veth, mech):
    dp, ns, dev = veth
    info = dp.attach(dev, ns, mtu=1420)
    assert info.l3_offset == 14 and (info.mss_v4, info.mss_v6) == (1380, 1360)
    first = (bpf_filters(ns, dev), tcx_progs(ns, dev) if tcx_available() else {})
    ours = {"egress": prog_id(dp.programs.egress_fd), "ingress": prog_id(dp.programs.ingress_fd)}
    if mech == "tcx":
        assert first[0] == {"ingress": [], "egress": []} and not has_clsact(ns, dev)
        assert {h: [p for p, _ in e] for h, e in first[1].items()} == \
            {h: [ours[h]] for h in ours}
        assert sorted(n for n in os.listdir(dp.pin_dir) if n.startswith("link_")) == \
            [f"link_egress_{dev}", f"link_ingress_{dev}"]
    else:
        assert first[0] == {h: [ours[h]] for h in ours} and has_clsact(ns, dev)
        assert not any(first[1].values())
    dp.attach(dev, ns, mtu=1420)
    dp.set_mappings(dev, [Mapping.parse("remote", "10.244.0.0/16", "10.245.0.0/16")], ns)
    dp.set_mappings(dev, [Mapping.parse("remote", "10.244.0.0/16", "10.247.0.0/16")], ns)
    assert (bpf_filters(ns, dev), tcx_progs(ns, dev) if tcx_available() else {}) == first
    # Another process (no compile) sees the same build: it reuses the pinned programs.
    again = Dataplane.load(dp.gateway)
    try:
        again.attach(dev, ns, mtu=1420)
        assert (bpf_filters(ns, dev), tcx_progs(ns, dev) if tcx_available() else {}) == first
    finally:
        again.close()


def test_a_tcx_link_is_replaced_atomically_and_outlives_its_maker_only_by_its_pin(veth,
                                                                                  monkeypatch):
    """Another program on a hook: the same link runs it (BPF_LINK_UPDATE), never none.
    The pin keeps the link; removed, it detaches unless someone (the foreground) holds it."""
    if not tcx_available():
        pytest.skip("the kernel has no tcx (< 6.6)")
    dp, ns, dev = veth
    dp.attach(dev, ns)
    [(pid, link)] = tcx_progs(ns, dev)["egress"]
    with ipr_in(ns) as ipr:
        idx = ipr.link_lookup(ifname=dev)[0]
        attach_hook(ipr, idx, "egress", dp.programs.ingress_fd, dp.programs.pin("egress"))
    assert tcx_progs(ns, dev)["egress"] == [(prog_id(dp.programs.ingress_fd), link)]
    dp.attach(dev, ns)  # and back
    assert tcx_progs(ns, dev)["egress"] == [(pid, link)]

    holder = LinkHolder()
    holder.refresh(dp.pin_dir)
    pin = os.path.join(dp.pin_dir, f"link_egress_{dev}")
    os.unlink(pin)
    holder.refresh(dp.pin_dir)
    assert tcx_progs(ns, dev)["egress"] == [(pid, link)]  # held: still runs
    dp.attach(dev, ns)  # pinned again from the kernel, the same link
    assert os.path.exists(pin) and tcx_progs(ns, dev)["egress"] == [(pid, link)]
    holder.close()
    os.unlink(pin)
    # The pin was its only holder. (bpffs frees an inode after an RCU grace period and
    # the link's release runs from a workqueue: the detach follows shortly.)
    deadline = time.monotonic() + 5
    while tcx_progs(ns, dev)["egress"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert tcx_progs(ns, dev)["egress"] == []
    dp.attach(dev, ns)
    assert [p for p, _ in tcx_progs(ns, dev)["egress"]] == [pid]


@pytest.mark.parametrize("mech", ["tcx", "tc"], indirect=True)
def test_detach_removes_only_what_natgw_added(veth, mech):
    dp, ns, dev = veth
    dp.attach(dev, ns)
    assert has_clsact(ns, dev) == (mech == "tc")
    dp.detach(dev, ns)
    assert not has_clsact(ns, dev)
    assert dp.tables.all_devices() == {}
    assert not any(n.startswith("link_") for n in os.listdir(dp.pin_dir))
    if tcx_available():
        assert not any(tcx_progs(ns, dev).values())
    dp.detach(dev, ns)  # again: a no-op

    # A clsact qdisc the user made, with a filter of their own (any bpf program at
    # another priority: this kernel has no other classifier), and a tcx program of
    # theirs, stay.
    subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "clsact"],
                   check=True)
    with ipr_in(ns) as ipr:
        idx = ipr.link_lookup(ifname=dev)[0]
        ipr.tc("add-filter", "bpf", idx, 7, fd=dp.programs.egress_fd, name="user",
               parent=PARENTS["ingress"], classid=1, direct_action=True, prio=7,
               protocol=ETH_P_ALL)
    user_link = user = None
    if tcx_available():  # natgw's programs are known by name: theirs is called "user"
        from bcc import BPF

        user = BPF(text=b"int user(struct __sk_buff *skb) { return -1; }")
        ufd = user.load_func(b"user", BPF.SCHED_CLS).fd
        user_link = in_netns(ns, lambda: B.tcx_link_create(ufd, socket.if_nametoindex(dev),
                                                         B.BPF_TCX_INGRESS))
    try:
        dp.attach(dev, ns)
        assert len(bpf_filters(ns, dev)["ingress"]) == (2 if mech == "tc" else 1)
        dp.detach(dev, ns)
        assert has_clsact(ns, dev)
        names = [f["options"].get("bpf_name") for f in tc_json(ns, "filter", "show", "dev",
                                                                dev, "ingress") if "options" in f]
        assert names == ["user"]
        assert bpf_filters(ns, dev)["egress"] == []
        if user_link is not None:
            assert tcx_progs(ns, dev) == {"ingress": [(prog_id(ufd), B.link_info(user_link).id)],
                                          "egress": []}
    finally:
        if user_link is not None:
            os.close(user_link)
            user.cleanup()
        subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "clsact"],
                       check=True)


def test_a_running_device_moves_from_filters_to_tcx_without_a_gap(pair, monkeypatch):
    """natgw as attached before tcx (clsact + cls_bpf, its own qdisc) under a stream of
    packets to translate: the next attach puts tcx links on first, then removes the
    filters and the qdisc. Every packet arrives translated; a user's filter stays."""
    if not tcx_available():
        pytest.skip("the kernel has no tcx (< 6.6)")
    dp, a, a0, b, b0 = pair
    add_address(b, b0, "198.51.100.7/24")
    monkeypatch.setenv(MECHANISM_ENV, "tc")
    dp.attach(a0, a)
    dp.set_mappings(a0, [Mapping.parse("remote", "198.51.100.0/24", "10.245.0.0/24")], a)
    with ipr_in(a) as ipr:
        idx = ipr.link_lookup(ifname=a0)[0]
        ipr.tc("add-filter", "bpf", idx, 7, fd=dp.programs.egress_fd, name="user",
               parent=PARENTS["egress"], classid=1, direct_action=True, prio=7,
               protocol=ETH_P_ALL)
    assert has_clsact(a, a0) and len(bpf_filters(a, a0)["ingress"]) == 1

    # B -> A from the mapped range: A sees the source translated (ingress), or not.
    seen: dict[str, int] = {}
    stop = threading.Event()
    with netns_socket(a, socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        rx.bind(("192.0.2.1", 9000))
        rx.settimeout(0.5)

        def receive() -> None:
            while True:
                try:
                    _, (src, _) = rx.recvfrom(64)
                except TimeoutError:
                    if stop.is_set():
                        return
                    continue
                seen[src] = seen.get(src, 0) + 1

        t = threading.Thread(target=receive)
        t.start()
        sent = 0
        with netns_socket(b, socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.bind(("198.51.100.7", 0))

            def burst(n: int) -> None:
                nonlocal sent
                for _ in range(n):
                    tx.sendto(b"x", ("192.0.2.1", 9000))
                    sent += 1

            burst(200)
            monkeypatch.setenv(MECHANISM_ENV, "tcx")
            switch = threading.Thread(target=lambda: dp.attach(a0, a))
            switch.start()
            while switch.is_alive():
                burst(20)
            switch.join()
            burst(200)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and sum(seen.values()) < sent:
            time.sleep(0.05)
        stop.set()
        t.join()
    # (A full receive buffer may drop some; an untranslated one would show its source.)
    assert set(seen) == {"10.245.0.7"} and seen["10.245.0.7"] >= sent * 0.9, (seen, sent)
    assert bpf_filters(a, a0)["ingress"] == [] and len(bpf_filters(a, a0)["egress"]) == 1
    assert [p for p, _ in tcx_progs(a, a0)["ingress"]] == [prog_id(dp.programs.ingress_fd)]
    assert has_clsact(a, a0)  # the user's filter keeps it
    assert dp.tables.device(idx).flags & DEV_F_OWN_QDISC  # natgw's claim on it, for `down`
    dp.detach(a0, a)
    assert has_clsact(a, a0) and len(bpf_filters(a, a0)["egress"]) == 1


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


def add_counter(ns: str, dev: str, hook: str, kind: str):
    """Attach the counting program after natgw's (a tc filter or a tcx link, by kind);
    return the bcc object (its map) and a function that detaches it."""
    from bcc import BPF

    bpf = BPF(text=COUNTER_SRC.encode())
    fd = bpf.load_func(f"count_{hook}".encode(), BPF.SCHED_CLS).fd
    if kind == "tcx":
        link = in_netns(ns, lambda: B.tcx_link_create(fd, socket.if_nametoindex(dev),
                                                    TCX_TYPES[hook]))
        return bpf, lambda: (os.close(link), bpf.cleanup())
    if not has_clsact(ns, dev):  # (with natgw on tcx, the user makes it)
        subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "clsact"],
                       check=True)
    with ipr_in(ns) as ipr:
        idx = ipr.link_lookup(ifname=dev)[0]
        ipr.tc("add-filter", "bpf", idx, FILTER_PRIO + 1, fd=fd, name=f"count_{hook}",
               parent=PARENTS[hook], classid=1, direct_action=True, prio=FILTER_PRIO + 1,
               protocol=ETH_P_ALL)
    return bpf, bpf.cleanup


def seen_counts(bpf) -> dict[str, int]:
    return {str(ipaddress.IPv4Address(bytes(k.value.to_bytes(4, "little")))): v.value
            for k, v in bpf[b"seen"].items()}


def send_udp(ns: str, src: str | None, dst: str, count: int) -> None:
    with netns_socket(ns, socket.AF_INET, socket.SOCK_DGRAM) as s:
        if src:
            s.bind((src, 0))
        for i in range(count):
            s.sendto(i.to_bytes(2, "big"), (dst, 9000))


@pytest.mark.parametrize("mech,neighbour", [("tcx", "tc"), ("tcx", "tcx"), ("tc", "tc")],
                         indirect=["mech"])
@pytest.mark.parametrize("hook", ["ingress", "egress"])
def test_a_later_filter_on_the_same_hook_sees_every_packet(pair, hook, mech, neighbour):
    """natgw passes with TC_ACT_UNSPEC (== TCX_NEXT): the chain goes on, to a tcx
    program after natgw's link and to the tc filters (tcx runs before them), for
    unmatched packets untouched and for translated ones rewritten."""
    if neighbour == "tcx" and not tcx_available():
        pytest.skip("the kernel has no tcx (< 6.6)")
    dp, a, a0, b, b0 = pair
    add_address(b, b0, "198.51.100.7/24")
    subprocess.run(["ip", "netns", "exec", a, "ip", "route", "add", "10.245.0.0/24", "via",
                    "192.0.2.2"], check=True)
    dp.attach(a0, a)
    dp.set_mappings(a0, [Mapping.parse("remote", "198.51.100.0/24", "10.245.0.0/24")], a)
    counter, remove = add_counter(a, a0, hook, neighbour)
    try:
        _count_after_natgw(dp, a, a0, b, hook, counter)
    finally:
        remove()
    if neighbour == "tc":
        subprocess.run(["ip", "netns", "exec", a, "tc", "qdisc", "del", "dev", a0, "clsact"],
                       check=False)


def _count_after_natgw(dp, a, a0, b, hook, counter) -> None:
    ours = {"tc": bpf_filters(a, a0)[hook],
            "tcx": [p for p, _ in tcx_progs(a, a0)[hook]] if tcx_available() else []}
    assert sum(len(v) for v in ours.values()) == 2

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
