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

/* Resolve the next hop of the (already rewritten) packet into `nh`: from this
 * CPU's recent next hops, else bpf_fib_lookup. Returns 0, or the verdict's
 * counter when the packet cannot be forwarded from here. */
static __always_inline __u32 resolve_next_hop(struct xdp_md *ctx,
					      const struct relay_config *cfg,
					      struct relay_scratch *s, struct iphdr *iph,
					      struct next_hop *nh)
{
	__u32 slot = (iph->daddr ^ (iph->daddr >> 16)) & (NH_CACHE_SLOTS - 1);
	struct nh_cache_entry *ce = &s->nh_cache[slot];
	struct bpf_fib_lookup *fib = &s->fib;
	int rc;

	if (ce->daddr == iph->daddr && ce->ingress_ifindex == ctx->ingress_ifindex &&
	    ce->nh.ifindex && ce->nh.generation == cfg->nh_generation) {
		*nh = ce->nh;
		return 0;
	}
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET;
	fib->tos = iph->tos;
	fib->l4_protocol = IPPROTO_UDP;
	fib->tot_len = bpf_ntohs(iph->tot_len);
	fib->ipv4_src = iph->saddr;
	fib->ipv4_dst = iph->daddr;
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
	ce->daddr = iph->daddr;
	ce->ingress_ifindex = ctx->ingress_ifindex;
	ce->nh = *nh;
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
						       struct relay_scratch *s,
						       struct ethhdr *eth, struct iphdr *iph,
						       struct next_hop *nh, __u32 ok, __u32 learnt)
{
	if (!nh->ifindex || nh->generation != cfg->nh_generation) {
		__u32 stat = resolve_next_hop(ctx, cfg, s, iph, nh);

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

static __always_inline struct verdict forward_to_transceiver(struct xdp_md *ctx,
							     const struct relay_config *cfg,
							     struct relay_scratch *s,
							     struct ethhdr *eth, struct iphdr *iph,
							     struct udphdr *udp, struct flow *f,
							     __u32 ok)
{
	rewrite_udp4(iph, udp, f->relay_addr.addr[0], f->txr_addr.addr[0],
		     f->relay_port, f->txr_port);
	/* No learnt fallback: a client's frame says nothing about the
	 * transceiver's MAC (the control plane primes those neighbours). */
	return send_to_next_hop(ctx, cfg, s, eth, iph, &f->nh, ok, 0);
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

/* Is this (IPv4) source in a blocked prefix? One LPM lookup at full length. */
static __always_inline int source_blocked(__be32 saddr)
{
	struct source_prefix key = {
		.prefixlen = SOURCE_PREFIX_HDR_BITS + 32,
		.family = AF_INET,
	};

	key.addr.addr[0] = saddr;
	return blocked_sources.lookup(&key) != NULL;
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
	if (f && f->relay_port == rk->relay_port && f->relay_addr.addr[0] == rk->addr.addr[0]) {
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
					    const struct private_addrs *pa,
					    struct reverse_flow *rv, __u64 mac, __u64 now,
					    __be32 *addr)
{
	__u32 range, seed, naddrs = private_addr_count(pa);

	if (!cfg->port_min || cfg->port_max < cfg->port_min)
		return 0;
	range = (__u32)cfg->port_max - cfg->port_min + 1;
	seed = rv->client.addr.addr[0] ^ ((__u32)rv->client.port << 16) ^
	       (__u32)mac ^ (__u32)(mac >> 32) ^ bpf_get_prandom_u32();

	for (int i = 0; i < PORT_ALLOC_TRIES; i++) {
		struct reverse_key rk;
		struct reverse_flow *old;
		__u32 h = mix32(seed + i * 0x9e3779b9U);

		reverse_key_of(&rk, private_addr_at(cfg, pa, naddrs > 1 ? mix32(h) % naddrs : 0),
			       bpf_htons(cfg->port_min + h % range));
		*addr = rk.addr.addr[0];
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
					       struct relay_scratch *s, struct ethhdr *eth, struct iphdr *iph,
					       struct udphdr *udp, struct cursor *c,
					       struct flow_key *fk, const struct reverse_key *stale,
					       __u64 now)
{
	__u32 payload_len = bpf_ntohs(udp->len) - sizeof(*udp);
	void *stun = c->pos;
	struct stun_hdr *sh;
	__u32 value_off = 0, value_len = 0, reason;
	struct relay_token tok = {};
	__u8 *raw = s->token;

	/* First, so that a spoofed private (or otherwise impossible) source
	 * costs no parsing and never reaches the rate windows or the ports. */
	if (source_blocked(iph->saddr))
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
	if (txr->family != AF_INET)
		return DROP(STAT_DROP_IPV6);

	reason = rate_check(cfg, &fk->addr, now);
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
	rv->transceiver_id = txr_id;
	rv->last_seen_ns = now;
	learn_client_hop(ctx, cfg, eth, &rv->nh);
	__u32 zero = 0;
	__be32 relay_addr = 0;
	__be16 relay_port = allocate_port(cfg, private_addrs.lookup(&zero), rv, tok.mac, now,
					  &relay_addr);

	if (!relay_port)
		return DROP(STAT_DROP_PORT_EXHAUSTED);

	/* This client's previous (idle) flow leaves its address:port behind: free it. */
	if (stale->relay_port &&
	    (stale->relay_port != relay_port || stale->addr.addr[0] != relay_addr)) {
		struct reverse_flow *orv = reverse.lookup((struct reverse_key *)stale);

		if (orv && orv->client.addr.addr[0] == fk->addr.addr[0] &&
		    orv->client.port == fk->port)
			reverse.delete((struct reverse_key *)stale);
	}

	nf->txr_addr = txr->addr;
	nf->relay_addr.addr[0] = relay_addr;
	nf->txr_port = tok.port;
	nf->relay_port = relay_port;
	nf->transceiver_id = txr_id;
	nf->token_mac = tok.mac;
	nf->created_ns = now;
	nf->last_seen_ns = now;
	/* Rewrite and resolve first, so that the flow goes in with its next hop
	 * (or none, when this packet cannot be forwarded yet): one map update and
	 * no lookup after it. */
	struct verdict v = forward_to_transceiver(ctx, cfg, s, eth, iph, udp, nf,
						  STAT_FWD_NEW_FLOW);

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

static __always_inline struct verdict public_side(struct xdp_md *ctx,
						  const struct relay_config *cfg,
						  struct relay_scratch *s, struct ethhdr *eth, struct iphdr *iph,
						  struct udphdr *udp, struct cursor *c)
{
	struct flow_key fk = {};
	__u64 now = relay_now(s);
	struct reverse_key stale = {};
	struct flow *f;

	fk.addr.addr[0] = iph->saddr;
	fk.port = udp->source;
	fk.family = AF_INET;
	f = flows.lookup(&fk);
	if (f) {
		if (!is_idle(f->last_seen_ns, now, cfg->flow_idle_ns)) {
			touch(&f->last_seen_ns, now);
			return forward_to_transceiver(ctx, cfg, s, eth, iph, udp, f,
						      STAT_FWD_TO_TRANSCEIVER);
		}
		reverse_key_of(&stale, f->relay_addr.addr[0], f->relay_port);
	}
	return new_flow(ctx, cfg, s, eth, iph, udp, c, &fk, &stale, now);
}

static __always_inline struct verdict private_side(struct xdp_md *ctx,
						   const struct relay_config *cfg,
						   struct relay_scratch *s, struct ethhdr *eth, struct iphdr *iph,
						   struct udphdr *udp)
{
	struct reverse_key rk;
	struct reverse_flow *r;

	reverse_key_of(&rk, iph->daddr, udp->dest);
	r = reverse.lookup(&rk);

	if (!r)
		return DROP(STAT_DROP_NO_REVERSE);
	if (iph->saddr != r->txr_addr.addr[0] || udp->source != r->txr_port)
		return DROP(STAT_DROP_SPOOFED_SOURCE);
	touch(&r->last_seen_ns, relay_now(s));
	rewrite_udp4(iph, udp, cfg->public_addr.addr[0], r->client.addr.addr[0],
		     cfg->public_port, r->client.port);
	return send_to_next_hop(ctx, cfg, s, eth, iph, &r->nh, STAT_FWD_TO_CLIENT,
				STAT_FWD_TO_CLIENT_LEARNT_NH);
}

static __always_inline int addr6_eq(const struct in6_addr *a, const struct relay_addr *b)
{
	return a->in6_u.u6_addr32[0] == b->addr[0] && a->in6_u.u6_addr32[1] == b->addr[1] &&
	       a->in6_u.u6_addr32[2] == b->addr[2] && a->in6_u.u6_addr32[3] == b->addr[3];
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
	if (proto == ETH_P_IPV6_BE) {
		struct ipv6hdr *ip6h;

		/* Layouts carry IPv6; the path does not yet. Only IPv6 aimed at a
		 * configured IPv6 relay address is ours to drop. */
		if (parse_ipv6hdr(&c, &ip6h) == IPPROTO_UDP && cfg->family == AF_INET6 &&
		    (addr6_eq(&ip6h->daddr, &cfg->public_addr) ||
		     addr6_eq(&ip6h->daddr, &cfg->private_addr)))
			return DROP(STAT_DROP_IPV6);
		return VERDICT(XDP_PASS, STAT_PASS_NOT_RELAY);
	}
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

	__u16 dport = bpf_ntohs(udp->dest);
	int public = to_public && udp->dest == cfg->public_port;
	int private = to_private && dport >= cfg->port_min && dport <= cfg->port_max;

	if (!public && !private)
		return VERDICT(XDP_PASS, STAT_PASS_NOT_RELAY);
	/* Each side only from its own interface (the loader writes both
	 * ifindexes): Linux takes a packet for any local address on any
	 * interface, so the destination alone does not say where it came from,
	 * and a transceiver's reply forged on the public side would otherwise
	 * be delivered into a live client's flow. First, so it touches nothing. */
	if (public && ctx->ingress_ifindex != cfg->public_ifindex)
		return DROP(STAT_DROP_INGRESS_NOT_PUBLIC);
	if (!public && ctx->ingress_ifindex != cfg->private_ifindex)
		return DROP(STAT_DROP_INGRESS_NOT_PRIVATE);
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

	if (public)
		return public_side(ctx, cfg, s, eth, iph, udp, &c);
	return private_side(ctx, cfg, s, eth, iph, udp);
}

int xdp_relay(struct xdp_md *ctx)
{
	struct verdict v;

	count(STAT_RX_TOTAL);
	v = relay(ctx);
	count(v.stat);
	return v.action;
}
