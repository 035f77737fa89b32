/* udpgen: send UDP frames out of one device as fast as the kernel takes them.
 *
 *   udpgen DEV DST_MAC SRC_MAC SRC_IP DST_IP SPORT DPORT PAYLOAD SECONDS NEW_FLOW
 *
 * Built by the benchmark (bench.generator) with the system's gcc. IPv4 or IPv6
 * (from the addresses), PAYLOAD bytes of UDP payload up to a 1500-byte IP packet.
 * A blocking AF_PACKET socket with PACKET_QDISC_BYPASS and sendmmsg() batches of
 * 64 frames: when the path is saturated the socket's send buffer fills and the
 * sender waits (trafgen's TX_RING aborts on EAGAIN instead). With NEW_FLOW=1
 * every frame gets a random source port and random low 16 bits of the source
 * address, so a stateful NAT or conntrack sees a new 5-tuple per packet; the
 * checksums are then updated from a precomputed sum (the fields that change are
 * summed in), so a 1400-byte frame costs the sender no more than a small one.
 * Stops by itself after SECONDS (or on SIGINT/SIGTERM) and prints
 * {"sent": N, "errors": E, "seconds": T}.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define IP_MAX 1500
#define FRAME_MAX (14 + IP_MAX)

static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint32_t sum16(const uint8_t *p, size_t len, uint32_t sum)
{
	for (; len > 1; p += 2, len -= 2)
		sum += (uint32_t)p[0] << 8 | p[1];
	if (len)
		sum += (uint32_t)p[0] << 8;
	return sum;
}

static uint16_t fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = v >> 8;
	p[1] = v & 0xff;
}

static int parse_mac(const char *s, uint8_t *mac)
{
	return sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &mac[0], &mac[1], &mac[2], &mac[3],
		      &mac[4], &mac[5]) == 6 ? 0 : -1;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t xorshift(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng >> 16);
}

/* Where the varying fields are and what the checksums sum without them. */
struct layout {
	size_t ip_len, frame_len;
	uint8_t *src_low;	/* offset of the source address's low 16 bits (in frame 0) */
	size_t src_low_off, udp_off;
	uint32_t ip_base;	/* IPv4 header sum with the low source bits zero (IPv6: none) */
	uint32_t udp_base;	/* pseudo-header + UDP sum with low source bits and port zero */
};

/* Build the template frame in f; fill lay. The low source bits and the source
 * port are left zero in the sums: frame_fill() adds them. */
static void build(uint8_t *f, struct layout *lay, int v6, const uint8_t *dmac,
		  const uint8_t *smac, const uint8_t *src, const uint8_t *dst, int payload,
		  int dport)
{
	size_t iph_len = v6 ? 40 : 20, udp_len = 8 + (size_t)payload;
	uint8_t *iph = f + 14, *udp;

	memset(f, 0, FRAME_MAX);
	memcpy(f, dmac, 6);
	memcpy(f + 6, smac, 6);
	put16(f + 12, v6 ? 0x86dd : 0x0800);
	if (v6) {
		iph[0] = 0x60;
		put16(iph + 4, (uint16_t)udp_len);
		iph[6] = 17;
		iph[7] = 64;
		memcpy(iph + 8, src, 16);
		memcpy(iph + 24, dst, 16);
		iph[22] = iph[23] = 0;
		lay->src_low_off = 14 + 22;
	} else {
		iph[0] = 0x45;
		put16(iph + 2, (uint16_t)(20 + udp_len));
		iph[6] = 0x40; /* DF */
		iph[8] = 64;
		iph[9] = 17;
		memcpy(iph + 12, src, 4);
		memcpy(iph + 16, dst, 4);
		iph[14] = iph[15] = 0;
		lay->src_low_off = 14 + 14;
	}
	udp = iph + iph_len;
	put16(udp + 2, (uint16_t)dport);
	put16(udp + 4, (uint16_t)udp_len);
	lay->udp_off = 14 + iph_len;
	lay->ip_len = iph_len + udp_len;
	lay->frame_len = 14 + lay->ip_len;
	lay->ip_base = v6 ? 0 : sum16(iph, 20, 0);
	/* pseudo-header: addresses, protocol, UDP length (the same sum for both families) */
	lay->udp_base = sum16(iph + (v6 ? 8 : 12), v6 ? 32 : 8, 17 + (uint32_t)udp_len);
	lay->udp_base = sum16(udp, udp_len, lay->udp_base);
}

