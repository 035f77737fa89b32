"""Python mirror of bpf/natgw_shared.h: map layouts, indices and limits.

The C header is the source of truth; tests/test_layout.py compares every
constant and every struct field offset here with what clang compiled.
"""

from __future__ import annotations

import ctypes

MAX_MAPPINGS = 16384
MAX_DEVICES = 256
XLATE_ENTRIES = 2 * MAX_MAPPINGS

DIR_EGRESS = 0
DIR_INGRESS = 1
DIRECTIONS = {DIR_EGRESS: "egress", DIR_INGRESS: "ingress"}

SIDE_DST = 0
SIDE_SRC = 1

TABLES = 4

# Prefix lengths present per table, as bits of Device.plens_v4 / plens_v6 (bit n % 64 of
# word n // 64 for length n): the dataplane probes only those, longest first.
V4_PLEN_MAX = 32
V6_PLEN_MAX = 128
V6_PLEN_WORDS = 3
# Long-prefix skip bitmaps (natgw_shared.h: NATGW_SKIP_PLEN).
SKIP_PLEN = 16
SKIP_BUCKETS = 1024
SKIP_WORDS = SKIP_BUCKETS // 64

# natgw_device.flags
DEV_F_LAN = 0x0001  # a LAN-side device: the fast path only, no mappings
DEV_F_PEER_NETNS = 0x0002  # a veth whose peer is in another netns: bpf_redirect_peer into it
# Remembers that natgw created the clsact qdisc, so detaching removes only what it added.
DEV_F_OWN_QDISC = 0x8000

# Counter indices never change (pinned counters outlive upgrades): new reasons take free slots.
DROP_TRUNCATED = 0
DROP_ICMP_INNER = 1
DROP_EXTHDR = 2
DROP_REWRITE = 3
EV_UNMATCHED = 4
EV_UNPARSED = 5
EV_MSS_CLAMPED = 6
DROP_IPV6_ROUTING = 7
DEV_STAT_MAX = 8

# Fast-path decisions per device (natgw_shared.h): redirects, then fallbacks to the stack.
FAST_REDIRECT_L3 = 0
FAST_REDIRECT_ETH = 1
FAST_REDIRECT_PEER = 2
FAST_NOT_IP = 3
FAST_TTL = 4
FAST_IP_OPTIONS = 5
FAST_FRAGMENT = 6
FAST_ICMP_ERROR = 7
FAST_MULTICAST = 8
FAST_MARTIAN = 9
FAST_NO_NEIGH = 10
FAST_FRAG_NEEDED = 11
FAST_UNREACHABLE = 12
FAST_LOCAL = 13
FAST_FWD_DISABLED = 14
FAST_UNSUPPORTED = 15
FAST_OUT_DEVICE = 16
# The XDP program's own (natgw_shared.h): its redirects, and what it left to tc for its
# own reasons (then counted again by the tc program's decision).
FAST_XDP_REDIRECT = 17
FAST_XDP_TC = 18
FAST_MAX = 24  # slots 19.. are free for new reasons (the pinned map keeps its size)

# Names shown by `natgw maps` and used as the metrics' decision label.
FAST_NAMES = {
    FAST_REDIRECT_L3: "redirect_l3",
    FAST_REDIRECT_ETH: "redirect_eth",
    FAST_REDIRECT_PEER: "redirect_peer",
    FAST_NOT_IP: "not_ip",
    FAST_TTL: "ttl",
    FAST_IP_OPTIONS: "ip_options",
    FAST_FRAGMENT: "fragment",
    FAST_ICMP_ERROR: "icmp_error",
    FAST_MULTICAST: "multicast",
    FAST_MARTIAN: "martian",
    FAST_NO_NEIGH: "no_neigh",
    FAST_FRAG_NEEDED: "frag_needed",
    FAST_UNREACHABLE: "unreachable",
    FAST_LOCAL: "local",
    FAST_FWD_DISABLED: "fwd_disabled",
    FAST_UNSUPPORTED: "unsupported",
    FAST_OUT_DEVICE: "out_device",
    FAST_XDP_REDIRECT: "xdp_redirect",
    FAST_XDP_TC: "xdp_to_tc",
}
FAST_REDIRECTS = (FAST_REDIRECT_L3, FAST_REDIRECT_ETH, FAST_REDIRECT_PEER, FAST_XDP_REDIRECT)

V6_MAX_EXT = 6

