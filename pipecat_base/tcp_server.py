"""Hypercorn's per-connection server, minus two costs it pays on every frame.

Hypercorn's trio worker runs one ``TCPServer`` per connection. On the media path each inbound
WebSocket frame is one socket read and each outbound frame one send, and two things there cost
a noticeable share of a call's CPU (``py-spy`` on 10 pipecat calls, see ``bench/NOTES.md``):

* every read is wrapped in ``trio.fail_after(read_timeout or inf)`` -- with no read timeout
  configured (ours) a cancel scope that can never fire, built and torn down per read;
* every send takes ``send_lock`` with ``trio.Lock.acquire``, and every received frame goes
  to the app with ``MemorySendChannel.send``; each ends with a fairness round, a whole Trio
  task step per frame, although the socket send or read that follows yields anyway;
* every received frame crosses a memory channel to the app's task -- for a bridged app, only
  for a pump task to hand it on to asyncio.

`LeanTCPServer` reads without the scope when no read timeout is set (Hypercorn's own loop
otherwise) and takes the send lock with `checkpoints.acquire`; `LeanTaskGroup` gives each app
an `AppInbox`, which puts with `checkpoints.send` and which `asgi_bridge` takes over, so the
reader hands frames straight to asyncio. Everything else -- protocol handling, closing, idle
timeouts -- is Hypercorn's. `install` makes Hypercorn's trio worker use them.
``tests/test_tcp_server.py`` runs real Hypercorn with and without them: the steps per frame
(one fewer in each direction) and the read-timeout and close behaviour are checked against
stock Hypercorn, so an upgrade that changes what this overrides fails there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import hypercorn.trio.run
import hypercorn.trio.tcp_server
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, RawData
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.task_group import _handle as hypercorn_handle
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer

from . import checkpoints
from .app_inbox import AppInbox


class SendLock:
    """Hypercorn's send lock (an ``async with`` lock), taken without a fairness round."""

    def __init__(self) -> None:
        self._lock = trio.Lock()

    async def __aenter__(self) -> None:
        await checkpoints.acquire(self._lock)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.release()


class LeanTaskGroup(TaskGroup):
    """Hypercorn's per-connection task group; each app's events arrive through an `AppInbox`.

    The app is run exactly as Hypercorn's own ``spawn_app`` runs it (its ``_handle``: errors
    logged, ``send(None)`` at the end); only the channel between reader and app differs.
    """

    async def spawn_app(
        self,
        app: Any,
        config: Config,
        scope: Any,
        send: Callable[[Any], Awaitable[None]],
    ) -> Callable[[Any], Awaitable[None]]:
        inbox = AppInbox(config.max_app_queue_size)
        assert self._nursery is not None
        self._nursery.start_soon(
            hypercorn_handle,
            app,
            config,
            scope,
            inbox.receive,
            send,
            trio.to_thread.run_sync,
            trio.from_thread.run,
        )
        return inbox.put


class LeanTCPServer(TCPServer):
    """Hypercorn's ``TCPServer`` with the per-frame costs above removed (see module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.send_lock = SendLock()  # type: ignore[assignment]

    async def _read_data(self) -> None:
        if self.config.read_timeout:
            await super()._read_data()
            return
        while True:
            try:
                data = await self.stream.receive_some(MAX_RECV)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                break
            await self.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
        await self.protocol.handle(Closed())


def install() -> None:
    """Make Hypercorn's trio worker serve connections with `LeanTCPServer` (idempotent)."""
    hypercorn.trio.run.TCPServer = LeanTCPServer  # type: ignore[misc]
    hypercorn.trio.tcp_server.TaskGroup = LeanTaskGroup  # type: ignore[misc]
