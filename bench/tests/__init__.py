# SPDX-License-Identifier: Apache-2.0
"""The bench's own tests (its maths, parsers and userspace relay): part of the fast tier.

They live here, not in tests/, because bench/ and tests/ are independent
floors (neither imports the other; pyproject.toml [tool.importlinter]).
"""
