# SPDX-License-Identifier: Apache-2.0
"""Directory records: bad input is refused with exact messages."""

import pytest

from orchestrator.sync import keyring_from_map
from voxrelay.directory.records import (
    Keyring,
    TransceiverRecord,
    parse_keyring,
    parse_transceiver,
)

GOOD = {"id": 7, "address": "10.0.1.7", "probe_port": 3479}


def test_good_record_round_trips():
    rec = parse_transceiver({**GOOD, "status": "draining", "load": 3})
    assert rec == TransceiverRecord(7, "10.0.1.7", 3479, "draining", 3)
    assert parse_transceiver(rec.to_json()) == rec


@pytest.mark.parametrize(
    "change, message",
    [
        ({"address": "10.0.1"}, "transceiver address '10.0.1' is not an IP address"),
        ({"address": "0.0.0.0"}, "transceiver address '0.0.0.0' is not a unicast address"),
        ({"address": "224.0.0.1"}, "transceiver address '224.0.0.1' is not a unicast address"),
        ({"address": 167772161}, "transceiver address must be a string, got 167772161"),
        ({"probe_port": 0}, "transceiver probe_port must not be 0"),
        ({"probe_port": 70000}, "transceiver probe_port 70000 is outside 1..65535"),
        ({"probe_port": "3479"}, "transceiver probe_port must be an integer, got '3479'"),
        ({"status": "up"}, "transceiver status 'up' is not one of: active, draining, removed"),
        ({"id": 0}, "transceiver id 0 is outside 1..4294967295"),
        ({"id": 2**32}, "transceiver id 4294967296 is outside 1..4294967295"),
        ({"id": True}, "transceiver id must be an integer, got True"),
        ({"load": -1}, "transceiver load must be a non-negative integer, got -1"),
        ({"colour": "red"}, "transceiver record has unknown fields: colour"),
        ({"last_heartbeat": -5}, "transceiver last_heartbeat must be a non-negative number, got -5"),
    ],
)
def test_bad_record_is_refused(change, message):
    with pytest.raises(ValueError) as exc:
        parse_transceiver({**GOOD, **change})
    assert str(exc.value) == message


def test_missing_field_and_non_object():
    with pytest.raises(ValueError, match="^transceiver record is missing 'probe_port'$"):
        parse_transceiver({"id": 1, "address": "10.0.0.1"})
    with pytest.raises(ValueError, match="^transceiver record must be a JSON object, got list$"):
        parse_transceiver([1])


def test_address_is_normalized():
    assert TransceiverRecord(1, "FD00::0001", 1).address == "fd00::1"


def test_short_key_is_refused():
    with pytest.raises(ValueError, match="^token key must be 16 bytes, got 8$"):
        Keyring(keys={1: b"x" * 8}, active=(1,), current=1)
    with pytest.raises(ValueError, match="^token key must be 16 bytes, got 15$"):
        parse_keyring({"keys": {"1": "AAAAAAAAAAAAAAAAAAAA"}, "active": [1], "current": 1})


def test_keyring_invariants():
    with pytest.raises(ValueError, match="^active token key id 2 has no key$"):
        Keyring(keys={1: bytes(16)}, active=(2,), current=2)
    with pytest.raises(ValueError, match="^at most 2 token keys may be active, got 3$"):
        Keyring(keys={i: bytes(16) for i in range(3)}, active=(0, 1, 2), current=2)
    with pytest.raises(ValueError, match="^token key id must be an integer in 0..255, got 256$"):
        Keyring(keys={256: bytes(16)})


def test_rotation_keeps_previous_and_retires_older():
    ring = Keyring().rotated(b"a" * 16)
    assert (ring.active, ring.current) == ((0,), 0)
    ring = ring.rotated(b"b" * 16)
    assert (ring.active, ring.current) == ((0, 1), 1)
    ring = ring.rotated(b"c" * 16)
    assert (ring.active, ring.current) == ((1, 2), 2)
    assert ring.active_keys() == {1: b"b" * 16, 2: b"c" * 16}
    assert parse_keyring(ring.to_json()) == ring


def test_rotation_wraps_key_ids():
    ring = Keyring(keys={254: b"a" * 16, 255: b"b" * 16}, active=(254, 255), current=255)
    ring = ring.rotated(b"c" * 16)
    assert (ring.active, ring.current) == ((255, 0), 0)


@pytest.mark.parametrize(
    "slots, current", [({}, None), ({4: b"a" * 16}, 4), ({4: b"a" * 16, 5: b"b" * 16}, 5),
                       ({255: b"a" * 16, 0: b"b" * 16}, 0)],
)
def test_keyring_from_map_finds_current(slots, current):
    ring = keyring_from_map(slots)
    assert ring.current == current
    assert ring.active_keys() == slots


def test_session_record_round_trips_and_refuses_bad_data():
    from voxrelay.directory import SessionRecord, parse_session

    record = SessionRecord("call-1", 7, 40000)
    assert parse_session("call-1", record.to_json()) == record
    assert record.to_json() == {"transceiver_id": 7, "port": 40000}
    with pytest.raises(ValueError) as info:
        parse_session("call-1", {"port": 40000})
    assert str(info.value) == "session record is missing 'transceiver_id'"
    with pytest.raises(ValueError) as info:
        SessionRecord("call-1", 7, 0)
    assert str(info.value) == "session port must not be 0"
    with pytest.raises(ValueError) as info:
        SessionRecord("a/b", 7, 40000)
    assert str(info.value).startswith("session id 'a/b' must be 1..256 characters")
