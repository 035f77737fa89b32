/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The fast path: route a packet with bpf_fib_lookup at tc ingress and redirect
 * it to its output device, skipping the kernel's forwarding path (ip_rcv,
 * netfilter, the FIB walk, neighbour output). A redirect to a natgw device
 * goes through that device's tc egress program like a routed packet does,
 * which translates it; only the lanes (natgw_lane.h) translate for it, and
 * mark the packet so (fast_mark_translated).
 *
 * Anything the fast path cannot do exactly as the stack would goes to the
 * stack unchanged (a fallback, counted by reason): the stack then sends the
 * ICMP errors, fragments, resolves neighbours, delivers locally.
 *
 * Split in two so that an XDP variant can reuse the decisions:
 *  - fast_v4_check, fast_v6_check, fast_fib_decide: pure decisions on headers
 *    and the fib result (no context, no packet writes);
 *  - fast_skb_*: reading and writing an skb. fast_skb_forward is split into
 *    fast_skb_route and fast_skb_send: merged back into one function, the
 *    same code costs the verifier 856k instructions in the fast ingress
 *    program instead of 680k.
 */
#ifndef NATGW_FAST_H
#define NATGW_FAST_H

#include <uapi/linux/if_packet.h>

/* No fallback reason: the packet may be forwarded by the fast path. */
#define NATGW_FAST_GO		(-1)

/* BPF_FIB_LOOKUP_MARK (Linux 6.10): bcc 0.26's header predates it. */
#define NATGW_FIB_LOOKUP_MARK	(1U << 5)
/* Where struct bpf_fib_lookup takes the mark (6.10+: an input sharing smac's bytes). */
#define NATGW_FIB_MARK_OFF	52

#define NATGW_IPV6_FLOWINFO	0x0fffffff

/*
 * Addresses the stack refuses to forward (ip_route_input's martians): the fast
 * path must not forward what the stack would drop.
 */
static __always_inline int fast_v4_martian(__be32 saddr, __be32 daddr)
{
	__u8 s = bpf_ntohl(saddr) >> 24, d = bpf_ntohl(daddr) >> 24;

	return s == 0 || s == 127 || s >= 224 || d == 0 || d == 127 || d >= 240;
}

/* Multicast or limited broadcast: the stack's to deliver (and to copy, for multicast routing). */
static __always_inline int fast_v4_multicast(__be32 daddr)
{
	__u8 d = bpf_ntohl(daddr) >> 24;

	return (d >= 224 && d < 240) || daddr == 0xffffffff;
}

/**
 * fast_v4_check - what an IPv4 header alone says about the fast path.
 * @ip: the header as read from the packet
 * @for_host: 1 when the frame was addressed to this host (PACKET_HOST)
 *
 * Return: a NATGW_FAST_* fallback reason, or NATGW_FAST_GO.
 */
static __always_inline int fast_v4_check(const struct iphdr *ip, int for_host)
{
	if (ip->version != 4 || ip->ihl < 5)
		return NATGW_FAST_NOT_IP;
	if (!for_host || fast_v4_multicast(ip->daddr))
		return NATGW_FAST_MULTICAST;
	if (ip->ihl > 5)
		return NATGW_FAST_IP_OPTIONS;
	if (ip->frag_off & bpf_htons(NATGW_IP_MF | NATGW_IP_OFFSET))
		return NATGW_FAST_FRAGMENT;
	if (ip->ttl <= 1)
		return NATGW_FAST_TTL;
	if (fast_v4_martian(ip->saddr, ip->daddr))
		return NATGW_FAST_MARTIAN;
	return NATGW_FAST_GO;
}

static __always_inline int fast_v6_is_ext(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_DSTOPTS || nexthdr == IPPROTO_AH || nexthdr == 135 ||
	       nexthdr == 139 || nexthdr == 140;	/* mobility, HIP, shim6 */
}

