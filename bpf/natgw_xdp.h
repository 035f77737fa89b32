/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The XDP fast path (fastpath: xdp): the tc fast path's decisions
 * (fast_v4_check, fast_v6_check, fast_fib_decide) at the driver's receive
 * hook, before an skb exists. XDP_REDIRECT does not run the output device's
 * tc egress program, so this program translates too: the input device's
 * ingress tables, the fib lookup on the translated packet, then the output
 * device's egress tables, with the same maps and counters as natgw.c.
 *
 * It does what an address rewrite does and nothing more. Everything else
 * goes up with XDP_PASS, unchanged, to the tc programs (natgw_lan,
 * natgw_ingress_fast), which handle it exactly as with fastpath: tc:
 *  - the fast path's fallbacks (fragments, TTL, ICMP errors, options, fib
 *    results other than success...): tc finds and counts the same reason;
 *  - what only tc does, counted here as NATGW_FAST_XDP_TC: an L3 output
 *    device (bpf_redirect strips the MAC header, XDP cannot), an output
 *    device not in xdp_tx (it cannot transmit XDP frames), a TCP SYN on a
 *    device that clamps the MSS, an L4 header cut short.
 * Nothing is written before the decision to redirect is final, so a passed
 * packet is the received one.
 *
 * Checksums are updated incrementally, which is right when they are
 * complete. A NIC receives nothing else; a veth receives the sender's
 * CHECKSUM_PARTIAL skbs unless the sender has tx checksum offload off, and
 * XDP_REDIRECT loses that state: hence the README's requirement.
 */
#ifndef NATGW_XDP_H
#define NATGW_XDP_H

#define NATGW_TCP_SYN		0x02	/* in the TCP flags byte (offset 13) */
#define NATGW_TCP_FLAGS_OFF	13

/*
 * The translation lookups of this program, in one place (the LPM lookup's
 * signature is the tables' business).
 */
static __always_inline struct natgw_xlate *
xdp_xlate_v4(const struct natgw_device *dev, __u32 ifindex, __u32 table, __be32 addr)
{
	return xlate_v4_lookup(dev, ifindex, table, addr);
}

static __always_inline struct natgw_xlate *
xdp_xlate_v6(const struct natgw_device *dev, __u32 ifindex, __u32 table,
	     const struct in6_addr *addr)
{
	return xlate_v6_lookup(dev, ifindex, table, addr);
}

/* 1 if the frame is addressed to the device (as the stack's PACKET_HOST). */
static __always_inline int xdp_for_host(const struct natgw_device *dev, const struct ethhdr *eth)
{
	__u32 slot = dev->slot;
	struct natgw_mac *mac = xdp_macs.lookup(&slot);
	__u32 a, b;
	__u16 c, d;

	if (!mac)
		return 0;
	__builtin_memcpy(&a, eth->h_dest, 4);
	__builtin_memcpy(&c, eth->h_dest + 4, 2);
	__builtin_memcpy(&b, mac->addr, 4);
	__builtin_memcpy(&d, mac->addr + 4, 2);
	return a == b && c == d;
}

/* Where the L4 header says what the rewrite must know; NULL fields: absent. */
struct xdp_l4 {
	__u16 *csum;		/* the checksum covering the addresses, NULL if none */
	__u8 udp;		/* a zero UDP checksum means none: it stays zero */
	__u8 syn;		/* a TCP SYN (the MSS clamp may change it) */
	__be16 sport;
	__be16 dport;
};

/**
 * xdp_parse_l4 - read the L4 header an address rewrite depends on.
 * @l4: start of the L4 header
 *
 * Return: NATGW_FAST_GO, NATGW_FAST_ICMP_ERROR, or NATGW_FAST_XDP_TC for a
 * header cut short (tc drops or forwards it as the translation decides).
 */
