"""How the telephony echo bot behaves on a call that ends: tests a bot author writes.

A Twilio-style caller (``runtime.start_call()``) speaks Media Streams JSON to the real ``/ws``
route over an in-memory socket, so the pipecat pipeline runs for real while the clock is
virtual. See ``examples/hello/test_hello_bot.py`` for how the kit is enabled.
"""

from functools import partial
from pathlib import Path

import pytest
import trio

pytest.importorskip("pipecat", reason="the bot is a pipecat pipeline (pipecat-ai needs 3.11+)")

BOT = Path(__file__).with_name("bot.py")
GOING_AWAY = 1001


async def test_caller_hangs_up_and_the_bot_ends_its_pipeline(bot_runtime, autojump_clock):
    runtime = await bot_runtime(BOT)
    call = await runtime.start_call()
    await call.say(seconds=1)
    await call.heard_at_least(8000)
    assert len(call.heard) == 8000  # every byte played back
    hung_up = await call.hang_up()
    await call.session.ended()
    assert call.session.outcome == "completed"  # ended by on_client_disconnected, not stopped
    assert call.session.ended_at - hung_up < 0.1
    assert call.session.lines("echo: cleaned up")
    assert call.session.leaked == []


async def test_budget_ends_the_call_and_the_socket_says_going_away(bot_runtime, autojump_clock):
    runtime = await bot_runtime(BOT)
    call = await runtime.start_call(budget=2)
    await call.say(seconds=3)  # longer than the budget
    assert await call.closed() == GOING_AWAY
    assert call.session.outcome == "budget"
    assert call.session.ended_at - call.session.started_at < 2 + 0.5
    assert call.session.lines("echo: cleaned up")  # pipecat ran its cancel path


async def test_shutdown_during_a_call(bot_runtime, autojump_clock):
    runtime = await bot_runtime(BOT)
    call = await runtime.start_call()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(call.say, seconds=5))  # the caller goes on talking
        began = trio.current_time()
        await runtime.shutdown(seconds=1)  # SIGTERM: one second to finish, then stopped
        nursery.cancel_scope.cancel()
    assert call.session.outcome == "shutdown"
    assert call.session.ended_at - began < 1 + runtime.cancel_grace
    assert await call.closed() == GOING_AWAY
