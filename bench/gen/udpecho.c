/* SPDX-License-Identifier: Apache-2.0 */
/* udpecho: answers every UDP datagram on --port with the same bytes, back to
 * its source. The ping-pong peer for the latency runs (and the "transceiver"
 * that answers STUN primers). Exits after --duration seconds. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 32

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: udpecho BIND_IP PORT DURATION_S\n");
		return 2;
	}
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
	if (fd < 0 || inet_pton(AF_INET, argv[1], &a.sin_addr) != 1 ||
	    bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		perror("udpecho bind");
		return 1;
	}
	time_t deadline = time(NULL) + atoi(argv[3]);
	static char bufs[BATCH][2048];
	struct sockaddr_in from[BATCH];
	struct iovec iov[BATCH];
	struct mmsghdr m[BATCH];
	long long echoed = 0;
	while (time(NULL) < deadline) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, 200) <= 0)
			continue;
		memset(m, 0, sizeof(m));
		for (int i = 0; i < BATCH; i++) {
			iov[i].iov_base = bufs[i];
			iov[i].iov_len = sizeof(bufs[i]);
			m[i].msg_hdr.msg_iov = &iov[i];
			m[i].msg_hdr.msg_iovlen = 1;
			m[i].msg_hdr.msg_name = &from[i];
			m[i].msg_hdr.msg_namelen = sizeof(from[i]);
		}
		int n = recvmmsg(fd, m, BATCH, MSG_DONTWAIT, NULL);
		if (n <= 0)
			continue;
		for (int i = 0; i < n; i++)
			iov[i].iov_len = m[i].msg_len;
		int s = sendmmsg(fd, m, n, 0);
		if (s > 0)
			echoed += s;
	}
	printf("{\"echoed\": %lld}\n", echoed);
	return 0;
}
