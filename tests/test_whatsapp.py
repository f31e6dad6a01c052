"""``POST /whatsapp`` (contract §3.7): signed and unsigned webhooks against a fake Graph API.

The whole server runs in this process on 127.0.0.1 with pipecat's real WhatsApp client; its
Graph API calls go to a local fake (``WHATSAPP_GRAPH_API_URL``) that records them. A session
waits on ``/bot`` (transport ``webrtc``) as the platform starts it; the webhook hands it the
call, or, when the webhook fails, ends the wait at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import trio

from .conftest import needs_pipecat
from .fakes import GraphApi, ice_sidecar, serve_app
from .process import BOTS

pytestmark = needs_pipecat

TOKEN = "wa-token-5d2e-secret"
APP_SECRET = "wa-app-secret-91c"
PHONE_ID = "106540352242922"
SUCCESS = {"status": "success", "message": "Webhook processed successfully"}
INTERNAL = {"detail": "Internal server error processing webhook"}


def webhook(event: str = "connect", *, sdp: str = "", obj: str = "whatsapp_business_account"):
    call: dict[str, Any] = {
        "id": "wacid.HBgLMTIz",
        "from": "15551230000",
        "to": "15559870000",
        "event": event,
        "timestamp": "1732400000",
        "direction": "USER_INITIATED",
    }
    if event == "terminate":
        call.update(status="COMPLETED", duration=12)
    else:
        call["session"] = {"sdp": sdp, "sdp_type": "offer"}
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15559870000", "phone_number_id": PHONE_ID},
        "calls": [call],
    }
    if event != "terminate":
        value["contacts"] = [{"profile": {"name": "Ada"}, "wa_id": "15551230000"}]
    change = {"value": value, "field": "calls"}
    return json.dumps({"object": obj, "entry": [{"id": "WABA", "changes": [change]}]}).encode()


def sign(raw: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


@dataclass
class WhatsAppServer:
    http: httpx.AsyncClient
    graph: GraphApi
    nursery: trio.Nursery
    waits: dict[str, httpx.Response]

    async def start_waiting(self, session_id: str, logs) -> None:
        """The platform's ``/bot`` for a call; returns once the session waits for it."""

        async def post() -> None:
            headers = {"X-Daily-Session-Id": session_id, "X-Daily-Transport-Type": "webrtc"}
            self.waits[session_id] = await self.http.post("/bot", json={}, headers=headers)

        self.nursery.start_soon(post)
        with trio.fail_after(10):
            await logs.wait_for("Will wait for the webrtc_connection to be set!")

    async def deliver(self, raw: bytes, session_id: str, **headers: str) -> httpx.Response:
        return await self.http.post(
            "/whatsapp",
            content=raw,
            headers={"X-Daily-Session-Id": session_id, "Content-Type": "application/json",
                     **headers},
        )  # fmt: skip


@pytest.fixture
def whatsapp_server(serve_bot):
    @asynccontextmanager
    async def run(**env: str) -> AsyncIterator[WhatsAppServer]:
        graph = GraphApi()
        async with (
            serve_app(graph.app()) as graph_url,
            serve_app(ice_sidecar()) as ice_url,
            serve_bot(
                str(BOTS / "whatsapp_bot.py"),
                WHATSAPP_TOKEN=TOKEN,
                WHATSAPP_PHONE_NUMBER_ID=PHONE_ID,
                WHATSAPP_APP_SECRET=APP_SECRET,
                WHATSAPP_GRAPH_API_URL=f"{graph_url}/v23.0",
                ICE_CONFIG_URL=f"{ice_url}/ice-servers",
                # Tests that leave a session waiting end the server without a drain.
                SHUTDOWN_TIMEOUT="0",
                **env,
            ) as served,
            httpx.AsyncClient(base_url=served.url, timeout=30) as http,
            trio.open_nursery() as nursery,
        ):
            yield WhatsAppServer(http, graph, nursery, {})

    return run


async def caller_offer() -> str:
    from .webrtc_client import offer_sdp

    return await trio.to_thread.run_sync(lambda: asyncio.run(offer_sdp()))


