"""The server's HTTP and WebSocket routes, one Quart blueprint per transport.

Each module's ``blueprint(routes)`` builds its blueprint over one `Routes`: what every route
needs (the supervisor, the settings, the optional transports) and the answers they share.
`pipecat_base.app.create_app` registers them. Routes translate requests into sessions and
outcomes into responses; they own no session state (`nursery.SessionSupervisor` does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from loguru import logger
from quart import Response, jsonify, request

from pipecat_base.config import Settings
from pipecat_base.nursery import SessionRefused, SessionSupervisor
from pipecat_base.observability.watchdog import StallStats
from pipecat_base.sessions import inputs
from pipecat_base.transports.webrtc import SmallWebRTC
from pipecat_base.transports.whatsapp import WhatsApp


class HeaderSource(Protocol):
    """Request headers, as Quart's (werkzeug ``Headers``) or `inputs.HeaderLookup` give them."""

    def get(self, key: str, /) -> str | None: ...


# How long a refused platform should wait before placing the session elsewhere or here again.
RETRY_AFTER_SECONDS = 1


@dataclass
class Routes:
    """What the blueprints serve from: see `pipecat_base.app.create_app` for each field."""

    supervisor: SessionSupervisor
    settings: Settings
    user_readyz: Callable[[], Any] | None = None
    stall_stats: Callable[[], StallStats] | None = None
    capabilities: bytes | None = None
    webrtc: SmallWebRTC | None = None
    whatsapp: WhatsApp | None = None
    moq_unavailable: str | None = None
    _budget_noticed: bool = field(default=False, repr=False)

    def session_budget(self, headers: HeaderSource) -> float | None:
        """The request's session budget (`inputs.parse_budget`); says once per process that
        the platform sent none."""
        raw = headers.get(inputs.BUDGET_HEADER)
        if raw is None and not self._budget_noticed:
            self._budget_noticed = True
            logger.info(
                f"No session budget supplied by the platform ({inputs.BUDGET_HEADER} absent); "
                "the maximum session duration will not be enforced inside this process."
            )
        return inputs.parse_budget(raw)


async def request_body() -> bytes:
    """The current request's body, as bytes."""
    data = await request.get_data()
    return data if isinstance(data, bytes) else data.encode()


def answered() -> Response:
    """``200 {}`` (as ``jsonify({})`` makes it, without the JSON provider: every ``/bot``)."""
    return Response(b"{}\n", mimetype="application/json")


def detail(text: object, status: int) -> tuple[Response, int]:
    """A JSON ``{"detail": text}`` answer."""
    return jsonify({"detail": str(text)}), status


def refused(exc: SessionRefused) -> tuple[Response, int, dict[str, str]]:
    """503 with ``Retry-After``: the supervisor admits no session now."""
    return jsonify({"detail": str(exc)}), 503, {"Retry-After": str(RETRY_AFTER_SECONDS)}
