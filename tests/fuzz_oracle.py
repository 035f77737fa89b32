"""What natgw must do with any packet: a model of its rules and the properties of a run.

The model reads a packet the way the dataplane does (same header walk, same
limits) and says which addresses natgw must translate and into what. The
properties hold for every input, however malformed:

- the verdict is pass (TC_ACT_UNSPEC) or drop (TC_ACT_SHOT), and a drop counts
  exactly one drop reason while a pass counts none;
- a packet nothing of which matches a mapping is never dropped and comes out
  byte for byte identical (with MSS clamping on, only its MSS option and TCP
  checksum may change, the checksum's residue kept);
- a matched packet that passes carries the translated addresses (outer, and
  the quote of an ICMP error), never a real one;
- a changed packet keeps the one's-complement residue of its IPv4 header and
  L4 checksums: valid stays valid, and a wrong checksum stays wrong by the same
  amount (translation never repairs nor breaks a checksum).

Address plan: sources are picked so that an L3 packet handed to
BPF_PROG_TEST_RUN (which always parses an Ethernet header) also reads as a
frame of the right ethertype: bytes 12-13 of the packet are 08 00 for IPv4
(sources in 8.0.0.0/16) and 86 dd for IPv6 (sources in fd00:a:86dd::/48).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from natgw.dataplane import Mapping

TC_ACT_UNSPEC, TC_ACT_SHOT = -1, 2
MAX_EXT = 6  # NATGW_V6_MAX_EXT
ICMP4_ERRORS = {3, 11, 12}
ICMP6_ERRORS = {1, 2, 3, 4}

L, LA, R, RA = "8.0.1.2", "10.246.1.2", "8.0.3.4", "10.245.3.4"
OTHER, OTHER2 = "8.0.9.9", "192.168.2.2"
L6, LA6, R6, RA6 = ("fd00:a:86dd:1::12", "fd00:c:0:1::12", "fd00:a:86dd:3::34",
                    "fd00:b:0:3::34")
OTHER6, OTHER6_2 = "fd00:a:86dd:9::1", "fd00:99::2"
MAPPINGS = [
    Mapping.parse("local", "8.0.1.0/24", "10.246.1.0/24"),
    Mapping.parse("remote", "8.0.3.0/24", "10.245.3.0/24"),
    Mapping.parse("remote", "8.0.64.0/18", "172.16.0.0/18"),
    Mapping.parse("local", "fd00:a:86dd:1::/64", "fd00:c:0:1::/64"),
    Mapping.parse("remote", "fd00:a:86dd:3::/64", "fd00:b:0:3::/64"),
]
# (direction, side) -> [(match, rewrite)], as the control plane installs them.
SRC, DST = "src", "dst"
TABLES: dict[tuple[str, str], list[tuple]] = {
    ("egress", SRC): [(m.cidr, m.as_) for m in MAPPINGS if m.kind == "local"],
    ("egress", DST): [(m.as_, m.cidr) for m in MAPPINGS if m.kind == "remote"],
    ("ingress", SRC): [(m.cidr, m.as_) for m in MAPPINGS if m.kind == "remote"],
    ("ingress", DST): [(m.as_, m.cidr) for m in MAPPINGS if m.kind == "local"],
}


def translate(direction: str, side: str, addr: bytes) -> bytes | None:
    """The address a table rewrites @addr to (longest prefix), or None."""
    ip = ipaddress.ip_address(addr)
    best = None
    for match, rewrite in TABLES[(direction, side)]:
        if match.version == ip.version and ip in match and (
                best is None or match.prefixlen > best[0].prefixlen):
            best = (match, rewrite)
    if best is None:
        return None
    host = int(ip) & int(best[0].hostmask)
    return (int(best[1].network_address) | host).to_bytes(len(addr), "big")


def csum_residue(data: bytes, seed: int = 0) -> int:
    """One's-complement sum of @data (zero-padded), folded, with 0 and 0xffff equal."""
    if len(data) % 2:
        data += b"\0"
    s = seed + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s % 0xFFFF


@dataclass
class View:
    """A packet as the dataplane reads it (offsets from the IP header)."""

    version: int = 0           # 0: natgw does not parse it (not IP, unreadable)
    src: int = 0               # offset of the source address
    alen: int = 0              # address length
    ip_hlen: int = 0           # IPv4 header length (IHL * 4)
    l4: int | None = None      # offset of the L4 header when found
    proto: int = -1
    first: bool = True
    routed: bool = False
    ext_err: int = 0           # IPv6: -1 chain too long, -2 cut short
    quote: int | None = None   # offset of the quoted IP header of an ICMP error
    icmp_error: bool = False
    csums: list[tuple] = field(default_factory=list)

    @property
    def dst(self) -> int:
        return self.src + self.alen


def v6_find_l4(p: bytes, off: int, nh: int, v: View) -> None:
    """ipv6_find_l4 of natgw_parse.h, in Python."""
    for _ in range(MAX_EXT):
        if nh == 43:
            if off + 4 > len(p):
                v.ext_err = -2
                return
            v.routed |= p[off + 3] != 0
            nh, off = p[off], off + (p[off + 1] + 1) * 8
        elif nh in (0, 60):
            if off + 2 > len(p):
                v.ext_err = -2
                return
            nh, off = p[off], off + (p[off + 1] + 1) * 8
        elif nh == 51:
            if off + 2 > len(p):
                v.ext_err = -2
                return
            nh, off = p[off], off + (p[off + 1] + 2) * 4
        elif nh == 44:
            if off + 8 > len(p):
                v.ext_err = -2
                return
            if struct.unpack_from("!H", p, off + 2)[0] & 0xFFF8:
                v.first = False
            nh, off = p[off], off + 8
        else:
            v.l4, v.proto = off, nh
            return
    v.ext_err = -1


