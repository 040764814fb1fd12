# SPDX-License-Identifier: Apache-2.0
"""The lab: voxrelay's stack in network namespaces on one machine.

Floor 3 of four (docs/architecture.md): it builds the netns topology
(``lab.topology``), runs the stack in it (``lab.stack``), places calls with
the aiortc test client (``lab.client``, ``lab.call``) and is what
``voxrelay demo`` (``lab.demo``), ``tests/`` and ``bench/`` stand on. It
imports the product rooms (``orchestrator``, ``transceiver``, ``voxrelay``);
no product room imports it.
"""
