# SPDX-License-Identifier: Apache-2.0
"""voxrelay: the shared core (routing token, CLI root)."""
