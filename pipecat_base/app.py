"""The Quart-Trio application: HTTP ⇄ `SessionSpec`, and health.

Routes translate requests into sessions and outcomes into responses; they own no session state
(`nursery.SessionSupervisor` does).

* ``POST /bot`` -- start a session from headers and a JSON object body; answer ``200 {}`` when
  ``bot()`` has ended (the open request is what keeps the pod busy for the platform).
* ``GET /livez`` -- the process serves.
* ``GET /readyz`` -- see `health`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from loguru import logger
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from . import inputs
from .health import readiness
from .inputs import BadInput
from .nursery import AtCapacity, Draining, SessionSpec, SessionSupervisor
from .session_args import http_session_args

# How long a refused platform should wait before placing the session elsewhere or here again.
RETRY_AFTER_SECONDS = 1


def create_app(
    supervisor: SessionSupervisor, *, user_readyz: Callable[[], Any] | None = None
) -> QuartTrio:
    """Build the app serving ``supervisor``'s sessions.

    Args:
        supervisor: Runs the sessions the routes start.
        user_readyz: The bot module's optional ``readyz()``.
    """
    app = QuartTrio("pipecat_base")
    budget_notice = _NoBudgetNotice()

    @app.post("/bot")
    async def start_bot() -> Response | tuple[Response, int] | tuple[Response, int, dict[str, str]]:
        headers = request.headers
        session_id = headers.get(inputs.SESSION_ID_HEADER)
        try:
            body = inputs.parse_json_object(await request.get_data())
        except BadInput as exc:
            return _error(str(exc), 400)
        budget = inputs.parse_budget(headers.get(inputs.BUDGET_HEADER))
        if budget is None and headers.get(inputs.BUDGET_HEADER) is None:
            budget_notice.once()
        transport = headers.get(inputs.TRANSPORT_TYPE_HEADER)
        if transport:
            logger.debug(f"Transport type: {transport}")
        args = http_session_args(
            session_id,
            body,
            room_url=headers.get(inputs.ROOM_URL_HEADER),
            token=headers.get(inputs.ROOM_TOKEN_HEADER),
        )
        try:
            handle = await supervisor.start(SessionSpec(session_id, args, budget))
        except (Draining, AtCapacity) as exc:
            return _error(str(exc), 503, {"Retry-After": str(RETRY_AFTER_SECONDS)})
        await handle.wait()
        return jsonify({})

    @app.get("/livez")
    async def livez() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> tuple[Response, int]:
        body, status = await readiness(supervisor, user_readyz)
        return jsonify(body), status

    return app


def _error(
    detail: str, status: int, headers: dict[str, str] | None = None
) -> tuple[Response, int] | tuple[Response, int, dict[str, str]]:
    if headers:
        return jsonify({"detail": detail}), status, headers
    return jsonify({"detail": detail}), status


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
