/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The fast path's IPv4 lane: the common packet, handled with direct packet
 * access so that it costs a few helper calls instead of a score.
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
 * The lane's packet: IPv4 without options, not a fragment, TCP (not a SYN:
 * the MSS clamp is the general path's) or UDP, one segment (no GSO: the
 * general path checks a segment's length against the route's MTU), every
 * header it touches in the linear area, received on an Ethernet device.
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

/**
 * lane_v4_parse - is this the lane's packet? Read what the lane needs.
 * @l3: the input device's network header offset
 *
 * Return: 0, or NATGW_LANE_SLOW.
 */
static __always_inline int lane_v4_parse(struct __sk_buff *skb, __u32 l3, struct lane_v4 *v)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;
	__u8 *l4 = (__u8 *)(ip + 1);

	if (l3 != ETH_HLEN || skb->gso_size || skb->protocol != bpf_htons(ETH_P_IP) ||
	    l4 + sizeof(struct udphdr) > (__u8 *)end)
		return NATGW_LANE_SLOW;
	if (fast_v4_check(ip, skb->pkt_type == PACKET_HOST) != NATGW_FAST_GO)
		return NATGW_LANE_SLOW;
	if (ip->protocol == IPPROTO_UDP) {
		v->csum_off = ETH_HLEN + sizeof(*ip) + offsetof(struct udphdr, check);
		v->csum_flags = BPF_F_MARK_MANGLED_0;
	} else if (ip->protocol == IPPROTO_TCP) {
		if (l4 + sizeof(struct tcphdr) > (__u8 *)end ||
		    (l4[NATGW_TCP_FLAGS_OFF] & NATGW_TCP_SYN))
			return NATGW_LANE_SLOW;
		v->csum_off = ETH_HLEN + sizeof(*ip) + offsetof(struct tcphdr, check);
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

/* What fast_v4_check says of addresses the ingress translation chose. */
static __always_inline int lane_v4_forwardable(const __be32 to[2])
{
	__u8 d = bpf_ntohl(to[1]) >> 24;

	return !fast_v4_martian(to[0], to[1]) && !(d >= 224 && d < 240) && to[1] != 0xffffffff;
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

/* Count a translation as handle_v4 does: per mapping hit, or unmatched on @tdev. */
static __always_inline void lane_count(struct __sk_buff *skb, const struct natgw_device *tdev,
				       __u32 dir, const struct natgw_xlate *xs,
				       const struct natgw_xlate *xd)
{
	__u64 bytes = skb->len - ETH_HLEN;

	if (!either_hit(xs, xd)) {
		dev_stat_inc(tdev, NATGW_EV_UNMATCHED);
		return;
	}
	if (xs)
		map_stat_add(xs, dir, 1, bytes);
	if (xd)
		map_stat_add(xd, dir, 1, bytes);
}

/**
 * lane_v4_write - rewrite the packet in place: addresses, and when @forward the
 * TTL and (for an Ethernet output) the fib's MAC addresses.
 * @to: the new source and destination
 * @decision: the fast path's decision when forwarding
 *
 * Return: 0, or -1 if a helper failed (the packet is half written: drop it).
 */
static __always_inline int lane_v4_write(struct __sk_buff *skb, const struct lane_v4 *v,
					 const __be32 to[2], int forward, int decision,
					 const struct bpf_fib_lookup *p)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;
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
		if (decision != NATGW_FAST_REDIRECT_L3) {
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
 * lane_v4_lan - the LAN program's lane: route, translate by the output
 * device's egress tables, forward (as natgw_lan does on the general path).
 *
 * Return: a tc verdict, or NATGW_LANE_SLOW.
 */
static __always_inline int lane_v4_lan(struct __sk_buff *skb, const struct natgw_device *dev,
				       __u32 ifindex)
{
	struct bpf_fib_lookup p = {};
	struct natgw_xlate *xs, *xd;
	struct natgw_device *out;
	struct lane_v4 v;
	__be32 to[2];
	int decision;
	__u32 oif;
	long rc;

	if (lane_v4_parse(skb, dev->l3_offset, &v) < 0)
		return NATGW_LANE_SLOW;
	rc = lane_v4_fib(skb, &v, v.saddr, v.daddr, &p);
	oif = p.ifindex;
	out = devices_v2.lookup(&oif);
	decision = fast_fib_decide(rc, oif, out, ifindex, 1);
	if (decision > NATGW_FAST_REDIRECT_PEER) {
		fast_stat_inc(dev, decision);
		return NATGW_PASS;
	}
	if (!out || decision == NATGW_FAST_REDIRECT_PEER)	/* not from a LAN device */
		return NATGW_LANE_SLOW;
	xs = xlate_v4_lookup(out, oif, NATGW_TABLE(NATGW_DIR_EGRESS, NATGW_SIDE_SRC), v.saddr);
	xd = xlate_v4_lookup(out, oif, NATGW_TABLE(NATGW_DIR_EGRESS, NATGW_SIDE_DST), v.daddr);
	lane_v4_netmap(&v, xs, xd, to);
	if (lane_v4_write(skb, &v, to, 1, decision, &p) < 0)
		return drop(out, NATGW_DROP_REWRITE);
	lane_count(skb, out, NATGW_DIR_EGRESS, xs, xd);
	fast_stat_inc(dev, decision);
	fast_mark_translated(skb, oif);
	return lane_redirect(oif, decision);
}

/**
 * lane_v4_ingress - the fast ingress program's lane: translate by the input
 * device's ingress tables, route the translated packet, forward it or hand it
 * to the stack translated (as natgw_ingress_fast does on the general path).
 *
 * Return: a tc verdict, or NATGW_LANE_SLOW.
 */
static __always_inline int lane_v4_ingress(struct __sk_buff *skb, const struct natgw_device *dev,
					   __u32 ifindex)
{
	struct bpf_fib_lookup p = {};
	struct natgw_xlate *xs, *xd;
	struct natgw_device *out;
	struct lane_v4 v;
	__be32 to[2];
	int decision;
	__u32 oif;
	long rc;

	if (lane_v4_parse(skb, dev->l3_offset, &v) < 0)
		return NATGW_LANE_SLOW;
	xs = xlate_v4_lookup(dev, ifindex, NATGW_TABLE(NATGW_DIR_INGRESS, NATGW_SIDE_SRC), v.saddr);
	xd = xlate_v4_lookup(dev, ifindex, NATGW_TABLE(NATGW_DIR_INGRESS, NATGW_SIDE_DST), v.daddr);
	lane_v4_netmap(&v, xs, xd, to);
	if (!lane_v4_forwardable(to))
		return NATGW_LANE_SLOW;
	rc = lane_v4_fib(skb, &v, to[0], to[1], &p);
	oif = p.ifindex;
	out = devices_v2.lookup(&oif);
	decision = fast_fib_decide(rc, oif, out, ifindex, 0);
	if (decision > NATGW_FAST_REDIRECT_PEER) {
		/* To the stack, translated (the general path's order). */
		if (lane_v4_write(skb, &v, to, 0, decision, &p) < 0)
			return drop(dev, NATGW_DROP_REWRITE);
		lane_count(skb, dev, NATGW_DIR_INGRESS, xs, xd);
		fast_stat_inc(dev, decision);
		return NATGW_PASS;
	}
	if (lane_v4_write(skb, &v, to, 1, decision, &p) < 0)
		return drop(dev, NATGW_DROP_REWRITE);
	lane_count(skb, dev, NATGW_DIR_INGRESS, xs, xd);
	fast_stat_inc(dev, decision);
	return lane_redirect(oif, decision);
}

#endif /* NATGW_LANE_H */
