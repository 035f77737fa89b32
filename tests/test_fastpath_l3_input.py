"""The fast ingress program on an L3 device (wireguard, tun), through real devices.

A test run (BPF_PROG_TEST_RUN) always hands a tc program an Ethernet frame, so
what the program does with a packet that starts at its IP header is tested here:
an IP packet written into a tun device's fd is received on the device's ingress,
where natgw_ingress_fast runs, as wireguard-go hands the kernel what it decrypted.

Gateway netns G:

  tin   (tun, the input) remote 10.244.0.0/16 as 10.245.0.0/16, local 10.244.0.0/16
        as 10.246.0.0/16, remote fd00:a::/48 as fd00:b::/48; routes back to 10.245/16
  lan   (LAN veth to netns F) 10.244.1.1/24, fd00:a:0:1::1/64; hosts L, L6 neighbours
  pod   (LAN veth, its peer in netns P) 10.244.7.1/24; host P neighbour
  ifc   (an `interface:` peer's veth to F, no mappings) 10.250.0.1/24, fd00:f::1/64;
        10.245.5.0/24 and fd00:b:0:5::/64 via its neighbour
  tout  (tun, an L3 output) 10.245.9.0/24, fd00:b:0:9::/64

Both LAN veths have their peer in another netns, so the fast path sends into
them with bpf_redirect_peer; into ifc with bpf_redirect.

Every packet comes out translated, one hop lower, with every checksum right (the
output equals scapy's packet byte for byte; the tun input is CHECKSUM_NONE, so
the sums are whole, not partial) and, on an Ethernet output, with the MAC
header the fib found pushed in front.
"""

from __future__ import annotations

import os
import select
import socket
import time
from dataclasses import dataclass

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from lab.net import add_address, open_tun, sh, sysctl, veth
from natgw.dataplane import Dataplane, Mapping
from natgw.dataplane.loader import programs_for
from natgw.netns import netns_socket

pytestmark = [pytest.mark.bpf, pytest.mark.netns]

MAC = {"lan": ("02:00:00:00:01:01", "02:00:00:00:01:02"),
       "pod": ("02:00:00:00:07:01", "02:00:00:00:07:02"),
       "ifc": ("02:00:00:00:0f:01", "02:00:00:00:0f:02")}
R, R_AS, L, P, GW = "10.244.3.4", "10.245.3.4", "10.244.1.2", "10.244.7.2", "10.244.1.1"
R6, R6_AS, L6 = "fd00:a:0:3::4", "fd00:b:0:3::4", "fd00:a:0:1::2"
MAPPINGS = [Mapping.parse("remote", "10.244.0.0/16", "10.245.0.0/16"),
            Mapping.parse("local", "10.244.0.0/16", "10.246.0.0/16"),
            Mapping.parse("remote", "fd00:a::/48", "fd00:b::/48")]
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
LOCAL_PORT = 5999


@pytest.fixture(scope="module")
def gw():
    from lab.netnslab import NetnsLab, netns_unavailable_reason

    if netns_unavailable_reason():
        pytest.skip(netns_unavailable_reason())
    with NetnsLab() as lab:
        g, far, pod_ns = lab.netns("G"), lab.netns("F"), lab.netns("P")
        dev = {"lan": lab.name("lan"), "pod": lab.name("pod"), "ifc": lab.name("ifc"),
               "tin": lab.name("tin"), "tout": lab.name("tout")}
        ends = {"lan": (far, lab.name("flan")), "pod": (pod_ns, lab.name("ppod")),
                "ifc": (far, lab.name("fifc"))}
        for role, (ns, end) in ends.items():
            veth(g, dev[role], ns, end, *MAC[role])
        fds = {role: open_tun(g, dev[role]) for role in ("tin", "tout")}
        lab.on_cleanup(lambda: [os.close(fd) for fd in fds.values()])
        sysctl(g, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
               "net.ipv4.conf.all.rp_filter=0", f"net.ipv4.conf.{dev['tin']}.rp_filter=0")
        for role, cidr in (("lan", "10.244.1.1/24"), ("lan", "fd00:a:0:1::1/64"),
                           ("pod", "10.244.7.1/24"), ("ifc", "10.250.0.1/24"),
                           ("ifc", "fd00:f::1/64")):
            add_address(g, dev[role], cidr)
        add_address(pod_ns, ends["pod"][1], "10.244.7.2/24")
        for role, addr in (("lan", L), ("lan", L6), ("pod", P), ("ifc", "10.250.0.2"),
                           ("ifc", "fd00:f::2")):
            sh(g, "ip", "neigh", "replace", addr, "lladdr", MAC[role][1], "dev", dev[role],
               "nud", "permanent")
        for route in (f"10.245.0.0/16 dev {dev['tin']}", f"fd00:b::/48 dev {dev['tin']}",
                      f"10.245.9.0/24 dev {dev['tout']}", f"fd00:b:0:9::/64 dev {dev['tout']}",
                      f"10.245.5.0/24 via 10.250.0.2 dev {dev['ifc']}",
                      f"fd00:b:0:5::/64 via fd00:f::2 dev {dev['ifc']}"):
            sh(g, "ip", "route", "add", *route.split())
        dp = Dataplane.load(lab.name("l3"), need=programs_for(True))
        lab.on_cleanup(dp.destroy)
        dp.attach(dev["tin"], g, mtu=1420, fast=True)
        dp.attach(dev["tout"], g, mtu=1420, fast=True)
        dp.attach(dev["ifc"], g, mtu=1500, fast=True)
        dp.attach_lan(dev["lan"], g)
        dp.attach_lan(dev["pod"], g)
        dp.set_mappings(dev["tin"], MAPPINGS, g)
        yield {"g": g, "dp": dp, "dev": dev, "fds": fds, "ends": ends,
               "tin": dp.ifindex(dev["tin"], g)}


