"""Memory released between sessions: a full collection and malloc_trim, when no session runs."""

from __future__ import annotations

import asyncio
import gc
import re
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from pipecat_base.nursery import SessionSpec
from pipecat_base.sessions.memory import (
    QUIET,
    SETTLE_BOUND,
    AfterSessions,
    freeze_startup_heap,
    parse_switch,
    release_memory,
)


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cycle collector frees it


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    # Only the server's own collection may free the cycles these tests leave.
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def cycle_bot(refs: list[weakref.ref]):
    async def bot(args: Any) -> None:
        node = Node()
        refs.append(weakref.ref(node))
        await asyncio.sleep(args or 0)

    return bot


@pytest.mark.usefixtures("no_automatic_gc")
async def test_cycle_left_by_a_session_is_freed_after_it(make_supervisor, logs):
    refs: list[weakref.ref] = []
    sup = make_supervisor(cycle_bot(refs))
    await (await sup.start(SessionSpec("s1", args=None))).wait()
    # The session's end is told (its /bot answers) before the collection: off the response path.
    assert refs[0]() is not None
    assert not logs.having("Released session memory")
    await sup.memory_released()
    assert refs[0]() is None
    (line,) = logs.having("Released session memory")
    assert line[0] == "DEBUG"
    assert re.fullmatch(
        r"Released session memory: collected \d+ objects in [\d.]+ ms, "
        r"malloc_trim returned memory: (True|False) in [\d.]+ ms",
        line[2],
    )


@pytest.mark.usefixtures("no_automatic_gc")
async def test_release_is_skipped_while_another_session_runs(make_supervisor, autojump_clock):
    refs: list[weakref.ref] = []
    sup = make_supervisor(cycle_bot(refs))
    long = await sup.start(SessionSpec("long", args=10))
    short = await sup.start(SessionSpec("short", args=1))
    await short.wait()
    await sup.memory_released()
    assert refs[1]() is not None  # "long" still runs: no collection stalls it
    await long.wait()
    await sup.memory_released()
    assert refs[0]() is None
    assert refs[1]() is None


@pytest.mark.usefixtures("no_automatic_gc")
async def test_a_session_started_before_the_release_ran_is_not_made_to_wait_for_it(
    make_supervisor, logs, autojump_clock
):
    refs: list[weakref.ref] = []
    sup = make_supervisor(cycle_bot(refs))
    await (await sup.start(SessionSpec("first", args=None))).wait()
    began = trio.current_time()
    second = await sup.start(SessionSpec("second", args=5))  # before the release's task ran
    await sup.memory_released()
    assert refs[0]() is not None  # skipped: the second session runs
    assert not logs.having("Released session memory")
    await second.wait()
    assert trio.current_time() - began == pytest.approx(5)
    await sup.memory_released()
    assert refs[0]() is None
    assert refs[1]() is None
    assert len(logs.having("Released session memory")) == 1


async def test_the_trim_runs_off_the_trio_thread_and_is_skipped_once_a_session_started():
    threads: list[int] = []

    def trim(pad: int) -> int:
        threads.append(threading.get_ident())
        return 1

    released = await release_memory(lambda: False, malloc_trim=trim)
    assert released is not None
    assert released.trimmed is True
    assert threads
    assert threads[0] != threading.get_ident()
    # Busy from the start: nothing at all; busy after the collection: no trim.
    assert await release_memory(lambda: True, malloc_trim=trim) is None
    answers = iter([False, True])
    released = await release_memory(lambda: next(answers), malloc_trim=trim)
    assert released is not None
    assert released.trimmed is False
    assert len(threads) == 1


async def test_requests_during_a_release_run_it_once_more(autojump_clock):
    settled: list[float] = []
    gate = trio.Event()

    async def settle() -> None:
        settled.append(trio.current_time())
        if len(settled) == 1:
            await gate.wait()

    after = AfterSessions(lambda: False, settle, malloc_trim=lambda pad: 0)
    async with trio.open_nursery() as nursery:
        after.request(nursery)
        await trio.sleep(QUIET * 2)
        after.request(nursery)  # while the first waits in settle: no second task, one rerun
        after.request(nursery)
        gate.set()
        await after.wait()
    assert settled == [QUIET, QUIET * 3]  # the rerun waits its own quiet time too
    await after.wait()  # nothing pending: at once


