"""pipecat_base.testing: the bot authors' kit reports what the real supervisor did.

The bundled bots' example tests (examples/*/test_*_bot.py) show the kit as a user writes it;
these check the reports a user relies on for the bots that misbehave.
"""

from __future__ import annotations

import asyncio
from typing import Any

import trio

from pipecat_base.testing import open_bot_runtime

from .process import BOTS


async def test_a_bot_ignoring_cancellation_is_reported_abandoned_within_the_bound(
    bot_runtime, autojump_clock, tmp_path
):
    runtime = await bot_runtime(BOTS / "stubborn_bot.py", SESSION_CANCEL_GRACE="2")
    session = await runtime.start_bot({"marker": str(tmp_path / "m")}, budget=1)
    await session.ended()
    assert session.abandoned
    assert session.outcome == "abandoned"
    assert session.ended_at == session.started_at + 1 + 2 + 0.5  # budget, grace, second cancel
    assert session.lines("ignored cancellation")
    assert (session.start_lines, session.stop_lines) == (1, 1)


async def test_leaked_tasks_are_named(bot_runtime, autojump_clock):
    async def leaky(args: Any) -> None:
        asyncio.get_running_loop().create_task(asyncio.sleep(3600), name="uploader")

    runtime = await bot_runtime(leaky)
    session = await runtime.start_bot()
    await session.ended()
    assert session.outcome == "completed"
    assert len(session.leaked) == 1
    assert session.leaked[0].startswith("cancelled uploader")


async def test_stop_by_id_and_a_refused_start(bot_runtime, autojump_clock):
    async def waits(args: Any) -> None:
        await asyncio.sleep(3600)

    runtime = await bot_runtime(waits)
    session = await runtime.start_bot(session_id="mine")
    assert runtime.session("mine") is session
    assert session.stop("the test is done")
    await session.ended()
    assert session.outcome == "stopped"
    assert session.lines("Bot session stopped: the test is done")

    await runtime.shutdown(seconds=0)
    refused = await runtime.start_bot()
    await refused.ended()
    assert refused.outcome is None
    assert refused.start_lines == 0
    assert refused.lines("/bot answered 503")


async def test_a_bot_blocking_the_loop_counts_as_a_stall():
    # Real time: the watchdog thread measures how long the loop is really blocked.
    async with open_bot_runtime(BOTS / "blocking_bot.py", LOOP_STALL_WARNING="0.2") as runtime:
        session = await runtime.start_bot({"block": "sleep", "seconds": 0.6})
        with trio.fail_after(10):
            await session.ended()
        assert runtime.stalls == 1
    assert session.outcome == "completed"
    assert [r for r in runtime.records if "Event loop blocked" in r.message]


async def test_a_relative_bot_path_is_found_beside_the_test_file(bot_runtime, autojump_clock):
    # "bots/stubborn_bot.py" is next to this file, not under the working directory.
    runtime = await bot_runtime("bots/stubborn_bot.py")
    assert runtime.bot_module.name == "stubborn_bot"


def test_the_kit_without_trio_mode_says_what_to_set(pytester):
    pytester.makeconftest('pytest_plugins = ["pipecat_base.testing"]')
    pytester.makepyfile(
        """
        async def test_needs_trio(bot_runtime):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*trio_mode = true*"])
    assert result.ret != 0
