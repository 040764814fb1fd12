# SPDX-License-Identifier: Apache-2.0
"""lab.callers: the caller processes' protocol fails loudly, never hangs.

(The calls themselves run in tests/netns/test_scaleout.py.)"""

from __future__ import annotations

import asyncio

import pytest

from lab.callers import CallerError, CallerGone, CallerPool


def test_pool_needs_a_process() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        CallerPool(None, 0)


async def test_unknown_call_and_request_are_errors_and_a_dead_caller_is_gone() -> None:
    async with CallerPool(None, 2) as pool:
        assert len({c.proc.pid for c in pool.children}) == 2
        child = pool.children[0]
        with pytest.raises(CallerError, match="no call 7"):
            await child.request("counters", call=7)
        with pytest.raises(CallerError, match="unknown request 'dance'"):
            await child.request("dance", call=1)
        child.proc.kill()
        with pytest.raises(CallerGone, match="caller 0"):
            await asyncio.wait_for(child.request("counters", call=1), 10)
        # The other caller still answers.
        with pytest.raises(CallerError, match="no call 1"):
            await pool.children[1].request("counters", call=1)


async def test_placing_a_call_on_an_unreachable_signaling_url_fails_with_the_reason() -> None:
    async with CallerPool(None, 1) as pool:
        with pytest.raises(CallerError, match="ClientConnectorError|Cannot connect|Connect"):
            # Port 9 on loopback: nothing listens.
            await pool.place("http://127.0.0.1:9", "token", timeout=5, wait_model=1)
