"""bench's topologies: each mode really forwards, with the addresses it promises.

One datagram each way through every mode and transport; the benchmark's UDP
generator's packets arrive (so their checksums verify) translated as the mode
says; natgw's programs count every BPF_PROG_TEST_RUN repetition; extra mappings
install and clear. No timing is asserted anywhere.
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
from bench.topology import MAC, MODES, POD_ADDR, TRANSPORTS, Topology, cleanup, new_record
from lab.net import in_ns
from natgw.dataplane import Dataplane
from natgw.netns import netns_socket

pytestmark = [pytest.mark.netns, pytest.mark.bpf]


@pytest.fixture()
def record():
    for tool in ("nft", "iptables-legacy", "wireguard-go", "wg"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    rec = new_record()
    yield rec
    cleanup(rec)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", MODES)
def test_each_mode_forwards_with_the_expected_addresses(record, mode, transport):
    topo = Topology(record, mode, transport)
    topo.build()
    seen_by_pod2, seen_by_pod1 = topo.verify()
    want = ("10.244.1.10", "10.245.1.10") if mode == "route" else ("10.221.1.10", "10.212.1.10")
    assert (seen_by_pod2, seen_by_pod1) == want
    assert (topo.plan.pod1_seen_as, topo.plan.target) == want


def _receive(topo: Topology, new_flow: bool, port: int = 7002) -> set[tuple[str, int]]:
    """Sources of what udpgen's frames delivered to a socket in pod2."""
    rx = netns_socket(topo.pod2, socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((topo.plan.pod2_addr, port))
    rx.settimeout(0.5)
    argv = generator.argv(topo.dev["e1"], MAC["p1"], MAC["e1"], POD_ADDR, topo.plan.target,
                          40000, port, 64, 0.3, new_flow)
    subprocess.run(in_ns(topo.pod1, ["timeout", "5", *argv]), check=True, timeout=10,
                   capture_output=True)
    sources = set()
    try:
        while len(sources) < 5000:
            data, src = rx.recvfrom(2048)
            assert len(data) == 64
            sources.add(src)
    except TimeoutError:
        pass
    finally:
        rx.close()
    return sources


@pytest.mark.parametrize("mode", ["nftables", "natgw"])
def test_generator_frames_arrive_translated(record, mode):
    topo = Topology(record, mode, "underlay")
    topo.build()
    topo.check()
    one = _receive(topo, new_flow=False)
    assert one == {("10.221.1.10", 40000)}
    many = _receive(topo, new_flow=True)
    assert len(many) > 100  # a new source port and address low bits per packet
    assert {ipaddress.ip_address(a) in ipaddress.ip_network("10.221.0.0/16")
            for a, _ in many} == {True}


def test_extra_mappings_install_and_clear(record):
    topo = Topology(record, "natgw", "underlay", extra=150)
    topo.build()
    topo.check()  # the benchmark's own mapping still wins for its traffic
    assert topo.key == "natgw-m151/underlay"
    with Dataplane.open(topo.gateways[0]) as dp:
        assert len(dp.mappings(dp.ifindex(topo.dev["u1"], topo.gw1))) == 151
    times = topo.install_times[0]
    assert (times["public_calls"], times["bulk_calls"]) == (101, 49)  # 100, bulk, 1 last
    assert clear_mappings(topo.gateways[0]) == 2 * 151  # an egress and an ingress entry each
    with Dataplane.open(topo.gateways[0]) as dp:
        assert dp.mappings() == []


def test_programs_run_alone_count_every_repetition(record):
    # run_programs raises unless the mapping's counters saw every run translated.
    got = micro.run_programs(f"{record.prefix}x", repeat=10, rounds=1)
    assert set(got) == {"1", "10000"}
    assert all(v > 0 for case in got.values() for v in case.values())
    assert not os.path.exists(f"/sys/fs/bpf/natgw/{record.prefix}x")  # pins removed


def test_route_with_natgw_hooks_forwards_untranslated(record):
    topo = Topology(record, "route", "underlay", hooks="tcx")
    topo.build()
    assert topo.key == "route+natgw-hooks/underlay"
    assert topo.verify() == ("10.244.1.10", "10.245.1.10")  # the programs matched nothing
    for gw, ns, dev in zip(topo.gateways, (topo.gw1, topo.gw2), topo.peer_dev, strict=True):
        with Dataplane.open(gw) as dp:
            assert [m.mapping.cidr.compressed for m in dp.mappings()] == ["10.99.0.0/16"]
            assert dp.tables.device(dp.ifindex(dev, ns)) is not None  # attached
