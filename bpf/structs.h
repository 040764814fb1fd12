/* SPDX-License-Identifier: GPL-2.0-only */
/* Key and value layouts of the relay's BPF maps: the single source of truth.
 *
 * Python mirrors: none by hand. orchestrator/maps.py takes the ctypes types
 * that bcc builds from these structs (table.Key / table.Leaf) and checks
 * their sizes against the key and value sizes the kernel reports for each
 * map (which also catches a pinned map from an older layout).
 * orchestrator/abi.py holds the same structs for readers that do not compile
 * relay.c; it is GENERATED from bcc's description of them by
 * `python -m orchestrator.genabi` (regenerate after any change here; a test
 * fails while it is stale). The sizes are asserted at the end of this file,
 * and genabi checks ctypes against those asserts. Keep every struct padded
 * explicitly, so that C and ctypes agree without surprises.
 *
 * Addresses are 16 bytes wide everywhere (IPv4 in addr[0], the rest zero), so
 * that IPv6 needs no map migration. */
#ifndef VOXRELAY_STRUCTS_H
#define VOXRELAY_STRUCTS_H

struct relay_addr {
	__be32 addr[4];
};

/* `flows` key: a client as the public side sees it. */
struct flow_key {
	struct relay_addr addr;
	__be16 port;
	__u8 family;            /* AF_INET (2) or AF_INET6 (10) */
	__u8 pad;
};

/* Next hop cached per direction, so that a known flow skips bpf_fib_lookup. */
struct next_hop {
	__u32 ifindex;
	__u8 smac[6];
	__u8 dmac[6];
	__u32 generation;       /* valid while equal to relay_config.nh_generation */
};

/* RTP seen in one direction of a flow, from the clear RTP header of SRTP
 * (bpf/media.h: RFC 3550 A.1 sequence accounting, A.8 interarrival jitter).
 * Written only by XDP, without atomics: a flow's packets arrive on one
 * receive queue, so one CPU updates it at a time (a rare race costs one
 * sample, never a wrong packet). Lost = expected - received. */
struct media_dir {
	__u32 ssrc;             /* the source being followed */
	__u16 max_seq;          /* highest sequence number seen (RFC 3550 max_seq) */
	__u16 resyncs;          /* new SSRC or sequence jump: accounting restarted (saturates) */
	__u32 expected;         /* packets the sequence numbers say were sent */
	__u32 received;         /* RTP packets that arrived (duplicates not counted) */
	__u32 reordered;        /* arrived after a later sequence number */
	__u32 duplicates;       /* the highest sequence number again */
	__u32 jitter_q4;        /* RFC 3550 J x 16, in RTP timestamp units (48 kHz for Opus) */
	__u32 transit;          /* last packet's arrival (RTP units) - its RTP timestamp */
};

/* STUN consent checks through the relay, timed request -> success response.
 * It lives in the entry of the side the response arrives on: a flow's for
 * the transceiver's checks that the client answers (the client leg), a
 * reverse entry's for the client's checks that the transceiver answers. */
struct consent_rtt {
	__u64 request_ns;       /* bpf_ktime_get_ns() of the pending request; 0: none */
	__u32 request_tid;      /* the last 4 bytes of its transaction id */
	__u32 samples;          /* requests answered */
	__u64 sum_us;           /* over the samples */
	__u32 last_us;
	__u32 max_us;
};

/* `flows` value: where a client's packets go. Written only by XDP. */
struct flow {
	struct relay_addr txr_addr;  /* transceiver's private address */
	__be16 txr_port;             /* transceiver's UDP port (from the token) */
	__be16 relay_port;           /* relay-side source port: with relay_addr, unique per flow */
	__u32 transceiver_id;
	struct relay_addr relay_addr; /* relay-side source address: one of private_addrs */
	__u64 token_mac;             /* the token that created it (per-token cap) */
	__u64 created_ns;            /* bpf_ktime_get_ns() */
	__u64 last_seen_ns;          /* refreshed per packet; idle flows expire */
	struct next_hop nh;          /* towards the transceiver */
	__u8 txr_family;             /* AF_INET or AF_INET6: the family it is sent in */
	__u8 pad[3];
	struct media_dir rtp;        /* the client's RTP, client -> transceiver */
	struct consent_rtt client_rtt; /* relay -> client -> relay: the client leg */
};

/* `reverse` key: the relay-side private address and port (network order) a
 * flow's transceiver sends to. With several private addresses, one relay holds
 * (addresses x ports) live flows, not one port range's worth. */
struct reverse_key {
	struct relay_addr addr;
	__be16 relay_port;
	__u16 pad;
};

