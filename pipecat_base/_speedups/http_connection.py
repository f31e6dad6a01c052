"""Quart-Trio's HTTP connection, run in the request's own task.

For every request stock quart-trio opens a nursery with two tasks: one reads the ASGI messages
(the body, then a disconnect) and one runs the route and sends the response; whichever ends
first cancels the other. On a ``POST /bot`` that is two task spawns and about five Trio steps
of the twenty the request takes, for a body that has almost always arrived with the request.

`DirectHTTPConnection` runs the route and the response in the task Hypercorn started for the
request, and takes the messages from Hypercorn's reader as it parses them (`AppInbox.divert`):
a body part goes into Quart's request body, and a disconnect before the response has gone out
cancels the route, as quart-trio's nursery does. Everything else -- the request object, Quart's
dispatch, error handling, ``RESPONSE_TIMEOUT`` -- is quart-trio's own code. Under another ASGI
server (``receive`` not an `AppInbox`'s), it is quart-trio's connection unchanged.

`DirectRequest` is quart-trio's request whose body, once complete, is read without a Trio
scheduling round (see `ReadyBody`).
"""

from __future__ import annotations

from math import inf
from typing import Any, cast

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable
from quart.wrappers import Request, Response
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import TrioBody, TrioRequest
from werkzeug.exceptions import RequestEntityTooLarge

from pipecat_base._speedups.app_inbox import AppInbox, Event


class ReadyBody(TrioBody):
    """quart-trio's request body, read at once when it is complete.

    ``await request.get_data()`` waits on the body's completion event, and a Trio event that is
    already set still yields a whole scheduling round: on a ``POST /bot``, whose body nearly
    always came with its request, one round before ``bot()`` can start, for nothing.

    quart-trio 0.12 (Python 3.10-3.12) keeps the body in a ``bytearray`` as it arrives, which
    is read here. 0.13 (Python 3.13) queues the parts, which are joined here as its own
    ``__await__`` joins them once the wait is over (with its size check). Any other body takes
    quart-trio's path.
    """

    def __await__(self) -> Any:
        data = self._ready()
        if data is not None:
            return data
        return (yield from super().__await__())

    def _ready(self) -> bytes | None:
        """The whole body when it is complete and can be had without waiting, else None."""
        complete = getattr(self, "_complete", None)
        if complete is None or not complete.is_set() or getattr(self, "_must_raise", None):
            return None
        data = getattr(self, "_data", None)
        if isinstance(data, bytearray):  # quart-trio 0.12
            return bytes(data)
        queue = getattr(self, "_queue", None)
        if data is None and queue is not None:  # 0.13
            joined = self._joined(queue)
            self._data = joined  # type: ignore[assignment]  # 0.13 keeps bytes here
            return joined
        return None

    def _joined(self, queue: Any) -> bytes:
        whole = bytearray()
        while not queue.empty():
            whole.extend(queue.get_nowait())
            limit = self._max_content_length
            if limit is not None and len(whole) > limit:
                raise RequestEntityTooLarge()
        return bytes(whole)


class DirectRequest(TrioRequest):
    """quart-trio's request with a `ReadyBody`."""

    body_class = ReadyBody


class DirectHTTPConnection(TrioASGIHTTPConnection):
    """A Quart-Trio HTTP connection without the per-request nursery (see module)."""

    async def __call__(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        inbox = AppInbox.of(receive)  # type: ignore[arg-type]  # Hypercorn's event types
        if inbox is None:
            await super().__call__(receive, send)
            return
        request = self._create_request_from_scope(send)
        answered = False

        async def sending(message: Any) -> None:
            nonlocal answered
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                # Hypercorn reports the disconnect that ends every request from inside this
                # last send: the response is out, there is nothing left to cut short.
                answered = True
            await send(message)

        with trio.CancelScope() as scope:

            async def take(message: Event) -> None:
                if message["type"] == "http.request":
                    await _add_to_body(request, message)
                elif message["type"] == "http.disconnect":
                    _disconnected(self, request)
                    if not answered:
                        scope.cancel()  # the client left: as quart-trio, stop the route

            try:
                # Run by Hypercorn's reader from now on; the messages it already queued come
                # first.
                for message in inbox.divert(take):
                    await take(message)
                await self._respond(request, sending)
            finally:
                # `take` holds the request, whose push-promise sender holds Hypercorn's stream,
                # which holds this inbox: a reference cycle per request, left for the garbage
                # collector (~65 objects a `/bot`, a young collection every ~13 requests).
                inbox.discard()

    async def _respond(self, request: Request, send: ASGISendCallable) -> None:
        """quart-trio's ``handle_request``, less the nursery it cancels at the end."""
        response = await self.app.handle_request(request)
        if isinstance(response, Response) and response.timeout != Ellipsis:
            timeout = cast("float | None", response.timeout)
        else:
            timeout = self.app.config["RESPONSE_TIMEOUT"]
        with trio.move_on_after(inf if timeout is None else timeout):
            await self._send_response(send, response)


async def _add_to_body(request: Request, message: Event) -> None:
    """One ``http.request`` message into the request body, as quart-trio's reader task does.

    quart-trio 0.12 (quart 0.22 and older) appends to a buffer; 0.13 (quart 0.23) puts into an
    unbounded queue, which never waits: put without waiting when the queue allows it, since
    ``put`` only adds a scheduling round.
    """
    body: Any = request.body
    data = message.get("body", b"")
    queue: Any = getattr(body, "_queue", None)
    if hasattr(queue, "put_nowait"):
        queue.put_nowait(data)
    elif hasattr(body, "put"):
        await body.put(data)
    else:
        body.append(data)
    if not message.get("more_body", False):
        body.set_complete()


def _disconnected(connection: TrioASGIHTTPConnection, request: Request) -> None:
    """What quart-trio 0.13 records of a client gone (0.12 records nothing)."""
    body: Any = request.body
    if hasattr(body, "disconnect"):
        connection._disconnected = True  # type: ignore[attr-defined]
        body.disconnect()
