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

/* IPv4 translation tables of every device; written by the control plane. */
BPF_TABLE_PINNED("lpm_trie", struct natgw_lpm_v4_key, struct natgw_xlate, xlate_v4,
		 NATGW_LPM_ENTRIES, NATGW_PIN_DIR "/xlate_v4", BPF_F_NO_PREALLOC);

/* IPv6 translation tables of every device; written by the control plane. */
BPF_TABLE_PINNED("lpm_trie", struct natgw_lpm_v6_key, struct natgw_xlate, xlate_v6,
		 NATGW_LPM_ENTRIES, NATGW_PIN_DIR "/xlate_v6", BPF_F_NO_PREALLOC);

/* ifindex -> device settings; written by the control plane on attach. */
BPF_TABLE_PINNED("hash", __u32, struct natgw_device, devices,
		 NATGW_MAX_DEVICES, NATGW_PIN_DIR "/devices");

/* Packets and bytes per mapping and direction; written by the dataplane. */
BPF_TABLE_PINNED("percpu_array", __u32, struct natgw_counter, map_stats,
		 2 * NATGW_MAX_MAPPINGS, NATGW_PIN_DIR "/map_stats");

/* Drops and events per device slot and reason; written by the dataplane. */
BPF_TABLE_PINNED("percpu_array", __u32, __u64, dev_stats,
		 NATGW_MAX_DEVICES * NATGW_DEV_STAT_MAX, NATGW_PIN_DIR "/dev_stats");

/* Fast-path decisions per device slot and reason; written by the dataplane. */
BPF_TABLE_PINNED("percpu_array", __u32, __u64, fast_stats,
		 NATGW_MAX_DEVICES * NATGW_FAST_MAX, NATGW_PIN_DIR "/fast_stats");

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

static __always_inline struct natgw_xlate *
xlate_v4_lookup(__u32 ifindex, __u32 table, __be32 addr)
{
	struct natgw_lpm_v4_key key = {
		.prefixlen = NATGW_KEY_FIXED_BITS + 32,
		.ifindex = ifindex,
		.table = table,
	};

	__builtin_memcpy(key.addr, &addr, 4);
	return xlate_v4.lookup(&key);
}

static __always_inline struct natgw_xlate *
xlate_v6_lookup(__u32 ifindex, __u32 table, const struct in6_addr *addr)
{
	struct natgw_lpm_v6_key key = {
		.prefixlen = NATGW_KEY_FIXED_BITS + 128,
		.ifindex = ifindex,
		.table = table,
	};

	__builtin_memcpy(key.addr, addr, 16);
	return xlate_v6.lookup(&key);
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