/* `reverse` value: where a transceiver's replies on that port go. */
struct reverse_flow {
	struct flow_key client;      /* also the `flows` key of the forward entry */
	struct relay_addr txr_addr;  /* replies must come from here... */
	__be16 txr_port;             /* ...and this port */
	__u8 txr_family;             /* ...in this family (AF_INET or AF_INET6) */
	__u8 pad;
	__u32 transceiver_id;
	__u32 pad2;
	__u64 last_seen_ns;          /* refreshed by the transceiver's packets */
	struct next_hop nh;          /* towards the client */
	__u32 pad3;
	struct media_dir rtp;        /* the transceiver's RTP, transceiver -> client */
	struct consent_rtt transceiver_rtt; /* relay -> transceiver -> relay */
};

/* `transceivers` value, keyed by the __u32 transceiver id. Written by the orchestrator. */
struct transceiver {
	struct relay_addr addr;
	__u8 family;
	__u8 status;            /* TRANSCEIVER_ACTIVE or TRANSCEIVER_DRAINING */
	__u16 pad;
	__u32 pad2;
};

/* `keys` value, indexed by the token's key id. Written by the orchestrator. */
struct token_key {
	__u64 k0;               /* SipHash key, little-endian halves of the 16 bytes */
	__u64 k1;
	__u32 active;           /* 0: slot unused or retired */
	__u32 pad;
};

/* `config` value (index 0). Written by the orchestrator at load. */
struct relay_config {
	struct relay_addr public_addr;   /* the VIP clients send to */
	struct relay_addr private_addr;  /* the relay's address towards transceivers */
	__be16 public_port;              /* default 3478 */
	__u8 family;
	__u8 flags;
	__u16 port_min;                  /* relay-side port range, host order */
	__u16 port_max;
	__u32 public_ifindex;
	__u32 private_ifindex;
	__u32 new_flows_per_sec;         /* per source address; 0 = unlimited */
	__u32 max_flows_per_token;       /* 0 = unlimited */
	__u64 clock_offset_ns;           /* CLOCK_REALTIME - ktime_get_ns, for token expiry */
	__u64 flow_idle_ns;              /* a flow unseen this long is treated as gone */
	__u32 nh_generation;             /* bumped by the orchestrator on neighbour change */
	__u32 pad;
	/* Dual stack: all zero = no such address. public_addr/private_addr
	 * above are the IPv4 ones (addr[0]). */
	struct relay_addr public_addr6;  /* the IPv6 VIP clients send to, beside the IPv4 one */
	struct relay_addr private_addr6; /* the relay's IPv6 address towards IPv6 transceivers */
};

/* `blocked_sources` key, an LPM trie key: `prefixlen` counts the bits of
 * everything after it (family, pad, addr), so that one trie holds both
 * families without mixing them: an IPv4 /p is SOURCE_PREFIX_HDR_BITS + p,
 * with family AF_INET and the address in addr[0]. A lookup of one address
 * uses the full length of its family. */
struct source_prefix {
	__u32 prefixlen;
	__u8 family;
	__u8 pad[3];
	struct relay_addr addr;
};

/* `rate` value: the per-source new-flow window. */
struct rate_window {
	__u64 window_start_ns;
	__u32 count;
	__u32 pad;
};

/* `private_addrs` value (index 0): every private address of the relay, the
 * config's private_addr first. New flows are spread over the first `count`;
 * a transceiver's reply is ours when it is sent to any of them. Written by
 * the loader at load and replace. MAX_PRIVATE_ADDRS: consts.h. */
struct private_addrs {
	__u32 count;            /* 0 or 1: only the config's private_addr */
	__u32 pad;
	struct relay_addr addr[MAX_PRIVATE_ADDRS];
};

_Static_assert(sizeof(struct relay_addr) == 16, "relay_addr layout");
_Static_assert(sizeof(struct flow_key) == 20, "flow_key layout");
_Static_assert(sizeof(struct next_hop) == 20, "next_hop layout");
_Static_assert(sizeof(struct media_dir) == 32, "media_dir layout");
_Static_assert(sizeof(struct consent_rtt) == 32, "consent_rtt layout");
_Static_assert(sizeof(struct flow) == 152, "flow layout");
_Static_assert(sizeof(struct reverse_key) == 20, "reverse_key layout");
_Static_assert(sizeof(struct reverse_flow) == 144, "reverse_flow layout");
_Static_assert(sizeof(struct transceiver) == 24, "transceiver layout");
_Static_assert(sizeof(struct token_key) == 24, "token_key layout");
_Static_assert(sizeof(struct relay_config) == 112, "relay_config layout");
_Static_assert(sizeof(struct rate_window) == 16, "rate_window layout");
_Static_assert(sizeof(struct source_prefix) == 24, "source_prefix layout");
_Static_assert(sizeof(struct private_addrs) == 520, "private_addrs layout");

#endif
