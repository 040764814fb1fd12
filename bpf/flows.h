/* SPDX-License-Identifier: GPL-2.0-only */
/* The relay's private addresses and the reverse keys built from them.
 *
 * A live flow holds one relay-side (private address, port): the transceiver
 * answers to it, and `reverse` maps it back to the client. One address gives
 * at most one port range of live flows (< 65,536); the relay spreads new
 * flows over every address in `private_addrs` (the config's private_addr
 * first), so a relay with 16 addresses holds a million. Kept apart from
 * relay.c so that the packet path there only calls these hooks. */
#ifndef VOXRELAY_FLOWS_H
#define VOXRELAY_FLOWS_H

/* How many private addresses new flows may take: at least the config's own. */
static __always_inline __u32 private_addr_count(const struct private_addrs *pa)
{
	__u32 n = pa ? pa->count : 0;

	if (n < 1)
		return 1;
	return n > MAX_PRIVATE_ADDRS ? MAX_PRIVATE_ADDRS : n;
}

/* The private address new flows take in slot `i`, into `out`: `base` (the
 * config's private_addr, or private_addr6 for an IPv6 transceiver, which has
 * no `pa`) for slot 0 or without the map. */
static __always_inline void private_addr_at(struct relay_addr *out, const struct relay_addr *base,
					    const struct private_addrs *pa, __u32 i)
{
	if (!pa || i == 0 || i >= pa->count) {
		*out = *base;
		return;
	}
	/* The mask is the verifier's bound; the empty asm keeps clang from
	 * dropping it as implied by a compare the verifier does not track. */
	asm volatile("" : "+r"(i));
	*out = pa->addr[i & (MAX_PRIVATE_ADDRS - 1)];
}

static __always_inline int relay_addr_eq(const struct relay_addr *a, const struct relay_addr *b)
{
	return a->addr[0] == b->addr[0] && a->addr[1] == b->addr[1] &&
	       a->addr[2] == b->addr[2] && a->addr[3] == b->addr[3];
}

/* Is `daddr` one of the relay's private addresses? The config's is tested by
 * the caller first; this walks the others (bounded by MAX_PRIVATE_ADDRS). */
static __always_inline int is_extra_private_addr(const struct private_addrs *pa, __be32 daddr)
{
	if (!pa || pa->count < 2)
		return 0;
	for (__u32 i = 1; i < MAX_PRIVATE_ADDRS; i++) {
		if (i >= pa->count)
			return 0;
		if (pa->addr[i].addr[0] == daddr)
			return 1;
	}
	return 0;
}

/* A `reverse` key: the relay-side address (16 bytes, either family) and port. */
static __always_inline void reverse_key_of(struct reverse_key *rk, const struct relay_addr *addr,
					   __be16 port)
{
	__builtin_memset(rk, 0, sizeof(*rk));
	rk->addr = *addr;
	rk->relay_port = port;
}

#endif
