"""The fast path's decisions, packet by packet, through BPF_PROG_TEST_RUN.

A test run does its fib lookups in the netns of the thread that runs it, on
the device its ctx names (natgw.netns.in_netns): so the cases run in a gateway
netns G whose routes and neighbours give every fib result. Topology of G:

  lan   (LAN, Ethernet)  10.244.1.1/24, fd00:a:0:1::1/64   hosts L, L6 (neighbours)
  pod   (LAN, veth, peer in another netns) 10.244.7.0/24    host P (neighbour)
  ifc   (interface peer, Ethernet, mtu 1400)  10.250.0.1/24, fd00:f::1/64
        10.245.0.0/16 and fd00:b::/48 via its neighbour; 10.245.4.0/24 via an
        unresolved one; mappings remote 10.244.0.0/16 as 10.245.0.0/16,
        local 10.244.0.0/16 as 10.246.0.0/16
  tun   (L3) 10.245.9.0/24
  other (no natgw) 10.245.5.0/24 via its neighbour
  off   (LAN, forwarding off)
  blackhole 10.245.66/24, unreachable 10.245.67/24, prohibit 10.245.68/24

Expected packets are built by scapy with checksums left empty; a case's
output equal to them byte for byte has every checksum right, and the run is
CHECKSUM_COMPLETE (skb->csum checked by the kernel). A fallback returns the
input unchanged with TC_ACT_UNSPEC; a redirect TC_ACT_REDIRECT with the TTL
one lower (and for an Ethernet output the fib's MAC addresses). The LAN
program's lanes (the common TCP/UDP packet) also translate it by the output
device's tables and mark it so that the egress program passes it; its general
path leaves the translation to that egress program.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from bpf_run import (
    TC_ACT_REDIRECT,
    TC_ACT_UNSPEC,
    run_frame,
    run_frame_cb,
)
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw

from lab.net import add_address, sh, veth
from natgw.dataplane import Dataplane, Mapping, layout
from natgw.netns import in_netns

pytestmark = [pytest.mark.bpf, pytest.mark.netns]

MAC = {  # gateway side, far side
    "lan": ("02:00:00:00:01:01", "02:00:00:00:01:02"),
    "pod": ("02:00:00:00:07:01", "02:00:00:00:07:02"),
    "ifc": ("02:00:00:00:0f:01", "02:00:00:00:0f:02"),
    "other": ("02:00:00:00:05:01", "02:00:00:00:05:02"),
    "off": ("02:00:00:00:0e:01", "02:00:00:00:0e:02"),
}
L, P, R, RA, LA = "10.244.1.2", "10.244.7.2", "10.244.3.4", "10.245.3.4", "10.246.7.2"
L_AS = "10.246.1.2"  # L as the far side of ifc sees it (the local mapping)
L6, RA6, R6 = "fd00:a:0:1::2", "fd00:b:0:3::4", "fd00:a:0:3::4"
IFC_MTU = 1400
MAPPINGS = [Mapping.parse("remote", "10.244.0.0/16", "10.245.0.0/16"),
            Mapping.parse("local", "10.244.0.0/16", "10.246.0.0/16"),
            Mapping.parse("remote", "fd00:a::/48", "fd00:b::/48")]


@pytest.fixture(scope="module")
def gw(request):
    from lab.netnslab import NetnsLab, netns_unavailable_reason

    if netns_unavailable_reason():
        pytest.skip(netns_unavailable_reason())
    with NetnsLab() as lab:
        g, far = lab.netns("G"), lab.netns("F")
        devs = {}
        for i, (role, (mac_g, mac_f)) in enumerate(MAC.items()):
            devs[role] = lab.name(f"{role[:3]}{i}")
            veth(g, devs[role], far, lab.name(f"f{i}"), mac_g, mac_f)
        tun = lab.name("tun")
        sh(g, "ip", "tuntap", "add", "dev", tun, "mode", "tun")
        sh(g, "ip", "link", "set", tun, "up")
        sh(g, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
           f"net.ipv4.conf.{devs['off']}.forwarding=0")
        for role, cidr in (("lan", "10.244.1.1/24"), ("lan", "fd00:a:0:1::1/64"),
                           ("pod", "10.244.7.1/24"), ("ifc", "10.250.0.1/24"),
                           ("ifc", "fd00:f::1/64"), ("other", "10.251.0.1/24"),
                           ("off", "10.252.0.1/24")):
            add_address(g, devs[role], cidr)
        sh(g, "ip", "link", "set", devs["ifc"], "mtu", str(IFC_MTU))
        for role, addr in (("lan", L), ("lan", L6), ("pod", P), ("ifc", "10.250.0.2"),
                           ("ifc", "fd00:f::2"), ("other", "10.251.0.2")):
            sh(g, "ip", "neigh", "replace", addr, "lladdr", MAC[role][1], "dev", devs[role],
               "nud", "permanent")
        for route in (f"10.245.0.0/16 via 10.250.0.2 dev {devs['ifc']}",
                      f"fd00:b::/48 via fd00:f::2 dev {devs['ifc']}",
                      f"10.245.4.0/24 via 10.250.0.3 dev {devs['ifc']}",
                      f"10.245.9.0/24 dev {tun}",
                      f"10.245.5.0/24 via 10.251.0.2 dev {devs['other']}",
                      "blackhole 10.245.66.0/24", "unreachable 10.245.67.0/24",
                      "prohibit 10.245.68.0/24"):
            sh(g, "ip", "route", "add", *route.split())
        idx = {role: int(sh(g, "cat", f"/sys/class/net/{dev}/ifindex"))
               for role, dev in [*devs.items(), ("tun", tun)]}
        dp = Dataplane.load(lab.name("fast"))
        lab.on_cleanup(dp.destroy)
        t = dp.tables
        t.set_device(idx["lan"], 14, 0, 0, layout.DEV_F_LAN)
        t.set_device(idx["off"], 14, 0, 0, layout.DEV_F_LAN)
        t.set_device(idx["pod"], 14, 0, 0, layout.DEV_F_LAN | layout.DEV_F_PEER_NETNS)
        t.set_device(idx["ifc"], 14, IFC_MTU - 40, IFC_MTU - 60)
        t.set_device(idx["tun"], 0, 1380, 1360)
        t.set_mappings(idx["ifc"], MAPPINGS)
        yield {"ns": g, "dp": dp, "idx": idx, "far": far, "lab": lab}


@dataclass
class Case:
    name: str
    prog: str  # "lan" or "ingress_fast"
    into: str  # the input device's role
    pkt: Packet | bytes  # IP packet (or a whole frame when bytes start with a MAC)
    decision: str
    # The IP packet expected out (None: the input, with the TTL lowered if redirected).
    expected: Packet | None = None
    out: str | None = None  # the output device's role: its MACs are expected
    dst_mac: str | None = None  # the frame's destination MAC (default: the input device's)
    gso_size: int = 0
    extra: dict = field(default_factory=dict)


def v4(src, dst, ttl=64, **kw):
    return IP(src=src, dst=dst, id=7, ttl=ttl, **kw)


def v6(src, dst, hlim=64, **kw):
    return IPv6(src=src, dst=dst, hlim=hlim, **kw)


def lowered(pkt: Packet) -> Packet:
    """The packet as forwarded: one hop less, checksums computed anew."""
    out = pkt.copy()
    if IP in out:
        out[IP].ttl -= 1
        del out[IP].chksum
    else:
        out[IPv6].hlim -= 1
    return out


UDP_DATA = UDP(sport=5353, dport=53) / Raw(b"q" * 64)
TCP_DATA = TCP(sport=40000, dport=80, flags="PA", seq=1, ack=1) / Raw(b"x" * 100)
BIG_TCP = TCP(sport=40000, dport=80, flags="A") / Raw(b"b" * 1500)

CASES = [
    # Redirects: to an Ethernet interface peer, a tunnel (L3), a pod's veth peer.
    Case("udp to interface peer", "lan", "lan", v4(L, RA) / UDP_DATA, "redirect_eth",
         expected=lowered(v4(L_AS, R) / UDP_DATA), out="ifc"),
    Case("tcp to interface peer", "lan", "lan", v4(L, RA) / TCP_DATA, "redirect_eth",
         expected=lowered(v4(L_AS, R) / TCP_DATA), out="ifc"),
    Case("ipv6 udp to interface peer", "lan", "lan", v6(L6, RA6) / UDP_DATA, "redirect_eth",
         expected=lowered(v6(L6, R6) / UDP_DATA), out="ifc"),
    Case("icmp echo to tunnel (no mappings: unchanged)", "lan", "lan",
         v4(L, "10.245.9.9") / ICMP() / Raw(b"hi"), "redirect_l3"),
    # Not a lane's packet (GSO, ICMP): the output device's egress program translates.
    Case("gso segments fit the route mtu", "lan", "lan", v4(L, RA) / BIG_TCP, "redirect_eth",
         out="ifc", gso_size=IFC_MTU - 40),
    Case("ingress translated into a pod's veth", "ingress_fast", "ifc",
         v4(R, LA) / UDP_DATA, "redirect_peer", expected=v4("10.245.3.4", P, ttl=63) / UDP_DATA,
         out="pod"),
    Case("ingress translated to a LAN host", "ingress_fast", "ifc",
         v4(R, "10.246.1.2") / TCP_DATA, "redirect_eth",
         expected=v4("10.245.3.4", L, ttl=63) / TCP_DATA, out="lan"),
    Case("ipv6 tcp to interface peer", "lan", "lan", v6(L6, RA6) / TCP_DATA, "redirect_eth",
         expected=lowered(v6(L6, R6) / TCP_DATA), out="ifc"),
    Case("ipv6 ingress translated to a LAN host", "ingress_fast", "ifc",
         v6(R6, L6) / UDP_DATA, "redirect_eth", expected=v6(RA6, L6, hlim=63) / UDP_DATA,
         out="lan"),
    Case("ipv6 ingress tcp translated to a LAN host", "ingress_fast", "ifc",
         v6(R6, L6) / TCP_DATA, "redirect_eth", expected=v6(RA6, L6, hlim=63) / TCP_DATA,
         out="lan"),
    # Fallbacks: the stack gets the packet unchanged.
    Case("ttl 1", "lan", "lan", v4(L, RA, ttl=1) / UDP_DATA, "ttl"),
    Case("hop limit 1", "lan", "lan", v6(L6, RA6, hlim=1) / UDP_DATA, "ttl"),
    Case("ip options", "lan", "lan", v4(L, RA, options=[IPOption_RR()]) / UDP_DATA,
         "ip_options"),
    Case("ipv6 hop-by-hop", "lan", "lan", v6(L6, RA6) / IPv6ExtHdrHopByHop() / UDP_DATA,
         "ip_options"),
    Case("first fragment", "lan", "lan", v4(L, RA, flags="MF") / UDP_DATA, "fragment"),
    Case("later fragment", "lan", "lan", v4(L, RA, frag=100) / Raw(b"f" * 64), "fragment"),
    Case("ipv6 fragment", "lan", "lan", v6(L6, RA6) / IPv6ExtHdrFragment() / UDP_DATA,
         "fragment"),
    Case("icmp error", "lan", "lan", v4(L, RA) / ICMP(type=3, code=3) / v4(RA, L) / UDP_DATA,
         "icmp_error"),
    Case("icmpv6 error", "lan", "lan", v6(L6, RA6) / ICMPv6DestUnreach() / v6(RA6, L6)
         / UDP_DATA, "icmp_error"),
    Case("multicast", "lan", "lan", v4(L, "239.1.2.3") / UDP_DATA, "multicast"),
    Case("broadcast", "lan", "lan", v4(L, "255.255.255.255") / UDP_DATA, "multicast"),
    Case("ipv6 multicast", "lan", "lan", v6(L6, "ff02::1") / UDP_DATA, "multicast"),
    Case("frame for another host", "lan", "lan", v4(L, RA) / UDP_DATA, "multicast",
         dst_mac="02:00:00:00:99:99"),
    Case("loopback source", "lan", "lan", v4("127.0.0.1", RA) / UDP_DATA, "martian"),
    Case("ipv6 link-local destination", "lan", "lan", v6(L6, "fe80::1") / UDP_DATA, "martian"),
    Case("not ip", "lan", "lan", bytes(ARP(psrc=L, pdst="10.244.1.1")), "not_ip"),
    Case("unresolved neighbour", "lan", "lan", v4(L, "10.245.4.4") / UDP_DATA, "no_neigh"),
    Case("larger than the route mtu", "lan", "lan", v4(L, RA) / BIG_TCP, "frag_needed"),
    Case("gso segments larger than the route mtu", "lan", "lan", v4(L, RA) / BIG_TCP,
         "frag_needed", gso_size=IFC_MTU),
    Case("blackhole", "lan", "lan", v4(L, "10.245.66.1") / UDP_DATA, "unreachable"),
    Case("unreachable", "lan", "lan", v4(L, "10.245.67.1") / UDP_DATA, "unreachable"),
    Case("prohibit", "lan", "lan", v4(L, "10.245.68.1") / UDP_DATA, "unreachable"),
    Case("for the gateway itself", "lan", "lan", v4(L, "10.244.1.1") / UDP_DATA, "local"),
    Case("forwarding disabled", "lan", "off", v4("10.252.0.2", RA) / UDP_DATA,
         "fwd_disabled"),
    Case("to a device without natgw", "lan", "lan", v4(L, "10.245.5.5") / UDP_DATA,
         "out_device"),
    Case("LAN to LAN stays with the stack", "lan", "lan", v4(L, P) / UDP_DATA, "out_device"),
    Case("ingress, back out of the same device", "ingress_fast", "ifc",
         v4(R, "10.245.3.9") / UDP_DATA, "out_device",
         expected=v4(RA, "10.245.3.9") / UDP_DATA),
]


def frame_of(case: Case) -> bytes:
    dst = case.dst_mac or MAC[case.into][0]
    if isinstance(case.pkt, bytes):
        return bytes(Ether(src=MAC[case.into][1], dst=dst, type=0x0806)) + case.pkt
    return bytes(Ether(src=MAC[case.into][1], dst=dst) / case.pkt)


def run_case(gw, case: Case) -> tuple[int, bytes, dict[str, int]]:
    dp, idx = gw["dp"], gw["idx"]
    before = dp.tables.fast_stats_of(idx[case.into])
    verdict, out = in_netns(gw["ns"], lambda: run_frame(
        dp.programs.fd(case.prog), frame_of(case), ifindex=idx[case.into],
        gso_size=case.gso_size))
    after = dp.tables.fast_stats_of(idx[case.into])
    return verdict, out, {k: after[k] - before[k] for k in after if after[k] != before[k]}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decision(gw, case):
    verdict, out, counted = run_case(gw, case)
    assert counted == {case.decision: 1}
    if not case.decision.startswith("redirect"):
        # Unchanged, or for ingress_fast translated exactly as natgw_ingress would.
        want = frame_of(case)
        if case.expected is not None:
            want = want[:14] + bytes(case.expected)
        assert (verdict, out) == (TC_ACT_UNSPEC, want)
        return
    assert verdict == TC_ACT_REDIRECT
    want_ip = bytes(case.expected if case.expected is not None else lowered(case.pkt))
    assert out[14:] == want_ip, "\n" + Ether(out).show(dump=True)
    if case.out is not None:
        assert out[:12] == bytes.fromhex(MAC[case.out][1].replace(":", "")
                                         + MAC[case.out][0].replace(":", ""))
    else:  # to an L3 device: the frame's header is the input's (the kernel strips it)
        assert out[:14] == frame_of(case)[:14]


def test_ingress_translation_drops_end_the_fast_path(gw):
    """A packet the ingress translation drops is neither forwarded nor counted here."""
    dp, idx = gw["dp"], gw["idx"]
    before = dp.tables.fast_stats_of(idx["ifc"])
    truncated = bytes(v4(R, LA, proto=17)) + b"\x00" * 4
    frame = bytes(Ether(src=MAC["ifc"][1], dst=MAC["ifc"][0], type=0x0800)) + truncated
    verdict, _ = in_netns(gw["ns"], lambda: run_frame(dp.programs.fd("ingress_fast"), frame,
                                                       ifindex=idx["ifc"]))
    assert verdict == 2  # TC_ACT_SHOT
    assert dp.tables.fast_stats_of(idx["ifc"]) == before


def test_echo_request_v6_to_interface_keeps_icmp_checksum(gw):
    case = Case("icmpv6 echo", "lan", "lan", v6(L6, RA6) / ICMPv6EchoRequest(data=b"x"),
                "redirect_eth", out="ifc")
    verdict, out, counted = run_case(gw, case)
    assert (verdict, counted) == (TC_ACT_REDIRECT, {"redirect_eth": 1})
    assert out[14:] == bytes(lowered(case.pkt))


@pytest.mark.parametrize("l4", [UDP_DATA, TCP_DATA], ids=["udp", "tcp"])
def test_ipv6_lane_translates_the_source_by_a_local_mapping(gw, l4):
    """The IPv6 LAN lane skips an empty source table (the other cases have one);
    with a local mapping there, it translates the source too."""
    dp, idx = gw["dp"], gw["idx"]
    local6 = Mapping.parse("local", "fd00:a::/48", "fd00:c::/48")
    dp.tables.set_mappings(idx["ifc"], [*MAPPINGS, local6])
    try:
        case = Case("ipv6 local and remote", "lan", "lan", v6(L6, RA6) / l4, "redirect_eth",
                    expected=lowered(v6("fd00:c:0:1::2", R6) / l4), out="ifc")
        verdict, out, counted = run_case(gw, case)
        assert (verdict, counted) == (TC_ACT_REDIRECT, {"redirect_eth": 1})
        assert out[14:] == bytes(case.expected), "\n" + Ether(out).show(dump=True)
    finally:
        dp.tables.set_mappings(idx["ifc"], MAPPINGS)


# The mark the LAN program leaves in cb[] for the output device's egress program
# (natgw_fast.h: NATGW_CB_XLATED_A, _B, each xor the output device's ifindex).
XLATED_A, XLATED_B = 0x6E617467, 0x77786C74


def xlated_mark(ifindex: int) -> tuple[int, int]:
    return XLATED_A ^ ifindex, XLATED_B ^ ifindex


def test_lan_program_marks_what_it_translated_and_only_that(gw):
    dp, idx = gw["dp"], gw["idx"]

    def lan(pkt, **kw):
        frame = bytes(Ether(src=MAC["lan"][1], dst=MAC["lan"][0]) / pkt)
        return in_netns(gw["ns"], lambda: run_frame_cb(dp.programs.fd("lan"), frame,
                                                       ifindex=idx["lan"], **kw))

    verdict, _, cb = lan(v4(L, RA) / UDP_DATA)
    assert verdict == TC_ACT_REDIRECT and cb[:2] == xlated_mark(idx["ifc"])
    verdict, _, cb = lan(v4(L, RA, ttl=1) / UDP_DATA)  # to the stack: no mark
    assert verdict == TC_ACT_UNSPEC and cb == (0,) * 5
    verdict, _, cb = lan(v4(L, "10.245.9.9") / UDP_DATA)  # a tunnel: its own mark
    assert verdict == TC_ACT_REDIRECT and cb[:2] == xlated_mark(idx["tun"])
    verdict, _, cb = lan(v4(L, RA) / ICMP())  # the general path: the egress translates
    assert verdict == TC_ACT_REDIRECT and cb == (0,) * 5


def test_egress_program_passes_what_the_lan_program_translated_for_it(gw):
    """The mark saves the egress program its work; without it (the stack routed the
    packet), or with another device's, it translates as always."""
    dp, idx = gw["dp"], gw["idx"]
    frame = bytes(Ether(src=MAC["ifc"][0], dst=MAC["ifc"][1]) / v4(L, RA) / UDP_DATA)

    def egress(cb):
        before = dp.tables.device_stats(idx["ifc"]), mapping_packets(dp)
        res = in_netns(gw["ns"], lambda: run_frame_cb(dp.programs.fd("egress"), frame,
                                                      ifindex=idx["ifc"], cb=cb))
        after = dp.tables.device_stats(idx["ifc"]), mapping_packets(dp)
        return res, before != after

    (verdict, out, cb), counted = egress(xlated_mark(idx["ifc"]) + (5, 6, 7))
    assert (verdict, out, counted) == (TC_ACT_UNSPEC, frame, False)
    assert cb == (0, 0, 5, 6, 7)  # taken: a second egress would translate
    for cb_in in ((), xlated_mark(idx["tun"]), (xlated_mark(idx["ifc"])[0], 0)):
        (verdict, out, _), counted = egress(cb_in)
        assert verdict == TC_ACT_UNSPEC and counted
        assert out[14:] == bytes(v4(L_AS, R) / UDP_DATA)


