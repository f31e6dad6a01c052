"""`SessionSupervisor`: the only place sessions live.

Every session is a task in the supervisor's nursery, started with the ``nursery.start``
handshake: the route gets a `SessionHandle` once the session runs and awaits its outcome.
Each session has its own cancel scope, which expresses all the ways it can be stopped:

* its budget is the scope's deadline;
* `SessionHandle.stop` (stop-by-id, shutdown, a client that went away) cancels the scope with a
  reason;
* a cancellation of the whole nursery reaches it too.

Whatever happens, a session logs ``Starting bot session ...`` once and ``Stopping bot session
...`` once, and the bot's asyncio task is cancelled within a bound (`bridge.wait_task`). A bot
that will not stop is abandoned, logged, and makes the process report itself degraded.

The supervisor knows nothing of HTTP; the routes in `app` translate requests into
`SessionSpec`s and outcomes into responses.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import platform
import sys
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import trio
from loguru import logger

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

from pipecat_base.bridge.loop import SECOND_CANCEL_WINDOW, wait_task
from pipecat_base.bridge.session_tasks import SessionTasks, install_task_factory, reap
from pipecat_base.observability import events
from pipecat_base.observability.attribution import Attribution
from pipecat_base.observability.events import EventPublisher
from pipecat_base.observability.logs import session_context
from pipecat_base.observability.metrics import Metrics
from pipecat_base.observability.redaction import SECRETS, Secrets
from pipecat_base.sessions.children import ChildProcesses
from pipecat_base.sessions.memory import AfterSessions
from pipecat_base.startup.compat import installed_version


class Outcome(str, enum.Enum):
    """How a session ended."""

    COMPLETED = "completed"
    ERROR = "error"
    BUDGET = "budget"
    SHUTDOWN = "shutdown"
    CLIENT_DISCONNECTED = "client_disconnected"
    STOPPED = "stopped"
    ABANDONED = "abandoned"
    NO_CONNECTION = "no_connection"


class SessionRefused(Exception):
    """The supervisor did not start the session; `str()` is the reason for the caller."""


class ConnectionNeverArrived(Exception):
    """The session's transport connection did not arrive, or failed to; its bot never ran.

    Raised by a `SessionSpec.connect` context manager (already logged there); the session ends
    with `Outcome.NO_CONNECTION`, and `SessionHandle.failure` tells the route which kind.
    """


class ConnectionTimedOut(ConnectionNeverArrived):
    """No connection arrived within the transport's wait."""


class ConnectionFailed(ConnectionNeverArrived):
    """The connection arrived broken, or its wait was given up."""


@dataclass(frozen=True)
class SessionEvent:
    """What the supervisor tells its listener (`SessionSupervisor`'s ``on_event``).

    Attributes:
        kind: ``"started"`` as the start line is logged, ``"ended"`` just before the stop
            line is.
        session_id: The session's id.
        time: When, on Trio's clock.
        outcome: How it ended (``ended`` only).
        leaked: The asyncio tasks it left running, each ``"cancelled <task>"`` or
            ``"abandoned <task>"`` (``ended`` only; empty when it left none).
    """

    kind: str
    session_id: str | None
    time: float
    outcome: Outcome | None = None
    leaked: tuple[str, ...] = ()


class Draining(SessionRefused):
    """The server is shutting down and admits no new session."""


class AtCapacity(SessionRefused):
    """``MAX_SESSIONS`` sessions are already running."""


@dataclass(frozen=True)
class SessionSpec:
    """What a route asks the supervisor to run.

    Attributes:
        session_id: The platform's session id (``X-Daily-Session-Id``), or None.
        args: The object handed to ``bot(args)``.
        budget: Seconds the session may last (``X-PCC-Max-Session-Seconds``), or None for no
            bound. Counted from the start, including any wait for the connection.
        connect: For transports whose connection arrives after the session started
            (SmallWebRTC): called with the session's handle, returns an async context manager
            that waits for the connection and yields the bot's arguments (``args`` is then
            unused). It is entered inside the session's cancel scope, so the budget and stops
            apply to the wait, and exited after the bot ended (to release the connection); it
            may stop the session through the handle (a peer that hung up).
        id_generated: The request carried no session id: ``session_id`` was made up here
            (the start line says so).
        redact: Keeps the session's secret (a Daily room token, a MoQ relay URL) out of
            everything the process writes while it runs (`redaction.Secrets`).
    """

    session_id: str | None
    args: Any
    budget: float | None = None
    connect: Callable[[SessionHandle], AbstractAsyncContextManager[Any]] | None = None
    redact: Callable[[str], str] | None = None
    id_generated: bool = False


