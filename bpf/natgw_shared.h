/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Everything the dataplane and the control plane must agree on: map layouts,
 * table and counter indices, limits. Mirrored in Python by
 * src/natgw/dataplane/layout.py; tests/test_layout.py proves the two agree.
 */
#ifndef NATGW_SHARED_H
#define NATGW_SHARED_H

#define NATGW_MAX_MAPPINGS	16384	/* mapping ids: 0 .. NATGW_MAX_MAPPINGS - 1 */
#define NATGW_MAX_DEVICES	256	/* device slots, for per-device counters */
#define NATGW_XLATE_ENTRIES	(2 * NATGW_MAX_MAPPINGS)	/* each mapping: one entry per direction */

#define NATGW_DIR_EGRESS	0
#define NATGW_DIR_INGRESS	1

/* Which address of the packet a table translates. */
#define NATGW_SIDE_DST		0
#define NATGW_SIDE_SRC		1

/*
 * Four translation tables per device, by direction and side:
 *   egress  dst: remote as   -> remote cidr     egress  src: local cidr  -> local as
 *   ingress src: remote cidr -> remote as       ingress dst: local as    -> local cidr
 */
#define NATGW_TABLE(dir, side)	((dir) * 2 + (side))
#define NATGW_TABLES		4

/*
 * Longest-prefix match as exact hash lookups, one per prefix length present
 * (longest first). The lengths present in each table of a device are bits of
 * natgw_device: bit n set when the table holds an n-bit prefix, so a lookup
 * costs one probe per distinct length, not a trie walk that deepens with the
 * number of mappings, and an empty table costs nothing. IPv4 uses bits 0..32
 * of one word, IPv6 bits 0..128 of three (length n: bit n % 64 of word n / 64;
 * flat, as bcc cannot describe a two-dimensional array).
 */
#define NATGW_V4_PLEN_MAX	32
#define NATGW_V6_PLEN_MAX	128
#define NATGW_V6_PLEN_WORDS	3

/*
 * Skipping long IPv4 prefixes where there are none: per device slot and
 * table, a bitmap of NATGW_SKIP_BUCKETS buckets of /16 blocks (the block's
 * number modulo NATGW_SKIP_BUCKETS). A set bit says that the table holds no
 * prefix longer than NATGW_SKIP_PLEN in the bucket, so a lookup there probes
 * only the shorter lengths: a /16 mapping among 10,000 /24s costs one probe,
 * not two. A clear bit (and a new, zeroed map) means probe every length: safe
 * whatever the control plane has written so far. Word w of table t of slot s
 * is entry (s * NATGW_TABLES + t) * NATGW_SKIP_WORDS + w.
 */
#define NATGW_SKIP_PLEN		16
#define NATGW_SKIP_BUCKETS	1024
#define NATGW_SKIP_WORDS	(NATGW_SKIP_BUCKETS >> 6)	/* 64-bit words per bitmap */

/* natgw_device.flags */
#define NATGW_DEV_F_LAN		0x0001	/* a LAN-side device: fast path only, no mappings */
#define NATGW_DEV_F_PEER_NETNS	0x0002	/* a veth whose peer is in another netns (redirect_peer) */
#define NATGW_DEV_F_OWN_QDISC	0x8000	/* natgw created the clsact qdisc: detach removes it */

/*
 * Per-device counters (natgw_dev_stats) by reason. A drop is a packet that
 * needed translation but could not be translated correctly: passing it would
 * leak real addresses or deliver a corrupt packet. Indices never change: the
 * pinned counters outlive a program upgrade, so a new reason takes a free slot.
 */
#define NATGW_DROP_TRUNCATED	0	/* matched, but its L4 header is cut short */
#define NATGW_DROP_ICMP_INNER	1	/* matched ICMP error whose quoted packet is unreadable */
#define NATGW_DROP_EXTHDR	2	/* matched IPv6 packet with too many extension headers */
#define NATGW_DROP_REWRITE	3	/* a store or checksum helper failed */
#define NATGW_EV_UNMATCHED	4	/* passed unchanged: no mapping */
#define NATGW_EV_UNPARSED	5	/* passed unchanged: not a readable IP header */
#define NATGW_EV_MSS_CLAMPED	6	/* TCP SYN whose MSS option was lowered */
#define NATGW_DROP_IPV6_ROUTING	7	/* matched IPv6 packet whose routing header has segments left */
#define NATGW_DEV_STAT_MAX	8

/*
 * Fast-path decisions (natgw_fast_stats) per device slot and reason: what the
 * LAN program or the fast ingress program did with each packet. A redirect
 * skips the kernel's forwarding path; every other reason is a fallback: the
 * packet goes to the stack unchanged, which routes (and translates, in the
 * post-routing program) it as without a fast path. Indices never change;
 * NATGW_FAST_MAX leaves free slots so that a new reason keeps the pinned map.
 */
