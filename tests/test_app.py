"""Routes through the app with Quart-Trio's in-process test client, in virtual time."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import trio

from pipecat_base.app import create_app
from pipecat_base.routes.health import READYZ_TIMEOUT
from pipecat_base.sessions.inputs import BadInput, HeaderLookup, parse_budget, parse_json_object

from .conftest import needs_pipecat

SECRET_TOKEN = "tok-3f9a-very-secret"


class Seen:
    """Arguments the bot received, per session."""

    def __init__(self) -> None:
        self.args: list[Any] = []

    async def bot(self, args: Any) -> None:
        self.args.append(args)
        delay = (args.body or {}).get("sleep", 0)
        await asyncio.sleep(delay)


@pytest.fixture
def client_for(make_supervisor):
    def make(bot, *, user_readyz=None, **options):
        supervisor = make_supervisor(bot, **options)
        app = create_app(supervisor, user_readyz=user_readyz)
        return app.test_client(), supervisor

    return make


async def test_livez(client_for):
    client, _ = client_for(Seen().bot)
    response = await client.get("/livez")
    assert response.status_code == 200
    assert await response.get_json() == {"status": "ok"}


async def test_bot_answers_empty_object_after_bot_ends(client_for, autojump_clock):
    seen = Seen()
    client, _ = client_for(seen.bot)
    t0 = trio.current_time()
    response = await client.post("/bot", json={"sleep": 42}, headers={"X-Daily-Session-Id": "s1"})
    assert response.status_code == 200
    assert await response.get_json() == {}
    assert trio.current_time() == t0 + 42
    assert seen.args[0].body == {"sleep": 42}
    assert seen.args[0].session_id == "s1"


@pytest.mark.parametrize(
    ("headers", "kind", "fields"),
    [
        (
            {"X-Daily-Room-Url": "https://x.daily.co/room", "X-Daily-Room-Token": SECRET_TOKEN},
            "DailySessionArguments",
            {"room_url": "https://x.daily.co/room", "token": SECRET_TOKEN},
        ),
        ({"X-Daily-Room-Url": "https://x.daily.co/room"}, "PipecatSessionArguments", {}),
        ({"X-Daily-Room-Token": SECRET_TOKEN}, "PipecatSessionArguments", {}),
        ({}, "PipecatSessionArguments", {}),
    ],
)
async def test_headers_choose_the_argument_type(client_for, headers, kind, fields):
    seen = Seen()
    client, _ = client_for(seen.bot)
    response = await client.post(
        "/bot", json={"k": "v"}, headers={"X-Daily-Session-Id": "sid", **headers}
    )
    assert response.status_code == 200
    (args,) = seen.args
    assert type(args).__name__.endswith(kind)
    assert args.session_id == "sid"
    assert args.body == {"k": "v"}
    assert args.handle_sigint is False
    assert args.handle_sigterm is False
    assert args.flow_config is None
    for name, value in fields.items():
        assert getattr(args, name) == value


@needs_pipecat
async def test_arguments_are_pipecatclouds_types_so_create_transport_accepts_them(client_for):
    from pipecat.runner.types import DailyRunnerArguments, RunnerArguments
    from pipecatcloud.agent import DailySessionArguments, PipecatSessionArguments

    seen = Seen()
    client, _ = client_for(seen.bot)
    await client.post(
        "/bot",
        json={},
        headers={"X-Daily-Room-Url": "https://x.daily.co/r", "X-Daily-Room-Token": "t"},
    )
    await client.post("/bot", json={})
    daily, plain = seen.args
    assert isinstance(daily, DailySessionArguments)
    assert isinstance(daily, DailyRunnerArguments)
    assert isinstance(plain, PipecatSessionArguments)
    assert isinstance(plain, RunnerArguments)


async def test_fallback_types_have_the_same_shape_without_pipecat():
    from pipecat_base.sessions.args import (
        FallbackDailySessionArguments,
        FallbackPipecatSessionArguments,
        build,
    )

    daily = build(
        FallbackDailySessionArguments, body={"a": 1}, session_id="s", room_url="u", token="t"
    )
    assert (daily.session_id, daily.body, daily.room_url, daily.token) == ("s", {"a": 1}, "u", "t")
    plain = build(FallbackPipecatSessionArguments, body=None, session_id=None)
    assert (plain.handle_sigint, plain.handle_sigterm, plain.flow_config) == (False, False, None)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "request body is empty"),
        (b"   ", "request body is empty"),
        (b"{not json", "request body is not valid JSON: Expecting property name"),
        (b"[1, 2]", "must be a JSON object, got a JSON array"),
        (b'"text"', "must be a JSON object, got a JSON string"),
        (b"42", "must be a JSON object, got a JSON number"),
        (b"null", "must be a JSON object, got a JSON null"),
        (b"\xff\xfe{}", "request body is not"),
    ],
)
async def test_bad_bodies_get_400_with_a_message_and_no_session(client_for, logs, raw, message):
    seen = Seen()
    client, _ = client_for(seen.bot)
    response = await client.post("/bot", data=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    detail = (await response.get_json())["detail"]
    assert message in detail
    assert seen.args == []
    assert logs.having("Starting bot session") == []


def test_parse_json_object_accepts_objects_only():
    assert parse_json_object(b' {"a": [1]} ') == {"a": [1]}
    with pytest.raises(BadInput):
        parse_json_object(b"true")


@pytest.mark.parametrize(
    ("raw", "expected", "warning"),
    [
        ("7200", 7200.0, None),
        ("0.5", 0.5, None),
        (None, None, None),
        ("", None, "Ignoring malformed X-PCC-Max-Session-Seconds: ''"),
        ("abc", None, "Ignoring malformed X-PCC-Max-Session-Seconds: 'abc'"),
        ("0", None, "Ignoring non-positive X-PCC-Max-Session-Seconds: '0'"),
        ("-1", None, "Ignoring non-positive X-PCC-Max-Session-Seconds: '-1'"),
        ("nan", None, "Ignoring non-finite X-PCC-Max-Session-Seconds: 'nan'"),
        ("inf", None, "Ignoring non-finite X-PCC-Max-Session-Seconds: 'inf'"),
    ],
)
def test_budget_header_table(logs, raw, expected, warning):
    assert parse_budget(raw) == expected
    warnings = logs.messages("WARNING")
    assert warnings == ([warning] if warning else [])


def test_header_lookup_ignores_case_keeps_the_first_value_and_defaults_when_absent():
    headers = HeaderLookup(
        [("x-daily-session-id", "s-1"), ("X-Daily-Session-Id", "s-2"), ("Host", "h")]
    )
    assert headers.get("X-Daily-Session-Id") == "s-1"  # as werkzeug's Headers.get
    assert headers.get("HOST") == "h"
    assert headers.get("X-Daily-Room-Url") is None
    assert headers.get("X-Daily-Room-Url", "none") == "none"


@pytest.mark.parametrize(
    ("raw", "ends_after"),
    [("7200", 100), ("0.5", 0.5), ("", 100), ("abc", 100), ("0", 100), ("-1", 100),
     ("nan", 100), ("inf", 100), (None, 100)],
)  # fmt: skip
async def test_budget_header_bounds_the_bot_through_the_route(
    client_for, autojump_clock, raw, ends_after
):
    async def bot(args: Any) -> None:
        await asyncio.sleep(100)

    client, _ = client_for(bot)
    headers = {} if raw is None else {"X-PCC-Max-Session-Seconds": raw}
    t0 = trio.current_time()
    response = await client.post("/bot", json={}, headers=headers)
    assert response.status_code == 200
    assert trio.current_time() == t0 + ends_after


async def test_absent_budget_is_reported_once_per_process(client_for, logs):
    client, _ = client_for(Seen().bot)
    await client.post("/bot", json={})
    await client.post("/bot", json={})
    assert len(logs.having("No session budget supplied by the platform")) == 1


async def _ready_true() -> bool:
    await asyncio.sleep(0)  # genuinely asyncio: runs on the bridge loop
    return True


def _raise() -> None:
    raise RuntimeError("database down")


@pytest.mark.parametrize(
    ("readyz", "status", "body"),
    [
        (None, 200, {"status": "ok"}),
        (lambda: True, 200, {"status": "ok"}),
        (lambda: False, 503, {"status": "not ready"}),
        (lambda: {"ready": True, "x": 1}, 200, {"ready": True, "x": 1}),
        (lambda: {"ready": False, "why": "warming"}, 503, {"ready": False, "why": "warming"}),
        (lambda: {"x": 1}, 503, {"x": 1}),
        (_raise, 503, {"ready": False, "error": "database down"}),
        (lambda: "yes", 503, {"status": "error", "error": "invalid readyz return type"}),
        (_ready_true, 200, {"status": "ok"}),
    ],
)
async def test_readyz_matrix(client_for, readyz, status, body):
    client, _ = client_for(Seen().bot, user_readyz=readyz)
    response = await client.get("/readyz")
    assert response.status_code == status
    assert await response.get_json() == body


async def test_draining_refuses_bot_and_readyz_regardless_of_user_readyz(client_for, logs):
    seen = Seen()
    client, supervisor = client_for(seen.bot, user_readyz=lambda: True)
    await supervisor.drain(trio.current_time())
    response = await client.post("/bot", json={})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "shutting down" in (await response.get_json())["detail"]
    ready = await client.get("/readyz")
    assert (ready.status_code, await ready.get_json()) == (503, {"status": "draining"})
    assert seen.args == []


async def test_at_capacity_bot_gets_503_with_retry_after(client_for, autojump_clock):
    client, _ = client_for(Seen().bot, max_sessions=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: client.post("/bot", json={"sleep": 10}))
        await trio.sleep(1)
        response = await client.post("/bot", json={})
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert "MAX_SESSIONS" in (await response.get_json())["detail"]
        ready = await client.get("/readyz")
        assert (ready.status_code, await ready.get_json()) == (503, {"status": "at capacity"})


async def test_room_token_never_reaches_the_logs(client_for, logs):
    async def chatty(args: Any) -> None:
        from loguru import logger

        logger.info(f"session {args.session_id} in {args.room_url}")

    client, _ = client_for(chatty)
    await client.post(
        "/bot",
        json={},
        headers={
            "X-Daily-Session-Id": "s-tok",
            "X-Daily-Room-Url": "https://x.daily.co/room",
            "X-Daily-Room-Token": SECRET_TOKEN,
            "X-Daily-Transport-Type": "daily",
        },
    )
    assert logs.having("Starting bot session")
    assert SECRET_TOKEN not in logs.text


async def test_an_async_readyz_that_never_answers_is_a_503_at_its_bound(
    autojump_clock, client_for, logs
):
    stuck = []

    async def readyz() -> bool:
        try:
            await asyncio.sleep(10_000)
        except asyncio.CancelledError:
            stuck.append("cancelled")  # it is told, through the bridge's cancel protocol
            raise
        return True

    client, _ = client_for(Seen().bot, user_readyz=readyz)
    began = trio.current_time()
    response = await client.get("/readyz")
    assert trio.current_time() - began == READYZ_TIMEOUT
    assert response.status_code == 503
    assert await response.get_json() == {
        "ready": False,
        "error": f"readyz() did not answer within {READYZ_TIMEOUT:g}s",
    }
    assert stuck == ["cancelled"]
    assert logs.having("Health check function raised exception: readyz() did not answer")


async def test_a_bot_request_without_a_session_id_gets_one_and_says_so(client_for, logs):
    seen = Seen()
    client, _ = client_for(seen.bot)
    assert (await client.post("/bot", json={})).status_code == 200
    generated = seen.args[0].session_id
    assert len(generated) == 36  # a UUID
    start = logs.having("Starting bot session")[0]
    assert start[1] == generated  # its lines carry it, not NONE
    assert f'"session_id": "{generated}", "session_id_generated": true' in start[2]
    assert "session_id_generated" not in logs.having("Stopping bot session")[0][2]
