/* SPDX-License-Identifier: GPL-2.0-only */
/* Bounds-checked cursor helpers for the relay's headers.
 *
 * Each helper checks that the whole header lies inside the packet before it
 * hands out a pointer, advances the cursor past it, and returns the next
 * protocol (or the header's own length field where that is what the caller
 * needs), or -1 when the header runs past data_end. Callers must not touch a
 * header they did not get from one of these helpers (or check themselves). */
#ifndef VOXRELAY_PARSING_H
#define VOXRELAY_PARSING_H

struct cursor {
	void *pos;
	void *end;
};

/* STUN message header (RFC 8489 section 5). */
struct stun_hdr {
	__be16 type;
	__be16 len;             /* attributes only, a multiple of 4 */
	__be32 cookie;
	__u8 tid[12];
};

/* Returns the ethertype (network order) or -1. */
static __always_inline int parse_ethhdr(struct cursor *c, struct ethhdr **eth)
{
	struct ethhdr *h = c->pos;

	if ((void *)(h + 1) > c->end)
		return -1;
	c->pos = h + 1;
	*eth = h;
	return h->h_proto;
}

/* The fixed 20 bytes of an IPv4 header; options are the caller's business
 * (the relay drops them). Returns the IP protocol or -1. */
static __always_inline int parse_iphdr(struct cursor *c, struct iphdr **iph)
{
	struct iphdr *h = c->pos;

	if ((void *)(h + 1) > c->end)
		return -1;
	c->pos = h + 1;
	*iph = h;
	return h->protocol;
}

/* The fixed 40 bytes of an IPv6 header; extension headers are the caller's
 * business (the relay does not walk them: ipv6_ext_hdr). Returns the next
 * header or -1. */
static __always_inline int parse_ipv6hdr(struct cursor *c, struct ipv6hdr **ip6h)
{
	struct ipv6hdr *h = c->pos;

	if ((void *)(h + 1) > c->end)
		return -1;
	c->pos = h + 1;
	*ip6h = h;
	return h->nexthdr;
}

/* Is `nexthdr` an IPv6 extension header (RFC 8200 section 4, and the
 * IANA list of them), i.e. something in front of the transport header?
 * ESP (50) is not in this list: what follows it is encrypted, so it is a
 * transport of its own as far as the relay is concerned. */
static __always_inline int ipv6_ext_hdr(int nexthdr)
{
	switch (nexthdr) {
	case 0:         /* Hop-by-Hop Options */
	case 43:        /* Routing */
	case 44:        /* Fragment */
	case 51:        /* Authentication Header */
	case 60:        /* Destination Options */
	case 135:       /* Mobility */
	case 139:       /* HIP */
	case 140:       /* Shim6 */
	case 253:       /* experimentation (RFC 3692) */
	case 254:
		return 1;
	}
	return 0;
}

/* The UDP header at the cursor. Returns the UDP length field (host order)
 * or -1. */
static __always_inline int parse_udphdr(struct cursor *c, struct udphdr **udp)
{
	struct udphdr *h = c->pos;

	if ((void *)(h + 1) > c->end)
		return -1;
	c->pos = h + 1;
	*udp = h;
	return bpf_ntohs(h->len);
}

/* The STUN header at the cursor. Returns the message length (host order,
 * attributes only) or -1. */
static __always_inline int parse_stunhdr(struct cursor *c, struct stun_hdr **sh)
{
	struct stun_hdr *h = c->pos;

	if ((void *)(h + 1) > c->end)
		return -1;
	c->pos = h + 1;
	*sh = h;
	return bpf_ntohs(h->len);
}

#endif
