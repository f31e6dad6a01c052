"""Real Hypercorn (its trio worker) on 127.0.0.1, with stock or lean connection classes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import hypercorn.trio
import hypercorn.trio.run
import hypercorn.trio.task_group
import hypercorn.trio.tcp_server
import pytest
import trio
from hypercorn.config import Config

from pipecat_base._speedups import tcp_server

STOCK = (hypercorn.trio.tcp_server.TCPServer, hypercorn.trio.task_group.TaskGroup)
LEAN = (tcp_server.LeanTCPServer, tcp_server.LeanTaskGroup)


@asynccontextmanager
async def serving(
    classes: tuple[type, type],
    config: Config,
    app: Any,
    stop: trio.Event | None = None,
) -> AsyncIterator[str]:
    """Hypercorn serving ``app`` with the given connection server and task group, until the
    block ends or ``stop`` is set."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hypercorn.trio.run, "TCPServer", classes[0])
        patch.setattr(hypercorn.trio.tcp_server, "TaskGroup", classes[1])
        config.bind = ["127.0.0.1:0"]
        stop = trio.Event() if stop is None else stop
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                partial(hypercorn.trio.serve, app, config, shutdown_trigger=stop.wait)
            )
            yield binds[0].replace("http://", "ws://")
            stop.set()


async def open_tcp(url: str) -> trio.SocketStream:
    """A plain TCP connection to the server `serving` yielded ``url`` for."""
    host, port = url.removeprefix("ws://").split(":")
    return await trio.open_tcp_stream(host, int(port))


async def agree_to_lifespan(receive: Any, send: Any) -> None:
    """An ASGI app's part of Hypercorn's lifespan protocol: agree to startup and shutdown."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})
