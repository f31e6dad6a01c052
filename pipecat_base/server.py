"""Serving: the runtime (`open_runtime`), Hypercorn, signals and the shutdown sequence.

`open_runtime` is the one composition root: the server and the bot authors' test kit
(`pipecat_base.testing`) both build the runtime through it. Nesting, outermost first -- each
layer outlives what it contains::

    open_runtime()
     open_bridge_loop()                   the process' asyncio loop (bots run on it)
      open_app_lifespan()                 the Session API app's lifespan (pipecatcloud_system)
       _open_transports()                 SmallWebRTC and WhatsApp, when enabled
       session nursery                    SessionSupervisor: every session
        watchdog heartbeat
        Server.run's control nursery
          signal watcher                  SIGTERM/SIGINT -> request_shutdown()
          shutdown sequence               waits for the request, drains, then stops HTTP
          hypercorn.trio.serve(Dispatcher) our routes, then the bot's Session API app;
                                          keeps answering while sessions drain

The shutdown sequence (first SIGTERM or SIGINT):

1. stop admitting: new sessions get 503, ``/readyz`` answers 503 ``draining``;
2. touch ``<PCC_TOKEN_REFRESHER_DIR>/shutdown`` when that directory exists (the token
   refresher sidecar stops with us);
3. wait for running sessions up to ``SHUTDOWN_TIMEOUT`` seconds (Trio's monotonic clock);
4. cancel the rest with reason ``shutdown``; each gets ``SESSION_CANCEL_GRACE`` seconds to
   unwind, and a bot that ignores cancellation is abandoned;
5. stop Hypercorn (the ``/bot`` requests of ended sessions have been answered by then), close
   the loop, exit 0.

A second signal skips the rest of step 3: sessions are cancelled at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig
from loguru import logger
from quart_trio import QuartTrio

from pipecat_base import _speedups as speedups
from pipecat_base.app import create_app
from pipecat_base.bridge.loop import SECOND_CANCEL_WINDOW, open_bridge_loop
from pipecat_base.config import Settings
from pipecat_base.nursery import Outcome, SessionEvent, SessionSupervisor
from pipecat_base.observability.attribution import Attribution
from pipecat_base.observability.events import EventPublisher
from pipecat_base.observability.stdio import StdioGuard
from pipecat_base.observability.watchdog import LoopWatchdog
from pipecat_base.sessions.children import ChildProcesses
from pipecat_base.sessions.memory import freeze_startup_heap, parse_switch
from pipecat_base.startup.capabilities import build_document
from pipecat_base.startup.features import (
    CAPABILITIES,
    MOQ,
    WEBRTC,
    WHATSAPP,
    Feature,
    enabled,
    unavailable,
)
from pipecat_base.startup.features import detect as detect_features
from pipecat_base.startup.loader import BotModule
from pipecat_base.transports.session_api import (
    OWN_PATHS,
    Dispatcher,
    open_app_lifespan,
    shadowed_routes,
)
from pipecat_base.transports.webrtc import OFFER_PATH, SmallWebRTC
from pipecat_base.transports.whatsapp import WHATSAPP_PATH, WhatsApp

# How long Hypercorn lets open connections finish once sessions are over: their responses are
# ready by then, so this only bounds slow clients.
HTTP_GRACEFUL_TIMEOUT = 2.0
# The lines uvicorn logs once the app is up and once it is down (the existing image's server).
STARTUP_COMPLETE = "Application startup complete."
SHUTDOWN_COMPLETE = "Application shutdown complete."


@dataclass
class Runtime:
    """One serving lifetime's parts, as `open_runtime` built them."""

    settings: Settings
    bot_module: BotModule
    loop: asyncio.AbstractEventLoop
    supervisor: SessionSupervisor
    watchdog: LoopWatchdog
    app: QuartTrio
    asgi: Dispatcher
    """What Hypercorn serves: our app's routes, then the bot's Session API app."""
    features: list[Feature]
    capabilities: bytes | None
    """The ``/pcc/capabilities`` document; None when it could not be built."""
    speedups: frozenset[str]
    """The speedups engaged."""


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    bot_module: BotModule,
    *,
    features: list[Feature] | None = None,
    attribution: Attribution | None = None,
    on_event: Callable[[SessionEvent], None] | None = None,
    shutdown_deadline: Callable[[], float | None] = lambda: None,
    children: ChildProcesses | None = None,
) -> AsyncIterator[Runtime]:
    """Build everything that serves ``bot_module``, short of sockets and signals.

    Engages the speedups ``settings`` select (`pipecat_base._speedups.install`), then opens
    the asyncio loop, the Session API app's lifespan, the optional transports, the event
    publisher, the session nursery with its supervisor, and the loop watchdog's heartbeat.
    Leaving the block waits for every session (the caller drains first), then closes them in
    reverse order.

    Args:
        settings: The parsed settings.
        bot_module: The loaded bot.
        features: What the image can serve (`features.detect` when omitted).
        attribution: Shared with the output capture when the structured lane is on.
        on_event: Told of every session's start and end (`nursery.SessionEvent`).
        shutdown_deadline: When the shutdown must be over (Trio time), once one has begun;
            bounds the Session API app's shutdown.
        children: Ends the child processes sessions leave (the server's; the test kit's
            process is pytest's, whose children are not the bot's).
    """
    engaged = speedups.install(settings.speedups)
    if features is None:
        features = detect_features(settings=settings)
    capabilities = None
    try:
        capabilities = build_document(f for f in features if f.name in CAPABILITIES)
    except Exception as exc:  # the server serves without it; the path answers 404
        logger.warning(f"Not reporting capabilities: {exc}")
    user_app = load_session_api_app()
    own_paths = own_paths_for(features, user_app)
    for path in shadowed_routes(user_app, own_paths):
        logger.warning(
            f"pipecatcloud_system.app defines {path}, which the server serves itself: the "
            "server's route answers (for /readyz, define readyz() in the bot module)"
        )

    def remaining() -> float:
        # The Session API app's shutdown, bounded by the shutdown deadline (at least half a
        # second of it).
        deadline = shutdown_deadline() or trio.current_time()
        return max(0.5, deadline - trio.current_time())

    async with (
        open_bridge_loop() as loop,
        _user_app_lifespan(loop, user_app, remaining),
        _open_transports(loop, settings, features) as (webrtc, whatsapp),
        _open_publisher(settings) as publisher,
        trio.open_nursery() as session_nursery,
    ):
        release_memory, memory_error = parse_switch(settings.release_session_memory)
        if memory_error:
            logger.error(memory_error)
        supervisor = SessionSupervisor(
            session_nursery,
            loop,
            bot_module.bot,
            image_version=settings.image_version,
            cancel_grace=settings.session_cancel_grace,
            max_sessions=settings.max_sessions,
            release_session_memory=release_memory,
            attribution=attribution,
            publisher=publisher,
            on_event=on_event,
            children=children,
        )
        watchdog = LoopWatchdog(
            loop,
            stall_warning=settings.loop_stall_warning,
            recent_session=supervisor.recent_session,
        )
        supervisor.metrics.watch_stalls(
            stalls=lambda: watchdog.stats.count, longest_stall=lambda: watchdog.stats.longest
        )
        app = create_app(
            supervisor,
            settings=settings,
            capabilities=capabilities,
            user_readyz=bot_module.readyz,
            stall_stats=lambda: watchdog.stats,
            webrtc=webrtc,
            whatsapp=whatsapp,
            moq_unavailable=unavailable(features, MOQ),
            webrtc_unavailable=unavailable(features, WEBRTC),
        )
        asgi = Dispatcher(
            app,
            user_app,
            loop,
            cancel_grace=settings.session_cancel_grace,
            own_paths=own_paths,
            draining=lambda: supervisor.draining,
        )
        try:
            async with trio.open_nursery() as services:
                await services.start(watchdog.heartbeat)
                yield Runtime(
                    settings,
                    bot_module,
                    loop,
                    supervisor,
                    watchdog,
                    app,
                    asgi,
                    features,
                    capabilities,
                    engaged,
                )
                services.cancel_scope.cancel()
        finally:
            watchdog.close()


