/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The fast path's lanes (IPv4 and IPv6): the common packet, handled with direct
 * packet access so that it costs a few helper calls instead of a score.
 *
 * On this path every helper call is a real call and return, and returns are
 * expensive where the CPU needs return-stack mitigations; the general path
 * (natgw_fast.h with handle_v4) reads and writes each field through a
 * helper. The lane reads the headers in place, rewrites the IPv4 header
 * (addresses, TTL, checksum) and the MAC addresses in place, and calls a
 * helper only where the kernel's help is needed: the fib lookup, the map
 * lookups, the L4 checksum (CHECKSUM_PARTIAL and CHECKSUM_COMPLETE skbs need
 * bpf_l4_csum_replace, see natgw_csum.h) and the redirect.
 *
 * IPv6 has no header checksum to absorb a rewrite: the lane adds the change
 * to skb->csum with bpf_csum_update (a CHECKSUM_COMPLETE skb's sum must
 * follow the packet, as the general path's BPF_F_RECOMPUTE_CSUM stores do).
 *
 * The lane's packet: IPv4 without options or IPv6 without extension headers,
 * not a fragment, TCP (not a SYN:
 * the MSS clamp is the general path's) or UDP, one segment (no GSO: the
 * general path checks a segment's length against the route's MTU), every
 * header it touches in the linear area. The LAN lanes take it from an Ethernet
 * device; the ingress lanes from an Ethernet or an L3 device (wireguard, tun:
 * the packet starts at its IP header), and for an Ethernet output push the
 * header the fib found (a redirect from an L3 device carries no MAC header).
 * Anything else, and anything fast_v4_check would send to the stack, is
 * answered NATGW_LANE_SLOW before the lane writes or counts anything: the
 * general path then decides and counts it. Where the lane decides, it
 * decides and counts exactly as the general path would, and translates by
 * the same tables and the same NETMAP (netmap_v4).
 */
#ifndef NATGW_LANE_H
#define NATGW_LANE_H

/* Not the lane's packet: the general path takes it, unchanged and uncounted. */
#define NATGW_LANE_SLOW		(-2)

/* What the lane read from the headers. */
struct lane_v4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u16 tot_len;
	__u8 proto;
	__u8 tos;
	__u32 csum_off;		/* the TCP or UDP checksum, from skb->data */
	__u64 csum_flags;	/* BPF_F_MARK_MANGLED_0 for UDP */
};

/*
 * The input device's header offset, read for the lane alone. Were the value
 * shared with the general path, the lane's check (dev_l3 == l3) would reach
 * it as a known constant on some paths and not on others, and the verifier
 * would check the general path twice.
 */
static __always_inline __u32 lane_l3(const struct natgw_device *dev)
{
	return *(volatile const __u16 *)&dev->l3_offset;
}

/**
 * lane_v4_parse - is this the lane's packet? Read what the lane needs.
 * @dev_l3: the input device's network header offset
 * @l3: the offset this lane is built for, a constant: ETH_HLEN or 0
 *
 * Return: 0, or NATGW_LANE_SLOW.
 */
static __always_inline int lane_v4_parse(struct __sk_buff *skb, __u32 dev_l3, __u32 l3,
					 struct lane_v4 *v)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + l3;
	__u8 *l4 = (__u8 *)(ip + 1);

	if (dev_l3 != l3 || skb->gso_size || skb->protocol != bpf_htons(ETH_P_IP) ||
	    l4 + sizeof(struct udphdr) > (__u8 *)end)
		return NATGW_LANE_SLOW;
	if (fast_v4_check(ip, skb->pkt_type == PACKET_HOST) != NATGW_FAST_GO)
		return NATGW_LANE_SLOW;
	if (ip->protocol == IPPROTO_UDP) {
		v->csum_off = l3 + sizeof(*ip) + offsetof(struct udphdr, check);
		v->csum_flags = BPF_F_MARK_MANGLED_0;
	} else if (ip->protocol == IPPROTO_TCP) {
		if (l4 + sizeof(struct tcphdr) > (__u8 *)end ||
		    (l4[NATGW_TCP_FLAGS_OFF] & NATGW_TCP_SYN))
			return NATGW_LANE_SLOW;
		v->csum_off = l3 + sizeof(*ip) + offsetof(struct tcphdr, check);
		v->csum_flags = 0;
	} else {
		return NATGW_LANE_SLOW;
	}
	v->saddr = ip->saddr;
	v->daddr = ip->daddr;
	__builtin_memcpy(&v->sport, l4, 2);
	__builtin_memcpy(&v->dport, l4 + 2, 2);
	v->tot_len = bpf_ntohs(ip->tot_len);
	v->proto = ip->protocol;
	v->tos = ip->tos;
	return 0;
}

