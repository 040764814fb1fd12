/* SPDX-License-Identifier: GPL-2.0-only */
/* Bench sink: counts and drops every IPv4 UDP packet except ping-pong traffic
 * to ECHO_PORT, which goes on to the stack. Attached to the transceiver end of
 * the topology, it is the cheapest possible receiver, so that the delivered
 * rate measures the path and not a socket. Attached to the relay's public
 * interface, it is the generator-only baseline (packets end at the first hop).
 * Also makes the veth a valid XDP_REDIRECT target (veth needs an XDP program
 * on the receiving peer). Compiled by bcc with -DECHO_PORT=<n>. */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>

BPF_PERCPU_ARRAY(sink_count, __u64, 1);

int xdp_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end || eth->h_proto != htons(ETH_P_IP))
		return XDP_PASS;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_UDP || ip->ihl != 5)
		return XDP_PASS;
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end || udp->dest == htons(ECHO_PORT))
		return XDP_PASS;
	int zero = 0;
	__u64 *n = sink_count.lookup(&zero);
	if (n)
		*n += 1;
	return XDP_DROP;
}

/* On the client end: lets everything through; it exists because a veth only
 * accepts XDP_REDIRECTed frames when its peer runs an XDP program. */
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