class SessionHandle:
    """A running (or finished) session, as seen by the route that started it."""

    def __init__(self, spec: SessionSpec) -> None:
        self.spec = spec
        self.outcome: Outcome | None = None
        # Why the connection never arrived, when the outcome is NO_CONNECTION.
        self.failure: ConnectionNeverArrived | None = None
        self._stop: tuple[str, Outcome] | None = None
        self._scope = trio.CancelScope()
        self._ended = trio.Event()
        self._children_mark = 0.0  # when its child processes are counted from

    @property
    def session_id(self) -> str | None:
        return self.spec.session_id

    @property
    def stopping(self) -> bool:
        """The server has begun stopping this session (budget, shutdown, stop-by-id)."""
        return self._scope.cancel_called

    def stop(self, reason: str, outcome: Outcome = Outcome.STOPPED) -> bool:
        """Cancel the session with ``reason``; False if it had ended or was already stopping."""
        if self._ended.is_set() or self._stop is not None:
            return False
        self._stop = (reason, outcome)
        self._scope.cancel()
        return True

    async def wait(self) -> Outcome:
        """Wait until the session has ended (its stop line is logged) and return how."""
        await self._ended.wait()
        assert self.outcome is not None
        return self.outcome


class SessionSupervisor:
    """Owns the nursery every session runs in, and the policies around it.

    Args:
        nursery: Where sessions run; it must outlive serving.
        loop: The process' trio-asyncio loop (`bridge.open_bridge_loop`).
        bot: The user's ``async def bot(args)``.
        image_version: Reported in the start/stop metadata.
        cancel_grace: ``SESSION_CANCEL_GRACE``: how long a cancelled bot may take to unwind.
        max_sessions: ``MAX_SESSIONS``, or None for no limit.
        release_session_memory: ``PCC_RELEASE_SESSION_MEMORY``: collect and trim memory after
            a session when no other session is running, once its route has been told it ended
            (`memory.AfterSessions`).
        metrics: Where session events are counted (`metrics`); a private one when omitted.
        attribution: Told when sessions start and end, for captured output (`attribution`).
        publisher: Where sessions' events go (`events`); None publishes nothing.
        on_event: Called (on the Trio thread, never awaited) with each `SessionEvent`.
        children: Ends the child processes each session leaves (`sessions.children`); None
            leaves them alone.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        loop: asyncio.AbstractEventLoop,
        bot: Callable[[Any], Any],
        *,
        image_version: str = "unknown",
        cancel_grace: float = 5.0,
        max_sessions: int | None = None,
        release_session_memory: bool = True,
        metrics: Metrics | None = None,
        attribution: Attribution | None = None,
        publisher: EventPublisher | None = None,
        on_event: Callable[[SessionEvent], None] | None = None,
        children: ChildProcesses | None = None,
        secrets: Secrets = SECRETS,
    ) -> None:
        self._nursery = nursery
        self._secrets = secrets
        self._children = children
        self._on_event = on_event
        self._publisher = publisher
        self._loop = loop
        self._bot = bot
        self._image_version = image_version
        self._cancel_grace = cancel_grace
        self._max_sessions = max_sessions
        self._release_memory = release_session_memory
        self._memory = AfterSessions(lambda: bool(self._sessions), self._settle_loop)
        self.metrics = metrics or Metrics()
        self._attribution = attribution or Attribution()
        self.metrics.active.set_function(lambda: len(self._sessions))
        self._sessions: set[SessionHandle] = set()
        self._abandoned: list[str] = []
        self._draining = False
        self._idle = trio.Event()
        self._idle.set()
        self._last_start: tuple[float, str | None] | None = None
        install_task_factory(loop)

    # -- state read by health checks -------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The asyncio loop bots run on (routes bridge their connections to it)."""
        return self._loop

    @property
    def session_ids(self) -> list[str | None]:
        """The ids of the sessions running now."""
        return [h.session_id for h in self._sessions]

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def at_capacity(self) -> bool:
        return self._max_sessions is not None and len(self._sessions) >= self._max_sessions

    @property
    def abandoned_sessions(self) -> list[str]:
        """Ids of sessions whose bot ignored cancellation and was left running."""
        return list(self._abandoned)

    # -- starting and stopping -------------------------------------------------------------

    async def start(self, spec: SessionSpec) -> SessionHandle:
        """Start a session and return its handle once it runs (``bot()`` started, or its
        connection awaited: `SessionSpec.connect`).

        Raises:
            Draining: the server is shutting down.
            AtCapacity: ``MAX_SESSIONS`` sessions are running.
        """
        refusal = self.admission_error()
        if refusal is not None:
            raise refusal
        handle = SessionHandle(spec)
        # Registered before the first checkpoint, so concurrent starts see each other and
        # cannot both take the last slot.
        self._register(handle)
        try:
            started: SessionHandle = await self._nursery.start(self._run, handle)
        except BaseException:
            self._unregister(handle)
            raise
        return started

    def admission_error(self) -> SessionRefused | None:
        """Why `start` would refuse a session right now, or None (for checks before work that
        is costly to undo, such as accepting a websocket)."""
        if self._draining:
            return Draining("the server is shutting down and starts no new sessions")
        if self.at_capacity:
            return AtCapacity(f"{self._max_sessions} sessions already running (MAX_SESSIONS)")
        return None

    def recent_session(self, window: float) -> str | None:
        """The id of the session started less than ``window`` seconds ago, if any.

        Whether it still runs does not matter: a bot that blocks the loop while starting and
        then ends at once has often ended by the time the watchdog's late heartbeat runs.
        """
        if self._last_start is None:
            return None
        started_at, session_id = self._last_start
        return session_id if trio.current_time() - started_at < window else None

    async def wait_idle(self) -> None:
        """Return once no session is running (at once if none is)."""
        await self._idle.wait()

    def stop(self, session_id: str, reason: str, outcome: Outcome = Outcome.STOPPED) -> bool:
        """Stop the running session(s) with ``session_id``; False if none was running."""
        stopped = [
            h.stop(reason, outcome) for h in list(self._sessions) if h.session_id == session_id
        ]
        return any(stopped)

    def stop_all(self, reason: str, outcome: Outcome) -> int:
        """Stop every running session; returns how many were asked to stop."""
        return sum(h.stop(reason, outcome) for h in list(self._sessions))

    async def drain(self, deadline: float) -> None:
        """Stop admitting, wait until ``deadline`` (Trio time) for sessions, then stop the rest.

        Returns once every session has ended or been abandoned: at most the deadline plus the
        cancel protocol's bound (``cancel_grace`` + `bridge.SECOND_CANCEL_WINDOW`).
        """
        self._draining = True
        began = trio.current_time()
        if self._sessions:
            wait = max(0.0, deadline - trio.current_time())
            logger.info(
                f"Draining: waiting up to {round(wait, 3):g}s for {len(self._sessions)} session(s)"
            )
        with trio.move_on_at(deadline):
            await self.wait_idle()
        if self._sessions:
            logger.warning(
                f"Shutdown timeout reached with {len(self._sessions)} session(s) still running; "
                "cancelling them"
            )
            self.stop_all("shutdown", Outcome.SHUTDOWN)
        await self.wait_idle()
        self._memory.cancel()  # no release after the last session: the process is ending
        self.metrics.drained(trio.current_time() - began)

    # -- the session itself ----------------------------------------------------------------

    async def _run(
        self, handle: SessionHandle, *, task_status: trio.TaskStatus[SessionHandle]
    ) -> None:
        spec = handle.spec
        if spec.budget is not None:
            handle._scope.deadline = trio.current_time() + spec.budget
        started_at = trio.current_time()
        self._last_start = (started_at, spec.session_id)
        self.metrics.session_started()
        self._attribution.started(spec.session_id)
        with session_context(spec.session_id), self._secrets.holding(spec.redact):
            logger.opt(lazy=True).info(
                "Starting bot session with metadata: {}",
                lambda: self._metadata(spec, starting=True),
            )
            self._tell(SessionEvent("started", spec.session_id, started_at))
            if self._children is not None:
                handle._children_mark = self._children.mark()
            leaked: tuple[str, ...] = ()
            task: asyncio.Task[Any] | None = None
            tasks = SessionTasks(spec.session_id)
            outside_cancel = False
            connect = spec.connect or (lambda _handle: nullcontext(spec.args))
            publishing = (
                self._publisher.session(spec.session_id, self._nursery)
                if self._publisher is not None
                else nullcontext()
            )
            try:
                task_status.started(handle)
                async with publishing:
                    with handle._scope:
                        async with connect(handle) as args:
                            # Created inside the session's log context, task ownership and
                            # outbox: the task copies all three, so the asyncio side logs with
                            # this session's id, every task it creates is known to belong to
                            # this session, and what its observers publish is this session's.
                            with tasks.owning():
                                task = self._loop.create_task(_contained(self._bot(args)))
                            events.publish("session_info", self.runtime_info)
                            await wait_task(task, cancel_grace=self._cancel_grace)
            except ConnectionNeverArrived as exc:
                handle.failure = exc
            except Exception as exc:  # our own failure to start the task; the server lives on
                logger.opt(exception=exc).error(f"Exception running bot(): {_describe(exc)}")
            except BaseException as exc:
                # The whole supervisor is being torn down. A connection's own nursery (WebRTC)
                # hands that cancellation on as a group of Cancelled, not a bare one.
                outside_cancel = _only_cancelled(exc)
                raise
            finally:
                handle.outcome = self._conclude(handle, task, outside_cancel)
                # Shielded (a cancelled session still takes back what it owns), and only when
                # there is something to wait for: most sessions leave nothing.
                leftovers = tasks.pending(exclude=task)
                if leftovers:
                    with trio.CancelScope(shield=True):
                        leaked = await self._reap_leftovers(leftovers)
                if self._children is not None:
                    with trio.CancelScope(shield=True):
                        await self._end_children(handle)
                self.metrics.session_ended(handle.outcome.value, trio.current_time() - started_at)
                self._attribution.ended(spec.session_id)
                # Told first: a listener may have to mend what the bot broke (the server reopens
                # a stdout or stderr it closed) for the stop line to reach anyone.
                self._tell(
                    SessionEvent(
                        "ended", spec.session_id, trio.current_time(), handle.outcome, leaked
                    )
                )
                logger.opt(lazy=True).info(
                    "Stopping bot session with metadata: {}", lambda: self._metadata(spec)
                )
                self._unregister(handle)
                # A cancelled bot's frames (and what they hold) hang on its task's exception:
                # let go of it before collecting, or a cancelled session keeps its memory.
                task = None
                del tasks
                handle._ended.set()
                # After the route was told: /bot answers without waiting for the collection.
                if self._release_memory and not self._sessions:
                    self._memory.request(self._nursery)

    def _conclude(
        self, handle: SessionHandle, task: asyncio.Task[Any] | None, outside_cancel: bool
    ) -> Outcome:
        """Log how the session ended and classify it; called exactly once per session."""
        if task is not None and not task.done():
            self._abandoned.append(handle.session_id or "<no session id>")
            logger.error(
                f"Bot session {handle.session_id} ignored cancellation for "
                f"{self._cancel_grace + SECOND_CANCEL_WINDOW:g}s; abandoning its task "
                f"{task.get_name()} (it keeps running). This process is degraded and reports "
                "so on /readyz."
            )
            return Outcome.ABANDONED
        if task is not None:
            self._log_bot_result(task)
        if handle._stop is not None:
            reason, outcome = handle._stop
            logger.warning(f"Bot session stopped: {reason}")
            return outcome
        if handle._scope.cancelled_caught:
            logger.warning(
                f"Bot session stopped: maximum session duration reached ({handle.spec.budget:g}s)"
            )
            return Outcome.BUDGET
        if outside_cancel:
            return Outcome.SHUTDOWN
        if handle.failure is not None:
            return Outcome.NO_CONNECTION
        if task is None or task.cancelled() or task.exception() is not None:
            return Outcome.ERROR
        return Outcome.COMPLETED

    async def memory_released(self) -> None:
        """Return once the memory release after the last session (if any) is done."""
        await self._memory.wait()

    async def _settle_loop(self) -> None:
        # Teardown callbacks scheduled a turn or two after the bot returned must run first, or
        # what they free is not collectable yet: let the asyncio loop drain its callbacks, three
        # rounds (trio-asyncio's synchronize() returns once those already queued have run).
        for _ in range(3):
            await self._loop.synchronize()  # type: ignore[attr-defined]

    async def _end_children(self, handle: SessionHandle) -> None:
        """End the child processes this session started; bounded by the cancel grace."""
        assert self._children is not None
        others = [h._children_mark for h in self._sessions if h is not handle]
        left = self._children.left_by(handle._children_mark, others)
        await self._children.end(
            left, grace=self._cancel_grace, whose=f"Bot session {handle.session_id}"
        )

    def _tell(self, event: SessionEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)

    async def _reap_leftovers(self, leftovers: list[asyncio.Task[Any]]) -> tuple[str, ...]:
        """Cancel what the session left running, bounded by the cancel grace; what became of
        each task (`SessionEvent.leaked`)."""
        reaped = await reap(leftovers, grace=self._cancel_grace)
        self.metrics.tasks_reaped(len(leftovers))
        parts = []
        if reaped.cancelled:
            parts.append(f"cancelled {', '.join(reaped.cancelled)}")
        if reaped.abandoned:
            parts.append(
                f"abandoned {', '.join(reaped.abandoned)} (still running after "
                f"{self._cancel_grace:g}s: they ignored cancellation)"
            )
        logger.warning(f"Session left {len(leftovers)} asyncio task(s) running: {'; '.join(parts)}")
        return tuple(
            [f"cancelled {task}" for task in reaped.cancelled]
            + [f"abandoned {task}" for task in reaped.abandoned]
        )

    @staticmethod
    def _log_bot_result(task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            logger.debug("bot() ended by CancelledError")
            return
        exc = task.exception()
        if exc is not None:
            logger.opt(exception=exc).error(f"Exception running bot(): {_describe(exc)}")

    @functools.cached_property
    def runtime_info(self) -> dict[str, str]:
        """What this process runs on: ``session_info``'s properties, in every start line."""
        return {
            "pipecat_version": installed_version("pipecat-ai") or "unknown",
            "python_version": platform.python_version(),
            "image_version": self._image_version,
            "arch": platform.machine(),
        }

    def _metadata(self, spec: SessionSpec, *, starting: bool = False) -> str:
        metadata: dict[str, str | bool | None] = {"session_id": spec.session_id}
        if starting and spec.id_generated:
            metadata["session_id_generated"] = True
        metadata.update(self.runtime_info if starting else {"image_version": self._image_version})
        return json.dumps(metadata)

    def _register(self, handle: SessionHandle) -> None:
        if not self._sessions and self._idle.is_set():
            self._idle = trio.Event()
        self._sessions.add(handle)

    def _unregister(self, handle: SessionHandle) -> None:
        self._sessions.discard(handle)
        if not self._sessions:
            self._idle.set()


class BotExited(Exception):
    """``bot()`` raised SystemExit or KeyboardInterrupt (its cause).

    asyncio lets those two out of the event loop, which every session shares; as an ordinary
    exception it ends only the session that raised it (outcome ``error``). Any other
    BaseException a bot raises stays on its task, as asyncio keeps it.
    """


async def _contained(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        return await coro
    except (SystemExit, KeyboardInterrupt) as exc:
        raise BotExited(f"bot() raised {type(exc).__name__}: {_describe(exc)}") from exc


async def stop_unless_ended(handle: SessionHandle, grace: float) -> None:
    """The client went away: give the bot ``grace`` seconds (``CLIENT_DISCONNECT_GRACE``) to
    end by itself, then stop it.

    pipecat's transport sees the disconnect and fires ``on_client_disconnected``, where bots end
    their pipeline; post-call work (transcripts, webhooks) runs then.
    """
    with trio.move_on_after(grace):
        await handle.wait()
        return
    handle.stop("client disconnected", Outcome.CLIENT_DISCONNECTED)


def _only_cancelled(exc: BaseException) -> bool:
    """``exc`` is a cancellation: a ``trio.Cancelled``, or a group of nothing else."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return isinstance(exc, trio.Cancelled)


def _describe(exc: BaseException) -> str:
    # A bot's exception may fail to turn itself into text; the session still ends cleanly.
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__} that could not be shown>"
