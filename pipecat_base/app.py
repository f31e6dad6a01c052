"""The Quart-Trio application: one blueprint per transport (`pipecat_base.routes`).

* ``POST /bot`` (`routes.bot`) -- start a session from headers and a JSON object body; answer
  ``200 {}`` when ``bot()`` has ended.
* ``WS /ws`` (`routes.websocket`) -- accept, then run a session whose bot gets a genuine
  Starlette ``WebSocket``.
* ``POST|PATCH /api/offer`` (`routes.webrtc`) -- SmallWebRTC offers and ICE candidates.
* ``POST /whatsapp`` (`routes.whatsapp`) -- WhatsApp call webhooks.
* ``/livez``, ``/readyz``, ``/metrics``, ``/pcc/capabilities`` (`routes.probes`).

Routes own no session state: `nursery.SessionSupervisor` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quart import Response, jsonify
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from pipecat_base import _speedups as speedups
from pipecat_base.config import Settings, load_settings
from pipecat_base.nursery import SessionSupervisor
from pipecat_base.observability.watchdog import StallStats
from pipecat_base.routes import Routes, bot, probes, websocket
from pipecat_base.routes import webrtc as webrtc_routes
from pipecat_base.routes import whatsapp as whatsapp_routes
from pipecat_base.transports import moq
from pipecat_base.transports.webrtc import SmallWebRTC
from pipecat_base.transports.websocket import AsgiWebsocket, DirectWebsocketConnection
from pipecat_base.transports.whatsapp import WhatsApp


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
    webrtc_unavailable: str | None = None,
) -> QuartTrio:
    """Build the app serving ``supervisor``'s sessions.

    Args:
        supervisor: Runs the sessions the routes start.
        settings: The server's settings (defaults when omitted); the routes use
            ``client_disconnect_grace`` and ``session_files_dir``.
        user_readyz: The bot module's optional ``readyz()``.
        stall_stats: The loop-stall watchdog's counts, for ``/readyz``.
        capabilities: The capability document (`startup.capabilities`), or None when it could
            not be built: ``/pcc/capabilities`` then answers 404 to every method.
        webrtc: SmallWebRTC support (`transports.webrtc`): ``/bot`` with transport
            ``webrtc`` waits for the peer, and ``/api/offer`` is served. None: neither.
        whatsapp: WhatsApp calls (`transports.whatsapp`): ``POST /whatsapp`` is served.
            None: it is not.
        moq_unavailable: Why this image cannot serve MoQ sessions (the ``transport.moq``
            capability's reason), or None when it can.
        webrtc_unavailable: Without ``webrtc``: why (the ``transport.webrtc`` capability's
            reason); ``/api/offer`` then answers 404 saying so. None: it is not served.
    """
    app = speedups.app_class(QuartTrio)("pipecat_base")
    # `/ws` reads the raw ASGI channel; see `transports.websocket`.
    app.asgi_websocket_class = DirectWebsocketConnection
    app.websocket_class = AsgiWebsocket
    routes = Routes(
        supervisor,
        settings or load_settings({}),
        user_readyz=user_readyz,
        stall_stats=stall_stats,
        capabilities=capabilities,
        webrtc=webrtc,
        whatsapp=whatsapp,
        moq_unavailable=moq_unavailable,
    )
    app.register_blueprint(bot.blueprint(routes))
    app.register_blueprint(websocket.blueprint(routes))
    if webrtc is not None:
        app.register_blueprint(webrtc_routes.blueprint(routes))
    elif webrtc_unavailable is not None:
        app.register_blueprint(webrtc_routes.unavailable_blueprint(webrtc_unavailable))
    if whatsapp is not None:
        app.register_blueprint(whatsapp_routes.blueprint(routes))
    app.register_blueprint(probes.blueprint(routes))
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _server_error)
    return app


async def _http_error(error: HTTPException) -> Response:
    """Every refusal Quart makes itself (404, 405, 413, ...) as JSON ``{"detail": ...}``, like
    the routes' own."""
    response = jsonify({"detail": error.name})
    response.status_code = error.code or 500
    for name, value in error.get_headers():
        if name.lower() == "allow":
            response.headers[name] = value
    return response


async def _server_error(error: Exception) -> tuple[Response, int]:
    # Quart has logged it with its traceback; the client learns no more than this.
    return jsonify({"detail": "Internal Server Error"}), 500
