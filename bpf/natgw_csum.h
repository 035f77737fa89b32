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
 * (which BPF_F_PSEUDO_HDR does); IPv6 addresses see rewrite_v6_addr.
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

/**
 * rewrite_v4_addr - replace an IPv4 address of the packet's own header.
 * @off: offset of the address
 * @ip_csum_off: offset of the IPv4 header checksum
 * @l4_csum_off: offset of a TCP/UDP checksum covering the address, or 0
 * @l4_flags: BPF_F_MARK_MANGLED_0 for UDP (a zero checksum stays zero)
 *
 * Return: 0, or -1 if a helper failed.
 */
static __always_inline int rewrite_v4_addr(struct __sk_buff *skb, __u32 off, __u32 ip_csum_off,
					   __u32 l4_csum_off, __u64 l4_flags,
					   __be32 from, __be32 to)
{
	if (from == to)
		return 0;
	if (bpf_skb_store_bytes(skb, off, &to, 4, 0) < 0)
		return -1;
	if (bpf_l3_csum_replace(skb, ip_csum_off, from, to, 4) < 0)
		return -1;
	if (l4_csum_off &&
	    bpf_l4_csum_replace(skb, l4_csum_off, from, to, l4_flags | BPF_F_PSEUDO_HDR | 4) < 0)
		return -1;
	return 0;
}

/**
 * rewrite_v6_addr - translate an IPv6 address of the packet's own header.
 * @off: offset of the address
 * @l4_csum_off: offset of a TCP/UDP/ICMPv6 checksum covering it, or 0
 * @addr: the address as read from the packet
 * @x: the mapping it matched
 *
 * Return: 0, or -1 if a helper failed.
 */
static __always_inline int rewrite_v6_addr(struct __sk_buff *skb, __u32 off, __u32 l4_csum_off,
					   __u64 l4_flags, const struct in6_addr *addr,
					   const struct natgw_xlate *x)
{
	union v6addr from, to;
	__s64 diff;

	__builtin_memcpy(from.b, addr, 16);
	to = from;
	netmap_v6(&to, x);
	/*
	 * On a CHECKSUM_COMPLETE skb, skb->csum sums the whole packet. IPv6 has
	 * no header checksum to absorb the new address, so the store must add
	 * its difference to skb->csum (BPF_F_RECOMPUTE_CSUM); the pseudo-header
	 * update below then takes off the L4 field's opposite change, and the
	 * two cancel as they do in the packet. Stored with flags 0, skb->csum
	 * was left off by the L4 change alone. The kernel's BPF_F_IPV6 (6.16+)
	 * makes bpf_l4_csum_replace skip skb->csum instead; it is refused by
	 * older kernels and leaves skb->csum stale when no L4 checksum is
	 * updated (later fragments, a UDP zero checksum).
	 */
	if (bpf_skb_store_bytes(skb, off, to.b, 16, BPF_F_RECOMPUTE_CSUM) < 0)
		return -1;
	if (!l4_csum_off)
		return 0;
	diff = natgw_csum_diff(from.w, 16, to.w, 16, 0);
	if (diff < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, l4_csum_off, 0, diff, l4_flags | BPF_F_PSEUDO_HDR) < 0)
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

/*
 * Incremental updates on packet memory, for XDP (no skb, no csum helpers).
 * A ones' complement sum does not depend on byte order, so words are summed
 * as they lie in memory; a diff collects ~old + new of every changed word.
 */
static __always_inline __u64 csum_diff32(__u64 diff, __be32 from, __be32 to)
{
	return diff + (__u32)~from + (__u32)to;
}

static __always_inline __u64 csum_diff16(__u64 diff, __be16 from, __be16 to)
{
	return diff + (__u16)~from + (__u16)to;
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
