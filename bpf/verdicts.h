/* SPDX-License-Identifier: GPL-2.0-only */
/* Verdicts and drop reasons: the index of the per-CPU `stats` array.
 *
 * THE NUMBERS ARE AN ABI. The `stats` map is pinned and outlives the program:
 * `relay load --replace` swaps in a new program over the same map, and
 * dashboards keep a counter's history by its label. So, like cilium's
 * bpf/lib/drop_reasons.h:
 *   - every enumerator has an explicit `= N`, and N never changes;
 *   - a new reason takes the next unused number and goes at the END, just
 *     before STAT_MAX (whatever its group: is_drop/is_forwarded go by the
 *     name prefix, not by position);
 *   - never renumber, never reuse: a reason that goes away is renamed to
 *     STAT_RETIRED_<N> and keeps its line, so N stays taken;
 *   - STAT_MAX is implicit (one past the highest number): the count of
 *     numbers used, never the size of the map. The map is STATS_MAP_SIZE
 *     wide, with headroom (katran's STATS_MAP_SIZE), so that a new reason
 *     does not change the pinned map's shape and a replace keeps every call.
 *
 * Mirrors (regenerate, never edit): orchestrator/abi.py, written by
 * `python -m orchestrator.genabi` from this header, bpf/structs.h and
 * bpf/maps.h; orchestrator/verdicts.py is the typed layer over it, and
 * tests/unit/test_verdicts.py holds the ledger of every number ever given.
 * Metric labels come from these names, lower-cased without the STAT_ prefix.
 *
 * STAT_RX_TOTAL counts every packet at entry; every packet then ends in
 * exactly one other entry, so the others add up to STAT_RX_TOTAL. */
#ifndef VOXRELAY_VERDICTS_H
#define VOXRELAY_VERDICTS_H

/* Entries of the `stats` map. Fixed, and not a -D limit (so not in consts.h's
 * #ifndef list): changing it changes the pinned map's shape, which a replace
 * refuses. 64 leaves room for 25 more (0..38 are taken). */
#define STATS_MAP_SIZE 64

enum relay_stat {
	STAT_RX_TOTAL = 0,

	/* passed to the kernel stack */
	STAT_PASS_NOT_RELAY = 1,             /* not UDP to the relay's address and port (or a
	                                      * later IPv4 fragment, whose port is unknown):
	                                      * untouched */
	STAT_PASS_NO_NEIGH = 2,              /* rewritten, but the next hop's MAC is unresolved
	                                      * (and, towards a client, no learnt one fits):
	                                      * passed to the stack */
	STAT_PASS_UNCONFIGURED = 3,          /* no config written yet: the relay is inert */

	/* forwarded (XDP_REDIRECT or XDP_TX) */
	STAT_FWD_NEW_FLOW = 4,               /* valid token: flow created, packet sent to transceiver */
	STAT_FWD_TO_TRANSCEIVER = 5,         /* known client flow, public -> private */
	STAT_FWD_TO_CLIENT = 6,              /* transceiver reply, private -> public */

