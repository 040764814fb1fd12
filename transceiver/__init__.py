# SPDX-License-Identifier: Apache-2.0
"""The transceiver: aiortc calls behind the relay, media bridge to the voice model."""

LISTEN_BACKLOG = 4096
"""The accept queue of every signaling socket (a transceiver's, a host front's):
aiohttp's default is 128, and the kernel caps it at net.core.somaxconn (4096 by
default). A burst of callers, a reconnect storm after a network blip, or a
flood must not overflow it: SYNs beyond it are dropped, and those callers
wait for a TCP retransmission (1 s, then 3 s)."""
