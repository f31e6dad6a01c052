"""``POST /bot``: a session started over HTTP, answered ``200 {}`` when ``bot()`` has ended.

The open request is what keeps the pod busy for the platform. Transport ``moq``: the bot dials
the relay the headers name (`transports.moq`); transport ``webrtc`` without a room: the session
waits for its peer's offer (`routes.webrtc`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from loguru import logger
from quart import Blueprint, request

from pipecat_base.nursery import ConnectionTimedOut, SessionRefused, SessionSpec
from pipecat_base.observability.logs import printable, session_context
from pipecat_base.observability.redaction import Secret
from pipecat_base.routes import Routes, answered, detail, refused, request_body
from pipecat_base.sessions import flows, inputs
from pipecat_base.sessions.args import build, http_session_args
from pipecat_base.sessions.inputs import BadInput
from pipecat_base.transports import moq
from pipecat_base.transports.webrtc import AlreadyWaiting

# A WebRTC session whose peer never came: no offer in time, or one that failed.
NO_CONNECTION_TIMED_OUT = 504
NO_CONNECTION_FAILED = 502


def blueprint(routes: Routes) -> Blueprint:
    """The ``/bot`` route over ``routes``."""
    bp = Blueprint("bot", __name__)
    supervisor = routes.supervisor
    webrtc = routes.webrtc

    @bp.post("/bot")
    async def start_bot() -> Any:
        headers = inputs.HeaderLookup(request.headers.items())
        session_id = headers.get(inputs.SESSION_ID_HEADER)
        problem = inputs.session_id_problem(session_id)
        if problem is not None:
            return detail(problem, 400)
        # Without one (a local curl, a custom client) its lines could not be told apart.
        generated = not session_id
        if generated:
            session_id = str(uuid.uuid4())
        try:
            body = inputs.parse_json_object(await request_body())
            body, flow_config = flows.split_envelope(headers.get(flows.ENVELOPE_HEADER), body)
        except BadInput as exc:
            return detail(exc, 400)
        with session_context(session_id):
            budget = routes.session_budget(headers)
        transport = headers.get(inputs.TRANSPORT_TYPE_HEADER)
        if transport:
            logger.debug(f"Transport type: {printable(transport)}")
        room_url = headers.get(inputs.ROOM_URL_HEADER)
        token = headers.get(inputs.ROOM_TOKEN_HEADER)
        redact: Callable[[str], str] | None = None
        if transport == moq.TRANSPORT:
            try:
                args, secret = moq.session_args(
                    session_id, body, headers, unavailable=routes.moq_unavailable, build=build
                )
            except moq.MoqRefused as exc:
                with session_context(session_id):
                    logger.error(str(exc))
                return detail(exc, 400)
            redact = secret.scrub
        elif transport == "webrtc" and webrtc is not None and not (room_url and token):
            return await wait_for_webrtc(session_id, body, flow_config, budget)
        else:
            args = http_session_args(session_id, body, room_url=room_url, token=token)
            if token:
                redact = Secret(token).scrub
        args.flow_config = flow_config
        try:
            spec = SessionSpec(session_id, args, budget, redact=redact, id_generated=generated)
            handle = await supervisor.start(spec)
        except SessionRefused as exc:
            return refused(exc)
        await handle.wait()
        return answered()

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
            return detail(exc, 409)
        except SessionRefused as exc:
            return refused(exc)
        failure = handle.failure
        if failure is not None:
            timed_out = isinstance(failure, ConnectionTimedOut)
            return detail(failure, NO_CONNECTION_TIMED_OUT if timed_out else NO_CONNECTION_FAILED)
        return answered()

    return bp
