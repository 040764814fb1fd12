/* SPDX-License-Identifier: GPL-2.0-only */
/* The relay's BPF maps: one line each on what it holds and who writes it.
 *
 * orchestrator/maps.py is the typed Python view of these maps;
 * orchestrator/abi.py (generated: `python -m orchestrator.genabi`) lists the
 * RELAY_MAP lines below as MAP_NAMES, in this order, with their layouts. When the
 * orchestrator compiles with -DPIN_DIR="/sys/fs/bpf/voxrelay/<name>", every
 * map is pinned there as PIN_DIR/<map name>; bcc reuses an existing pin of
 * the same name (so a replacement program keeps the flows) and creates and
 * pins the map otherwise. */
#ifndef VOXRELAY_MAPS_H
#define VOXRELAY_MAPS_H

#ifdef PIN_DIR
#define RELAY_MAP(type, key, value, name, entries) \
	BPF_TABLE_PINNED(type, key, value, name, entries, PIN_DIR "/" #name)
#define RELAY_MAP_FLAGS(type, key, value, name, entries, flags) \
	BPF_TABLE_PINNED(type, key, value, name, entries, PIN_DIR "/" #name, flags)
#else
#define RELAY_MAP(type, key, value, name, entries) \
	BPF_TABLE(type, key, value, name, entries)
#define RELAY_MAP_FLAGS(type, key, value, name, entries, flags) \
	BPF_F_TABLE(type, key, value, name, entries, flags)
#endif

/* config[0]: addresses, ports, limits and clocks. Orchestrator writes (at load and on change). */
RELAY_MAP("array", __u32, struct relay_config, config, 1);
/* keys[key id]: SipHash keys of the routing token; two active while rotating. Orchestrator writes. */
RELAY_MAP("array", __u32, struct token_key, keys, MAX_KEYS);
/* transceivers[id]: private address and status (active, draining). Orchestrator writes from the directory. */
RELAY_MAP("hash", __u32, struct transceiver, transceivers, MAX_TRANSCEIVERS);
/* flows[client addr:port]: transceiver addr:port, relay port, next hop. XDP writes; orchestrator reads. */
RELAY_MAP("lru_hash", struct flow_key, struct flow, flows, MAX_FLOWS);
/* reverse[private addr:relay port]: the client and transceiver of that address and port; its
 * keys are the port allocator. XDP writes. */
RELAY_MAP("hash", struct reverse_key, struct reverse_flow, reverse, MAX_RELAY_PORTS);
/* private_addrs[0]: the relay's private addresses, the config's first. Loader writes. */
RELAY_MAP("array", __u32, struct private_addrs, private_addrs, 1);
/* rate[source addr]: the current one-second new-flow window of a client address. XDP writes. */
RELAY_MAP("lru_hash", struct relay_addr, struct rate_window, rate, MAX_RATE_SOURCES);
/* token_flows[token mac]: how many flows that token has created. XDP writes. */
RELAY_MAP("lru_hash", __u64, __u64, token_flows, MAX_TOKENS_TRACKED);
/* blocked_sources[prefix]: client sources that may not open a flow (the private subnet, the
 * relay's own addresses, relay.blocked_source_prefixes); the value is why (bccmaps.BlockedBy
 * bits, for readers only). Loader writes at load and replace. LPM tries are never preallocated. */
RELAY_MAP_FLAGS("lpm_trie", struct source_prefix, __u32, blocked_sources, MAX_BLOCKED_PREFIXES,
		BPF_F_NO_PREALLOC);
/* stats[enum relay_stat]: per-CPU packet counters. XDP writes; orchestrator sums over CPUs.
 * STATS_MAP_SIZE, not STAT_MAX: a new reason must not change the pinned shape. */
RELAY_MAP("percpu_array", __u32, __u64, stats, STATS_MAP_SIZE);


/* Per-CPU room for what does not fit on the 512-byte BPF stack beside
 * everything else: the values a new flow inserts, the decoded token, the
 * fib lookup parameters, the base64 table, this CPU's cached clock
 * (relay.c relay_now) and its recent next hops.
 * Private to the program: never pinned, never read by Python. */
/* A next hop this CPU resolved lately, by destination and ingress interface:
 * new flows to a transceiver that already has calls, and cold flow entries
 * after a generation bump, then skip bpf_fib_lookup (~300 ns here). Valid
 * while nh.generation is the config's nh_generation, like a flow's own. */
struct nh_cache_entry {
	__be32 daddr;
	__u32 ingress_ifindex;
	struct next_hop nh;
	__u32 pad;
};

#ifndef NH_CACHE_SLOTS
#define NH_CACHE_SLOTS 16              /* direct-mapped by destination; a power of two */
#endif

struct relay_scratch {
	struct flow flow;
	struct reverse_flow reverse;
	struct bpf_fib_lookup fib;
	__u8 token[24];                  /* TOKEN_BYTES */
	__u64 b64_table[32];             /* token.h B64_TABLE_WORDS, filled once per CPU */
	__u64 b64_ready;                 /* B64_TABLE_READY once filled */
	__u64 clock_jiffies;             /* relay_now(): the jiffy clock_ns was read in */
	__u64 clock_ns;
	struct nh_cache_entry nh_cache[NH_CACHE_SLOTS];
};

/* scratch[0]: per-CPU working memory of the packet in flight. XDP only. */
BPF_TABLE("percpu_array", __u32, struct relay_scratch, scratch, 1);

#endif
