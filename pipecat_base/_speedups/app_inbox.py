"""The events Hypercorn hands one connection's app, which a bridge can take over directly.

Hypercorn's reader task puts each event it parses (a WebSocket frame, a request body chunk, a
disconnect) into a memory channel, and the app's task takes it out with ASGI ``receive``. For a
connection whose app runs on the asyncio side of `asgi_bridge`, that is a second hop: a trio
task (the bridge's inbound pump) receives from the channel only to hand the event on, one Trio
task step per frame. `AppInbox` is that channel with a switch: a consumer that can take events
straight from the reader `divert` s them to itself, and the pump is not needed.

`tcp_server.LeanTaskGroup` gives each connection's app ``AppInbox.receive`` as its ASGI
``receive``; `asgi_bridge` recognises it and diverts. Any other app reads the channel, as with
stock Hypercorn.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

from pipecat_base._speedups import checkpoints, switch

Event = MutableMapping[str, Any]
Sink = Callable[[Event], Awaitable[None]]


class AppInbox:
    """One connection's events, from Hypercorn's reader (`put`) to the app (`receive`)."""

    @staticmethod
    def of(receive: Callable[[], Awaitable[Event]]) -> AppInbox | None:
        """The inbox whose `receive` an app was given as its ASGI ``receive``, if it was."""
        inbox = getattr(receive, "__self__", None)
        return inbox if isinstance(inbox, AppInbox) and receive == inbox.receive else None

    def __init__(self, size: int) -> None:
        self._size = size
        # Made on first use: an HTTP route diverts its inbox before it reads anything, and a
        # channel costs ~25 µs of a ``POST /bot`` for nothing.
        self._channel: (
            tuple[trio.MemorySendChannel[Event], trio.MemoryReceiveChannel[Event]] | None
        ) = None
        # Events put before any channel exists, while there is room: a small body arrives in
        # the same read as the request, and Hypercorn's reader puts it before the route's task
        # has run, let alone diverted.
        self._early: list[Event] = []
        self._sink: Sink | None = None

    def _ends(self) -> tuple[trio.MemorySendChannel[Event], trio.MemoryReceiveChannel[Event]]:
        if self._channel is None:
            self._channel = trio.open_memory_channel(self._size)
            for event in self._early:  # at most ``size`` of them: they fit
                self._channel[0].send_nowait(event)
            self._early.clear()
        return self._channel

    async def put(self, event: Event) -> None:
        """Hypercorn's reader: hand over one event; waits while the app is too far behind."""
        sink = self._sink
        if sink is not None:
            await sink(event)
        elif self._channel is None and len(self._early) < self._size:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._early.append(event)
        else:
            # The reader's next socket read yields: no fairness round needed here.
            if switch.on("checkpoints"):
                await checkpoints.send(self._ends()[0], event)
            else:
                await self._ends()[0].send(event)

    async def receive(self) -> Event:
        """The app's ASGI ``receive``: the next event (only while not diverted)."""
        return await self._ends()[1].receive()

    def divert(self, sink: Sink) -> list[Event]:
        """Hand every later event to ``sink`` (awaited by the reader: it may wait, and that is
        the backpressure) and return the events already queued, oldest first, which the caller
        must take before any that reach ``sink``.
        """
        queued = self._early
        self._early = []
        while self._channel is not None:
            try:
                # Also takes the event of a reader waiting for room, and wakes it.
                queued.append(self._channel[1].receive_nowait())
            except trio.WouldBlock:
                break
        self._sink = sink
        return queued

    def discard(self) -> None:
        """Drop every later event: the consumer is done, and its sink (which may hold all it
        worked with) is let go."""
        self._sink = _discarded

    def restore(self) -> None:
        """Events go to the channel again (`receive`), from the next one the reader puts."""
        self._sink = None


async def _discarded(event: Event) -> None:
    """The sink of a consumer that is done (`AppInbox.discard`)."""