@dataclass
class Case:
    name: str
    pkt: Packet  # the IP packet written into tin
    out: str  # where it comes out: "lan", "pod", "ifc" (an Ethernet frame) or "tout" (IP)
    expected: Packet  # the IP packet expected out
    decision: str


def v4(src, dst, ttl=64):
    return IP(src=src, dst=dst, id=7, ttl=ttl)


def v6(src, dst, hlim=64):
    return IPv6(src=src, dst=dst, hlim=hlim)


def udp(tag: str) -> Packet:
    return UDP(sport=5353, dport=53) / Raw(b"l3lane " + tag.encode() + b" " + b"u" * 40)


def tcp(tag: str) -> Packet:
    return (TCP(sport=40000, dport=80, flags="PA", seq=1, ack=1)
            / Raw(b"l3lane " + tag.encode() + b" " + b"t" * 90))


CASES = [
    Case("udp to a LAN host", v4(R, "10.246.1.2") / udp("a"), "lan",
         v4(R_AS, L, ttl=63) / udp("a"), "redirect_peer"),
    Case("tcp to a LAN host", v4(R, "10.246.1.2") / tcp("b"), "lan",
         v4(R_AS, L, ttl=63) / tcp("b"), "redirect_peer"),
    Case("udp to an interface peer", v4(R, "10.245.5.5") / udp("h"), "ifc",
         v4(R_AS, "10.245.5.5", ttl=63) / udp("h"), "redirect_eth"),
    Case("ipv6 tcp to an interface peer", v6(R6, "fd00:b:0:5::5") / tcp("i"), "ifc",
         v6(R6_AS, "fd00:b:0:5::5", hlim=63) / tcp("i"), "redirect_eth"),
    Case("udp into a pod's veth", v4(R, "10.246.7.2") / udp("c"), "pod",
         v4(R_AS, P, ttl=63) / udp("c"), "redirect_peer"),
    Case("udp to another tunnel", v4(R, "10.245.9.9") / udp("d"), "tout",
         v4(R_AS, "10.245.9.9", ttl=63) / udp("d"), "redirect_l3"),
    Case("ipv6 udp to a LAN host", v6(R6, L6) / udp("e"), "lan",
         v6(R6_AS, L6, hlim=63) / udp("e"), "redirect_peer"),
    Case("ipv6 tcp to a LAN host", v6(R6, L6) / tcp("f"), "lan",
         v6(R6_AS, L6, hlim=63) / tcp("f"), "redirect_peer"),
    Case("ipv6 tcp to another tunnel", v6(R6, "fd00:b:0:9::9") / tcp("g"), "tout",
         v6(R6_AS, "fd00:b:0:9::9", hlim=63) / tcp("g"), "redirect_l3"),
]


def _packet_socket(netns: str, ifname: str) -> socket.socket:
    sock = netns_socket(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, 0))
    return sock


def _received_frame(sock: socket.socket, marker: bytes, timeout: float = 3.0) -> bytes:
    """The first frame the device received (not sent) that carries `marker`."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        frame, addr = sock.recvfrom(65536)
        if addr[2] != PACKET_OUTGOING and marker in frame:
            return frame
    raise AssertionError(f"no frame with {marker!r} within {timeout} s")


def _tun_packet(fd: int, marker: bytes, timeout: float = 3.0) -> bytes:
    """The first IP packet the tun device sent that carries `marker`."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            break
        pkt = os.read(fd, 65536)
        if marker in pkt:
            return pkt
    raise AssertionError(f"no packet with {marker!r} within {timeout} s")


def _decisions(gw, send) -> dict[str, int]:
    """The fast-path decisions tin counted while `send` ran."""
    before = gw["dp"].tables.fast_stats_of(gw["tin"])
    send()
    after = gw["dp"].tables.fast_stats_of(gw["tin"])
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_forwarded_from_an_l3_device(gw, case):
    marker = bytes(case.pkt[Raw])[:8]
    if case.out == "tout":
        def send_and_read() -> bytes:
            os.write(gw["fds"]["tin"], bytes(case.pkt))
            return _tun_packet(gw["fds"]["tout"], marker)
    else:
        netns, end = gw["ends"][case.out]
        sock = _packet_socket(netns, end)

        def send_and_read() -> bytes:
            with sock:
                os.write(gw["fds"]["tin"], bytes(case.pkt))
                return _received_frame(sock, marker)

    got: list[bytes] = []
    assert _decisions(gw, lambda: got.append(send_and_read())) == {case.decision: 1}
    (out,) = got
    if case.out == "tout":
        assert out == bytes(case.expected), "\n" + IP(out).show(dump=True)
        return
    gw_mac, host_mac = MAC[case.out]
    want = Ether(src=gw_mac, dst=host_mac) / case.expected
    assert out == bytes(want), "\n" + Ether(out).show(dump=True)


def test_to_the_gateway_itself_goes_to_the_stack_translated(gw):
    """A packet for the gateway's own address (as the peer knows it) is the stack's to
    deliver: it arrives on a socket, from the peer's address as the LAN knows it."""
    sock = netns_socket(gw["g"], socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.bind((GW, LOCAL_PORT))
        sock.settimeout(3)
        pkt = v4(R, "10.246.1.1") / UDP(sport=5353, dport=LOCAL_PORT) / Raw(b"for me")
        got: list = []
        assert _decisions(gw, lambda: (os.write(gw["fds"]["tin"], bytes(pkt)),
                                       got.append(sock.recvfrom(100)))) == {"local": 1}
    assert got == [(b"for me", (R_AS, 5353))]
