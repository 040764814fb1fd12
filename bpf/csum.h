/* SPDX-License-Identifier: GPL-2.0-only */
/* Incremental Internet checksum updates (RFC 1624, eqn. 3):
 *     HC' = ~(~HC + ~m + m')
 * Start an accumulator from the old checksum, add each replaced field, then
 * fold. All values stay in network order: the one's-complement sum does not
 * care about byte order as long as every term uses the same one. */
#ifndef VOXRELAY_CSUM_H
#define VOXRELAY_CSUM_H

static __always_inline __u32 csum_start(__sum16 check)
{
	return (__u16)~check;
}

/* A 32-bit field (an IPv4 address) changes from `from` to `to`. */
static __always_inline __u32 csum_replace32(__u32 acc, __be32 from, __be32 to)
{
	__u32 nf = ~from;

	return acc + (nf & 0xffff) + (nf >> 16) + (to & 0xffff) + (to >> 16);
}

/* A 16-bit field (a port) changes from `from` to `to`. */
static __always_inline __u32 csum_replace16(__u32 acc, __be16 from, __be16 to)
{
	return acc + (__u16)~from + to;
}

/* A 32-bit word enters (or leaves) the sum: a translated header's address
 * that has no counterpart in the other family's pseudo-header. */
static __always_inline __u32 csum_add32(__u32 acc, __be32 v)
{
	return acc + (v & 0xffff) + (v >> 16);
}

static __always_inline __u32 csum_sub32(__u32 acc, __be32 v)
{
	return csum_add32(acc, ~v);
}

/* An address of `words` 32-bit words (1: IPv4, 4: IPv6) enters or leaves the
 * sum. Translating between families needs only this: the UDP pseudo-headers
 * of IPv4 (addresses, protocol, UDP length) and IPv6 (addresses, length,
 * next header) sum to the same thing but for the addresses. */
static __always_inline __u32 csum_add_words(__u32 acc, const __be32 *a, int words)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		if (i < words)
			acc = csum_add32(acc, a[i]);
	return acc;
}

static __always_inline __u32 csum_sub_words(__u32 acc, const __be32 *a, int words)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		if (i < words)
			acc = csum_sub32(acc, a[i]);
	return acc;
}

/* Fold the accumulator into the new checksum field. At most some forty
 * 16-bit terms (two IPv6 addresses out, two in, two ports) cannot overflow
 * 32 bits, so two folds always suffice. */
static __always_inline __sum16 csum_finish(__u32 acc)
{
	acc = (acc & 0xffff) + (acc >> 16);
	acc = (acc & 0xffff) + (acc >> 16);
	return (__sum16)~acc;
}

/* UDP sends a computed 0 as 0xffff: over IPv4 0 means "no checksum", and
 * over IPv6 0 is not allowed (RFC 8200 section 8.1). */
static __always_inline __sum16 csum_finish_udp(__u32 acc)
{
	__sum16 c = csum_finish(acc);

	return c ? c : 0xffff;
}

/* The checksum of a fresh 20-byte IPv4 header (its check field 0), from
 * scratch: a translated packet has no old header to update from. */
static __always_inline __sum16 csum_ipv4_header(const void *iph)
{
	const __u16 *w = iph;
	__u32 acc = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		acc += w[i];
	return csum_finish(acc);
}

#endif
