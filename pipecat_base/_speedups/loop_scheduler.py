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
* asyncio's costs, not trio-asyncio's, per callback: ``call_soon``/``call_at``/``call_later``
  check the callback only in debug mode, cancelled timers leave the heap as asyncio's do, and
  while a batch runs asyncio's own running-loop and current-task lookups answer (`OwnLookups`).

It relies on trio-asyncio internals (``_main_loop_one``, ``_q_send``, ``_timers``,
``_nursery``, its ``AsyncHandle``); when they are not as expected, nothing is replaced and a
warning says so (`OwnLookups` takes asyncio's ``current_task`` from trio-asyncio's
``_orig_current_task`` and leaves it alone when that is missing). Tested in tests/test_bridge.py.
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
    from _asyncio import get_running_loop as get_running_loop_or_raise
except ImportError:  # pragma: no cover
    from asyncio.events import _py__get_running_loop as get_running_loop  # type: ignore[attr-defined,no-redef]
    from asyncio.events import _py__set_running_loop as set_running_loop  # type: ignore[attr-defined,no-redef]
    from asyncio.events import _py_get_running_loop as get_running_loop_or_raise  # type: ignore[attr-defined,no-redef]

# How many asyncio iterations, and how many seconds of callbacks, one Trio round may run. A
# chain of callbacks (a task wakes another, which wakes the next: one pipecat frame crossing its
# processors) takes one iteration per link; without this, every link costs a Trio round.
ITERATIONS_PER_ROUND = 16
ROUND_BUDGET = 0.0005
# asyncio's thresholds for rebuilding its timer heap without the cancelled timers.
MIN_TIMERS_TO_PRUNE = 100


