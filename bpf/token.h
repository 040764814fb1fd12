/* SPDX-License-Identifier: GPL-2.0-only */
/* The routing token, kernel half: decode and verify the server ufrag.
 *
 * The other half is voxrelay/token.py (mint, decode, verify in Python). The
 * two must agree byte for byte; tests/unit/test_token_kernel.py mints in
 * Python and verifies here. Layout, 24 bytes, then standard base64 without
 * padding (32 ICE chars):
 *
 *     0 version(1) 1 key_id(1) 2 transceiver_id(4, BE) 6 port(2, BE)
 *     8 expiry(4, BE, unix s) 12 nonce(4) 16 mac(8, LE u64)
 *
 * mac = SipHash-2-4(keys[key_id], bytes 0..15). Checks run in the same order
 * as token.py's verify(): shape and version, key id, MAC, expiry. */
#ifndef VOXRELAY_TOKEN_H
#define VOXRELAY_TOKEN_H

#define TOKEN_VERSION 1
#define TOKEN_BYTES 24
#define TOKEN_BODY_BYTES 16

struct relay_token {
	__u64 mac;
	__u32 transceiver_id;   /* host order */
	__u32 expiry;           /* host order, unix seconds */
	__be16 port;            /* network order, ready for the UDP header */
	__u8 version;
	__u8 key_id;
};

/* Base64 by table: B64_INVALID for a character outside the alphabet (which
 * includes '=' and the ':' that ends a ufrag), else its 6-bit value. The
 * table lives in per-CPU memory the caller owns (the relay's scratch) and is
 * filled once per CPU with b64_table_fill: bcc has no read-only data section,
 * and a branch-free range test per character (the former decoder) took ~2,400
 * instructions per token against ~200 for the table. No branch per
 * character either way, so the verifier walks one path through a token. */
#define B64_INVALID 0x40
#define B64_TABLE_WORDS 32      /* 256 one-byte entries */
#define B64_TABLE_READY 0x6236347461626c65ULL  /* "b64table": set after the fill */

static __always_inline void b64_table_fill(__u64 *w)
{
#pragma unroll
	for (int i = 0; i < B64_TABLE_WORDS; i++)
		w[i] = 0x4040404040404040ULL;   /* every byte B64_INVALID... */
	/* ...but '+' (43), '/' (47), '0'-'9', 'A'-'Z', 'a'-'z', little-endian
	 * bytes (generated from the alphabet; token.py's is the reference). */
	w[5] = 0x3f4040403e404040ULL;
	w[6] = 0x3b3a393837363534ULL;
	w[7] = 0x4040404040403d3cULL;
	w[8] = 0x0605040302010040ULL;
	w[9] = 0x0e0d0c0b0a090807ULL;
	w[10] = 0x161514131211100fULL;
	w[11] = 0x4040404040191817ULL;
	w[12] = 0x201f1e1d1c1b1a40ULL;
	w[13] = 0x2827262524232221ULL;
	w[14] = 0x302f2e2d2c2b2a29ULL;
	w[15] = 0x4040404040333231ULL;
}

/* Decode TOKEN_CHARS characters at `p` into `out` with a filled `table`. The
 * caller has checked that p + TOKEN_CHARS lies inside the packet. Returns 0
 * or -1. */
static __always_inline int token_b64_decode(const __u8 *p, __u8 *out, const __u8 *table)
{
	__u32 bad = 0;

#pragma unroll
	for (int g = 0; g < TOKEN_CHARS / 4; g++) {
		__u32 a = table[p[4 * g]], b = table[p[4 * g + 1]];
		__u32 c = table[p[4 * g + 2]], d = table[p[4 * g + 3]];
		__u32 v = (a << 18) | (b << 12) | (c << 6) | d;

		bad |= a | b | c | d;
		out[3 * g] = v >> 16;
		out[3 * g + 1] = v >> 8;
		out[3 * g + 2] = v;
	}
	return (bad & B64_INVALID) ? -1 : 0;
}

static __always_inline __u64 le64(const __u8 *b)
{
	return (__u64)b[0] | ((__u64)b[1] << 8) | ((__u64)b[2] << 16) |
	       ((__u64)b[3] << 24) | ((__u64)b[4] << 32) | ((__u64)b[5] << 40) |
	       ((__u64)b[6] << 48) | ((__u64)b[7] << 56);
}

static __always_inline __u32 be32(const __u8 *b)
{
	return ((__u32)b[0] << 24) | ((__u32)b[1] << 16) | ((__u32)b[2] << 8) | (__u32)b[3];
}

/* Split the decoded bytes into fields. Returns 0, or -1 when the body is not
 * a version-1 token (port 0 is malformed too: token.py never mints it). */
static __always_inline int token_parse(const __u8 *raw, struct relay_token *t)
{
	t->version = raw[0];
	t->key_id = raw[1];
	t->transceiver_id = be32(raw + 2);
	t->port = bpf_htons(((__u16)raw[6] << 8) | raw[7]);
	t->expiry = be32(raw + 8);
	t->mac = le64(raw + 16);
	if (t->version != TOKEN_VERSION || t->port == 0)
		return -1;
	return 0;
}

#define ROTL64(x, b) (((x) << (b)) | ((x) >> (64 - (b))))

#define SIPROUND                                                               \
	do {                                                                   \
		v0 += v1; v1 = ROTL64(v1, 13); v1 ^= v0; v0 = ROTL64(v0, 32); \
		v2 += v3; v3 = ROTL64(v3, 16); v3 ^= v2;                       \
		v0 += v3; v3 = ROTL64(v3, 21); v3 ^= v0;                       \
		v2 += v1; v1 = ROTL64(v1, 17); v1 ^= v2; v2 = ROTL64(v2, 32); \
	} while (0)

/* SipHash-2-4 of exactly 16 bytes (two little-endian words m0, m1) under the
 * key halves k0, k1: the token body is fixed-size, so the tail block is just
 * the length byte (16 << 56). */
static __always_inline __u64 siphash24_16(__u64 k0, __u64 k1, __u64 m0, __u64 m1)
{
	__u64 v0 = k0 ^ 0x736f6d6570736575ULL;
	__u64 v1 = k1 ^ 0x646f72616e646f6dULL;
	__u64 v2 = k0 ^ 0x6c7967656e657261ULL;
	__u64 v3 = k1 ^ 0x7465646279746573ULL;
	__u64 b = (__u64)TOKEN_BODY_BYTES << 56;

	v3 ^= m0; SIPROUND; SIPROUND; v0 ^= m0;
	v3 ^= m1; SIPROUND; SIPROUND; v0 ^= m1;
	v3 ^= b;  SIPROUND; SIPROUND; v0 ^= b;
	v2 ^= 0xff;
	SIPROUND; SIPROUND; SIPROUND; SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

static __always_inline int token_mac_ok(const __u8 *raw, const struct token_key *key,
					__u64 mac)
{
	return siphash24_16(key->k0, key->k1, le64(raw), le64(raw + 8)) == mac;
}

#endif
