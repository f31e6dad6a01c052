"""The loop-stall watchdog: a thread, because nothing on the trio thread can see it stall.

Bots' asyncio code runs on the trio thread. A bot that calls ``time.sleep``, loads a model
synchronously or spins the CPU freezes every session, every route and every deadline -- the
cancel scopes the server relies on cannot fire while their thread is blocked.

* A trio task beats every `HEARTBEAT` seconds; the watchdog thread looks at the last beat. When
  it is older than ``LOOP_STALL_WARNING`` the thread logs one WARNING per stall with the blocked
  stack, the culprit's file and line, and the session whose task was running; stalls are counted
  for ``/readyz``.
* The heartbeat also measures how late each beat was; a smaller stall in the first seconds of a
  session (imports, model loads in ``bot()``) is reported at INFO once per process, so users
  learn to preload, and at DEBUG after that (pipecat loads some models inside the pipeline).
* Once shutdown begins, the thread holds the process to its bound: ``SHUTDOWN_TIMEOUT +
  SESSION_CANCEL_GRACE`` plus the second-cancel window. While the loop is blocked at that point,
  nothing of ours can finish the shutdown, so it flushes the logs and ends the process with exit
  code 0 just before the bound; while the loop runs, the orderly shutdown gets `EXIT_MARGIN`
  more before the same. The server arms it from a Python-level signal handler, which runs even
  while a bot blocks the loop (a Trio task could not), so the container's grace period is never
  exceeded because of us.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

import trio
from loguru import logger

from pipecat_base.bridge.session_tasks import owner_of
from pipecat_base.observability.logs import session_context

HEARTBEAT = 0.1
# After shutdown's own bound, how long the process may still take before it is ended.
EXIT_MARGIN = 1.0
# A beat later than this during a session's first seconds is reported as a start stall.
START_STALL_REPORT = 0.05
START_WINDOW = 3.0


@dataclass(frozen=True)
class StallStats:
    count: int
    longest: float


class LoopWatchdog:
    """Watches the trio thread from a daemon thread.

    Args:
        loop: The asyncio loop bots run on (to find the session whose task is blocking).
        stall_warning: ``LOOP_STALL_WARNING`` seconds.
        recent_session: Returns the id of a session started within `START_WINDOW` seconds, if
            any (for start-stall reports).
        exit: Ends the process (``os._exit``); tests pass a stand-in.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None,
        *,
        stall_warning: float,
        recent_session: Callable[[float], str | None] = lambda window: None,
        exit: Callable[[int], object] = os._exit,
    ) -> None:
        self._loop = loop
        self._stall_warning = stall_warning
        self._recent_session = recent_session
        self._exit = exit
        self._main_ident = threading.get_ident()
        self._beat = time.monotonic()
        self._watching = False
        self._exit_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._count = 0
        self._longest = 0.0
        self._lock = threading.Lock()
        self._beat_checks: list[Callable[[], object]] = []
        self._start_stall_said = False

    def check_on_beat(self, check: Callable[[], object]) -> None:
        """Run ``check`` on the Trio thread at every beat (cheap checks only: ten a second)."""
        self._beat_checks.append(check)

    @property
    def stats(self) -> StallStats:
        with self._lock:
            return StallStats(self._count, self._longest)

    # -- trio side ------------------------------------------------------------------------

    async def heartbeat(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Beat until cancelled; starts the thread, and stops stall reports when it ends."""
        self._beat = time.monotonic()
        self._watching = True
        self._start_thread()
        task_status.started()
        try:
            while True:
                expected = time.monotonic() + HEARTBEAT
                await trio.sleep(HEARTBEAT)
                now = time.monotonic()
                self._beat = now
                self._note_late_beat(now - expected)
                for check in self._beat_checks:
                    check()
        finally:
            # Teardown after serving is not a stall; the exit deadline stays enforced.
            self._watching = False

    def arm_exit(self, after: float) -> None:
        """Shutdown has begun: the process must be gone ``after`` seconds from now (see the
        module docstring). Only the first call counts; safe from a signal handler."""
        if self._exit_at is None:
            self._exit_at = time.monotonic() + after
            self._start_thread()

    def close(self) -> None:
        self._stop.set()

    def _note_late_beat(self, late: float) -> None:
        if late < START_STALL_REPORT:
            return
        session_id = self._recent_session(START_WINDOW)
        if session_id is None and late < self._stall_warning:
            return
        # pipecat loads its models inside the pipeline, which a bot author cannot move: the
        # advice is given once per process, later start stalls only at DEBUG.
        level = "DEBUG" if session_id and self._start_stall_said else "INFO"
        if session_id:
            self._start_stall_said = True
        with session_context(session_id):
            logger.log(
                level,
                # Lateness of one beat is a lower bound: the block may have begun mid-period.
                f"The event loop was blocked for at least {late:.2f}s"
                + (
                    " while a session was starting: imports or model loads in bot() stall every "
                    "session; do them at module level (see README, 'Blocking code')"
                    if session_id
                    else ""
                ),
            )

    # -- watchdog thread ------------------------------------------------------------------

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._watch, name="pipecat-base-watchdog", daemon=True
            )
            self._thread.start()

    def _watch(self) -> None:
        reported = False
        while not self._stop.wait(HEARTBEAT):
            now = time.monotonic()
            gap = now - self._beat
            if self._watching and gap > self._stall_warning:
                if not reported:
                    reported = True
                    self._report_stall(gap)
                with self._lock:
                    self._longest = max(self._longest, gap)
            elif gap <= self._stall_warning:
                reported = False
            if self._exit_at is not None:
                stalled = gap > self._stall_warning
                # Just before the bound when nothing of ours can run; a margin when it can.
                deadline = self._exit_at + (-2 * HEARTBEAT if stalled else EXIT_MARGIN)
                if now >= deadline:
                    self._hard_exit(gap)
                    return

    def _report_stall(self, gap: float) -> None:
        with self._lock:
            self._count += 1
        frame = sys._current_frames().get(self._main_ident)
        culprit, session_id, stack = describe_frame(frame, self._loop)
        with session_context(session_id):
            logger.warning(
                f"Event loop blocked for over {gap:.1f}s at {culprit}: every session, route and "
                f"deadline waits until it returns. Blocked stack:\n{stack}"
            )

    def _hard_exit(self, gap: float) -> None:
        frame = sys._current_frames().get(self._main_ident)
        culprit, session_id, _ = describe_frame(frame, self._loop)
        stalled = gap > self._stall_warning
        blocked = f" with the event loop blocked for {gap:.1f}s at {culprit}" if stalled else ""
        with session_context(session_id):
            logger.warning(f"Shutdown did not finish within its bound{blocked}; exiting now")
        try:
            logger.complete()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            self._exit(0)


def describe_frame(
    frame: FrameType | None, loop: asyncio.AbstractEventLoop | None
) -> tuple[str, str | None, str]:
    """The culprit ``file:line``, the session whose asyncio task owns the stack, the stack."""
    if frame is None:
        return "<unknown>", None, ""
    culprit = f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
    stack = "".join(traceback.format_stack(frame))
    return culprit, _session_on_stack(frame, loop), stack


def _session_on_stack(frame: FrameType, loop: asyncio.AbstractEventLoop | None) -> str | None:
    # The blocked thread is not running, so reading the task set from here is safe enough for
    # a diagnostic; a race only costs the session id.
    if loop is None:
        return None
    frames = set()
    current: FrameType | None = frame
    while current is not None:
        frames.add(current)
        current = current.f_back
    try:
        tasks = list(asyncio.all_tasks(loop))
    except RuntimeError:  # the task set changed while we read it
        return None
    for task in tasks:
        coro = task.get_coro()
        if getattr(coro, "cr_frame", None) in frames:
            owner = owner_of(task)
            return owner.session_id if owner else None
    return None
