/* SPDX-License-Identifier: GPL-2.0-only */
/* voxrelay: the XDP relay.
 *
 * One program on both of the relay's interfaces. Per packet:
 *   - UDP to public_addr:public_port (public side): a known client flow is
 *     rewritten to relay addr:port -> transceiver addr:port and forwarded
 *     (the flow's relay-side address is one of private_addrs: bpf/flows.h);
 *     an unknown client must open with a STUN Binding Request whose USERNAME
 *     starts with a valid routing token (bpf/token.h), which creates the flow
 *     and its reverse entry first.
 *   - UDP to any private address:[port_min, port_max] (private side): a reply from
 *     the flow's transceiver is rewritten to public_addr:public_port -> client
 *     and forwarded.
 *   - Each side is taken only from its own interface: public-side packets
 *     must arrive on public_ifindex, private-side ones on private_ifindex
 *     (a transceiver-shaped reply sent from the public side is dropped).
 *   - An unknown client whose source lies in a blocked prefix (the private
 *     subnet, the relay's own addresses, the operator's list: the
 *     blocked_sources trie) opens nothing.
 *   - Anything else addressed to the relay's UDP port (or port range) is
 *     dropped and counted by reason; traffic not for the relay passes
 *     untouched.
 *   - Dual stack: the same, over IPv6, to public_addr6 and private_addr6
 *     (relay6), and across families: a flow goes to its transceiver in the
 *     transceiver's family and back to its client in the client's, so an
 *     IPv6 client reaches an IPv4 transceiver (and the reverse) through a
 *     header translated in place (translate_6to4, translate_4to6).
 *   - On a known flow, both ways, the clear RTP header and STUN consent
 *     checks update the flow's media telemetry (loss, reordering, jitter,
 *     consent round trips: bpf/media.h) before the rewrite.
 * Every packet counts STAT_RX_TOTAL at entry and exactly one other counter.
 *
 * Next hops come from bpf_fib_lookup (cached per flow while the config's
 * nh_generation holds). XDP_TX when the egress interface is the ingress one,
 * else bpf_redirect. bpf_fib_lookup never starts ARP: with no neighbour entry
 * for the next hop, a reply to a client goes to the MAC its flow learnt
 * (learn_client_hop); anything else is passed to the stack, rewritten, and
 * counted STAT_PASS_NO_NEIGH. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/udp.h>

#include "consts.h"
#include "structs.h"
#include "verdicts.h"
#include "maps.h"
#include "parsing.h"
#include "csum.h"
#include "token.h"
#include "flows.h"
#include "media.h"

/* An action and the counter that explains it. */
struct verdict {
	int action;
	__u32 stat;
};

#define VERDICT(a, s) ((struct verdict){ .action = (a), .stat = (s) })
#define DROP(s) VERDICT(XDP_DROP, s)

static __always_inline void count(__u32 stat)
{
	__u64 *v = stats.lookup(&stat);

	if (v)
		*v += 1;
}

/* The relay's clock: CLOCK_MONOTONIC (what bpf_ktime_get_ns reads, and what
 * Python's time.monotonic_ns reads) at tick resolution. Every time the
 * program keeps (created, last seen, rate windows) is far coarser than a tick
 * (LAST_SEEN_GRANULARITY_NS, flow_idle_ns, RATE_WINDOW_NS, token expiry in
 * seconds).
 *
 * Why not call a clock helper per packet: on this kind of machine (AMD with
 * the "Safe RET" SRSO mitigation) every helper call's return is expensive;
 * bpf_ktime_get_ns cost ~60 ns of a cold ~200 ns known-flow packet and
 * bpf_ktime_get_coarse_ns still ~20 ns of a hot ~110 ns one. bpf_jiffies64 is
 * inlined by the verifier (a load), so each CPU keeps the coarse clock it read
 * at the start of the current jiffy in its scratch and asks the helper again
 * only when the jiffy changes: at most HZ calls per second per CPU. The value
 * is the coarse clock of this tick, at worst a tick or two stale (when read
 * while another CPU is between the jiffies and timekeeper updates). */
static __always_inline __u64 relay_now(struct relay_scratch *s)
{
	__u64 j = bpf_jiffies64();

	if (j != s->clock_jiffies) {
		s->clock_ns = bpf_ktime_get_coarse_ns();
		s->clock_jiffies = j;
	}
	return s->clock_ns;
}

/* Idle test that survives a last_seen written by another CPU a moment after
 * this CPU read the clock. idle_ns == 0 means flows never go idle. */
static __always_inline int is_idle(__u64 last_seen, __u64 now, __u64 idle_ns)
{
	return idle_ns && (__s64)(now - last_seen) > (__s64)idle_ns;
}

static __always_inline void touch(__u64 *last_seen, __u64 now)
{
	if ((__s64)(now - *last_seen) > (__s64)LAST_SEEN_GRANULARITY_NS)
		*last_seen = now;
}

/* murmur3's finalizer: spreads probe seeds over the port range. */
static __always_inline __u32 mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* Rewrite the addresses and ports of an IPv4/UDP packet with incremental
 * checksum updates. A UDP checksum of 0 (none) stays 0. */
static __always_inline void rewrite_udp4(struct iphdr *iph, struct udphdr *udp,
					 __be32 saddr, __be32 daddr,
					 __be16 sport, __be16 dport)
{
	__u32 acc = csum_start(iph->check);

	acc = csum_replace32(acc, iph->saddr, saddr);
	acc = csum_replace32(acc, iph->daddr, daddr);
	iph->check = csum_finish(acc);

	if (udp->check) {
		acc = csum_start(udp->check);
		acc = csum_replace32(acc, iph->saddr, saddr);
		acc = csum_replace32(acc, iph->daddr, daddr);
		acc = csum_replace16(acc, udp->source, sport);
		acc = csum_replace16(acc, udp->dest, dport);
		udp->check = csum_finish_udp(acc);
	}
	iph->saddr = saddr;
	iph->daddr = daddr;
	udp->source = sport;
	udp->dest = dport;
}

