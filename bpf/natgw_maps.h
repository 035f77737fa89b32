/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Every map of the dataplane, pinned under NATGW_PIN_DIR
 * (/sys/fs/bpf/natgw/<gateway>, set by the loader) so that the control plane
 * and `natgw maps` can read and update them without recompiling.
 */
#ifndef NATGW_MAPS_H
#define NATGW_MAPS_H

#include "natgw_shared.h"

#ifndef NATGW_PIN_DIR
#error "NATGW_PIN_DIR must be defined by the loader"
#endif

/*
 * IPv4 translation tables of every device, one exact entry per prefix;
 * written by the control plane. (Named for the layout: the lpm_trie maps of
 * earlier versions were xlate_v4 and xlate_v6, see dataplane/upgrade.py.)
 */
BPF_TABLE_PINNED("hash", struct natgw_xlate_v4_key, struct natgw_xlate, xlate_v4_hash,
		 NATGW_XLATE_ENTRIES, NATGW_PIN_DIR "/xlate_v4_hash", BPF_F_NO_PREALLOC);

/* IPv6 translation tables of every device; written by the control plane. */
BPF_TABLE_PINNED("hash", struct natgw_xlate_v6_key, struct natgw_xlate, xlate_v6_hash,
		 NATGW_XLATE_ENTRIES, NATGW_PIN_DIR "/xlate_v6_hash", BPF_F_NO_PREALLOC);

/* Bitmaps of /16 buckets without long IPv4 prefixes (see NATGW_SKIP_PLEN); control plane. */
BPF_TABLE_PINNED("array", __u32, __u64, xlate_v4_skip,
		 NATGW_MAX_DEVICES * NATGW_TABLES * NATGW_SKIP_WORDS, NATGW_PIN_DIR "/xlate_v4_skip");

/*
 * ifindex -> device settings and the prefix lengths of its tables; written by
 * the control plane on attach and with every mapping change.
 */
BPF_TABLE_PINNED("hash", __u32, struct natgw_device, devices_v2,
		 NATGW_MAX_DEVICES, NATGW_PIN_DIR "/devices_v2");

/* Packets and bytes per mapping and direction; written by the dataplane. */
BPF_TABLE_PINNED("percpu_array", __u32, struct natgw_counter, map_stats,
		 2 * NATGW_MAX_MAPPINGS, NATGW_PIN_DIR "/map_stats");

/* Drops and events per device slot and reason; written by the dataplane. */
BPF_TABLE_PINNED("percpu_array", __u32, __u64, dev_stats,
		 NATGW_MAX_DEVICES * NATGW_DEV_STAT_MAX, NATGW_PIN_DIR "/dev_stats");

/* Fast-path decisions per device slot and reason; written by the dataplane. */
BPF_TABLE_PINNED("percpu_array", __u32, __u64, fast_stats,
		 NATGW_MAX_DEVICES * NATGW_FAST_MAX, NATGW_PIN_DIR "/fast_stats");

/*
 * XDP: device slot -> ifindex of the devices XDP_REDIRECT may send to (they
 * can transmit XDP frames); written by the control plane from the gateway's
 * netns (a devmap resolves ifindexes in the writer's netns). bcc 0.26 has no
 * devmap_hash, hence the slot as key.
 */
BPF_XDP_REDIRECT_MAP("devmap:" NATGW_PIN_DIR "/xdp_tx", int, xdp_tx, NATGW_MAX_DEVICES);

/* XDP: device slot -> its MAC address; written by the control plane on attach. */
BPF_TABLE_PINNED("array", __u32, struct natgw_mac, xdp_macs,
		 NATGW_MAX_DEVICES, NATGW_PIN_DIR "/xdp_macs");

static __always_inline void fast_stat_inc(const struct natgw_device *dev, __u32 reason)
{
	__u32 idx = dev->slot * NATGW_FAST_MAX + reason;
	__u64 *v = fast_stats.lookup(&idx);

	if (v)
		*v += 1;
}

static __always_inline void dev_stat_inc(const struct natgw_device *dev, __u32 stat)
{
	__u32 idx = dev->slot * NATGW_DEV_STAT_MAX + stat;
	__u64 *v = dev_stats.lookup(&idx);

	if (v)
		*v += 1;
}

