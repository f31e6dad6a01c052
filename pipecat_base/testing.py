"""Test your bot's cancellation under the real supervisor: a pytest plugin (pytest-trio).

Installed with pipecat-base, it gives every test the ``bot_runtime`` fixture. A runtime loads
your ``bot.py`` and serves it in-process exactly as the container does -- the same Quart-Trio
routes, `nursery.SessionSupervisor`, trio-asyncio loop, cancel protocol, leaked-task reaper and
loop-stall watchdog -- but with no sockets, so the test's clock may be virtual
(``autojump_clock``) wherever your bot waits on asyncio timers, queues and events::

    async def test_my_bot_stops_at_its_budget(bot_runtime, autojump_clock):
        runtime = await bot_runtime("bot.py")
        session = await runtime.start_bot({"name": "Ada"}, budget=30)
        await session.ended()
        assert session.outcome == "budget"
        assert session.ended_at - session.started_at <= 30 + runtime.cancel_grace
        assert session.leaked == []  # it left no asyncio task behind
        assert session.start_lines == session.stop_lines == 1

    async def test_my_bot_hangs_up_cleanly(bot_runtime, autojump_clock):
        runtime = await bot_runtime("bot.py")
        call = await runtime.start_call()  # a Twilio-style caller on /ws
        await call.say(seconds=1)
        hung_up = await call.hang_up()
        await call.session.ended()
        assert call.session.outcome == "completed"  # the bot ended its pipeline itself
        assert call.session.ended_at - hung_up <= 1

``await runtime.shutdown(seconds)`` is what SIGTERM does (stop admitting, wait up to
``seconds`` for sessions, stop the rest with reason ``shutdown``); ``runtime.stalls`` is the
watchdog's count of loop stalls. What a bot does on threads, or with real sockets of its own,
runs in real time: use real time (no ``autojump_clock``) for those tests.
"""

from __future__ import annotations

import base64
import json
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

# Heavy imports (trio-asyncio patches asyncio when imported) happen inside the runtime, so
# merely having this plugin installed changes nothing for a test session that does not use it.

START_LINE = "Starting bot session with metadata"
STOP_LINE = "Stopping bot session with metadata"
FRAME = 160  # bytes of 8 kHz mu-law in a 20 ms Twilio media message


@dataclass
class Record:
    """One log record: when (Trio time), level, session id, message."""

    time: float
    level: str
    session_id: str
    message: str


@dataclass
class Session:
    """A session the test started, and what it did."""

    session_id: str
    _runtime: BotRuntime
    started_at: float = 0.0
    ended_at: float | None = None
    outcome: str | None = None
    leaked: list[str] = field(default_factory=list)
    """The asyncio tasks the session left running, each ``"cancelled <task>"`` or
    ``"abandoned <task>"`` (empty: none)."""
    # Set at its start line, or when its start was refused (then `_ended` is set too).
    _started: trio.Event = field(default_factory=trio.Event)
    _ended: trio.Event = field(default_factory=trio.Event)

    async def ended(self) -> None:
        """Wait until the session has ended (its stop line is logged)."""
        await self._ended.wait()

    @property
    def records(self) -> list[Record]:
        return [r for r in self._runtime.records if r.session_id == self.session_id]

    def lines(self, fragment: str) -> list[str]:
        """This session's log messages containing ``fragment``."""
        return [r.message for r in self.records if fragment in r.message]

    @property
    def start_lines(self) -> int:
        return len(self.lines(START_LINE))

    @property
    def stop_lines(self) -> int:
        return len(self.lines(STOP_LINE))

    @property
    def abandoned(self) -> bool:
        """The bot ignored cancellation past the cancel protocol's bound."""
        return self.outcome == "abandoned"

    def stop(self, reason: str = "stopped by the test") -> bool:
        """Stop the session as stop-by-id does."""
        return self._runtime.supervisor.stop(self.session_id, reason)