/*
 * What fast_v4_check says of the addresses the ingress translation chose (it
 * checks the translated header on the general path).
 */
static __always_inline int lane_v4_recheck(const __be32 to[2])
{
	if (fast_v4_multicast(to[1]))
		return NATGW_FAST_MULTICAST;
	if (fast_v4_martian(to[0], to[1]))
		return NATGW_FAST_MARTIAN;
	return NATGW_FAST_GO;
}

/* The route of a packet leaving with addresses @saddr, @daddr (as fast_skb_v4_lookup). */
static __always_inline long lane_v4_fib(struct __sk_buff *skb, const struct lane_v4 *v,
					__be32 saddr, __be32 daddr, struct bpf_fib_lookup *p)
{
	__u32 flags;

	p->family = AF_INET;
	p->l4_protocol = v->proto;
	p->tos = v->tos;
	p->tot_len = v->tot_len;
	p->ipv4_src = saddr;
	p->ipv4_dst = daddr;
	p->sport = v->sport;
	p->dport = v->dport;
	p->ifindex = skb->ifindex;
	flags = fast_skb_mark(skb, p);
	return bpf_fib_lookup(skb, p, sizeof(*p), flags);
}

/*
 * Count a translation as handle_v4 does: per mapping hit, or unmatched on @tdev.
 * Before any Ethernet header is pushed: @l3 is where the IP packet starts.
 */
static __always_inline void lane_count(struct __sk_buff *skb, const struct natgw_device *tdev,
				       __u32 l3, __u32 dir, const struct natgw_xlate *xs,
				       const struct natgw_xlate *xd)
{
	if (either_hit(xs, xd))
		count(skb, l3, dir, xs, xd);
	else
		dev_stat_inc(tdev, NATGW_EV_UNMATCHED);
}

/**
 * lane_v4_write - rewrite the packet in place: addresses, and when @forward the
 * TTL and (for an Ethernet input and output) the fib's MAC addresses.
 * @to: the new source and destination
 * @decision: the fast path's decision when forwarding
 * @l3: as lane_v4_parse's (an L3 input's Ethernet header is lane_push_eth's)
 *
 * Return: 0, or -1 if a helper failed (the packet is half written: drop it).
 */
static __always_inline int lane_v4_write(struct __sk_buff *skb, const struct lane_v4 *v,
					 const __be32 to[2], int forward, int decision,
					 const struct bpf_fib_lookup *p, __u32 l3)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + l3;
	__u64 addrs, diff;
	__be16 ttl_old;

	if ((void *)(ip + 1) > end)	/* as lane_v4_parse found: for the verifier */
		return -1;
	addrs = csum_diff32(csum_diff32(0, v->saddr, to[0]), v->daddr, to[1]);
	diff = addrs;
	ip->saddr = to[0];
	ip->daddr = to[1];
	if (forward) {
		/* TTL and protocol share a 16-bit word of the checksum. */
		__builtin_memcpy(&ttl_old, &ip->ttl, 2);
		ip->ttl--;
		diff = csum_diff16(diff, ttl_old, *(__be16 *)&ip->ttl);
		if (l3 == ETH_HLEN && decision != NATGW_FAST_REDIRECT_L3) {
			__builtin_memcpy(eth->h_dest, p->dmac, ETH_ALEN);
			__builtin_memcpy(eth->h_source, p->smac, ETH_ALEN);
		}
	}
	/* The header's sum is unchanged: skb->csum of a CHECKSUM_COMPLETE skb holds. */
	ip->check = csum_apply(ip->check, diff);
	if (v->saddr == to[0] && v->daddr == to[1])
		return 0;
	/* The last write: it moves the packet, so no pointer into it is used after. */
	return bpf_l4_csum_replace(skb, v->csum_off, 0, csum_fold32(addrs),
				   v->csum_flags | BPF_F_PSEUDO_HDR) < 0 ? -1 : 0;
}

