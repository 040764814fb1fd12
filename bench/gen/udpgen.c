/* SPDX-License-Identifier: Apache-2.0 */
/* udpgen: the bench's UDP load generator.
 *
 * Sends one fixed payload (default: 200 bytes shaped like an Opus RTP packet)
 * from N source ports ("flows") to one destination, round-robin over the
 * flows so that consecutive packets hit different flows. It uses a raw IPv4
 * socket with IP_HDRINCL and sendmmsg, so that one socket and one syscall per
 * batch can carry 10,000 distinct source ports; per-flow headers (with their
 * UDP checksums) are built once up front.
 *
 * Modes: --rate 0 sends as fast as one core allows; --rate R paces to R pps by
 * sending small batches against the clock (so bursts stay < 1 ms). Every run
 * is bounded by --duration and/or --count.
 *
 * Output (stdout, one JSON line): {"sent":..,"errors":..,"elapsed":..,"pps":..}
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 64
#define MAX_PAYLOAD 1400
#define MAX_FLOWS 65535

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint32_t csum_add(uint32_t sum, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	for (size_t i = 0; i + 1 < len; i += 2)
		sum += (uint32_t)(p[i] << 8 | p[i + 1]);
	if (len & 1)
		sum += (uint32_t)(p[len - 1] << 8);
	return sum;
}

static uint16_t csum_fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

static int read_payload(const char *path, uint8_t *buf)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		perror(path);
		exit(2);
	}
	size_t n = fread(buf, 1, MAX_PAYLOAD, f);
	fclose(f);
	if (n == 0) {
		fprintf(stderr, "udpgen: %s is empty\n", path);
		exit(2);
	}
	return (int)n;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: udpgen --src IP --dst IP --dport P [--sport-base B] [--flows N]\n"
		"              [--size BYTES | --payload-file F] [--rate PPS] [--duration S]\n"
		"              [--count N]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *src = NULL, *dst = NULL, *payload_file = NULL;
	int dport = 0, sport_base = 40000, flows = 1, size = 200;
	double rate = 0, duration = 1.0;
	long long count = 0;
	static const struct option opts[] = {
		{"src", 1, 0, 's'},      {"dst", 1, 0, 'd'},   {"dport", 1, 0, 'p'},
		{"sport-base", 1, 0, 'b'}, {"flows", 1, 0, 'n'}, {"size", 1, 0, 'z'},
		{"payload-file", 1, 0, 'f'}, {"rate", 1, 0, 'r'}, {"duration", 1, 0, 't'},
		{"count", 1, 0, 'c'},    {0, 0, 0, 0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 's': src = optarg; break;
		case 'd': dst = optarg; break;
		case 'p': dport = atoi(optarg); break;
		case 'b': sport_base = atoi(optarg); break;
		case 'n': flows = atoi(optarg); break;
		case 'z': size = atoi(optarg); break;
		case 'f': payload_file = optarg; break;
		case 'r': rate = atof(optarg); break;
		case 't': duration = atof(optarg); break;
		case 'c': count = atoll(optarg); break;
		default: usage();
		}
	}
	if (!src || !dst || dport <= 0 || dport > 65535 || flows < 1 ||
	    sport_base < 1 || sport_base + flows - 1 > MAX_FLOWS || duration <= 0 ||
	    duration > 120)
		usage();

	uint8_t payload[MAX_PAYLOAD];
	int plen;
	if (payload_file) {
		plen = read_payload(payload_file, payload);
	} else {
		if (size < 12 || size > MAX_PAYLOAD)
			usage();
		plen = size;
		memset(payload, 0xa5, plen);
		payload[0] = 0x80; /* RTP v2: not a STUN message (top bits 10) */
		payload[1] = 111;  /* Opus dynamic payload type */
	}

	struct in_addr saddr, daddr;
	if (inet_pton(AF_INET, src, &saddr) != 1 || inet_pton(AF_INET, dst, &daddr) != 1)
		usage();

	int fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
	if (fd < 0) {
		perror("socket(SOCK_RAW)");
		return 1;
	}
	int sndbuf = 4 << 20;
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));

	/* Per-flow headers (28 bytes) plus one shared payload, sent as two iovecs:
	 * 10,000 flows then fit in cache and cost the same as one. */
	const int hdr_len = (int)(sizeof(struct iphdr) + sizeof(struct udphdr));
	const int pkt_len = hdr_len + plen;
	uint8_t *pkts = calloc((size_t)flows, (size_t)hdr_len);
	if (!pkts)
		return 1;
	for (int i = 0; i < flows; i++) {
		uint8_t *p = pkts + (size_t)i * hdr_len;
		struct iphdr *ip = (struct iphdr *)p;
		struct udphdr *udp = (struct udphdr *)(ip + 1);
		ip->version = 4;
		ip->ihl = 5;
		ip->ttl = 64;
		ip->protocol = IPPROTO_UDP;
		ip->tot_len = htons(pkt_len);
		ip->saddr = saddr.s_addr;
		ip->daddr = daddr.s_addr;
		ip->frag_off = htons(IP_DF);
		udp->source = htons(sport_base + i);
		udp->dest = htons(dport);
		udp->len = htons(sizeof(*udp) + plen);
		/* UDP checksum over the pseudo-header, header and payload */
		uint32_t sum = 0;
		sum = csum_add(sum, &ip->saddr, 8);
		sum += IPPROTO_UDP + sizeof(*udp) + plen;
		sum = csum_add(sum, udp, sizeof(*udp));
		sum = csum_add(sum, payload, plen);
		uint16_t cs = csum_fold(sum);
		udp->check = htons(cs ? cs : 0xffff);
	}

	struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr = daddr};
	struct mmsghdr msgs[MAX_BATCH];
	struct iovec iov[MAX_BATCH][2];
	memset(msgs, 0, sizeof(msgs));
	for (int i = 0; i < MAX_BATCH; i++) {
		msgs[i].msg_hdr.msg_iov = iov[i];
		msgs[i].msg_hdr.msg_iovlen = 2;
		msgs[i].msg_hdr.msg_name = &to;
		msgs[i].msg_hdr.msg_namelen = sizeof(to);
		iov[i][0].iov_len = hdr_len;
		iov[i][1].iov_base = payload;
		iov[i][1].iov_len = plen;
	}

	long long sent = 0, errors = 0;
	int next_flow = 0;
	double t0 = now_s(), deadline = t0 + duration, t = t0;
	while (t < deadline && (count == 0 || sent < count)) {
		int batch = MAX_BATCH;
		if (rate > 0) {
			long long due = (long long)((t - t0) * rate) + 1;
			long long ahead = sent - due;
			if (ahead >= 0) {
				/* ahead of schedule: sleep until the next packet is due */
				double wait = (ahead + 1) / rate;
				struct timespec ts = {.tv_sec = (time_t)wait,
						      .tv_nsec = (long)((wait - (time_t)wait) * 1e9)};
				nanosleep(&ts, NULL);
				t = now_s();
				continue;
			}
			if (-ahead < batch)
				batch = (int)-ahead;
		}
		if (count > 0 && count - sent < batch)
			batch = (int)(count - sent);
		for (int i = 0; i < batch; i++) {
			iov[i][0].iov_base = pkts + (size_t)next_flow * hdr_len;
			if (++next_flow == flows)
				next_flow = 0;
		}
		int n = sendmmsg(fd, msgs, batch, 0);
		if (n < 0) {
			if (errno != ENOBUFS && errno != EAGAIN && errno != EINTR) {
				perror("sendmmsg");
				return 1;
			}
			errors++;
		} else {
			sent += n;
		}
		t = now_s();
	}
	double elapsed = now_s() - t0;
	printf("{\"sent\": %lld, \"errors\": %lld, \"elapsed\": %.6f, \"pps\": %.1f}\n", sent,
	       errors, elapsed, sent / elapsed);
	return 0;
}
