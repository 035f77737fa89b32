/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ICMP and ICMPv6 errors quote the packet that caused them. For the sender's
 * socket to receive the error (ECONNREFUSED, PMTU), the quoted header must be
 * translated too, with the inverse mapping: the quoted packet travelled the
 * other way, so its source is looked up in the destination table and its
 * destination in the source table. Plans are made (everything read and
 * checked) before anything is written, so a packet is either fully
 * translated or left as it was.
 */
#ifndef NATGW_ICMP_H
#define NATGW_ICMP_H

#define ICMP_HDR_LEN 8	/* type, code, checksum, 4 bytes of rest; the quote follows */

struct quoted_v4 {
	__u32 ip_off;
	__u32 l4_csum_off;	/* 0: no checksum to update (absent, cut off, ICMP) */
	__u8 l4_is_udp;
	__be32 saddr;
	__be32 daddr;
	struct natgw_xlate *xs;	/* for the quoted source */
	struct natgw_xlate *xd;	/* for the quoted destination */
};

struct quoted_v6 {
	__u32 ip_off;
	__u32 l4_csum_off;
	__u8 l4_is_udp;
	union v6addr saddr;
	union v6addr daddr;
	struct natgw_xlate *xs;
	struct natgw_xlate *xd;
};

static __always_inline int icmp4_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
	       type == ICMP_PARAMETERPROB;
}

static __always_inline int icmp6_is_error(__u8 type)
{
	return type == ICMPV6_DEST_UNREACH || type == ICMPV6_PKT_TOOBIG ||
	       type == ICMPV6_TIME_EXCEED || type == ICMPV6_PARAMPROB;
}

/*
 * Offset of the quoted L4 checksum if the quote holds it whole, else 0.
 * ICMPv4's checksum does not cover addresses, so it never needs updating.
 */
static __always_inline __u32 quoted_l4_csum_off(struct __sk_buff *skb, __u8 proto, __u32 l4_off,
						 int first)
{
	__u32 off;

	if (!first || proto == IPPROTO_ICMP)
		return 0;
	off = l4_csum_offset(proto, l4_off);
	if (!off || !skb_has(skb, off, 2))
		return 0;
	return off;
}

/**
 * quoted_v4_plan - read the packet quoted by an ICMP error.
 * @dev: the device (its tables are the ones looked up)
 * @ip_off: offset of the quoted IPv4 header
 *
 * Return: 0 (q->xs and q->xd say what to translate), or -1 when the quote
 * is too short or not IPv4.
 */
static __always_inline int quoted_v4_plan(struct __sk_buff *skb, const struct natgw_device *dev,
					  __u32 ifindex, __u32 dir, __u32 ip_off,
					  struct quoted_v4 *q)
{
	struct iphdr ip;
	__u32 l4_off;

	if (bpf_skb_load_bytes(skb, ip_off, &ip, sizeof(ip)) < 0 || ip.version != 4 || ip.ihl < 5)
		return -1;
	l4_off = ip_off + ip.ihl * 4;
	q->ip_off = ip_off;
	q->saddr = ip.saddr;
	q->daddr = ip.daddr;
	q->xs = xlate_v4_lookup(dev, ifindex, NATGW_TABLE(dir, NATGW_SIDE_DST), ip.saddr);
	q->xd = xlate_v4_lookup(dev, ifindex, NATGW_TABLE(dir, NATGW_SIDE_SRC), ip.daddr);
	q->l4_is_udp = ip.protocol == IPPROTO_UDP;
	q->l4_csum_off = quoted_l4_csum_off(skb, ip.protocol, l4_off,
					    !(ip.frag_off & bpf_htons(NATGW_IP_OFFSET)));
	return 0;
}

/**
 * quoted_v4_apply - translate the quoted packet and fix every checksum over it.
 * @icmp_csum_off: offset of the ICMP error's own checksum
 *
 * Return: 0, or -1 if a helper failed.
 */