static __always_inline int xdp_parse_l4(void *l4, void *end, __u8 proto, struct xdp_l4 *out)
{
	__u8 *b = l4;

	switch (proto) {
	case IPPROTO_TCP:
		if (l4 + sizeof(struct tcphdr) > end)
			return NATGW_FAST_XDP_TC;
		out->csum = l4 + offsetof(struct tcphdr, check);
		out->syn = !!(b[NATGW_TCP_FLAGS_OFF] & NATGW_TCP_SYN);
		break;
	case IPPROTO_UDP:
		if (l4 + sizeof(struct udphdr) > end)
			return NATGW_FAST_XDP_TC;
		out->csum = l4 + offsetof(struct udphdr, check);
		out->udp = 1;
		break;
	case IPPROTO_ICMP:
		if (l4 + 1 > end || icmp4_is_error(b[0]))
			return NATGW_FAST_ICMP_ERROR;
		return NATGW_FAST_GO;
	case IPPROTO_ICMPV6:
		if (l4 + sizeof(struct icmp6hdr) > end || icmp6_is_error(b[0]))
			return NATGW_FAST_ICMP_ERROR;
		out->csum = l4 + offsetof(struct icmp6hdr, icmp6_cksum);
		return NATGW_FAST_GO;
	default:
		return NATGW_FAST_GO;
	}
	__builtin_memcpy(&out->sport, l4, 2);
	__builtin_memcpy(&out->dport, l4 + 2, 2);
	return NATGW_FAST_GO;
}

/* The L4 checksum after the address changes in @diff; a UDP zero stays zero. */
static __always_inline void xdp_l4_csum(const struct xdp_l4 *l4, __u64 diff)
{
	__u16 c;

	if (!l4->csum || (l4->udp && *l4->csum == 0))
		return;
	c = csum_apply(*l4->csum, diff);
	*l4->csum = (l4->udp && c == 0) ? 0xffff : c;
}

/*
 * Count the mappings a packet matched on a device, or that it matched none
 * (as the tc programs count every packet they see on a translating device).
 */
static __always_inline void xdp_count(const struct natgw_device *dev, __u32 dir,
				      const struct natgw_xlate *xs, const struct natgw_xlate *xd,
				      __u64 bytes)
{
	if (dev->flags & NATGW_DEV_F_LAN)
		return;
	if (!either_hit(xs, xd))
		dev_stat_inc(dev, NATGW_EV_UNMATCHED);
	if (xs)
		map_stat_add(xs, dir, 1, bytes);
	if (xd)
		map_stat_add(xd, dir, 1, bytes);
}

/*
 * After the fib lookup: where the packet goes, if XDP can send it there.
 * Claims the redirect (bpf_redirect_map takes effect when the program
 * returns XDP_REDIRECT; its XDP_PASS fallback says the device is not in
 * xdp_tx). Return: NATGW_FAST_GO with *out set, or a fallback reason.
 */
static __always_inline int xdp_out(long rc, const struct bpf_fib_lookup *p,
				   const struct natgw_device *dev, __u32 ifindex,
				   struct natgw_device **out)
{
	__u32 oif = p->ifindex;
	int decision;

	*out = devices_v2.lookup(&oif);
	decision = fast_fib_decide(rc, oif, *out, ifindex, dev->flags & NATGW_DEV_F_LAN);
	if (decision == NATGW_FAST_REDIRECT_L3)
		return NATGW_FAST_XDP_TC;
	if (decision != NATGW_FAST_REDIRECT_ETH && decision != NATGW_FAST_REDIRECT_PEER)
		return decision;
	if (!*out)
		return NATGW_FAST_OUT_DEVICE;
	if (xdp_tx.redirect_map((*out)->slot, XDP_PASS) != XDP_REDIRECT)
		return NATGW_FAST_XDP_TC;
	return NATGW_FAST_GO;
}

/* The frame's new Ethernet addresses: the fib's. */
static __always_inline void xdp_set_eth(struct ethhdr *eth, const struct bpf_fib_lookup *p)
{
	__builtin_memcpy(eth->h_dest, p->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, p->smac, ETH_ALEN);
}

/*
 * A fallback: passed unchanged. Only what the tc program will not count
 * with the same reason is counted here.
 */
static __always_inline int xdp_pass(const struct natgw_device *dev, int reason)
{
	if (reason == NATGW_FAST_XDP_TC)
		fast_stat_inc(dev, reason);
	return XDP_PASS;
}

