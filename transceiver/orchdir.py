"""The orchestrator's directory (embedded HTTP or Redis) as the transceiver's ``Directory``.

``voxrelay.directory`` owns the records, the keyring and the backends;
this adapter only maps the transceiver's calls onto it:

- announce -> a record with the private address and the probe port (the
  orchestrator probes a transceiver through the relay on that port, where
  ``orchestrator.probe.ProbeResponder`` answers);
- heartbeat -> heartbeat with the call count, re-announcing (and re-draining)
  when the directory has forgotten us (``UnknownTransceiver``);
- token_keys -> the keyring's current key id and the active keys;
- sessions -> ``put_session(call_id, {...}, ttl)``.
"""

from __future__ import annotations

import time
from typing import Any

from orchestrator.probe import DEFAULT_PROBE_PORT
from transceiver.directory import SessionRecord, TokenKeys, TransceiverRecord
from voxrelay.directory import Directory as OrchDirectory
from voxrelay.directory import TransceiverRecord as OrchRecord
from voxrelay.directory import UnknownTransceiver, connect


class NoTokenKey(RuntimeError):
    """The directory has no current routing-token key (is the orchestrator running?)."""


class OrchestratorDirectory:
    def __init__(self, inner: OrchDirectory, probe_port: int = DEFAULT_PROBE_PORT) -> None:
        self.inner = inner
        self.probe_port = probe_port
        self._record: OrchRecord | None = None

    async def announce(self, record: TransceiverRecord) -> None:
        self._record = OrchRecord(id=record.id, address=record.private_address,
                                  probe_port=self.probe_port)
        await self.inner.announce(self._record)

    async def heartbeat(self, transceiver_id: int, calls: int, draining: bool) -> None:
        try:
            await self.inner.heartbeat(transceiver_id, load=calls)
        except UnknownTransceiver:
            if self._record is None:
                raise
            await self.inner.announce(self._record.with_(load=calls))
            if draining:
                await self.inner.drain(transceiver_id)

    async def drain(self, transceiver_id: int) -> None:
        await self.inner.drain(transceiver_id)

    async def withdraw(self, transceiver_id: int) -> None:
        await self.inner.remove(transceiver_id)

    async def token_keys(self) -> TokenKeys:
        ring = await self.inner.keyring()
        if ring.current is None:
            raise NoTokenKey("the directory has no routing-token key yet; start the orchestrator "
                             "(or run `voxrelay keys rotate`)")
        return TokenKeys(ring.current, ring.active_keys())

    async def put_session(self, record: SessionRecord) -> None:
        data: dict[str, Any] = {"transceiver_id": record.transceiver_id, "port": record.port,
                                "created": record.created, "expires": record.expires}
        await self.inner.put_session(record.call_id, data, ttl=max(1.0, record.expires - time.time()))

    async def get_session(self, call_id: str) -> SessionRecord | None:
        data = await self.inner.get_session(call_id)
        if data is None:
            return None
        return SessionRecord(call_id, int(data["transceiver_id"]), int(data["port"]),
                             float(data["created"]), float(data["expires"]))

    async def delete_session(self, call_id: str) -> None:
        await self.inner.delete_session(call_id)

    async def close(self) -> None:
        await self.inner.close()


def connect_directory(url: str, probe_port: int = DEFAULT_PROBE_PORT) -> OrchestratorDirectory:
    """An adapter over ``voxrelay.directory.connect(url)`` (http(s):// or redis://)."""
    try:
        return OrchestratorDirectory(connect(url), probe_port)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
