/* SPDX-License-Identifier: GPL-2.0-only */
/* Limits and protocol constants for the relay. Every #ifndef value can be
 * overridden by the orchestrator with -D cflags (orchestrator/loader.py). */
#ifndef VOXRELAY_CONSTS_H
#define VOXRELAY_CONSTS_H

#ifndef MAX_FLOWS
/* flows LRU: client addr:port -> flow. Every live flow holds its own relay
 * address:port (reverse), so at most MAX_RELAY_PORTS are live; 1/8 above
 * that keeps the LRU from evicting a live flow early (an LRU map takes free
 * nodes per CPU in batches, so it evicts before it is completely full).
 * Memory, preallocated: ~240 B per entry (152 B of value), ~270 MiB at
 * this size (bench/bench_sync.py measures it). */
#define MAX_FLOWS 1179648
#endif
#ifndef MAX_RELAY_PORTS
/* reverse: one entry per live flow, keyed by (private address, relay port):
 * the live flows a relay can hold (16 private addresses of the widest port
 * range, 1024..65535, give 1,032,192). Memory, preallocated: ~232 B per
 * entry (144 B of value), ~232 MiB at this size. */
#define MAX_RELAY_PORTS 1048576
#endif
/* struct private_addrs' slots: a layout, so never a -D limit. A power of two. */
#define MAX_PRIVATE_ADDRS 32
#ifndef MAX_TRANSCEIVERS
#define MAX_TRANSCEIVERS 4096
#endif
#ifndef MAX_KEYS
#define MAX_KEYS 256               /* one slot per token key id (u8) */
#endif
#ifndef MAX_RATE_SOURCES
#define MAX_RATE_SOURCES 65536     /* per-source new-flow limiter LRU */
#endif
#ifndef MAX_TOKENS_TRACKED
#define MAX_TOKENS_TRACKED 65536   /* token_flows LRU: flows created per token */
#endif
#ifndef MAX_BLOCKED_PREFIXES
#define MAX_BLOCKED_PREFIXES 1024  /* blocked_sources: the private subnet(s) + the operator's list */
#endif
#ifndef MAX_STUN_ATTRS
#define MAX_STUN_ATTRS 16          /* attributes walked looking for USERNAME */
#endif
#ifndef NO_MEDIA_TELEMETRY
/* 1: no per-flow RTP and consent telemetry (bpf/media.h) on the packet path:
 * for bench/progcost.py's side-by-side cost, or a relay that must not pay it. */
#define NO_MEDIA_TELEMETRY 0
#endif
#ifndef MEDIA_JITTER_SAMPLE
/* Jitter (bpf/media.h) is measured on the RTP packets whose sequence number
 * is a multiple of this (a power of two): the clock read it needs is most of
 * the telemetry's cost (bench/progcost.py --telemetry: +50..65 ns per packet
 * at 1, +11..37 ns at 8, ~+20 median). At 8, one Opus packet in 8 (every
 * 160 ms) is timed, and A.8's 1/16 gain follows a change within ~2.5 s.
 * 1: every packet. */
#define MEDIA_JITTER_SAMPLE 8
#endif
#ifndef PORT_ALLOC_TRIES
#define PORT_ALLOC_TRIES 8         /* hashed probes for a free relay-side port */
#endif

/* Pre-swapped network-order constants, so that no packet pays for htons(). */
#define ETH_P_IP_BE        0x0008      /* htons(0x0800) */
#define ETH_P_IPV6_BE      0xDD86      /* htons(0x86DD) */
#define IP_MF_OFFSET_BE    0xFF3F      /* htons(IP_MF | IP_OFFSET) */
#define IP_MF_BE           0x0020      /* htons(IP_MF) */
#define IP_OFFSET_BE       0xFF1F      /* htons(IP_OFFSET) */
#define IP_DF_BE           0x0040      /* htons(IP_DF) */
#define STUN_COOKIE_BE     0x42A41221  /* htonl(0x2112A442) */
#define STUN_BINDING_REQ_BE 0x0100     /* htons(0x0001) */
#define STUN_ATTR_USERNAME_BE 0x0600   /* htons(0x0006) */

#define STUN_TYPE_CLASS_BITS_BE 0x00C0 /* htons(0xC000): the two top bits, 0 in STUN */

#define STUN_HDR_LEN 20
#define STUN_MAX_LEN 2044              /* header + attributes; offsets are masked with 0x7ff */
#define STUN_OFF_MASK 0x7ff
#define TOKEN_CHARS 32                 /* voxrelay/token.py TOKEN_CHARS */

#define LAST_SEEN_GRANULARITY_NS 100000000ULL /* refresh last_seen at most every 100 ms: fewer shared writes */
#define RATE_WINDOW_NS 1000000000ULL
#define NS_PER_SEC 1000000000ULL

/* struct source_prefix: bits of family + pad before the address (LPM prefixlen). */
#define SOURCE_PREFIX_HDR_BITS 32

/* `rate` keys of IPv6 clients are their /64 with this in addr[3] (relay.c
 * rate_key_of): nonzero, so never an IPv4 key (addr[1..3] zero). */
#define RATE_KEY_IPV6_64 1

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

#define TRANSCEIVER_ACTIVE 1
#define TRANSCEIVER_DRAINING 2

#endif
