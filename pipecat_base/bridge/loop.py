"""The asyncio side: one trio-asyncio loop for the process, and running asyncio tasks from trio.

Bots keep module-level asyncio clients and share asyncio objects with their Session-API routes,
so the process has exactly one asyncio loop, opened around serving (`open_bridge_loop`) and
closed after the last session.

trio-asyncio's loop needs these adaptations to run what pipecat and its dependencies do, and to
run it at a cost close to asyncio's. The loop is constructed inside ``trio_asyncio.open_loop()``
(no hook for a subclass), so they are bound onto the instance here, and nowhere else:

* **Exception handler.** trio-asyncio's default handler re-raises "Task exception was never
  retrieved", aiohttp's "Unclosed client session" and errors in callbacks, which tears down the
  whole loop -- on a shared loop, the whole server. Ours logs them.
* **``run_in_executor`` with a real executor.** trio-asyncio asserts the executor is ``None``
  or a ``TrioExecutor``; pipecat's Silero VAD and smart-turn analyzers pass a
  ``ThreadPoolExecutor``. Any ``concurrent.futures.Executor`` is accepted and its future
  wrapped for asyncio.
* **Signal handlers.** pipecat's runner calls ``loop.add_signal_handler(SIGINT, ...)`` when a
  bot asks it to; trio-asyncio would install a process-wide handler (stealing SIGTERM/SIGINT
  from the server) and assert on the second session. The server owns signals: the call is
  recorded, logged once, and not installed.
* **Scheduler** (`loop_scheduler`): asyncio's own ready deque and timer heap, run in batches
  of asyncio iterations per Trio round, instead of one callback per Trio round through a
  memory channel; ``call_soon`` without per-call checks (asyncio checks that a callback is no
  coroutine only in debug mode; trio-asyncio checked on every call, a large part of each
  callback's cost, ``python -m bench.loop_micro``); and asyncio's running loop set while a
  batch runs, so looking it up is asyncio's C lookup rather than trio-asyncio's.

Running a bot: `wait_task` waits for an asyncio task with a bounded cancellation protocol, because
trio-asyncio's own ``aio_as_trio`` delivers one ``cancel()`` and then waits forever if the task
swallows it -- even past an outer deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import types
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio
import trio_asyncio
from loguru import logger

from pipecat_base import _speedups as speedups

# After the second cancel(), how long a task gets to act on it before it is abandoned. Short:
# the first cancel already had the whole grace period; this only catches bots that swallow
# exactly one CancelledError.
SECOND_CANCEL_WINDOW = 0.5

T = TypeVar("T")


@asynccontextmanager
async def open_bridge_loop() -> AsyncIterator[trio_asyncio.TrioEventLoop]:
    """Open the process' asyncio loop on top of Trio, adapted for pipecat (see module doc).

    Exiting cancels and awaits every asyncio task still registered on the loop; tasks given up
    on by `wait_task` are unregistered first so they cannot hold the exit.
    """
    async with trio_asyncio.open_loop() as loop:
        guard = adapt_loop(loop)
        try:
            yield loop
        finally:
            guard.release()  # trio-asyncio's own exit stops and closes it
            with trio.CancelScope(shield=True):
                await close_async_generators(loop)


class LoopGuard:
    """Refuses ``loop.stop()`` and ``loop.close()`` from bot code while the server serves.

    asyncio code may stop or close its loop to end itself; here one loop serves every session,
    and a stopped trio-asyncio loop runs no more callbacks -- every later session would hang
    while the probes still answer. The call is refused with an ERROR in the caller's session;
    `release` lets the loop's own exit through.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.released = False
        stop, close = loop.stop, loop.close

        def guarded_stop(self_: Any, *args: Any, **kwargs: Any) -> Any:
            if self.released:
                return stop(*args, **kwargs)
            _refuse("stop")
            return trio.Event()  # trio-asyncio's stop() returns the event of its stop

        def guarded_close(self_: Any) -> None:
            if self.released:
                close()
            else:
                _refuse("close")

        loop.stop = types.MethodType(guarded_stop, loop)  # type: ignore[method-assign]
        loop.close = types.MethodType(guarded_close, loop)  # type: ignore[method-assign]

    def release(self) -> None:
        self.released = True


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {int(sig)}"


def _refuse(method: str) -> None:
    logger.error(
        f"The bot called the asyncio loop.{method}(): refused. One loop runs every session "
        "of this server; to end a session, return from bot()."
    )


# How long the async generators still open when the loop closes get to run their cleanup.
ASYNCGEN_CLOSE_BOUND = 2.0


async def close_async_generators(loop: asyncio.AbstractEventLoop) -> None:
    """Close the async generators still open on ``loop`` (asyncio's ``shutdown_asyncgens``),
    bounded by `ASYNCGEN_CLOSE_BOUND`.

    trio-asyncio closes them too as its loop exits, but waits for them shielded and without a
    bound: one whose cleanup never finishes (a library's generator awaiting a peer that is
    gone) would hold the process, and a test, forever. ``shutdown_asyncgens`` takes them off
    the loop's list before it awaits them, so trio-asyncio then finds none left to wait for.
    """
    with trio.move_on_after(ASYNCGEN_CLOSE_BOUND):
        await run_aio(loop, loop.shutdown_asyncgens, cancel_grace=SECOND_CANCEL_WINDOW)


