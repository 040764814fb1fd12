/* SPDX-License-Identifier: GPL-2.0-only */
/* Bench generator in XDP: run with BPF_PROG_TEST_RUN's live-frames mode, it
 * sends frames that never were skbs out of the client's veth, as a NIC's
 * driver hands frames to XDP. (udpgen's raw-socket packets are skbs, and veth
 * copies each into a fresh page before the receiver's XDP can see it; a NIC
 * never does, so with udpgen an XDP relay pays a cost it would not pay in
 * production.) Each frame gets the template's headers (the frame's page may
 * hold an earlier frame's rewrite: pages are recycled), then its flow's
 * source port with the UDP checksum adjusted, round-robin over gen_cfg.flows.
 * Compiled by bcc with -DOUT_IFINDEX=<client veth>. */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>

#define HDR_LEN 42  /* Ethernet + IPv4 (no options) + UDP */

struct gen_cfg {
	__u32 flows;
	__u16 sport_base;   /* host order */
	__u16 pad;
	__u8 hdr[48];       /* the template's first HDR_LEN bytes */
};

BPF_ARRAY(gen_config, struct gen_cfg, 1);
BPF_PERCPU_ARRAY(gen_seq, __u64, 1);

int xdp_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int zero = 0;
	struct gen_cfg *cfg = gen_config.lookup(&zero);
	__u64 *seq = gen_seq.lookup(&zero);

	if (!cfg || !seq || !cfg->flows || data + HDR_LEN > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(data, cfg->hdr, HDR_LEN);
	struct udphdr *udp = data + sizeof(struct ethhdr) + sizeof(struct iphdr);
	__u16 old = bpf_ntohs(udp->source);
	__u16 new = cfg->sport_base + (__u16)(*seq % cfg->flows);
	*seq += 1;
	if (udp->check) {  /* RFC 1624: HC' = ~(~HC + ~m + m') */
		__u32 acc = (__u16)~udp->check + (__u16)~bpf_htons(old) + bpf_htons(new);
		acc = (acc & 0xffff) + (acc >> 16);
		acc = (acc & 0xffff) + (acc >> 16);
		udp->check = (__u16)~acc ? (__u16)~acc : 0xffff;
	}
	udp->source = bpf_htons(new);
	return bpf_redirect(OUT_IFINDEX, 0);
}
