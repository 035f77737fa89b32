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
MAP_NAMES = (MAP_XLATE_V4, MAP_XLATE_V6, MAP_DEVICES, MAP_MAP_STATS, MAP_DEV_STATS)


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
}