class Call:
    """A Twilio-style caller on ``/ws``: Media Streams JSON over an in-memory socket."""

    def __init__(self, session: Session, to_app: trio.MemorySendChannel[dict[str, Any]]) -> None:
        self.session = session
        self._to_app = to_app
        self.heard = bytearray()
        self.close_code: int | None = None
        self._closed = trio.Event()
        self._grew = trio.Event()
        self._sent = 0
        self.stream_sid = f"MZ{uuid.uuid4().hex}"

    async def _send_json(self, message: dict[str, Any]) -> None:
        await self._to_app.send({"type": "websocket.receive", "text": json.dumps(message)})

    async def say(self, audio: bytes | None = None, *, seconds: float | None = None) -> None:
        """Send mu-law audio (``audio``, or ``seconds`` of a tone) in 20 ms media messages,
        paced by the (possibly virtual) clock as a phone network paces them."""
        if audio is None:
            audio = bytes((0x10 + (i % 32)) for i in range(int((seconds or 1.0) * 8000)))
        for start in range(0, len(audio), FRAME):
            chunk = audio[start : start + FRAME]
            self._sent += 1
            await self._send_json(
                {
                    "event": "media",
                    "sequenceNumber": str(self._sent + 2),
                    "streamSid": self.stream_sid,
                    "media": {
                        "track": "inbound",
                        "chunk": str(self._sent),
                        "timestamp": str(self._sent * 20),
                        "payload": base64.b64encode(chunk).decode(),
                    },
                }
            )
            await trio.sleep(0.02)

    async def heard_at_least(self, size: int) -> None:
        """Wait until the bot has played back ``size`` bytes of audio."""
        while len(self.heard) < size and not self._closed.is_set():
            await self._grew.wait()

    async def hang_up(self) -> float:
        """Send Twilio's ``stop`` and drop the connection; returns when (Trio time)."""
        if not self._closed.is_set():
            await self._send_json({"event": "stop", "streamSid": self.stream_sid})
            await self._to_app.send({"type": "websocket.disconnect", "code": 1000})
        return trio.current_time()

    async def closed(self) -> int | None:
        """Wait until the server closed the socket; its close code."""
        await self._closed.wait()
        return self.close_code

    def _from_app(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.send" and message.get("text"):
            event = json.loads(message["text"])
            if event.get("event") == "media":
                self.heard.extend(base64.b64decode(event["media"]["payload"]))
                self._grew.set()
                self._grew = trio.Event()
        elif kind == "websocket.close":
            self.close_code = message.get("code", 1000)
            self._closed.set()
            self._grew.set()


class BotRuntime:
    """One in-process server for a bot module (see the module docstring).

    Built by the server's own composition root (`pipecat_base.server.open_runtime`); what a
    session did comes from the supervisor's structured events (`nursery.SessionEvent`).
    """

    def __init__(self, settings: Any, bot_module: Any) -> None:
        self._nursery: Any = None
        self.settings = settings
        self.bot_module = bot_module
        self.records: list[Record] = []
        self.sessions: dict[str, Session] = {}
        self.supervisor: Any = None
        self.app: Any = None
        self.watchdog: Any = None

    @property
    def cancel_grace(self) -> float:
        return float(self.settings.session_cancel_grace)

    @property
    def stalls(self) -> int:
        """Loop stalls the watchdog has reported (a bot blocking the event loop)."""
        return self.watchdog.stats.count

    def session(self, session_id: str) -> Session:
        return self.sessions[session_id]

    async def start_bot(
        self,
        body: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        budget: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Session:
        """``POST /bot`` through the real route; returns once ``bot()`` is running."""
        session = self._new_session(session_id)
        all_headers = {"X-Daily-Session-Id": session.session_id, **(headers or {})}
        if budget is not None:
            all_headers["X-PCC-Max-Session-Seconds"] = f"{budget:g}"
        client = self.app.test_client()

        async def post() -> None:
            response = await client.post("/bot", json=body or {}, headers=all_headers)
            if response.status_code != 200:
                self.records.append(
                    Record(trio.current_time(), "ERROR", session.session_id,
                           f"/bot answered {response.status_code}: {await response.get_data()}")
                )  # fmt: skip
                session._ended.set()
                session._started.set()

        self._nursery.start_soon(post)
        await self._wait_started(session)
        return session

    async def start_call(
        self,
        *,
        session_id: str | None = None,
        budget: float | None = None,
        body: dict[str, Any] | None = None,
    ) -> Call:
        """A Twilio-style call on ``WS /ws`` through the real route; returns once the bot runs
        (after Twilio's ``connected`` and ``start`` messages)."""
        session = self._new_session(session_id)
        headers = [(b"x-daily-session-id", session.session_id.encode())]
        if budget is not None:
            headers.append((b"x-pcc-max-session-seconds", f"{budget:g}".encode()))
        query = b""
        if body is not None:
            query = b"body=" + base64.b64encode(json.dumps(body).encode())
        scope = {
            "type": "websocket", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "scheme": "ws", "path": "/ws", "raw_path": b"/ws", "query_string": query,
            "root_path": "", "headers": headers, "server": ("127.0.0.1", 8080),
            "client": ("127.0.0.1", 40000), "subprotocols": [], "extensions": {},
        }  # fmt: skip
        to_app, from_caller = trio.open_memory_channel[dict[str, Any]](64)
        call = Call(session, to_app)

        async def send(message: dict[str, Any]) -> None:
            call._from_app(message)

        self._nursery.start_soon(self.app, scope, from_caller.receive, send)
        await to_app.send({"type": "websocket.connect"})
        await call._send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await call._send_json(
            {"event": "start", "sequenceNumber": "1", "streamSid": call.stream_sid,
             "start": {"streamSid": call.stream_sid, "callSid": f"CA{uuid.uuid4().hex}",
                       "accountSid": "ACtest", "tracks": ["inbound"], "customParameters": {},
                       "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                       "channels": 1}}}
        )  # fmt: skip
        await self._wait_started(session)
        return call

    async def shutdown(self, seconds: float) -> None:
        """What SIGTERM does with ``SHUTDOWN_TIMEOUT=seconds``: stop admitting, wait up to
        ``seconds`` for running sessions, stop the rest with reason ``shutdown``; returns when
        all have ended."""
        await self.supervisor.drain(trio.current_time() + seconds)
        for session in self.sessions.values():
            await session.ended()  # its outcome recorded

    def _new_session(self, session_id: str | None) -> Session:
        session_id = session_id or f"test-{len(self.sessions) + 1}"
        session = Session(session_id, self)
        self.sessions[session_id] = session
        return session

    async def _wait_started(self, session: Session) -> None:
        with trio.fail_after(60):
            await session._started.wait()

    # -- wiring ---------------------------------------------------------------------------

    def _on_event(self, event: Any) -> None:
        session = self.sessions.get(event.session_id)
        if session is None:
            return
        if event.kind == "started":
            session.started_at = event.time
            session._started.set()
        elif event.kind == "ended":
            session.ended_at = event.time
            session.outcome = event.outcome.value
            session.leaked = list(event.leaked)
            session._ended.set()

    def _sink(self, message: Any) -> None:
        record = message.record
        session_id = str(record["extra"].get("session_id", "NONE"))
        text = record["message"]
        if record["exception"] is not None:
            text = f"{text}\n{message}".rstrip()
        if not _on_trio_thread():  # the watchdog's thread: no clock, no events to set there
            self.records.append(Record(float("nan"), record["level"].name, session_id, text))
            return
        self.records.append(Record(trio.current_time(), record["level"].name, session_id, text))


def _on_trio_thread() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


@asynccontextmanager
async def open_bot_runtime(
    bot: str | Path | Callable[[Any], Awaitable[Any]], **env: str
) -> AsyncIterator[BotRuntime]:
    """A `BotRuntime` for ``bot`` (a file or module name, as ``pipecat-base serve`` takes, or
    an ``async def bot(args)``); ``env`` are the server's settings by variable name
    (``SESSION_CANCEL_GRACE="2"``, ``CLIENT_DISCONNECT_GRACE="1"``, ...)."""
    from loguru import logger

    from pipecat_base.config import load_settings
    from pipecat_base.observability.logs import NO_SESSION
    from pipecat_base.server import open_runtime
    from pipecat_base.sessions import args as session_args
    from pipecat_base.startup.loader import BotModule, load_bot

    # No token refresher beside a test, and no collection between sessions (real CPU time
    # for nothing under a virtual clock) unless the test asks for them.
    defaults = {"PCC_TOKEN_REFRESHER_DIR": "/nonexistent", "PCC_RELEASE_SESSION_MEMORY": "false"}
    settings = load_settings({**defaults, **env})
    # Importing pipecatcloud's session types reconfigures loguru: before our sink, as the
    # server does it before configuring logging.
    session_args.preload()
    if callable(bot):
        bot_module = BotModule(module=sys.modules[bot.__module__], bot=bot, readyz=None)
    else:
        bot_module = load_bot(str(bot))
    logger.configure(extra={"session_id": NO_SESSION})
    runtime = BotRuntime(settings, bot_module)
    sink = logger.add(runtime._sink, level="TRACE", format="{message}\n{exception}")
    try:
        async with (
            open_runtime(settings, bot_module, on_event=runtime._on_event) as parts,
            trio.open_nursery() as nursery,
        ):
            runtime._nursery = nursery
            runtime.supervisor = parts.supervisor
            runtime.watchdog = parts.watchdog
            runtime.app = parts.app
            yield runtime
            # Whatever the test left running ends as at a shutdown with no time left.
            with trio.CancelScope(shield=True):
                await parts.supervisor.drain(trio.current_time())
            nursery.cancel_scope.cancel()
    finally:
        logger.remove(sink)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """The kit's fixtures are Trio code: without pytest-trio's trio mode (or the ``trio``
    marker) pytest fails them with errors about its own internals; say what to set instead."""
    if "bot_runtime" not in getattr(item, "fixturenames", ()):
        return
    if item.config.getini("trio_mode") or item.get_closest_marker("trio") is not None:
        return
    raise pytest.UsageError(
        "pipecat_base.testing runs on pytest-trio's trio mode: set trio_mode = true under "
        "[tool.pytest.ini_options] in pyproject.toml (or trio_mode = true in pytest.ini)"
    )


def resolve_bot(bot: Any, test_file: Path) -> Any:
    """A relative bot path is the test file's neighbour when it is there (tests usually sit
    beside their bot), else the working directory's, as ``pipecat-base serve`` reads it."""
    if isinstance(bot, (str, Path)) and str(bot).endswith(".py") and not Path(bot).is_absolute():
        beside = test_file.parent / bot
        if beside.is_file():
            return str(beside)
    return bot


@pytest.fixture
async def bot_runtime(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[..., Awaitable[BotRuntime]]]:
    """``runtime = await bot_runtime("bot.py", SESSION_CANCEL_GRACE="2")``: an in-process
    server for the bot (a relative path is looked up beside the test file first), closed (its
    sessions drained at once) when the test ends."""
    async with trio.open_nursery() as nursery:
        closers: list[trio.Event] = []

        async def make(bot: Any, **env: str) -> BotRuntime:
            bot = resolve_bot(bot, Path(str(request.path)))
            ready: list[BotRuntime] = []
            done = trio.Event()
            close = trio.Event()

            async def hold(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                try:
                    async with open_bot_runtime(bot, **env) as runtime:
                        ready.append(runtime)
                        task_status.started()
                        await close.wait()
                finally:
                    done.set()

            await nursery.start(hold)
            closers.append(close)
            return ready[0]

        yield make
        for close in closers:
            close.set()
