"""The Session API app: routes a bot adds here are served by pipecat-base while sessions run.

    from pipecatcloud_system import app

    @app.get("/state")
    async def state():
        return {"turns": TURNS}

Requests the server's own routes do not handle (HTTP and WebSocket) reach this FastAPI app,
which runs on the same asyncio loop as the bots, so a route can read or feed a running
session's asyncio objects. The server's routes (``/bot``, ``/ws``, ``/livez``, ``/readyz``,
``/metrics``, ``/pcc/capabilities``) keep precedence; to customise readiness, define
``readyz()`` in the bot module.

`add_lifespan_to_app` adds startup/shutdown work: each new lifespan runs nested inside the
ones added before it (the first added is outermost). The server runs them at startup and, at
shutdown, after the sessions have ended.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from loguru import logger

Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]

_lifespans: list[Lifespan] = []


@asynccontextmanager
async def _run_lifespans(app: FastAPI) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        for lifespan in list(_lifespans):
            await stack.enter_async_context(lifespan(app))
        yield


app = FastAPI(lifespan=_run_lifespans)


def add_lifespan_to_app(new_lifespan: Lifespan) -> None:
    """Run ``new_lifespan(app)`` around the app's life, inside the lifespans added before it."""
    logger.info("Adding lifespan to app")
    _lifespans.append(new_lifespan)


__all__ = ["add_lifespan_to_app", "app"]
