"""Carry one ASGI connection across the trio-asyncio bridge, in both directions.

The trio side has the server's ASGI ``receive``/``send`` (Hypercorn's); the asyncio side gets
``receive``/``send`` coroutines with the same contract, for a Starlette ``WebSocket`` or any
ASGI app running on the process' asyncio loop.

Per-frame cost matters (a call carries ~50 frames in and ~25 out per second), so each message
crosses the bridge once and no task is spawned per message: two long-lived trio tasks pump the
connection for its whole life.

* **trio → asyncio**: each ASGI event is put on an ``asyncio.Queue``. Credits (a
  ``trio.Semaphore`` the asyncio side releases as it takes events) bound how far reading runs
  ahead, so a bot that stops reading applies backpressure to the socket instead of buffering
  without limit. When ``receive`` is an `app_inbox.AppInbox`'s (Hypercorn's connections, see
  `tcp_server`), the bridge diverts it: Hypercorn's reader task delivers each event itself,
  waiting for a credit when there is none. Any other ``receive`` is pumped by a task
  (`_pump_in`).
* **asyncio → trio** (`_pump_out`): the asyncio ``send`` puts the message on a trio channel
  and the pump sends in order. While fewer than `SEND_CREDITS` messages are in flight, ``send``
  returns as soon as its message is queued -- no round trip back to asyncio per message; past
  that it waits (with a future the pump resolves) until its own message is sent, which is the
  backpressure. As with any buffered socket, a failed send surfaces as ``OSError`` on the next
  ``send``.
* **asyncio → socket** (`frame_writer`): for a Hypercorn WebSocket, a ``websocket.send`` with
  nothing queued ahead of it is written to the socket by ``send`` itself, without waking the
  pump; only what the kernel's buffer did not take is queued, and everything after it queues
  behind it.

Calling trio's synchronous APIs (``send_nowait``, ``Semaphore.release``) from asyncio code is
safe here: trio-asyncio runs asyncio callbacks inside a trio task on the same thread. Resolving
asyncio futures from trio code is safe for the same reason.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import trio

from pipecat_base import _speedups as speedups

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# How many received events may wait for the asyncio side before reading pauses.
RECEIVE_CREDITS = 32
# How many sent messages may be queued before a sender waits for its own to go out.
SEND_CREDITS = 32
# How long leaving a bridge may take to send what is still queued.
FLUSH_TIMEOUT = 1.0

_DISCONNECTS = frozenset({"websocket.disconnect", "http.disconnect"})


class AsgiBridge:
    """The asyncio-side view of one ASGI connection; see the module docstring."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, writer: speedups.FrameWriter | None = None
    ) -> None:
        self._loop = loop
        self._writer = writer
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._credits = trio.Semaphore(RECEIVE_CREDITS)
        # Events queued without a credit (taken over from a diverted inbox): the asyncio side
        # repays these before it gives credits back.
        self._debt = 0
        self._diverted: speedups.AppInbox | None = None
        # A message, or the rest of a frame `FrameWriter.write` began (bytes).
        self._outbox, self._outbox_out = trio.open_memory_channel[
            tuple["Message | bytes", "asyncio.Future[None] | None"]
        ](math.inf)
        # Messages queued and not yet sent: only with none may `send` write a frame itself.
        self._queued = 0
        self._closing = False
        self._send_credits = trio.Semaphore(SEND_CREDITS)
        self._send_error: OSError | None = None
        self._flushed = trio.Event()
        self.disconnected = trio.Event()
        """Set when the peer's disconnect event has been read (and handed to asyncio)."""
        # The first event read from the peer (it stays queued for the asyncio side).
        self._first_event: Message | None = None
        self._first_read = trio.Event()

    async def receive(self) -> Message:
        """asyncio side: the next ASGI event from the peer."""
        event = await self._inbox.get()
        if self._debt:
            self._debt -= 1
        else:
            self._credits.release()
        return event

    async def send(self, message: Message) -> None:
        """asyncio side: send one ASGI message, in order; OSError once the connection is gone."""
        if self._send_error is not None:
            raise self._send_error
        item: Message | bytes = message
        if (
            self._writer is not None
            and not self._queued
            and not self._closing
            and message.get("type") == "websocket.send"
        ):
            rest = self._writer.write(message)
            if rest is not None:
                if not rest:
                    return
                item = rest  # the frame's end goes first; the send lock waits for it
        future: asyncio.Future[None] | None = None
        try:
            self._send_credits.acquire_nowait()
        except trio.WouldBlock:
            future = self._loop.create_future()
        try:
            self._outbox.send_nowait((item, future))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise OSError("the connection is closed") from None
        self._queued += 1
        if future is not None:
            await future

    async def wait_first_event(self) -> Message:
        """trio side: the first event from the peer, once read; the asyncio side still gets
        it (a peek, not a receive)."""
        await self._first_read.wait()
        assert self._first_event is not None
        return self._first_event

    def _queue(self, event: Message) -> None:
        if self._first_event is None:
            self._first_event = event
            self._first_read.set()
        if event["type"] == "websocket.receive":
            # uvicorn's shape, which Starlette (and so pipecat) runs on under the existing
            # image: only the key that carries the frame (Hypercorn adds the other as None).
            if event.get("text", "") is None:
                del event["text"]
            elif event.get("bytes", b"") is None:
                del event["bytes"]
        self._inbox.put_nowait(event)
        if event["type"] in _DISCONNECTS:
            self.disconnected.set()

    async def _pump_in(self, receive: Receive) -> None:
        while not self.disconnected.is_set():
            # The server's receive() yields on every event, and the credits bound this loop
            # anyway: no fairness round needed here.
            await speedups.acquire(self._credits)
            self._queue(await receive())

    def _divert(self, inbox: speedups.AppInbox) -> None:
        self._diverted = inbox
        for event in inbox.divert(self._deliver):
            try:
                self._credits.acquire_nowait()
            except trio.WouldBlock:
                self._debt += 1
            self._queue(event)

    async def _deliver(self, event: Message) -> None:
        """Run by the server's reader task for each event of the diverted inbox."""
        inbox = self._diverted
        assert inbox is not None  # the sink only while diverted
        # The reader's next socket read yields: no fairness round needed here.
        await speedups.acquire(self._credits)
        if self._diverted is None:
            # The bridge ended while this waited (`_undivert` woke it): the event is the app's
            # again, as if it had never been diverted.
            await inbox.put(event)
            return
        self._queue(event)

    def _undivert(self) -> None:
        inbox, self._diverted = self._diverted, None
        if inbox is None:
            return
        inbox.restore()
        # A reader still waiting for a credit must not wait forever: this wakes it.
        self._credits.release()

    async def _finish(self, rest: bytes) -> None:
        assert self._writer is not None  # only its `write` leaves a frame's rest
        await self._writer.finish(rest)

    async def _pump_out(self, send: Send) -> None:
        try:
            async for item, future in self._outbox_out:
                try:
                    if isinstance(item, bytes):
                        await self._finish(item)
                    elif self._send_error is None:
                        await send(item)
                except Exception as exc:  # handed to the asyncio side, which decides
                    self._send_error = OSError(f"send failed: {exc!r}")
                finally:
                    self._queued -= 1
                if future is None:
                    self._send_credits.release()
                elif not future.done():
                    if self._send_error is not None:
                        future.set_exception(self._send_error)
                    else:
                        future.set_result(None)
        finally:
            self._flushed.set()
            # Senders still waiting when the connection ends must not wait forever.
            self._outbox.close()
            while True:
                try:
                    item, future = self._outbox_out.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if isinstance(item, bytes):
                    # A frame half sent holds the send lock: it must end before anything else
                    # (Quart's closing frame) can go, as Hypercorn's shielded sends do.
                    with trio.CancelScope(shield=True):
                        await self._finish(item)
                if future is not None and not future.done():
                    future.set_exception(OSError("the connection is closed"))


