"""SessionSupervisor in virtual time: real asyncio bots on a real trio-asyncio loop.

Every test takes ``autojump_clock`` (as an argument: pytest-trio only picks up a clock
from the test's own parameters) and asserts exact times: asyncio's timers run on Trio's
clock under trio-asyncio, so a budget of 10 s ends a session at exactly t0 + 10.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import platform
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from pipecat_base.bridge.loop import SECOND_CANCEL_WINDOW, open_bridge_loop
from pipecat_base.nursery import (
    AtCapacity,
    Draining,
    Outcome,
    SessionEvent,
    SessionSpec,
    SessionSupervisor,
    stop_unless_ended,
)
from pipecat_base.routes.health import readiness

from .conftest import PIPECAT

FOREVER = 10_000.0


class Recorder:
    """What the asyncio side of a bot saw."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []

    def note(self, event: str) -> None:
        self.events.append((event, asyncio.get_running_loop().time()))

    def names(self) -> list[str]:
        return [e for e, _ in self.events]


def sleeper(rec: Recorder, seconds: float = FOREVER):
    async def bot(args: Any) -> None:
        rec.note("start")
        try:
            await asyncio.sleep(seconds)
            rec.note("done")
        except asyncio.CancelledError:
            rec.note("cancelled")
            raise
        finally:
            rec.note("finally")

    return bot


async def test_budget_fires_at_exactly_the_budget(autojump_clock, make_supervisor, logs):
    rec = Recorder()
    sup = make_supervisor(sleeper(rec))
    t0 = trio.current_time()
    handle = await sup.start(SessionSpec("s1", args=None, budget=10))
    assert await handle.wait() == Outcome.BUDGET
    assert trio.current_time() == t0 + 10
    assert rec.events == [("start", t0), ("cancelled", t0 + 10), ("finally", t0 + 10)]
    assert logs.having("Bot session stopped: maximum session duration reached (10s)")[0][:2] == (
        "WARNING",
        "s1",
    )


async def test_bot_finishing_early_is_not_cancelled(autojump_clock, make_supervisor):
    rec = Recorder()
    sup = make_supervisor(sleeper(rec, 3))
    t0 = trio.current_time()
    handle = await sup.start(SessionSpec("s1", args=None, budget=10))
    assert await handle.wait() == Outcome.COMPLETED
    assert trio.current_time() == t0 + 3
    assert rec.names() == ["start", "done", "finally"]


async def test_start_stop_pair_logged_once_with_session_id(autojump_clock, make_supervisor, logs):
    async def bot(args: Any) -> None:
        from loguru import logger

        logger.info("inside the bot")

    sup = make_supervisor(bot, image_version="1.2.3")
    await (await sup.start(SessionSpec("abc", args=None))).wait()
    meta = '{"session_id": "abc", "image_version": "1.2.3"}'
    pipecat = importlib.metadata.version("pipecat-ai") if PIPECAT else "unknown"
    runtime = (
        f'"pipecat_version": "{pipecat}", "python_version": "{platform.python_version()}", '
        f'"image_version": "1.2.3", "arch": "{platform.machine()}"'
    )
    assert logs.having("Starting bot session") == [
        ("INFO", "abc", f'Starting bot session with metadata: {{"session_id": "abc", {runtime}}}')
    ]
    assert logs.having("Stopping bot session") == [
        ("INFO", "abc", f"Stopping bot session with metadata: {meta}")
    ]
    # The asyncio side logs under the session id too.
    assert logs.having("inside the bot")[0][1] == "abc"


