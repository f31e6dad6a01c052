"""The Quart-Trio application: HTTP ⇄ `SessionSpec`, and health.

Routes translate requests into sessions and outcomes into responses; they own no session state
(`nursery.SessionSupervisor` does).

* ``POST /bot`` -- start a session from headers and a JSON object body; answer ``200 {}`` when
  ``bot()`` has ended (the open request is what keeps the pod busy for the platform). Transport
  ``moq``: the bot dials the relay the headers name (`moq`).
* ``WS /ws`` -- accept, then run a session whose bot gets a genuine Starlette ``WebSocket``
  (`websocket`); the caller hanging up reaches the bot as ``websocket.disconnect``, and a bot
  that does not end within ``CLIENT_DISCONNECT_GRACE`` is stopped.
* ``POST /api/offer``, ``PATCH /api/offer`` -- SmallWebRTC offers and trickled ICE
  candidates (`webrtc`); a ``/bot`` with transport ``webrtc`` waits for its offer.
* ``POST /whatsapp`` -- WhatsApp call webhooks (`whatsapp`).
* ``GET|HEAD /pcc/capabilities`` -- what this image can serve (`capabilities`).
* ``GET /metrics`` -- Prometheus text (`metrics`).
* ``GET /livez`` -- the process serves.
* ``GET /readyz`` -- see `health`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import trio
from loguru import logger
from quart import Response, jsonify, request, websocket
from quart_trio import QuartTrio

from . import flows, inputs, moq
from .config import Settings, load_settings
from .health import readiness
from .http_connection import DirectHTTPConnection, DirectRequest
from .inputs import BadInput
from .logs import session_context
from .nursery import (
    Outcome,
    SessionHandle,
    SessionRefused,
    SessionSpec,
    SessionSupervisor,
)
from .route_matching import RememberingMap
from .session_args import build, http_session_args, websocket_session_args
from .watchdog import StallStats
from .webrtc import (
    OFFER_PATH,
    AlreadyWaiting,
    NotWaiting,
    SmallWebRTC,
    parse_offer,
    parse_patch,
)
from .websocket import (
    AsgiWebsocket,
    DirectWebsocketConnection,
    StarletteSocket,
    open_starlette_websocket,
)
from .whatsapp import SIGNATURE_HEADER, WHATSAPP_PATH, WhatsApp

# How long a refused platform should wait before placing the session elsewhere or here again.
RETRY_AFTER_SECONDS = 1


# WebSocket close codes: a bot that returned ends the call normally; a session the server
# cancelled (budget, shutdown) is "going away"; a refused one may try again later.
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013


class _App(QuartTrio):
    # On the class: Quart builds its URL map as it is constructed.
    url_map_class = RememberingMap


def _answered() -> Response:
    """``200 {}`` (as ``jsonify({})`` makes it, without the JSON provider: every ``/bot``)."""
    return Response(b"{}\n", mimetype="application/json")


def create_app(
    supervisor: SessionSupervisor,
    *,
    settings: Settings | None = None,
    user_readyz: Callable[[], Any] | None = None,
    stall_stats: Callable[[], StallStats] | None = None,
    capabilities: bytes | None = None,
    webrtc: SmallWebRTC | None = None,
    whatsapp: WhatsApp | None = None,
    moq_unavailable: str | None = moq.NO_SUPPORT,
) -> QuartTrio:
    """Build the app serving ``supervisor``'s sessions.

    Args:
        supervisor: Runs the sessions the routes start.
        settings: The server's settings (defaults when omitted); the routes use
            ``client_disconnect_grace`` and ``session_files_dir``.
        user_readyz: The bot module's optional ``readyz()``.
        stall_stats: The loop-stall watchdog's counts, for ``/readyz``.
        capabilities: The capability document (`capabilities`), or None when it could not be
            built: ``/pcc/capabilities`` then answers 404 to every method.
        webrtc: SmallWebRTC support (`webrtc`): ``/bot`` with transport ``webrtc`` waits for
            the peer, and ``/api/offer`` is served. None: neither.
        whatsapp: WhatsApp calls (`whatsapp`): ``POST /whatsapp`` is served. None: it is not.
        moq_unavailable: Why this image cannot serve MoQ sessions (the ``transport.moq``
            capability's reason), or None when it can.
    """
    settings = settings or load_settings({})
    app = _App("pipecat_base")
    app.asgi_http_class = DirectHTTPConnection
    app.request_class = DirectRequest
    app.asgi_websocket_class = DirectWebsocketConnection
    app.websocket_class = AsgiWebsocket
    budget_notice = _NoBudgetNotice()

    def session_budget(headers: Mapping[str, str]) -> float | None:
        raw = headers.get(inputs.BUDGET_HEADER)
        if raw is None:
            budget_notice.once()
        return inputs.parse_budget(raw)

    @app.post("/bot")
    async def start_bot() -> Any:
        headers = inputs.HeaderLookup(request.headers.items())
        session_id = headers.get(inputs.SESSION_ID_HEADER)
        try:
            body = inputs.parse_json_object(await request.get_data())
            body, flow_config = flows.split_envelope(headers.get(flows.ENVELOPE_HEADER), body)
        except BadInput as exc:
            return jsonify({"detail": str(exc)}), 400
        with session_context(session_id):
            budget = session_budget(headers)
        transport = headers.get(inputs.TRANSPORT_TYPE_HEADER)
        if transport:
            logger.debug(f"Transport type: {transport}")
        room_url = headers.get(inputs.ROOM_URL_HEADER)
        token = headers.get(inputs.ROOM_TOKEN_HEADER)
        redact = None
        if transport == moq.TRANSPORT:
            try:
                args, secret = moq.session_args(
                    session_id, body, headers, unavailable=moq_unavailable, build=build
                )
            except moq.MoqRefused as exc:
                with session_context(session_id):
                    logger.error(str(exc))
                return jsonify({"detail": str(exc)}), 400
            redact = secret.scrub
        elif transport == "webrtc" and webrtc is not None and not (room_url and token):
            return await wait_for_webrtc(session_id, body, flow_config, budget)
        else:
            args = http_session_args(session_id, body, room_url=room_url, token=token)
        args.flow_config = flow_config
        try:
            handle = await supervisor.start(SessionSpec(session_id, args, budget, redact=redact))
        except SessionRefused as exc:
            return _refused(exc)
        await handle.wait()
        return _answered()

    async def wait_for_webrtc(
        session_id: str | None, body: Any, flow_config: str | None, budget: float | None
    ) -> Any:
        assert webrtc is not None
        try:
            with webrtc.pending.waiting(session_id, body, flow_config) as pending:
                spec = SessionSpec(
                    session_id, None, budget, connect=lambda handle: webrtc.connect(pending, handle)
                )
                handle = await supervisor.start(spec)
                await handle.wait()
        except AlreadyWaiting as exc:
            return jsonify({"detail": str(exc)}), 409
        except SessionRefused as exc:
            return _refused(exc)
        if handle.failure is not None:
            return jsonify({"detail": str(handle.failure)}), handle.failure.status
        return _answered()

    if webrtc is not None:

        @app.post(OFFER_PATH)
        async def webrtc_offer() -> Any:
            session_id = request.headers.get(inputs.SESSION_ID_HEADER)
            await webrtc.ready()
            try:
                offer = parse_offer(await request.get_data())
            except BadInput as exc:
                return jsonify({"detail": str(exc)}), 400
            if webrtc.pending.find(session_id) is None and not offer.pc_id:
                # The offer will need a session of its own: refuse before building a peer.
                refusal = supervisor.admission_error()
                if refusal is not None:
                    return _refused(refusal)
            with session_context(session_id):
                try:
                    answer, connection = await webrtc.answer(offer)
                    if connection is not None:
                        budget = session_budget(request.headers)
                        await webrtc.hand_over(
                            supervisor, session_id, connection, offer.request_data, budget
                        )
                except BadInput as exc:
                    return jsonify({"detail": str(exc)}), 400
                except NotWaiting as exc:
                    return jsonify({"detail": str(exc)}), 409
                except SessionRefused as exc:
                    return _refused(exc)
            return jsonify(answer)

        @app.route(OFFER_PATH, methods=["PATCH"])
        async def webrtc_patch() -> Any:
            await webrtc.ready()
            try:
                patch = parse_patch(await request.get_data())
                logger.debug(
                    f"Received patch request: pc_id={patch.pc_id}, "
                    f"{len(patch.candidates)} candidate(s)"
                )
                await webrtc.patch(patch)
            except BadInput as exc:
                return jsonify({"detail": str(exc)}), 400
            except LookupError as exc:
                return jsonify({"detail": str(exc)}), 404
            return jsonify({"status": "success"})

    if whatsapp is not None:

        @app.post(WHATSAPP_PATH)
        async def whatsapp_webhook() -> Any:
            session_id = request.headers.get(inputs.SESSION_ID_HEADER)
            with session_context(session_id):
                try:
                    answer, status = await whatsapp.webhook(
                        supervisor,
                        session_id,
                        await request.get_data(),
                        request.headers.get(SIGNATURE_HEADER),
                    )
                except NotWaiting as exc:
                    return jsonify({"detail": str(exc)}), 409
                except SessionRefused as exc:
                    return _refused(exc)
            return jsonify(answer), status

    @app.websocket("/ws")
    async def ws_session() -> Any:
        ws = cast(AsgiWebsocket, websocket._get_current_object())
        session_id = ws.headers.get(inputs.SESSION_ID_HEADER)
        refusal = supervisor.admission_error()
        if refusal is not None:
            return _refused(refusal)  # before accepting: an HTTP answer, not a dropped call
        flow_file = ws.headers.get(flows.FLOW_FILE_HEADER)
        flow_config = None
        with session_context(session_id):
            if flow_file is not None:
                try:
                    flow_config = await trio.to_thread.run_sync(
                        flows.read_flow_file, settings.session_files_dir, flow_file
                    )
                except flows.FlowFileError as exc:
                    logger.error(
                        f"Refusing websocket session {session_id}: {flows.FLOW_FILE_HEADER} "
                        f"names a file this app cannot use: {exc}"
                    )
                    await ws.close(CLOSE_INTERNAL_ERROR)  # before accepting: HTTP 403
                    return None
            budget = session_budget(ws.headers)
            body = inputs.decode_ws_body(ws.args.get("body"))
        await ws.accept()
        async with open_starlette_websocket(supervisor.loop, ws) as socket:
            args = websocket_session_args(session_id, body, socket.websocket)
            args.flow_config = flow_config
            try:
                handle = await supervisor.start(SessionSpec(session_id, args, budget))
            except SessionRefused:
                await socket.close(CLOSE_TRY_AGAIN_LATER)
                return None
            socket.hold_close = lambda: handle.stopping
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(
                        _stop_after_disconnect, socket, handle, settings.client_disconnect_grace
                    )
                    outcome = await handle.wait()
                    nursery.cancel_scope.cancel()
            finally:
                # Should this handler be cancelled (the server force-closing connections), the
                # bot must not outlive its socket.
                handle.stop("client disconnected", Outcome.CLIENT_DISCONNECTED)
            ended_by_bot = outcome in (Outcome.COMPLETED, Outcome.ERROR)
            await socket.close(CLOSE_NORMAL if ended_by_bot else CLOSE_GOING_AWAY)
        return None

    @app.route("/pcc/capabilities", methods=_ALL_METHODS)
    async def pcc_capabilities() -> Response:
        if capabilities is None:
            return Response(b"", status=404)
        if request.method not in ("GET", "HEAD"):
            return Response(b"", status=405, headers={"Allow": "GET, HEAD"})
        response = Response(capabilities, status=200, content_type="application/json")
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(supervisor.metrics.render(), content_type=supervisor.metrics.content_type)

    @app.get("/livez")
    async def livez() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> tuple[Response, int]:
        stalls = stall_stats() if stall_stats else None
        body, status = await readiness(supervisor, user_readyz, stalls)
        return jsonify(body), status

    return app


async def _stop_after_disconnect(
    socket: StarletteSocket, handle: SessionHandle, grace: float
) -> None:
    """After the caller hangs up, give the bot ``grace`` seconds to end by itself.

    pipecat's transport sees the disconnect and fires ``on_client_disconnected``, where bots
    end their pipeline; post-call work (transcripts, webhooks) runs then. A bot that keeps
    running is stopped.
    """
    await socket.wait_disconnected()
    with trio.move_on_after(grace):
        await handle.wait()
        return
    handle.stop("client disconnected", Outcome.CLIENT_DISCONNECTED)


def _refused(exc: SessionRefused) -> tuple[Response, int, dict[str, str]]:
    return jsonify({"detail": str(exc)}), 503, {"Retry-After": str(RETRY_AFTER_SECONDS)}


class _NoBudgetNotice:
    """Says once per process that the platform sent no session budget."""

    def __init__(self) -> None:
        self._said = False

    def once(self) -> None:
        if not self._said:
            self._said = True
            logger.info(
                f"No session budget supplied by the platform ({inputs.BUDGET_HEADER} absent); "
                "the maximum session duration will not be enforced inside this process."
            )