@asynccontextmanager
async def open_asgi_bridge(
    loop: asyncio.AbstractEventLoop,
    receive: Receive,
    send: Send,
    writer: speedups.FrameWriter | None = None,
) -> AsyncIterator[AsgiBridge]:
    """Pump the trio-side ``receive``/``send`` for as long as the block runs.

    With ``writer`` (`FrameWriter.of` Hypercorn's WebSocket ``send``; ``send`` may wrap that),
    frames the asyncio side sends with nothing queued ahead are written at once.

    Leaving the block sends what is still queued (for at most `FLUSH_TIMEOUT`), then stops both
    pumps; asyncio senders still waiting get ``OSError``.
    """
    bridge = AsgiBridge(loop, writer)
    async with trio.open_nursery() as nursery:
        inbox = speedups.inbox_of(receive)
        if inbox is not None:
            bridge._divert(inbox)
        else:
            nursery.start_soon(bridge._pump_in, receive)
        nursery.start_soon(bridge._pump_out, send)
        try:
            yield bridge
        finally:
            bridge._undivert()
            # send() returns once a message is queued: what an app sent just before returning
            # (a response body, a bot's last frames) must still go out.
            bridge._closing = True
            with trio.CancelScope(shield=True), trio.move_on_after(FLUSH_TIMEOUT):
                bridge._outbox.close()
                await bridge._flushed.wait()
            nursery.cancel_scope.cancel()
