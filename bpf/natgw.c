// SPDX-License-Identifier: GPL-2.0
/*
 * natgw: stateless 1:1 prefix translation (NETMAP) on a tunnel device.
 *
 * egress (after routing):  dst in a remote "as"   -> remote cidr
 *                          src in a local cidr    -> local "as"
 * ingress (before routing): src in a remote cidr  -> remote "as"
 *                          dst in a local "as"    -> local cidr
 *
 * lan (LAN-side ingress): the fast path (natgw_fast.h) routes the packet to a
 *                          natgw device and redirects it; its lanes (natgw_lane.h)
 *                          also translate it by that device's egress tables (the
 *                          egress program then passes it), else the egress does
 * ingress_fast:            ingress, then the fast path on the translated packet
 * xdp (natgw_xdp.h):       the fast path at XDP on Ethernet devices, translating
 *                          itself; what it cannot do goes on to the tc programs
 *
 * A packet's journey: find the device, parse IP, look both addresses up,
 * plan the ICMP error quote if there is one, check that every checksum to
 * fix is present, then rewrite and count. Packets matching no mapping pass
 * unchanged (TC_ACT_UNSPEC: see NATGW_PASS); packets that match but cannot be
 * translated correctly are dropped and counted by reason.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/icmpv6.h>

#include "natgw_shared.h"
#include "natgw_maps.h"
#include "natgw_parse.h"
#include "natgw_csum.h"
#include "natgw_icmp.h"
#include "natgw_mss.h"

/*
 * Every packet natgw lets through, translated or not, continues down the tc
 * chain: natgw rewrites addresses, it does not decide a packet's fate, so a
 * filter at a later priority on the same hook still sees every packet (and
 * sees it translated). TC_ACT_OK would end the chain. Only drops end it.
 */
#define NATGW_PASS TC_ACT_UNSPEC

static __always_inline int drop(const struct natgw_device *dev, __u32 reason)
{
	dev_stat_inc(dev, reason);
	return TC_ACT_SHOT;
}

/* A translated packet, on each mapping it hit (a GSO packet counts its segments). */
static __always_inline void count(struct __sk_buff *skb, __u32 l3, __u32 dir,
				  const struct natgw_xlate *xs, const struct natgw_xlate *xd)
{
	__u32 segs = skb->gso_segs ? skb->gso_segs : 1;
	__u64 bytes = skb->len - l3;

	if (xs)
		map_stat_add(xs, dir, segs, bytes);
	if (xd)
		map_stat_add(xd, dir, segs, bytes);
}

/* The fast path passes with NATGW_PASS, drops with drop() and counts with count(). */
#include "natgw_fast.h"
#include "natgw_xdp.h"
#include "natgw_lane.h"

/* Clamp the MSS of a TCP SYN; a failure mid-rewrite leaves a corrupt packet: drop it. */
static __always_inline int finish_tcp(struct __sk_buff *skb, const struct natgw_device *dev,
				      __u8 proto, int first, __u32 l4_off, __u16 mss_max)
{
	int ret;

	if (proto != IPPROTO_TCP || !first)
		return NATGW_PASS;
	ret = tcp_clamp_mss(skb, l4_off, mss_max);
	if (ret < 0)
		return drop(dev, NATGW_DROP_REWRITE);
	if (ret > 0)
		dev_stat_inc(dev, NATGW_EV_MSS_CLAMPED);
	return NATGW_PASS;
}

