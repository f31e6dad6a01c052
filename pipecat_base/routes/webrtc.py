"""``POST /api/offer`` and ``PATCH /api/offer``: SmallWebRTC offers and trickled ICE candidates
(`transports.webrtc`); served only when the image can serve SmallWebRTC."""

from __future__ import annotations

from typing import Any

from loguru import logger
from quart import Blueprint, jsonify, request

from pipecat_base.nursery import SessionRefused
from pipecat_base.observability.logs import session_context
from pipecat_base.routes import Routes, detail, refused, request_body
from pipecat_base.sessions import inputs
from pipecat_base.sessions.inputs import BadInput
from pipecat_base.transports.webrtc import OFFER_PATH, NotWaiting, parse_offer, parse_patch


def unavailable_blueprint(reason: str) -> Blueprint:
    """The offer routes of an image that cannot serve SmallWebRTC: a 404 that says why (the
    capability document says the same), instead of a bot that fails at its start."""
    bp = Blueprint("webrtc_unavailable", __name__)

    @bp.route(OFFER_PATH, methods=["POST", "PATCH"])
    async def webrtc_unavailable() -> Any:
        return detail(f"SmallWebRTC sessions are unavailable in this image: {reason}", 404)

    return bp


def blueprint(routes: Routes) -> Blueprint:
    """The offer routes over ``routes`` (whose ``webrtc`` is set)."""
    bp = Blueprint("webrtc", __name__)
    supervisor = routes.supervisor
    webrtc = routes.webrtc
    assert webrtc is not None

    @bp.post(OFFER_PATH)
    async def webrtc_offer() -> Any:
        session_id = request.headers.get(inputs.SESSION_ID_HEADER)
        await webrtc.ready()
        try:
            offer = parse_offer(await request_body())
        except BadInput as exc:
            return detail(exc, 400)
        if webrtc.pending.find(session_id) is None and not offer.pc_id:
            # The offer will need a session of its own: refuse before building a peer.
            refusal = supervisor.admission_error()
            if refusal is not None:
                return refused(refusal)
        with session_context(session_id):
            try:
                answer, connection = await webrtc.answer(offer)
                if connection is not None:
                    budget = routes.session_budget(request.headers)
                    await webrtc.hand_over(
                        supervisor, session_id, connection, offer.request_data, budget
                    )
            except BadInput as exc:
                return detail(exc, 400)
            except NotWaiting as exc:
                return detail(exc, 409)
            except SessionRefused as exc:
                return refused(exc)
        return jsonify(answer)

    @bp.route(OFFER_PATH, methods=["PATCH"])
    async def webrtc_patch() -> Any:
        await webrtc.ready()
        try:
            patch = parse_patch(await request_body())
            logger.debug(
                f"Received patch request: pc_id={patch.pc_id}, {len(patch.candidates)} candidate(s)"
            )
            await webrtc.patch(patch)
        except BadInput as exc:
            return detail(exc, 400)
        except LookupError as exc:
            return detail(exc, 404)
        return jsonify({"status": "success"})

    return bp
