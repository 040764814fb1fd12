/* SPDX-License-Identifier: GPL-2.0-only */
/* Media telemetry of a known flow, without decrypting anything.
 *
 * SRTP encrypts the payload only: the 12-byte RTP header (sequence number,
 * timestamp, SSRC) is in clear, and STUN consent checks (RFC 7675) are in
 * clear too. The relay already holds the flow's entry when it forwards a
 * packet, so each direction keeps its own numbers in the entry its packets
 * look up (`flows` for client -> transceiver, `reverse` for the way back):
 * no extra map lookup per media packet.
 *
 *   - RTP (RFC 7983: first byte 128..191, and not RTCP, whose packet types
 *     200..207 read as 72..79 once the marker bit is masked): RFC 3550 A.1
 *     sequence accounting (expected, received, reordered, duplicates) and
 *     A.8 interarrival jitter against the arrival time, in 48 kHz RTP units
 *     (Opus' RTP clock, RFC 7587, whatever its sampling rate), on one packet
 *     in MEDIA_JITTER_SAMPLE: D is then the transit change over that many
 *     packets, which for independent per-packet delays has the same spread.
 *   - STUN Binding (first byte 0..3, the magic cookie): a request's
 *     transaction id and time are written into the entry of the other side,
 *     where its success response will arrive; the response completes one
 *     round-trip sample. Only these rare packets do the second lookup.
 *
 * Only Opus audio is assumed: a video SSRC (90 kHz) on the same flow would
 * restart the accounting each time the SSRC changes (counted as resyncs),
 * which keeps the numbers conservative rather than wrong. */
#ifndef VOXRELAY_MEDIA_H
#define VOXRELAY_MEDIA_H

_Static_assert((MEDIA_JITTER_SAMPLE & (MEDIA_JITTER_SAMPLE - 1)) == 0,
	       "MEDIA_JITTER_SAMPLE must be a power of two");

#define RTP_HDR_LEN 12
#define RTP_MAX_DROPOUT 3000     /* RFC 3550 A.1: a jump beyond this restarts the sequence */
#define RTP_MAX_MISORDER 100     /* RFC 3550 A.1: this far behind max_seq is a late packet */
#define STUN_BINDING_RESP_BE 0x0101 /* htons(0x0101): Binding success response */

/* The arrival clock of RTP packets. bpf_ktime_get_ns, not the relay's
 * jiffy clock (relay.c relay_now): at HZ=250 a tick is 4 ms, a fifth of an
 * Opus frame, and its rounding alone would read as ~1.5 ms of jitter. The
 * helper call is most of the telemetry's cost (~45 ns of ~65 here, with the
 * SRSO return mitigation: bench/progcost.py --telemetry), hence the
 * sampling in media_rtp. */
#define MEDIA_ARRIVAL_NS() bpf_ktime_get_ns()

/* Arrival time in 48 kHz RTP units: ns * 48000 / 1e9, as (ns >> 10) * 3221 >>
 * 16 (3221 / 2^16 * 1024 = 48000.4 / 1e9): two shifts and a multiply, no
 * division, and no overflow for 184 years of uptime. Only differences
 * between arrivals of one flow matter (RFC 3550 transit), so the epoch is
 * irrelevant and the wrap of u32 is harmless. */
static __always_inline __u32 rtp_clock_48k(__u64 ns)
{
	return (__u32)(((ns >> 10) * 3221) >> 16);
}

/* RFC 3550 A.8 on a sampled packet: J += (|D| - J) / 16, kept x16 as J_q4,
 * D being the change in transit since the previous sample. Transit 0 means
 * "no sample yet", so a real 0 is stored as 1 (a 21 us error, once). */
static __always_inline void media_jitter(struct media_dir *m, __be32 ts_be)
{
	__u32 transit = rtp_clock_48k(MEDIA_ARRIVAL_NS()) - __builtin_bswap32(ts_be);

	if (!transit)
		transit = 1;
	if (m->transit) {
		__s32 d = (__s32)(transit - m->transit);

		if (d < 0)
			d = -d;
		m->jitter_q4 += (__u32)d - ((m->jitter_q4 + 8) >> 4);
	}
	m->transit = transit;
}