/* A parsed UDP datagram of either family: `ip4` or `ip6` is set, as
 * `family` says. Code tests the pointer, not `family`, before it touches an
 * IP header: the verifier follows a NULL pointer through the stack, but not
 * a family byte. Changing the family (translate_*) moves the headers, so it
 * rewrites every pointer here. */
struct pkt {
	struct ethhdr *eth;
	struct iphdr *ip4;
	struct ipv6hdr *ip6;
	struct udphdr *udp;
	__u8 family;
};

/* The same, for IPv6/UDP. IPv6 has no header checksum, and the UDP checksum
 * is never 0 here (relay6 drops those). */
static __always_inline void rewrite_udp6(struct ipv6hdr *ip6, struct udphdr *udp,
					 const struct relay_addr *saddr,
					 const struct relay_addr *daddr,
					 __be16 sport, __be16 dport)
{
	__u32 acc = csum_start(udp->check);

	acc = csum_sub_words(acc, ip6->saddr.in6_u.u6_addr32, 4);
	acc = csum_sub_words(acc, ip6->daddr.in6_u.u6_addr32, 4);
	acc = csum_add_words(acc, saddr->addr, 4);
	acc = csum_add_words(acc, daddr->addr, 4);
	acc = csum_replace16(acc, udp->source, sport);
	acc = csum_replace16(acc, udp->dest, dport);
	udp->check = csum_finish_udp(acc);
	__builtin_memcpy(&ip6->saddr, saddr, sizeof(*saddr));
	__builtin_memcpy(&ip6->daddr, daddr, sizeof(*daddr));
	udp->source = sport;
	udp->dest = dport;
}

/* Family translation (SIIT-like, RFC 7915, for the one UDP flow the relay
 * owns): the UDP header and payload stay where they are in memory, and the
 * IP header in front of them is replaced by one of the other family, 20
 * bytes shorter or longer, with bpf_xdp_adjust_head moving the start of the
 * frame. The UDP checksum is updated for the addresses alone (the two
 * pseudo-headers differ in nothing else), before the old header is gone.
 * TTL and hop limit, TOS and traffic class carry over as they are (the
 * same-family path keeps TTL too); the IPv4 header gets DF and ID 0, its
 * checksum from scratch. The MACs are carried over for a packet passed to
 * the stack; send_to_next_hop sets them otherwise. Returns 0 or a drop
 * reason. */
static __always_inline __u32 translate_6to4(struct xdp_md *ctx, struct pkt *p,
					    __be32 saddr, __be32 daddr,
					    __be16 sport, __be16 dport)
{
	struct ipv6hdr *ip6 = p->ip6;
	struct udphdr *udp = p->udp;
	__u32 acc = csum_start(udp->check);
	__u8 macs[2 * ETH_ALEN];

	acc = csum_sub_words(acc, ip6->saddr.in6_u.u6_addr32, 4);
	acc = csum_sub_words(acc, ip6->daddr.in6_u.u6_addr32, 4);
	acc = csum_add32(acc, saddr);
	acc = csum_add32(acc, daddr);
	acc = csum_replace16(acc, udp->source, sport);
	acc = csum_replace16(acc, udp->dest, dport);
	udp->check = csum_finish_udp(acc);
	udp->source = sport;
	udp->dest = dport;

	__u8 tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
	__u8 ttl = ip6->hop_limit;
	__be16 udp_len = udp->len;

	__builtin_memcpy(macs, p->eth, sizeof(macs));
	if (bpf_xdp_adjust_head(ctx, (int)(sizeof(struct ipv6hdr) - sizeof(struct iphdr))))
		return STAT_DROP_HEADROOM;

	struct cursor c = { .pos = (void *)(long)ctx->data, .end = (void *)(long)ctx->data_end };
	struct ethhdr *eth;
	struct iphdr *iph;

	if (parse_ethhdr(&c, &eth) < 0 || parse_iphdr(&c, &iph) < 0 || parse_udphdr(&c, &udp) < 0)
		return STAT_DROP_TRUNCATED;  /* (cannot happen: the UDP header was there) */
	__builtin_memcpy(eth, macs, sizeof(macs));
	eth->h_proto = ETH_P_IP_BE;
	iph->version = 4;
	iph->ihl = 5;
	iph->tos = tos;
	iph->tot_len = bpf_htons(sizeof(*iph) + bpf_ntohs(udp_len));
	iph->id = 0;
	iph->frag_off = IP_DF_BE;
	iph->ttl = ttl;
	iph->protocol = IPPROTO_UDP;
	iph->check = 0;
	iph->saddr = saddr;
	iph->daddr = daddr;
	iph->check = csum_ipv4_header(iph);
	p->eth = eth;
	p->ip4 = iph;
	p->ip6 = NULL;
	p->udp = udp;
	p->family = AF_INET;
	return 0;
}

static __always_inline __u32 translate_4to6(struct xdp_md *ctx, struct pkt *p,
					    const struct relay_addr *saddr,
					    const struct relay_addr *daddr,
					    __be16 sport, __be16 dport)
{
	struct iphdr *iph = p->ip4;
	struct udphdr *udp = p->udp;
	__u8 macs[2 * ETH_ALEN];

	/* IPv4 may say "no checksum"; IPv6 may not, and computing one over
	 * the whole payload is not what the relay does per packet. Linux
	 * sockets always send one. */
	if (!udp->check)
		return STAT_DROP_NO_CSUM_TO_IPV6;
	__u32 acc = csum_start(udp->check);

	acc = csum_sub32(acc, iph->saddr);
	acc = csum_sub32(acc, iph->daddr);
	acc = csum_add_words(acc, saddr->addr, 4);
	acc = csum_add_words(acc, daddr->addr, 4);
	acc = csum_replace16(acc, udp->source, sport);
	acc = csum_replace16(acc, udp->dest, dport);

	__u8 tos = iph->tos;
	__u8 ttl = iph->ttl;
	__be16 udp_len = udp->len;

	__builtin_memcpy(macs, p->eth, sizeof(macs));
	if (bpf_xdp_adjust_head(ctx, -(int)(sizeof(struct ipv6hdr) - sizeof(struct iphdr))))
		return STAT_DROP_HEADROOM;

	struct cursor c = { .pos = (void *)(long)ctx->data, .end = (void *)(long)ctx->data_end };
	struct ethhdr *eth;
	struct ipv6hdr *ip6;

	if (parse_ethhdr(&c, &eth) < 0 || parse_ipv6hdr(&c, &ip6) < 0 ||
	    parse_udphdr(&c, &udp) < 0)
		return STAT_DROP_TRUNCATED;  /* (cannot happen: the UDP header was there) */
	__builtin_memcpy(eth, macs, sizeof(macs));
	eth->h_proto = ETH_P_IPV6_BE;
	ip6->version = 6;
	ip6->priority = tos >> 4;
	ip6->flow_lbl[0] = (tos & 0xf) << 4;
	ip6->flow_lbl[1] = 0;
	ip6->flow_lbl[2] = 0;
	ip6->payload_len = udp_len;
	ip6->nexthdr = IPPROTO_UDP;
	ip6->hop_limit = ttl;
	__builtin_memcpy(&ip6->saddr, saddr, sizeof(*saddr));
	__builtin_memcpy(&ip6->daddr, daddr, sizeof(*daddr));
	udp->check = csum_finish_udp(acc);
	udp->source = sport;
	udp->dest = dport;
	p->eth = eth;
	p->ip4 = NULL;
	p->ip6 = ip6;
	p->udp = udp;
	p->family = AF_INET6;
	return 0;
}