/* Unspecified, loopback, link-local (either side) or a multicast source. */
static __always_inline int fast_v6_martian_addrs(const struct in6_addr *saddr,
						 const struct in6_addr *daddr)
{
	__u32 s0 = bpf_ntohl(saddr->in6_u.u6_addr32[0]);
	__u32 d0 = bpf_ntohl(daddr->in6_u.u6_addr32[0]);

	if ((s0 >> 24) == 0xff || (s0 & 0xffc00000) == 0xfe800000 ||
	    (d0 & 0xffc00000) == 0xfe800000)
		return 1;
	/* ::/96 holds :: and ::1; nothing routable starts with 96 zero bits. */
	if (!s0 && !saddr->in6_u.u6_addr32[1] && !saddr->in6_u.u6_addr32[2])
		return 1;
	return !d0 && !daddr->in6_u.u6_addr32[1] && !daddr->in6_u.u6_addr32[2];
}

static __always_inline int fast_v6_multicast(const struct in6_addr *daddr)
{
	return daddr->in6_u.u6_addr8[0] == 0xff;
}

static __always_inline int fast_v6_martian(const struct ipv6hdr *ip6)
{
	return fast_v6_martian_addrs(&ip6->saddr, &ip6->daddr);
}

/* As fast_v4_check, for IPv6: extension headers go to the stack like IPv4 options. */
static __always_inline int fast_v6_check(const struct ipv6hdr *ip6, int for_host)
{
	if (ip6->version != 6)
		return NATGW_FAST_NOT_IP;
	if (!for_host || fast_v6_multicast(&ip6->daddr))
		return NATGW_FAST_MULTICAST;
	if (ip6->nexthdr == IPPROTO_FRAGMENT)
		return NATGW_FAST_FRAGMENT;
	if (fast_v6_is_ext(ip6->nexthdr))
		return NATGW_FAST_IP_OPTIONS;
	if (ip6->hop_limit <= 1)
		return NATGW_FAST_TTL;
	if (fast_v6_martian(ip6))
		return NATGW_FAST_MARTIAN;
	return NATGW_FAST_GO;
}

/**
 * fast_fib_decide - what to do with a packet, from its fib lookup.
 * @rc: bpf_fib_lookup's return
 * @oif: the output device the lookup found (params->ifindex)
 * @out: that device's natgw entry, NULL if it has none
 * @iif: the input device
 * @from_lan: 1 for the LAN program (which sends only to translating devices)
 *
 * A device without a neighbour table (L3: wireguard, tun) needs no neighbour:
 * the stack's neigh_direct_output sends there without one, and so do we.
 * bpf_redirect_peer skips the device's own egress, so it is only used into a
 * LAN device, which has no egress program; into a translating device the
 * redirect must go through its egress.
 *
 * Return: a NATGW_FAST_REDIRECT_* decision or a fallback reason.
 */
static __always_inline int fast_fib_decide(long rc, __u32 oif, const struct natgw_device *out,
					   __u32 iif, int from_lan)
{
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		break;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return NATGW_FAST_FRAG_NEEDED;
	case BPF_FIB_LKUP_RET_BLACKHOLE:
	case BPF_FIB_LKUP_RET_UNREACHABLE:
	case BPF_FIB_LKUP_RET_PROHIBIT:
		return NATGW_FAST_UNREACHABLE;
	case BPF_FIB_LKUP_RET_NOT_FWDED:
		return NATGW_FAST_LOCAL;
	case BPF_FIB_LKUP_RET_FWD_DISABLED:
		return NATGW_FAST_FWD_DISABLED;
	default:
		return NATGW_FAST_UNSUPPORTED;
	}
	if (!out || oif == iif || (from_lan && (out->flags & NATGW_DEV_F_LAN)))
		return NATGW_FAST_OUT_DEVICE;
	if (!out->l3_offset)
		return NATGW_FAST_REDIRECT_L3;
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return NATGW_FAST_NO_NEIGH;
	if ((out->flags & (NATGW_DEV_F_LAN | NATGW_DEV_F_PEER_NETNS)) ==
	    (NATGW_DEV_F_LAN | NATGW_DEV_F_PEER_NETNS))
		return NATGW_FAST_REDIRECT_PEER;
	return NATGW_FAST_REDIRECT_ETH;
}

/*
 * The IP length one segment of the packet will have: its whole length, or for
 * a GSO packet headers plus gso_size (the stack checks each segment against
 * the route's MTU; bpf_fib_lookup's own skb check lets every GSO packet pass).
 * Only TCP segments have a length known here (UDP GSO may be tunnelled).
 *
 * Return: the length, or 0 if unknown.
 */