# -- fastpath: xdp ------------------------------------------------------------
# The XDP program on the same topology: it translates itself (XDP_REDIRECT skips
# the output device's tc egress), so a redirected frame is the translated packet
# one hop lower with the fib's MACs, every checksum as scapy computes it anew.
# What it passes goes up unchanged to the tc programs, which count their own
# decision: XDP counts only its redirects and what it leaves to tc for its own
# reasons (xdp_to_tc).

@pytest.fixture(scope="module")
def xgw(gw):

    t, idx = gw["dp"].tables, gw["idx"]
    for role in ("lan", "pod", "ifc", "off"):
        mac = bytes.fromhex(MAC[role][0].replace(":", ""))
        in_netns(gw["ns"], lambda role=role, mac=mac: t.set_xdp(idx[role], mac, True))
    return gw


@dataclass
class XdpCase:
    name: str
    into: str
    pkt: Packet
    counted: dict  # fast_stats of the input device: what XDP counted
    expected: Packet | None = None  # the IP packet sent (None: passed unchanged)
    out: str | None = None
    dst_mac: str | None = None
    maps: dict = field(default_factory=dict)  # mapping (kind, cidr) -> {direction: packets}


SYN = TCP(sport=40000, dport=80, flags="S", seq=1, options=[("MSS", 1460)])
XDP_CASES = [
    XdpCase("udp to interface peer, both mappings", "lan", v4(L, RA) / UDP_DATA,
            {"xdp_redirect": 1}, v4("10.246.1.2", R, ttl=63) / UDP_DATA, out="ifc",
            maps={("local", "10.244.0.0/16"): {"egress": 1},
                  ("remote", "10.244.0.0/16"): {"egress": 1}}),
    XdpCase("udp zero checksum stays zero", "lan",
            v4(L, RA) / UDP(sport=5353, dport=53, chksum=0) / Raw(b"z" * 8),
            {"xdp_redirect": 1},
            v4("10.246.1.2", R, ttl=63) / UDP(sport=5353, dport=53, chksum=0) / Raw(b"z" * 8),
            out="ifc"),
    XdpCase("tcp to interface peer", "lan", v4(L, RA) / TCP_DATA, {"xdp_redirect": 1},
            v4("10.246.1.2", R, ttl=63) / TCP_DATA, out="ifc"),
    XdpCase("icmp echo to interface peer", "lan", v4(L, RA) / ICMP() / Raw(b"ping"),
            {"xdp_redirect": 1}, v4("10.246.1.2", R, ttl=63) / ICMP() / Raw(b"ping"),
            out="ifc"),
    XdpCase("ipv6 udp to interface peer", "lan", v6(L6, RA6) / UDP_DATA, {"xdp_redirect": 1},
            v6(L6, "fd00:a:0:3::4", hlim=63) / UDP_DATA, out="ifc",
            maps={("remote", "fd00:a::/48"): {"egress": 1}}),
    XdpCase("icmpv6 echo to interface peer", "lan", v6(L6, RA6) / ICMPv6EchoRequest(data=b"x"),
            {"xdp_redirect": 1}, v6(L6, "fd00:a:0:3::4", hlim=63) / ICMPv6EchoRequest(data=b"x"),
            out="ifc"),
    XdpCase("ingress translated into a pod's veth", "ifc", v4(R, LA) / UDP_DATA,
            {"xdp_redirect": 1}, v4(RA, P, ttl=63) / UDP_DATA, out="pod",
            maps={("local", "10.244.0.0/16"): {"ingress": 1},
                  ("remote", "10.244.0.0/16"): {"ingress": 1}}),
    XdpCase("ingress translated to a LAN host", "ifc", v4(R, "10.246.1.2") / TCP_DATA,
            {"xdp_redirect": 1}, v4(RA, L, ttl=63) / TCP_DATA, out="lan"),
    XdpCase("ipv6 ingress translated to a LAN host", "ifc", v6("fd00:a:0:3::4", L6) / UDP_DATA,
            {"xdp_redirect": 1}, v6(RA6, L6, hlim=63) / UDP_DATA, out="lan"),
    # Left to tc for what only tc does (counted here and again by tc).
    XdpCase("to a tunnel (L3)", "lan", v4(L, "10.245.9.9") / UDP_DATA, {"xdp_to_tc": 1}),
    XdpCase("tcp syn towards an MSS clamp", "lan", v4(L, RA) / SYN, {"xdp_to_tc": 1}),
    XdpCase("tcp syn arriving on an MSS clamp", "ifc", v4(R, "10.246.1.2") / SYN,
            {"xdp_to_tc": 1}),
    XdpCase("udp header cut short", "lan", v4(L, RA, proto=17) / Raw(b"\x00" * 4),
            {"xdp_to_tc": 1}),
    # The fast path's fallbacks: passed uncounted, tc counts the same reason.
    XdpCase("ttl 1", "lan", v4(L, RA, ttl=1) / UDP_DATA, {}),
    XdpCase("hop limit 1", "lan", v6(L6, RA6, hlim=1) / UDP_DATA, {}),
    XdpCase("ip options", "lan", v4(L, RA, options=[IPOption_RR()]) / UDP_DATA, {}),
    XdpCase("ipv6 hop-by-hop", "lan", v6(L6, RA6) / IPv6ExtHdrHopByHop() / UDP_DATA, {}),
    XdpCase("first fragment", "lan", v4(L, RA, flags="MF") / UDP_DATA, {}),
    XdpCase("ipv6 fragment", "lan", v6(L6, RA6) / IPv6ExtHdrFragment() / UDP_DATA, {}),
    XdpCase("icmp error", "lan", v4(L, RA) / ICMP(type=3, code=3) / v4(RA, L) / UDP_DATA, {}),
    XdpCase("icmpv6 error", "lan", v6(L6, RA6) / ICMPv6DestUnreach() / v6(RA6, L6) / UDP_DATA,
            {}),
    XdpCase("multicast", "lan", v4(L, "239.1.2.3") / UDP_DATA, {}),
    XdpCase("frame for another host", "lan", v4(L, RA) / UDP_DATA, {},
            dst_mac="02:00:00:00:99:99"),
    XdpCase("unresolved neighbour", "lan", v4(L, "10.245.4.4") / UDP_DATA, {}),
    XdpCase("larger than the route mtu", "lan", v4(L, RA) / BIG_TCP, {}),
    XdpCase("unreachable", "lan", v4(L, "10.245.67.1") / UDP_DATA, {}),
    XdpCase("for the gateway itself", "lan", v4(L, "10.244.1.1") / UDP_DATA, {}),
    XdpCase("forwarding disabled", "off", v4("10.252.0.2", RA) / UDP_DATA, {}),
    XdpCase("to a device without natgw", "lan", v4(L, "10.245.5.5") / UDP_DATA, {}),
    XdpCase("ingress, back out of the same device", "ifc", v4(R, "10.245.3.9") / UDP_DATA, {}),
]


