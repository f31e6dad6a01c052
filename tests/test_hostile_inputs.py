"""Bad input gets a 4xx naming the problem, as JSON ``{"detail": ...}``, and loses nothing."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import trio

from pipecat_base.app import create_app
from pipecat_base.sessions import inputs
from pipecat_base.sessions.inputs import MAX_SESSION_ID_LENGTH

from .process import BOTS


@pytest.fixture
def app_for(make_supervisor):
    def make(**options: Any):
        async def bot(args: Any) -> None:
            pass

        return create_app(make_supervisor(bot), **options)

    return make


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"n": ' + b"9" * 5000 + b"}", "Exceeds the limit (4300 digits)"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
    ids=["5000-digit integer", "nested 100000 deep"],
)
async def test_json_the_parser_refuses_is_a_400_naming_why(app_for, body, detail):
    response = await app_for().test_client().post("/bot", data=body)
    assert response.status_code == 400
    assert detail in (await response.get_json())["detail"]


def test_a_ws_body_the_parser_refuses_is_logged_and_dropped(logs):
    deep = base64.b64encode(b"[" * 100_000 + b"]" * 100_000).decode()
    assert inputs.decode_ws_body(deep) is None
    assert logs.having("Failed to decode body parameter (JSON step): it is nested too deeply")


async def test_a_session_id_too_long_is_a_400(app_for):
    too_long = "x" * (MAX_SESSION_ID_LENGTH + 1)
    response = (
        await app_for()
        .test_client()
        .post("/bot", json={}, headers={"X-Daily-Session-Id": too_long})
    )
    assert response.status_code == 400
    assert await response.get_json() == {
        "detail": f"X-Daily-Session-Id is longer than {MAX_SESSION_ID_LENGTH} characters"
    }


async def test_control_characters_in_a_session_id_are_escaped_in_log_lines(app_for, logs):
    hostile = "abc\x1b[2J\x07\x7fforged"
    response = (
        await app_for().test_client().post("/bot", json={}, headers={"X-Daily-Session-Id": hostile})
    )
    assert response.status_code == 200
    ids = {session_id for _, session_id, message in logs.records if "bot session" in message}
    assert ids == {"abc\\x1b[2J\\x07\\x7fforged"}
    assert not any("\x1b" in message for _, _, message in logs.records)


@pytest.mark.parametrize("raw", ["1_0", "1e3", " 30", "0x10", "٣"])
def test_a_budget_is_a_plain_decimal_number_only(raw, logs):
    assert inputs.parse_budget(raw) is None
    assert logs.having(f"Ignoring malformed X-PCC-Max-Session-Seconds: {raw!r}")


@pytest.mark.parametrize(("raw", "seconds"), [("30", 30.0), ("7.5", 7.5), (".5", 0.5)])
def test_plain_decimal_budgets_are_taken(raw, seconds):
    assert inputs.parse_budget(raw) == seconds


async def test_quarts_own_refusals_are_json_too(app_for):
    app = app_for()
    app.config["MAX_CONTENT_LENGTH"] = 10
    client = app.test_client()
    missing = await client.get("/nope")
    assert (missing.status_code, await missing.get_json()) == (404, {"detail": "Not Found"})
    wrong = await client.get("/bot")
    assert (wrong.status_code, await wrong.get_json()) == (405, {"detail": "Method Not Allowed"})
    assert "POST" in wrong.headers["Allow"]
    large = await client.post("/bot", data=b"{" + b" " * 100 + b"}")
    assert large.status_code == 413
    assert await large.get_json() == {"detail": "Request Entity Too Large"}


async def raw_exchange(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request)
        received = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some():
                received += chunk
    return received


def status_and_body(response: bytes) -> tuple[bytes, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], json.loads(body)


async def test_content_length_with_transfer_encoding_is_refused_and_the_connection_closed(
    serve_bot,
):
    smuggle = (
        b"POST /bot HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n0\r\n\r\n"
    )
    async with serve_bot(str(BOTS / "waiting_bot.py")) as served:
        response = await raw_exchange(served.url, smuggle)
    status, body = status_and_body(response)
    assert status == b"HTTP/1.1 400 "
    assert body == {
        "detail": "Content-Length and Transfer-Encoding together: send only one of them"
    }
    # The connection is closed after it (raw_exchange reads to the end): nothing a proxy
    # in front framed differently can follow on it as a second request.
    assert b"connection: close" in response.lower()
    assert response.count(b"HTTP/1.1 ") == 1


async def test_an_http_version_we_do_not_speak_is_a_505(serve_bot):
    async with serve_bot(str(BOTS / "waiting_bot.py")) as served:
        response = await raw_exchange(served.url, b"GET /livez HTTP/9.9\r\nHost: x\r\n\r\n")
    status, body = status_and_body(response)
    assert status.split(b" ")[1] == b"505"
    assert body == {"detail": "HTTP/9.9 is not supported: use HTTP/1.1"}


@pytest.mark.usefixtures("all_speedups")  # Hypercorn's own refusal, answered by tcp_server
async def test_a_request_hypercorn_cannot_parse_gets_a_json_400(serve_bot):
    # The server engages what its settings select: here every speedup, whatever the run's.
    waiting_bot = str(BOTS / "waiting_bot.py")
    async with serve_bot(waiting_bot, PIPECAT_BASE_SPEEDUPS="1") as served:
        response = await raw_exchange(served.url, b"NOT HTTP AT ALL\r\n\r\n")
    status, body = status_and_body(response)
    assert status.split(b" ")[1] == b"400"
    assert body == {"detail": "Bad Request"}
