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

/* Fold the accumulator into the new checksum field. A handful of 16-bit terms
 * cannot overflow 32 bits, so two folds always suffice. */
static __always_inline __sum16 csum_finish(__u32 acc)
{
	acc = (acc & 0xffff) + (acc >> 16);
	acc = (acc & 0xffff) + (acc >> 16);
	return (__sum16)~acc;
}

/* UDP over IPv4 sends a computed 0 as 0xffff: 0 means "no checksum". */
static __always_inline __sum16 csum_finish_udp(__u32 acc)
{
	__sum16 c = csum_finish(acc);

	return c ? c : 0xffff;
}

#endif