def run_xdp_case(gw, into: str, frame: bytes) -> tuple[int, bytes, dict[str, int]]:
    from bpf_run import run_xdp

    dp, idx = gw["dp"], gw["idx"]
    before = dp.tables.fast_stats_of(idx[into])
    verdict, out = in_netns(gw["ns"], lambda: run_xdp(dp.programs.fd("xdp"), frame, idx[into]))
    after = dp.tables.fast_stats_of(idx[into])
    return verdict, out, {k: after[k] - before[k] for k in after if after[k] != before[k]}


def mapping_packets(dp) -> dict:
    return {(m.mapping.kind, str(m.mapping.cidr)): {d: c.packets for d, c in cs.items()}
            for m, cs in dp.counters().items()}


@pytest.mark.parametrize("case", XDP_CASES, ids=[c.name for c in XDP_CASES])
def test_xdp_decision(xgw, case):
    from bpf_run import XDP_PASS, XDP_REDIRECT

    frame = bytes(Ether(src=MAC[case.into][1], dst=case.dst_mac or MAC[case.into][0])
                  / case.pkt)
    maps_before = mapping_packets(xgw["dp"])
    verdict, out, counted = run_xdp_case(xgw, case.into, frame)
    assert counted == case.counted
    if case.expected is None:
        assert (verdict, out) == (XDP_PASS, frame)
        return
    assert verdict == XDP_REDIRECT
    assert out[14:] == bytes(case.expected), "\n" + Ether(out).show(dump=True)
    assert out[:12] == bytes.fromhex(MAC[case.out][1].replace(":", "")
                                     + MAC[case.out][0].replace(":", ""))
    after = mapping_packets(xgw["dp"])
    for key, dirs in case.maps.items():
        for direction, n in dirs.items():
            assert after[key][direction] - maps_before[key][direction] == n, (key, direction)


