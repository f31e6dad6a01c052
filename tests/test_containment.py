"""What a bot cannot do to the server (README: "What a bot cannot do to the server"), in process.

Each test is a hostile or buggy bot; each asserts the session ends with one stop line and the
next session still runs. Process-level faults (signals, exits, fds, children) are in
``tests/test_containment_process.py``.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref
from typing import Any

import pytest
import trio

from pipecat_base.app import create_app
from pipecat_base.nursery import Outcome, SessionSpec


class Fatal(BaseException):
    """A BaseException of the bot's own."""


@pytest.mark.parametrize(
    "raised",
    [SystemExit(3), KeyboardInterrupt(), Fatal("mine")],
    ids=["SystemExit", "KeyboardInterrupt", "BaseException"],
)
async def test_a_base_exception_from_bot_ends_only_its_session(
    autojump_clock, make_supervisor, logs, raised
):
    async def bot(args: Any) -> None:
        if args == "hostile":
            await asyncio.sleep(1)
            raise raised

    supervisor = make_supervisor(bot)
    handle = await supervisor.start(SessionSpec("s1", "hostile"))
    assert await handle.wait() is Outcome.ERROR
    errors = logs.having("Exception running bot()")
    assert len(errors) == 1
    assert type(raised).__name__ in errors[0][2]
    assert "Traceback" in errors[0][2]
    assert len(logs.having("Stopping bot session")) == 1
    # The loop and the server live on.
    assert await (await supervisor.start(SessionSpec("s2", "ok"))).wait() is Outcome.COMPLETED


# The loop scheduler contains it; trio-asyncio's stock scheduler lets it end the loop (README).
@pytest.mark.usefixtures("all_speedups")
async def test_a_callback_raising_system_exit_is_logged_and_the_loop_lives(
    autojump_clock, make_supervisor, logs
):
    async def bot(args: Any) -> None:
        if args == "hostile":
            asyncio.get_running_loop().call_soon(sys.exit, 4)
            await asyncio.sleep(1)

    supervisor = make_supervisor(bot)
    assert await (await supervisor.start(SessionSpec("s1", "hostile"))).wait() in (
        Outcome.COMPLETED,
        Outcome.ERROR,
    )
    assert logs.having("SystemExit")
    assert await (await supervisor.start(SessionSpec("s2", "ok"))).wait() is Outcome.COMPLETED


@pytest.mark.parametrize("method", ["stop", "close"])
async def test_a_bot_stopping_or_closing_the_loop_is_refused_and_later_sessions_run(
    autojump_clock, make_supervisor, logs, method
):
    async def bot(args: Any) -> None:
        if args == "hostile":
            getattr(asyncio.get_running_loop(), method)()
        await asyncio.sleep(1)

    supervisor = make_supervisor(bot)
    assert await (await supervisor.start(SessionSpec("s1", "hostile"))).wait() is (
        Outcome.COMPLETED
    )
    refused = logs.having(f"loop.{method}()")
    assert len(refused) == 1
    assert refused[0][0] == "ERROR"
    assert refused[0][1] == "s1"  # named by the session that tried
    began = trio.current_time()
    assert await (await supervisor.start(SessionSpec("s2", "ok"))).wait() is Outcome.COMPLETED
    assert trio.current_time() - began == 1
    assert supervisor.loop.is_running()


async def test_livez_reports_a_loop_that_stopped_anyway(make_supervisor, logs):
    async def bot(args: Any) -> None:
        pass

    supervisor = make_supervisor(bot)
    client = create_app(supervisor).test_client()
    assert (await client.get("/livez")).status_code == 200
    loop: Any = supervisor.loop
    loop._stopped.set()  # as if it had stopped some way the bridge could not refuse
    try:
        response = await client.get("/livez")
        assert response.status_code == 503
        assert (await response.get_json())["status"] == "dead"
        assert logs.having("The asyncio loop is no longer running")
    finally:
        loop._stopped = trio.Event()  # so the fixture's exit still works


class Big:
    """Stands in for a session's large objects (300 MB of model or audio buffers)."""


async def test_a_cancelled_sessions_objects_are_released_at_its_end(
    autojump_clock, make_supervisor
):
    kept: list[weakref.ref[Big]] = []

    async def bot(args: Any) -> None:
        big = Big()
        kept.append(weakref.ref(big))
        await asyncio.sleep(1000)  # cancelled by its budget, `big` on the frame

    supervisor = make_supervisor(bot, release_session_memory=True)
    gc.disable()  # only the supervisor's own release may free it
    try:
        handle = await supervisor.start(SessionSpec("s1", None, budget=1))
        assert await handle.wait() is Outcome.BUDGET
        await supervisor.memory_released()
        assert kept[0]() is None
    finally:
        gc.enable()