	/* dropped, by reason */
	STAT_DROP_TRUNCATED = 7,             /* UDP to a relay address whose UDP header is cut short */
	STAT_DROP_IP_OPTIONS = 8,            /* IPv4 header longer than 20 bytes */
	STAT_DROP_FRAGMENT = 9,              /* IPv4 fragment */
	STAT_DROP_BAD_LENGTH = 10,           /* IP or UDP length disagrees with the packet (or IHL < 5,
	                                      * or the IP version is not the ethertype's) */
	STAT_DROP_NOT_STUN = 11,             /* unknown 5-tuple and not a well-formed STUN message
	                                      * (cookie, length, attributes inside the message) */
	STAT_DROP_NOT_BINDING = 12,          /* STUN, but not a Binding Request */
	STAT_DROP_NO_USERNAME = 13,          /* Binding Request without USERNAME */
	STAT_DROP_TOKEN_MALFORMED = 14,      /* USERNAME is not "<32-char version-1 token>:..." */
	STAT_DROP_TOKEN_UNKNOWN_KEY = 15,    /* token's key id is not active */
	STAT_DROP_TOKEN_BAD_MAC = 16,        /* forged or altered token */
	STAT_DROP_TOKEN_EXPIRED = 17,        /* token past its expiry */
	STAT_DROP_TRANSCEIVER_UNKNOWN = 18,  /* token names a transceiver not in the map */
	STAT_DROP_TRANSCEIVER_DRAINING = 19, /* draining transceivers get no new flows */
	STAT_DROP_RATE_LIMITED = 20,         /* source over its new-flows-per-second cap */
	STAT_DROP_TOKEN_FLOW_CAP = 21,       /* one token already made its maximum of flows */
	STAT_DROP_PORT_EXHAUSTED = 22,       /* no free relay-side port after bounded probes */
	STAT_DROP_NO_REVERSE = 23,           /* private side: relay port not allocated */
	STAT_DROP_SPOOFED_SOURCE = 24,       /* private side: source is not the flow's transceiver */
	STAT_DROP_FIB_FAIL = 25,             /* no route to the next hop */
	STAT_DROP_IPV6 = 26,                 /* a flow the relay has no address for: a token for an
	                                      * IPv6 transceiver on a relay with no private IPv6
	                                      * address (relay.private_address6) */

	STAT_DROP_INGRESS_NOT_PUBLIC = 27,   /* UDP to the public address and port that did not
	                                      * arrive on the public interface */
	STAT_DROP_INGRESS_NOT_PRIVATE = 28,  /* UDP to the private address and a relay port that
	                                      * did not arrive on the private interface (e.g. a
	                                      * transceiver-shaped reply sent from the public side) */
	STAT_DROP_BLOCKED_SOURCE = 29,       /* an unknown client whose source is in a blocked
	                                      * prefix (the private subnet, the relay's own
	                                      * address, relay.blocked_source_prefixes) */
	STAT_FWD_TO_CLIENT_LEARNT_NH = 30,   /* transceiver reply, private -> public, with no
	                                      * neighbour entry for the route's next hop: sent to
	                                      * the MAC the client's packets came from */

	/* IPv6 clients (dual stack): the forwards of an IPv6 client's packets, by
	 * the client's family whatever the transceiver's; IPv4 clients keep the
	 * counters above. */
	STAT_FWD_NEW_FLOW6 = 31,             /* valid token from an IPv6 client: flow created */
	STAT_FWD_TO_TRANSCEIVER6 = 32,       /* known IPv6 client flow, public -> private */
	STAT_FWD_TO_CLIENT6 = 33,            /* transceiver reply to an IPv6 client */
	STAT_FWD_TO_CLIENT6_LEARNT_NH = 34,  /* the same, sent to the MAC the client's packets
	                                      * came from (no neighbour entry) */
	STAT_DROP_IPV6_EXT_HDR = 35,         /* IPv6 to a relay address with an extension header
	                                      * (the relay does not walk them: its UDP port is
	                                      * unknown) */
	STAT_DROP_UDP6_ZERO_CSUM = 36,       /* UDP over IPv6 to the relay with checksum 0, which
	                                      * RFC 8200 forbids */
	STAT_DROP_NO_CSUM_TO_IPV6 = 37,      /* IPv4 datagram without a UDP checksum (0) that would
	                                      * leave as IPv6: the relay updates checksums, it
	                                      * cannot compute one over the payload */
	STAT_DROP_HEADROOM = 38,             /* no room in the frame to change its IP family
	                                      * (bpf_xdp_adjust_head failed) */

	/* new reasons here, numbered 39, 40, ... */

	STAT_MAX                             /* implicit: one past the highest number in use */
};

/* A reason numbered past the map would be counted nowhere (the lookup fails). */
_Static_assert(STAT_MAX <= STATS_MAP_SIZE, "enum relay_stat outgrew STATS_MAP_SIZE");

#endif