def test_xdp_leaves_a_device_that_cannot_transmit_to_tc(xgw):
    """A device out of xdp_tx (its driver cannot transmit XDP frames): passed unchanged."""
    from bpf_run import XDP_PASS


    t, idx = xgw["dp"].tables, xgw["idx"]
    mac = bytes.fromhex(MAC["ifc"][0].replace(":", ""))
    in_netns(xgw["ns"], lambda: t.set_xdp(idx["ifc"], mac, False))
    try:
        assert not t.xdp_transmits(idx["ifc"])
        frame = bytes(Ether(src=MAC["lan"][1], dst=MAC["lan"][0]) / v4(L, RA) / UDP_DATA)
        verdict, out, counted = run_xdp_case(xgw, "lan", frame)
        assert (verdict, out, counted) == (XDP_PASS, frame, {"xdp_to_tc": 1})
    finally:
        in_netns(xgw["ns"], lambda: t.set_xdp(idx["ifc"], mac, True))


def test_xdp_attach_refuses_what_it_must_and_comes_off_cleanly(gw):
    """Dataplane.attach_xdp on a veth: refused in one line while its peer hands over
    partial checksums; then native, and a redirect target once the peer has NAPI
    (GRO); a foreign XDP program is never replaced, and detaching leaves it."""
    from bcc import BPF

    from natgw.dataplane import DataplaneError
    from natgw.dataplane.loader import ipr_in
    from natgw.dataplane.xdp import XDP_ATTACHED_DRV, XDP_FLAGS_DRV_MODE, attached

    lab, g, far, dp = gw["lab"], gw["ns"], gw["far"], gw["dp"]
    a, b = lab.name("xa"), lab.name("xb")
    veth(g, a, far, b)
    idx = int(sh(g, "cat", f"/sys/class/net/{a}/ifindex"))
    dp.tables.set_device(idx, 14, 0, 0, layout.DEV_F_LAN)
    try:
        with pytest.raises(DataplaneError, match=f"^device {a}: xdp needs complete checksums "
                           f"from its veth peer {b}: turn its tx checksum offload off"):
            dp.attach_xdp(a, g)
        sh(far, "ethtool", "-K", b, "tx", "off")
        assert dp.attach_xdp(a, g) is False  # its peer has no NAPI: left to tc
        assert not dp.tables.xdp_transmits(idx)
        sh(far, "ethtool", "-K", b, "gro", "on")
        assert dp.attach_xdp(a, g) is True and dp.tables.xdp_transmits(idx)
        with ipr_in(g) as ipr:
            assert attached(ipr, idx)[0] == XDP_ATTACHED_DRV
        dp.detach_xdp(a, g)
        with ipr_in(g) as ipr:
            assert attached(ipr, idx) == (0, 0)
        assert not dp.tables.xdp_transmits(idx)

        other = BPF(text=b"int other(struct xdp_md *ctx) { return XDP_PASS; }")
        fd = other.load_func(b"other", BPF.XDP).fd
        with ipr_in(g) as ipr:
            ipr.link("set", index=idx, xdp={"attrs": [("IFLA_XDP_FD", fd),
                                                       ("IFLA_XDP_FLAGS", XDP_FLAGS_DRV_MODE)]})
            foreign = attached(ipr, idx)
        with pytest.raises(DataplaneError, match=f"^device {a}: runs another XDP program"):
            dp.attach_xdp(a, g)
        dp.detach_xdp(a, g)
        with ipr_in(g) as ipr:
            assert attached(ipr, idx) == foreign
        other.cleanup()
    finally:
        dp.tables.remove_device(idx)
        sh(g, "ip", "link", "del", a)


def test_upgrade_over_a_gateway_without_fast_stats(gw):
    """A gateway loaded by a natgw without the fast path has no fast_stats pin: its maps
    still read, and the next load creates the pin (keeping the other maps)."""
    import os

    from natgw.dataplane.loader import missing_pins
    from natgw.dataplane.tables import Tables

    dp, idx = gw["dp"], gw["idx"]
    os.unlink(os.path.join(dp.pin_dir, layout.MAP_FAST_STATS))
    assert missing_pins(dp.pin_dir) == [layout.MAP_FAST_STATS]
    assert missing_pins(dp.pin_dir, ("egress", "ingress")) == []  # fastpath off needs none
    with Tables(dp.pin_dir) as old:
        assert old.fast_stats is None and old.fast_stats_of(idx["ifc"]) == {}
        assert len(old.mappings(idx["ifc"])) == len(MAPPINGS)
    again = Dataplane.load(dp.gateway)
    try:
        assert missing_pins(dp.pin_dir) == []
        assert again.tables.fast_stats_of(idx["ifc"])["redirect_eth"] == 0
        assert len(again.mappings(idx["ifc"])) == len(MAPPINGS)
    finally:
        again.close()
