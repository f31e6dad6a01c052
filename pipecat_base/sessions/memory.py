"""Giving memory back between sessions.

A warm pod runs many sessions in one process. Pipelines leave reference cycles that only a full
collection frees, and glibc keeps freed pages in its arenas; memory then ratchets up from one
session to the next (the existing image measured 154 MB to 377 MB, and 226-282 MB once it
released). After a session, when no other session is running, the supervisor has a full
``gc.collect()`` and ``malloc_trim(0)`` run (`AfterSessions`) -- after the session's ``/bot``
has answered, not before as in the existing image. What was alive at startup is frozen out of
collections first (`freeze_startup_heap`), so that collection walks what sessions allocated,
not pipecat.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
from loguru import logger

# How long the server must have run no session before memory is released. Back-to-back
# sessions (a burst of short /bot calls) would otherwise pay a collection and a trim between
# every two, and each next request would wait behind them; one release after the burst frees
# what they all left.
QUIET = 0.1
# How long the loop may take to run the callbacks a session's teardown scheduled before the
# collection; past it, what they would free waits for the next release.
SETTLE_BOUND = 1.0


@dataclass(frozen=True)
class Released:
    collected: int
    gc_ms: float
    trimmed: bool
    trim_ms: float

    def __str__(self) -> str:
        return (
            f"Released session memory: collected {self.collected} objects in {self.gc_ms:.1f} ms, "
            f"malloc_trim returned memory: {self.trimmed} in {self.trim_ms:.1f} ms"
        )


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): collection only
        return None


async def release_memory(
    busy: Callable[[], bool], malloc_trim: Callable[[int], int] | None = None
) -> Released | None:
    """Collect every generation, then hand free heap pages back to the OS where glibc can
    (``malloc_trim``, in a worker thread); None if ``busy()`` (a session started) before the
    collection.

    The collection must hold the interpreter (~1 ms with pipecat loaded and the startup heap
    frozen). The trim (~2 ms) is a C call, which ctypes makes without the GIL, so the Trio
    thread serves meanwhile; it is skipped when a session started during the collection.
    """
    if busy():
        return None
    start = time.perf_counter()
    collected = gc.collect()
    collected_at = time.perf_counter()
    trim = malloc_trim if malloc_trim is not None else _load_malloc_trim()
    trimmed = False
    if trim is not None and not busy():
        trimmed = bool(await trio.to_thread.run_sync(trim, 0, abandon_on_cancel=True))
    done = time.perf_counter()
    return Released(collected, (collected_at - start) * 1000, trimmed, (done - collected_at) * 1000)


class AfterSessions:
    """Releases memory once sessions have ended, off their response path.

    `request` is called when the last running session has ended, after its route was told (so
    ``/bot`` answers as soon as ``bot()`` has ended). The release runs in a task of the given
    nursery (the supervisor's: it is waited for, bounded, at shutdown): once no session has
    run for `QUIET` seconds, the loop runs what the teardown scheduled (``settle``, bounded by
    `SETTLE_BOUND`), then `release_memory`; each step is skipped as soon as a
    session has started meanwhile (``busy``), whose end requests the release again. Requests
    that come while one runs make it run once more.
    """

    def __init__(
        self,
        busy: Callable[[], bool],
        settle: Callable[[], Awaitable[None]],
        malloc_trim: Callable[[int], int] | None = None,
    ) -> None:
        self._busy = busy
        self._settle = settle
        self._malloc_trim = malloc_trim
        self._again = False
        self._quiet: trio.CancelScope | None = None
        self._running: trio.CancelScope | None = None
        self._done: trio.Event | None = None

    def request(self, nursery: trio.Nursery) -> None:
        if self._quiet is not None:  # still waiting for quiet: wait from this end instead
            self._quiet.deadline = trio.current_time() + QUIET
            return
        if self._done is not None:
            self._again = True
            return
        self._done = trio.Event()
        # Made here, entered by the task: a `cancel` before the task first runs still holds.
        self._running = trio.CancelScope()
        nursery.start_soon(self._run, self._done, self._running)

    async def wait(self) -> None:
        """Return once no release is pending or running."""
        if self._done is not None:
            await self._done.wait()

    def cancel(self) -> None:
        """Drop a pending or running release (the process is shutting down: memory given back
        now helps no one, and the session nursery's exit would wait for it)."""
        if self._running is not None:
            self._running.cancel()

    async def _run(self, done: trio.Event, scope: trio.CancelScope) -> None:
        try:
            with scope:
                again = True
                while again:
                    self._again = False
                    await self._once()
                    again = self._again
        finally:
            self._running = None
            self._done = None
            done.set()

    async def _once(self) -> None:
        # Sessions that end while this waits move its deadline (`request`).
        self._quiet = trio.CancelScope(deadline=trio.current_time() + QUIET)
        try:
            with self._quiet:
                await trio.sleep_forever()
        finally:
            self._quiet = None
        if self._busy():
            return
        with trio.move_on_after(SETTLE_BOUND):
            await self._settle()
        released = await release_memory(self._busy, self._malloc_trim)
        if released is not None:
            logger.debug(str(released))


def parse_switch(raw: str | None) -> tuple[bool, str | None]:
    """``PCC_RELEASE_SESSION_MEMORY``: on unless exactly false; returns (on, error message)."""
    if raw is None:
        return True, None
    value = raw.strip().lower()
    if value in ("true", "false"):
        return value == "true", None
    return True, f"PCC_RELEASE_SESSION_MEMORY must be true or false, not '{raw}'; leaving it on."


def freeze_startup_heap() -> int:
    """Collect, then leave every object alive now out of later collections; returns how many.

    Run once the server listens (the bot imported, the runtime built), before the first
    session. With pipecat loaded, a full collection walks the ~120k objects of the modules,
    classes and functions imported at startup, and what the runtime built, which live as long
    as the process: ~65 ms per collection, paid by every release after a session, and as a
    pause of every call whenever the collector runs a full collection on its own. Frozen
    (``gc.freeze``), they are skipped, and the release still frees everything sessions leave,
    since they allocate after this. (Frozen before the runtime was built, as until
    2026-12-08, the release walked the runtime's objects too: 10-13 ms in `test_process`.)
    Garbage already there is collected first, so nothing collectable is frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