/* Rewrite the datagram to saddr:sport -> daddr:dport, sent in family `out`
 * (the addresses' family): in place within a family, translated across.
 * Returns 0 or a drop reason. */
static __always_inline __u32 rewrite_udp(struct xdp_md *ctx, struct pkt *p, __u8 out,
					 const struct relay_addr *saddr,
					 const struct relay_addr *daddr,
					 __be16 sport, __be16 dport)
{
	int to6 = out == AF_INET6;

	if (p->ip4 && !to6) {
		rewrite_udp4(p->ip4, p->udp, saddr->addr[0], daddr->addr[0], sport, dport);
		return 0;
	}
	if (p->ip6 && to6) {
		rewrite_udp6(p->ip6, p->udp, saddr, daddr, sport, dport);
		return 0;
	}
	if (p->ip6)
		return translate_6to4(ctx, p, saddr->addr[0], daddr->addr[0], sport, dport);
	if (p->ip4)
		return translate_4to6(ctx, p, saddr, daddr, sport, dport);
	return STAT_DROP_TRUNCATED;  /* (cannot happen: the caller parsed one) */
}

/* Resolve the next hop of the (already rewritten) packet into `nh`: from this
 * CPU's recent next hops (IPv4 destinations: the cache is keyed by a 32-bit
 * address), else bpf_fib_lookup. Returns 0, or the verdict's counter when the
 * packet cannot be forwarded from here. */
static __always_inline __u32 resolve_next_hop(struct xdp_md *ctx,
					      const struct relay_config *cfg,
					      struct relay_scratch *s, struct pkt *p,
					      struct next_hop *nh)
{
	struct bpf_fib_lookup *fib = &s->fib;
	struct nh_cache_entry *ce = NULL;
	int rc;

	struct iphdr *iph = p->ip4;
	struct ipv6hdr *ip6 = p->ip6;

	if (iph) {
		__u32 slot = (iph->daddr ^ (iph->daddr >> 16)) & (NH_CACHE_SLOTS - 1);

		ce = &s->nh_cache[slot];
		if (ce->daddr == iph->daddr && ce->ingress_ifindex == ctx->ingress_ifindex &&
		    ce->nh.ifindex && ce->nh.generation == cfg->nh_generation) {
			*nh = ce->nh;
			return 0;
		}
		__builtin_memset(fib, 0, sizeof(*fib));
		fib->family = AF_INET;
		fib->tos = iph->tos;
		fib->tot_len = bpf_ntohs(iph->tot_len);
		fib->ipv4_src = iph->saddr;
		fib->ipv4_dst = iph->daddr;
	} else if (ip6) {
		__builtin_memset(fib, 0, sizeof(*fib));
		fib->family = AF_INET6;
		fib->tot_len = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
		__builtin_memcpy(fib->ipv6_src, &ip6->saddr, sizeof(fib->ipv6_src));
		__builtin_memcpy(fib->ipv6_dst, &ip6->daddr, sizeof(fib->ipv6_dst));
	} else {
		return STAT_DROP_FIB_FAIL;  /* (cannot happen: the caller parsed one) */
	}
	fib->l4_protocol = IPPROTO_UDP;
	fib->ifindex = ctx->ingress_ifindex;

	rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return STAT_PASS_NO_NEIGH;
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return STAT_DROP_FIB_FAIL;
	nh->ifindex = fib->ifindex;
	__builtin_memcpy(nh->smac, fib->smac, ETH_ALEN);
	__builtin_memcpy(nh->dmac, fib->dmac, ETH_ALEN);
	nh->generation = cfg->nh_generation;
	if (ce && iph) {
		ce->daddr = iph->daddr;
		ce->ingress_ifindex = ctx->ingress_ifindex;
		ce->nh = *nh;
	}
	return 0;
}

/* Set the MACs from the cached or resolved next hop and send the (already
 * rewritten) packet on its way. `ok` is the counter for a forwarded packet.
 *
 * `learnt` (0: none) is the counter for a packet sent to the flow's own,
 * stale next hop because the kernel has no neighbour entry for the route's
 * next hop (BPF_FIB_LKUP_RET_NO_NEIGH). Only the reply path passes one:
 * see learn_client_hop for why that next hop is right. It is used only when
 * the route leaves by the interface it names (the fib fills in the egress
 * ifindex on NO_NEIGH too), and it is not revalidated, so that every packet
 * asks the fib again and takes the kernel's neighbour once there is one. */
static __always_inline struct verdict send_to_next_hop(struct xdp_md *ctx,
						       const struct relay_config *cfg,
						       struct relay_scratch *s, struct pkt *p,
						       struct next_hop *nh, __u32 ok, __u32 learnt)
{
	struct ethhdr *eth = p->eth;