static __always_inline __u32 fast_skb_seglen(struct __sk_buff *skb, __u32 l3, __u32 l4_off,
					     __u8 proto, __u32 ip_len)
{
	__u8 doff;

	if (!skb->gso_size)
		return ip_len;
	if (proto != IPPROTO_TCP ||
	    bpf_skb_load_bytes(skb, l4_off + 12, &doff, 1) < 0)
		return 0;
	return l4_off - l3 + (doff >> 4) * 4 + skb->gso_size;
}

/* Ports for the fib's multipath hash and port-based rules (first fragment only). */
static __always_inline void fast_skb_ports(struct __sk_buff *skb, __u32 l4_off, __u8 proto,
					   struct bpf_fib_lookup *p)
{
	__be16 ports[2];

	if ((proto == IPPROTO_TCP || proto == IPPROTO_UDP) &&
	    bpf_skb_load_bytes(skb, l4_off, ports, 4) == 0) {
		p->sport = ports[0];
		p->dport = ports[1];
	}
}

/* Policy routing by fwmark, as ip_route_input does (older kernels refuse the flag:
 * a marked packet then goes to the stack). */
static __always_inline __u32 fast_skb_mark(struct __sk_buff *skb, struct bpf_fib_lookup *p)
{
	__u32 mark = skb->mark;

	if (!mark)
		return 0;
	__builtin_memcpy((__u8 *)p + NATGW_FIB_MARK_OFF, &mark, 4);
	return NATGW_FIB_LOOKUP_MARK;
}

/**
 * fast_skb_v4_lookup - check an IPv4 packet and look its route up.
 * @l3: offset of the IP header
 * @p: filled for the lookup, and with its result
 * @rc: set to bpf_fib_lookup's return
 *
 * Return: a fallback reason, or NATGW_FAST_GO (then *rc is the lookup's).
 */
static __always_inline int fast_skb_v4_lookup(struct __sk_buff *skb, __u32 l3,
					      struct bpf_fib_lookup *p, long *rc)
{
	__u32 l4_off = l3 + sizeof(struct iphdr), len, flags;
	struct iphdr ip;
	int reason;
	__u8 type;

	if (bpf_skb_load_bytes(skb, l3, &ip, sizeof(ip)) < 0)
		return NATGW_FAST_NOT_IP;
	reason = fast_v4_check(&ip, skb->pkt_type == PACKET_HOST);
	if (reason != NATGW_FAST_GO)
		return reason;
	if (ip.protocol == IPPROTO_ICMP &&
	    (bpf_skb_load_bytes(skb, l4_off, &type, 1) < 0 || icmp4_is_error(type)))
		return NATGW_FAST_ICMP_ERROR;
	len = fast_skb_seglen(skb, l3, l4_off, ip.protocol, bpf_ntohs(ip.tot_len));
	if (!len || len > 0xffff)
		return NATGW_FAST_UNSUPPORTED;
	p->family = AF_INET;
	p->l4_protocol = ip.protocol;
	p->tos = ip.tos;
	p->tot_len = len;
	p->ipv4_src = ip.saddr;
	p->ipv4_dst = ip.daddr;
	p->ifindex = skb->ifindex;
	fast_skb_ports(skb, l4_off, ip.protocol, p);
	flags = fast_skb_mark(skb, p);
	*rc = bpf_fib_lookup(skb, p, sizeof(*p), flags);
	return NATGW_FAST_GO;
}

/* As fast_skb_v4_lookup, for IPv6. */
static __always_inline int fast_skb_v6_lookup(struct __sk_buff *skb, __u32 l3,
					      struct bpf_fib_lookup *p, long *rc)
{
	__u32 l4_off = l3 + sizeof(struct ipv6hdr), len, flags;
	struct ipv6hdr ip6;
	__be32 first;
	int reason;
	__u8 type;

