"""How the hello bot behaves when the platform stops it: tests a bot author writes.

Run with the server's test kit enabled (``-p pipecat_base.testing``, or
``pytest_plugins = ["pipecat_base.testing"]`` in your top-level ``conftest.py``) and pytest-trio
in Trio mode. The bot only waits on ``asyncio.sleep``, so the clock is virtual: the 0.9 s of
work takes no real time, and every duration below is exact.
"""

from pathlib import Path

import trio

BOT = Path(__file__).with_name("bot.py")


async def test_runs_to_its_end_without_a_budget(bot_runtime, autojump_clock):
    runtime = await bot_runtime(BOT)
    session = await runtime.start_bot({"name": "Ada"})
    await session.ended()
    assert session.outcome == "completed"
    assert session.ended_at - session.started_at == 0.3 + 0.3 + 0.3  # its three steps
    assert session.lines("Hello, Ada!")
    assert (session.start_lines, session.stop_lines) == (1, 1)


async def test_budget_stops_it_at_once(bot_runtime, autojump_clock):
    runtime = await bot_runtime(BOT)
    session = await runtime.start_bot(budget=0.5)
    await session.ended()
    assert session.outcome == "budget"
    assert session.ended_at - session.started_at == 0.5  # it unwinds without delay
    assert session.lines("Bot session stopped: maximum session duration reached (0.5s)")
    assert session.lines("Goodbye") == []  # cancelled mid-way
    assert session.leaked == []
    assert (session.start_lines, session.stop_lines) == (1, 1)


async def test_shutdown_waits_for_it_then_stops_it(bot_runtime, autojump_clock):
    runtime = await bot_runtime(BOT)
    waited_for = await runtime.start_bot()
    await runtime.shutdown(seconds=5)  # SIGTERM with time to spare: the session finishes
    assert waited_for.outcome == "completed"

    runtime = await bot_runtime(BOT)
    cut_short = await runtime.start_bot()
    began = trio.current_time()
    await runtime.shutdown(seconds=0.4)  # too little: stopped with reason "shutdown"
    assert cut_short.outcome == "shutdown"
    assert cut_short.ended_at == began + 0.4
    assert cut_short.lines("Bot session stopped: shutdown")
