"""The bridge loop's scheduler: asyncio's ready queue and timers, run in batches per Trio round.

trio-asyncio runs asyncio callbacks from one Trio task that takes one callback per iteration,
each behind a blocking memory-channel receive inside a fresh deadline cancel scope: a full Trio
scheduling round, a channel send and a channel receive per asyncio callback. pipecat's
pipelines run thousands of callbacks per second per call (every task wake-up, every queue
hand-off between processors is one), so that machinery dominated the media path's CPU
(docs/benchmarks.md). `install` replaces it on a trio-asyncio loop with what asyncio itself
does, on the same Trio task:

* a **deque** of ready handles and a **heap** of timers (trio-asyncio's own ``_timers``),
  filled directly by ``call_soon``/``call_at``; the loop's memory channel is replaced by
  `ReadyQueue`, so the thread-safe and signal paths (``run_sync_soon(_q_send.send_nowait)``)
  land in the same deque;
* per Trio round, **asyncio iterations** as in ``BaseEventLoop._run_once``: due timers join the
  ready queue after what is already queued, then exactly the handles ready at that moment run;
  callbacks they queue run in the next iteration. Up to `ITERATIONS_PER_ROUND` iterations, or
  `ROUND_BUDGET` seconds, run before the task yields to Trio, so Trio tasks (the sockets, the
  session's cancel scopes) get the CPU back at least every few hundred microseconds;
* when nothing is ready, the task sleeps (parked, one Trio step per wake-up) until a handle is
  queued or until the first timer's deadline (the loop's ``time()`` is Trio's clock, so
  asyncio deadlines are Trio deadlines, and virtual-time tests drive asyncio timers too).

It relies on trio-asyncio internals (``_main_loop_one``, ``_q_send``, ``_timers``,
``_nursery``, its ``AsyncHandle``); when they are not as expected, nothing is replaced and a
warning says so. Tested in tests/test_bridge.py.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
import types
from collections import deque
from collections.abc import Callable
from typing import Any

import trio
from loguru import logger

try:  # asyncio's own per-thread running loop (C); the pure-Python twins otherwise
    from _asyncio import _get_running_loop as get_running_loop
    from _asyncio import _set_running_loop as set_running_loop
except ImportError:  # pragma: no cover
    from asyncio.events import _get_running_loop as get_running_loop  # type: ignore[assignment]
    from asyncio.events import _set_running_loop as set_running_loop  # type: ignore[assignment]

# How many asyncio iterations, and how many seconds of callbacks, one Trio round may run. A
# chain of callbacks (a task wakes another, which wakes the next: one pipecat frame crossing its
# processors) takes one iteration per link; without this, every link costs a Trio round.
ITERATIONS_PER_ROUND = 16
ROUND_BUDGET = 0.0005


class ReadyQueue:
    """asyncio's ready queue and timer heap, standing in for trio-asyncio's memory channel."""

    __slots__ = ("_waiter", "ready", "timers")

    def __init__(self, timers: list[asyncio.TimerHandle]) -> None:
        self.ready: deque[asyncio.Handle] = deque()
        self.timers = timers
        # The loop's task while it sleeps in `wait` (parked directly: a trio.Event per idle
        # costs an allocation and a parking lot for one known waiter).
        self._waiter: trio.lowlevel.Task | None = None

    def send_nowait(self, handle: asyncio.Handle) -> None:
        """Queue ``handle`` (the name is the memory channel's, which trio-asyncio calls)."""
        if isinstance(handle, asyncio.TimerHandle):
            heapq.heappush(self.timers, handle)
            self._wake()
        else:
            self.push(handle)

    def push(self, handle: asyncio.Handle) -> None:
        """Queue a ready ``handle`` (not a timer)."""
        self.ready.append(handle)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter)

    async def wait(self, time_now: float) -> None:
        """Return when a handle is ready or the first timer is due (``time_now`` is Trio time)."""
        timers = self.timers
        while timers and timers[0]._cancelled:  # as asyncio does: no wake-up for a dead timer
            heapq.heappop(timers)
        if self.ready:
            return
        deadline = timers[0]._when if timers else math.inf
        if deadline <= time_now:
            return
        self._waiter = trio.lowlevel.current_task()
        if deadline == math.inf:
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        else:
            with trio.move_on_at(deadline):
                await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _abort(self, _: Any) -> trio.lowlevel.Abort:
        # The deadline (or a cancellation) ended the sleep: no handle may wake it any more.
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    def pending(self, time_now: float) -> bool:
        """A handle is ready, or a timer is due (``time_now`` is Trio time)."""
        return bool(self.ready) or bool(self.timers and self.timers[0]._when <= time_now)

    def take_due(self, time_now: float) -> None:
        """Move the timers due at ``time_now`` to the end of the ready queue."""
        timers, ready = self.timers, self.ready
        while timers and timers[0]._when <= time_now:
            ready.append(heapq.heappop(timers))