class ReadyQueue:
    """asyncio's ready queue and timer heap, standing in for trio-asyncio's memory channel."""

    __slots__ = ("_cancelled_timers", "_timer", "ready", "timers", "waiter")

    def __init__(self, timers: list[asyncio.TimerHandle]) -> None:
        self.ready: deque[asyncio.Handle] = deque()
        self.timers = timers
        # The loop's task while it sleeps in `wait` (parked directly: a trio.Event per idle
        # costs an allocation and a parking lot for one known waiter). `wake` it after
        # appending to `ready` directly (``call_soon`` tests this first: it is on every callback).
        self.waiter: trio.lowlevel.Task | None = None
        # Cancelled timers still in the heap (asyncio's ``_timer_cancelled_count``).
        self._cancelled_timers = 0
        # The scope `wait` sleeps in until the first timer is due.
        self._timer = trio.CancelScope()

    def send_nowait(self, handle: asyncio.Handle) -> None:
        """Queue ``handle`` (the name is the memory channel's, which trio-asyncio calls)."""
        if isinstance(handle, asyncio.TimerHandle):
            self.add_timer(handle)
        else:
            self.push(handle)

    def push(self, handle: asyncio.Handle) -> None:
        """Queue a ready ``handle`` (not a timer)."""
        self.ready.append(handle)
        self.wake()

    def add_timer(self, timer: asyncio.TimerHandle) -> None:
        """Schedule ``timer`` (a ``TimerHandle``) for its ``when``."""
        timer._scheduled = True  # type: ignore[attr-defined]  # as asyncio: counted if cancelled
        heapq.heappush(self.timers, timer)
        self.wake()  # it may be due before what the loop sleeps for

    def timer_cancelled(self, timer: asyncio.TimerHandle) -> None:
        """``timer`` was cancelled (asyncio's ``_timer_handle_cancelled``)."""
        if timer._scheduled:  # type: ignore[attr-defined]
            self._cancelled_timers += 1

    def wake(self) -> None:
        """Wake the loop's task if it sleeps in `wait`."""
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            trio.lowlevel.reschedule(waiter)

    async def wait(self, time_now: float) -> None:
        """Return when a handle is ready or the first timer is due (``time_now`` is Trio time)."""
        self._drop_cancelled_timers()
        if self.ready:
            return
        timers = self.timers
        deadline = timers[0]._when if timers else math.inf  # type: ignore[attr-defined]  # asyncio's own
        if deadline <= time_now:
            return
        self.waiter = trio.lowlevel.current_task()
        if deadline == math.inf:
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        else:
            with trio.CancelScope(deadline=deadline) as self._timer:
                await trio.lowlevel.wait_task_rescheduled(self._abort_timed)

    def _abort(self, _: Any) -> trio.lowlevel.Abort:
        # A cancellation ended the sleep: no handle may wake it any more.
        self.waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _abort_timed(self, raise_cancel: Any) -> trio.lowlevel.Abort:
        # The first timer is due: wake the task with a plain value. Trio would raise
        # `Cancelled` into it (an exception built, thrown through its frames and caught by the
        # scope): on a busy loop that is most wake-ups' cost, for a sleep that simply ended.
        # Any other cancellation is delivered as usual.
        if not self._timer.cancel_called:
            return self._abort(raise_cancel)
        waiter, self.waiter = self.waiter, None
        assert waiter is not None
        trio.lowlevel.reschedule(waiter)
        return trio.lowlevel.Abort.FAILED  # rescheduled here, not by Trio

    def pending(self, time_now: float) -> bool:
        """A handle is ready, or a timer is due (``time_now`` is Trio time)."""
        return bool(self.ready) or bool(self.timers and self.timers[0]._when <= time_now)  # type: ignore[attr-defined]  # asyncio's own

    def take_due(self, time_now: float) -> None:
        """Move the timers due at ``time_now`` to the end of the ready queue."""
        timers, ready = self.timers, self.ready
        while timers and timers[0]._when <= time_now:  # type: ignore[attr-defined]  # asyncio's own
            timer = heapq.heappop(timers)
            if timer._cancelled:
                self._cancelled_timers -= 1
            else:
                timer._scheduled = False  # type: ignore[attr-defined]
                ready.append(timer)

    def _drop_cancelled_timers(self) -> None:
        # As asyncio does: rebuild the heap when most of it is cancelled timers (pipecat's
        # ``wait_for`` timeouts mostly never fire; left in, they make every push and pop
        # dearer and hold their callbacks), else drop those at its head, which would
        # otherwise set a deadline to wake up for.
        timers = self.timers
        if len(timers) > MIN_TIMERS_TO_PRUNE and self._cancelled_timers * 2 > len(timers):
            kept = []
            for timer in timers:
                if timer._cancelled:
                    timer._scheduled = False  # type: ignore[attr-defined]
                else:
                    kept.append(timer)
            heapq.heapify(kept)
            timers[:] = kept  # in place: trio-asyncio holds this list
            self._cancelled_timers = 0
        else:
            while timers and timers[0]._cancelled:
                self._cancelled_timers -= 1
                heapq.heappop(timers)._scheduled = False  # type: ignore[attr-defined]


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
    asyncio._get_running_loop = running_loop
    return True


