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

/* Hide a value from the compiler's range reasoning, so that the branch-free
 * arithmetic below is not turned back into branches (the kernel selftests'
 * barrier_var). */
#define barrier_var(var) asm volatile("" : "+r"(var))

/* 1 when lo <= c <= hi, else 0, without a branch (all values < 2^31). */
static __always_inline __u32 b64_in_range(__u32 c, __u32 lo, __u32 hi)
{
	__u32 outside = ((c - lo) | (hi - c)) >> 31;

	barrier_var(outside);
	return outside ^ 1;
}

/* One base64 character to its 6-bit value; *bad gets 1 for any character
 * outside the alphabet (which includes '=' and the ':' that ends a ufrag).
 * Branch-free on purpose: with a branch per character class the verifier
 * would walk 6^32 paths through a token. */
static __always_inline __u32 b64_value(__u32 c, __u32 *bad)
{
	__u32 upper = b64_in_range(c, 'A', 'Z');
	__u32 lower = b64_in_range(c, 'a', 'z');
	__u32 digit = b64_in_range(c, '0', '9');
	__u32 plus = b64_in_range(c, '+', '+');
	__u32 slash = b64_in_range(c, '/', '/');

	*bad |= (upper | lower | digit | plus | slash) ^ 1;
	return (upper * (c - 'A') + lower * (c - 'a' + 26) + digit * (c - '0' + 52) +
		plus * 62 + slash * 63) & 0x3f;
}

/* Decode TOKEN_CHARS characters at `p` into `out`. The caller has checked
 * that p + TOKEN_CHARS lies inside the packet. Returns 0 or -1. */
static __always_inline int token_b64_decode(const __u8 *p, __u8 *out)
{
	__u32 bad = 0;

#pragma unroll
	for (int g = 0; g < TOKEN_CHARS / 4; g++) {
		__u32 v = (b64_value(p[4 * g], &bad) << 18) |
			  (b64_value(p[4 * g + 1], &bad) << 12) |
			  (b64_value(p[4 * g + 2], &bad) << 6) |
			  b64_value(p[4 * g + 3], &bad);

		out[3 * g] = v >> 16;
		out[3 * g + 1] = v >> 8;
		out[3 * g + 2] = v;
	}
	return bad ? -1 : 0;
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