	if (bpf_skb_load_bytes(skb, l3, &ip6, sizeof(ip6)) < 0)
		return NATGW_FAST_NOT_IP;
	reason = fast_v6_check(&ip6, skb->pkt_type == PACKET_HOST);
	if (reason != NATGW_FAST_GO)
		return reason;
	if (ip6.nexthdr == IPPROTO_ICMPV6 &&
	    (bpf_skb_load_bytes(skb, l4_off, &type, 1) < 0 || icmp6_is_error(type)))
		return NATGW_FAST_ICMP_ERROR;
	len = fast_skb_seglen(skb, l3, l4_off, ip6.nexthdr,
			      sizeof(ip6) + bpf_ntohs(ip6.payload_len));
	if (!len || len > 0xffff)
		return NATGW_FAST_UNSUPPORTED;
	__builtin_memcpy(&first, &ip6, 4);
	p->family = AF_INET6;
	p->l4_protocol = ip6.nexthdr;
	p->flowinfo = first & bpf_htonl(NATGW_IPV6_FLOWINFO);
	p->tot_len = len;
	__builtin_memcpy(p->ipv6_src, &ip6.saddr, 16);
	__builtin_memcpy(p->ipv6_dst, &ip6.daddr, 16);
	p->ifindex = skb->ifindex;
	fast_skb_ports(skb, l4_off, ip6.nexthdr, p);
	flags = fast_skb_mark(skb, p);
	*rc = bpf_fib_lookup(skb, p, sizeof(*p), flags);
	return NATGW_FAST_GO;
}

/*
 * Decrement the TTL (the IPv4 checksum follows it, and the two cancel in
 * skb->csum) or the hop limit (no header checksum: skb->csum must follow).
 */
static __always_inline int fast_skb_dec_ttl(struct __sk_buff *skb, __u32 l3, int v6)
{
	__be16 old, new;
	__u8 hlim;

	if (v6) {
		if (bpf_skb_load_bytes(skb, l3 + offsetof(struct ipv6hdr, hop_limit), &hlim, 1) < 0)
			return -1;
		hlim--;
		return bpf_skb_store_bytes(skb, l3 + offsetof(struct ipv6hdr, hop_limit), &hlim, 1,
					   BPF_F_RECOMPUTE_CSUM) < 0 ? -1 : 0;
	}
	/* TTL and protocol share a 16-bit word of the checksum. */
	if (bpf_skb_load_bytes(skb, l3 + offsetof(struct iphdr, ttl), &old, 2) < 0)
		return -1;
	new = bpf_htons(bpf_ntohs(old) - 0x100);
	if (bpf_skb_store_bytes(skb, l3 + offsetof(struct iphdr, ttl), &new, 2, 0) < 0)
		return -1;
	return bpf_l3_csum_replace(skb, l3 + offsetof(struct iphdr, check), old, new, 2) < 0
	       ? -1 : 0;
}

/*
 * Give the packet the Ethernet header the fib found: rewrite the addresses of
 * an Ethernet frame, or push a header onto an L3 packet (a redirect to an
 * Ethernet device needs one; bpf_skb_change_head keeps skb->protocol and the
 * network header, and marks the new bytes as the MAC header).
 */
static __always_inline int fast_skb_set_eth(struct __sk_buff *skb, __u32 l3,
					    const struct bpf_fib_lookup *p, int v6)
{
	struct ethhdr eth;

	__builtin_memcpy(eth.h_dest, p->dmac, ETH_ALEN);
	__builtin_memcpy(eth.h_source, p->smac, ETH_ALEN);
	eth.h_proto = bpf_htons(v6 ? ETH_P_IPV6 : ETH_P_IP);
	if (!l3 && bpf_skb_change_head(skb, sizeof(eth), 0) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) < 0 ? -1 : 0;
}

/* What the fast path's routing decision found, for the redirect that follows it. */
struct fast_route {
	struct bpf_fib_lookup p;	/* the lookup's result: output device, MACs */
	struct natgw_device *out;	/* the output device's entry (set for a redirect) */
	__u32 oif;
	int v6;
};

/**
 * fast_skb_route - route a packet at tc ingress: may the fast path send it?
 * @dev: the input device's entry (its counters take a fallback)
 * @from_lan: 1 for the LAN program
 * @r: filled with the route found
 * @proto: skb->protocol, or the constant a caller that knows it read there (the
 *         verifier then checks only that family's lookup on the caller's path)
 *
 * Nothing is written to the packet. A fallback is counted here.
 *
 * Return: a NATGW_FAST_REDIRECT_* decision, or a fallback reason.
 */