class OwnLookups:
    """asyncio's own running-loop and current-task lookups, put in place while a batch runs.

    trio-asyncio replaces ``asyncio.get_running_loop``, ``_get_running_loop`` and
    ``current_task`` process-wide with Python functions that also work from Trio tasks.
    asyncio calls them on every queue wait, timeout and sleep (a pipecat call makes tens of
    thousands of such calls a minute). While a batch runs, the loop is asyncio's own running
    loop, so asyncio's originals (C, per thread) give the same answers without a Python frame
    each; `use_own` puts them in place for the batch and `restore` puts back what was there
    (trio-asyncio's, sped up by `speed_up_running_loop_lookup`). Other threads get the same
    answers from either: theirs is not a Trio thread.
    """

    __slots__ = ("_swaps",)

    def __init__(self, swaps: list[tuple[Any, str, Any, Any]]) -> None:
        # (module, name, asyncio's function, the one in place outside batches)
        self._swaps = swaps

    @classmethod
    def capture(cls) -> OwnLookups:
        """The lookups in place now (to restore) and asyncio's originals (to use in batches)."""
        from trio_asyncio import _loop as trio_asyncio_loop

        originals = {
            "_get_running_loop": get_running_loop,
            "get_running_loop": get_running_loop_or_raise,
            # asyncio's, saved by trio-asyncio before it replaced it (C from 3.12 on)
            "current_task": getattr(trio_asyncio_loop, "_orig_current_task", None),
        }
        swaps = []
        for module in (asyncio, asyncio.events, asyncio.tasks):
            for name, original in originals.items():
                current = module.__dict__.get(name)
                if original is not None and current is not None and current is not original:
                    swaps.append((module, name, original, current))
        return cls(swaps)

    def use_own(self) -> None:
        for module, name, own, _ in self._swaps:
            setattr(module, name, own)

    def restore(self) -> None:
        for module, name, _, theirs in self._swaps:
            setattr(module, name, theirs)


