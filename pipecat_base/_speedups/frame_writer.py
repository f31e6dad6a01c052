"""Write a bot's WebSocket message to the socket from the asyncio side, when nothing is ahead.

A bot's ``send`` runs on the asyncio loop, and Hypercorn's send path is Trio code that may
wait (for the connection's send lock, for room in the kernel's buffer). So `asgi_bridge`
queues each message for a Trio task that sends it: a wake-up, a Trio task step and often a
whole scheduler round per outbound frame, for a write the kernel nearly always takes at once.

The asyncio callbacks run inside a Trio task (trio-asyncio's loop task), so synchronous Trio
and socket calls are allowed there. `FrameWriter.write` does what Hypercorn's
``WSStream.app_send`` and ``LeanTCPServer.protocol_send`` do for a ``websocket.send`` --
frame the message with the connection's wsproto state (`ws_frames.server_frame` while wsproto
would write that very frame), take the send lock, write -- without waiting:
it takes the lock only if it is free, and what the kernel did not take is returned with the
lock still held, for `FrameWriter.finish` (the bridge's Trio task) to send before anything
else and release it. Whatever it cannot do at once (lock taken, connection not open, a message
Hypercorn would reject) it leaves to Hypercorn's own path. `FrameWriter.of` builds one only for
Hypercorn's plain-TCP HTTP/1.1 WebSocket streams served by `tcp_server.LeanTCPServer`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from wsproto.events import BytesMessage, TextMessage
from wsproto.utilities import LocalProtocolError

from pipecat_base._speedups import switch, ws_frames
from pipecat_base._speedups.tcp_server import LeanTCPServer, write_some

_CONNECTED = ASGIWebsocketState.CONNECTED


class FrameWriter:
    """One WebSocket connection's synchronous send path; see the module docstring."""

    @staticmethod
    def of(send: Callable[[Any], Awaitable[None]]) -> FrameWriter | None:
        """The writer for the connection whose ASGI ``send`` (Hypercorn's ``WSStream.app_send``)
        this is; None for any other ``send`` (HTTP/2, TLS, another server)."""
        stream = getattr(send, "__self__", None)
        if not isinstance(stream, WSStream) or send != stream.app_send:
            return None
        protocol = getattr(stream.send, "__self__", None)
        if not isinstance(protocol, H11Protocol):
            return None
        server = getattr(protocol.send, "__self__", None)
        if not isinstance(server, LeanTCPServer) or not server.plain:
            return None
        return FrameWriter(stream, server)

    def __init__(self, stream: WSStream, server: LeanTCPServer) -> None:
        self._stream = stream
        self._server = server

    def write(self, message: MutableMapping[str, Any]) -> bytes | None:
        """Send a ``websocket.send`` message now, as far as possible without waiting.

        None: nothing was done, the message is to go Hypercorn's way. Otherwise the bytes the
        kernel did not take: ``b""`` when the frame went out whole (or Hypercorn would have
        dropped it: the connection is closing); anything else must be passed to `finish`, as
        the next thing sent on this connection, and the send lock is held until then.
        """
        stream = self._stream
        if stream.closed or stream.state is not _CONNECTED:
            return None
        data = message.get("bytes")
        if data is not None:
            payload: bytes | str = bytes(data)
        else:
            payload = message.get("text")  # type: ignore[assignment]
            if not isinstance(payload, str):
                return None  # Hypercorn raises the error
        lock = self._server.send_lock
        if not lock.take_nowait():
            return None
        try:
            frame = self._frame(payload)
        except LocalProtocolError:
            lock.release()
            return b""  # the peer is closing: Hypercorn drops the message too
        except BaseException:
            lock.release()
            raise
        try:
            sent = write_some(self._server.stream, frame)  # type: ignore[arg-type]
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            sent = 0  # `finish` meets the error again and closes as Hypercorn does
        if sent == len(frame):
            lock.release()
            return b""
        return frame[sent:]

    def _frame(self, payload: bytes | str) -> bytes:
        """The frame for ``payload`` (text when a ``str``), with the connection's wsproto state
        moved as for any frame it sends; wsproto's ``LocalProtocolError`` when it is closing."""
        connection = self._stream.connection
        if switch.on("ws_frames") and ws_frames.sends_plain_frames(connection):
            return ws_frames.server_frame(payload)
        if isinstance(payload, str):
            return connection.send(TextMessage(data=payload))
        return connection.send(BytesMessage(data=payload))

    async def finish(self, rest: bytes) -> None:
        """Send what `write` left, then release the send lock it kept."""
        try:
            await self._server.send_locked(rest)
        finally:
            self._server.send_lock.release()
