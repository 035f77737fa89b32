"""bench's topologies: each mode really forwards, with the addresses it promises.

One datagram each way through every mode and transport, in both families; the
benchmark's UDP generator's packets (64-byte and 1400-byte, IPv4 and IPv6, one
flow and a new flow per packet) arrive whole, translated as the mode says;
conntrack sees the traffic in exactly the modes that track; natgw's programs count
every BPF_PROG_TEST_RUN repetition; extra mappings install and clear. No timing
is asserted anywhere. Each topology is built once for the module.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess

import pytest

from bench import generator, micro
from bench.mappings import clear_mappings
from bench.topology import (
    FAMILY,
    MAC,
    MODE_TABLE,
    MODES,
    VERIFY_PORT,
    WG_MODES,
    Topology,
    WithMappings,
    cleanup,
    conntrack_entries,
    extra_mappings,
    natgw_refuses,
    new_record,
)
from bench.workloads import Workload, classes
from lab.net import in_ns, sh
from natgw.dataplane import Dataplane
from natgw.netns import netns_socket

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

SO_RCVBUFFORCE = 33  # Linux; not in Python's socket module
# What pod2 sees pod1 as, and pod1 pod2, per family: plain routing, then NETMAP.
ROUTED = {4: ("10.244.1.10", "10.245.1.10"), 6: ("fd00:244:0:1::10", "fd00:245:0:1::10")}
TRANSLATED = {4: ("10.221.1.10", "10.212.1.10"), 6: ("fd00:221:0:1::10", "fd00:212:0:1::10")}


CASES = [(m, "underlay") for m in (*MODES, "natgw-xdp")] + [(m, "wg") for m in WG_MODES]


@pytest.fixture(scope="module")
def record():
    for tool in ("nft", "iptables-legacy", "ip6tables-legacy", "wireguard-go", "wg", "ethtool"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    rec = new_record()
    yield rec
    cleanup(rec)


@pytest.fixture(scope="module")
def built(record):
    """topology(mode, transport, **kw): built (and checked) once for the module."""
    cache: dict[tuple, Topology] = {}

    def get(mode: str, transport: str = "underlay", hooks: str = "",
            tx_csum_off: bool = False) -> Topology:
        key = (mode, transport, hooks, tx_csum_off)
        if key not in cache:
            topo = Topology(record, mode, transport, hooks=hooks, tx_csum_off=tx_csum_off)
            topo.build()
            topo.check()  # raises unless both families arrive as the plan says
            cache[key] = topo
        return cache[key]

    yield get
    for topo in cache.values():
        topo.teardown()


@pytest.mark.parametrize("mode, transport", CASES)
def test_each_mode_forwards_with_the_expected_addresses(built, mode, transport):
    why = natgw_refuses(mode)
    if why:
        pytest.skip(f"{mode}: {why}")
    spec = MODE_TABLE[mode]
    topo = built(mode, transport, tx_csum_off=spec.tx_csum_off)
    want = TRANSLATED if spec.overlapping else ROUTED
    for fam in (4, 6):
        assert topo.verify(fam) == want[fam]
        assert (topo.plans[fam].pod1_seen_as, topo.plans[fam].target) == want[fam]
        # conntrack saw the datagrams exactly where the mode has it
        for ns in (topo.gw1, topo.gw2):
            assert bool(conntrack_entries(ns, fam, VERIFY_PORT)) == spec.conntrack


def test_route_ct_tracks_what_it_forwards_and_route_does_not(built):
    ct, plain = built("route-ct"), built("route")
    for fam in (4, 6):
        ct.verify(fam)  # entries expire 3 s after the last datagram (CT_UDP_TIMEOUT)
        plain.verify(fam)
        entries = conntrack_entries(ct.gw1, fam, VERIFY_PORT)
        assert entries and all(f"ipv{fam}" in e for e in entries)
        assert conntrack_entries(plain.gw1, fam, VERIFY_PORT) == []
    nft = sh(ct.gw1, "nft", "list", "ruleset")
    assert "ct state established,related accept" in nft and "nat" not in nft


def _receive(topo: Topology, work: Workload, port: int = 7002) -> set[tuple[str, int]]:
    """Sources of what udpgen's frames delivered to a socket in pod2."""
    pl = topo.plans[work.family]
    af = socket.AF_INET if work.family == 4 else socket.AF_INET6
    rx = netns_socket(topo.pod2, af, socket.SOCK_DGRAM)
    # room for thousands of 1400-byte datagrams: they are read after the generator ends
    rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
    rx.bind((pl.pod2_addr, port))
    rx.settimeout(0.5)
    argv = generator.argv(topo.dev["e1"], MAC["p1"], MAC["e1"], pl.pod1_addr, pl.target,
                          40000, port, work.payload, 0.3, work.new_flow)
    subprocess.run(in_ns(topo.pod1, ["timeout", "5", *argv]), check=True, timeout=10,
                   capture_output=True)
    sources = set()
    try:
        while len(sources) < 5000:
            data, src = rx.recvfrom(2048)
            assert len(data) == work.payload  # whole, and its checksum verified on receive
            sources.add(src[:2])
    except TimeoutError:
        pass
    finally:
        rx.close()
    return sources


@pytest.mark.parametrize("size, family", classes())
@pytest.mark.parametrize("mode", ["nftables", "natgw"])
def test_generator_frames_arrive_translated(built, mode, size, family):
    topo = built(mode)
    seen = TRANSLATED[family][0]
    one = _receive(topo, Workload(size, family, False))
    assert one == {(seen, 40000)}
    many = _receive(topo, Workload(size, family, True))
    assert len(many) > 100  # a new source port and address low bits per packet
    assert {ipaddress.ip_address(a) in ipaddress.ip_network(FAMILY[family].c1_seen_by_c2)
            for a, _ in many} == {True}


