# SPDX-License-Identifier: Apache-2.0
"""The orchestrator follows a relay unloaded and loaded again (issue #16).

A reload pins new, empty maps; the orchestrator's view still holds the old
ones. The service's reload watcher must notice (``pins_replaced``), reopen,
and write the directory's whole state into the new maps. The real view
(``bccview.BpfRelayView``) is exercised in tests/netns/test_orchestrator.py;
here a fake stands for it.
"""

from __future__ import annotations

from orchestrator.relay import Reloadable
from orchestrator.sync import MapTransceiver
from tests.support import until_async
from tests.unit.orch_fakes import FakeRelayView, embedded_orchestrator
from voxrelay.directory import TransceiverRecord


class ReloadingView(FakeRelayView):
    """A fake view whose relay can be "loaded anew": new, empty maps behind the
    pins, while the view keeps reading and writing the old ones until ``reopen``."""

    def __init__(self) -> None:
        super().__init__()
        self.pinned: tuple[dict[int, MapTransceiver], dict[int, bytes]] = (
            self.txrs, self.key_slots)
        self.reopens = 0
        self.checks = 0

    def pins_replaced(self) -> bool:
        self.checks += 1
        return self.pinned[0] is not self.txrs

    def reopen(self) -> None:
        self.txrs, self.key_slots = self.pinned
        self.reopens += 1

    def reload(self) -> None:
        """What `relay unload` + `relay load` leave: new maps, nothing in them."""
        self.pinned = ({}, {})


def test_the_fake_is_what_the_service_looks_for() -> None:
    assert isinstance(ReloadingView(), Reloadable)
    assert not isinstance(FakeRelayView(), Reloadable)


async def test_a_reloaded_relay_gets_the_directory_state_back() -> None:
    view = ReloadingView()
    async with embedded_orchestrator(view, heartbeat_grace_seconds=30) as running:
        await running.directory.announce(TransceiverRecord(4, "10.0.1.4", 3479))
        await until_async(lambda: 4 in view.txrs and view.key_slots, what="the first sync")
        keys = dict(view.key_slots)
        await until_async(lambda: view.checks >= 2, what="the watcher to check the pins")
        assert view.reopens == 0  # nothing replaced, nothing reopened

        view.reload()
        new_txrs, new_keys = view.pinned
        await until_async(lambda: 4 in new_txrs and new_keys == keys,
                          what="the resync into the new maps")
        assert new_txrs[4] == MapTransceiver("10.0.1.4", "active")
        assert view.reopens == 1
        assert running.metrics.relay_reloads._value.get() == 1
