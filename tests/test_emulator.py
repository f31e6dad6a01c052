"""``pipecat-base cloud``: the local platform emulator in front of a real server, as a user runs
it (a child process that starts the server itself), on 127.0.0.1."""

from __future__ import annotations

import re
import sys
from typing import Any

import httpx
import pytest
import trio
from quart.testing import WebsocketResponseError
from trio_websocket import open_websocket_url

from .conftest import needs_pipecat
from .process import BOTS, server_process

EMULATOR_READY = re.compile(rb"Pipecat Cloud emulator for agent 'my-agent' on (http://[\d.]+:\d+)")


async def wait_for_url(emulator) -> str:
    with trio.fail_after(60):
        while not (match := EMULATOR_READY.search(emulator.stderr)):
            await emulator._changed.wait()
    return match.group(1).decode()


@needs_pipecat
@pytest.mark.slow
async def test_start_session_api_budget_and_drain_through_the_emulator():
    argv = [
        sys.executable, "-m", "pipecat_base", "cloud", "run", str(BOTS / "cloud_bot.py"),
        "--port", "0", "--max-session-seconds", "2",
    ]  # fmt: skip
    async with server_process(argv=argv, wait_ready=False) as emulator:
        url = await wait_for_url(emulator)
        api = f"{url}/v1/public/my-agent"
        async with httpx.AsyncClient(timeout=30) as client:
            started = await client.post(f"{api}/start", json={"body": {"lang": "fr"}})
            assert started.status_code == 200
            first = started.json()["sessionId"]
            second = (await client.post(f"{api}/start", json={})).json()["sessionId"]
            assert first != second

            # The Session API reaches the bot's own route with the session's id added.
            with trio.fail_after(20):
                await emulator.wait_for_output(f"{first} - cloud bot running".encode())
            state = await client.get(f"{api}/sessions/{first}/state", params={"k": "v"})
            assert state.json() == {
                "session_id": first, "running": True, "body": {"lang": "fr"}, "query": {"k": "v"}
            }  # fmt: skip
            ws_url = api.replace("http://", "ws://") + f"/sessions/{first}/talk"
            async with open_websocket_url(ws_url) as ws:
                await ws.send_message("hello")
                assert await ws.get_message() == f"{first} heard hello"
            finished = await client.post(
                f"{api}/sessions/{first}/finish", json={"reason": "test done"}
            )
            assert finished.json() == {"finished": first, "said": {"reason": "test done"}}

            # Bad starts are refused with what was wrong; unknown agents are not found.
            assert (await client.post(f"{api}/start", content=b"{nope")).status_code == 400
            daily = await client.post(f"{api}/start", json={"createDailyRoom": True})
            assert daily.status_code == 400
            assert "cannot create Daily rooms" in daily.json()["error"]
            other = await client.post(f"{url}/v1/public/other/start", json={})
            assert other.status_code == 404

            # The second session never finishes: --max-session-seconds ends it.
            with trio.fail_after(20):
                ended = await client.get(
                    f"{url}/v1/emulator/sessions/{second}", params={"wait": "ended"}
                )
            assert ended.json() == {"status": "ended", "http_status": 200, "detail": {}}
            sessions = (await client.get(f"{url}/v1/emulator/sessions")).json()
            assert sessions[first] == {"status": "ended", "http_status": 200, "detail": {}}
            assert sessions[second]["http_status"] == 200

            drained = await client.post(f"{url}/v1/emulator/drain")
            assert drained.status_code == 200
            assert drained.json()["exit_code"] == 0
        with trio.fail_after(20):
            assert await emulator.wait_exit() == 0
    text = emulator.text
    assert f"{second} - Bot session stopped: maximum session duration reached (2s)" in text
    assert "No session budget supplied" not in text
    assert "Server exited with code 0" in text


async def refused_status(test_client: Any, path: str) -> int:
    """The HTTP status a WebSocket handshake was answered with instead of being accepted."""
    with pytest.raises(Exception) as raised:  # noqa: PT011 (unwrapped below)
        async with test_client.websocket(path) as ws:
            await ws.receive()
    exc = raised.value
    while getattr(exc, "exceptions", None):  # the test client's nursery wraps it
        exc = exc.exceptions[0]
    assert isinstance(exc, WebsocketResponseError), repr(exc)
    return exc.response.status_code


async def test_drain_command_reports_a_server_it_cannot_drain():
    from pipecat_base.emulator import create_emulator_app

    async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
        app = create_emulator_app("a", "http://127.0.0.1:9", client, nursery)
        test_client = app.test_client()
        response = await test_client.post("/v1/emulator/drain")
        assert response.status_code == 409
        unknown = await test_client.get("/v1/emulator/sessions/nope")
        assert unknown.status_code == 404
        proxied = await test_client.get("/v1/public/a/sessions/s1/state")
        assert proxied.status_code == 502  # nothing listens on port 9
        assert "the server did not answer" in (await proxied.get_json())["error"]
        for path, status in (("/v1/public/other/sessions/s1/talk", 404),
                             ("/v1/public/a/sessions/s1/talk", 502)):  # fmt: skip
            assert await refused_status(test_client, path) == status
        nursery.cancel_scope.cancel()


def test_cloud_drain_finds_the_last_runs_url(tmp_path, monkeypatch):
    from pipecat_base import emulator

    monkeypatch.setattr(emulator.tempfile, "gettempdir", lambda: str(tmp_path))
    assert emulator.last_url() == "http://127.0.0.1:7860"  # no run yet
    emulator.remember_url("http://127.0.0.1:45678")
    assert emulator.last_url() == "http://127.0.0.1:45678"


@pytest.mark.slow
async def test_a_killed_emulators_server_dies_with_it():
    argv = [sys.executable, "-m", "pipecat_base", "cloud", "run", str(BOTS / "cloud_bot.py"),
            "--port", "0"]  # fmt: skip
    async with server_process(argv=argv, wait_ready=False) as emulator:
        await wait_for_url(emulator)
        emulator.process.kill()  # no drain, no cleanup of its own
        await emulator.process.wait()
    # server_process asserts that nothing it started is left: the server got SIGTERM from the
    # kernel when its parent died, and drained.


@pytest.mark.slow
async def test_cloud_run_with_a_bot_that_cannot_load_says_why(tmp_path):
    bot = tmp_path / "bot.py"
    bot.write_text("import not_a_module_xyz\n")
    argv = [sys.executable, "-m", "pipecat_base", "cloud", "run", str(bot), "--port", "0"]
    async with server_process(argv=argv, wait_ready=False) as emulator:
        with trio.fail_after(60):
            assert await emulator.wait_exit() == 1
    assert "pipecat-base: cannot load the bot: ModuleNotFoundError" in emulator.text
    assert emulator.text.rstrip().splitlines()[-1] == (
        "pipecat-base cloud: the server exited with code 1 before serving: see its output above"
    )
