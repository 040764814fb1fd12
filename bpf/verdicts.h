/* Verdicts and drop reasons: the index of the per-CPU `stats` array.
 *
 * Python mirror: orchestrator/verdicts.py parses this enum (it is not copied),
 * and tests/unit/test_verdicts.py checks the parse. Metric labels come from
 * these names, lower-cased without the STAT_ prefix.
 *
 * STAT_RX_TOTAL counts every packet at entry; every packet then ends in
 * exactly one other entry, so the others add up to STAT_RX_TOTAL. */
#ifndef VOXRELAY_VERDICTS_H
#define VOXRELAY_VERDICTS_H

enum relay_stat {
	STAT_RX_TOTAL = 0,

	/* passed to the kernel stack */
	STAT_PASS_NOT_RELAY,          /* not UDP to the relay's address and port (or a later
	                               * IPv4 fragment, whose port is unknown): untouched */
	STAT_PASS_NO_NEIGH,           /* rewritten, but the next hop's MAC is unresolved:
	                               * passed to the stack, which may resolve it */
	STAT_PASS_UNCONFIGURED,       /* no config written yet: the relay is inert */

	/* forwarded (XDP_REDIRECT or XDP_TX) */
	STAT_FWD_NEW_FLOW,            /* valid token: flow created, packet sent to transceiver */
	STAT_FWD_TO_TRANSCEIVER,      /* known client flow, public -> private */
	STAT_FWD_TO_CLIENT,           /* transceiver reply, private -> public */

	/* dropped, by reason */
	STAT_DROP_TRUNCATED,          /* UDP to a relay address whose UDP header is cut short */
	STAT_DROP_IP_OPTIONS,         /* IPv4 header longer than 20 bytes */
	STAT_DROP_FRAGMENT,           /* IPv4 fragment */
	STAT_DROP_BAD_LENGTH,         /* IP or UDP length disagrees with the packet (or IHL < 5) */
	STAT_DROP_NOT_STUN,           /* unknown 5-tuple and not a well-formed STUN message
	                               * (cookie, length, attributes inside the message) */
	STAT_DROP_NOT_BINDING,        /* STUN, but not a Binding Request */
	STAT_DROP_NO_USERNAME,        /* Binding Request without USERNAME */
	STAT_DROP_TOKEN_MALFORMED,    /* USERNAME is not "<32-char version-1 token>:..." */
	STAT_DROP_TOKEN_UNKNOWN_KEY,  /* token's key id is not active */
	STAT_DROP_TOKEN_BAD_MAC,      /* forged or altered token */
	STAT_DROP_TOKEN_EXPIRED,      /* token past its expiry */
	STAT_DROP_TRANSCEIVER_UNKNOWN,/* token names a transceiver not in the map */
	STAT_DROP_TRANSCEIVER_DRAINING,/* draining transceivers get no new flows */
	STAT_DROP_RATE_LIMITED,       /* source over its new-flows-per-second cap */
	STAT_DROP_TOKEN_FLOW_CAP,     /* one token already made its maximum of flows */
	STAT_DROP_PORT_EXHAUSTED,     /* no free relay-side port after bounded probes */
	STAT_DROP_NO_REVERSE,         /* private side: relay port not allocated */
	STAT_DROP_SPOOFED_SOURCE,     /* private side: source is not the flow's transceiver */
	STAT_DROP_FIB_FAIL,           /* no route to the next hop */
	STAT_DROP_IPV6,               /* IPv6 to a configured IPv6 relay address, or a token
	                               * for an IPv6 transceiver: layouts are ready, path is not */

	STAT_MAX
};

#endif