static __always_inline int handle_v4(struct __sk_buff *skb, const struct natgw_device *dev,
				    __u32 ifindex, __u32 dir, __u32 l3)
{
	__u32 l4_off, csum_off = 0, icmp_csum_off = 0;
	struct natgw_xlate *xs, *xd;
	struct quoted_v4 q = {};
	int first, has_quote = 0;
	struct iphdr ip;
	__u64 l4_flags;

	if (bpf_skb_load_bytes(skb, l3, &ip, sizeof(ip)) < 0 || ip.version != 4 || ip.ihl < 5) {
		dev_stat_inc(dev, NATGW_EV_UNPARSED);
		return NATGW_PASS;
	}
	l4_off = l3 + ip.ihl * 4;
	first = !(ip.frag_off & bpf_htons(NATGW_IP_OFFSET));
	xs = xlate_v4_lookup(dev, ifindex, NATGW_TABLE(dir, NATGW_SIDE_SRC), ip.saddr);
	xd = xlate_v4_lookup(dev, ifindex, NATGW_TABLE(dir, NATGW_SIDE_DST), ip.daddr);

	if (first && ip.protocol == IPPROTO_ICMP) {
		__u8 type;

		if (bpf_skb_load_bytes(skb, l4_off, &type, 1) == 0 && icmp4_is_error(type)) {
			if (quoted_v4_plan(skb, dev, ifindex, dir, l4_off + ICMP_HDR_LEN, &q) == 0)
				has_quote = either_hit(q.xs, q.xd);
			else if (either_hit(xs, xd))
				return drop(dev, NATGW_DROP_ICMP_INNER);
			icmp_csum_off = l4_off + offsetof(struct icmphdr, checksum);
		}
	}

	if (!has_quote && !either_hit(xs, xd)) {
		dev_stat_inc(dev, NATGW_EV_UNMATCHED);
		return finish_tcp(skb, dev, ip.protocol, first, l4_off, dev->mss_v4);
	}

	if (first && (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP)) {
		if (!skb_has(skb, l4_off, l4_min_len(ip.protocol)))
			return drop(dev, NATGW_DROP_TRUNCATED);
		csum_off = l4_csum_offset(ip.protocol, l4_off);
	}
	l4_flags = ip.protocol == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (has_quote && quoted_v4_apply(skb, &q, icmp_csum_off) < 0)
		return drop(dev, NATGW_DROP_REWRITE);
	if (either_hit(xs, xd)) {
		__be32 from[2] = { ip.saddr, ip.daddr }, to[2] = { ip.saddr, ip.daddr };

		if (xs)
			to[0] = netmap_v4(ip.saddr, xs);
		if (xd)
			to[1] = netmap_v4(ip.daddr, xd);
		if (rewrite_v4_addrs(skb, l3, csum_off, l4_flags, from, to) < 0)
			return drop(dev, NATGW_DROP_REWRITE);
	}

	count(skb, l3, dir, xs, xd);
	return finish_tcp(skb, dev, ip.protocol, first, l4_off, dev->mss_v4);
}

static __always_inline int handle_v6(struct __sk_buff *skb, const struct natgw_device *dev,
				    __u32 ifindex, __u32 dir, __u32 l3)
{
	__u32 csum_off = 0, icmp_csum_off = 0;
	struct natgw_xlate *xs, *xd;
	struct quoted_v6 q = {};
	struct ipv6hdr ip6;
	struct l4_info l4 = {};
	int l4_err, has_quote = 0;
	__u64 l4_flags;

	if (bpf_skb_load_bytes(skb, l3, &ip6, sizeof(ip6)) < 0 || ip6.version != 6) {
		dev_stat_inc(dev, NATGW_EV_UNPARSED);
		return NATGW_PASS;
	}
	/* Before the extension header walk: its many outcomes would each verify the lookups. */
	xs = xlate_v6_lookup(dev, ifindex, NATGW_TABLE(dir, NATGW_SIDE_SRC), &ip6.saddr);
	xd = xlate_v6_lookup(dev, ifindex, NATGW_TABLE(dir, NATGW_SIDE_DST), &ip6.daddr);
	l4_err = ipv6_find_l4(skb, l3 + sizeof(ip6), ip6.nexthdr, &l4);

	if (!l4_err && l4.first && l4.proto == IPPROTO_ICMPV6) {
		__u8 type;

		if (bpf_skb_load_bytes(skb, l4.off, &type, 1) == 0 && icmp6_is_error(type)) {
			if (quoted_v6_plan(skb, dev, ifindex, dir, l4.off + ICMP_HDR_LEN, &q) == 0)
				has_quote = either_hit(q.xs, q.xd);
			else if (either_hit(xs, xd))
				return drop(dev, NATGW_DROP_ICMP_INNER);
			icmp_csum_off = l4.off + offsetof(struct icmp6hdr, icmp6_cksum);
		}
	}

	if (!has_quote && !either_hit(xs, xd)) {
		dev_stat_inc(dev, NATGW_EV_UNMATCHED);
		if (l4_err)
			return NATGW_PASS;
		return finish_tcp(skb, dev, l4.proto, l4.first, l4.off, dev->mss_v6);
	}

	/* Without the L4 header we cannot know which checksum to fix. */
	if (l4_err == -1)
		return drop(dev, NATGW_DROP_EXTHDR);
	if (l4_err)
		return drop(dev, NATGW_DROP_TRUNCATED);
	/*
	 * Segments left: daddr is the next hop, the L4 checksum covers the final
	 * destination inside the routing header, which natgw does not translate.
	 */
	if (l4.routed)
		return drop(dev, NATGW_DROP_IPV6_ROUTING);
	if (l4.first) {
		csum_off = l4_csum_offset(l4.proto, l4.off);
		if (csum_off && !skb_has(skb, l4.off, l4_min_len(l4.proto)))
			return drop(dev, NATGW_DROP_TRUNCATED);
	}
	l4_flags = l4.proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (has_quote && quoted_v6_apply(skb, &q, icmp_csum_off) < 0)
		return drop(dev, NATGW_DROP_REWRITE);
	if (either_hit(xs, xd)) {
		union v6addr from[2], to[2];

		__builtin_memcpy(from, &ip6.saddr, 32);
		__builtin_memcpy(to, &ip6.saddr, 32);
		if (xs)
			netmap_v6(&to[0], xs);
		if (xd)
			netmap_v6(&to[1], xd);
		if (rewrite_v6_addrs(skb, l3, csum_off, l4_flags, from, to) < 0)
			return drop(dev, NATGW_DROP_REWRITE);
	}

	count(skb, l3, dir, xs, xd);
	return finish_tcp(skb, dev, l4.proto, l4.first, l4.off, dev->mss_v6);
}

