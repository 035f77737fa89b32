/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Address rewrites with their checksum updates. Checksums the packet's own L4
 * header carries go through bpf_l4_csum_replace with BPF_F_PSEUDO_HDR: on a
 * CHECKSUM_PARTIAL skb (tunnel egress, GSO) the field holds only the
 * pseudo-header sum and the kernel knows how to update it; hand-rolled
 * arithmetic would corrupt such packets. Checksums inside an ICMP error's
 * quoted packet are plain data and use bpf_l3_csum_replace (no skb state).
 *
 * On CHECKSUM_COMPLETE skbs (receive, skb->csum sums the packet) every rewrite
 * must leave skb->csum equal to the new packet's sum. IPv4 address changes are
 * cancelled inside the packet by the header checksum, and changes covered by
 * an ICMP checksum by that checksum, so skb->csum only follows the L4 field
 * (which BPF_F_PSEUDO_HDR does); IPv6 addresses see rewrite_v6_addrs.
 */
#ifndef NATGW_CSUM_H
#define NATGW_CSUM_H

/*
 * bcc declares bpf_csum_diff() as returning int, which sign-extends a valid
 * 32-bit sum with its top bit set into an "error". The helper returns s64.
 */
static __s64 (*natgw_csum_diff)(void *from, __u64 from_size, void *to, __u64 to_size,
				__u64 seed) = (void *)BPF_FUNC_csum_diff;

union v6addr {
	__u8 b[16];
	__be32 w[4];
};

/* NETMAP: keep the host bits of @addr, take the prefix of @x. */
static __always_inline __be32 netmap_v4(__be32 addr, const struct natgw_xlate *x)
{
	__u32 plen = x->prefixlen;
	__be32 to, mask;

	__builtin_memcpy(&to, x->addr, 4);
	if (plen >= 32)
		mask = ~0U;
	else if (plen == 0)
		mask = 0;
	else
		mask = bpf_htonl(~0U << (32 - plen));
	return (addr & ~mask) | (to & mask);
}

static __always_inline void netmap_v6(union v6addr *addr, const struct natgw_xlate *x)
{
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__s32 bits = (__s32)x->prefixlen - 32 * i;
		__be32 to, mask;

		__builtin_memcpy(&to, x->addr + 4 * i, 4);
		if (bits >= 32)
			mask = ~0U;
		else if (bits <= 0)
			mask = 0;
		else
			mask = bpf_htonl(~0U << (32 - bits));
		addr->w[i] = (addr->w[i] & ~mask) | (to & mask);
	}
}

/*
 * Incremental checksum updates computed in the program (XDP has no csum
 * helpers; the tc rewrites hand one diff to the helpers). A ones' complement
 * sum does not depend on byte order, so words are summed as they lie in
 * memory; a diff collects ~old + new of every changed word.
 */
static __always_inline __u64 csum_diff32(__u64 diff, __be32 from, __be32 to)
{
	return diff + (__u32)~from + (__u32)to;
}

static __always_inline __u64 csum_diff16(__u64 diff, __be16 from, __be16 to)
{
	return diff + (__u16)~from + (__u16)to;
}

/* A diff as the 32-bit partial sum the csum helpers take (end-around carries). */
static __always_inline __u32 csum_fold32(__u64 diff)
{
	diff = (diff & 0xffffffff) + (diff >> 32);
	diff = (diff & 0xffffffff) + (diff >> 32);
	return (__u32)diff;
}

/**
 * rewrite_v4_addrs - replace the addresses of the packet's own IPv4 header.
 * @l3: offset of the IPv4 header
 * @l4_csum_off: offset of a TCP/UDP checksum covering the addresses, or 0
 * @l4_flags: BPF_F_MARK_MANGLED_0 for UDP (a zero checksum stays zero)
 * @from: source and destination as read (adjacent in the header)
 * @to: the new source and destination
 *
 * One store and one update per checksum, whether one address changes or both:
 * each helper call is a real call and return on this path.
 *
 * Return: 0, or -1 if a helper failed.
 */
