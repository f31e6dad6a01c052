"""Session API: the bot's routes on pipecatcloud_system.app, served beside ours (issue 7/8)."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from .conftest import needs_pipecat
from .process import BOTS, server_process

pytestmark = pytest.mark.slow

BOT = BOTS / "session_api_bot.py"


async def wait_until(client: httpx.AsyncClient, url: str, predicate) -> dict:
    with trio.fail_after(20):
        while True:  # the route is the only window onto the session's state
            body = (await client.get(url)).json()
            if predicate(body):
                return body
            await trio.sleep(0.05)


@needs_pipecat
async def test_routes_read_and_feed_the_session_and_answer_during_a_drain(tmp_path):
    lifespan_log = tmp_path / "lifespan"
    env = {"LIFESPAN_LOG": str(lifespan_log), "SHUTDOWN_TIMEOUT": "30"}
    async with server_process(BOT, env=env) as server, httpx.AsyncClient(timeout=30) as client:
        url = server.url
        assert lifespan_log.read_text() == "start\n"
        async with trio.open_nursery() as nursery:
            bot_response: list[int] = []

            async def session() -> None:
                response = await client.post(
                    f"{url}/bot", json={}, headers={"X-Daily-Session-Id": "api"}
                )
                bot_response.append(response.status_code)

            nursery.start_soon(session)
            await wait_until(client, f"{url}/state", lambda s: s["running"])
            for text in ("hello", "world"):
                assert (await client.post(f"{url}/say", json={"text": text})).json() == {
                    "queued": True
                }
            await wait_until(client, f"{url}/state", lambda s: s["heard"] == ["hello", "world"])

            server.signal()  # drain: the session keeps running, and so do its routes
            await server.wait_for_output(b"Shutting down: no new sessions")
            assert (await client.get(f"{url}/readyz")).json() == {"status": "draining"}
            assert (await client.post(f"{url}/bot", json={})).status_code == 503
            assert (await client.get(f"{url}/state")).json()["heard"] == ["hello", "world"]
            await client.post(f"{url}/say", json={"text": "after SIGTERM"})
            await wait_until(client, f"{url}/state", lambda s: "after SIGTERM" in s["heard"])
            assert lifespan_log.read_text() == "start\n"  # not stopped while a session runs
            await client.post(f"{url}/say", json={"text": "bye"})  # the bot ends its pipeline
        assert bot_response == [200]
        with trio.fail_after(20):
            assert await server.wait_exit() == 0
    assert lifespan_log.read_text() == "start\nstop\n"
    text = server.text
    assert text.index("session api bot: pipeline ended") < text.index("Server stopped")


@needs_pipecat
async def test_our_routes_win_and_the_bots_are_reported_once(tmp_path):
    env = {"LIFESPAN_LOG": str(tmp_path / "lifespan")}
    async with server_process(BOT, env=env) as server, httpx.AsyncClient(timeout=30) as client:
        assert (await client.get(f"{server.url}/readyz")).json() == {"status": "ok"}
        capabilities = await client.get(f"{server.url}/pcc/capabilities")
        assert json.loads(capabilities.content)["version"] == 1
        missing = await client.get(f"{server.url}/nothing-here")
        assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
        server.signal()
    for path in ("/readyz", "/pcc/capabilities"):
        assert server.text.count(f"pipecatcloud_system.app defines {path}, which the server") == 1


@needs_pipecat
async def test_a_user_websocket_route_works_through_the_bridge(tmp_path):
    env = {"LIFESPAN_LOG": str(tmp_path / "lifespan")}
    async with server_process(BOT, env=env) as server:
        url = server.url.replace("http://", "ws://") + "/echo"
        async with open_websocket_url(url) as ws:
            for text in ("one", "two"):
                await ws.send_message(text)
                with trio.fail_after(10):
                    assert await ws.get_message() == f"echo: {text}"
        server.signal()


async def test_responses_ask_clients_to_close_while_draining(serve_bot):
    # An idle keep-alive connection would otherwise hold Hypercorn's shutdown for its graceful
    # timeout after the last session ended (found by the drain benchmark).
    async with serve_bot(str(BOTS / "raw_ws_bot_iter.py")) as served:
        async with httpx.AsyncClient() as client:
            before = await client.get(f"{served.url}/livez")
            await served.server.supervisor.drain(trio.current_time())
            during = await client.get(f"{served.url}/livez")
            user_route = await client.get(f"{served.url}/no-such-user-route")
    assert before.headers.get("connection") != "close"
    assert during.headers["connection"] == "close"
    assert user_route.headers["connection"] == "close"