async def test_asyncio_bot_sees_cancellation_runs_finally_and_logs_pair_once(
    autojump_clock, make_supervisor, logs
):
    seen: list[str] = []

    async def bot(args: Any) -> None:
        try:
            await asyncio.sleep(FOREVER)
        except asyncio.CancelledError:
            seen.append("CancelledError")  # caught, recorded, and swallowed like pipecat's runner
        finally:
            seen.append("finally")

    sup = make_supervisor(bot)
    handle = await sup.start(SessionSpec("s1", args=None, budget=1))
    assert await handle.wait() == Outcome.BUDGET
    assert seen == ["CancelledError", "finally"]
    assert len(logs.having("Starting bot session")) == 1
    assert len(logs.having("Stopping bot session")) == 1


async def test_bot_exception_is_logged_once_with_traceback_and_server_lives(
    autojump_clock, make_supervisor, logs
):
    async def bot(args: Any) -> None:
        if args == "boom":
            raise ValueError("kaput")

    sup = make_supervisor(bot)
    assert await (await sup.start(SessionSpec("s1", args="boom"))).wait() == Outcome.ERROR
    errors = logs.having("Exception running bot()")
    assert len(errors) == 1
    assert errors[0][0] == "ERROR"
    assert "kaput" in errors[0][2]
    assert "Traceback" in errors[0][2]
    assert await (await sup.start(SessionSpec("s2", args="ok"))).wait() == Outcome.COMPLETED


async def test_unretrieved_task_exception_is_logged_and_server_keeps_serving(
    autojump_clock, make_supervisor, logs
):
    async def failing() -> None:
        raise RuntimeError("nobody awaits me")

    async def bot(args: Any) -> None:
        if args == "leaky":
            task = asyncio.get_running_loop().create_task(failing())
            await asyncio.sleep(1)
            del task  # dropped unawaited: asyncio reports it through the exception handler

    sup = make_supervisor(bot)
    assert await (await sup.start(SessionSpec("s1", args="leaky"))).wait() == Outcome.COMPLETED
    gc.collect()
    await trio.sleep(1)
    reported = logs.having("Task exception was never retrieved")
    assert reported
    assert reported[0][0] == "ERROR"
    assert "nobody awaits me" in reported[0][2]
    # The loop and the supervisor are still up.
    assert await (await sup.start(SessionSpec("s2", args="ok"))).wait() == Outcome.COMPLETED


async def test_drain_waits_for_a_finishing_session_and_ends_when_it_ends(
    autojump_clock, make_supervisor
):
    rec = Recorder()
    sup = make_supervisor(sleeper(rec, 30))
    t0 = trio.current_time()
    handle = await sup.start(SessionSpec("s1", args=None))
    await sup.drain(t0 + 100)
    assert trio.current_time() == t0 + 30
    assert handle.outcome == Outcome.COMPLETED
    assert rec.names() == ["start", "done", "finally"]


async def test_drain_deadline_cancels_the_rest_at_exactly_shutdown_timeout(
    autojump_clock, make_supervisor, logs
):
    rec = Recorder()
    sup = make_supervisor(sleeper(rec))
    t0 = trio.current_time()
    handle = await sup.start(SessionSpec("s1", args=None))
    await sup.drain(t0 + 60)
    assert trio.current_time() == t0 + 60
    assert handle.outcome == Outcome.SHUTDOWN
    assert rec.events[1:] == [("cancelled", t0 + 60), ("finally", t0 + 60)]
    assert logs.having("Bot session stopped: shutdown")[0][:2] == ("WARNING", "s1")


async def test_draining_refuses_new_sessions(autojump_clock, make_supervisor):
    sup = make_supervisor(sleeper(Recorder(), 1))
    await sup.drain(trio.current_time() + 5)
    with pytest.raises(Draining):
        await sup.start(SessionSpec("late", args=None))
    assert await readiness(sup, None) == ({"status": "draining"}, 503)