static __always_inline int xdp_forward_v4(struct xdp_md *ctx, const struct natgw_device *dev,
					  __u32 ifindex, int for_host)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct natgw_xlate *xs = NULL, *xd = NULL, *ys = NULL, *yd = NULL;
	struct bpf_fib_lookup p = {};
	struct natgw_device *out;
	struct xdp_l4 l4 = {};
	__be32 saddr, daddr, s2, d2;
	__be16 ttl_old, ttl_new;
	__u64 diff = 0;
	int reason;
	long rc;

	if ((void *)(ip + 1) > end)
		return XDP_PASS;
	reason = fast_v4_check(ip, for_host);
	if (reason != NATGW_FAST_GO)
		return xdp_pass(dev, reason);
	/* fast_v4_check leaves no options: the L4 header follows. */
	reason = xdp_parse_l4(ip + 1, end, ip->protocol, &l4);
	if (reason != NATGW_FAST_GO)
		return xdp_pass(dev, reason);
	if (l4.syn && dev->mss_v4)
		return xdp_pass(dev, NATGW_FAST_XDP_TC);

	saddr = ip->saddr;
	daddr = ip->daddr;
	if (!(dev->flags & NATGW_DEV_F_LAN)) {
		xs = xdp_xlate_v4(dev, ifindex, NATGW_TABLE(NATGW_DIR_INGRESS, NATGW_SIDE_SRC), saddr);
		xd = xdp_xlate_v4(dev, ifindex, NATGW_TABLE(NATGW_DIR_INGRESS, NATGW_SIDE_DST), daddr);
		if (xs)
			saddr = netmap_v4(saddr, xs);
		if (xd)
			daddr = netmap_v4(daddr, xd);
	}

	p.family = AF_INET;
	p.l4_protocol = ip->protocol;
	p.tos = ip->tos;
	p.tot_len = bpf_ntohs(ip->tot_len);	/* no skb: the lookup checks it against the MTU */
	p.ipv4_src = saddr;
	p.ipv4_dst = daddr;
	p.sport = l4.sport;
	p.dport = l4.dport;
	p.ifindex = ifindex;
	rc = bpf_fib_lookup(ctx, &p, sizeof(p), 0);
	reason = xdp_out(rc, &p, dev, ifindex, &out);
	if (reason != NATGW_FAST_GO)
		return xdp_pass(dev, reason);

	s2 = saddr;
	d2 = daddr;
	if (!(out->flags & NATGW_DEV_F_LAN)) {
		if (l4.syn && out->mss_v4)
			return xdp_pass(dev, NATGW_FAST_XDP_TC);
		ys = xdp_xlate_v4(out, p.ifindex, NATGW_TABLE(NATGW_DIR_EGRESS, NATGW_SIDE_SRC), s2);
		yd = xdp_xlate_v4(out, p.ifindex, NATGW_TABLE(NATGW_DIR_EGRESS, NATGW_SIDE_DST), d2);
		if (ys)
			s2 = netmap_v4(s2, ys);
		if (yd)
			d2 = netmap_v4(d2, yd);
	}

	/* Decided: from here the frame is rewritten and sent. */
	diff = csum_diff32(csum_diff32(0, ip->saddr, s2), ip->daddr, d2);
	xdp_l4_csum(&l4, diff);
	__builtin_memcpy(&ttl_old, &ip->ttl, 2);	/* TTL and protocol: one checksum word */
	ip->ttl--;
	__builtin_memcpy(&ttl_new, &ip->ttl, 2);
	ip->check = csum_apply(ip->check, csum_diff16(diff, ttl_old, ttl_new));
	ip->saddr = s2;
	ip->daddr = d2;
	xdp_set_eth(eth, &p);

	xdp_count(dev, NATGW_DIR_INGRESS, xs, xd, p.tot_len);
	xdp_count(out, NATGW_DIR_EGRESS, ys, yd, p.tot_len);
	fast_stat_inc(dev, NATGW_FAST_XDP_REDIRECT);
	return XDP_REDIRECT;
}

static __always_inline __u64 csum_diff_v6(__u64 diff, const union v6addr *from,
					  const union v6addr *to)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		diff = csum_diff32(diff, from->w[i], to->w[i]);
	return diff;
}

