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
#define NATGW_LPM_ENTRIES	(2 * NATGW_MAX_MAPPINGS)	/* each mapping: one entry per direction */

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

/* The LPM key starts with ifindex and table, matched exactly: 64 bits. */
#define NATGW_KEY_FIXED_BITS	64

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
#define NATGW_FAST_MAX			24

/* Longest IPv6 extension header chain walked to find the L4 header. */
#define NATGW_V6_MAX_EXT	6

struct natgw_lpm_v4_key {
	__u32 prefixlen;	/* NATGW_KEY_FIXED_BITS + address prefix length */
	__u32 ifindex;
	__u32 table;		/* NATGW_TABLE(dir, side) */
	__u8 addr[4];		/* network byte order */
};

struct natgw_lpm_v6_key {
	__u32 prefixlen;
	__u32 ifindex;
	__u32 table;
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
};

struct natgw_counter {
	__u64 packets;
	__u64 bytes;		/* IP bytes (header included), GSO super-packets as sent */
};

#endif /* NATGW_SHARED_H */
