/* SPDX-License-Identifier: Apache-2.0 */
/* udpping: UDP ping-pong from a fixed source port, one packet in flight.
 *
 * Optionally sends --prime FILE first (a STUN Binding Request carrying a
 * routing token, so that the XDP relay creates the flow) and waits for its
 * echo. --prefix-file FILE is prepended to every ping (a TURN ChannelData
 * header for coturn) and the same number of bytes is skipped in replies.
 * Prints every RTT in nanoseconds, one per line; a lost ping prints -1. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <getopt.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int slurp(const char *path, uint8_t *buf, int cap)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		perror(path);
		exit(2);
	}
	int n = (int)fread(buf, 1, cap, f);
	fclose(f);
	return n;
}

int main(int argc, char **argv)
{
	const char *src = "0.0.0.0", *dst = NULL, *prime = NULL, *prefix = NULL;
	int dport = 0, sport = 0, count = 1000, size = 200, timeout_ms = 100;
	static const struct option opts[] = {
		{"src", 1, 0, 's'},   {"dst", 1, 0, 'd'},   {"dport", 1, 0, 'p'},
		{"sport", 1, 0, 'b'}, {"count", 1, 0, 'c'}, {"size", 1, 0, 'z'},
		{"prime", 1, 0, 'P'}, {"prefix-file", 1, 0, 'x'}, {"timeout-ms", 1, 0, 'T'},
		{0, 0, 0, 0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 's': src = optarg; break;
		case 'd': dst = optarg; break;
		case 'p': dport = atoi(optarg); break;
		case 'b': sport = atoi(optarg); break;
		case 'c': count = atoi(optarg); break;
		case 'z': size = atoi(optarg); break;
		case 'P': prime = optarg; break;
		case 'x': prefix = optarg; break;
		case 'T': timeout_ms = atoi(optarg); break;
		default: return 2;
		}
	}
	if (!dst || dport <= 0 || count < 1 || count > 1000000 || size < 16 || size > 1400) {
		fprintf(stderr, "usage: udpping --dst IP --dport P [--sport S] [--count N] "
				"[--size B] [--prime FILE] [--prefix-file FILE]\n");
		return 2;
	}
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons(sport)};
	struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(dport)};
	inet_pton(AF_INET, src, &me.sin_addr);
	inet_pton(AF_INET, dst, &to.sin_addr);
	if (bind(fd, (struct sockaddr *)&me, sizeof(me)) < 0 ||
	    connect(fd, (struct sockaddr *)&to, sizeof(to)) < 0) {
		perror("udpping bind/connect");
		return 1;
	}
	uint8_t out[1600], in[1600];
	int plen = 0;
	if (prefix)
		plen = slurp(prefix, out, 64);
	if (prime) {
		uint8_t pb[1500];
		int n = slurp(prime, pb, sizeof(pb));
		for (int attempt = 0; attempt < 5; attempt++) {
			send(fd, pb, n, 0);
			struct pollfd p = {.fd = fd, .events = POLLIN};
			if (poll(&p, 1, 200) > 0 && recv(fd, in, sizeof(in), 0) > 0)
				break;
		}
	}
	memset(out + plen, 0x5a, size);
	out[plen] = 0x80; /* RTP-shaped: never mistaken for STUN */
	for (int i = 0; i < count; i++) {
		uint32_t seq = (uint32_t)i;
		memcpy(out + plen + 4, &seq, 4);
		int64_t t0 = now_ns();
		send(fd, out, plen + size, 0);
		int64_t rtt = -1;
		for (;;) {
			int64_t left = timeout_ms - (now_ns() - t0) / 1000000;
			struct pollfd p = {.fd = fd, .events = POLLIN};
			if (left <= 0 || poll(&p, 1, (int)left) <= 0)
				break;
			int n = recv(fd, in, sizeof(in), 0);
			uint32_t got;
			if (n >= plen + 8) {
				memcpy(&got, in + plen + 4, 4);
				if (got == seq) {
					rtt = now_ns() - t0;
					break;
				}
			}
		}
		printf("%lld\n", (long long)rtt);
	}
	return 0;
}
