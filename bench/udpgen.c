/* udpgen: send small UDP frames out of one device as fast as the kernel takes them.
 *
 *   udpgen DEV DST_MAC SRC_MAC SRC_IP DST_IP SPORT DPORT PAYLOAD SECONDS NEW_FLOW
 *
 * Built by the benchmark (bench.generator) with the system's gcc. A
 * blocking AF_PACKET socket with PACKET_QDISC_BYPASS and sendmmsg() batches of
 * 64 frames: when the path is saturated the socket's send buffer fills and the
 * sender waits (trafgen's TX_RING aborts on EAGAIN instead). With NEW_FLOW=1
 * every frame gets a random source port and random low 16 bits of the source
 * address, so a stateful NAT sees a new 5-tuple per packet. Stops by itself
 * after SECONDS (or on SIGINT/SIGTERM) and prints {"sent": N, "seconds": T}.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
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
#include <errno.h>
#include <unistd.h>

#define BATCH 64
#define FRAME_MAX 256

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

static int parse_mac(const char *s, uint8_t *mac)
{
	return sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &mac[0], &mac[1], &mac[2], &mac[3],
		      &mac[4], &mac[5]) == 6 ? 0 : -1;
}

/* Fill the IPv4 and UDP checksums of a frame (Ethernet + IPv4 without options + UDP). */
static void checksum(uint8_t *f, size_t udp_len)
{
	uint8_t *iph = f + 14, *udp = iph + 20;
	uint32_t sum;

	iph[10] = iph[11] = 0;
	uint16_t c = fold(sum16(iph, 20, 0));
	iph[10] = c >> 8;
	iph[11] = c & 0xff;
	udp[6] = udp[7] = 0;
	sum = sum16(iph + 12, 8, 0) + 17 + (uint32_t)udp_len;
	c = fold(sum16(udp, udp_len, sum));
	if (c == 0)
		c = 0xffff;
	udp[6] = c >> 8;
	udp[7] = c & 0xff;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t xorshift(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng >> 16);
}

int main(int argc, char **argv)
{
	if (argc != 11) {
		fprintf(stderr, "usage: udpgen DEV DST_MAC SRC_MAC SRC_IP DST_IP SPORT DPORT "
			"PAYLOAD SECONDS NEW_FLOW\n");
		return 2;
	}
	const char *dev = argv[1];
	uint8_t dmac[6], smac[6];
	struct in_addr src, dst;
	if (parse_mac(argv[2], dmac) || parse_mac(argv[3], smac) ||
	    inet_pton(AF_INET, argv[4], &src) != 1 || inet_pton(AF_INET, argv[5], &dst) != 1) {
		fprintf(stderr, "udpgen: bad MAC or IPv4 address\n");
		return 2;
	}
	int sport = atoi(argv[6]), dport = atoi(argv[7]), payload = atoi(argv[8]);
	double seconds = atof(argv[9]);
	int new_flow = atoi(argv[10]);
	size_t udp_len = 8 + payload, frame_len = 14 + 20 + udp_len;
	if (payload < 0 || frame_len > FRAME_MAX) {
		fprintf(stderr, "udpgen: payload too large\n");
		return 2;
	}
	rng ^= (uint64_t)getpid() << 32 ^ (uint64_t)(now() * 1e9);

	int fd = socket(AF_PACKET, SOCK_RAW, 0);
	if (fd < 0) {
		perror("udpgen: socket");
		return 1;
	}
	struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_IP),
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
	memset(msgs, 0, sizeof(msgs));
	for (int i = 0; i < BATCH; i++) {
		uint8_t *f = frames[i], *iph = f + 14, *udp = iph + 20;
		memcpy(f, dmac, 6);
		memcpy(f + 6, smac, 6);
		f[12] = 0x08;
		f[13] = 0x00;
		iph[0] = 0x45;
		iph[2] = (20 + udp_len) >> 8;
		iph[3] = (20 + udp_len) & 0xff;
		iph[6] = 0x40; /* DF */
		iph[8] = 64;
		iph[9] = 17;
		memcpy(iph + 12, &src, 4);
		memcpy(iph + 16, &dst, 4);
		udp[0] = sport >> 8;
		udp[1] = sport & 0xff;
		udp[2] = dport >> 8;
		udp[3] = dport & 0xff;
		udp[4] = udp_len >> 8;
		udp[5] = udp_len & 0xff;
		checksum(f, udp_len);
		iov[i].iov_base = f;
		iov[i].iov_len = frame_len;
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
				uint8_t *iph = frames[i] + 14;
				uint32_t r = xorshift();
				iph[14] = r >> 24;	/* source address, low 16 bits */
				iph[15] = r >> 16;
				iph[20] = r >> 8;	/* source port */
				iph[21] = r;
				checksum(frames[i], udp_len);
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