/* The addresses after translation by @xs and @xd. */
static __always_inline void lane_v4_netmap(const struct lane_v4 *v, const struct natgw_xlate *xs,
					   const struct natgw_xlate *xd, __be32 to[2])
{
	to[0] = v->saddr;
	to[1] = v->daddr;
	if (xs)
		to[0] = netmap_v4(v->saddr, xs);
	if (xd)
		to[1] = netmap_v4(v->daddr, xd);
}

static __always_inline int lane_redirect(__u32 oif, int decision)
{
	if (decision == NATGW_FAST_REDIRECT_PEER)
		return bpf_redirect_peer(oif, 0);
	return bpf_redirect(oif, 0);
}

/**
 * lane_push_eth - give a packet from an L3 device the Ethernet header its
 * Ethernet output needs (bpf_skb_change_head keeps skb->protocol and marks
 * the new bytes as the MAC header). After every other write: it moves the
 * packet.
 * @proto: the ethertype, ETH_P_IP or ETH_P_IPV6
 *
 * Return: 0, or -1 if the helper failed.
 */
static __always_inline int lane_push_eth(struct __sk_buff *skb, const struct bpf_fib_lookup *p,
					 __u16 proto)
{
	void *data, *end;
	struct ethhdr *eth;

	if (bpf_skb_change_head(skb, ETH_HLEN, 0) < 0)
		return -1;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return -1;
	__builtin_memcpy(eth->h_dest, p->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, p->smac, ETH_ALEN);
	eth->h_proto = bpf_htons(proto);
	return 0;
}

/*
 * Forward what the lane wrote: an L3 input's packet bound for an Ethernet
 * device first gets its header, then the redirect.
 */
static __always_inline int lane_send(struct __sk_buff *skb, const struct natgw_device *dev,
				     const struct bpf_fib_lookup *p, __u32 oif, int decision,
				     __u32 l3, __u16 proto)
{
	if (!l3 && decision != NATGW_FAST_REDIRECT_L3 && lane_push_eth(skb, p, proto) < 0)
		return drop(dev, NATGW_DROP_REWRITE);
	fast_stat_inc(dev, decision);
	return lane_redirect(oif, decision);
}

/**
 * lane_v4_lan - the LAN program's lane: route, translate by the output
 * device's egress tables, forward (as natgw_lan does on the general path).
 * @v: the packet, as lane_v4_parse read it
 *
 * Return: a tc verdict.
 */
static __always_inline int lane_v4_lan(struct __sk_buff *skb, const struct natgw_device *dev,
				       __u32 ifindex)
{
	struct bpf_fib_lookup p = {};
	struct natgw_xlate *xs, *xd;
	struct natgw_device *out;
	struct lane_v4 lv, *v = &lv;
	__be32 to[2];
	int decision;
	__u32 oif;
	long rc;

	if (lane_v4_parse(skb, lane_l3(dev), ETH_HLEN, v) < 0)
		return NATGW_LANE_SLOW;

	rc = lane_v4_fib(skb, v, v->saddr, v->daddr, &p);
	oif = p.ifindex;
	out = devices_v2.lookup(&oif);
	decision = fast_fib_decide(rc, oif, out, ifindex, 1);
	if (decision > NATGW_FAST_REDIRECT_PEER) {
		fast_stat_inc(dev, decision);
		return NATGW_PASS;
	}
	if (!out)	/* a redirect has one (fast_fib_decide): for the verifier */
		return NATGW_PASS;
	xs = xlate_v4_lookup(out, oif, NATGW_TABLE(NATGW_DIR_EGRESS, NATGW_SIDE_SRC), v->saddr);
	xd = xlate_v4_lookup(out, oif, NATGW_TABLE(NATGW_DIR_EGRESS, NATGW_SIDE_DST), v->daddr);
	lane_v4_netmap(v, xs, xd, to);
	if (lane_v4_write(skb, v, to, 1, decision, &p, ETH_HLEN) < 0)
		return drop(out, NATGW_DROP_REWRITE);
	lane_count(skb, out, ETH_HLEN, NATGW_DIR_EGRESS, xs, xd);
	fast_stat_inc(dev, decision);
	fast_mark_translated(skb, oif);
	return lane_redirect(oif, decision);
}

/**
 * lane_v4_ingress - the fast ingress program's lane: translate by the input
 * device's ingress tables, route the translated packet, forward it or hand it
 * to the stack translated (as natgw_ingress_fast does on the general path).
 * @l3: the input devices this lane takes, as lane_v4_parse's
 *
 * Return: a tc verdict.
 */
