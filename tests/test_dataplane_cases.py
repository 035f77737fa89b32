"""The dataplane, packet by packet: a table of input -> expected output.

Every case runs the compiled programs through BPF_PROG_TEST_RUN on a
CHECKSUM_COMPLETE skb (see bpf_run): a program that leaves skb->csum stale
fails the case. Expected packets are built by scapy with checksums left empty,
so scapy computes them: an output equal byte for byte to the expected packet
has every checksum right. Packets natgw lets through, translated or not,
return TC_ACT_UNSPEC so that later tc filters still run; drops TC_ACT_SHOT.

Addresses (the overlap is the point: both sides use 10.244.0.0/16):
  local  cidr 10.244.0.0/16  as 10.246.0.0/16   (how the peer sees us)
  remote cidr 10.244.0.0/16  as 10.245.0.0/16   (how we see the peer)
  IPv6: local fd00:a::/64 as fd00:c::/64, remote fd00:a::/48 as fd00:b::/48
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from bpf_run import (
    ETHER,
    LO_IFINDEX,
    TC_ACT_SHOT,
    TC_ACT_UNSPEC,
    Runner,
    run_frame,
    run_gateway_name,
)
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR, fragment
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP
from scapy.packet import Packet, Raw

from natgw.dataplane import Dataplane, Mapping

pytestmark = pytest.mark.bpf

# Our host, as it is (L) and as the peer sees it (LA); the peer's host, as it
# is (R) and as we see it (RA). Distinct "as" ranges: a swapped table fails.
L, LA = "10.244.1.2", "10.246.1.2"
R, RA = "10.244.3.4", "10.245.3.4"
L6, LA6 = "fd00:a::12", "fd00:c::12"
R6, RA6 = "fd00:a:0:7::34", "fd00:b:0:7::34"
OTHER, OTHER2 = "192.168.1.1", "192.168.2.2"
MTU = 1420
MSS4, MSS6 = MTU - 40, MTU - 60

MAPPINGS = [
    Mapping.parse("remote", "10.244.0.0/16", "10.245.0.0/16"),
    Mapping.parse("local", "10.244.0.0/16", "10.246.0.0/16"),
    Mapping.parse("remote", "fd00:a::/48", "fd00:b::/48"),
    Mapping.parse("local", "fd00:a::/64", "fd00:c::/64"),
]


@pytest.fixture(scope="module")
def dp():
    dp = Dataplane.load(run_gateway_name())
    try:
        yield dp
    finally:
        dp.destroy()


@pytest.fixture()
def runner(dp):
    dp.tables.set_device(LO_IFINDEX, 14, MSS4, MSS6)
    dp.tables.set_mappings(LO_IFINDEX, MAPPINGS)
    return Runner(dp)


@dataclass
class Case:
    name: str
    direction: str
    pkt: Packet | bytes
    expected: Packet | bytes | None  # None: expect the input unchanged
    verdict: int = TC_ACT_UNSPEC
    stat: str | None = None  # device counter expected to grow by one


def v4(src, dst, **kw):
    return IP(src=src, dst=dst, id=7, ttl=63, **kw)


def v6(src, dst, **kw):
    return IPv6(src=src, dst=dst, hlim=63, **kw)


TCP_DATA = TCP(sport=40000, dport=80, flags="PA", seq=1, ack=1) / Raw(b"x" * 100)
UDP_DATA = UDP(sport=5353, dport=53) / Raw(b"q" * 64)
SYN = TCP(sport=40000, dport=80, flags="S", options=[("MSS", 1460), ("SAckOK", b""),
                                                    ("WScale", 7)])
SYN_CLAMPED = TCP(sport=40000, dport=80, flags="S", options=[("MSS", MSS4), ("SAckOK", b""),
                                                            ("WScale", 7)])


def udp_zero_csum(src, dst):
    return v4(src, dst) / UDP(sport=1, dport=2, chksum=0) / Raw(b"no checksum")


def fragments(src, dst, size=3000):
    return fragment(v4(src, dst) / UDP(sport=7, dport=9) / Raw((bytes(range(256)) * 12)[:size]),
                    fragsize=1000)


def v6_fragments(src, dst):
    pkt = v6(src, dst) / IPv6ExtHdrFragment(id=5) / UDP(sport=7, dport=9) / Raw(b"f" * 2500)
    from scapy.layers.inet6 import fragment6

    return fragment6(pkt, 1280)


ICMP4_ERRORS = {
    "port-unreachable": dict(type=3, code=3),
    "frag-needed": dict(type=3, code=4, nexthopmtu=1400),
    "time-exceeded": dict(type=11, code=0),
    "parameter-problem": dict(type=12, code=0, ptr=8),
}
ICMP6_ERRORS = {
    "port-unreachable": lambda: ICMPv6DestUnreach(code=4),
    "packet-too-big": lambda: ICMPv6PacketTooBig(mtu=1280),
    "time-exceeded": lambda: ICMPv6TimeExceeded(),
    "parameter-problem": lambda: ICMPv6ParamProblem(ptr=40),
}
QUOTED_L4 = {
    "tcp": lambda: TCP(sport=40000, dport=80, flags="S", seq=99),
    "udp": lambda: UDP(sport=40001, dport=53) / Raw(b"query"),
    "icmp": lambda: ICMP(type=8, id=3, seq=4) / Raw(b"ping"),
}
QUOTED_L4_V6 = {
    "tcp": QUOTED_L4["tcp"],
    "udp": QUOTED_L4["udp"],
    "icmpv6": lambda: ICMPv6EchoRequest(id=3, seq=4, data=b"ping"),
}


def cases() -> list[Case]:
    c = [
        Case("tcp egress", "egress", v4(L, RA) / TCP_DATA, v4(LA, R) / TCP_DATA),
        Case("tcp ingress", "ingress", v4(R, LA) / TCP_DATA, v4(RA, L) / TCP_DATA),
        Case("udp egress", "egress", v4(L, RA) / UDP_DATA, v4(LA, R) / UDP_DATA),
        Case("udp ingress", "ingress", v4(R, LA) / UDP_DATA, v4(RA, L) / UDP_DATA),
        Case("udp zero checksum stays zero", "egress", udp_zero_csum(L, RA),
             udp_zero_csum(LA, R)),
        Case("icmp echo egress", "egress", v4(L, RA) / ICMP(id=1, seq=2) / Raw(b"hi"),
             v4(LA, R) / ICMP(id=1, seq=2) / Raw(b"hi")),
        Case("icmp echo reply ingress", "ingress", v4(R, LA) / ICMP(type=0, id=1) / Raw(b"hi"),
             v4(RA, L) / ICMP(type=0, id=1) / Raw(b"hi")),
        Case("ipv4 options", "egress", v4(L, RA, options=[IPOption_RR(routers=["1.2.3.4"])])
             / UDP_DATA, v4(LA, R, options=[IPOption_RR(routers=["1.2.3.4"])]) / UDP_DATA),
        Case("only dst mapped", "egress", v4(OTHER, RA) / UDP_DATA, v4(OTHER, R) / UDP_DATA),
        Case("only src mapped", "egress", v4(L, OTHER) / TCP_DATA, v4(LA, OTHER) / TCP_DATA),
        Case("no mapping passes unchanged", "egress", v4(OTHER, OTHER2) / TCP_DATA, None,
             stat="unmatched"),
        Case("egress ignores remote real cidr as dst", "egress", v4(OTHER, "10.247.0.1")
             / UDP_DATA, None, stat="unmatched"),
        Case("other protocol: addresses only", "egress", v4(L, RA, proto=47) / Raw(b"gre"),
             v4(LA, R, proto=47) / Raw(b"gre")),
        # MSS clamping, on translated and untranslated SYNs alike.
        Case("mss clamp syn", "egress", v4(L, RA) / SYN, v4(LA, R) / SYN_CLAMPED,
             stat="mss_clamped"),
        Case("mss clamp syn-ack ingress", "ingress",
             v4(R, LA) / TCP(sport=80, dport=40000, flags="SA", options=[("MSS", 8960)]),
             v4(RA, L) / TCP(sport=80, dport=40000, flags="SA", options=[("MSS", MSS4)]),
             stat="mss_clamped"),
        Case("mss clamp after nops", "egress",
             v4(OTHER, OTHER2) / TCP(flags="S", options=[("NOP", None), ("NOP", None),
                                                         ("MSS", 1460)]),
             v4(OTHER, OTHER2) / TCP(flags="S", options=[("NOP", None), ("NOP", None),
                                                         ("MSS", MSS4)])),
        Case("mss below clamp untouched", "egress", v4(L, RA) / TCP(flags="S", options=[
            ("MSS", 1200)]), v4(LA, R) / TCP(flags="S", options=[("MSS", 1200)])),
        Case("mss on non-syn untouched", "egress", v4(OTHER, OTHER2) / TCP(flags="A", options=[
            ("MSS", 1460)]), None),
        Case("mss clamp ipv6", "egress", v6(L6, RA6) / TCP(flags="S", options=[("MSS", 1440)]),
             v6(LA6, R6) / TCP(flags="S", options=[("MSS", MSS6)]), stat="mss_clamped"),
        # Malformed and truncated input: no crash, counted.
        Case("truncated tcp header dropped", "egress", bytes(v4(L, RA, proto=6)) + b"\x00" * 10,
             None, verdict=TC_ACT_SHOT, stat="truncated"),
        Case("truncated udp header dropped", "ingress", bytes(v4(R, LA, proto=17)) + b"\x00" * 4,
             None, verdict=TC_ACT_SHOT, stat="truncated"),
        Case("unmatched truncated passes", "egress", bytes(v4(OTHER, OTHER2, proto=6)) + b"\x00",
             None, stat="unmatched"),
        Case("ihl below 5 passes unparsed", "egress", b"\x43" + bytes(v4(L, RA) / UDP_DATA)[1:],
             None, stat="unparsed"),
        Case("wrong ip version passes unparsed", "egress",
             b"\x55" + bytes(v4(L, RA) / UDP_DATA)[1:], None, stat="unparsed"),
        Case("icmp error with unreadable quote dropped", "egress",
             bytes(v4(L, RA) / ICMP(type=3, code=3)) + b"\x45\x00\x00",
             None, verdict=TC_ACT_SHOT, stat="icmp_inner"),
        # IPv6
        Case("ipv6 tcp egress", "egress", v6(L6, RA6) / TCP_DATA, v6(LA6, R6) / TCP_DATA),
        Case("ipv6 tcp ingress", "ingress", v6(R6, LA6) / TCP_DATA, v6(RA6, L6) / TCP_DATA),
        Case("ipv6 udp egress", "egress", v6(L6, RA6) / UDP_DATA, v6(LA6, R6) / UDP_DATA),
        Case("ipv6 udp ingress", "ingress", v6(R6, LA6) / UDP_DATA, v6(RA6, L6) / UDP_DATA),
        Case("icmpv6 echo egress", "egress", v6(L6, RA6) / ICMPv6EchoRequest(data=b"hi"),
             v6(LA6, R6) / ICMPv6EchoRequest(data=b"hi")),
        Case("ipv6 hop-by-hop then udp", "egress",
             v6(L6, RA6) / IPv6ExtHdrHopByHop() / UDP_DATA,
             v6(LA6, R6) / IPv6ExtHdrHopByHop() / UDP_DATA),
        Case("ipv6 no mapping passes", "ingress", v6("fd00:99::1", "fd00:98::1") / UDP_DATA,
             None, stat="unmatched"),
        Case("ipv6 extension chain too long dropped", "egress",
             v6(L6, RA6) / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
             / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / UDP_DATA,
             None, verdict=TC_ACT_SHOT, stat="ipv6_exthdr"),
        Case("ipv6 truncated udp dropped", "egress", bytes(v6(L6, RA6, nh=17)) + b"\x00\x01",
             None, verdict=TC_ACT_SHOT, stat="truncated"),
        # IPv6 has no header checksum: skb->csum must follow the address (CHECKSUM_COMPLETE),
        # also when no L4 checksum is updated (a zero UDP checksum stays zero).
        Case("ipv6 udp zero checksum stays zero", "ingress",
             v6(R6, LA6) / UDP(sport=1, dport=2, chksum=0) / Raw(b"z"),
             v6(RA6, L6) / UDP(sport=1, dport=2, chksum=0) / Raw(b"z")),
        # Routing header: with segments left the L4 checksum covers the last
        # segment, not daddr; natgw does not translate segment lists.
        Case("ipv6 routing header with segments left dropped", "egress",
             v6(L6, RA6) / IPv6ExtHdrRouting(addresses=[RA6, "fd00:b::99"], segleft=2)
             / UDP_DATA, None, verdict=TC_ACT_SHOT, stat="ipv6_routing"),
        Case("ipv6 routing header, segments left, only src mapped", "egress",
             v6(L6, "fd00:99::1") / IPv6ExtHdrRouting(addresses=["fd00:99::2"], segleft=1)
             / TCP_DATA, None, verdict=TC_ACT_SHOT, stat="ipv6_routing"),
        Case("ipv6 routing header with no segments left translated", "egress",
             v6(L6, RA6) / IPv6ExtHdrRouting(addresses=["fd00:99::2"], segleft=0) / UDP_DATA,
             v6(LA6, R6) / IPv6ExtHdrRouting(addresses=["fd00:99::2"], segleft=0) / UDP_DATA),
        Case("ipv6 routing header unmatched passes", "egress",
             v6("fd00:99::1", "fd00:98::1") / IPv6ExtHdrRouting(addresses=["fd00:99::2"],
                                                               segleft=1) / UDP_DATA,
             None, stat="unmatched"),
    ]
    for i, (frag_in, frag_out) in enumerate(zip(fragments(L, RA), fragments(LA, R),
                                                strict=True)):
        c.append(Case(f"ipv4 fragment {i}", "egress", frag_in, frag_out))
    for i, (frag_in, frag_out) in enumerate(zip(v6_fragments(L6, RA6), v6_fragments(LA6, R6),
                                                strict=True)):
        c.append(Case(f"ipv6 fragment {i}", "egress", frag_in, frag_out))

    # ICMP errors. Egress: we tell the peer its packet (RA -> L as we saw it)
    # failed; ingress: the peer tells us ours (LA -> R as it saw it) failed.
    for err, fields in ICMP4_ERRORS.items():
        for l4name, l4 in QUOTED_L4.items():
            c.append(Case(f"icmp {err} quoting {l4name} egress", "egress",
                          v4(L, RA) / ICMP(**fields) / IP(src=RA, dst=L, id=5) / l4(),
                          v4(LA, R) / ICMP(**fields) / IP(src=R, dst=LA, id=5) / l4()))
            c.append(Case(f"icmp {err} quoting {l4name} ingress", "ingress",
                          v4(R, LA) / ICMP(**fields) / IP(src=LA, dst=R, id=5) / l4(),
                          v4(RA, L) / ICMP(**fields) / IP(src=L, dst=RA, id=5) / l4()))
    for err, icmp in ICMP6_ERRORS.items():
        for l4name, l4 in QUOTED_L4_V6.items():
            c.append(Case(f"icmpv6 {err} quoting {l4name} egress", "egress",
                          v6(L6, RA6) / icmp() / IPv6(src=RA6, dst=L6) / l4(),
                          v6(LA6, R6) / icmp() / IPv6(src=R6, dst=LA6) / l4()))
            c.append(Case(f"icmpv6 {err} quoting {l4name} ingress", "ingress",
                          v6(R6, LA6) / icmp() / IPv6(src=LA6, dst=R6) / l4(),
                          v6(RA6, L6) / icmp() / IPv6(src=L6, dst=RA6) / l4()))
    # An error from a router on the way (outer source unmapped) still gets its
    # quote translated, or the sender's socket would never see it.
    c.append(Case("icmp error from unmapped router", "ingress",
                  v4(OTHER, LA) / ICMP(type=11) / IP(src=LA, dst=R) / UDP(sport=9, dport=7),
                  v4(OTHER, L) / ICMP(type=11) / IP(src=L, dst=RA) / UDP(sport=9, dport=7)))
    # A quote cut after 8 bytes of TCP: its checksum is not there to fix.
    c.append(Case("icmp error quoting 8 bytes of tcp", "egress",
                  v4(L, RA) / ICMP(type=3, code=1) / Raw(bytes(IP(src=RA, dst=L, id=5)
                                                               / TCP(sport=1, dport=2))[:28]),
                  v4(LA, R) / ICMP(type=3, code=1) / Raw(bytes(IP(src=R, dst=LA, id=5)
                                                               / TCP(sport=1, dport=2))[:28])))
    return c


CASES = cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(dp, runner, case):
    before = dp.tables.device_stats(LO_IFINDEX)
    res = runner.run(case.direction, case.pkt)
    assert res.verdict == case.verdict
    if case.verdict == TC_ACT_UNSPEC:
        expected = bytes(case.pkt if case.expected is None else case.expected)
        assert_same_packet(res.out, expected)
    if case.stat:
        after = dp.tables.device_stats(LO_IFINDEX)
        assert after[case.stat] == before[case.stat] + 1


def assert_same_packet(out: bytes, expected: bytes) -> None:
    """Byte equality, with a field-by-field diff from scapy when it fails."""
    if out == expected:
        return
    cls = IPv6 if expected[0] >> 4 == 6 else IP
    got, want = cls(out), cls(expected)
    pytest.fail(f"packet differs\n--- got\n{got.show(dump=True)}\n--- want\n"
                f"{want.show(dump=True)}")


def test_counters_count_translated_packets(dp, runner):
    installed = {m.mapping: m for m in dp.mappings(LO_IFINDEX)}
    remote, local = installed[MAPPINGS[0]], installed[MAPPINGS[1]]
    before = {m: dp.tables.counters(m.mapping_id) for m in (remote, local)}
    pkt = v4(L, RA) / UDP_DATA
    for _ in range(3):
        runner.run("egress", pkt)
    runner.run("ingress", v4(R, LA) / UDP_DATA)
    for m in (remote, local):
        after = dp.tables.counters(m.mapping_id)
        assert after["egress"].packets - before[m]["egress"].packets == 3
        assert after["egress"].bytes - before[m]["egress"].bytes == 3 * len(pkt)
        assert after["ingress"].packets - before[m]["ingress"].packets == 1


def test_unchanged_mappings_keep_counters_on_reconcile(dp, runner):
    runner.run("egress", v4(L, RA) / UDP_DATA)
    before = {m.mapping: m.mapping_id for m in dp.mappings(LO_IFINDEX)}
    changed = MAPPINGS[1:] + [Mapping.parse("remote", "172.16.0.0/24", "10.250.0.0/24")]
    dp.tables.set_mappings(LO_IFINDEX, changed)
    after = {m.mapping: m.mapping_id for m in dp.mappings(LO_IFINDEX)}
    assert set(after) == set(changed)
    for m in MAPPINGS[1:]:
        assert after[m] == before[m]
    # The removed mapping no longer translates; the new one does.
    assert runner.run("egress", v4(OTHER, RA) / UDP_DATA).out == bytes(v4(OTHER, RA) / UDP_DATA)
    assert runner.run("egress", v4(OTHER, "10.250.0.9") / UDP_DATA).out == bytes(
        v4(OTHER, "172.16.0.9") / UDP_DATA)


def test_longest_prefix_wins(dp, runner):
    narrow = Mapping.parse("remote", "172.31.5.0/24", "10.245.9.0/24")
    dp.tables.set_mappings(LO_IFINDEX, MAPPINGS + [narrow])
    assert runner.run("egress", v4(OTHER, "10.245.9.7") / UDP_DATA).out == bytes(
        v4(OTHER, "172.31.5.7") / UDP_DATA)
    assert runner.run("egress", v4(OTHER, "10.245.8.7") / UDP_DATA).out == bytes(
        v4(OTHER, "10.244.8.7") / UDP_DATA)


def test_unknown_device_is_left_alone(dp, runner):
    dp.tables.remove_device(LO_IFINDEX)
    pkt = v4(L, RA) / TCP_DATA
    res = runner.run("egress", pkt)
    assert (res.verdict, res.out) == (TC_ACT_UNSPEC, bytes(pkt))


@pytest.mark.parametrize("direction", ["egress", "ingress"])
def test_non_ip_passes_to_later_filters_uncounted(dp, runner, direction):
    frame = bytes(ARP(psrc=L, pdst=R))
    frame = ETHER + b"\x08\x06" + frame
    before = dp.tables.device_stats(LO_IFINDEX)
    verdict, out = run_frame(dp.programs.fd(direction), frame)
    assert (verdict, out) == (TC_ACT_UNSPEC, frame)
    assert dp.tables.device_stats(LO_IFINDEX) == before