async def test_a_loop_that_never_settles_delays_the_release_by_its_bound_only(autojump_clock):
    async def never() -> None:
        await trio.sleep_forever()

    after = AfterSessions(lambda: False, never, malloc_trim=lambda pad: 0)
    async with trio.open_nursery() as nursery:
        after.request(nursery)
        await after.wait()
    assert trio.current_time() == QUIET + SETTLE_BOUND


async def test_back_to_back_sessions_release_once_after_the_last(
    make_supervisor, logs, autojump_clock
):
    refs: list[weakref.ref] = []
    sup = make_supervisor(cycle_bot(refs))
    for i in range(5):  # each starts within QUIET of the previous one's end
        await (await sup.start(SessionSpec(f"s{i}", args=None))).wait()
        await trio.sleep(QUIET / 2)
    await sup.memory_released()
    assert all(ref() is None for ref in refs)
    assert len(logs.having("Released session memory")) == 1


@pytest.mark.usefixtures("no_automatic_gc")
async def test_release_can_be_turned_off(make_supervisor, logs):
    refs: list[weakref.ref] = []
    sup = make_supervisor(cycle_bot(refs), release_session_memory=False)
    await (await sup.start(SessionSpec("s1", args=None))).wait()
    await sup.memory_released()
    assert refs[0]() is not None
    assert not logs.having("Released session memory")


@pytest.mark.parametrize(
    ("raw", "on", "error"),
    [
        (None, True, None),
        ("true", True, None),
        (" TRUE ", True, None),
        ("false", False, None),
        ("False\n", False, None),
        ("0", True, "PCC_RELEASE_SESSION_MEMORY must be true or false, not '0'; leaving it on."),
        ("no", True, "PCC_RELEASE_SESSION_MEMORY must be true or false, not 'no'; leaving it on."),
        ("", True, "PCC_RELEASE_SESSION_MEMORY must be true or false, not ''; leaving it on."),
    ],
)
def test_switch_parsing(raw, on, error):
    assert parse_switch(raw) == (on, error)


@pytest.mark.usefixtures("no_automatic_gc")
async def test_the_startup_heap_is_collected_then_frozen_and_later_cycles_still_freed():
    garbage = Node()
    garbage_ref = weakref.ref(garbage)
    del garbage
    alive = Node()
    try:
        assert freeze_startup_heap() == gc.get_freeze_count() > 0
        assert garbage_ref() is None  # collected first, not frozen
        assert not any(o is alive for o in gc.get_objects())  # out of every collection
        later = Node()
        later_ref = weakref.ref(later)
        del later
        await release_memory(lambda: False, lambda pad: 0)
        assert later_ref() is None
    finally:
        gc.unfreeze()


async def test_release_without_malloc_trim_still_collects():
    released = await release_memory(lambda: False, malloc_trim=lambda pad: 0)
    assert released is not None
    assert released.trimmed is False
    assert released.collected >= 0
    assert str(released).startswith("Released session memory: collected ")


async def test_bad_switch_value_is_logged_at_startup_and_release_stays_on(serve_bot, logs):
    from .process import BOTS

    async with serve_bot(str(BOTS / "raw_ws_bot_iter.py"), PCC_RELEASE_SESSION_MEMORY="maybe"):
        pass  # started and shut down: the switch is read at startup
    (error,) = logs.having("PCC_RELEASE_SESSION_MEMORY must be true or false")
    assert error[0] == "ERROR"


@pytest.mark.usefixtures("no_automatic_gc")
async def test_a_drain_drops_the_release_after_the_last_session(
    make_supervisor, logs, autojump_clock
):
    # The session nursery's exit waits for its tasks: a release still waiting for quiet would
    # hold the shutdown for it, to give memory back to a process about to exit.
    refs: list[weakref.ref] = []
    sup = make_supervisor(cycle_bot(refs))
    await (await sup.start(SessionSpec("s1", args=None))).wait()
    began = trio.current_time()
    await sup.drain(trio.current_time() + 10)
    await sup.memory_released()
    assert trio.current_time() == began  # no quiet wait, no settle
    assert not logs.having("Released session memory")