def own_paths_for(features: list[Feature], user_app: Any = None) -> frozenset[str]:
    """The paths our app serves: the optional transports' when they are enabled; the offer
    path also when SmallWebRTC is not, to say why, unless the bot's app serves that path."""
    paths = set(OWN_PATHS)
    if enabled(features, WEBRTC) or not shadowed_routes(user_app, [OFFER_PATH]):
        paths.add(OFFER_PATH)
    if enabled(features, WHATSAPP):
        paths.add(WHATSAPP_PATH)
    return frozenset(paths)


@asynccontextmanager
async def _open_transports(
    loop: asyncio.AbstractEventLoop, settings: Settings, features: list[Feature]
) -> AsyncIterator[tuple[SmallWebRTC | None, WhatsApp | None]]:
    """SmallWebRTC and WhatsApp, when enabled, for the serving lifetime; their peers and
    calls still open are closed once the sessions have ended."""
    if not enabled(features, WEBRTC):
        yield None, None
        return
    webrtc = SmallWebRTC(loop, settings)
    try:
        if enabled(features, WHATSAPP):
            async with WhatsApp(loop, settings, webrtc).running() as whatsapp:
                yield webrtc, whatsapp
        else:
            yield webrtc, None
    finally:
        await webrtc.aclose()


@asynccontextmanager
async def _open_publisher(settings: Settings) -> AsyncIterator[EventPublisher | None]:
    """The event publisher's one HTTP client, when ``PIPECAT_EVENT_PUBLISHER_ENDPOINT`` is
    set; it outlives the session nursery, so every session's last events can go out."""
    endpoint = settings.event_publisher_endpoint
    if endpoint is None:
        yield None
        return
    include_content = not settings.exclude_content
    async with EventPublisher.open(endpoint, include_content=include_content) as publisher:
        yield publisher


