"""The Session API: the bot's own ASGI app (``pipecatcloud_system.app``) behind our routes.

`Dispatcher` is the ASGI application Hypercorn serves. Requests for one of the server's own
paths go to the Quart-Trio app; every other HTTP request and WebSocket goes to the bot's app,
run as an asyncio task on the process' loop -- the loop the sessions run on, so a route can
touch a running session's asyncio objects -- across the same `asgi_bridge` the ``/ws``
sessions use. Our paths win: a bot route at one of them is reported once at startup as
shadowed (the existing image let the bot's route win by import order).

User routes keep answering while the server drains: sessions still running may need them.

`open_app_lifespan` runs the bot app's ASGI lifespan on the asyncio loop: startup when serving
begins, shutdown (bounded) after the sessions have ended.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio
from loguru import logger

from pipecat_base import _speedups as speedups
from pipecat_base.bridge.asgi import Message, Receive, Send, open_asgi_bridge
from pipecat_base.bridge.loop import run_aio, wait_task

# Any ASGI application (Quart's and Starlette's type their arguments each their own way).
AsgiApp = Callable[..., Any]

OWN_PATHS = frozenset({"/bot", "/ws", "/livez", "/readyz", "/metrics", "/pcc/capabilities"})


class Dispatcher:
    """Our routes first; everything else to the bot's app (see module docstring)."""

    def __init__(
        self,
        ours: AsgiApp,
        user_app: AsgiApp | None,
        loop: asyncio.AbstractEventLoop,
        *,
        cancel_grace: float,
        own_paths: Iterable[str] = OWN_PATHS,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self._draining = draining
        self._ours = ours
        self._user_app = user_app
        self._loop = loop
        self._cancel_grace = cancel_grace
        self._own_paths = frozenset(own_paths)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = refusal_of(scope)
            if refusal is not None:
                await answer_json(send, *refusal, close=True)
                return
            send = self._closing_while_draining(send)
        if (
            self._user_app is not None
            and scope["type"] in ("http", "websocket")
            and scope["path"] not in self._own_paths
        ):
            await run_asgi_on_loop(
                self._loop, self._user_app, scope, receive, send, cancel_grace=self._cancel_grace
            )
        else:
            await self._ours(scope, receive, send)

    def _closing_while_draining(self, send: Send) -> Send:
        """While the server drains, every HTTP response asks the client to close the connection:
        an idle keep-alive connection would otherwise hold Hypercorn's shutdown for its whole
        graceful timeout after the last session ended."""

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and self._draining():
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"
                ]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        return closing_send


# What HTTP versions a request may name (h11 parses any "HTTP/d.d").
SPOKEN_VERSIONS = frozenset({"1.0", "1.1", "2", "3"})


def refusal_of(scope: dict[str, Any]) -> tuple[int, str] | None:
    """Why an HTTP request is refused before any route sees it, as (status, detail), or None.

    * a version this server does not speak: 505;
    * ``Content-Length`` together with ``Transfer-Encoding``: 400 -- a proxy in front may
      frame the body by the other header, and the rest would be read as a second request
      (request smuggling).
    """
    version = scope.get("http_version", "1.1")
    if version not in SPOKEN_VERSIONS:
        return 505, f"HTTP/{version} is not supported: use HTTP/1.1"
    length = chunked = False
    for name, _ in scope.get("headers", ()):
        if name == b"content-length":
            length = True
        elif name == b"transfer-encoding":
            chunked = True
    if length and chunked:
        return 400, "Content-Length and Transfer-Encoding together: send only one of them"
    return None


async def answer_json(send: Send, status: int, detail: str, *, close: bool = False) -> None:
    """Answer ``{"detail": detail}`` with ``status`` (closing the connection when asked)."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def run_asgi_on_loop(
    loop: asyncio.AbstractEventLoop,
    app: AsgiApp,
    scope: dict[str, Any],
    receive: Receive,
    send: Send,
    *,
    cancel_grace: float,
) -> None:
    """Run an asyncio ASGI app for one connection, its messages crossing the bridge."""
    async with open_asgi_bridge(loop, receive, send, speedups.frame_writer_of(send)) as bridge:
        # An exception reaches Hypercorn, which logs it and answers 500.
        await run_aio(
            loop, app, dict(scope), bridge.receive, bridge.send, cancel_grace=cancel_grace
        )


def shadowed_routes(user_app: Any, own_paths: Iterable[str] = OWN_PATHS) -> list[str]:
    """Paths the bot's app defines that the server serves itself (its routes never answer)."""
    own = set(own_paths)
    paths = {str(getattr(r, "path", "")) for r in getattr(user_app, "routes", [])}
    return sorted(paths & own)


@asynccontextmanager
async def open_app_lifespan(
    loop: asyncio.AbstractEventLoop, app: AsgiApp, *, shutdown_bound: Callable[[], float]
) -> AsyncIterator[None]:
    """Run ``app``'s ASGI lifespan on ``loop`` around the block.

    A failing startup is logged and the server serves on (a bot's broken route must not take
    the sessions down); an app without lifespan support is simply not driven. Shutdown waits
    at most ``shutdown_bound()`` seconds (asked when shutdown begins).
    """
    # Each phase ends when the app answers it, or when the app's task ends (an app without
    # lifespan support raises on the first event; a failed startup returns).
    startup_over = trio.Event()
    shutdown_requested = trio.Event()
    shutdown_over = trio.Event()
    answers: dict[str, Message] = {}
    asked: list[str] = []

    async def receive() -> Message:
        if not asked:
            asked.append("startup")
            return {"type": "lifespan.startup"}
        await shutdown_requested.wait()
        return {"type": "lifespan.shutdown"}

    async def send(message: Message) -> None:
        answers[message["type"]] = message
        if message["type"].startswith("lifespan.startup."):
            startup_over.set()
        elif message["type"].startswith("lifespan.shutdown."):
            shutdown_over.set()

    def task_ended(task: asyncio.Task[Any]) -> None:
        startup_over.set()
        shutdown_over.set()
        if not task.cancelled():
            task.exception()  # retrieved: an app without lifespan support is not an error

    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    async with open_asgi_bridge(loop, receive, send) as bridge:
        task = loop.create_task(app(scope, bridge.receive, bridge.send))
        task.add_done_callback(task_ended)
        await startup_over.wait()
        if "lifespan.startup.failed" in answers:
            message = answers["lifespan.startup.failed"].get("message", "")
            logger.error(f"The Session API app's startup failed: {message}")
        try:
            yield
        finally:
            with trio.CancelScope(shield=True):
                shutdown_requested.set()
                limit = shutdown_bound()
                with trio.move_on_after(limit) as bound:
                    await shutdown_over.wait()
                if bound.cancelled_caught:
                    logger.warning(
                        f"The Session API app's shutdown did not finish within {limit:g}s"
                    )
                    with trio.CancelScope() as stop:
                        stop.cancel()  # wait_task's bounded cancel protocol, right away
                        await wait_task(task, cancel_grace=1.0)
