# SPDX-License-Identifier: Apache-2.0
"""The orchestrator's commands: a thin click layer over the typed library.

One module per command group (``relay``, ``maps``, ``transceivers``, ``keys``,
``token``, ``probe``, and ``orchestrator run`` in ``run``), each mounted by
voxrelay/cli.py through its ``voxrelay.commands`` entry point (pyproject.toml),
so that a command imports only what it needs; ``common`` holds the options,
the one-line errors, the table printer and the openers they share.
"""
