"""Carry one ASGI connection across the trio-asyncio bridge, in both directions.

The trio side has the server's ASGI ``receive``/``send`` (Hypercorn's); the asyncio side gets
``receive``/``send`` coroutines with the same contract, for a Starlette ``WebSocket`` or any
ASGI app running on the process' asyncio loop.

Per-frame cost matters (a call carries ~50 frames in and ~25 out per second), so each message
crosses the bridge once and no task is spawned per message: two long-lived trio tasks pump the
connection for its whole life.

* **trio → asyncio** (`_pump_in`): reads the next ASGI event and puts it on an
  ``asyncio.Queue``. Credits (a ``trio.Semaphore`` the asyncio side releases as it takes
  events) bound how far reading runs ahead, so a bot that stops reading applies backpressure to
  the socket instead of buffering without limit.
* **asyncio → trio** (`_pump_out`): the asyncio ``send`` puts ``(message, future)`` on a trio
  channel and awaits the future; the pump sends in order and resolves each future with the
  outcome, so the sender waits exactly as long as the real send takes.

Calling trio's synchronous APIs (``send_nowait``, ``Semaphore.release``) from asyncio code is
safe here: trio-asyncio runs asyncio callbacks inside a trio task on the same thread. Resolving
asyncio futures from trio code is safe for the same reason.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# How many received events may wait for the asyncio side before reading pauses.
RECEIVE_CREDITS = 32

_DISCONNECTS = frozenset({"websocket.disconnect", "http.disconnect"})


class AsgiBridge:
    """The asyncio-side view of one ASGI connection; see the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._credits = trio.Semaphore(RECEIVE_CREDITS)
        self._outbox, self._outbox_out = trio.open_memory_channel[
            tuple[Message, asyncio.Future[None]]
        ](math.inf)
        self.disconnected = trio.Event()
        """Set when the peer's disconnect event has been read (and handed to asyncio)."""

    async def receive(self) -> Message:
        """asyncio side: the next ASGI event from the peer."""
        event = await self._inbox.get()
        self._credits.release()
        return event

    async def send(self, message: Message) -> None:
        """asyncio side: send one ASGI message; raises OSError once the connection is gone."""
        future: asyncio.Future[None] = self._loop.create_future()
        try:
            self._outbox.send_nowait((message, future))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise OSError("the connection is closed") from None
        await future

    async def _pump_in(self, receive: Receive) -> None:
        while True:
            await self._credits.acquire()
            event = await receive()
            self._inbox.put_nowait(event)
            if event["type"] in _DISCONNECTS:
                self.disconnected.set()
                return

    async def _pump_out(self, send: Send) -> None:
        try:
            async for message, future in self._outbox_out:
                try:
                    await send(message)
                except Exception as exc:  # handed to the asyncio sender, which decides
                    if not future.done():
                        future.set_exception(OSError(f"send failed: {exc!r}"))
                else:
                    if not future.done():
                        future.set_result(None)
        finally:
            # Senders still waiting when the connection ends must not wait forever.
            self._outbox.close()
            while True:
                try:
                    _, future = self._outbox_out.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if not future.done():
                    future.set_exception(OSError("the connection is closed"))


@asynccontextmanager
async def open_asgi_bridge(
    loop: asyncio.AbstractEventLoop, receive: Receive, send: Send
) -> AsyncIterator[AsgiBridge]:
    """Pump the trio-side ``receive``/``send`` for as long as the block runs.

    Leaving the block stops both pumps; asyncio senders still waiting get ``OSError``.
    """
    bridge = AsgiBridge(loop)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bridge._pump_in, receive)
        nursery.start_soon(bridge._pump_out, send)
        try:
            yield bridge
        finally:
            nursery.cancel_scope.cancel()
