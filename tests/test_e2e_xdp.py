"""fastpath: xdp through real veths: two gateways on the bare underlay (`interface:` peers),
natgw's XDP program in native mode on each gateway's pod link (a LAN device) and underlay
veth, its tc programs behind it.

The pods send complete checksums (tx off, the lab's xdp topology) and verify every
checksum they receive in software (rx off): what arrives intact arrived with valid
checksums, IP, TCP, UDP and ICMP. What XDP passes (SYNs to clamp, ICMP errors,
fragments) is forwarded and translated by the tc programs.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from e2e_traffic import harness_run, tcp_bulk, udp_exchange, udp_refused

from lab.harness import Run, Topology
from lab.net import natgw, natgw_programs, ping

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

TOPOLOGY = Topology(clusters=2, link="interface", fastpath="xdp")
XDP_ATTACHED_DRV = 1


@pytest.fixture(scope="module")
def run():
    yield from harness_run(TOPOLOGY)


def decisions(run: Run, i: int) -> dict[str, dict[str, int]]:
    """Fast-path decisions of gateway i's devices, by device name."""
    from natgw.introspect import read_gateway

    return {d.ifname: dict(d.fastpath) for d in read_gateway(f"{run.prefix}c{i}").devices}


def grew(before: dict, after: dict, dev: str, reason: str) -> int:
    return after[dev].get(reason, 0) - before.get(dev, {}).get(reason, 0)


def mapping_packets(run: Run, i: int) -> int:
    from natgw.introspect import read_gateway

    return sum(m.egress.packets + m.ingress.packets
               for d in read_gateway(f"{run.prefix}c{i}").devices for m in d.mappings)


def xdp_of(run: Run, i: int, dev: str) -> tuple[int, str]:
    """(XDP mode, program name) on a gateway's device."""
    out = subprocess.run(["ip", "-n", run.gw(i), "-j", "-d", "link", "show", "dev", dev],
                         capture_output=True, text=True, check=True).stdout
    xdp = json.loads(out)[0].get("xdp", {})
    return xdp.get("mode", 0), xdp.get("prog", {}).get("name", "")


def test_xdp_runs_natively_before_the_tc_programs(run: Run) -> None:
    for i, j in TOPOLOGY.pairs:
        for dev, prog in ((run.pod_link(i), "lan"), (run.underlay_dev(i, j), "ingress_fast")):
            assert xdp_of(run, i, dev) == (XDP_ATTACHED_DRV, "natgw_xdp"), dev
            assert natgw_programs(run.gw(i), dev).get("ingress") == prog, dev


@pytest.mark.parametrize(("i", "j"), TOPOLOGY.pairs)
def test_translated_both_ways_by_xdp(run: Run, i: int, j: int) -> None:
    """A pod's TCP and UDP reach the other cluster's pod intact and back, every packet of
    the established flows sent by XDP on both gateways, counted on its mappings."""
    client, server = run.pod(i), run.pod(j)
    own, dst = TOPOLOGY.pod_addr(j), TOPOLOGY.addr_of(i, j)
    before = {g: decisions(run, g) for g in (i, j)}
    packets = {g: mapping_packets(run, g) for g in (i, j)}
    t = tcp_bulk(client, server, own, dst, 512 * 1024)
    assert t.received == t.sent and t.client_seen_as == TOPOLOGY.addr_of(j, i)
    udp_exchange(client, server, own, dst, os.urandom(1000))
    assert ping(client, dst, count=2) == 2
    after = {g: decisions(run, g) for g in (i, j)}
    # The data: out of the client's gateway (pod link -> underlay), into the server's
    # (underlay -> pod), one frame per segment (the client sends complete checksums, so
    # no TSO). The replies, the other way round: the ACKs (fewer: the server's end has
    # GRO), the UDP answer and the echo replies.
    sent = 512 * 1024 // 1500
    for g, dev, least in ((i, run.pod_link(i), sent), (j, run.underlay_dev(j, i), sent),
                          (j, run.pod_link(j), 5), (i, run.underlay_dev(i, j), 5)):
        assert grew(before[g], after[g], dev, "xdp_redirect") >= least, (g, dev, after[g])
    for g in (i, j):
        assert mapping_packets(run, g) - packets[g] >= sent


@pytest.mark.parametrize(("i", "j"), TOPOLOGY.pairs)
def test_what_xdp_passes_tc_forwards_translated(run: Run, i: int, j: int) -> None:
    """SYNs (the MSS clamp) and ICMP errors (quotes) go through XDP to tc: the
    connection and a closed port's refusal reach the client as without XDP."""
    client, server = run.pod(i), run.pod(j)
    own, dst = TOPOLOGY.pod_addr(j), TOPOLOGY.addr_of(i, j)
    before = decisions(run, i)
    t = tcp_bulk(client, server, own, dst, 1024)
    assert t.received == t.sent
    assert udp_refused(client, dst)
    after = decisions(run, i)
    assert grew(before, after, run.pod_link(i), "xdp_to_tc") >= 1  # the SYN
    # The port unreachable came back over the underlay: XDP left it to tc.
    assert grew(before, after, run.underlay_dev(i, j), "icmp_error") >= 1


def test_an_xdp_program_removed_by_hand_is_drift_and_up_puts_it_back(run: Run) -> None:
    from natgw.config import load_config
    from natgw.gateway import Gateway

    i = 1
    path = Path(f"{run.workdir}/c{i}.yaml")
    gw = Gateway(load_config(path), run.gw(i), path)
    assert gw.drift() == []
    subprocess.run(["ip", "-n", run.gw(i), "link", "set", "dev", run.pod_link(i), "xdpdrv",
                    "off"], check=True)
    assert gw.drift() == [f"filter {run.pod_link(i)} xdp"]
    natgw("--netns", run.gw(i), "up", str(path), "--detach")
    assert xdp_of(run, i, run.pod_link(i)) == (XDP_ATTACHED_DRV, "natgw_xdp")
    assert gw.drift() == []


def test_up_again_keeps_xdp_and_down_removes_it(run: Run) -> None:
    """A second `up` finds natgw's program attached and keeps it (the same program, pinned
    again without a compile when its pins and the XDP maps' were removed by hand);
    `down` takes the XDP program off with the tc filters (the last test: it ends gateway 2)."""
    i, j = 2, 1
    devs = (run.pod_link(i), run.underlay_dev(i, j))
    ids = {dev: _prog_id(run, i, dev) for dev in devs}
    pdir = Path(f"/sys/fs/bpf/natgw/{run.prefix}c{i}")
    removed = sorted(p.name for p in pdir.iterdir()
                     if p.name.startswith("prog_xdp_") or p.name.startswith("xdp_"))
    assert len(removed) == 3, removed
    for name in removed:
        (pdir / name).unlink()
    natgw("--netns", run.gw(i), "up", f"{run.workdir}/c{i}.yaml", "--detach")
    assert {dev: _prog_id(run, i, dev) for dev in devs} == ids
    assert all(ids.values())
    assert all((pdir / name).exists() for name in removed)
    natgw("--netns", run.gw(i), "down", f"{run.prefix}c{i}")
    for dev in devs:
        assert xdp_of(run, i, dev) == (0, ""), dev
        assert natgw_programs(run.gw(i), dev) == {}, dev


def _prog_id(run: Run, i: int, dev: str) -> int:
    out = subprocess.run(["ip", "-n", run.gw(i), "-j", "-d", "link", "show", "dev", dev],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0].get("xdp", {}).get("prog", {}).get("id", 0)