static __always_inline int rewrite_v4_addrs(struct __sk_buff *skb, __u32 l3, __u32 l4_csum_off,
					    __u64 l4_flags, const __be32 from[2],
					    const __be32 to[2])
{
	__u32 diff;

	if (from[0] == to[0] && from[1] == to[1])
		return 0;
	diff = csum_fold32(csum_diff32(csum_diff32(0, from[0], to[0]), from[1], to[1]));
	if (bpf_skb_store_bytes(skb, l3 + offsetof(struct iphdr, saddr), (void *)to, 8, 0) < 0)
		return -1;
	if (bpf_l3_csum_replace(skb, l3 + offsetof(struct iphdr, check), 0, diff, 0) < 0)
		return -1;
	if (l4_csum_off &&
	    bpf_l4_csum_replace(skb, l4_csum_off, 0, diff, l4_flags | BPF_F_PSEUDO_HDR) < 0)
		return -1;
	return 0;
}

/**
 * rewrite_v6_addrs - replace the addresses of the packet's own IPv6 header.
 * @l3: offset of the IPv6 header
 * @l4_csum_off: offset of a TCP/UDP/ICMPv6 checksum covering them, or 0
 * @from: source and destination as read (adjacent in the header)
 * @to: the new source and destination
 *
 * Return: 0, or -1 if a helper failed.
 */
static __always_inline int rewrite_v6_addrs(struct __sk_buff *skb, __u32 l3, __u32 l4_csum_off,
					    __u64 l4_flags, const union v6addr from[2],
					    const union v6addr to[2])
{
	__u64 diff = 0;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		diff = csum_diff32(diff, from[0].w[i], to[0].w[i]);
		diff = csum_diff32(diff, from[1].w[i], to[1].w[i]);
	}
	/*
	 * On a CHECKSUM_COMPLETE skb, skb->csum sums the whole packet. IPv6 has
	 * no header checksum to absorb the new addresses, so the store must add
	 * their difference to skb->csum (BPF_F_RECOMPUTE_CSUM); the pseudo-header
	 * update below then takes off the L4 field's opposite change, and the
	 * two cancel as they do in the packet. Stored with flags 0, skb->csum
	 * was left off by the L4 change alone. The kernel's BPF_F_IPV6 (6.16+)
	 * makes bpf_l4_csum_replace skip skb->csum instead; it is refused by
	 * older kernels and leaves skb->csum stale when no L4 checksum is
	 * updated (later fragments, a UDP zero checksum).
	 */
	if (bpf_skb_store_bytes(skb, l3 + offsetof(struct ipv6hdr, saddr), (void *)to, 32,
				BPF_F_RECOMPUTE_CSUM) < 0)
		return -1;
	if (l4_csum_off &&
	    bpf_l4_csum_replace(skb, l4_csum_off, 0, csum_fold32(diff),
				l4_flags | BPF_F_PSEUDO_HDR) < 0)
		return -1;
	return 0;
}

/*
 * Fix a checksum inside quoted data by a 32-bit sum difference. UDP's
 * "no checksum" zero stays zero, and a computed zero becomes 0xffff.
 *
 * Return: 0, or -1 if a helper failed.
 */
static __always_inline int quoted_csum_update(struct __sk_buff *skb, __u32 csum_off, int is_udp,
					      __s64 diff)
{
	__u16 csum;

	if (bpf_skb_load_bytes(skb, csum_off, &csum, 2) < 0)
		return -1;
	if (is_udp && csum == 0)
		return 0;
	if (bpf_l3_csum_replace(skb, csum_off, 0, diff, 0) < 0)
		return -1;
	if (is_udp) {
		if (bpf_skb_load_bytes(skb, csum_off, &csum, 2) < 0)
			return -1;
		if (csum == 0) {
			csum = 0xffff;
			if (bpf_skb_store_bytes(skb, csum_off, &csum, 2, 0) < 0)
				return -1;
		}
	}
	return 0;
}

/* A checksum field after the changes summed in @diff (RFC 1624, eqn. 3). */
static __always_inline __u16 csum_apply(__u16 check, __u64 diff)
{
	__u64 s = (__u16)~check + diff;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

#endif /* NATGW_CSUM_H */
