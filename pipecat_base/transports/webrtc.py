"""SmallWebRTC sessions: ``/bot`` waits for the peer, ``/api/offer`` brings it.

The flow (contract §8.2), with the hand-off held per session, not in process-wide slots:

1. The platform posts ``/bot`` with ``X-Daily-Transport-Type: webrtc`` and no room. The route
   registers a `PendingConnection` (the ``/bot`` body and flow config) under the session id in
   `PendingConnections` and starts a session whose `SessionSpec.connect` waits for the peer --
   up to ``WEBRTC_CONNECTION_TIMEOUT`` (120 s), a Trio deadline inside the session's cancel
   scope, so the session budget and shutdown apply to the wait as well.
2. The client posts its SDP offer to ``/api/offer`` (through the Session API, with the session
   id). pipecat's ``SmallWebRTCRequestHandler`` answers at once; the new connection is handed to
   the waiting session, which runs ``bot(SmallWebRTCSessionArguments(...))``. ``PATCH
   /api/offer`` adds trickled ICE candidates. A WhatsApp call (`whatsapp`) hands its connection
   over the same way.
3. When the bot ends, the peer connection is closed and the waiting ``/bot`` answers ``{}``.
   No offer in time: ``504`` and the session's stop line.

An offer no ``/bot`` waits for starts a session of its own (local runs, and clients that talk to
the server directly as they do to pipecat's development runner).

ICE servers come from ``ICE_CONFIG_URL`` on every offer; when that fails the error is logged and
Google's public STUN server is used.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import trio
from loguru import logger

from pipecat_base.bridge.loop import run_aio
from pipecat_base.config import Settings
from pipecat_base.nursery import (
    ConnectionFailed,
    ConnectionNeverArrived,
    ConnectionTimedOut,
    SessionHandle,
    SessionRefused,
    SessionSpec,
    SessionSupervisor,
    stop_unless_ended,
)
from pipecat_base.sessions.args import webrtc_session_args
from pipecat_base.sessions.inputs import BadInput, parse_json_object

OFFER_PATH = "/api/offer"
FALLBACK_STUN = "stun:stun.l.google.com:19302"
ICE_FETCH_TIMEOUT = 60.0  # total, as in the existing image


class AlreadyWaiting(Exception):
    """A session with this id already waits for its WebRTC connection."""


class NotWaiting(Exception):
    """The session a connection was meant for no longer waits for it."""


class PendingConnection:
    """One session waiting for its peer connection; the ``/bot`` body and flow ride along.

    The offer side calls `deliver` (or `fail`); the session side awaits `arrival`. Both run in
    the one Trio thread, so the hand-off is a plain Event and two fields.
    """

    def __init__(self, session_id: str | None, body: Any, flow_config: str | None) -> None:
        self.session_id = session_id
        self.body = body
        self.flow_config = flow_config
        self._arrived = trio.Event()
        self._connection: Any = None
        self._connection_body: Any = None
        self._failure: str | None = None
        self._taken = False

    @property
    def open(self) -> bool:
        """Nothing has been delivered yet, and the session still waits."""
        return not self._arrived.is_set()

    def deliver(self, connection: Any, body: Any = None) -> bool:
        """Hand ``connection`` (and the offer's ``request_data``) over; False if too late."""
        if not self.open:
            return False
        self._connection = connection
        self._connection_body = body
        self._arrived.set()
        return True

    def fail(self, reason: str) -> bool:
        """End the wait now: the connection will not come (a failed WhatsApp webhook)."""
        if not self.open:
            return False
        self._failure = reason
        self._arrived.set()
        return True

    def close(self) -> None:
        """The session stopped waiting: later offers for it are refused."""
        self.fail("the session stopped waiting for its connection")

    async def arrival(self) -> tuple[Any, Any]:
        """Wait for `deliver`; returns the connection and the body the bot gets.

        The offer's own data (``request_data``, or the WhatsApp call) wins over the ``/bot``
        body when it is not empty, as in the existing image.

        Raises:
            ConnectionNeverArrived: `fail` was called.
        """
        await self._arrived.wait()
        if self._failure is not None:
            raise ConnectionFailed(self._failure)
        self._taken = True
        return self._connection, self._connection_body or self.body

    def unclaimed_connection(self) -> Any:
        """A connection delivered but never taken by the session (it stopped meanwhile)."""
        return None if self._taken else self._connection


class PendingConnections:
    """The sessions now waiting for a connection, by session id; owned by the server."""

    def __init__(self) -> None:
        self._waiting: dict[str | None, PendingConnection] = {}

    @contextmanager
    def waiting(
        self, session_id: str | None, body: Any, flow_config: str | None
    ) -> Iterator[PendingConnection]:
        """Register a waiting session for the block's duration.

        Raises:
            AlreadyWaiting: a session with ``session_id`` already waits.
        """
        if session_id in self._waiting:
            raise AlreadyWaiting(f"session {session_id} is already waiting for its WebRTC offer")
        pending = PendingConnection(session_id, body, flow_config)
        self._waiting[session_id] = pending
        try:
            yield pending
        finally:
            pending.close()
            del self._waiting[session_id]

    def find(self, session_id: str | None) -> PendingConnection | None:
        """The session an offer with ``session_id`` belongs to.

        An offer without a session id goes to the only waiting session, if exactly one waits
        (the existing image had room for one wait per process).
        """
        if session_id is None and len(self._waiting) == 1:
            return next(iter(self._waiting.values()))
        return self._waiting.get(session_id)


def parse_offer(raw: bytes) -> Any:
    """The ``/api/offer`` body as pipecat's ``SmallWebRTCRequest``.

    Raises:
        BadInput: not a JSON object with string ``sdp`` and ``type``.
    """
    from pipecat.transports.smallwebrtc.request_handler import SmallWebRTCRequest

    data = parse_json_object(raw)
    for key in ("sdp", "type"):
        if not isinstance(data.get(key), str):
            raise BadInput(f"the offer needs '{key}' as a string")
    known = {"sdp", "type", "pc_id", "restart_pc", "request_data", "requestData"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BadInput(f"the offer has unknown field(s): {', '.join(unknown)}")
    return SmallWebRTCRequest.from_dict(data)


def parse_patch(raw: bytes) -> Any:
    """The ``PATCH /api/offer`` body as pipecat's ``SmallWebRTCPatchRequest``.

    Raises:
        BadInput: not ``{"pc_id": str, "candidates": [{"candidate", "sdp_mid",
            "sdp_mline_index"}, ...]}``.
    """
    from pipecat.transports.smallwebrtc.request_handler import (
        IceCandidate,
        SmallWebRTCPatchRequest,
    )

    data = parse_json_object(raw)
    pc_id, candidates = data.get("pc_id"), data.get("candidates")
    if not isinstance(pc_id, str) or not isinstance(candidates, list):
        raise BadInput("the patch needs 'pc_id' (a string) and 'candidates' (a list)")
    parsed = []
    for i, c in enumerate(candidates):
        if not (
            isinstance(c, dict)
            and isinstance(c.get("candidate"), str)
            and isinstance(c.get("sdp_mid"), str)
            and isinstance(c.get("sdp_mline_index"), int)
        ):
            raise BadInput(
                f"candidate {i} needs 'candidate' and 'sdp_mid' (strings) and "
                "'sdp_mline_index' (an integer)"
            )
        parsed.append(IceCandidate(c["candidate"], c["sdp_mid"], c["sdp_mline_index"]))
    return SmallWebRTCPatchRequest(pc_id=pc_id, candidates=parsed)


async def fetch_ice_servers(url: str) -> list[Any]:
    """ICE servers from the platform's sidecar (asyncio side); STUN fallback on any failure.

    Expects ``{"iceConfig": {"iceServers": [{"urls": ..., "username": ..., "credential":
    ...}]}}``. Credentials are never logged.
    """
    import aiohttp
    from pipecat.transports.smallwebrtc.connection import IceServer

    try:
        timeout = aiohttp.ClientTimeout(total=ICE_FETCH_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            document = await response.json(content_type=None)
        servers = document["iceConfig"]["iceServers"]
        return [
            IceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in servers
        ]
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        logger.error(f"Failed to fetch ICE configuration from {url}: {exc!r}")
        return [IceServer(urls=FALLBACK_STUN)]


class SmallWebRTC:
    """The server's SmallWebRTC side: offers, ICE trickle, and sessions waiting for a peer.

    Args:
        loop: The process' asyncio loop (pipecat's handler and aiortc run on it).
        settings: ``ICE_CONFIG_URL``, ``WEBRTC_CONNECTION_TIMEOUT``, ``ESP32_ENABLED``/
            ``ESP32_HOST`` and the cancel grace.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, settings: Settings) -> None:
        self.pending = PendingConnections()
        self._loop = loop
        self._settings = settings
        self._request_handler: Any = None

    async def ready(self) -> None:
        """Import pipecat's WebRTC side if not yet done (off the event loop; see `_handler`)."""
        await self._handler()

    async def _handler(self) -> Any:
        """pipecat's request handler, made on first use: importing it (aiortc, PyAV) costs
        ~0.4 s and ~30 MiB, which images that never take a WebRTC call should not pay. The
        import runs in a worker thread so that first offer does not stall the event loop."""
        if self._request_handler is None:
            module = await trio.to_thread.run_sync(
                importlib.import_module, "pipecat.transports.smallwebrtc.request_handler"
            )
            if self._request_handler is None:  # another offer may have made it meanwhile
                # MULTIPLE: one server may run several sessions (MAX_SESSIONS), each with its
                # peer; offers find their session by id, PATCHes their peer by pc_id.
                self._request_handler = module.SmallWebRTCRequestHandler(
                    esp32_mode=self._settings.esp32_enabled,
                    host=self._settings.esp32_host,
                    connection_mode=module.ConnectionMode.MULTIPLE,
                )
        return self._request_handler

    @property
    def connection_timeout(self) -> float:
        return self._settings.webrtc_connection_timeout

    async def ice_servers(self) -> list[Any]:
        """The current ICE servers (`fetch_ice_servers` on the asyncio loop)."""
        await self._handler()  # pipecat's WebRTC modules are imported by then
        return await run_aio(self._loop, fetch_ice_servers, self._settings.ice_config_url)

    async def answer(self, offer: Any) -> tuple[dict[str, Any], Any]:
        """Answer an SDP offer; returns pipecat's answer and the new connection (None when the
        offer renegotiated an existing one).

        Raises:
            BadInput: pipecat refused the offer (``HTTPException`` or a malformed SDP).
        """
        ice_servers = await self.ice_servers()
        handler = await self._handler()
        created: list[Any] = []

        async def on_connection(connection: Any) -> None:
            created.append(connection)

        async def handle() -> dict[str, Any]:
            # No await between setting the servers and the handler building the connection,
            # so concurrent offers cannot swap each other's servers.
            handler.update_ice_servers(ice_servers)
            return await handler.handle_web_request(offer, on_connection)

        try:
            answer = await run_aio(self._loop, handle)
        except Exception as exc:
            raise BadInput(f"pipecat refused the offer: {_detail(exc)}") from exc
        return answer, (created[0] if created else None)

    async def patch(self, request: Any) -> None:
        """Add trickled ICE candidates to the connection ``request.pc_id`` names.

        Raises:
            LookupError: no such peer connection.
            BadInput: a candidate pipecat (aiortc) cannot parse.
        """
        try:
            await run_aio(self._loop, (await self._handler()).handle_patch_request, request)
        except Exception as exc:
            if getattr(exc, "status_code", None) == 404:
                raise LookupError(f"no peer connection {request.pc_id}") from exc
            raise BadInput(f"pipecat refused the candidates: {_detail(exc)}") from exc

    async def hand_over(
        self,
        supervisor: SessionSupervisor,
        session_id: str | None,
        connection: Any,
        body: Any,
        budget: float | None = None,
    ) -> None:
        """Give a new peer connection to the session waiting for it, or start one for it.

        Raises:
            NotWaiting: the session stopped waiting meanwhile (the connection is closed).
            SessionRefused: no session was waiting and none may start (closed too).
        """
        pending = self.pending.find(session_id)
        if pending is not None:
            if pending.deliver(connection, body):
                return
            await self.close_connection(connection)
            raise NotWaiting(f"session {session_id} is no longer waiting for its connection")
        own = PendingConnection(session_id, None, None)
        own.deliver(connection, body)
        try:
            await supervisor.start(
                SessionSpec(
                    session_id, None, budget, connect=lambda handle: self.connect(own, handle)
                )
            )
        except SessionRefused:
            await self.close_connection(connection)
            raise

    def connect(self, pending: PendingConnection, handle: SessionHandle) -> Any:
        """The `SessionSpec.connect` of a session waiting on ``pending``."""
        return self._session_args(pending, handle)

    @asynccontextmanager
    async def _session_args(
        self, pending: PendingConnection, handle: SessionHandle
    ) -> AsyncIterator[Any]:
        timeout = self.connection_timeout
        if pending.open:
            logger.info("Will wait for the webrtc_connection to be set!")
        try:
            with trio.fail_after(timeout):
                connection, body = await pending.arrival()
        except trio.TooSlowError:
            logger.error(
                f"Timeout waiting for WebRTC connection: no offer arrived within {timeout:g}s"
            )
            raise ConnectionTimedOut(f"no WebRTC connection arrived within {timeout:g}s") from None
        except ConnectionNeverArrived as exc:
            logger.error(f"WebRTC connection failed: {exc}")
            raise
        finally:
            await self._close_unclaimed(pending)
        logger.info("Received the webrtc_connection from Pipecat Cloud, cancelling the timeout")
        args = webrtc_session_args(pending.session_id, body, connection)
        args.flow_config = pending.flow_config
        hung_up = trio.Event()

        async def on_hang_up(_connection: Any) -> None:  # pipecat calls it on the asyncio side
            hung_up.set()

        for event in ("closed", "failed"):
            connection.add_event_handler(event, on_hang_up)
        try:
            async with trio.open_nursery() as watcher:
                watcher.start_soon(self._stop_after_hang_up, hung_up, handle)
                try:
                    yield args
                finally:
                    watcher.cancel_scope.cancel()
        finally:
            await self.close_connection(connection)

    async def _stop_after_hang_up(self, hung_up: trio.Event, handle: SessionHandle) -> None:
        """After the peer went away, give the bot ``CLIENT_DISCONNECT_GRACE`` to end itself
        (pipecat's ``on_client_disconnected`` runs then), as ``/ws`` does; then stop it."""
        await hung_up.wait()
        await stop_unless_ended(handle, self._settings.client_disconnect_grace)

    async def _close_unclaimed(self, pending: PendingConnection) -> None:
        pending.close()
        connection = pending.unclaimed_connection()
        if connection is not None:  # delivered while the session was being stopped
            await self.close_connection(connection)

    async def close_connection(self, connection: Any) -> None:
        """Close a peer connection (idempotent), bounded by the cancel grace; never raises."""
        with trio.CancelScope(shield=True), trio.move_on_after(self._settings.session_cancel_grace):
            try:
                await run_aio(self._loop, connection.disconnect)
            except Exception as exc:
                logger.warning(f"Closing the WebRTC peer connection failed: {exc!r}")

    async def aclose(self) -> None:
        """Close every peer connection still open (server shutdown, after the sessions)."""
        if self._request_handler is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(self._settings.session_cancel_grace):
            try:
                await run_aio(self._loop, self._request_handler.close)
            except Exception as exc:
                logger.warning(f"Closing WebRTC peer connections failed: {exc!r}")


def _detail(exc: BaseException) -> str:
    return str(getattr(exc, "detail", None) or exc or type(exc).__name__)