/* Translate a packet by one device's tables. Return: NATGW_PASS or TC_ACT_SHOT. */
static __always_inline int translate(struct __sk_buff *skb, const struct natgw_device *dev,
				     __u32 ifindex, __u32 dir, __u32 l3)
{
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return handle_v4(skb, dev, ifindex, dir, l3);
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return handle_v6(skb, dev, ifindex, dir, l3);
	return NATGW_PASS;
}

static __always_inline int natgw_handle(struct __sk_buff *skb, __u32 dir)
{
	__u32 ifindex = skb->ifindex;
	struct natgw_device *dev = devices_v2.lookup(&ifindex);

	if (!dev)
		return NATGW_PASS;
	return translate(skb, dev, ifindex, dir, dev->l3_offset);
}

int natgw_egress(struct __sk_buff *skb)
{
	/* Translated already by the LAN program, which routed it here. */
	if (fast_take_mark(skb))
		return NATGW_PASS;
	return natgw_handle(skb, NATGW_DIR_EGRESS);
}

int natgw_ingress(struct __sk_buff *skb)
{
	return natgw_handle(skb, NATGW_DIR_INGRESS);
}

/* Tunnel and interface devices with the fast path: translate, then forward. */
int natgw_ingress_fast(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct natgw_device *dev = devices_v2.lookup(&ifindex);
	int ret;

	if (!dev)
		return NATGW_PASS;
	/* The lanes, for Ethernet devices and for L3 ones (wireguard, tun). */
	ret = lane_v4_ingress(skb, dev, ifindex, ETH_HLEN);
	if (ret == NATGW_LANE_SLOW)
		ret = lane_v6_ingress(skb, dev, ifindex, ETH_HLEN);
	if (ret == NATGW_LANE_SLOW)
		ret = lane_v4_ingress(skb, dev, ifindex, 0);
	if (ret == NATGW_LANE_SLOW)
		ret = lane_v6_ingress(skb, dev, ifindex, 0);
	if (ret != NATGW_LANE_SLOW)
		return ret;
	/* The general path; each family's forward on its own translation's paths. */
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		ret = handle_v4(skb, dev, ifindex, NATGW_DIR_INGRESS, dev->l3_offset);
		if (ret != NATGW_PASS)
			return ret;
		return fast_skb_forward(skb, dev, ifindex, 0, bpf_htons(ETH_P_IP));
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		ret = handle_v6(skb, dev, ifindex, NATGW_DIR_INGRESS, dev->l3_offset);
		if (ret != NATGW_PASS)
			return ret;
		return fast_skb_forward(skb, dev, ifindex, 0, bpf_htons(ETH_P_IPV6));
	}
	return fast_skb_forward(skb, dev, ifindex, 0, 0);	/* counted: not IP */
}

/*
 * LAN-side devices. The lanes (natgw_lane.h) route the common packet,
 * translate it by the output device's egress tables and mark it for that
 * device's egress program, which passes it on. The general path only routes
 * and redirects: the output device's egress program translates what it sends,
 * as it translates what the stack routes (one translation code path, and the
 * verifier checks the translation in that program only).
 */
int natgw_lan(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct natgw_device *dev = devices_v2.lookup(&ifindex);
	int ret;

	if (!dev)
		return NATGW_PASS;
	ret = lane_v4_lan(skb, dev, ifindex);
	if (ret == NATGW_LANE_SLOW)
		ret = lane_v6_lan(skb, dev, ifindex);
	if (ret != NATGW_LANE_SLOW)
		return ret;
	return fast_skb_forward(skb, dev, ifindex, 1, skb->protocol);
}

/* Ethernet devices with fastpath: xdp; every XDP_PASS goes on to the programs above. */
int natgw_xdp(struct xdp_md *ctx)
{
	return xdp_forward(ctx);
}
