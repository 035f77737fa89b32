/* SPDX-License-Identifier: GPL-2.0 */
/*
 * TCP MSS clamping. A tunnel lowers the path MTU; when PMTU discovery is
 * blocked somewhere, large segments vanish silently. Lowering the MSS option
 * of SYN and SYN-ACK segments crossing the tunnel makes both ends send
 * segments that fit.
 */
#ifndef NATGW_MSS_H
#define NATGW_MSS_H

#define TCPOPT_EOL	0
#define TCPOPT_NOP	1
#define TCPOPT_MSS	2
#define TCP_MAX_OPT_LEN	40

/**
 * tcp_clamp_mss - lower the MSS option of a SYN to @mss_max.
 * @l4_off: offset of the TCP header
 * @mss_max: 0 disables clamping
 *
 * Return: 1 if clamped, 0 if left alone, -1 if a helper failed mid-rewrite.
 */
static __always_inline int tcp_clamp_mss(struct __sk_buff *skb, __u32 l4_off, __u16 mss_max)
{
	struct tcphdr th;
	__u32 off, end;

	if (!mss_max || bpf_skb_load_bytes(skb, l4_off, &th, sizeof(th)) < 0 || !th.syn)
		return 0;
	off = l4_off + sizeof(th);
	end = l4_off + th.doff * 4;

#pragma clang loop unroll(disable)
	for (int i = 0; i < TCP_MAX_OPT_LEN; i++) {
		__u8 opt[2];
		__be16 mss, clamped;

		if (off >= end || bpf_skb_load_bytes(skb, off, opt, 1) < 0 || opt[0] == TCPOPT_EOL)
			return 0;
		if (opt[0] == TCPOPT_NOP) {
			off++;
			continue;
		}
		if (off + 2 > end || bpf_skb_load_bytes(skb, off, opt, 2) < 0 || opt[1] < 2)
			return 0;
		if (opt[0] == TCPOPT_MSS && opt[1] == 4) {
			if (off + 4 > end || bpf_skb_load_bytes(skb, off + 2, &mss, 2) < 0)
				return 0;
			if (bpf_ntohs(mss) <= mss_max)
				return 0;
			clamped = bpf_htons(mss_max);
			/* Options are payload of the checksum, not pseudo-header. */
			if (bpf_skb_store_bytes(skb, off + 2, &clamped, 2, 0) < 0 ||
			    bpf_l4_csum_replace(skb, l4_off + offsetof(struct tcphdr, check),
						mss, clamped, 2) < 0)
				return -1;
			return 1;
		}
		off += opt[1];
	}
	return 0;
}

#endif /* NATGW_MSS_H */