#define NATGW_FAST_REDIRECT_L3		0	/* to an L3 device (wireguard, tun) */
#define NATGW_FAST_REDIRECT_ETH		1	/* to an Ethernet device, with the fib's MACs */
#define NATGW_FAST_REDIRECT_PEER	2	/* into the peer of a veth in another netns */
#define NATGW_FAST_NOT_IP		3	/* not IPv4/IPv6, or an unreadable header */
#define NATGW_FAST_TTL			4	/* TTL or hop limit <= 1: the stack sends time-exceeded */
#define NATGW_FAST_IP_OPTIONS		5	/* IPv4 options, IPv6 extension headers */
#define NATGW_FAST_FRAGMENT		6	/* a fragment */
#define NATGW_FAST_ICMP_ERROR		7	/* an ICMP or ICMPv6 error */
#define NATGW_FAST_MULTICAST		8	/* multicast or broadcast, or a frame not for this host */
#define NATGW_FAST_MARTIAN		9	/* an address the stack refuses to forward */
#define NATGW_FAST_NO_NEIGH		10	/* fib: next hop's neighbour not resolved yet */
#define NATGW_FAST_FRAG_NEEDED		11	/* fib: larger than the route's MTU */
#define NATGW_FAST_UNREACHABLE		12	/* fib: blackhole, unreachable or prohibit */
#define NATGW_FAST_LOCAL		13	/* fib: for the gateway itself (not forwarded) */
#define NATGW_FAST_FWD_DISABLED		14	/* fib: forwarding disabled on the input device */
#define NATGW_FAST_UNSUPPORTED		15	/* fib: lwt encapsulation, an error, a failed helper */
#define NATGW_FAST_OUT_DEVICE		16	/* routed to a device the fast path may not send to */
/*
 * The XDP program (fastpath: xdp) counts what it sends, and what it passes to
 * tc for its own reasons (an L3 output device, one it cannot transmit on, an
 * MSS clamp, a header cut short: see natgw_xdp.h), which the tc program then
 * counts again with its decision. Its other fallbacks are the tc program's
 * too: it passes them uncounted, and tc counts each once.
 */
#define NATGW_FAST_XDP_REDIRECT		17	/* XDP: translated, sent with XDP_REDIRECT */
#define NATGW_FAST_XDP_TC		18	/* XDP: left to the tc fast path */
#define NATGW_FAST_MAX			24

/* Longest IPv6 extension header chain walked to find the L4 header. */
#define NATGW_V6_MAX_EXT	6

/* A translation entry's key: every byte is set (hashed), no padding. */
struct natgw_xlate_v4_key {
	__u32 ifindex;
	__u16 table;		/* NATGW_TABLE(dir, side) */
	__u16 prefixlen;	/* 0 .. NATGW_V4_PLEN_MAX */
	__u8 addr[4];		/* network byte order, host bits zero */
};

struct natgw_xlate_v6_key {
	__u32 ifindex;
	__u16 table;
	__u16 prefixlen;	/* 0 .. NATGW_V6_PLEN_MAX */
	__u8 addr[16];
};

/* Where a matched prefix goes: new address = addr/prefixlen | host bits. */
struct natgw_xlate {
	__u8 addr[16];		/* IPv4 uses the first 4 bytes */
	__u32 prefixlen;	/* equal to the key's address prefix length */
	__u32 mapping_id;	/* index into natgw_map_stats (times 2, plus direction) */
};

/* A device natgw translates on; absent devices are left alone. */
struct natgw_device {
	__u32 slot;		/* index into natgw_dev_stats (times NATGW_DEV_STAT_MAX) */
	__u16 l3_offset;	/* 0 on L3 devices (wireguard, tun), 14 on Ethernet */
	__u16 mss_v4;		/* clamp TCP MSS of IPv4 SYNs to this; 0: no clamp */
	__u16 mss_v6;
	__u16 flags;		/* NATGW_DEV_F_* */
	__u32 pad;		/* explicit: plens_v4 is 8-byte aligned */
	/*
	 * Prefix lengths with entries, per table (see NATGW_V4_PLEN_MAX). Written
	 * by the control plane: a bit is set after its entries are written and
	 * cleared before the last of them is deleted.
	 */
	__u64 plens_v4[NATGW_TABLES];
	__u64 plens_v6[NATGW_TABLES * NATGW_V6_PLEN_WORDS];	/* table t: words 3t .. 3t + 2 */
};

/* xdp_macs: the MAC of an XDP device, by slot; frames to it are for this host. */
struct natgw_mac {
	__u8 addr[6];
	__u8 pad[2];		/* explicit: the value size is shared with Python */
};

struct natgw_counter {
	__u64 packets;
	__u64 bytes;		/* IP bytes (header included), GSO super-packets as sent */
};

#endif /* NATGW_SHARED_H */