def adapt_loop(loop: asyncio.AbstractEventLoop) -> LoopGuard:
    """Install the logging exception handler, executor, signal and stop/close adaptations on
    ``loop``; returns the guard whose `LoopGuard.release` lets the loop stop again."""
    loop.set_exception_handler(log_loop_exception)
    original_run_in_executor = loop.run_in_executor
    ignored_signals: set[int] = set()

    def run_in_executor(
        self: asyncio.AbstractEventLoop,
        executor: concurrent.futures.Executor | None,
        func: Callable[..., Any],
        *args: Any,
    ) -> asyncio.Future[Any]:
        if executor is None or isinstance(executor, trio_asyncio.TrioExecutor):
            return original_run_in_executor(executor, func, *args)
        return asyncio.wrap_future(executor.submit(func, *args), loop=self)

    def add_signal_handler(
        self: asyncio.AbstractEventLoop, sig: int, callback: Callable[..., Any], *args: Any
    ) -> None:
        # Logged where it is called: the session's id is on the line.
        logger.warning(
            f"Refused the bot's asyncio signal handler for {_signal_name(sig)}: the server owns "
            "process signals (shutdown reaches bots as cancellation)"
        )
        ignored_signals.add(int(sig))

    def remove_signal_handler(self: asyncio.AbstractEventLoop, sig: int) -> bool:
        if int(sig) in ignored_signals:
            ignored_signals.discard(int(sig))
            return True
        return False

    speedups.adapt_loop(loop)
    loop.run_in_executor = types.MethodType(run_in_executor, loop)  # type: ignore[method-assign,assignment]
    loop.add_signal_handler = types.MethodType(add_signal_handler, loop)  # type: ignore[method-assign,assignment]
    loop.remove_signal_handler = types.MethodType(remove_signal_handler, loop)  # type: ignore[method-assign]
    return LoopGuard(loop)


def log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Log what asyncio reports through ``call_exception_handler``; never raise."""
    message = context.get("message") or "Unhandled error in the asyncio loop"
    exception = context.get("exception")
    source = context.get("task") or context.get("future") or context.get("handle")
    detail = f" ({source!r})" if source is not None else ""
    if isinstance(exception, BaseException):
        logger.opt(exception=exception).error(f"asyncio: {message}{detail}: {exception!r}")
    else:
        logger.error(f"asyncio: {message}{detail}")


async def wait_task(task: asyncio.Task[Any], *, cancel_grace: float) -> None:
    """Wait for ``task`` to finish; if this trio task is cancelled, stop it within a bound.

    Returns when the task is done (its result or exception stays on the task for the caller).

    Cancellation:
        On any trio cancellation, runs a shielded, bounded protocol: ``task.cancel()``, wait up
        to ``cancel_grace`` seconds, ``task.cancel()`` again, wait up to
        `SECOND_CANCEL_WINDOW`, then give up: the task is unregistered from asyncio (so the
        loop's exit does not wait on it) and left running. Then ``trio.Cancelled`` propagates.
        The caller tells an abandoned task by ``not task.done()``.
    """
    done = trio.Event()
    task.add_done_callback(lambda _task: done.set())
    try:
        await done.wait()
    except trio.Cancelled:
        # Shielded so the protocol runs to its end whatever cancelled us; bounded by the two
        # windows so it cannot outlive the session's grace.
        with trio.CancelScope(shield=True):
            for window in (cancel_grace, SECOND_CANCEL_WINDOW):
                task.cancel()
                with trio.move_on_after(window):
                    await done.wait()
                if done.is_set():
                    break
            else:
                forget_task(task)
        raise


async def run_aio(
    loop: asyncio.AbstractEventLoop,
    fn: Callable[..., Coroutine[Any, Any, T]],
    *args: Any,
    cancel_grace: float = 1.0,
) -> T:
    """Run ``fn(*args)`` as a task on the asyncio ``loop`` and return its result.

    For the server's own calls into asyncio libraries (pipecat's WebRTC handler, aiohttp); a
    cancellation of the caller reaches the task through `wait_task`'s bounded protocol. The
    task is created in the caller's context, so it logs with the caller's session id.
    """
    task = loop.create_task(fn(*args))
    await wait_task(task, cancel_grace=cancel_grace)
    return task.result()


def forget_task(task: asyncio.Task[Any]) -> None:
    """Unregister ``task`` from asyncio's task registry, so ``open_loop``'s exit skips it.

    ``open_loop`` cancels and awaits every task in ``asyncio.all_tasks(loop)`` inside a shielded
    nursery; a task that swallows every cancellation would hold the process open forever. The
    only way to leave it behind is asyncio's private ``_unregister_task`` (present on 3.10-3.13).
    """
    unregister = getattr(asyncio.tasks, "_unregister_task", None)
    if unregister is not None:
        unregister(task)
