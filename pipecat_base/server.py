"""Serving: the asyncio loop, the session nursery, Hypercorn, signals and the shutdown sequence.

Nesting, outermost first -- each layer outlives what it contains::

    open_bridge_loop()                    the process' asyncio loop (bots run on it)
     open_app_lifespan()                  the Session API app's lifespan (pipecatcloud_system)
      _open_transports()                  SmallWebRTC and WhatsApp, when enabled
      session nursery                     SessionSupervisor: every session
        control nursery
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
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from pathlib import Path

import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig
from loguru import logger

from . import tcp_server
from .app import create_app
from .attribution import Attribution
from .bridge import SECOND_CANCEL_WINDOW, open_bridge_loop
from .capabilities import build_document
from .config import Settings
from .events import EventPublisher
from .features import CAPABILITIES, MOQ, WEBRTC, WHATSAPP, Feature, enabled, unavailable
from .features import detect as detect_features
from .loader import BotModule
from .memory import parse_switch
from .nursery import Outcome, SessionSupervisor
from .session_api import OWN_PATHS, Dispatcher, open_app_lifespan, shadowed_routes
from .watchdog import LoopWatchdog
from .webrtc import OFFER_PATH, SmallWebRTC
from .whatsapp import WHATSAPP_PATH, WhatsApp

# How long Hypercorn lets open connections finish once sessions are over: their responses are
# ready by then, so this only bounds slow clients.
HTTP_GRACEFUL_TIMEOUT = 2.0


class Server:
    """One serving lifetime of the bot module under ``settings``."""

    def __init__(
        self,
        settings: Settings,
        bot_module: BotModule,
        *,
        on_shutdown: Callable[[], None] | None = None,
        attribution: Attribution | None = None,
        features: list[Feature] | None = None,
    ) -> None:
        """Args:
        settings: The parsed settings.
        bot_module: The loaded bot.
        on_shutdown: Called once when the shutdown sequence begins (the CLI uses it to
            absorb the late SIGTERMs a process manager may still send while we drain).
        attribution: Shared with the output capture when the structured lane is on.
        features: What the image can serve, detected once at startup (`features.detect` when
            omitted); ``/pcc/capabilities`` reports from it.
        """
        self.settings = settings
        self.bot_module = bot_module
        self._on_shutdown = on_shutdown
        self._attribution = attribution
        self.supervisor: SessionSupervisor | None = None
        self.watchdog: LoopWatchdog | None = None
        self.capabilities: bytes | None = None
        self.features = features if features is not None else detect_features(settings=settings)
        try:
            self.capabilities = build_document(f for f in self.features if f.name in CAPABILITIES)
        except Exception as exc:  # the server serves without it; the path answers 404
            logger.warning(f"Not reporting capabilities: {exc}")
        self._shutdown_requested = trio.Event()
        self._stop_http = trio.Event()  # Hypercorn's shutdown trigger
        self._http_stopped = trio.Event()  # Hypercorn has returned: responses are out
        self._forced = False
        self._shutdown_deadline: float | None = None

    @asynccontextmanager
    async def _open_publisher(self) -> AsyncIterator[EventPublisher | None]:
        """The event publisher's one HTTP client, when ``PIPECAT_EVENT_PUBLISHER_ENDPOINT`` is
        set; it outlives the session nursery, so every session's last events can go out."""
        endpoint = self.settings.event_publisher_endpoint
        if endpoint is None:
            yield None
            return
        include_content = not self.settings.exclude_content
        async with EventPublisher.open(endpoint, include_content=include_content) as publisher:
            yield publisher

    def request_shutdown(self) -> None:
        """Begin the shutdown sequence; a second call cancels running sessions at once."""
        if not self._shutdown_requested.is_set():
            self._shutdown_requested.set()
            if self._on_shutdown is not None:
                self._on_shutdown()
            if self.watchdog is not None:
                # The process must be gone by the drain, the cancel protocol and a margin, even
                # if a bot blocks the event loop and no deadline of ours can fire.
                s = self.settings
                self.watchdog.arm_exit(
                    s.shutdown_timeout + s.session_cancel_grace + SECOND_CANCEL_WINDOW
                )
        elif not self._forced and self.supervisor is not None:
            self._forced = True
            logger.warning("Second shutdown signal: cancelling running sessions now")
            self.supervisor.stop_all("shutdown", Outcome.SHUTDOWN)

    async def run(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until shut down; ``task_status.started(binds)`` once the socket listens."""
        settings = self.settings
        user_app = load_session_api_app()
        own_paths = self.own_paths()
        for path in shadowed_routes(user_app, own_paths):
            logger.warning(
                f"pipecatcloud_system.app defines {path}, which the server serves itself: the "
                "server's route answers (for /readyz, define readyz() in the bot module)"
            )
        async with (
            open_bridge_loop() as loop,
            self._user_app_lifespan(loop, user_app),
            self._open_transports(loop) as (webrtc, whatsapp),
            self._open_publisher() as publisher,
            trio.open_nursery() as session_nursery,
        ):
            release_memory, memory_error = parse_switch(settings.release_session_memory)
            if memory_error:
                logger.error(memory_error)
            self.supervisor = SessionSupervisor(
                session_nursery,
                loop,
                self.bot_module.bot,
                image_version=settings.image_version,
                cancel_grace=settings.session_cancel_grace,
                max_sessions=settings.max_sessions,
                release_session_memory=release_memory,
                attribution=self._attribution,
                publisher=publisher,
            )
            self.watchdog = LoopWatchdog(
                loop,
                stall_warning=settings.loop_stall_warning,
                recent_session=self.supervisor.recent_session,
            )
            watchdog = self.watchdog
            self.supervisor.metrics.watch_stalls(
                stalls=lambda: watchdog.stats.count, longest_stall=lambda: watchdog.stats.longest
            )
            app = create_app(
                self.supervisor,
                settings=settings,
                capabilities=self.capabilities,
                user_readyz=self.bot_module.readyz,
                stall_stats=lambda: self.watchdog.stats,  # type: ignore[union-attr]
                webrtc=webrtc,
                whatsapp=whatsapp,
                moq_unavailable=unavailable(self.features, MOQ),
            )
            async with trio.open_nursery() as control:
                await control.start(self.watchdog.heartbeat)
                await control.start(self._watch_signals)
                control.start_soon(self._shutdown_sequence)
                supervisor = self.supervisor
                asgi = Dispatcher(
                    app,
                    user_app,
                    loop,
                    cancel_grace=settings.session_cancel_grace,
                    own_paths=own_paths,
                    draining=lambda: supervisor.draining,
                )
                binds = await control.start(self._serve_http, asgi)
                logger.info(f"Serving bot {self.bot_module.name} on {', '.join(binds)}")
                task_status.started(binds)
                await self._http_stopped.wait()
                control.cancel_scope.cancel()  # the signal watcher runs until told to stop
            logger.info("Server stopped")
        # Shutdown finished within its bound: the exit guard has nothing left to guard.
        self.watchdog.close()

    def own_paths(self) -> frozenset[str]:
        """The paths our app serves (the optional transports' only when they are enabled)."""
        paths = set(OWN_PATHS)
        if enabled(self.features, WEBRTC):
            paths.add(OFFER_PATH)
        if enabled(self.features, WHATSAPP):
            paths.add(WHATSAPP_PATH)
        return frozenset(paths)

    @asynccontextmanager
    async def _open_transports(
        self, loop: asyncio.AbstractEventLoop
    ) -> AsyncIterator[tuple[SmallWebRTC | None, WhatsApp | None]]:
        """SmallWebRTC and WhatsApp, when enabled, for the serving lifetime; their peers and
        calls still open are closed once the sessions have ended."""
        if not enabled(self.features, WEBRTC):
            yield None, None
            return
        webrtc = SmallWebRTC(loop, self.settings)
        try:
            if enabled(self.features, WHATSAPP):
                async with WhatsApp(loop, self.settings, webrtc).running() as whatsapp:
                    yield webrtc, whatsapp
            else:
                yield webrtc, None
        finally:
            await webrtc.aclose()

    def _user_app_lifespan(
        self, loop: asyncio.AbstractEventLoop, user_app: object | None
    ) -> AbstractAsyncContextManager[None]:
        if user_app is None:
            return nullcontext()

        def remaining() -> float:
            # Bounded by the shutdown deadline (at least half a second of it).
            deadline = self._shutdown_deadline or trio.current_time()
            return max(0.5, deadline - trio.current_time())

        return open_app_lifespan(loop, user_app, shutdown_bound=remaining)  # type: ignore[arg-type]

    async def _serve_http(self, app: object, *, task_status: trio.TaskStatus[list[str]]) -> None:
        config = hypercorn_config(self.settings)
        tcp_server.install()
        try:
            await hypercorn.trio.serve(
                app,  # type: ignore[arg-type]
                config,
                shutdown_trigger=self._stop_http.wait,
                task_status=task_status,
                mode="asgi",
            )
        finally:
            self._http_stopped.set()

    async def _watch_signals(self, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                logger.info(f"Received {signal.Signals(signum).name}")
                self.request_shutdown()

    async def _shutdown_sequence(self) -> None:
        await self._shutdown_requested.wait()
        assert self.supervisor is not None
        logger.info("Shutting down: no new sessions")
        touch_token_refresher(Path(self.settings.token_refresher_dir))
        self._shutdown_deadline = trio.current_time() + self.settings.shutdown_timeout
        await self.supervisor.drain(self._shutdown_deadline)
        self._stop_http.set()


def load_session_api_app() -> object | None:
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
