/* SPDX-License-Identifier: GPL-2.0-only */
/* Bench ceiling: the least an XDP relay can do. Every IPv4 UDP packet on the
 * relay's public interface gets new MAC addresses and is redirected out of
 * the private interface, with no parsing beyond the headers, no map lookup
 * and no NAT. Compiled by bcc with -DOUT_IFINDEX, -DSMAC and -DDMAC (six
 * comma-separated bytes each). */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>

int xdp_ceiling(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end || eth->h_proto != htons(ETH_P_IP))
		return XDP_PASS;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	const unsigned char smac[ETH_ALEN] = {SMAC};
	const unsigned char dmac[ETH_ALEN] = {DMAC};
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	return bpf_redirect(OUT_IFINDEX, 0);
}