def install(loop: asyncio.AbstractEventLoop) -> bool:
    """Replace the scheduler of trio-asyncio's ``loop`` (see the module doc); False if unable."""
    from trio_asyncio import _base as trio_asyncio_base

    async_handle = getattr(trio_asyncio_base, "AsyncHandle", None)
    exit_class = getattr(trio_asyncio_base, "TrioAsyncioExit", None)
    sniffio_local = getattr(trio_asyncio_base, "sniffio_library", None)
    if (
        getattr(loop, "_main_loop_one", None) is None
        or async_handle is None
        or exit_class is None
        or sniffio_local is None
        or not isinstance(getattr(loop, "_timers", None), list)
        or not isinstance(getattr(loop, "_q_send", None), trio.MemorySendChannel)
    ):
        logger.warning("trio-asyncio's loop internals changed; keeping its own scheduler")
        return False
    queue = ReadyQueue(loop._timers)  # type: ignore[attr-defined]
    ready = queue.ready
    clock = time.perf_counter
    # The loop's time is Trio's clock (as trio-asyncio's ``time()``, minus its Python frame and
    # attribute chain on every call: asyncio reads it per timer and timeout, we per iteration).
    now = trio.lowlevel.current_clock().current_time
    speed_up_running_loop_lookup()
    lookups = OwnLookups.capture()

    async def start_trio_task(self: Any, handle: Any) -> None:
        # A Trio function started from asyncio (trio_as_aio): as trio-asyncio does it.
        handle._context.run(self._nursery.start_soon, handle._run, name=handle._callback)
        await handle._started.wait()

    def begin(self: Any) -> tuple[str | None, Any]:
        # asyncio's view while callbacks run: as under ``run_forever``, ``self`` is the
        # running loop, and asyncio's own lookups answer (see `OwnLookups`).
        previous = (sniffio_local.name, get_running_loop())
        sniffio_local.name = "asyncio"
        set_running_loop(self)
        lookups.use_own()
        return previous

    def end(previous: tuple[str | None, Any]) -> None:
        lookups.restore()
        set_running_loop(previous[1])
        sniffio_local.name = previous[0]

    async def run_batch(self: Any, iterations: int) -> None:
        """Up to ``iterations`` asyncio iterations (or `ROUND_BUDGET` seconds): due timers join
        the ready queue, then exactly the handles ready at that moment run, in order."""
        stop_at = clock() + ROUND_BUDGET
        previous = begin(self)
        try:
            for _ in range(iterations):
                queue.take_due(now())
                if not ready:
                    break
                for _ in range(len(ready)):
                    handle = ready.popleft()
                    if isinstance(handle, async_handle):
                        end(previous)  # other Trio tasks run meanwhile
                        await start_trio_task(self, handle)
                        previous = begin(self)
                    elif not handle._cancelled:
                        try:
                            handle._run()
                        except (SystemExit, KeyboardInterrupt) as exc:
                            contain(self, handle, exc)
                if clock() >= stop_at:
                    break
        finally:
            end(previous)

    def contain(self: Any, handle: asyncio.Handle, exc: BaseException) -> None:
        # asyncio lets SystemExit and KeyboardInterrupt out of a callback on purpose, to end
        # run_forever; here that would end the loop every session shares. The loop's own stop
        # (trio-asyncio's exit, a SystemExit) still goes through.
        if isinstance(exc, exit_class):
            raise exc
        task = getattr(getattr(handle, "_callback", None), "__self__", None)
        if isinstance(task, asyncio.Task) and task.done():
            return  # a task's step: the exception is on the task, whose owner reports it
        self.call_exception_handler(
            {"message": f"{type(exc).__name__} raised by an asyncio callback; the loop goes on",
             "exception": exc, "handle": handle}
        )  # fmt: skip

    async def main_loop_one(self: Any, no_wait: bool = False) -> None:
        if no_wait:  # the loop's shutdown drain: an iteration per call, WouldBlock when empty
            if not queue.pending(now()):
                raise trio.WouldBlock
            return await run_batch(self, 1)
        await queue.wait(now())
        await run_batch(self, ITERATIONS_PER_ROUND)
        # Yield here only when work is left. Otherwise the next call sleeps in `queue.wait`,
        # which yields anyway: a checkpoint first would cost every wake-up a second Trio step.
        if queue.pending(now()):
            await trio.lowlevel.checkpoint()

    def queue_handle(self: Any, handle: asyncio.Handle) -> asyncio.Handle:
        self._check_closed()
        queue.send_nowait(handle)
        return handle

    check_callback = loop._check_callback  # type: ignore[attr-defined]

    # asyncio checks a callback (not a coroutine, callable) only in debug mode; trio-asyncio
    # checks on every call, which was most of a callback's cost (for timers, pipecat's
    # ``wait_for`` timeouts, ``inspect`` twice per call).
    def call_soon(
        self: Any, callback: Callable[..., Any], *args: Any, context: Any = None
    ) -> asyncio.Handle:
        if self._debug:
            check_callback(callback, "call_soon")
        if self._closed:
            raise RuntimeError("Event loop is closed")
        handle = asyncio.Handle(callback, args, self, context)
        ready.append(handle)  # `ReadyQueue.push`, inlined: thousands per call-second
        if queue.waiter is not None:
            queue.wake()
        return handle

    def call_at(
        self: Any, when: float, callback: Callable[..., Any], *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        if self._debug:
            check_callback(callback, "call_at")
        if self._closed:
            raise RuntimeError("Event loop is closed")
        timer = asyncio.TimerHandle(when, callback, args, self, context)
        queue.add_timer(timer)
        return timer

    def call_later(
        self: Any, delay: float, callback: Callable[..., Any], *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        return call_at(self, now() + delay, callback, *args, context=context)

    # The loop task may already be blocked in trio-asyncio's channel receive: one no-op handle
    # wakes it, and from its next iteration on it runs `main_loop_one` (looked up each time).
    stock_channel = loop._q_send  # type: ignore[attr-defined]
    loop._q_send = queue  # type: ignore[attr-defined]
    loop._main_loop_one = types.MethodType(main_loop_one, loop)  # type: ignore[attr-defined]
    loop._queue_handle = types.MethodType(queue_handle, loop)  # type: ignore[attr-defined]
    loop._timer_handle_cancelled = queue.timer_cancelled  # type: ignore[attr-defined]
    loop.call_soon = types.MethodType(call_soon, loop)  # type: ignore[method-assign,assignment]
    loop.call_at = types.MethodType(call_at, loop)  # type: ignore[method-assign,assignment]
    loop.call_later = types.MethodType(call_later, loop)  # type: ignore[method-assign,assignment]
    loop.time = now  # type: ignore[method-assign]
    stock_channel.send_nowait(asyncio.Handle(lambda: None, (), loop))
    return True