# Names shown by `natgw maps` and used as the metrics' reason label.
DEV_STAT_NAMES = {
    DROP_TRUNCATED: "truncated",
    DROP_ICMP_INNER: "icmp_inner",
    DROP_EXTHDR: "ipv6_exthdr",
    DROP_REWRITE: "rewrite_failed",
    EV_UNMATCHED: "unmatched",
    EV_UNPARSED: "unparsed",
    EV_MSS_CLAMPED: "mss_clamped",
    DROP_IPV6_ROUTING: "ipv6_routing",
}
DROPS = (DROP_TRUNCATED, DROP_ICMP_INNER, DROP_EXTHDR, DROP_REWRITE, DROP_IPV6_ROUTING)
DROP_REASONS = {i: DEV_STAT_NAMES[i] for i in DROPS}

# Map names, as pinned under /sys/fs/bpf/natgw/<gateway>/.
MAP_XLATE_V4 = "xlate_v4_hash"
MAP_XLATE_V6 = "xlate_v6_hash"
MAP_DEVICES = "devices_v2"
MAP_MAP_STATS = "map_stats"
MAP_DEV_STATS = "dev_stats"
MAP_FAST_STATS = "fast_stats"
MAP_XDP_TX = "xdp_tx"  # devmap: device slot -> ifindex XDP_REDIRECT may send to
MAP_XDP_MACS = "xdp_macs"  # device slot -> Mac of a device with the XDP program
MAP_XLATE_V4_SKIP = "xlate_v4_skip"  # word index -> bitmap of buckets (SKIP_PLEN)
MAP_NAMES = (MAP_XLATE_V4, MAP_XLATE_V6, MAP_DEVICES, MAP_MAP_STATS, MAP_DEV_STATS,
             MAP_FAST_STATS, MAP_XDP_TX, MAP_XDP_MACS, MAP_XLATE_V4_SKIP)
# Absent on a gateway an older natgw loaded (until its next `up`): Tables does without.
MAP_OPTIONAL = (MAP_FAST_STATS, MAP_XDP_TX, MAP_XDP_MACS, MAP_XLATE_V4_SKIP)


def skip_index(slot: int, table: int, word: int) -> int:
    """The xlate_v4_skip entry of a word of a device slot's table."""
    return (slot * TABLES + table) * SKIP_WORDS + word


def skip_bucket(addr: bytes) -> int:
    """The skip bucket of an IPv4 address or prefix (its /16 block, modulo SKIP_BUCKETS)."""
    return ((addr[0] << 8) | addr[1]) & (SKIP_BUCKETS - 1)


def table(direction: int, side: int) -> int:
    """Index of the translation table for a direction and an address side."""
    return direction * 2 + side


class XlateV4Key(ctypes.Structure):
    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("table", ctypes.c_uint16),
        ("prefixlen", ctypes.c_uint16),
        ("addr", ctypes.c_uint8 * 4),
    ]


class XlateV6Key(ctypes.Structure):
    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("table", ctypes.c_uint16),
        ("prefixlen", ctypes.c_uint16),
        ("addr", ctypes.c_uint8 * 16),
    ]


class Xlate(ctypes.Structure):
    _fields_ = [
        ("addr", ctypes.c_uint8 * 16),
        ("prefixlen", ctypes.c_uint32),
        ("mapping_id", ctypes.c_uint32),
    ]


class Device(ctypes.Structure):
    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("l3_offset", ctypes.c_uint16),
        ("mss_v4", ctypes.c_uint16),
        ("mss_v6", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
        ("pad", ctypes.c_uint32),
        ("plens_v4", ctypes.c_uint64 * TABLES),
        ("plens_v6", ctypes.c_uint64 * (TABLES * V6_PLEN_WORDS)),  # table t: words 3t..3t+2
    ]


class Mac(ctypes.Structure):
    _fields_ = [
        ("addr", ctypes.c_uint8 * 6),
        ("pad", ctypes.c_uint8 * 2),
    ]


class Counter(ctypes.Structure):
    _fields_ = [
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
    ]


# The C struct name each mirror stands for, for the layout check.
C_STRUCTS = {
    "natgw_xlate_v4_key": XlateV4Key,
    "natgw_xlate_v6_key": XlateV6Key,
    "natgw_xlate": Xlate,
    "natgw_device": Device,
    "natgw_counter": Counter,
    "natgw_mac": Mac,
}
