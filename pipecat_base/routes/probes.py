"""What the orchestrator and the platform probe: ``/livez``, ``/readyz`` (`routes.health`),
``/metrics`` (Prometheus text) and ``/pcc/capabilities`` (what this image can serve)."""

from __future__ import annotations

from loguru import logger
from quart import Blueprint, Response, jsonify, request

from pipecat_base.routes import Routes
from pipecat_base.routes.health import readiness

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def blueprint(routes: Routes) -> Blueprint:
    """The probe routes over ``routes``."""
    bp = Blueprint("probes", __name__)
    supervisor = routes.supervisor

    @bp.route("/pcc/capabilities", methods=_ALL_METHODS)
    async def pcc_capabilities() -> Response:
        if routes.capabilities is None:
            return Response(b"", status=404)
        if request.method not in ("GET", "HEAD"):
            return Response(b"", status=405, headers={"Allow": "GET, HEAD"})
        response = Response(routes.capabilities, status=200, content_type="application/json")
        response.headers["Cache-Control"] = "no-store"
        return response

    @bp.get("/metrics")
    async def metrics() -> Response:
        return Response(supervisor.metrics.render(), content_type=supervisor.metrics.content_type)

    dead_reported = False

    @bp.get("/livez")
    async def livez() -> tuple[Response, int]:
        nonlocal dead_reported
        loop = supervisor.loop
        if loop.is_running() and not loop.is_closed():
            return jsonify({"status": "ok"}), 200
        # Nothing runs a session any more: ask the orchestrator for a new process.
        if not dead_reported:
            dead_reported = True
            logger.error(
                "The asyncio loop is no longer running: this process cannot run sessions; "
                "/livez answers 503 so that it is restarted"
            )
        return jsonify({"status": "dead", "reason": "the asyncio loop is not running"}), 503

    @bp.get("/readyz")
    async def readyz() -> tuple[Response, int]:
        stalls = routes.stall_stats() if routes.stall_stats else None
        body, status = await readiness(supervisor, routes.user_readyz, stalls)
        return jsonify(body), status

    return bp
