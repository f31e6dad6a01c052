"""Memory released between sessions: a full collection and malloc_trim, when no session runs."""

from __future__ import annotations

import asyncio
import gc
import re
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from pipecat_base.nursery import SessionSpec
from pipecat_base.sessions.memory import freeze_startup_heap, parse_switch, release_memory


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
    assert refs[1]() is not None  # "long" still runs: no collection stalls it
    await long.wait()
    assert refs[0]() is None
    assert refs[1]() is None


@pytest.mark.usefixtures("no_automatic_gc")
async def test_release_can_be_turned_off(make_supervisor, logs):
    refs: list[weakref.ref] = []
    sup = make_supervisor(cycle_bot(refs), release_session_memory=False)
    await (await sup.start(SessionSpec("s1", args=None))).wait()
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
def test_the_startup_heap_is_collected_then_frozen_and_later_cycles_still_freed():
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
        release_memory(malloc_trim=lambda pad: 0)
        assert later_ref() is None
    finally:
        gc.unfreeze()


def test_release_without_malloc_trim_still_collects():
    released = release_memory(malloc_trim=lambda pad: 0)
    assert released.trimmed is False
    assert released.collected >= 0
    assert str(released).startswith("Released session memory: collected ")


async def test_bad_switch_value_is_logged_at_startup_and_release_stays_on(serve_bot, logs):
    from .process import BOTS

    async with serve_bot(str(BOTS / "raw_ws_bot_iter.py"), PCC_RELEASE_SESSION_MEMORY="maybe"):
        pass  # started and shut down: the switch is read at startup
    (error,) = logs.having("PCC_RELEASE_SESSION_MEMORY must be true or false")
    assert error[0] == "ERROR"