static __always_inline void map_stat_add(const struct natgw_xlate *x, __u32 dir,
					 __u32 packets, __u64 bytes)
{
	__u32 idx = x->mapping_id * 2 + dir;
	struct natgw_counter *c = map_stats.lookup(&idx);

	if (c) {
		c->packets += packets;
		c->bytes += bytes;
	}
}

/*
 * may_goto (Linux 6.9+) as a loop condition: true, except that the kernel
 * ends the loop after a very large number of rounds. A loop guarded by it
 * need not be bounded for the verifier, which checks the loop body until its
 * states converge (a few rounds) instead of once per possible round: a
 * counted loop of up to 129 lookups is checked 129 times on every path that
 * reaches it and exceeds the verifier's budget. The instruction is spelled
 * out in bytes for compilers older than LLVM 19 (as in the kernel's
 * bpf_experimental.h); bcc's clang 14 is one.
 */
#define natgw_can_loop ({						\
	__label__ l_break, l_continue;					\
	int ret = 1;							\
	asm volatile goto("1:.byte 0xe5;				\
			  .byte 0;					\
			  .long ((%l[l_break] - 1b - 8) / 8) & 0xffff;	\
			  .short 0"					\
			  :::: l_break);				\
	goto l_continue;						\
l_break:								\
	ret = 0;							\
l_continue:;								\
	ret;								\
})