static __always_inline int lane_v4_ingress(struct __sk_buff *skb, const struct natgw_device *dev,
					   __u32 ifindex, __u32 l3)
{
	struct bpf_fib_lookup p = {};
	struct natgw_xlate *xs, *xd;
	struct natgw_device *out;
	struct lane_v4 lv, *v = &lv;
	__be32 to[2];
	int decision;
	__u32 oif = 0;
	long rc;

	if (lane_v4_parse(skb, lane_l3(dev), l3, v) < 0)
		return NATGW_LANE_SLOW;

	xs = xlate_v4_lookup(dev, ifindex, NATGW_TABLE(NATGW_DIR_INGRESS, NATGW_SIDE_SRC), v->saddr);
	xd = xlate_v4_lookup(dev, ifindex, NATGW_TABLE(NATGW_DIR_INGRESS, NATGW_SIDE_DST), v->daddr);
	lane_v4_netmap(v, xs, xd, to);
	decision = lane_v4_recheck(to);
	if (decision == NATGW_FAST_GO) {
		rc = lane_v4_fib(skb, v, to[0], to[1], &p);
		oif = p.ifindex;
		out = devices_v2.lookup(&oif);
		decision = fast_fib_decide(rc, oif, out, ifindex, 0);
	}
	if (decision > NATGW_FAST_REDIRECT_PEER) {
		/* To the stack, translated (the general path's order). */
		if (lane_v4_write(skb, v, to, 0, decision, &p, l3) < 0)
			return drop(dev, NATGW_DROP_REWRITE);
		lane_count(skb, dev, l3, NATGW_DIR_INGRESS, xs, xd);
		fast_stat_inc(dev, decision);
		return NATGW_PASS;
	}
	if (lane_v4_write(skb, v, to, 1, decision, &p, l3) < 0)
		return drop(dev, NATGW_DROP_REWRITE);
	lane_count(skb, dev, l3, NATGW_DIR_INGRESS, xs, xd);
	return lane_send(skb, dev, &p, oif, decision, l3, ETH_P_IP);
}

/* -- IPv6 ----------------------------------------------------------------- */

/* bpf_csum_update: add a sum to skb->csum of a CHECKSUM_COMPLETE skb (else nothing). */
static __s64 (*natgw_csum_update)(void *ctx, __u32 csum) = (void *)BPF_FUNC_csum_update;

struct lane_v6 {
	union v6addr saddr;
	union v6addr daddr;
	__be32 flowinfo;
	__be16 sport;
	__be16 dport;
	__u16 tot_len;
	__u8 proto;
	__u32 csum_off;
	__u64 csum_flags;
};

/*
 * xlate_v6_lookup, without a lookup for an empty table (a device with only
 * remote mappings has an empty egress source table). For the LAN lane only:
 * in the fast ingress program the split costs the verifier 170k instructions
 * more (850k of its 1M).
 */
static __always_inline struct natgw_xlate *lane_v6_lookup(const struct natgw_device *dev,
							  __u32 ifindex, __u32 table,
							  const union v6addr *addr)
{
	if (xlate_v6_empty(dev, table))
		return NULL;
	return xlate_v6_lookup(dev, ifindex, table, (const struct in6_addr *)addr->b);
}

/* As lane_v4_parse, for IPv6. */
static __always_inline int lane_v6_parse(struct __sk_buff *skb, __u32 dev_l3, __u32 l3,
					 struct lane_v6 *v)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + l3;
	__u8 *l4 = (__u8 *)(ip6 + 1);
	__be32 first;

	if (dev_l3 != l3 || skb->gso_size || skb->protocol != bpf_htons(ETH_P_IPV6) ||
	    l4 + sizeof(struct udphdr) > (__u8 *)end)
		return NATGW_LANE_SLOW;
	if (fast_v6_check(ip6, skb->pkt_type == PACKET_HOST) != NATGW_FAST_GO)
		return NATGW_LANE_SLOW;
	if (ip6->nexthdr == IPPROTO_UDP) {
		v->csum_off = l3 + sizeof(*ip6) + offsetof(struct udphdr, check);
		v->csum_flags = BPF_F_MARK_MANGLED_0;
	} else if (ip6->nexthdr == IPPROTO_TCP) {
		if (l4 + sizeof(struct tcphdr) > (__u8 *)end ||
		    (l4[NATGW_TCP_FLAGS_OFF] & NATGW_TCP_SYN))
			return NATGW_LANE_SLOW;
		v->csum_off = l3 + sizeof(*ip6) + offsetof(struct tcphdr, check);
		v->csum_flags = 0;
	} else {
		return NATGW_LANE_SLOW;
	}
	__builtin_memcpy(v->saddr.b, &ip6->saddr, 16);
	__builtin_memcpy(v->daddr.b, &ip6->daddr, 16);
	__builtin_memcpy(&first, ip6, 4);
	v->flowinfo = first & bpf_htonl(NATGW_IPV6_FLOWINFO);
	__builtin_memcpy(&v->sport, l4, 2);
	__builtin_memcpy(&v->dport, l4 + 2, 2);
	v->tot_len = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
	v->proto = ip6->nexthdr;
	return 0;
}

