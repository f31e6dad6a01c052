"""WhatsApp Business calls: ``POST /whatsapp`` hands each call's peer to its session.

Served when ``WHATSAPP_TOKEN``, ``WHATSAPP_PHONE_NUMBER_ID`` and ``WHATSAPP_APP_SECRET`` are set
and pipecat ships its WhatsApp client (`features`). The platform starts the session first
(``/bot`` with transport ``webrtc``, which waits, `webrtc`), then forwards WhatsApp's webhook
here with the session id. pipecat's client checks the ``X-Hub-Signature-256`` signature,
answers the call through the Graph API and hands us the call's WebRTC connection, which goes to
the waiting session with the call (``WhatsAppConnectCall``) as the bot's ``body``.

Answers (contract §3.7): ``200 {"status": "success", ...}``; ``400 {"detail": "Invalid object
type"}`` for another ``object``; ``400 {"detail": "Invalid request: ..."}`` when the client
raises ``ValueError`` (no supported event); ``500`` for any other failure, signature failures
included. On a failure the waiting session ends at once, not after its 120 s wait.

The client (and its aiohttp session) lives for the serving lifetime: `WhatsApp.running`.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from loguru import logger

from pipecat_base.bridge.loop import run_aio
from pipecat_base.config import Settings
from pipecat_base.nursery import SessionSupervisor
from pipecat_base.sessions.inputs import BadInput, parse_json_object
from pipecat_base.transports.webrtc import SmallWebRTC

WHATSAPP_PATH = "/whatsapp"
SIGNATURE_HEADER = "X-Hub-Signature-256"
BUSINESS_ACCOUNT = "whatsapp_business_account"
SUCCESS = {"status": "success", "message": "Webhook processed successfully"}
INTERNAL_ERROR = "Internal server error processing webhook"


class WhatsApp:
    """The WhatsApp webhook's side of the server.

    Args:
        loop: The process' asyncio loop (pipecat's client and aiohttp run on it).
        settings: The three ``WHATSAPP_*`` values, and ``WHATSAPP_GRAPH_API_URL`` to send the
            client's Graph API calls elsewhere (a proxy, or a local fake in tests).
        webrtc: Where the calls' connections go.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, settings: Settings, webrtc: SmallWebRTC
    ) -> None:
        self._loop = loop
        self._settings = settings
        self._webrtc = webrtc
        self._client: Any = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[WhatsApp]:
        """Create the client for the block; on exit terminate the calls still up (bounded)."""
        http = await run_aio(self._loop, _open_http_session)
        try:
            self._client = self._new_client(http)
            logger.info("WhatsApp client initialized successfully")
            yield self
        finally:
            with trio.CancelScope(shield=True):
                logger.info("Cleaning up WhatsApp client resources...")
                with trio.move_on_after(self._settings.session_cancel_grace) as bound:
                    try:
                        if self._client is not None:
                            await run_aio(self._loop, self._client.terminate_all_calls)
                        logger.info("WhatsApp client cleanup completed")
                    except Exception as exc:
                        logger.error(f"Error cleaning up WhatsApp client: {exc!r}")
                if bound.cancelled_caught:
                    logger.error("Error cleaning up WhatsApp client: timed out")
                await run_aio(self._loop, http.close)

    def _new_client(self, http: Any) -> Any:
        from pipecat.transports.whatsapp.api import WhatsAppApi
        from pipecat.transports.whatsapp.client import WhatsAppClient

        settings = self._settings
        if settings.whatsapp_graph_api_url:
            # pipecat builds its Graph API URLs from this documented class attribute; there is
            # no constructor argument for it.
            WhatsAppApi.BASE_URL = settings.whatsapp_graph_api_url.rstrip("/") + "/"
        assert settings.whatsapp_token is not None
        assert settings.whatsapp_app_secret is not None
        return WhatsAppClient(
            whatsapp_token=settings.whatsapp_token.get_secret_value(),
            phone_number_id=settings.whatsapp_phone_number_id or "",
            session=http,
            whatsapp_secret=settings.whatsapp_app_secret.get_secret_value(),
        )

    async def webhook(
        self,
        supervisor: SessionSupervisor,
        session_id: str | None,
        raw_body: bytes,
        signature: str | None,
    ) -> tuple[dict[str, Any], int]:
        """Handle one webhook delivery; returns the JSON answer and its status."""
        from pipecat.transports.whatsapp.api import WhatsAppWebhookRequest
        from pydantic import ValidationError

        try:
            request = WhatsAppWebhookRequest.model_validate(parse_json_object(raw_body))
        except ValidationError as exc:
            return {"detail": f"the webhook is not a WhatsApp webhook request: {_first(exc)}"}, 400
        except BadInput as exc:
            return {"detail": str(exc)}, 400
        if request.object != BUSINESS_ACCOUNT:
            logger.warning(f"Invalid WhatsApp webhook object type: {request.object!r}")
            return {"detail": "Invalid object type"}, 400
        logger.debug(
            f"WhatsApp webhook: raw_body_length={len(raw_body)}, "
            f"raw_body_sha256={hashlib.sha256(raw_body).hexdigest()}, "
            f"x_hub_signature_256={signature}"
        )
        self._client.update_ice_servers(await self._webrtc.ice_servers())
        calls: list[tuple[Any, Any]] = []

        async def on_connection(connection: Any, call: Any = None) -> None:
            calls.append((connection, call))

        try:
            await run_aio(
                self._loop,
                self._client.handle_webhook_request,
                request,
                on_connection,
                raw_body,
                signature,
            )
        except ValueError as exc:
            self._fail_waiting(session_id, f"the WhatsApp webhook was invalid: {exc}")
            return {"detail": f"Invalid request: {exc}"}, 400
        except Exception as exc:
            logger.error(f"WhatsApp webhook failed: {exc!r}")
            self._fail_waiting(session_id, f"the WhatsApp webhook failed: {exc}")
            return {"detail": INTERNAL_ERROR}, 500
        for connection, call in calls:
            await self._webrtc.hand_over(supervisor, session_id, connection, call)
        return SUCCESS, 200

    def _fail_waiting(self, session_id: str | None, reason: str) -> None:
        pending = self._webrtc.pending.find(session_id)
        if pending is not None:
            pending.fail(reason)


async def _open_http_session() -> Any:
    import aiohttp

    return aiohttp.ClientSession()


def _first(exc: Any) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "body"
    return f"{where}: {error['msg']}"