	if (!nh->ifindex || nh->generation != cfg->nh_generation) {
		__u32 stat = resolve_next_hop(ctx, cfg, s, p, nh);

		if (stat == STAT_PASS_NO_NEIGH) {
			if (!learnt || !nh->ifindex || nh->ifindex != s->fib.ifindex)
				return VERDICT(XDP_PASS, stat);
			ok = learnt;
		} else if (stat) {
			return DROP(stat);
		}
	}
	__builtin_memcpy(eth->h_source, nh->smac, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, nh->dmac, ETH_ALEN);
	if (nh->ifindex == ctx->ingress_ifindex)
		return VERDICT(XDP_TX, ok);
	return VERDICT(bpf_redirect(nh->ifindex, 0), ok);
}

/* The relay's own address on the private side for a transceiver of `family`
 * (all zero when it has none), and its VIP for a client of `family`. */
static __always_inline const struct relay_addr *private_addr_for(const struct relay_config *cfg,
								 __u8 family)
{
	return family == AF_INET6 ? &cfg->private_addr6 : &cfg->private_addr;
}

static __always_inline const struct relay_addr *public_addr_for(const struct relay_config *cfg,
								__u8 family)
{
	return family == AF_INET6 ? &cfg->public_addr6 : &cfg->public_addr;
}

static __always_inline struct verdict forward_to_transceiver(struct xdp_md *ctx,
							     const struct relay_config *cfg,
							     struct relay_scratch *s, struct pkt *p,
							     struct flow *f, __u32 ok)
{
	/* From the flow's own relay-side address: one of private_addrs for an
	 * IPv4 transceiver, private_addr6 for an IPv6 one. */
	__u32 reason = rewrite_udp(ctx, p, f->txr_family, &f->relay_addr,
				   &f->txr_addr, f->relay_port, f->txr_port);

	if (reason)
		return DROP(reason);
	/* No learnt fallback: a client's frame says nothing about the
	 * transceiver's MAC (the control plane primes those neighbours). */
	return send_to_next_hop(ctx, cfg, s, p, &f->nh, ok, 0);
}

/* The next hop back to a new client, as the frame that opens its flow shows
 * it: out of the interface it came in on, from the MAC it was sent to, to
 * the MAC it came from. It goes into the reverse entry already stale (one
 * generation old), so the fib still decides every reply's next hop; it is
 * only the fallback for a next hop the kernel has no neighbour entry for,
 * which would otherwise black-hole the call's first replies (nothing on the
 * relay ARPs for a client: its packets never reach the stack).
 *
 * Why the frame's source MAC is the right one, on-link or not: a client on
 * the public subnet sends its own frames, so h_source is the client; a
 * client behind a router arrives in frames from that router, so h_source is
 * the gateway that reaches the client, i.e. the next hop the fib would
 * name. (With asymmetric routing it is the router the client's packets come
 * through, which reaches it too.) The fallback is taken only when the route
 * to the client leaves by this same interface. Broadcast and multicast MACs
 * (the group bit) are never a next hop: such a frame teaches nothing. */
