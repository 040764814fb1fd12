/* Limits and protocol constants for the relay. Every #ifndef value can be
 * overridden by the orchestrator with -D cflags (orchestrator/loader.py). */
#ifndef VOXRELAY_CONSTS_H
#define VOXRELAY_CONSTS_H

#ifndef MAX_FLOWS
#define MAX_FLOWS 1048576          /* flows LRU: client addr:port -> flow */
#endif
#ifndef MAX_TRANSCEIVERS
#define MAX_TRANSCEIVERS 4096
#endif
#ifndef MAX_KEYS
#define MAX_KEYS 256               /* one slot per token key id (u8) */
#endif
#ifndef MAX_RATE_SOURCES
#define MAX_RATE_SOURCES 65536     /* per-source new-flow limiter LRU */
#endif
#ifndef MAX_STUN_ATTRS
#define MAX_STUN_ATTRS 16          /* attributes walked looking for USERNAME */
#endif
#ifndef PORT_ALLOC_TRIES
#define PORT_ALLOC_TRIES 8         /* hashed probes for a free relay-side port */
#endif

/* Pre-swapped network-order constants, so that no packet pays for htons(). */
#define ETH_P_IP_BE        0x0008      /* htons(0x0800) */
#define ETH_P_IPV6_BE      0xDD86      /* htons(0x86DD) */
#define IP_MF_OFFSET_BE    0xFF3F      /* htons(IP_MF | IP_OFFSET) */
#define STUN_COOKIE_BE     0x42A41221  /* htonl(0x2112A442) */
#define STUN_BINDING_REQ_BE 0x0100     /* htons(0x0001) */
#define STUN_ATTR_USERNAME_BE 0x0600   /* htons(0x0006) */

#define STUN_HDR_LEN 20
#define TOKEN_CHARS 32                 /* voxrelay/token.py TOKEN_CHARS */

#define TRANSCEIVER_ACTIVE 1
#define TRANSCEIVER_DRAINING 2

#endif
