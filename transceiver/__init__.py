"""The transceiver: aiortc calls behind the relay, media bridge to the voice model."""
