"""The orchestrator: loads the XDP relay, keeps its maps in sync with the directory."""
