"""``WS /ws`` over real sockets on 127.0.0.1, with plain asyncio bots on a Starlette WebSocket."""

from __future__ import annotations

import base64
import json

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from .process import BOTS

RAW_BOT = str(BOTS / "raw_ws_bot.py")


def b64(value: object) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


async def expect_close(ws) -> int:
    """Wait for the server to close the socket; return its close code."""
    with trio.fail_after(10):
        while True:
            try:
                await ws.get_message()
            except ConnectionClosed as closed:
                return closed.reason.code


async def test_frames_round_trip_with_types_kept_and_empty_binary_stays_bytes(serve_bot, logs):
    async with serve_bot(RAW_BOT) as served, open_websocket_url(served.ws_url) as ws:
        with trio.fail_after(10):
            for frame in (b"\x00\x01\x02", b"", b"x" * 5000):
                await ws.send_message(frame)
                assert await ws.get_message() == frame
            await ws.send_message("text")
            assert await ws.get_message() == "text:text"
    assert logs.having("raw bot: WebSocketSessionArguments") or logs.having(
        "raw bot: FallbackWebSocketSessionArguments"
    )


async def test_bot_returning_closes_normally_and_logs_the_pair_once(serve_bot, logs):
    headers = [("X-Daily-Session-Id", "ws-1")]
    async with serve_bot(RAW_BOT) as served:
        async with open_websocket_url(served.ws_url, extra_headers=headers) as ws:
            await ws.send_message("bye")
            assert await expect_close(ws) == 1000
    assert [r[:2] for r in logs.having("Starting bot session")] == [("INFO", "ws-1")]
    assert [r[:2] for r in logs.having("Stopping bot session")] == [("INFO", "ws-1")]


async def test_caller_hanging_up_reaches_the_bot_as_a_disconnect_not_a_cancellation(
    serve_bot, logs
):
    async with serve_bot(RAW_BOT) as served:
        async with open_websocket_url(served.ws_url) as ws:
            await ws.send_message(b"ping")
            assert await ws.get_message() == b"ping"
        with trio.fail_after(10):
            await served.server.supervisor.wait_idle()
    # Hypercorn reports a client-initiated close as 1006 (it does not pass the client's code on);
    # what matters to pipecat is that it arrives as an ordinary `websocket.disconnect` event.
    assert logs.having("raw bot: caller hung up with code 1006")
    assert not logs.having("Bot session stopped")  # the bot ended by itself
    messages = logs.messages()
    assert messages.index("raw bot: finally") < messages.index(
        next(m for m in messages if m.startswith("Stopping bot session"))
    )


async def test_bot_that_ignores_the_hang_up_is_stopped_after_the_grace(serve_bot, logs):
    async with serve_bot(RAW_BOT, CLIENT_DISCONNECT_GRACE="0.3") as served:
        async with open_websocket_url(served.ws_url) as ws:
            await ws.send_message("ignore-hangup")
            await trio.sleep(0.1)
        with trio.fail_after(10):
            await served.server.supervisor.wait_idle()
    assert logs.having("raw bot: saw the hang-up, keeps running")
    assert logs.having("Bot session stopped: client disconnected")


async def test_budget_on_ws_closes_with_1001_after_the_bot_unwound(serve_bot, logs):
    headers = [("X-PCC-Max-Session-Seconds", "0.3"), ("X-Daily-Session-Id", "ws-budget")]
    async with serve_bot(RAW_BOT) as served:
        async with open_websocket_url(served.ws_url, extra_headers=headers) as ws:
            await ws.send_message("sleep")
            assert await expect_close(ws) == 1001
    messages = logs.messages()
    assert "raw bot: cancelled while sleeping" in messages
    assert "Bot session stopped: maximum session duration reached (0.3s)" in messages
    assert messages.index("raw bot: finally") < messages.index(
        "Bot session stopped: maximum session duration reached (0.3s)"
    )


async def test_each_ws_session_has_its_own_budget(serve_bot, logs):
    async with serve_bot(RAW_BOT, CLIENT_DISCONNECT_GRACE="0.1") as served:
        bounded = [("X-PCC-Max-Session-Seconds", "0.2")]
        async with open_websocket_url(served.ws_url, extra_headers=bounded) as ws:
            await ws.send_message("sleep")
            assert await expect_close(ws) == 1001
        async with open_websocket_url(served.ws_url) as ws:  # no header: no budget
            await ws.send_message("sleep")
            await trio.sleep(0.5)
            await ws.send_message(b"still here")  # queued behind the sleep; not answered
        assert len(logs.having("Bot session stopped: maximum session duration")) == 1


@pytest.mark.parametrize(
    ("query", "body", "error"),
    [
        ("", None, None),
        (f"?body={b64({'to': '+1555', 'n': 1})}", {"to": "+1555", "n": 1}, None),
        (  # a '+' turned into a space by form decoding still decodes
            "?body=" + b64({"x": "~~~>"}).replace("+", "%20"),
            {"x": "~~~>"},
            None,
        ),
        (
            "?body=" + base64.urlsafe_b64encode(b'{"u": "\xc3\xa9~?"}').decode().rstrip("="),
            {"u": "é~?"},
            None,
        ),
        ("?body=***", None, "Failed to decode body parameter (base64 step)"),
        ("?body=" + base64.b64encode(b"\xff\xfe").decode(), None, "(UTF-8 step)"),
        ("?body=" + base64.b64encode(b"{nope").decode(), None, "(JSON step)"),
    ],
)
async def test_body_query_parameter_decoding(serve_bot, logs, query, body, error):
    headers = [("X-Daily-Session-Id", "ws-body")]
    async with serve_bot(RAW_BOT) as served:
        async with open_websocket_url(served.ws_url + query, extra_headers=headers) as ws:
            await ws.send_message("body")
            with trio.fail_after(10):
                assert json.loads(await ws.get_message()) == body
    errors = logs.having("Failed to decode body parameter")
    if error is None:
        assert errors == []
    else:
        assert len(errors) == 1
        assert error in errors[0][2]
        assert errors[0][:2] == ("ERROR", "ws-body")


async def test_iter_bytes_bot(serve_bot):
    async with serve_bot(f"{BOTS}/raw_ws_bot_iter.py") as served:
        async with open_websocket_url(served.ws_url) as ws:
            with trio.fail_after(10):
                for i in range(20):
                    await ws.send_message(bytes([i]) * 160)
                for i in range(20):
                    assert await ws.get_message() == bytes([i]) * 160


async def test_draining_server_rejects_the_handshake_with_503(serve_bot):
    async with serve_bot(RAW_BOT) as served:
        await served.server.supervisor.drain(trio.current_time())
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(served.ws_url):
                pass
        assert rejected.value.status_code == 503