/* Set the low source bits and the source port of frame f, and both checksums. */
static void frame_fill(uint8_t *f, const struct layout *lay, int v6, uint16_t low,
		       uint16_t sport)
{
	uint8_t *udp = f + lay->udp_off;
	put16(f + lay->src_low_off, low);
	put16(udp, sport);
	if (!v6)
		put16(f + 14 + 10, fold(lay->ip_base + low));
	uint16_t c = fold(lay->udp_base + low + sport);
	put16(udp + 6, c ? c : 0xffff);
}

int main(int argc, char **argv)
{
	if (argc != 11) {
		fprintf(stderr, "usage: udpgen DEV DST_MAC SRC_MAC SRC_IP DST_IP SPORT DPORT "
			"PAYLOAD SECONDS NEW_FLOW\n");
		return 2;
	}
	const char *dev = argv[1];
	uint8_t dmac[6], smac[6], src[16], dst[16];
	int v6 = strchr(argv[4], ':') != NULL;
	int af = v6 ? AF_INET6 : AF_INET;
	if (parse_mac(argv[2], dmac) || parse_mac(argv[3], smac) ||
	    inet_pton(af, argv[4], src) != 1 || inet_pton(af, argv[5], dst) != 1) {
		fprintf(stderr, "udpgen: bad MAC or IP address (both of one family)\n");
		return 2;
	}
	int sport = atoi(argv[6]), dport = atoi(argv[7]), payload = atoi(argv[8]);
	double seconds = atof(argv[9]);
	int new_flow = atoi(argv[10]);
	if (payload < 0 || (v6 ? 40 : 20) + 8 + payload > IP_MAX) {
		fprintf(stderr, "udpgen: payload %d: the IP packet would exceed %d bytes\n", payload,
			IP_MAX);
		return 2;
	}
	rng ^= (uint64_t)getpid() << 32 ^ (uint64_t)(now() * 1e9);

	int fd = socket(AF_PACKET, SOCK_RAW, 0);
	if (fd < 0) {
		perror("udpgen: socket");
		return 1;
	}
	struct sockaddr_ll sll = {.sll_family = AF_PACKET,
				  .sll_protocol = htons(v6 ? ETH_P_IPV6 : ETH_P_IP),
				  .sll_ifindex = (int)if_nametoindex(dev), .sll_halen = 6};
	if (!sll.sll_ifindex) {
		perror("udpgen: device");
		return 1;
	}
	memcpy(sll.sll_addr, dmac, 6);
	if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0) {
		perror("udpgen: bind");
		return 1;
	}
	int one = 1;
	setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one));

	static uint8_t frames[BATCH][FRAME_MAX];
	struct iovec iov[BATCH];
	struct mmsghdr msgs[BATCH];
	struct layout lay;
	uint16_t low = (uint16_t)(v6 ? src[14] << 8 | src[15] : src[2] << 8 | src[3]);
	memset(msgs, 0, sizeof(msgs));
	build(frames[0], &lay, v6, dmac, smac, src, dst, payload, dport);
	frame_fill(frames[0], &lay, v6, low, (uint16_t)sport);
	for (int i = 0; i < BATCH; i++) {
		if (i)
			memcpy(frames[i], frames[0], lay.frame_len);
		iov[i].iov_base = frames[i];
		iov[i].iov_len = lay.frame_len;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}

	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	double start = now(), end = start + seconds;
	unsigned long long sent = 0, errors = 0;
	while (!stop) {
		if (new_flow) {
			for (int i = 0; i < BATCH; i++) {
				uint32_t r = xorshift();
				frame_fill(frames[i], &lay, v6, (uint16_t)(r >> 16), (uint16_t)r);
			}
		}
		int n = sendmmsg(fd, msgs, BATCH, 0);
		if (n > 0)
			sent += n;
		else if (errno != EINTR)
			errors++;
		if (now() >= end)
			break;
	}
	printf("{\"sent\": %llu, \"errors\": %llu, \"seconds\": %.3f}\n", sent, errors,
	       now() - start);
	return 0;
}
