"""WebSocket sessions: the Quart connection class, and the Starlette socket the bot gets.

Stock quart-trio pumps every frame through a memory channel and a ``websocket_received``
signal, turns an empty binary frame into ``None`` (``event.get("bytes") or event["text"]``),
and cancels the handler the instant the client disconnects -- so pipecat never sees
``websocket.disconnect`` and ``on_client_disconnected`` never runs. `DirectWebsocketConnection`
fixes this at the connection: it runs the route without a pump and without the cancel, and
hands the route the raw ASGI ``receive``/``send`` (`AsgiWebsocket.asgi_receive`/``asgi_send``).
Routes served by it read frames from that channel only: nothing feeds Quart's own
``websocket.receive()`` (quart-trio 0.12's channel and quart 0.23's buffer alike).

`open_starlette_websocket` then gives the bot a genuine ``starlette.websockets.WebSocket`` on
the asyncio side whose ASGI ``receive``/``send`` cross `asgi_bridge`: Starlette's own state
machine, ``WebSocketDisconnect``, ``iter_text``/``iter_bytes``, headers and query parameters
behave exactly as under uvicorn, which pipecat's ``FastAPIWebsocketTransport``,
``parse_telephony_websocket`` and ``create_transport`` rely on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable
from quart.asgi import ASGIWebsocketConnection
from quart_trio.asgi import TrioASGIWebsocketConnection
from quart_trio.wrappers import TrioWebsocket
from starlette.websockets import WebSocket, WebSocketState

from pipecat_base import _speedups as speedups
from pipecat_base.bridge.asgi import AsgiBridge, Message, open_asgi_bridge


class AsgiWebsocket(TrioWebsocket):
    """Quart's websocket, plus the raw ASGI channel `DirectWebsocketConnection` provides."""

    asgi_receive: ASGIReceiveCallable
    asgi_send: ASGISendCallable


class DirectWebsocketConnection(TrioASGIWebsocketConnection):
    """A Quart-Trio websocket connection that does not pump, rewrite or cancel (see module)."""

    async def __call__(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        # The ASGI server opens with `websocket.connect` (Quart's pump used to swallow it);
        # routes read frames from here on. A client gone before that leaves nothing to run.
        if (await receive())["type"] != "websocket.connect":
            return
        websocket = self._create_websocket_from_scope(send)
        websocket.asgi_receive = receive  # type: ignore[attr-defined]
        websocket.asgi_send = send  # type: ignore[attr-defined]
        # Quart's own handling (dispatch, pre-accept HTTP responses, the closing frame after
        # the route) without quart-trio's pump-and-cancel nursery around it.
        await ASGIWebsocketConnection.handle_websocket(self, websocket, send)


class StarletteSocket:
    """One bridged connection: the bot's Starlette ``WebSocket`` and what the route needs."""

    def __init__(self, quart_ws: AsgiWebsocket, bridge: AsgiBridge) -> None:
        self._quart_ws = quart_ws
        self._bridge = bridge
        self._close_sent = False
        self.hold_close: Callable[[], bool] = lambda: False
        """While this returns True, a close from the bot is held back, not sent: when the
        server is stopping a session, pipecat closes the socket (1000) as it unwinds, and the
        caller should instead learn the server went away (1001) once the bot has unwound."""
        self.websocket = WebSocket(dict(quart_ws.scope), bridge.receive, bridge.send)
        # The route accepted on the trio side before the bot runs (as the existing image and
        # pipecat's dev runner do), so both directions start connected.
        self.websocket.client_state = WebSocketState.CONNECTED
        self.websocket.application_state = WebSocketState.CONNECTED

    @property
    def disconnected(self) -> bool:
        """The client has gone (its disconnect event was read)."""
        return self._bridge.disconnected.is_set()

    async def wait_disconnected(self) -> None:
        await self._bridge.disconnected.wait()

    async def first_frame_is_binary(self) -> bool:
        """Wait for the client's first event: True if it is a binary frame (which no telephony
        provider opens with: theirs is a JSON text message). The bot still receives it."""
        event = await self._bridge.wait_first_event()
        return event["type"] == "websocket.receive" and event.get("bytes") is not None

    async def send(self, message: Message) -> None:
        """trio side of the bot's sends: frames go straight out; accept and close go through
        Quart, so its connection state (and the closing frame it sends after the route) stay
        right."""
        kind = message["type"]
        if kind == "websocket.send":
            await self._quart_ws.asgi_send(message)  # type: ignore[arg-type]
        elif kind == "websocket.close":
            if self.hold_close() or self._close_sent:
                return
            self._close_sent = True
            await self._quart_ws.close(message.get("code", 1000), message.get("reason") or "")
        elif kind == "websocket.accept":
            pass  # already accepted by the route
        else:
            raise RuntimeError(f"unexpected ASGI message for a websocket: {kind!r}")

    async def close(self, code: int) -> None:
        """Close from the server side unless the bot or the client already ended it."""
        if not (self._close_sent or self.disconnected):
            self._close_sent = True
            await self._quart_ws.close(code)


@asynccontextmanager
async def open_starlette_websocket(
    loop: asyncio.AbstractEventLoop, quart_ws: AsgiWebsocket
) -> AsyncIterator[StarletteSocket]:
    """Bridge an accepted Quart websocket to a Starlette ``WebSocket`` on ``loop``."""
    socket: StarletteSocket | None = None

    async def send(message: Message) -> None:
        assert socket is not None
        await socket.send(message)

    writer = speedups.frame_writer_of(quart_ws.asgi_send)
    async with open_asgi_bridge(loop, quart_ws.asgi_receive, send, writer) as bridge:  # type: ignore[arg-type]
        socket = StarletteSocket(quart_ws, bridge)
        yield socket