def speed_up_running_loop_lookup() -> bool:
    """Give trio-asyncio's ``asyncio._get_running_loop`` a fast path (once per process).

    trio-asyncio replaces it process-wide with a Python function that asks Trio for the current
    task and reads a context variable -- on every future, queue and lock asyncio creates, so
    a few percent of a pipecat call's CPU. While `install`'s scheduler runs a batch of
    callbacks, the loop is also asyncio's own (C, per-thread) running loop, which answers
    first; outside batches trio-asyncio's lookup answers, as before. False if trio-asyncio's
    function is not where expected (nothing is changed then).
    """
    from trio_asyncio import _loop as trio_asyncio_loop

    current = asyncio.events._get_running_loop
    if getattr(current, "fast_path", False):
        return True
    trio_lookup = getattr(trio_asyncio_loop, "_new_run_get", None)
    if trio_lookup is None or current is not trio_lookup:
        return False

    def running_loop() -> asyncio.AbstractEventLoop | None:
        return get_running_loop() or trio_lookup()

    running_loop.fast_path = True  # type: ignore[attr-defined]
    # trio-asyncio's get_running_loop and current_task call it by this module-global name.
    trio_asyncio_loop._new_run_get = running_loop
    asyncio.events._get_running_loop = running_loop
    asyncio._get_running_loop = running_loop  # type: ignore[attr-defined]
    return True


def install(loop: asyncio.AbstractEventLoop) -> bool:
    """Replace the scheduler of trio-asyncio's ``loop`` (see the module doc); False if unable."""
    from trio_asyncio import _base as trio_asyncio_base

    async_handle = getattr(trio_asyncio_base, "AsyncHandle", None)
    sniffio_local = getattr(trio_asyncio_base, "sniffio_library", None)
    if (
        getattr(loop, "_main_loop_one", None) is None
        or async_handle is None
        or sniffio_local is None
        or not isinstance(getattr(loop, "_timers", None), list)
        or not isinstance(getattr(loop, "_q_send", None), trio.MemorySendChannel)
    ):
        logger.warning("trio-asyncio's loop internals changed; keeping its own scheduler")
        return False
    queue = ReadyQueue(loop._timers)  # type: ignore[attr-defined]
    ready = queue.ready
    clock = time.perf_counter

    async def start_trio_task(self: Any, handle: Any) -> None:
        # A Trio function started from asyncio (trio_as_aio): as trio-asyncio does it.
        handle._context.run(self._nursery.start_soon, handle._run, name=handle._callback)
        await handle._started.wait()

    async def run_ready(self: Any) -> None:
        """One asyncio iteration: the handles ready now, in order, with ``self`` as asyncio's
        running loop (as under ``run_forever``; see `speed_up_running_loop_lookup`)."""
        previous = sniffio_local.name
        previous_loop = get_running_loop()
        sniffio_local.name = "asyncio"
        set_running_loop(self)
        try:
            for _ in range(len(ready)):
                handle = ready.popleft()
                if isinstance(handle, async_handle):
                    sniffio_local.name = previous
                    set_running_loop(previous_loop)  # other Trio tasks run meanwhile
                    await start_trio_task(self, handle)
                    set_running_loop(self)
                    sniffio_local.name = "asyncio"
                elif not handle._cancelled:
                    handle._run()
        finally:
            set_running_loop(previous_loop)
            sniffio_local.name = previous

    async def main_loop_one(self: Any, no_wait: bool = False) -> None:
        if no_wait:  # the loop's shutdown drain: an iteration per call, WouldBlock when empty
            queue.take_due(self.time())
            if not ready:
                raise trio.WouldBlock
            return await run_ready(self)
        await queue.wait(self.time())
        stop_at = clock() + ROUND_BUDGET
        for _ in range(ITERATIONS_PER_ROUND):
            queue.take_due(self.time())
            if not ready:
                break
            await run_ready(self)
            if clock() >= stop_at:
                break
        # Yield here only when work is left. Otherwise the next call sleeps in `queue.wait`,
        # which yields anyway: a checkpoint first would cost every wake-up a second Trio step.
        if queue.pending(self.time()):
            await trio.lowlevel.checkpoint()

    def queue_handle(self: Any, handle: asyncio.Handle) -> asyncio.Handle:
        self._check_closed()
        queue.send_nowait(handle)
        return handle

    check_callback = loop._check_callback  # type: ignore[attr-defined]

    def call_soon(
        self: Any, callback: Callable[..., Any], *args: Any, context: Any = None
    ) -> asyncio.Handle:
        # asyncio checks the callback (not a coroutine, callable) only in debug mode;
        # trio-asyncio checks on every call, which was most of a callback's cost.
        if self._debug:
            check_callback(callback, "call_soon")
        if self._closed:
            raise RuntimeError("Event loop is closed")
        handle = asyncio.Handle(callback, args, self, context)
        queue.push(handle)
        return handle

    # The loop task may already be blocked in trio-asyncio's channel receive: one no-op handle
    # wakes it, and from its next iteration on it runs `main_loop_one` (looked up each time).
    stock_channel = loop._q_send  # type: ignore[attr-defined]
    loop._q_send = queue  # type: ignore[attr-defined]
    loop._main_loop_one = types.MethodType(main_loop_one, loop)  # type: ignore[attr-defined]
    loop._queue_handle = types.MethodType(queue_handle, loop)  # type: ignore[attr-defined]
    loop.call_soon = types.MethodType(call_soon, loop)  # type: ignore[method-assign]
    speed_up_running_loop_lookup()
    stock_channel.send_nowait(asyncio.Handle(lambda: None, (), loop))
    return True