def test_natgw_modes_take_the_path_they_promise(built):
    # natgw's default sends the flood through its fast path; natgw-off never does.
    work = Workload("64", 4, False)
    modes = [m for m in ("natgw", "natgw-off") if not natgw_refuses(m)]
    for mode in modes:
        topo = built(mode)
        before = topo.fastpath_decisions()
        assert _receive(topo, work) == {(TRANSLATED[4][0], 40000)}
        after = topo.fastpath_decisions()
        redirected = sum(n - before.get(r, 0) for r, n in after.items()
                         if r.startswith("redirect"))
        if MODE_TABLE[mode].fastpath == "off":
            assert redirected == 0
        else:
            assert redirected > 1000  # the 0.3 s flood, redirected on both gateways
    assert built("route").fastpath_decisions() == {}


def test_senders_checksum_offload_off_when_asked(built):
    topo = built("route", tx_csum_off=True)
    for ns, dev in ((topo.pod1, topo.dev["e1"]), (topo.pod2, topo.dev["e2"])):
        assert "tx-checksumming: off" in sh(ns, "ethtool", "-k", dev)
    assert "tx-checksumming: on" in sh(built("route").pod1, "ethtool", "-k",
                                       built("route").dev["e1"])
    work = Workload("1400", 6, False)  # checksums computed in software still verify
    assert _receive(topo, work) == {(ROUTED[6][0], 40000)}


def _peer_mappings(topo: Topology) -> list[set[str]]:
    """The cidrs mapped on each gateway's IPv4 peer device."""
    out = []
    for gw, ns, dev in topo.peer_tables():
        with Dataplane.open(gw) as dp:
            out.append({str(m.mapping.cidr) for m in dp.mappings(dp.ifindex(dev, ns))})
    return out


def test_the_mapping_series_changes_the_tables_of_the_same_gateways(built):
    topo = built("natgw")
    own = _peer_mappings(topo)
    work = Workload("64", 4, False)
    for n in (150, 40, 150):  # up, down, up again: exactly the first n extras each time
        view = WithMappings(topo, n)
        assert view.key == f"natgw-m{n + 1}/underlay" and view.gw1 == topo.gw1
        view.prepare()
        want = {cidr for cidr, _ in extra_mappings(n)}
        assert _peer_mappings(topo) == [o | want for o in own]
        # the traffic still crosses the same gateways, translated
        assert _receive(view, work) == {(TRANSLATED[4][0], 40000)}
    topo.prepare()  # back to its own mappings
    assert _peer_mappings(topo) == own
    times = topo.time_extra_mappings(150)
    assert [(t["public_calls"], t["bulk_calls"]) for t in times] == [(101, 49)] * 2
    assert _peer_mappings(topo) == own  # timed, then removed again


def test_mappings_clear_in_one_pass_and_up_restores_them(built):
    topo = built("natgw")
    own = _peer_mappings(topo)
    topo.set_extra_mappings(150)
    # both families' own mappings plus the extra ones: an egress and an ingress entry each
    assert clear_mappings(topo.gateways[0]) == 2 * 152
    with Dataplane.open(topo.gateways[0]) as dp:
        assert dp.mappings() == []
    clear_mappings(topo.gateways[1])
    topo.extra_installed = 0  # cleared behind set_extra_mappings' back
    for i in (0, 1):
        topo.natgw_up(i)  # the same file again: what the tables lack is written back
    assert _peer_mappings(topo) == own
    assert topo.verify(4) == TRANSLATED[4]


def test_programs_run_alone_count_every_repetition(record):
    # run_programs raises unless the mapping's counters saw every run translated.
    got = micro.run_programs(f"{record.prefix}x", repeat=10, rounds=1)
    assert set(got) == {"1", "10000"}
    assert all(v > 0 for case in got.values() for v in case.values())
    assert not os.path.exists(f"/sys/fs/bpf/natgw/{record.prefix}x")  # pins removed


def test_lanes_run_alone_redirect_every_repetition(record):
    # run_lanes raises unless the fast path counted every run as the lane's redirect:
    # the LAN lane to the interface device, the ingress lane into the pod's veth.
    got = micro.run_lanes(record, calls=2, rounds=1)
    cases = {"lan_v4", "ingress_fast_v4", "lan_v6", "ingress_fast_v6"}
    assert {label: set(by_case) for label, by_case in got.items()} == {"1": cases,
                                                                       "10000": cases}
    assert all(v > 0 for case in got.values() for v in case.values())
    lanes = f"{record.prefix}l"
    assert not os.path.exists(f"/sys/fs/bpf/natgw/{lanes}x")  # pins removed
    assert not any(n.startswith(lanes) for n in os.listdir("/var/run/netns"))
    assert not any(n.startswith(lanes) for n in record.namespaces)
    assert f"{lanes}x" not in record.gateways


def test_route_with_natgw_hooks_forwards_untranslated(built):
    topo = built("route", hooks="tcx")
    assert topo.key == "route+natgw-hooks/underlay"
    assert topo.verify() == ROUTED[4]  # the programs matched nothing
    for gw, ns, dev in zip(topo.gateways, (topo.gw1, topo.gw2), topo.peer_dev, strict=True):
        with Dataplane.open(gw) as dp:
            assert [m.mapping.cidr.compressed for m in dp.mappings()] == ["10.99.0.0/16"]
            assert dp.tables.device(dp.ifindex(dev, ns)) is not None  # attached