def _user_app_lifespan(
    loop: asyncio.AbstractEventLoop, user_app: Any, remaining: Callable[[], float]
) -> AbstractAsyncContextManager[None]:
    if user_app is None:
        return nullcontext()
    return open_app_lifespan(loop, user_app, shutdown_bound=remaining)


class Server:
    """One serving lifetime of the bot module under ``settings``: `open_runtime`, behind
    Hypercorn, until a signal's shutdown sequence has run."""

    def __init__(
        self,
        settings: Settings,
        bot_module: BotModule,
        *,
        on_shutdown: Callable[[], None] | None = None,
        attribution: Attribution | None = None,
        features: list[Feature] | None = None,
        owns_process: bool = False,
    ) -> None:
        """Args:
        settings: The parsed settings.
        bot_module: The loaded bot.
        on_shutdown: Called once when the shutdown sequence begins (the CLI uses it to
            absorb the late SIGTERMs a process manager may still send while we drain).
        attribution: Shared with the output capture when the structured lane is on.
        features: What the image can serve, detected once at startup (`features.detect` when
            omitted); ``/pcc/capabilities`` reports from it.
        owns_process: The process is this server's (the CLI): the child processes sessions
            leave are its to end. Not so for a server inside a test process, whose other
            children are the test's.
        """
        self.settings = settings
        self.bot_module = bot_module
        self._on_shutdown = on_shutdown
        self._attribution = attribution
        self.features = features if features is not None else detect_features(settings=settings)
        self.runtime: Runtime | None = None
        self.listening = False
        """The socket listens (a failure before is the address's, `cli` reports it so)."""
        self.supervisor: SessionSupervisor | None = None
        self.watchdog: LoopWatchdog | None = None
        self._shutdown_requested = trio.Event()
        self._stop_http = trio.Event()  # Hypercorn's shutdown trigger
        self._http_stopped = trio.Event()  # Hypercorn has returned: responses are out
        self._forced = False
        self._shutdown_deadline: float | None = None
        self._stdio = StdioGuard()
        self._owns_process = owns_process
        self._children = ChildProcesses() if owns_process else None

    def request_shutdown(self) -> None:
        """Begin the shutdown sequence; a second call cancels running sessions at once."""
        if not self._shutdown_requested.is_set():
            self._shutdown_requested.set()
            if self._on_shutdown is not None:
                self._on_shutdown()
            self._arm_exit_bound()
        elif not self._forced and self.supervisor is not None:
            self._forced = True
            logger.warning("Second shutdown signal: cancelling running sessions now")
            self.supervisor.stop_all("shutdown", Outcome.SHUTDOWN)

    async def run(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until shut down; ``task_status.started(binds)`` once the socket listens."""
        async with open_runtime(
            self.settings,
            self.bot_module,
            features=self.features,
            attribution=self._attribution,
            on_event=self._session_event,
            shutdown_deadline=lambda: self._shutdown_deadline,
            children=self._children,
        ) as runtime:
            self.runtime = runtime
            self.supervisor = runtime.supervisor
            self.watchdog = runtime.watchdog
            runtime.watchdog.check_on_beat(self._stdio.check)
            async with trio.open_nursery() as control:
                await control.start(self._watch_signals)
                control.start_soon(self._shutdown_sequence)
                binds = await control.start(self._serve_http, runtime.asgi)
                self.listening = True
                if self._owns_process:  # a test process's heap is not ours to freeze
                    # Everything built so far -- the bot's imports, pipecat, the runtime, the
                    # app, Hypercorn -- lives as long as the server: out of every collection.
                    frozen = freeze_startup_heap()
                    logger.debug(
                        f"Froze {frozen} objects alive at startup: collections leave them out"
                    )
                logger.info(f"Serving {self.bot_module.label} on {', '.join(binds)}")
                # uvicorn's words, which the existing image printed and log alerts key on.
                logger.info(STARTUP_COMPLETE)
                task_status.started(binds)
                await self._http_stopped.wait()
                control.cancel_scope.cancel()  # the signal watcher runs until told to stop
            logger.info("Server stopped")
        # Whatever child processes sessions still left do not outlive the server.
        if self._children is not None:
            await self._children.end_all(grace=self.settings.session_cancel_grace)
        self._stdio.close()
        logger.info(SHUTDOWN_COMPLETE)

    async def _serve_http(self, app: Any, *, task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await hypercorn.trio.serve(
                app,
                hypercorn_config(self.settings),
                shutdown_trigger=self._stop_http.wait,
                task_status=task_status,
                mode="asgi",
            )
        finally:
            self._http_stopped.set()

    def _arm_exit_bound(self) -> None:
        # The process must be gone by the drain and the cancel protocol, even if a bot blocks
        # the event loop and no deadline of ours can fire (the watchdog's thread enforces it).
        if self.watchdog is not None:
            s = self.settings
            self.watchdog.arm_exit(
                s.shutdown_timeout + s.session_cancel_grace + SECOND_CANCEL_WINDOW
            )

    def _session_event(self, event: SessionEvent) -> None:
        if event.kind == "ended":
            self._stdio.check()  # before the next connection could take a closed number

    async def _watch_signals(self, *, task_status: trio.TaskStatus[None]) -> None:
        stop_signals = (signal.SIGTERM, signal.SIGINT)
        with (
            trio.open_signal_receiver(*stop_signals) as signals,
            chained_signal_handlers(stop_signals, self._arm_exit_bound) as ours,
        ):
            assert self.watchdog is not None
            assert self.supervisor is not None
            keeper = SignalKeeper(ours, self.supervisor)
            self.watchdog.check_on_beat(keeper.check)
            try:
                task_status.started()
                async for signum in signals:
                    logger.info(f"Received {signal.Signals(signum).name}")
                    self.request_shutdown()
            finally:
                # The beat goes on a little longer: it must not put handlers back that are
                # being taken down now.
                keeper.stop()

    async def _shutdown_sequence(self) -> None:
        await self._shutdown_requested.wait()
        assert self.supervisor is not None
        logger.info("Shutting down: no new sessions")
        touch_token_refresher(Path(self.settings.token_refresher_dir))
        self._shutdown_deadline = trio.current_time() + self.settings.shutdown_timeout
        await self.supervisor.drain(self._shutdown_deadline)
        self._stop_http.set()


@contextmanager
def chained_signal_handlers(
    signums: tuple[int, ...], first: Callable[[], None]
) -> Iterator[dict[int, Callable[[int, FrameType | None], None]]]:
    """Run ``first`` in the signal handler itself, then the handler already installed (Trio's).

    Trio only wakes its task from the handler; while a bot blocks the event loop that task
    cannot run, but a Python-level handler still does (between bytecodes, even mid
    ``time.sleep``). Trio's handlers are put back on leaving.
    """
    previous = {signum: signal.getsignal(signum) for signum in signums}

    def handler(signum: int, frame: FrameType | None) -> None:
        first()
        chained = previous[signum]
        if callable(chained):
            chained(signum, frame)

    for signum in signums:
        signal.signal(signum, handler)
    try:
        yield {signum: handler for signum in signums}
    finally:
        for signum, chained in previous.items():
            signal.signal(signum, chained)


class SignalKeeper:
    """Puts the server's SIGTERM/SIGINT handlers back when a bot replaced them.

    A bot that installs its own handler (``signal.signal``) takes the container's stop signal:
    the server never drains, and the platform kills the pod at the end of its grace period.
    Checked on every watchdog beat; each replacement is undone with one WARNING that names the
    sessions running (a handler does not say who installed it). ``loop.add_signal_handler`` is
    refused at the call (`bridge.loop`).
    """

    def __init__(
        self,
        handlers: dict[int, Callable[[int, FrameType | None], None]],
        supervisor: SessionSupervisor,
    ) -> None:
        self._handlers = handlers
        self._supervisor = supervisor
        self._active = True

    def stop(self) -> None:
        self._active = False

    def check(self) -> None:
        if not self._active:
            return
        for signum, ours in self._handlers.items():
            if signal.getsignal(signum) is ours:
                continue
            signal.signal(signum, ours)
            running = ", ".join(str(s) for s in self._supervisor.session_ids) or "none running"
            logger.warning(
                f"A bot replaced the {signal.Signals(signum).name} handler (sessions: {running}):"
                " put the server's back. Stopping is the server's: bots are cancelled on SIGTERM."
            )


def load_session_api_app() -> Any:
    """``pipecatcloud_system.app``, with whatever routes the bot module added to it."""
    try:
        import pipecatcloud_system
    except ImportError as exc:  # FastAPI missing: the server serves without user routes
        logger.warning(f"No Session API app: {exc}")
        return None
    return pipecatcloud_system.app


def hypercorn_config(settings: Settings) -> HypercornConfig:
    """Hypercorn settings: the bind address, our loggers, a short graceful timeout.

    No access logger when ``PIPECAT_LOG_LEVEL`` drops INFO: Hypercorn formats every request's
    access-log fields before the logger's level is consulted (~7% of a ``/bot``'s CPU).
    """
    config = HypercornConfig()
    config.bind = [f"{settings.host}:{settings.port}"]
    access_lines_shown = logger.level(settings.log_level).no <= logger.level("INFO").no
    config.accesslog = logging.getLogger("hypercorn.access") if access_lines_shown else None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = HTTP_GRACEFUL_TIMEOUT
    return config


def touch_token_refresher(directory: Path) -> None:
    """Tell the token-refresher sidecar to stop, when it runs beside us."""
    if not directory.is_dir():
        return
    logger.info("Shutting down token refresher")
    try:
        (directory / "shutdown").touch()
    except OSError as exc:
        logger.error(f"Error adding token refresher shutdown file: {exc}")