static __always_inline void learn_client_hop(struct xdp_md *ctx, const struct relay_config *cfg,
					     const struct ethhdr *eth, struct next_hop *nh)
{
	if ((eth->h_source[0] | eth->h_dest[0]) & 1)
		return;
	nh->ifindex = ctx->ingress_ifindex;
	__builtin_memcpy(nh->smac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(nh->dmac, eth->h_source, ETH_ALEN);
	nh->generation = cfg->nh_generation - 1;
}

/* Is this client's source in a blocked prefix? One LPM lookup at the full
 * length of its family. */
static __always_inline int source_blocked(const struct flow_key *fk)
{
	struct source_prefix key = {
		.prefixlen = SOURCE_PREFIX_HDR_BITS + (fk->family == AF_INET6 ? 128 : 32),
		.family = fk->family,
	};

	key.addr = fk->addr;
	return blocked_sources.lookup(&key) != NULL;
}

/* The `rate` key of a client: its IPv4 address, or its IPv6 /64 (one
 * subscriber's link: a host there picks any of 2^64 addresses, so a
 * per-address window would bound nothing). addr[3] marks the /64, so that
 * it never shares a window with an IPv4 address (whose addr[3] is 0). */
static __always_inline void rate_key_of(const struct flow_key *fk, struct relay_addr *key)
{
	*key = fk->addr;
	if (fk->family == AF_INET6) {
		key->addr[2] = 0;
		key->addr[3] = RATE_KEY_IPV6_64;
	}
}

static __always_inline int flow_key_eq(const struct flow_key *a, const struct flow_key *b)
{
	return a->family == b->family && a->port == b->port &&
	       a->addr.addr[0] == b->addr.addr[0] && a->addr.addr[1] == b->addr.addr[1] &&
	       a->addr.addr[2] == b->addr.addr[2] && a->addr.addr[3] == b->addr.addr[3];
}

/* Find USERNAME among the STUN attributes. `msg_end` is the message length
 * including the header, already checked against the packet and STUN_MAX_LEN.
 * Returns 0 with the value's offset and length, or the drop reason. */
static __always_inline __u32 find_username(void *stun, void *data_end, __u32 msg_end,
					   __u32 *value_off, __u32 *value_len)
{
	__u32 off = STUN_HDR_LEN;

	for (int i = 0; i < MAX_STUN_ATTRS; i++) {
		if (off + 4 > msg_end)
			return STAT_DROP_NO_USERNAME;
		__u8 *attr = stun + (off & STUN_OFF_MASK);

		if ((void *)(attr + 4) > data_end)
			return STAT_DROP_TRUNCATED;
		__be16 type = *(__be16 *)attr;
		__u32 len = bpf_ntohs(*(__be16 *)(attr + 2));

		if (off + 4 + len > msg_end)
			return STAT_DROP_NOT_STUN;  /* attribute runs past the message */
		if (type == STUN_ATTR_USERNAME_BE) {
			*value_off = off + 4;
			*value_len = len;
			return 0;
		}
		off += 4 + ((len + 3) & ~3U);
	}
	return STAT_DROP_NO_USERNAME;
}

/* Per-source new-flow window. Returns 0 or STAT_DROP_RATE_LIMITED. */
static __always_inline __u32 rate_check(const struct relay_config *cfg,
					const struct relay_addr *src, __u64 now)
{
	struct rate_window *w;

	if (!cfg->new_flows_per_sec)
		return 0;
	w = rate.lookup((struct relay_addr *)src);
	if (!w) {
		struct rate_window fresh = { .window_start_ns = now, .count = 1 };

		rate.update((struct relay_addr *)src, &fresh);
		return 0;
	}
	if (now - w->window_start_ns >= RATE_WINDOW_NS) {
		w->window_start_ns = now;
		w->count = 1;
		return 0;
	}
	if (w->count >= cfg->new_flows_per_sec)
		return STAT_DROP_RATE_LIMITED;
	__sync_fetch_and_add(&w->count, 1);
	return 0;
}

/* A reverse entry may be taken over when neither direction of its flow has
 * seen a packet for flow_idle_ns (or its forward flow is already gone). */
static __always_inline int reverse_reclaimable(const struct relay_config *cfg,
					       struct reverse_flow *r, const struct reverse_key *rk,
					       __u64 now)
{
	struct flow *f;

	if (!is_idle(r->last_seen_ns, now, cfg->flow_idle_ns))
		return 0;
	f = flows.lookup(&r->client);
	if (f && f->relay_port == rk->relay_port && relay_addr_eq(&f->relay_addr, &rk->addr)) {
		if (!is_idle(f->last_seen_ns, now, cfg->flow_idle_ns))
			return 0;
		flows.delete(&r->client);
	}
	return 1;
}

/* Claim a relay-side private address and port for `rv` by hashed probing
 * with NOEXIST inserts into `reverse`: each probe picks the port and the
 * address (of private_addrs) from one hash. Returns the port (network order)
 * with its address in `*addr`, or 0. */
static __always_inline __be16 allocate_port(const struct relay_config *cfg,
					    const struct relay_addr *base,
					    const struct private_addrs *pa,
					    struct reverse_flow *rv, __u64 mac, __u64 now,
					    struct relay_addr *addr)
{
	__u32 range, seed, naddrs = private_addr_count(pa);

	if (!cfg->port_min || cfg->port_max < cfg->port_min)
		return 0;
	range = (__u32)cfg->port_max - cfg->port_min + 1;
	seed = rv->client.addr.addr[0] ^ rv->client.addr.addr[1] ^ rv->client.addr.addr[2] ^
	       rv->client.addr.addr[3] ^ ((__u32)rv->client.port << 16) ^
	       (__u32)mac ^ (__u32)(mac >> 32) ^ bpf_get_prandom_u32();

	for (int i = 0; i < PORT_ALLOC_TRIES; i++) {
		struct reverse_key rk;
		struct reverse_flow *old;
		__u32 h = mix32(seed + i * 0x9e3779b9U);

		private_addr_at(addr, base, pa, naddrs > 1 ? mix32(h) % naddrs : 0);
		reverse_key_of(&rk, addr, bpf_htons(cfg->port_min + h % range));
		if (reverse.insert(&rk, rv) == 0)
			return rk.relay_port;
		old = reverse.lookup(&rk);
		if (old && reverse_reclaimable(cfg, old, &rk, now)) {
			reverse.delete(&rk);
			if (reverse.insert(&rk, rv) == 0)
				return rk.relay_port;
		}
	}
	return 0;
}

/* An unknown client: the packet must be a STUN Binding Request carrying a
 * valid routing token. On success the flow exists and the packet is sent. */
static __always_inline struct verdict new_flow(struct xdp_md *ctx, const struct relay_config *cfg,
					       struct relay_scratch *s, struct pkt *p, struct cursor *c,
					       struct flow_key *fk, const struct reverse_key *stale,
					       __u64 now)
{
	__u32 payload_len = bpf_ntohs(p->udp->len) - sizeof(struct udphdr);
	void *stun = c->pos;
	struct stun_hdr *sh;
	__u32 value_off = 0, value_len = 0, reason;
	struct relay_token tok = {};
	__u8 *raw = s->token;

	/* First, so that a spoofed private (or otherwise impossible) source
	 * costs no parsing and never reaches the rate windows or the ports. */
	if (source_blocked(fk))
		return DROP(STAT_DROP_BLOCKED_SOURCE);
	if (payload_len < STUN_HDR_LEN)
		return DROP(STAT_DROP_NOT_STUN);
	int stun_len = parse_stunhdr(c, &sh);

	if (stun_len < 0)
		return DROP(STAT_DROP_TRUNCATED);
	if (sh->cookie != STUN_COOKIE_BE || (sh->type & STUN_TYPE_CLASS_BITS_BE) ||
	    (stun_len & 3) || stun_len + STUN_HDR_LEN != payload_len ||
	    payload_len > STUN_MAX_LEN)
		return DROP(STAT_DROP_NOT_STUN);
	if (sh->type != STUN_BINDING_REQ_BE)
		return DROP(STAT_DROP_NOT_BINDING);

	reason = find_username(stun, c->end, payload_len, &value_off, &value_len);
	if (reason)
		return DROP(reason);

	/* The ufrag is the part before ':', and a token is exactly TOKEN_CHARS. */
	if (value_len < TOKEN_CHARS + 1)
		return DROP(STAT_DROP_TOKEN_MALFORMED);
	__u8 *u = stun + (value_off & STUN_OFF_MASK);

	if ((void *)(u + TOKEN_CHARS + 1) > c->end)
		return DROP(STAT_DROP_TRUNCATED);
	if (s->b64_ready != B64_TABLE_READY) {
		b64_table_fill(s->b64_table);
		s->b64_ready = B64_TABLE_READY;
	}
	if (u[TOKEN_CHARS] != ':' || token_b64_decode(u, raw, (const __u8 *)s->b64_table) ||
	    token_parse(raw, &tok))
		return DROP(STAT_DROP_TOKEN_MALFORMED);

	__u32 key_id = tok.key_id;
	struct token_key *key = keys.lookup(&key_id);

	if (!key || !key->active)
		return DROP(STAT_DROP_TOKEN_UNKNOWN_KEY);
	if (!token_mac_ok(raw, key, tok.mac))
		return DROP(STAT_DROP_TOKEN_BAD_MAC);
	if (tok.expiry < (now + cfg->clock_offset_ns) / NS_PER_SEC)
		return DROP(STAT_DROP_TOKEN_EXPIRED);

	__u32 txr_id = tok.transceiver_id;
	struct transceiver *txr = transceivers.lookup(&txr_id);

	if (!txr)
		return DROP(STAT_DROP_TRANSCEIVER_UNKNOWN);
	if (txr->status == TRANSCEIVER_DRAINING)
		return DROP(STAT_DROP_TRANSCEIVER_DRAINING);
	if (txr->status != TRANSCEIVER_ACTIVE)
		return DROP(STAT_DROP_TRANSCEIVER_UNKNOWN);
	if (txr->family != AF_INET && txr->family != AF_INET6)
		return DROP(STAT_DROP_TRANSCEIVER_UNKNOWN);
	/* An IPv6 transceiver needs the relay's private IPv6 address. */
	const struct relay_addr *from = private_addr_for(cfg, txr->family);

	if (!(from->addr[0] | from->addr[1] | from->addr[2] | from->addr[3]))
		return DROP(STAT_DROP_IPV6);

	struct relay_addr rate_key;

	rate_key_of(fk, &rate_key);
	reason = rate_check(cfg, &rate_key, now);
	if (reason)
		return DROP(reason);

	__u64 *made = NULL;

	if (cfg->max_flows_per_token) {
		made = token_flows.lookup(&tok.mac);
		if (made && *made >= cfg->max_flows_per_token)
			return DROP(STAT_DROP_TOKEN_FLOW_CAP);
	}

	struct reverse_flow *rv = &s->reverse;
	struct flow *nf = &s->flow;

	__builtin_memset(rv, 0, sizeof(*rv));
	__builtin_memset(nf, 0, sizeof(*nf));
	rv->client = *fk;
	rv->txr_addr = txr->addr;
	rv->txr_port = tok.port;
	rv->txr_family = txr->family;
	rv->transceiver_id = txr_id;
	rv->last_seen_ns = now;
	learn_client_hop(ctx, cfg, p->eth, &rv->nh);
	__u32 zero = 0;
	struct relay_addr relay_addr = {};
	/* Several private addresses are an IPv4 matter; an IPv6 transceiver is
	 * reached from the one private_addr6. */
	__be16 relay_port = allocate_port(cfg, from,
					  txr->family == AF_INET6 ? NULL : private_addrs.lookup(&zero),
					  rv, tok.mac, now, &relay_addr);

	if (!relay_port)
		return DROP(STAT_DROP_PORT_EXHAUSTED);

	/* This client's previous (idle) flow leaves its address:port behind: free it. */
	if (stale->relay_port &&
	    (stale->relay_port != relay_port || !relay_addr_eq(&stale->addr, &relay_addr))) {
		struct reverse_flow *orv = reverse.lookup((struct reverse_key *)stale);

		if (orv && flow_key_eq(&orv->client, fk))
			reverse.delete((struct reverse_key *)stale);
	}

	nf->txr_addr = txr->addr;
	nf->relay_addr = relay_addr;
	nf->txr_port = tok.port;
	nf->txr_family = txr->family;
	nf->relay_port = relay_port;
	nf->transceiver_id = txr_id;
	nf->token_mac = tok.mac;
	nf->created_ns = now;
	nf->last_seen_ns = now;
	/* Rewrite and resolve first, so that the flow goes in with its next hop
	 * (or none, when this packet cannot be forwarded yet): one map update and
	 * no lookup after it. */
	struct verdict v = forward_to_transceiver(ctx, cfg, s, p, nf,
						  fk->family == AF_INET6 ? STAT_FWD_NEW_FLOW6
									 : STAT_FWD_NEW_FLOW);

	flows.update(fk, nf);

	if (cfg->max_flows_per_token) {
		if (made) {
			__sync_fetch_and_add(made, 1);
		} else {
			__u64 one = 1;

			if (token_flows.insert(&tok.mac, &one)) {
				made = token_flows.lookup(&tok.mac);
				if (made)
					__sync_fetch_and_add(made, 1);
			}
		}
	}

	return v;
}

/* Media telemetry (bpf/media.h) of a client's datagram on its known flow
 * `f`, before it is rewritten. Here, not in media.h, because bcc rewrites
 * map.lookup() calls in this file only. */
static __always_inline void media_from_client(const struct udphdr *udp, void *data_end,
					      struct flow *f)
{
	struct media_pkt mp = {};
	enum media_kind kind = media_classify(udp, data_end, &mp);

	if (kind == MEDIA_RTP) {
		media_rtp(&f->rtp, mp.seq, mp.ts, mp.ssrc);
	} else if (kind == MEDIA_STUN_RESPONSE) {
		consent_response(&f->client_rtt, mp.tid, bpf_ktime_get_ns());
	} else if (kind == MEDIA_STUN_REQUEST) {
		/* The transceiver answers it on the private side, into reverse. */
		struct reverse_key rk;
		struct reverse_flow *r;

		reverse_key_of(&rk, &f->relay_addr, f->relay_port);
		r = reverse.lookup(&rk);
		if (r)
			consent_request(&r->transceiver_rtt, mp.tid, bpf_ktime_get_ns());
	}
}

/* A transceiver's datagram on the reverse entry `r`, before it is rewritten. */
static __always_inline void media_from_transceiver(const struct udphdr *udp, void *data_end,
						   struct reverse_flow *r)
{
	struct media_pkt mp = {};
	enum media_kind kind = media_classify(udp, data_end, &mp);

	if (kind == MEDIA_RTP) {
		media_rtp(&r->rtp, mp.seq, mp.ts, mp.ssrc);
	} else if (kind == MEDIA_STUN_RESPONSE) {
		consent_response(&r->transceiver_rtt, mp.tid, bpf_ktime_get_ns());
	} else if (kind == MEDIA_STUN_REQUEST) {
		/* The client answers it on the public side, into its flow. */
		struct flow *f = flows.lookup(&r->client);

		if (f)
			consent_request(&f->client_rtt, mp.tid, bpf_ktime_get_ns());
	}
}

static __always_inline struct verdict public_side(struct xdp_md *ctx,
						  const struct relay_config *cfg,
						  struct relay_scratch *s, struct pkt *p,
						  struct cursor *c)
{
	struct flow_key fk = {};
	__u64 now = relay_now(s);
	struct reverse_key stale = {};
	struct flow *f;

	if (p->ip6)
		__builtin_memcpy(&fk.addr, &p->ip6->saddr, sizeof(fk.addr));
	else if (p->ip4)
		fk.addr.addr[0] = p->ip4->saddr;
	fk.port = p->udp->source;
	fk.family = p->family;
	f = flows.lookup(&fk);
	if (f) {
		if (!is_idle(f->last_seen_ns, now, cfg->flow_idle_ns)) {
			touch(&f->last_seen_ns, now);
			if (!NO_MEDIA_TELEMETRY)
				media_from_client(p->udp, (void *)(long)ctx->data_end, f);
			return forward_to_transceiver(ctx, cfg, s, p, f,
						      fk.family == AF_INET6 ?
						      STAT_FWD_TO_TRANSCEIVER6 :
						      STAT_FWD_TO_TRANSCEIVER);
		}
		reverse_key_of(&stale, &f->relay_addr, f->relay_port);
	}
	return new_flow(ctx, cfg, s, p, c, &fk, &stale, now);
}

/* Does the datagram come from the reverse entry's transceiver address:port? */
static __always_inline int from_transceiver(const struct pkt *p, const struct reverse_flow *r)
{
	/* (0: an entry from before dual stack, when every transceiver was IPv4) */
	__u8 family = r->txr_family == AF_INET6 ? AF_INET6 : AF_INET;

	if (p->udp->source != r->txr_port || p->family != family)
		return 0;
	if (p->ip4)
		return p->ip4->saddr == r->txr_addr.addr[0];
	if (!p->ip6)
		return 0;
	const __be32 *a = p->ip6->saddr.in6_u.u6_addr32;

	return a[0] == r->txr_addr.addr[0] && a[1] == r->txr_addr.addr[1] &&
	       a[2] == r->txr_addr.addr[2] && a[3] == r->txr_addr.addr[3];
}

static __always_inline struct verdict private_side(struct xdp_md *ctx,
						   const struct relay_config *cfg,
						   struct relay_scratch *s, struct pkt *p)
{
	struct reverse_key rk;
	struct reverse_flow *r;

	if (p->ip6) {
		struct relay_addr daddr;

		__builtin_memcpy(&daddr, &p->ip6->daddr, sizeof(daddr));
		reverse_key_of(&rk, &daddr, p->udp->dest);
	} else {
		struct relay_addr daddr = { .addr = { p->ip4 ? p->ip4->daddr : 0 } };

		reverse_key_of(&rk, &daddr, p->udp->dest);
	}
	r = reverse.lookup(&rk);

	if (!r)
		return DROP(STAT_DROP_NO_REVERSE);
	if (!from_transceiver(p, r))
		return DROP(STAT_DROP_SPOOFED_SOURCE);
	touch(&r->last_seen_ns, relay_now(s));
	if (!NO_MEDIA_TELEMETRY)
		media_from_transceiver(p->udp, (void *)(long)ctx->data_end, r);

	__u8 family = r->client.family == AF_INET6 ? AF_INET6 : AF_INET;
	__u32 reason = rewrite_udp(ctx, p, family, public_addr_for(cfg, family), &r->client.addr,
				   cfg->public_port, r->client.port);

	if (reason)
		return DROP(reason);
	if (family == AF_INET6)
		return send_to_next_hop(ctx, cfg, s, p, &r->nh, STAT_FWD_TO_CLIENT6,
					STAT_FWD_TO_CLIENT6_LEARNT_NH);
	return send_to_next_hop(ctx, cfg, s, p, &r->nh, STAT_FWD_TO_CLIENT,
				STAT_FWD_TO_CLIENT_LEARNT_NH);
}

static __always_inline int addr6_eq(const struct in6_addr *a, const struct relay_addr *b)
{
	return a->in6_u.u6_addr32[0] == b->addr[0] && a->in6_u.u6_addr32[1] == b->addr[1] &&
	       a->in6_u.u6_addr32[2] == b->addr[2] && a->in6_u.u6_addr32[3] == b->addr[3];
}

static __always_inline int addr6_set(const struct relay_addr *a)
{
	return (a->addr[0] | a->addr[1] | a->addr[2] | a->addr[3]) != 0;
}

/* Each side only from its own interface (the loader writes both
 * ifindexes): Linux takes a packet for any local address on any
 * interface, so the destination alone does not say where it came from,
 * and a transceiver's reply forged on the public side would otherwise
 * be delivered into a live client's flow. First, so it touches nothing.
 * Returns 0 or the drop reason. */
static __always_inline __u32 wrong_ingress(struct xdp_md *ctx, const struct relay_config *cfg,
					   int public)
{
	if (public && ctx->ingress_ifindex != cfg->public_ifindex)
		return STAT_DROP_INGRESS_NOT_PUBLIC;
	if (!public && ctx->ingress_ifindex != cfg->private_ifindex)
		return STAT_DROP_INGRESS_NOT_PRIVATE;
	return 0;
}

/* Which side a UDP datagram to one of the relay's addresses is for, in
 * `*public`: clients on public_port of a VIP, transceivers on a relay port
 * of a private address. Returns 0, STAT_PASS_NOT_RELAY (neither: the stack
 * takes it) or wrong_ingress's drop reason. One rule for both families. */
static __always_inline __u32 relay_side(struct xdp_md *ctx, const struct relay_config *cfg,
					const struct udphdr *udp, int to_public, int to_private,
					int *public)
{
	__u16 dport = bpf_ntohs(udp->dest);
	int private = to_private && dport >= cfg->port_min && dport <= cfg->port_max;

	*public = to_public && udp->dest == cfg->public_port;
	if (!*public && !private)
		return STAT_PASS_NOT_RELAY;
	return wrong_ingress(ctx, cfg, *public);
}

/* IPv6: UDP to public_addr6:public_port (clients) or to
 * private_addr6:[port_min, port_max] (IPv6 transceivers). The relay walks
 * no extension header: one in front of UDP to a relay address is dropped
 * (its port is unknown), and other IPv6 (ICMPv6, neighbour discovery, TCP)
 * passes. */
static __always_inline struct verdict relay6(struct xdp_md *ctx, const struct relay_config *cfg,
					     struct relay_scratch *s, struct cursor *c,
					     struct ethhdr *eth)
{
	struct ipv6hdr *ip6;
	struct udphdr *udp;
	int nexthdr = parse_ipv6hdr(c, &ip6);

	if (nexthdr < 0)
		return VERDICT(XDP_PASS, STAT_PASS_NOT_RELAY);  /* cut short: destination unknown */

	int to_public = addr6_set(&cfg->public_addr6) && addr6_eq(&ip6->daddr, &cfg->public_addr6);
	int to_private = addr6_set(&cfg->private_addr6) &&
			 addr6_eq(&ip6->daddr, &cfg->private_addr6);

	if (!to_public && !to_private)
		return VERDICT(XDP_PASS, STAT_PASS_NOT_RELAY);
	if (nexthdr != IPPROTO_UDP) {
		if (ipv6_ext_hdr(nexthdr))
			return DROP(STAT_DROP_IPV6_EXT_HDR);
		return VERDICT(XDP_PASS, STAT_PASS_NOT_RELAY);
	}

	int udp_len = parse_udphdr(c, &udp);

	if (udp_len < 0)
		return DROP(STAT_DROP_TRUNCATED);

	int public = 0;
	__u32 reason = relay_side(ctx, cfg, udp, to_public, to_private, &public);

	if (reason == STAT_PASS_NOT_RELAY)
		return VERDICT(XDP_PASS, STAT_PASS_NOT_RELAY);
	if (reason)
		return DROP(reason);

	/* As for IPv4: the frame may be padded past the packet, never cut. */
	__u32 payload_len = bpf_ntohs(ip6->payload_len);

	if (ip6->version != 6 || payload_len < sizeof(*udp) ||
	    (void *)(ip6 + 1) + payload_len > c->end || udp_len != payload_len)
		return DROP(STAT_DROP_BAD_LENGTH);
	if (!udp->check)
		return DROP(STAT_DROP_UDP6_ZERO_CSUM);

	struct pkt p = { .eth = eth, .ip6 = ip6, .udp = udp, .family = AF_INET6 };

	if (public)
		return public_side(ctx, cfg, s, &p, c);
	return private_side(ctx, cfg, s, &p);
}

static __always_inline struct verdict relay(struct xdp_md *ctx)
{
	struct cursor c = { .pos = (void *)(long)ctx->data, .end = (void *)(long)ctx->data_end };
	__u32 zero = 0;
	struct relay_config *cfg = config.lookup(&zero);
	struct relay_scratch *s = scratch.lookup(&zero);
	struct ethhdr *eth;
	struct iphdr *iph;
	struct udphdr *udp;
	int proto;

	if (!cfg || !cfg->public_port || !s)  /* (arrays never miss index 0) */
		return VERDICT(XDP_PASS, STAT_PASS_UNCONFIGURED);

	proto = parse_ethhdr(&c, &eth);
	if (proto == ETH_P_IPV6_BE)
		return relay6(ctx, cfg, s, &c, eth);
	if (proto != ETH_P_IP_BE || parse_iphdr(&c, &iph) != IPPROTO_UDP)
		return VERDICT(XDP_PASS, STAT_PASS_NOT_RELAY);

	int to_public = iph->daddr == cfg->public_addr.addr[0];
	int to_private = iph->daddr == cfg->private_addr.addr[0];

	if (!to_public && !to_private)
		to_private = is_extra_private_addr(private_addrs.lookup(&zero), iph->daddr);

	if (!to_public && !to_private)
		return VERDICT(XDP_PASS, STAT_PASS_NOT_RELAY);
	/* A later fragment has no UDP header, so its port is unknown. The stack
	 * cannot reassemble it either: the first fragment is dropped below. */
	if (iph->frag_off & IP_OFFSET_BE)
		return VERDICT(XDP_PASS, STAT_PASS_NOT_RELAY);
	if (iph->version != 4 || iph->ihl < 5)
		return DROP(STAT_DROP_BAD_LENGTH);

	/* With options the UDP header starts later; find it to learn the port. */
	c.pos = (void *)iph + ((iph->ihl & 0xf) << 2);
	int udp_len = parse_udphdr(&c, &udp);

	if (udp_len < 0)
		return DROP(STAT_DROP_TRUNCATED);

	int public = 0;
	__u32 reason = relay_side(ctx, cfg, udp, to_public, to_private, &public);

	if (reason == STAT_PASS_NOT_RELAY)
		return VERDICT(XDP_PASS, STAT_PASS_NOT_RELAY);
	if (reason)
		return DROP(reason);
	if (iph->ihl != 5)
		return DROP(STAT_DROP_IP_OPTIONS);
	if (iph->frag_off & IP_MF_BE)
		return DROP(STAT_DROP_FRAGMENT);

	/* Ethernet may pad short frames, so the IP packet may end before the
	 * frame does, but never after it. */
	__u32 tot_len = bpf_ntohs(iph->tot_len);

	if (tot_len < sizeof(*iph) + sizeof(*udp) || (void *)iph + tot_len > c.end ||
	    udp_len != tot_len - sizeof(*iph))
		return DROP(STAT_DROP_BAD_LENGTH);

	/* No options: parse the UDP header again at its fixed offset, so that the
	 * verifier sees constant offsets from here on. Lengths below come from
	 * udp->len, which ends before any Ethernet padding. */
	c.pos = iph + 1;
	if (parse_udphdr(&c, &udp) < 0)
		return DROP(STAT_DROP_TRUNCATED);

	struct pkt p = { .eth = eth, .ip4 = iph, .udp = udp, .family = AF_INET };

	if (public)
		return public_side(ctx, cfg, s, &p, &c);
	return private_side(ctx, cfg, s, &p);
}

int xdp_relay(struct xdp_md *ctx)
{
	struct verdict v;

	count(STAT_RX_TOTAL);
	v = relay(ctx);
	count(v.stat);
	return v.action;
}
