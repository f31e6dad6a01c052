"""``POST /whatsapp``: WhatsApp call webhooks (`transports.whatsapp`); served only when the
image can serve WhatsApp calls."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, jsonify, request

from pipecat_base.nursery import SessionRefused
from pipecat_base.observability.logs import session_context
from pipecat_base.routes import Routes, detail, refused, request_body
from pipecat_base.sessions import inputs
from pipecat_base.transports.webrtc import NotWaiting
from pipecat_base.transports.whatsapp import SIGNATURE_HEADER, WHATSAPP_PATH


def blueprint(routes: Routes) -> Blueprint:
    """The webhook route over ``routes`` (whose ``whatsapp`` is set)."""
    bp = Blueprint("whatsapp", __name__)
    whatsapp = routes.whatsapp
    assert whatsapp is not None

    @bp.post(WHATSAPP_PATH)
    async def whatsapp_webhook() -> Any:
        session_id = request.headers.get(inputs.SESSION_ID_HEADER)
        with session_context(session_id):
            try:
                answer, status = await whatsapp.webhook(
                    routes.supervisor,
                    session_id,
                    await request_body(),
                    request.headers.get(SIGNATURE_HEADER),
                )
            except NotWaiting as exc:
                return detail(exc, 409)
            except SessionRefused as exc:
                return refused(exc)
        return jsonify(answer), status

    return bp