def view(p: bytes, protocol: int) -> View:
    """How natgw reads IP packet @p that the skb says is of ethertype @protocol."""
    v = View()
    if protocol == 0x0800:
        if len(p) < 20 or p[0] >> 4 != 4 or p[0] & 0xF < 5:
            return v
        v.version, v.src, v.alen, v.ip_hlen = 4, 12, 4, (p[0] & 0xF) * 4
        v.l4, v.proto = v.ip_hlen, p[9]
        v.first = not struct.unpack_from("!H", p, 6)[0] & 0x1FFF
        if v.first and v.proto == 1 and v.l4 < len(p) and p[v.l4] in ICMP4_ERRORS:
            v.icmp_error = True
            q = v.l4 + 8
            if q + 20 <= len(p) and p[q] >> 4 == 4 and p[q] & 0xF >= 5:
                v.quote = q
    elif protocol == 0x86DD:
        if len(p) < 40 or p[0] >> 4 != 6:
            return v
        v.version, v.src, v.alen = 6, 8, 16
        v6_find_l4(p, 40, p[6], v)
        if (not v.ext_err and v.first and v.proto == 58 and v.l4 < len(p)
                and p[v.l4] in ICMP6_ERRORS):
            v.icmp_error = True
            q = v.l4 + 8
            if q + 40 <= len(p) and p[q] >> 4 == 6:
                v.quote = q
    return v


def addr(p: bytes, off: int, n: int) -> bytes:
    return p[off:off + n]


@dataclass
class Plan:
    """What natgw must write: offset -> new address bytes."""

    outer_hit: bool
    quote_hit: bool
    writes: dict[int, bytes]

    @property
    def matched(self) -> bool:
        return self.outer_hit or self.quote_hit


def plan(p: bytes, v: View, direction: str) -> Plan:
    writes: dict[int, bytes] = {}
    outer = quote = False
    if not v.version:
        return Plan(False, False, writes)
    for off, side in ((v.src, SRC), (v.dst, DST)):
        new = translate(direction, side, addr(p, off, v.alen))
        if new is not None:
            outer = True
            writes[off] = new
    if v.quote is not None:
        # The quote travelled the other way: its source is looked up as a destination.
        qs, qn = (v.quote + 12, 4) if v.version == 4 else (v.quote + 8, 16)
        for off, side in ((qs, DST), (qs + qn, SRC)):
            new = translate(direction, side, addr(p, off, qn))
            if new is not None:
                quote = True
                writes[off] = new
    return Plan(outer, quote, writes)


def l4_residue(p: bytes, v: View) -> int | None:
    """Residue of the packet's own L4 checksum, if natgw keeps one up to date."""
    if v.l4 is None or not v.first or v.l4 >= len(p):
        return None
    seg = p[v.l4:]
    if v.version == 4 and v.proto == 1:
        return csum_residue(seg)
    if v.proto not in (6, 17) and not (v.version == 6 and v.proto == 58):
        return None
    pseudo = p[v.src:v.src + 2 * v.alen] + struct.pack("!II", len(seg), v.proto)
    return csum_residue(seg, csum_residue(pseudo))


def udp_csum(p: bytes, v: View) -> int | None:
    if v.proto == 17 and v.first and v.l4 is not None and v.l4 + 8 <= len(p):
        return struct.unpack_from("!H", p, v.l4 + 6)[0]
    return None


def mss_only_changes(inp: bytes, out: bytes, v: View) -> bool:
    """Only the TCP options and checksum differ, and the checksum residue is kept."""
    if v.proto != 6 or not v.first or v.l4 is None or v.l4 + 20 > len(inp):
        return False
    doff = (inp[v.l4 + 12] >> 4) * 4
    allowed = set(range(v.l4 + 16, v.l4 + 18)) | set(range(v.l4 + 20, v.l4 + doff))
    diff = {i for i in range(len(inp)) if inp[i] != out[i]}
    return diff <= allowed and l4_residue(inp, v) == l4_residue(out, v)


def check(inp: bytes, protocol: int, direction: str, verdict: int, out: bytes,
          drops: int, mss: bool) -> str | None:
    """The first property a run breaks, or None."""
    if verdict not in (TC_ACT_UNSPEC, TC_ACT_SHOT):
        return f"verdict {verdict}"
    if verdict == TC_ACT_SHOT and drops != 1:
        return f"dropped, counting {drops} drop reasons"
    if verdict == TC_ACT_UNSPEC and drops != 0:
        return f"passed, counting {drops} drop reasons"
    if len(out) != len(inp):
        return f"length {len(inp)} became {len(out)}"
    v = view(inp, protocol)
    want = plan(inp, v, direction)
    if not want.matched:
        if verdict == TC_ACT_SHOT:
            return "unmatched packet dropped"
        if out != inp and not (mss and mss_only_changes(inp, out, v)):
            return "unmatched packet changed"
        return None
    if verdict == TC_ACT_SHOT:
        return None
    if v.routed:
        return "matched packet with routing segments left passed"
    for off, new in want.writes.items():
        got = out[off:off + len(new)]
        if got != new:
            return (f"address at {off}: {ipaddress.ip_address(got)}, want "
                    f"{ipaddress.ip_address(new)}")
    if v.version == 4:
        hdr = slice(0, min(v.ip_hlen, len(inp)))
        if csum_residue(inp[hdr]) != csum_residue(out[hdr]):
            return "IPv4 header checksum residue changed"
    if udp_csum(inp, v) == 0:
        if udp_csum(out, v) != 0:
            return "UDP zero checksum rewritten"
    elif l4_residue(inp, v) != l4_residue(out, v):
        return f"L4 checksum residue changed (proto {v.proto})"
    return None