/* One RTP packet of the direction `m` follows: RFC 3550 A.1's accounting on
 * every packet; jitter on those whose sequence number is a multiple of
 * MEDIA_JITTER_SAMPLE (consts.h), which alone pay for the clock. */
static __always_inline void media_rtp(struct media_dir *m, __be16 seq_be, __be32 ts_be,
				      __be32 ssrc)
{
	__u16 seq = __builtin_bswap16(seq_be);  /* network order; the relay runs little-endian */

	if (!m->received || m->ssrc != ssrc) {
		/* A new source: start following it. The totals carry on. */
		if (m->received && m->resyncs != 0xffff)
			m->resyncs++;
		m->ssrc = ssrc;
		goto restart;
	}
	__u16 delta = seq - m->max_seq;

	if (delta == 0) {
		m->duplicates++;
		return;
	}
	if (delta < RTP_MAX_DROPOUT) {
		/* In order, with delta - 1 packets missing (they are lost until
		 * they arrive late: `received` then catches up). */
		m->expected += delta;
		m->received++;
		m->max_seq = seq;
	} else if (delta > (__u16)(65536 - RTP_MAX_MISORDER)) {
		/* Late: its slot is already in `expected`. */
		m->reordered++;
		m->received++;
	} else {
		/* A jump: the sender restarted its sequence numbers. */
		if (m->resyncs != 0xffff)
			m->resyncs++;
		goto restart;
	}
	if (!(seq & (MEDIA_JITTER_SAMPLE - 1)))
		media_jitter(m, ts_be);
	return;
restart:
	m->max_seq = seq;
	m->expected++;
	m->received++;
	m->transit = 0;  /* the old source's transit says nothing of the new one */
}

static __always_inline void consent_request(struct consent_rtt *c, __u32 tid, __u64 now)
{
	c->request_tid = tid;
	c->request_ns = now;
}

/* A success response: a sample if it answers the pending request. */
static __always_inline void consent_response(struct consent_rtt *c, __u32 tid, __u64 now)
{
	if (!c->request_ns || c->request_tid != tid || now < c->request_ns)
		return;
	__u32 us = (__u32)((now - c->request_ns) / 1000);

	c->request_ns = 0;
	c->samples++;
	c->sum_us += us;
	c->last_us = us;
	if (us > c->max_us)
		c->max_us = us;
}

/* What a known flow's datagram is, for telemetry: RTP with its header
 * fields, a STUN Binding request or response with its transaction id's last
 * word, or anything else (DTLS, RTCP, short or unknown: ignored). */
enum media_kind {
	MEDIA_OTHER = 0,
	MEDIA_RTP,
	MEDIA_STUN_REQUEST,
	MEDIA_STUN_RESPONSE,
};

struct media_pkt {
	__be16 seq;
	__be32 ts;
	__be32 ssrc;
	__u32 tid;
};

static __always_inline enum media_kind media_classify(const struct udphdr *udp, void *data_end,
						      struct media_pkt *mp)
{
	const __u8 *b = (const __u8 *)(udp + 1);

	if ((void *)(b + RTP_HDR_LEN) > data_end)
		return MEDIA_OTHER;
	if ((b[0] & 0xc0) == 0x80) {
		__u8 pt = b[1] & 0x7f;

		if (pt >= 64 && pt <= 95)  /* RTCP (RFC 5761 section 4) */
			return MEDIA_OTHER;
		mp->seq = *(const __be16 *)(b + 2);
		mp->ts = *(const __be32 *)(b + 4);
		mp->ssrc = *(const __be32 *)(b + 8);
		return MEDIA_RTP;
	}
	if (b[0] > 3 || (void *)(b + STUN_HDR_LEN) > data_end)
		return MEDIA_OTHER;
	if (*(const __be32 *)(b + 4) != STUN_COOKIE_BE)
		return MEDIA_OTHER;
	mp->tid = *(const __u32 *)(b + 16);
	if (*(const __be16 *)b == STUN_BINDING_REQ_BE)
		return MEDIA_STUN_REQUEST;
	if (*(const __be16 *)b == STUN_BINDING_RESP_BE)
		return MEDIA_STUN_RESPONSE;
	return MEDIA_OTHER;
}

#endif