/* As lane_v4_fib, for IPv6 (as fast_skb_v6_lookup). */
static __always_inline long lane_v6_fib(struct __sk_buff *skb, const struct lane_v6 *v,
					const union v6addr to[2], struct bpf_fib_lookup *p)
{
	__u32 flags;

	p->family = AF_INET6;
	p->l4_protocol = v->proto;
	p->flowinfo = v->flowinfo;
	p->tot_len = v->tot_len;
	__builtin_memcpy(p->ipv6_src, to[0].b, 16);
	__builtin_memcpy(p->ipv6_dst, to[1].b, 16);
	p->sport = v->sport;
	p->dport = v->dport;
	p->ifindex = skb->ifindex;
	flags = fast_skb_mark(skb, p);
	return bpf_fib_lookup(skb, p, sizeof(*p), flags);
}

/* What fast_v6_check says of the addresses the ingress translation chose. */
static __always_inline int lane_v6_recheck(const union v6addr to[2])
{
	if (fast_v6_multicast((const struct in6_addr *)to[1].b))
		return NATGW_FAST_MULTICAST;
	if (fast_v6_martian_addrs((const struct in6_addr *)to[0].b,
				  (const struct in6_addr *)to[1].b))
		return NATGW_FAST_MARTIAN;
	return NATGW_FAST_GO;
}

static __always_inline void lane_v6_netmap(const struct lane_v6 *v, const struct natgw_xlate *xs,
					   const struct natgw_xlate *xd, union v6addr to[2])
{
	to[0] = v->saddr;
	to[1] = v->daddr;
	if (xs)
		netmap_v6(&to[0], xs);
	if (xd)
		netmap_v6(&to[1], xd);
}

static __always_inline int lane_v6_changed(const struct lane_v6 *v, const union v6addr to[2])
{
	__u32 d = 0;

#pragma unroll
	for (int i = 0; i < 4; i++)
		d |= (v->saddr.w[i] ^ to[0].w[i]) | (v->daddr.w[i] ^ to[1].w[i]);
	return d != 0;
}

/* As lane_v4_write, for IPv6. Return: 0, or -1 if a helper failed. */
static __always_inline int lane_v6_write(struct __sk_buff *skb, const struct lane_v6 *v,
					 const union v6addr to[2], int forward, int decision,
					 const struct bpf_fib_lookup *p, __u32 l3)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = data + l3;
	__u64 addrs = 0, diff;
	__be16 word_old;

	if ((void *)(ip6 + 1) > end)	/* as lane_v6_parse found: for the verifier */
		return -1;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		addrs = csum_diff32(addrs, v->saddr.w[i], to[0].w[i]);
		addrs = csum_diff32(addrs, v->daddr.w[i], to[1].w[i]);
	}
	diff = addrs;
	__builtin_memcpy(&ip6->saddr, to[0].b, 16);
	__builtin_memcpy(&ip6->daddr, to[1].b, 16);
	if (forward) {
		/* Next header and hop limit share a 16-bit word of the sums. */
		__builtin_memcpy(&word_old, &ip6->nexthdr, 2);
		ip6->hop_limit--;
		diff = csum_diff16(diff, word_old, *(__be16 *)&ip6->nexthdr);
		if (l3 == ETH_HLEN && decision != NATGW_FAST_REDIRECT_L3) {
			__builtin_memcpy(eth->h_dest, p->dmac, ETH_ALEN);
			__builtin_memcpy(eth->h_source, p->smac, ETH_ALEN);
		}
	}
	/* skb->csum of a CHECKSUM_COMPLETE skb follows the header (no header checksum). */
	natgw_csum_update(skb, csum_fold32(diff));
	if (!lane_v6_changed(v, to))
		return 0;
	return bpf_l4_csum_replace(skb, v->csum_off, 0, csum_fold32(addrs),
				   v->csum_flags | BPF_F_PSEUDO_HDR) < 0 ? -1 : 0;
}