@pytest.mark.slow
async def test_a_signed_call_reaches_the_waiting_session(whatsapp_server, logs):
    raw = webhook(sdp=await caller_offer())
    async with whatsapp_server() as wa:
        await wa.start_waiting("wa-1", logs)
        response = await wa.deliver(raw, "wa-1", **{"X-Hub-Signature-256": sign(raw)})
        with trio.fail_after(10):
            await logs.wait_for("Stopping bot session")
    assert response.status_code == 200
    assert response.json() == SUCCESS
    assert wa.waits["wa-1"].status_code == 200
    assert wa.waits["wa-1"].json() == {}
    assert [r[2] for r in logs.records if r[2].startswith("whatsapp bot:")] == [
        "whatsapp bot: SmallWebRTCSessionArguments for call wacid.HBgLMTIz from 15551230000, "
        "connection SmallWebRTCConnection"
    ]
    assert [(path, auth, body["action"]) for path, auth, body in wa.graph.requests] == [
        (f"/v23.0/{PHONE_ID}/calls", f"Bearer {TOKEN}", "pre_accept"),
        (f"/v23.0/{PHONE_ID}/calls", f"Bearer {TOKEN}", "accept"),
    ]
    assert wa.graph.requests[1][2]["session"]["sdp"].startswith("v=0")
    assert logs.having("WhatsApp client initialized successfully")
    assert logs.having("WhatsApp client cleanup completed")
    assert TOKEN not in logs.text
    assert APP_SECRET not in logs.text


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "status", "answer", "ends_wait"),
    [
        ("unsigned", 500, INTERNAL, "Missing X-Hub-Signature-256 header"),
        ("wrong signature", 500, INTERNAL, "Invalid webhook signature"),
        ("graph api refuses", 500, INTERNAL, "Failed to pre-accept call"),
        (
            "no supported event",
            400,
            {"detail": "Invalid request: No supported event found in webhook request"},
            "No supported event found in webhook request",
        ),
        ("terminate", 200, SUCCESS, None),
        ("other object", 400, {"detail": "Invalid object type"}, None),
        ("not json", 400, None, None),
        ("not a webhook", 400, None, None),
    ],
)
async def test_webhook_status_paths(whatsapp_server, logs, case, status, answer, ends_wait):
    sdp = await caller_offer()
    raw = {
        "no supported event": webhook("ringing", sdp=sdp),
        "terminate": webhook("terminate"),
        "other object": webhook(sdp=sdp, obj="page"),
        "not json": b"{nope",
        "not a webhook": b'{"object": "whatsapp_business_account"}',
    }.get(case, webhook(sdp=sdp))
    headers = {
        "unsigned": {},
        "wrong signature": {"X-Hub-Signature-256": sign(raw, "not-the-secret")},
    }.get(case, {"X-Hub-Signature-256": sign(raw)})
    async with whatsapp_server() as wa:
        wa.graph.succeed = case != "graph api refuses"
        await wa.start_waiting("wa-2", logs)
        t0 = trio.current_time()
        response = await wa.deliver(raw, "wa-2", **headers)
        if ends_wait:
            with trio.fail_after(5):  # at once, not after the 120 s wait
                await logs.wait_for("Stopping bot session")
            waited = trio.current_time() - t0
        else:
            assert "wa-2" not in wa.waits  # still waiting for a call
            wa.nursery.cancel_scope.cancel()
    assert response.status_code == status
    if answer is not None:
        assert response.json() == answer
    else:
        assert response.json()["detail"].startswith(
            "request body is not valid JSON" if case == "not json"
            else "the webhook is not a WhatsApp webhook request: entry: Field required"
        )  # fmt: skip
    if ends_wait:
        assert waited < 5
        assert wa.waits["wa-2"].status_code == 502
        assert ends_wait in wa.waits["wa-2"].json()["detail"]
        assert not logs.having("whatsapp bot:")


async def test_not_served_without_its_settings(serve_bot, logs):
    async with (
        serve_bot(str(BOTS / "whatsapp_bot.py")) as served,
        httpx.AsyncClient(base_url=served.url) as http,
    ):
        response = await http.post("/whatsapp", content=webhook())
        capabilities = (await http.get("/pcc/capabilities")).json()["capabilities"]
    assert response.status_code == 404  # the Session API app's answer: no such route
    assert capabilities["whatsapp"] == {
        "available": False,
        "reason": "Missing environment variables: WHATSAPP_TOKEN, WHATSAPP_PHONE_NUMBER_ID, "
        "WHATSAPP_APP_SECRET",
    }
    assert not logs.having("WhatsApp client initialized")
