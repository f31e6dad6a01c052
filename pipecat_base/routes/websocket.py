"""``WS /ws``: telephony and custom WebSocket sessions.

The route accepts, then runs a session whose bot gets a genuine Starlette ``WebSocket``
(`transports.websocket`). A session is a plain WebSocket one (``args.transport_type ==
"websocket"``, pipecat's marker for ``create_transport``) when the upgrade says so
(``X-Daily-Transport-Type: websocket`` or ``?transport=websocket``) or when the client's first
frame is binary; otherwise pipecat detects the telephony provider. The caller hanging up
reaches the bot as ``websocket.disconnect``; a bot that does not end within
``CLIENT_DISCONNECT_GRACE`` is stopped.
"""

from __future__ import annotations

from typing import Any, cast

import trio
from loguru import logger
from quart import Blueprint, websocket

from pipecat_base.nursery import Outcome, SessionRefused, SessionSpec, stop_unless_ended
from pipecat_base.observability.logs import printable, session_context
from pipecat_base.routes import Routes, detail, refused
from pipecat_base.sessions import flows, inputs
from pipecat_base.sessions.args import websocket_session_args
from pipecat_base.transports.websocket import (
    AsgiWebsocket,
    StarletteSocket,
    open_starlette_websocket,
)

# WebSocket close codes: a bot that returned ends the call normally; a session the server
# cancelled (budget, shutdown) is "going away"; a refused one may try again later.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013
# How long a session that did not declare its kind waits for the client's first frame, which
# tells a plain WebSocket client (binary first) from telephony (a JSON text message first).
# Providers send theirs on connecting; a client that waits for the bot to speak first starts
# after this, undeclared (pipecat then looks for a provider's messages).
FIRST_FRAME_WAIT = 1.0


def blueprint(routes: Routes) -> Blueprint:
    """The ``/ws`` route over ``routes``."""
    bp = Blueprint("websocket", __name__)
    supervisor = routes.supervisor
    settings = routes.settings

    @bp.websocket("/ws")
    async def ws_session() -> Any:
        ws = cast(AsgiWebsocket, websocket._get_current_object())  # type: ignore[attr-defined]
        session_id = ws.headers.get(inputs.SESSION_ID_HEADER)
        problem = inputs.session_id_problem(session_id)
        if problem is not None:
            return detail(problem, 400)  # before accepting: an HTTP answer
        refusal = supervisor.admission_error()
        if refusal is not None:
            return refused(refusal)  # before accepting: an HTTP answer, not a dropped call
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
                        f"Refusing websocket session {printable(str(session_id))}: "
                        f"{flows.FLOW_FILE_HEADER} names a file this app cannot use: "
                        f"{printable(str(exc))}"
                    )
                    await ws.close(CLOSE_INTERNAL_ERROR)  # before accepting: HTTP 403
                    return None
            budget = routes.session_budget(ws.headers)
            body = inputs.decode_ws_body(ws.args.get("body"))
            plain = inputs.declares_plain_websocket(
                ws.headers.get(inputs.TRANSPORT_TYPE_HEADER), ws.args.get(inputs.TRANSPORT_QUERY)
            )
        await ws.accept()
        async with open_starlette_websocket(supervisor.loop, ws) as socket:
            if not plain:
                with trio.move_on_after(FIRST_FRAME_WAIT):
                    plain = await socket.first_frame_is_binary()
            args = websocket_session_args(session_id, body, socket.websocket)
            args.flow_config = flow_config
            if plain:
                # What pipecat's create_transport reads to build a FastAPIWebsocketTransport
                # instead of looking for a telephony provider's first messages.
                args.transport_type = inputs.PLAIN_WEBSOCKET
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

    return bp


async def _stop_after_disconnect(socket: StarletteSocket, handle: Any, grace: float) -> None:
    await socket.wait_disconnected()
    await stop_unless_ended(handle, grace)