/* Index of the highest set bit of @m (not 0): bits smeared down, then counted. No branches. */
static __always_inline __u32 top_bit(__u64 m)
{
	m |= m >> 1;
	m |= m >> 2;
	m |= m >> 4;
	m |= m >> 8;
	m |= m >> 16;
	m |= m >> 32;
	m -= (m >> 1) & 0x5555555555555555ULL;
	m = (m & 0x3333333333333333ULL) + ((m >> 2) & 0x3333333333333333ULL);
	m = (m + (m >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
	return (__u32)((m * 0x0101010101010101ULL) >> 56) - 1;
}

/*
 * The first @bits bits of a 32-bit word set, in network byte order; @bits is
 * clamped to 0..32. Without branches: a branch on a length the verifier knows
 * on one path and not on another keeps it from merging the two.
 */
static __always_inline __be32 prefix_mask32(__s64 bits)
{
	__s64 over;

	bits &= ~(bits >> 63);			/* below 0: 0 */
	over = bits - 32;
	bits = 32 + (over & (over >> 63));	/* above 32: 32 */
	return bpf_htonl((__u32)(0xffffffff00000000ULL >> bits));
}

/*
 * How the lookups below probe, and why so. The verifier follows every path of
 * the program separately until the paths' states match again; a lookup that
 * returned NULL on one path and a map pointer on another doubles the paths
 * after it. So a lookup ends in one map lookup whose result is returned as it
 * is: of the last length present, or of the length an earlier probe found
 * (looked up once more). An empty IPv4 table returns NULL at once (the IPv4
 * path is short enough to afford the split); an empty IPv6 table looks up
 * NATGW_PLEN_NONE, which no entry has: with the split, the IPv6 path, its
 * extension header walk and ICMPv6 quotes exceed the verifier's budget.
 */
#define NATGW_PLEN_NONE		0xffff

/* 1 if @table of @dev holds no prefix longer than NATGW_SKIP_PLEN in @addr's bucket. */
static __always_inline int skip_long_v4(const struct natgw_device *dev, __u32 table, __be32 addr)
{
	__u32 bucket = (bpf_ntohl(addr) >> 16) & (NATGW_SKIP_BUCKETS - 1);
	__u32 idx = (dev->slot * NATGW_TABLES + (table & (NATGW_TABLES - 1))) * NATGW_SKIP_WORDS +
		    bucket / 64;
	__u64 *word = xlate_v4_skip.lookup(&idx);

	return word && ((*word >> (bucket & 63)) & 1);
}

/**
 * xlate_v4_lookup - the entry of the longest prefix holding @addr in a table.
 * @dev: the device's entry (its plens_v4 say which prefix lengths to probe)
 * @table: NATGW_TABLE(dir, side)
 *
 * Probes each prefix length present, longest first.
 * Return: the entry, or NULL.
 */
static __always_inline struct natgw_xlate *
xlate_v4_lookup(const struct natgw_device *dev, __u32 ifindex, __u32 table, __be32 addr)
{
	__u64 plens = dev->plens_v4[table & (NATGW_TABLES - 1)] &
		      ((2ULL << NATGW_V4_PLEN_MAX) - 1);
	struct natgw_xlate_v4_key key = {
		.ifindex = ifindex,
		.table = table,
		.prefixlen = NATGW_PLEN_NONE,
	};

	if ((plens >> (NATGW_SKIP_PLEN + 1)) && skip_long_v4(dev, table, addr))
		plens &= (2ULL << NATGW_SKIP_PLEN) - 1;
	if (!plens)
		return NULL;	/* no mapping of this kind: no lookup at all */
	/* Each round clears one of at most 33 bits. */
	while (plens && natgw_can_loop) {
		__u32 plen = top_bit(plens);
		__be32 net = addr & prefix_mask32(plen);

		plens &= ~(1ULL << plen);
		key.prefixlen = plen;
		__builtin_memcpy(key.addr, &net, 4);
		if (!plens || xlate_v4_hash.lookup(&key))
			break;
	}
	return xlate_v4_hash.lookup(&key);
}

/* A table's IPv6 prefix lengths: three words of plens_v6 (lengths 0-63, 64-127, 128). */
static __always_inline const __u64 *plens_v6_words(const struct natgw_device *dev, __u32 table)
{
	return &dev->plens_v6[(table & (NATGW_TABLES - 1)) * NATGW_V6_PLEN_WORDS];
}

/* As xlate_v4_lookup, for IPv6 (prefix lengths in three words of plens_v6). */
static __always_inline struct natgw_xlate *
xlate_v6_lookup(const struct natgw_device *dev, __u32 ifindex, __u32 table,
		const struct in6_addr *addr)
{
	const __u64 *words = plens_v6_words(dev, table);
	__u64 lo = words[0], mid = words[1], hi = words[2] & 1;	/* lengths 0-63, 64-127, 128 */
	struct natgw_xlate_v6_key key = {
		.ifindex = ifindex,
		.table = table,
		.prefixlen = NATGW_PLEN_NONE,
	};
	__be32 a[4];

	__builtin_memcpy(a, addr, 16);
	while ((lo | mid | hi) && natgw_can_loop) {
		__be32 net[4];
		__u32 plen;

		if (hi) {
			plen = 128;
			hi = 0;
		} else if (mid) {
			plen = 64 + top_bit(mid);
			mid &= ~(1ULL << (plen - 64));
		} else {
			plen = top_bit(lo);
			lo &= ~(1ULL << plen);
		}
#pragma unroll
		for (int w = 0; w < 4; w++)
			net[w] = a[w] & prefix_mask32((__s64)plen - 32 * w);
		key.prefixlen = plen;
		__builtin_memcpy(key.addr, net, 16);
		if (!(lo | mid | hi) || xlate_v6_hash.lookup(&key))
			break;
	}
	return xlate_v6_hash.lookup(&key);
}

/*
 * 1 if a device's IPv6 table holds no prefix: xlate_v6_lookup looks an empty
 * table up once (see NATGW_PLEN_NONE), which a caller the verifier can afford
 * the split in skips.
 */
static __always_inline int xlate_v6_empty(const struct natgw_device *dev, __u32 table)
{
	const __u64 *words = plens_v6_words(dev, table);

	return !(words[0] | words[1] | (words[2] & 1));
}

/*
 * 1 if either lookup matched. The volatile flag stops clang from turning
 * "a || b" into a bitwise OR of two map value pointers, which the verifier
 * rejects ("pointer |= pointer prohibited").
 */
static __always_inline int either_hit(const struct natgw_xlate *a, const struct natgw_xlate *b)
{
	volatile int hit = 0;

	if (a)
		hit = 1;
	if (b)
		hit = 1;
	return hit;
}

#endif /* NATGW_MAPS_H */