/* As lane_v4_lan, for IPv6. */
static __always_inline int lane_v6_lan(struct __sk_buff *skb, const struct natgw_device *dev,
				       __u32 ifindex)
{
	struct bpf_fib_lookup p = {};
	struct natgw_xlate *xs, *xd;
	struct natgw_device *out;
	union v6addr to[2];
	struct lane_v6 v;
	int decision;
	__u32 oif;
	long rc;

	if (lane_v6_parse(skb, lane_l3(dev), ETH_HLEN, &v) < 0)
		return NATGW_LANE_SLOW;
	to[0] = v.saddr;
	to[1] = v.daddr;
	rc = lane_v6_fib(skb, &v, to, &p);
	oif = p.ifindex;
	out = devices_v2.lookup(&oif);
	decision = fast_fib_decide(rc, oif, out, ifindex, 1);
	if (decision > NATGW_FAST_REDIRECT_PEER) {
		fast_stat_inc(dev, decision);
		return NATGW_PASS;
	}
	if (!out)	/* a redirect has one (fast_fib_decide): for the verifier */
		return NATGW_PASS;
	xs = lane_v6_lookup(out, oif, NATGW_TABLE(NATGW_DIR_EGRESS, NATGW_SIDE_SRC), &v.saddr);
	xd = lane_v6_lookup(out, oif, NATGW_TABLE(NATGW_DIR_EGRESS, NATGW_SIDE_DST), &v.daddr);
	lane_v6_netmap(&v, xs, xd, to);
	if (lane_v6_write(skb, &v, to, 1, decision, &p, ETH_HLEN) < 0)
		return drop(out, NATGW_DROP_REWRITE);
	lane_count(skb, out, ETH_HLEN, NATGW_DIR_EGRESS, xs, xd);
	fast_stat_inc(dev, decision);
	fast_mark_translated(skb, oif);
	return lane_redirect(oif, decision);
}

/* As lane_v4_ingress, for IPv6. */
static __always_inline int lane_v6_ingress(struct __sk_buff *skb, const struct natgw_device *dev,
					   __u32 ifindex, __u32 l3)
{
	struct bpf_fib_lookup p = {};
	struct natgw_xlate *xs, *xd;
	struct natgw_device *out;
	union v6addr to[2];
	struct lane_v6 v;
	int decision;
	__u32 oif = 0;
	long rc;

	if (lane_v6_parse(skb, lane_l3(dev), l3, &v) < 0)
		return NATGW_LANE_SLOW;
	xs = xlate_v6_lookup(dev, ifindex, NATGW_TABLE(NATGW_DIR_INGRESS, NATGW_SIDE_SRC),
			     (const struct in6_addr *)v.saddr.b);
	xd = xlate_v6_lookup(dev, ifindex, NATGW_TABLE(NATGW_DIR_INGRESS, NATGW_SIDE_DST),
			     (const struct in6_addr *)v.daddr.b);
	lane_v6_netmap(&v, xs, xd, to);
	decision = lane_v6_recheck(to);
	if (decision == NATGW_FAST_GO) {
		rc = lane_v6_fib(skb, &v, to, &p);
		oif = p.ifindex;
		out = devices_v2.lookup(&oif);
		decision = fast_fib_decide(rc, oif, out, ifindex, 0);
	}
	if (decision > NATGW_FAST_REDIRECT_PEER) {
		/* To the stack, translated (the general path's order). */
		if (lane_v6_write(skb, &v, to, 0, decision, &p, l3) < 0)
			return drop(dev, NATGW_DROP_REWRITE);
		lane_count(skb, dev, l3, NATGW_DIR_INGRESS, xs, xd);
		fast_stat_inc(dev, decision);
		return NATGW_PASS;
	}
	if (lane_v6_write(skb, &v, to, 1, decision, &p, l3) < 0)
		return drop(dev, NATGW_DROP_REWRITE);
	lane_count(skb, dev, l3, NATGW_DIR_INGRESS, xs, xd);
	return lane_send(skb, dev, &p, oif, decision, l3, ETH_P_IPV6);
}

#endif /* NATGW_LANE_H */