async def test_bot_swallowing_cancellation_is_abandoned_and_readyz_degraded(
    autojump_clock, make_supervisor, logs
):
    ticks: list[float] = []
    release = asyncio.Event()

    async def stubborn(args: Any) -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(1)
                ticks.append(asyncio.get_running_loop().time())
            except asyncio.CancelledError:
                pass  # swallows every cancellation

    sup = make_supervisor(stubborn, cancel_grace=5)
    t0 = trio.current_time()
    handle = await sup.start(SessionSpec("zombie", args=None, budget=10))
    assert await handle.wait() == Outcome.ABANDONED
    assert trio.current_time() == t0 + 10 + 5 + SECOND_CANCEL_WINDOW
    assert sup.abandoned_sessions == ["zombie"]
    abandoned = logs.having("ignored cancellation")
    assert abandoned[0][:2] == ("ERROR", "zombie")
    assert len(logs.having("Stopping bot session")) == 1
    assert await readiness(sup, None) == (
        {"status": "degraded", "abandoned_sessions": ["zombie"]},
        503,
    )
    # Abandoned is not frozen: the task keeps running on the shared loop...
    before = len(ticks)
    await trio.sleep(3)
    assert len(ticks) > before
    # ...and the server still runs new sessions.
    assert await (await sup.start(SessionSpec("next", args=None, budget=1))).wait() == (
        Outcome.ABANDONED
    )
    release.set()  # let the abandoned tasks end, so the test leaves nothing running
    await trio.sleep(2)