static __always_inline int fast_skb_route(struct __sk_buff *skb, const struct natgw_device *dev,
					  __u32 ifindex, int from_lan, struct fast_route *r,
					  __be16 proto)
{
	__u32 l3 = dev->l3_offset;
	int decision;
	long rc = -1;

	r->v6 = 0;
	r->out = NULL;
	if (proto == bpf_htons(ETH_P_IP)) {
		decision = fast_skb_v4_lookup(skb, l3, &r->p, &rc);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		r->v6 = 1;
		decision = fast_skb_v6_lookup(skb, l3, &r->p, &rc);
	} else {
		decision = NATGW_FAST_NOT_IP;
	}
	if (decision == NATGW_FAST_GO) {
		r->oif = r->p.ifindex;
		r->out = devices_v2.lookup(&r->oif);
		decision = fast_fib_decide(rc, r->oif, r->out, ifindex, from_lan);
	}
	if (decision > NATGW_FAST_REDIRECT_PEER)
		fast_stat_inc(dev, decision);
	return decision;
}

/**
 * fast_skb_send - forward a packet the way fast_skb_route decided.
 * @dev: the input device's entry (its counters take the decision)
 * @decision: a NATGW_FAST_REDIRECT_* decision of fast_skb_route
 * @v6: 1 for IPv6
 *
 * Return: TC_ACT_REDIRECT, or TC_ACT_SHOT if a helper failed.
 */
static __always_inline int fast_skb_send(struct __sk_buff *skb, const struct natgw_device *dev,
					 const struct fast_route *r, int decision, int v6)
{
	__u32 l3 = dev->l3_offset;

	/*
	 * From here the packet is written: a failed helper leaves it half
	 * forwarded (TTL decremented), so it is dropped, never passed.
	 */
	if (fast_skb_dec_ttl(skb, l3, v6) < 0 ||
	    (decision != NATGW_FAST_REDIRECT_L3 && fast_skb_set_eth(skb, l3, &r->p, v6) < 0))
		return drop(dev, NATGW_DROP_REWRITE);
	fast_stat_inc(dev, decision);
	if (decision == NATGW_FAST_REDIRECT_PEER)
		return bpf_redirect_peer(r->oif, 0);
	return bpf_redirect(r->oif, 0);
}

/**
 * fast_skb_forward - route a packet at tc ingress and redirect it, or fall back.
 * @dev: the input device's entry (its counters take the decision)
 * @from_lan: 1 for the LAN program
 * @proto: as for fast_skb_route
 *
 * Return: TC_ACT_REDIRECT, NATGW_PASS with the packet unchanged, or TC_ACT_SHOT.
 */
static __always_inline int fast_skb_forward(struct __sk_buff *skb, const struct natgw_device *dev,
					    __u32 ifindex, int from_lan, __be16 proto)
{
	struct fast_route r = {};
	int decision = fast_skb_route(skb, dev, ifindex, from_lan, &r, proto);

	if (decision > NATGW_FAST_REDIRECT_PEER)
		return NATGW_PASS;
	return fast_skb_send(skb, dev, &r, decision, r.v6);
}

/*
 * The LAN program's lanes translate for the output device themselves and
 * redirect to its egress, where the device's egress program would translate again: it
 * leaves this mark in cb[] (which a redirect keeps, and the stack's IP input
 * overwrites) for that program to take and pass the packet on. Both words
 * name the output device, so a stale cb[] from another layer cannot match.
 */
#define NATGW_CB_XLATED_A	0x6e617467	/* "natg" */
#define NATGW_CB_XLATED_B	0x77786c74	/* "wxlt" */

static __always_inline void fast_mark_translated(struct __sk_buff *skb, __u32 oif)
{
	skb->cb[0] = NATGW_CB_XLATED_A ^ oif;
	skb->cb[1] = NATGW_CB_XLATED_B ^ oif;
}

/* 1 if the LAN program translated this packet for this device (the mark is cleared). */
static __always_inline int fast_take_mark(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;

	if (skb->cb[0] != (NATGW_CB_XLATED_A ^ ifindex) ||
	    skb->cb[1] != (NATGW_CB_XLATED_B ^ ifindex))
		return 0;
	skb->cb[0] = 0;
	skb->cb[1] = 0;
	return 1;
}

#endif /* NATGW_FAST_H */
