/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Header parsing. Packets are read with bpf_skb_load_bytes into stack copies:
 * it works on non-linear skbs (GSO, ICMP errors quoting large packets) and
 * keeps every bound check in one helper instead of pointer arithmetic.
 */
#ifndef NATGW_PARSE_H
#define NATGW_PARSE_H

#define NATGW_IP_MF		0x2000
#define NATGW_IP_OFFSET		0x1fff
#define NATGW_IP6_OFFSET	0xfff8

/* Where the L4 header of an IP packet is, once extension headers are skipped. */
struct l4_info {
	__u32 off;	/* from skb->data */
	__u8 proto;
	__u8 first;	/* 1 when this packet holds the L4 header (not a later fragment) */
	__u8 routed;	/* 1 when a routing header has segments left: daddr is not final */
};

struct ipv6_frag {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 id;
};

/**
 * ipv6_find_l4 - skip IPv6 extension headers.
 * @skb: the packet
 * @off: offset of the first header after the fixed IPv6 header
 * @nexthdr: the fixed header's next header
 * @l4: filled with the L4 offset, protocol, whether this is a first fragment
 *      and whether a routing header still has segments to visit
 *
 * Return: 0, -1 when the chain is longer than NATGW_V6_MAX_EXT, -2 when truncated.
 */
static __always_inline int ipv6_find_l4(struct __sk_buff *skb, __u32 off, __u8 nexthdr,
					struct l4_info *l4)
{
	l4->first = 1;
	l4->routed = 0;
#pragma unroll
	for (int i = 0; i < NATGW_V6_MAX_EXT; i++) {
		__u8 h[4];
		struct ipv6_frag frag;

		switch (nexthdr) {
		case IPPROTO_ROUTING:
			/* next header, length, routing type, segments left */
			if (bpf_skb_load_bytes(skb, off, h, 4) < 0)
				return -2;
			if (h[3])
				l4->routed = 1;
			nexthdr = h[0];
			off += ((__u32)h[1] + 1) * 8;
			break;
		case IPPROTO_HOPOPTS:
		case IPPROTO_DSTOPTS:
			if (bpf_skb_load_bytes(skb, off, h, 2) < 0)
				return -2;
			nexthdr = h[0];
			off += ((__u32)h[1] + 1) * 8;
			break;
		case IPPROTO_AH:
			if (bpf_skb_load_bytes(skb, off, h, 2) < 0)
				return -2;
			nexthdr = h[0];
			off += ((__u32)h[1] + 2) * 4;
			break;
		case IPPROTO_FRAGMENT:
			if (bpf_skb_load_bytes(skb, off, &frag, sizeof(frag)) < 0)
				return -2;
			nexthdr = frag.nexthdr;
			if (frag.frag_off & bpf_htons(NATGW_IP6_OFFSET))
				l4->first = 0;
			off += sizeof(frag);
			break;
		default:
			l4->off = off;
			l4->proto = nexthdr;
			return 0;
		}
	}
	return -1;
}

/**
 * l4_csum_offset - where the L4 checksum of a packet lies.
 * @proto: IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6 (or other: no checksum tied to addresses)
 * @l4_off: offset of the L4 header
 *
 * Return: the offset of the checksum field, or 0 for a protocol whose
 * checksum does not cover the IP addresses (ICMPv4, unknown).
 */
static __always_inline __u32 l4_csum_offset(__u8 proto, __u32 l4_off)
{
	switch (proto) {
	case IPPROTO_TCP:
		return l4_off + offsetof(struct tcphdr, check);
	case IPPROTO_UDP:
		return l4_off + offsetof(struct udphdr, check);
	case IPPROTO_ICMPV6:
		return l4_off + offsetof(struct icmp6hdr, icmp6_cksum);
	}
	return 0;
}

/* Bytes of L4 header that must be present to rewrite the checksum. */
static __always_inline __u32 l4_min_len(__u8 proto)
{
	switch (proto) {
	case IPPROTO_TCP:
		return sizeof(struct tcphdr);
	case IPPROTO_UDP:
		return sizeof(struct udphdr);
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		return 4;	/* type, code, checksum */
	}
	return 0;
}

/* Return: 1 if @len bytes can be read at @off. */
static __always_inline int skb_has(struct __sk_buff *skb, __u32 off, __u32 len)
{
	return (__u64)off + len <= skb->len;
}

/**
 * ipv6_quoted_l4 - find the L4 header of a packet quoted by an ICMPv6 error.
 *
 * Only a fragment header is skipped: walking whole chains both in the packet
 * and in its quote multiplies the verifier's paths past its limit, and the
 * packets natgw quotes back (TCP, UDP, ICMPv6, fragmented or not) carry no
 * other extension header. With any other, the quote's addresses are still
 * translated; only its L4 checksum, which no receiver checks, is left.
 *
 * Return: 0, or -1 if the L4 header is not found.
 */
static __always_inline int ipv6_quoted_l4(struct __sk_buff *skb, __u32 off, __u8 nexthdr,
					  struct l4_info *l4)
{
	struct ipv6_frag frag;

	l4->first = 1;
	if (nexthdr == IPPROTO_FRAGMENT) {
		if (bpf_skb_load_bytes(skb, off, &frag, sizeof(frag)) < 0)
			return -1;
		nexthdr = frag.nexthdr;
		l4->first = !(frag.frag_off & bpf_htons(NATGW_IP6_OFFSET));
		off += sizeof(frag);
	}
	if (nexthdr != IPPROTO_TCP && nexthdr != IPPROTO_UDP && nexthdr != IPPROTO_ICMPV6)
		return -1;
	l4->off = off;
	l4->proto = nexthdr;
	return 0;
}

#endif /* NATGW_PARSE_H */