static __always_inline int xdp_forward_v6(struct xdp_md *ctx, const struct natgw_device *dev,
					  __u32 ifindex, int for_host)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = data + sizeof(*eth);
	struct natgw_xlate *xs = NULL, *xd = NULL, *ys = NULL, *yd = NULL;
	struct bpf_fib_lookup p = {};
	struct natgw_device *out;
	struct xdp_l4 l4 = {};
	union v6addr s0, d0, s1, d1;
	__be32 first;
	__u64 diff;
	int reason;
	long rc;

	if ((void *)(ip6 + 1) > end)
		return XDP_PASS;
	reason = fast_v6_check(ip6, for_host);
	if (reason != NATGW_FAST_GO)
		return xdp_pass(dev, reason);
	/* fast_v6_check leaves no extension header: the L4 header follows. */
	reason = xdp_parse_l4(ip6 + 1, end, ip6->nexthdr, &l4);
	if (reason != NATGW_FAST_GO)
		return xdp_pass(dev, reason);
	if (l4.syn && dev->mss_v6)
		return xdp_pass(dev, NATGW_FAST_XDP_TC);

	__builtin_memcpy(s0.b, &ip6->saddr, 16);
	__builtin_memcpy(d0.b, &ip6->daddr, 16);
	s1 = s0;
	d1 = d0;
	if (!(dev->flags & NATGW_DEV_F_LAN)) {
		xs = xdp_xlate_v6(dev, ifindex, NATGW_TABLE(NATGW_DIR_INGRESS, NATGW_SIDE_SRC),
				  &ip6->saddr);
		xd = xdp_xlate_v6(dev, ifindex, NATGW_TABLE(NATGW_DIR_INGRESS, NATGW_SIDE_DST),
				  &ip6->daddr);
		if (xs)
			netmap_v6(&s1, xs);
		if (xd)
			netmap_v6(&d1, xd);
	}

	__builtin_memcpy(&first, ip6, 4);
	p.family = AF_INET6;
	p.l4_protocol = ip6->nexthdr;
	p.flowinfo = first & bpf_htonl(NATGW_IPV6_FLOWINFO);
	p.tot_len = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
	__builtin_memcpy(p.ipv6_src, s1.b, 16);
	__builtin_memcpy(p.ipv6_dst, d1.b, 16);
	p.sport = l4.sport;
	p.dport = l4.dport;
	p.ifindex = ifindex;
	rc = bpf_fib_lookup(ctx, &p, sizeof(p), 0);
	reason = xdp_out(rc, &p, dev, ifindex, &out);
	if (reason != NATGW_FAST_GO)
		return xdp_pass(dev, reason);

	if (!(out->flags & NATGW_DEV_F_LAN)) {
		if (l4.syn && out->mss_v6)
			return xdp_pass(dev, NATGW_FAST_XDP_TC);
		ys = xdp_xlate_v6(out, p.ifindex, NATGW_TABLE(NATGW_DIR_EGRESS, NATGW_SIDE_SRC),
				  (struct in6_addr *)s1.b);
		yd = xdp_xlate_v6(out, p.ifindex, NATGW_TABLE(NATGW_DIR_EGRESS, NATGW_SIDE_DST),
				  (struct in6_addr *)d1.b);
		if (ys)
			netmap_v6(&s1, ys);
		if (yd)
			netmap_v6(&d1, yd);
	}

	/* Decided: from here the frame is rewritten and sent (no IP checksum in IPv6). */
	diff = csum_diff_v6(csum_diff_v6(0, &s0, &s1), &d0, &d1);
	xdp_l4_csum(&l4, diff);
	ip6->hop_limit--;
	__builtin_memcpy(&ip6->saddr, s1.b, 16);
	__builtin_memcpy(&ip6->daddr, d1.b, 16);
	xdp_set_eth(eth, &p);

	xdp_count(dev, NATGW_DIR_INGRESS, xs, xd, p.tot_len);
	xdp_count(out, NATGW_DIR_EGRESS, ys, yd, p.tot_len);
	fast_stat_inc(dev, NATGW_FAST_XDP_REDIRECT);
	return XDP_REDIRECT;
}

/**
 * xdp_forward - the XDP fast path of an Ethernet device natgw knows.
 *
 * Return: XDP_REDIRECT (translated, TTL lowered, the fib's MACs), or
 * XDP_PASS with the frame unchanged.
 */
static __always_inline int xdp_forward(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 ifindex = ctx->ingress_ifindex;
	struct natgw_device *dev = devices_v2.lookup(&ifindex);

	if (!dev || dev->l3_offset != ETH_HLEN || (void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return xdp_forward_v4(ctx, dev, ifindex, xdp_for_host(dev, eth));
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return xdp_forward_v6(ctx, dev, ifindex, xdp_for_host(dev, eth));
	return XDP_PASS;
}

#endif /* NATGW_XDP_H */