async def test_bot_swallowing_one_cancellation_ends_on_the_second(autojump_clock, make_supervisor):
    seen: list[float] = []

    async def swallow_once(args: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(FOREVER)
        except asyncio.CancelledError:
            seen.append(loop.time())
        await asyncio.sleep(FOREVER)  # cleanup that would hang; the second cancel ends it

    sup = make_supervisor(swallow_once, cancel_grace=5)
    t0 = trio.current_time()
    handle = await sup.start(SessionSpec("s1", args=None, budget=2))
    assert await handle.wait() == Outcome.BUDGET
    assert seen == [t0 + 2]
    assert trio.current_time() == t0 + 2 + 5
    assert sup.abandoned_sessions == []


async def test_slow_cleanup_within_grace_completes(autojump_clock, make_supervisor):
    done: list[float] = []

    async def slow_cleanup(args: Any) -> None:
        try:
            await asyncio.sleep(FOREVER)
        finally:
            await asyncio.shield(asyncio.sleep(3))
            done.append(asyncio.get_running_loop().time())

    sup = make_supervisor(slow_cleanup, cancel_grace=5)
    t0 = trio.current_time()
    handle = await sup.start(SessionSpec("s1", args=None, budget=1))
    assert await handle.wait() == Outcome.BUDGET
    assert done == [t0 + 4]
    assert trio.current_time() == t0 + 4


async def test_stop_by_id_stops_only_that_session(autojump_clock, make_supervisor, logs):
    recs = {"a": Recorder(), "b": Recorder()}

    async def bot(args: Any) -> None:
        await sleeper(recs[args])(args)

    sup = make_supervisor(bot)
    t0 = trio.current_time()
    a = await sup.start(SessionSpec("a", args="a"))
    b = await sup.start(SessionSpec("b", args="b"))
    await trio.sleep(5)
    assert sup.stop("a", "operator asked") is True
    assert await a.wait() == Outcome.STOPPED
    assert trio.current_time() == t0 + 5
    assert recs["a"].names() == ["start", "cancelled", "finally"]
    assert recs["b"].names() == ["start"]
    assert logs.having("Bot session stopped: operator asked")[0][1] == "a"
    assert sup.stop("a", "again") is False
    assert sup.stop("nobody", "x") is False
    assert b.stop("done with b") is True
    assert await b.wait() == Outcome.STOPPED


async def test_capacity_refuses_and_readyz_reports_it(autojump_clock, make_supervisor):
    sup = make_supervisor(sleeper(Recorder(), 10), max_sessions=1)
    first = await sup.start(SessionSpec("one", args=None))
    assert sup.at_capacity
    with pytest.raises(AtCapacity, match="1 sessions already running"):
        await sup.start(SessionSpec("two", args=None))
    assert await readiness(sup, None) == ({"status": "at capacity"}, 503)
    await first.wait()
    assert not sup.at_capacity
    assert await readiness(sup, None) == ({"status": "ok"}, 200)


async def test_concurrent_starts_cannot_both_take_the_last_slot(autojump_clock, make_supervisor):
    sup = make_supervisor(sleeper(Recorder(), 10), max_sessions=1)
    results: list[str] = []

    async def try_start(sid: str) -> None:
        try:
            await sup.start(SessionSpec(sid, args=None))
            results.append("started")
        except AtCapacity:
            results.append("refused")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(try_start, "x")
        nursery.start_soon(try_start, "y")
    assert sorted(results) == ["refused", "started"]


async def test_sessions_have_independent_budgets(autojump_clock, make_supervisor):
    sup = make_supervisor(sleeper(Recorder()))
    t0 = trio.current_time()
    short = await sup.start(SessionSpec("short", args=None, budget=2))
    long = await sup.start(SessionSpec("long", args=None, budget=7))
    assert await short.wait() == Outcome.BUDGET
    assert trio.current_time() == t0 + 2
    assert await long.wait() == Outcome.BUDGET
    assert trio.current_time() == t0 + 7


async def test_a_connection_nursery_cancelled_from_outside_ends_as_shutdown(autojump_clock):
    """A WebRTC-style ``connect`` with a nursery of its own hands an outside cancellation on
    as a group of Cancelled (trio >= 0.25): still a shutdown, not an error."""

    @asynccontextmanager
    async def connect(_handle: Any) -> AsyncIterator[Any]:
        async with trio.open_nursery() as watcher:
            watcher.start_soon(trio.sleep_forever)
            await trio.sleep_forever()  # waiting for a peer that never comes
            yield None

    async with open_bridge_loop() as loop:
        with trio.CancelScope() as outer:
            async with trio.open_nursery() as nursery:
                supervisor = SessionSupervisor(nursery, loop, sleeper(Recorder()))
                handle = await supervisor.start(SessionSpec("s1", None, connect=connect))
                outer.cancel()
    assert handle.outcome is Outcome.SHUTDOWN


async def test_the_supervisor_tells_its_listener_of_each_start_and_end(autojump_clock):
    events: list[SessionEvent] = []

    async def leaky(args: Any) -> None:
        asyncio.get_running_loop().create_task(asyncio.sleep(FOREVER), name="uploader")
        await asyncio.sleep(2)

    async with open_bridge_loop() as loop, trio.open_nursery() as nursery:
        supervisor = SessionSupervisor(nursery, loop, leaky, cancel_grace=1, on_event=events.append)
        began = trio.current_time()
        handle = await supervisor.start(SessionSpec("s1", None))
        await handle.wait()
    assert [(e.kind, e.session_id, e.time - began, e.outcome) for e in events] == [
        ("started", "s1", 0, None),
        ("ended", "s1", 2, Outcome.COMPLETED),
    ]
    assert events[1].leaked == ("cancelled uploader (sleep)",)


async def test_stop_unless_ended_gives_the_bot_its_grace_then_stops_it(
    autojump_clock, make_supervisor
):
    supervisor = make_supervisor(sleeper(Recorder()))
    handle = await supervisor.start(SessionSpec("s1", None))
    began = trio.current_time()
    await stop_unless_ended(handle, 3)
    assert await handle.wait() is Outcome.CLIENT_DISCONNECTED
    assert trio.current_time() - began == 3  # then stopped at once: it unwinds without delay

    finisher = make_supervisor(sleeper(Recorder(), seconds=1))
    handle = await finisher.start(SessionSpec("s2", None))
    await stop_unless_ended(handle, 3)
    assert handle.outcome is Outcome.COMPLETED  # it ended by itself within the grace
