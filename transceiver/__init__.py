# SPDX-License-Identifier: Apache-2.0
"""The transceiver: aiortc calls behind the relay, media bridge to the voice model."""