static __always_inline int quoted_v4_apply(struct __sk_buff *skb, const struct quoted_v4 *q,
					   __u32 icmp_csum_off)
{
	__be32 from[2] = { q->saddr, q->daddr };
	__be32 to[2] = { q->xs ? netmap_v4(q->saddr, q->xs) : q->saddr,
			 q->xd ? netmap_v4(q->daddr, q->xd) : q->daddr };
	__u32 ip_csum_off = q->ip_off + offsetof(struct iphdr, check);
	__u16 ipc_old, ipc_new, l4c_old = 0, l4c_new = 0;
	__s64 diff;

	diff = natgw_csum_diff(from, sizeof(from), to, sizeof(to), 0);
	if (diff < 0)
		return -1;
	if (bpf_skb_load_bytes(skb, ip_csum_off, &ipc_old, 2) < 0)
		return -1;
	if (q->l4_csum_off && bpf_skb_load_bytes(skb, q->l4_csum_off, &l4c_old, 2) < 0)
		return -1;

	if (bpf_skb_store_bytes(skb, q->ip_off + offsetof(struct iphdr, saddr), to, 8, 0) < 0)
		return -1;
	if (bpf_l3_csum_replace(skb, ip_csum_off, 0, diff, 0) < 0)
		return -1;
	if (q->l4_csum_off && quoted_csum_update(skb, q->l4_csum_off, q->l4_is_udp, diff) < 0)
		return -1;

	if (bpf_skb_load_bytes(skb, ip_csum_off, &ipc_new, 2) < 0)
		return -1;
	if (q->l4_csum_off && bpf_skb_load_bytes(skb, q->l4_csum_off, &l4c_new, 2) < 0)
		return -1;

	/* The ICMP checksum covers the quote: addresses and both checksums changed. */
	if (bpf_l4_csum_replace(skb, icmp_csum_off, 0, diff, 0) < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, icmp_csum_off, ipc_old, ipc_new, 2) < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, icmp_csum_off, l4c_old, l4c_new, 2) < 0)
		return -1;
	return 0;
}

/* As quoted_v4_plan, for a packet quoted by an ICMPv6 error. */
static __always_inline int quoted_v6_plan(struct __sk_buff *skb, const struct natgw_device *dev,
					  __u32 ifindex, __u32 dir, __u32 ip_off,
					  struct quoted_v6 *q)
{
	struct ipv6hdr ip6;
	struct l4_info l4;

	if (bpf_skb_load_bytes(skb, ip_off, &ip6, sizeof(ip6)) < 0 || ip6.version != 6)
		return -1;
	q->ip_off = ip_off;
	__builtin_memcpy(q->saddr.b, &ip6.saddr, 16);
	__builtin_memcpy(q->daddr.b, &ip6.daddr, 16);
	q->xs = xlate_v6_lookup(dev, ifindex, NATGW_TABLE(dir, NATGW_SIDE_DST), &ip6.saddr);
	q->xd = xlate_v6_lookup(dev, ifindex, NATGW_TABLE(dir, NATGW_SIDE_SRC), &ip6.daddr);
	q->l4_csum_off = 0;
	q->l4_is_udp = 0;
	if (ipv6_quoted_l4(skb, ip_off + sizeof(ip6), ip6.nexthdr, &l4) == 0) {
		q->l4_is_udp = l4.proto == IPPROTO_UDP;
		q->l4_csum_off = quoted_l4_csum_off(skb, l4.proto, l4.off, l4.first);
	}
	return 0;
}

/* As quoted_v4_apply, for ICMPv6: no IP checksum, every L4 checksum has a pseudo-header. */
static __always_inline int quoted_v6_apply(struct __sk_buff *skb, struct quoted_v6 *q,
					   __u32 icmp_csum_off)
{
	union v6addr to[2] = { q->saddr, q->daddr };
	__u16 l4c_old = 0, l4c_new = 0;
	__s64 diff;

	if (q->xs)
		netmap_v6(&to[0], q->xs);
	if (q->xd)
		netmap_v6(&to[1], q->xd);
	{
		union v6addr from[2] = { q->saddr, q->daddr };

		diff = natgw_csum_diff((__be32 *)from, sizeof(from), (__be32 *)to, sizeof(to), 0);
	}
	if (diff < 0)
		return -1;
	if (q->l4_csum_off && bpf_skb_load_bytes(skb, q->l4_csum_off, &l4c_old, 2) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, q->ip_off + offsetof(struct ipv6hdr, saddr), to, 32, 0) < 0)
		return -1;
	if (q->l4_csum_off && quoted_csum_update(skb, q->l4_csum_off, q->l4_is_udp, diff) < 0)
		return -1;
	if (q->l4_csum_off && bpf_skb_load_bytes(skb, q->l4_csum_off, &l4c_new, 2) < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, icmp_csum_off, 0, diff, 0) < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, icmp_csum_off, l4c_old, l4c_new, 2) < 0)
		return -1;
	return 0;
}

#endif /* NATGW_ICMP_H */
