"""Shared fixtures: captured log records, and supervisors on a real trio-asyncio loop."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from loguru import logger

from pipecat_base import _speedups as speedups
from pipecat_base.bridge.loop import open_bridge_loop
from pipecat_base.nursery import SessionSupervisor
from pipecat_base.observability.logs import NO_SESSION

# pytester: the test kit's own checks run pytest inside a test.
pytest_plugins = ["pytester"]

PIPECAT = sys.version_info >= (3, 11)
needs_pipecat = pytest.mark.skipif(not PIPECAT, reason="pipecat-ai needs Python >= 3.11")


@pytest.fixture(scope="session", autouse=True)
def _speedups_as_configured() -> None:
    """Engage the speedups ``PIPECAT_BASE_SPEEDUPS`` selects for the in-process tests, as the
    server does at startup (``.ci/run`` runs the suite once with all, once with none)."""
    speedups.install(os.environ.get(speedups.ENV_VAR))


@pytest.fixture
def engaged() -> Iterator[Callable[[str], frozenset[str]]]:
    """``engaged("route_matching")``: run this test with exactly that selection; the configured
    one comes back after it."""
    yield lambda selection: speedups.install(selection)
    speedups.install(os.environ.get(speedups.ENV_VAR))


@pytest.fixture
def all_speedups(engaged: Callable[[str], frozenset[str]]) -> None:
    """For the tests of the speedups themselves: every one engaged, whatever the run's
    selection (each such test compares against the stock path itself)."""
    engaged("1")


@pytest.fixture(scope="session", autouse=True)
def _session_types_preloaded() -> None:
    """Import pipecat/pipecatcloud once, before any test adds a log sink (as the CLI does):
    importing them reconfigures loguru, which would drop the sinks tests capture with."""
    from pipecat_base.sessions import args as session_args

    session_args.preload()


@dataclass
class Logs:
    """Records logged during a test: ``(level, session_id, message)``."""

    records: list[tuple[str, str, str]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # wall-clock timestamps of the records
    _waiters: list[tuple[str, trio.Event, trio.lowlevel.TrioToken]] = field(default_factory=list)

    def sink(self, message: Any) -> None:
        r = message.record
        self.times.append(r["time"].timestamp())
        text = r["message"]
        if r["exception"] is not None:
            text += "\n" + "".join(message.splitlines(keepends=True)[1:])
        self.records.append((r["level"].name, str(r["extra"].get("session_id")), text))
        for fragment, event, token in self._waiters:
            if fragment in text:
                token.run_sync_soon(event.set)  # thread-safe: some records come from threads

    async def wait_for(self, fragment: str) -> None:
        """Return once a record containing ``fragment`` has been logged (bound it yourself)."""
        event = trio.Event()
        waiter = (fragment, event, trio.lowlevel.current_trio_token())
        self._waiters.append(waiter)
        try:
            if not self.having(fragment):
                await event.wait()
        finally:
            self._waiters.remove(waiter)

    def messages(self, level: str | None = None) -> list[str]:
        return [m for lv, _, m in self.records if level is None or lv == level]

    def having(self, fragment: str) -> list[tuple[str, str, str]]:
        return [r for r in self.records if fragment in r[2]]

    def time_of(self, fragment: str) -> float:
        return next(t for t, r in zip(self.times, self.records, strict=True) if fragment in r[2])

    @property
    def text(self) -> str:
        return "\n".join(m for _, _, m in self.records)


@pytest.fixture
def logs() -> Iterator[Logs]:
    captured = Logs()
    logger.configure(extra={"session_id": NO_SESSION})
    sink_id = logger.add(captured.sink, level="TRACE", format="{message}\n{exception}")
    yield captured
    logger.remove(sink_id)


SupervisorFactory = Callable[..., SessionSupervisor]


@pytest.fixture
async def make_supervisor() -> AsyncIterator[SupervisorFactory]:
    """Build supervisors whose sessions run in one nursery on one trio-asyncio loop."""
    async with open_bridge_loop() as loop, trio.open_nursery() as nursery:

        def make(bot: Callable[[Any], Any], **options: Any) -> SessionSupervisor:
            return SessionSupervisor(nursery, loop, bot, **options)

        yield make
        nursery.cancel_scope.cancel()


@dataclass
class Served:
    """An in-process server on a real socket of 127.0.0.1."""

    server: Any
    url: str

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"


@pytest.fixture
def serve_bot():
    """``async with serve_bot("tests/bots/x.py", SETTING="v") as served:`` -- the whole server
    (loop, supervisor, Hypercorn) in this process; shut down when the block ends."""
    from contextlib import asynccontextmanager

    from pipecat_base.config import load_settings
    from pipecat_base.server import Server
    from pipecat_base.startup.loader import load_bot

    @asynccontextmanager
    async def serve(bot: str, **env: str) -> AsyncIterator[Served]:
        settings = load_settings(
            {"HOST": "127.0.0.1", "PORT": "0", "PCC_TOKEN_REFRESHER_DIR": "/nonexistent", **env}
        )
        server = Server(settings, load_bot(bot))
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(server.run)
            yield Served(server, binds[0])
            server.request_shutdown()

    return serve
