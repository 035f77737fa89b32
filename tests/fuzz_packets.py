"""Inputs for the dataplane fuzz: valid seed packets, their mutations, random bytes.

Seeds cover what natgw translates (TCP, UDP, ICMP and ICMPv6, errors quoting
each, fragments, IPv4 options, IPv6 extension headers) in both directions,
matched and unmatched, some with wrong checksums on purpose. Mutations flip
bits, set header fields to edge values, swap addresses for other mapped or
unmapped ones, insert, delete and append bytes, and truncate.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from functools import cache

from fuzz_oracle import L6, LA, LA6, OTHER, OTHER2, OTHER6, OTHER6_2, R6, RA, RA6, L, R
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
    fragment6,
)
from scapy.layers.ipsec import AH
from scapy.packet import Raw

ETHERTYPES = (0x0800, 0x86DD)


@dataclass(frozen=True)
class Seed:
    name: str
    direction: str
    data: bytes


def _l4s() -> dict:
    return {
        "tcp": lambda: TCP(sport=40000, dport=80, flags="PA", seq=7) / Raw(b"t" * 33),
        "syn": lambda: TCP(sport=40001, dport=443, flags="S",
                           options=[("MSS", 1460), ("NOP", None), ("WScale", 7)]),
        "udp": lambda: UDP(sport=5353, dport=53) / Raw(b"u" * 21),
        "udp0": lambda: UDP(sport=9, dport=9, chksum=0) / Raw(b"zero"),
    }


def _v4_seeds(d: str) -> list[tuple[str, bytes]]:
    src, dst, qsrc, qdst = (L, RA, RA, L) if d == "egress" else (R, LA, LA, R)
    out = []
    for name, l4 in _l4s().items():
        out.append((f"v4 {name}", IP(src=src, dst=dst) / l4()))
        out.append((f"v4 {name} only src", IP(src=src, dst=OTHER2) / l4()))
        out.append((f"v4 {name} unmatched", IP(src=OTHER, dst=OTHER2) / l4()))
    out += [
        ("v4 tcp bad csum", IP(src=src, dst=dst) / TCP(chksum=0x1234) / Raw(b"x" * 9)),
        ("v4 bad header csum", IP(src=src, dst=dst, chksum=0x4242) / UDP() / Raw(b"h")),
        ("v4 icmp echo", IP(src=src, dst=dst) / ICMP(id=3, seq=4) / Raw(b"ping")),
        ("v4 only dst", IP(src=OTHER, dst=dst) / UDP() / Raw(b"d")),
        ("v4 gre", IP(src=src, dst=dst, proto=47) / Raw(b"\0\0\x08\0gre")),
        ("v4 options", IP(src=src, dst=dst, options=[IPOption_RR(routers=["1.2.3.4"])])
         / TCP(flags="A") / Raw(b"o" * 5)),
        ("v4 router error", IP(src=OTHER, dst=dst) / ICMP(type=11)
         / IP(src=qsrc, dst=qdst) / UDP(sport=1, dport=2)),
        ("v4 error quote cut", IP(src=src, dst=dst) / ICMP(type=3, code=1)
         / Raw(bytes(IP(src=qsrc, dst=qdst) / TCP())[:28])),
    ]
    for t, code in ((3, 3), (3, 4), (11, 0), (12, 0)):
        for qn, q in (("tcp", TCP(sport=80, dport=40000, flags="SA")),
                      ("udp", UDP(sport=53, dport=5353) / Raw(b"r")),
                      ("icmp", ICMP(id=9) / Raw(b"p"))):
            out.append((f"v4 icmp {t}/{code} quoting {qn}", IP(src=src, dst=dst)
                        / ICMP(type=t, code=code) / IP(src=qsrc, dst=qdst) / q))
    frags = fragment(IP(src=src, dst=dst) / UDP(sport=7, dport=9) / Raw(bytes(range(200))),
                     fragsize=96)
    out += [(f"v4 fragment {i}", f) for i, f in enumerate(frags)]
    return [(n, bytes(p)) for n, p in out]


def _v6_seeds(d: str) -> list[tuple[str, bytes]]:
    src, dst, qsrc, qdst = (L6, RA6, RA6, L6) if d == "egress" else (R6, LA6, LA6, R6)
    out = []
    for name, l4 in _l4s().items():
        out.append((f"v6 {name}", IPv6(src=src, dst=dst) / l4()))
        out.append((f"v6 {name} unmatched", IPv6(src=OTHER6, dst=OTHER6_2) / l4()))
    echo = ICMPv6EchoRequest(id=3, seq=4, data=b"ping")
    out += [
        ("v6 tcp bad csum", IPv6(src=src, dst=dst) / TCP(chksum=0x1234) / Raw(b"x" * 9)),
        ("v6 icmpv6 echo", IPv6(src=src, dst=dst) / echo),
        ("v6 only dst", IPv6(src=OTHER6, dst=dst) / echo),
        ("v6 hop-by-hop", IPv6(src=src, dst=dst) / IPv6ExtHdrHopByHop() / UDP() / Raw(b"h")),
        ("v6 dstopt tcp", IPv6(src=src, dst=dst) / IPv6ExtHdrDestOpt() / TCP() / Raw(b"d")),
        ("v6 routing left 0", IPv6(src=src, dst=dst)
         / IPv6ExtHdrRouting(addresses=[OTHER6_2], segleft=0) / UDP() / Raw(b"r")),
        ("v6 routing left 1", IPv6(src=src, dst=dst)
         / IPv6ExtHdrRouting(addresses=[OTHER6_2], segleft=1) / UDP() / Raw(b"r")),
        ("v6 ah", IPv6(src=src, dst=dst) / AH(nh=17, payloadlen=2, icv=b"\0" * 4)
         / UDP() / Raw(b"a")),
        ("v6 ext chain of 5", IPv6(src=src, dst=dst) / IPv6ExtHdrDestOpt()
         / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
         / IPv6ExtHdrDestOpt() / UDP()),
        ("v6 no next header", IPv6(src=src, dst=dst, nh=59) / Raw(b"n")),
        ("v6 router error", IPv6(src=OTHER6, dst=dst) / ICMPv6TimeExceeded()
         / IPv6(src=qsrc, dst=qdst) / UDP(sport=1, dport=2)),
        ("v6 error quoting fragment", IPv6(src=src, dst=dst) / ICMPv6PacketTooBig(mtu=1280)
         / IPv6(src=qsrc, dst=qdst) / IPv6ExtHdrFragment(id=1) / UDP() / Raw(b"f")),
    ]
    errors = (("unreach", ICMPv6DestUnreach), ("ptb", ICMPv6PacketTooBig),
              ("time", ICMPv6TimeExceeded), ("param", ICMPv6ParamProblem))
    for en, err in errors:
        for qn, q in (("tcp", TCP(sport=80, dport=40000, flags="SA")),
                      ("udp", UDP(sport=53, dport=5353) / Raw(b"r")),
                      ("icmpv6", ICMPv6EchoRequest(id=9, data=b"p"))):
            out.append((f"v6 {en} quoting {qn}", IPv6(src=src, dst=dst) / err()
                        / IPv6(src=qsrc, dst=qdst) / q))
    frags = fragment6(IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(id=5) / UDP(sport=7, dport=9)
                      / Raw(bytes(range(200))), 160)
    out += [(f"v6 fragment {i}", f) for i, f in enumerate(frags)]
    return [(n, bytes(p)) for n, p in out]


@cache
def seeds() -> tuple[Seed, ...]:
    return tuple(Seed(f"{d} {n}", d, data) for d in ("egress", "ingress")
                 for n, data in _v4_seeds(d) + _v6_seeds(d))


def ethertype_of(data: bytes) -> int:
    return 0x86DD if data and data[0] >> 4 == 6 else 0x0800


# Bytes whose value decides how a packet is parsed, and values at the edges.
V4_FIELDS = (0, 2, 3, 6, 7, 9)                 # version/IHL, total length, fragment, protocol
V6_FIELDS = (0, 4, 5, 6, 40, 41, 42, 43, 48, 49)  # version, payload length, next header, ext
EDGE = (0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0B, 0x0C, 0x11, 0x20, 0x2B, 0x2C, 0x33,
        0x3A, 0x3B, 0x3C, 0x3F, 0x40, 0x45, 0x46, 0x4F, 0x60, 0x80, 0x86, 0xDD, 0xFE, 0xFF)
SWAP_V4 = (L, LA, R, RA, OTHER, OTHER2, "8.0.64.1", "172.16.0.1", "0.0.0.0", "255.255.255.255")
SWAP_V6 = (L6, LA6, R6, RA6, OTHER6, OTHER6_2, "::", "fd00:a:86dd:3::ffff")


def _addr_bytes(a: str) -> bytes:
    return ipaddress.ip_address(a).packed


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to three random mutations of @data."""
    p = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(8)
        if op == 0 and p:  # flip a bit
            i = rng.randrange(len(p))
            p[i] ^= 1 << rng.randrange(8)
        elif op == 1 and p:  # random byte
            p[rng.randrange(len(p))] = rng.randrange(256)
        elif op == 2 and p:  # a parsing field set to an edge value
            fields = V6_FIELDS if p[0] >> 4 == 6 else V4_FIELDS
            l4 = (p[0] & 0xF) * 4 if p[0] >> 4 == 4 else 40
            cand = [i for i in fields + (l4, l4 + 1, l4 + 12, l4 + 8, l4 + 9, l4 + 28)
                    if i < len(p)]
            if cand:
                p[rng.choice(cand)] = rng.choice(EDGE)
        elif op == 3 and len(p) >= 40:  # swap an address (outer or quoted) for another
            v6 = p[0] >> 4 == 6
            alen, offs = (16, [8, 24, 56, 72]) if v6 else (4, [12, 16, 40, 44])
            off = rng.choice([o for o in offs if o + alen <= len(p)])
            p[off:off + alen] = _addr_bytes(rng.choice(SWAP_V6 if v6 else SWAP_V4))
        elif op == 4:  # insert bytes
            i = rng.randint(0, len(p))
            p[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 5 and p:  # delete bytes
            i = rng.randrange(len(p))
            del p[i:i + rng.randint(1, 8)]
        elif op == 6:  # append
            p += rng.randbytes(rng.randint(1, 64))
        elif op == 7 and p:  # 16-bit field (lengths, checksums, fragment offsets)
            i = rng.randrange(0, max(1, len(p) - 1)) & ~1
            p[i:i + 2] = rng.choice((0, 1, 0xFFFF, 0x8000, 0x2000, 0x1FFF, 0xFFF8,
                                     rng.randrange(65536))).to_bytes(2, "big")[:len(p) - i]
    return bytes(p)


def random_bytes(rng: random.Random) -> tuple[bytes, int]:
    """Random bytes, half of them starting like an IP header; and the ethertype to claim."""
    data = bytearray(rng.randbytes(rng.randint(0, 160)))
    if data and rng.random() < 0.5:
        data[0] = rng.choice((0x45, 0x46, 0x4F, 0x60, 0x44, 0x40))
    et = rng.choice(ETHERTYPES + (0x0806, rng.randrange(65536)))
    return bytes(data), et

