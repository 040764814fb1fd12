# SPDX-License-Identifier: Apache-2.0
"""The orchestrator: loads the XDP relay, keeps its maps in sync with the directory."""
