"""SmallWebRTC: ``/bot`` waits for the peer, ``/api/offer`` brings it (contract §3.5-3.6, §8.2).

The end-to-end tests run a real aiortc caller against the whole server on 127.0.0.1, with the
bundled example bot (a pipecat echo pipeline built with ``create_transport``). The waiting
rules (timeout, budget, refusals) run in virtual time through Quart-Trio's test client.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import httpx
import pytest
import trio

from pipecat_base.config import load_settings
from pipecat_base.nursery import Outcome

from .conftest import needs_pipecat
from .fakes import ice_sidecar, serve_app

pytestmark = needs_pipecat

EXAMPLE = str(Path(__file__).parent.parent / "examples" / "webrtc" / "bot.py")
WEBRTC = {"X-Daily-Transport-Type": "webrtc"}


def webrtc_client_for(make_supervisor, bot, **env):
    from pipecat_base.app import create_app
    from pipecat_base.transports.webrtc import SmallWebRTC

    settings = load_settings(env)
    supervisor = make_supervisor(bot, **_supervisor_options(env))
    webrtc = SmallWebRTC(supervisor.loop, settings)
    app = create_app(supervisor, settings=settings, webrtc=webrtc)
    return app.test_client(), supervisor, webrtc


def _supervisor_options(env):
    return {"max_sessions": int(env["MAX_SESSIONS"])} if "MAX_SESSIONS" in env else {}


async def never_called(args):
    raise AssertionError("bot() must not run without a connection")


# -- waiting, in virtual time ----------------------------------------------------------------


@pytest.mark.parametrize(("env", "waited"), [({}, 120), ({"WEBRTC_CONNECTION_TIMEOUT": "7"}, 7)])
async def test_no_offer_ends_the_wait_with_504_and_the_stop_line(
    make_supervisor, logs, autojump_clock, env, waited
):
    client, supervisor, _ = webrtc_client_for(make_supervisor, never_called, **env)
    t0 = trio.current_time()
    response = await client.post(
        "/bot", json={"k": "v"}, headers={"X-Daily-Session-Id": "w1", **WEBRTC}
    )
    assert trio.current_time() - t0 == waited
    assert response.status_code == 504
    assert await response.get_json() == {"detail": f"no WebRTC connection arrived within {waited}s"}
    assert [r[2].split(" with metadata")[0] for r in logs.records if r[1] == "w1" and
            r[2].startswith(("Starting", "Stopping"))] == [
        "Starting bot session", "Stopping bot session"]  # fmt: skip
    assert ("INFO", "w1", "Will wait for the webrtc_connection to be set!") in logs.records
    assert (
        "ERROR",
        "w1",
        f"Timeout waiting for WebRTC connection: no offer arrived within {waited}s",
    ) in logs.records
    assert (
        supervisor.metrics.registry.get_sample_value(
            "pipecat_base_sessions_ended_total", {"outcome": Outcome.NO_CONNECTION.value}
        )
        == 1
    )


async def test_the_budget_bounds_the_wait(make_supervisor, logs, autojump_clock):
    client, _, _ = webrtc_client_for(make_supervisor, never_called)
    t0 = trio.current_time()
    response = await client.post(
        "/bot",
        json={},
        headers={"X-Daily-Session-Id": "w2", "X-PCC-Max-Session-Seconds": "30", **WEBRTC},
    )
    assert trio.current_time() - t0 == 30
    assert response.status_code == 200
    assert await response.get_json() == {}
    assert logs.having("maximum session duration reached (30s)")


async def test_a_second_wait_for_the_same_session_is_refused(make_supervisor, autojump_clock):
    client, _, webrtc = webrtc_client_for(make_supervisor, never_called)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(
                client.post, "/bot", json={}, headers={"X-Daily-Session-Id": "dup", **WEBRTC}
            )
        )
        await trio.testing.wait_all_tasks_blocked()
        assert webrtc.pending.find("dup") is not None
        second = await client.post("/bot", json={}, headers={"X-Daily-Session-Id": "dup", **WEBRTC})
        assert second.status_code == 409
        assert await second.get_json() == {
            "detail": "session dup is already waiting for its WebRTC offer"
        }
        # A different session waits independently.
        assert webrtc.pending.find("other") is None
        nursery.cancel_scope.cancel()


async def test_an_offer_nobody_waits_for_is_refused_at_capacity(make_supervisor, autojump_clock):
    async def sleeper(args):
        await asyncio.sleep(100)

    client, _, webrtc = webrtc_client_for(make_supervisor, sleeper, MAX_SESSIONS="1")
    # pipecat's WebRTC side is imported in a worker thread on first use; the virtual clock would
    # run on while it loads, so load it before the clock matters.
    await webrtc.ready()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(client.post, "/bot", json={}))
        await trio.testing.wait_all_tasks_blocked()
        response = await client.post("/api/offer", json={"sdp": "v=0", "type": "offer"})
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("method", "body", "status", "detail"),
    [
        ("POST", b"not json", 400, "request body is not valid JSON"),
        ("POST", b"[]", 400, "request body must be a JSON object, got a JSON array"),
        ("POST", b'{"type": "offer"}', 400, "the offer needs 'sdp' as a string"),
        ("POST", b'{"sdp": "x", "type": "offer", "pcid": 1}', 400, "unknown field(s): pcid"),
        ("POST", b'{"sdp": "v=0", "type": "answer"}', 400, "pipecat refused the offer"),
        ("PATCH", b'{"pc_id": "p"}', 400, "'candidates' (a list)"),
        ("PATCH", b'{"pc_id": "p", "candidates": [{"candidate": 1}]}', 400, "candidate 0 needs"),
        ("PATCH", b'{"pc_id": "nope", "candidates": []}', 404, "no peer connection nope"),
    ],
)
async def test_bad_offers_and_patches_get_a_clear_4xx(
    make_supervisor, method, body, status, detail
):
    client, _, _ = webrtc_client_for(
        make_supervisor, never_called, ICE_CONFIG_URL="http://127.0.0.1:9/ice"
    )
    response = await client.open(
        "/api/offer", method=method, data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status
    assert detail in (await response.get_json())["detail"]


async def test_a_bot_that_ignores_its_closed_peer_is_stopped_after_the_grace(
    make_supervisor, logs, autojump_clock
):
    from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection

    from pipecat_base.bridge.loop import run_aio
    from pipecat_base.nursery import SessionSpec
    from pipecat_base.transports.webrtc import PendingConnection, SmallWebRTC

    async def deaf(args):  # holds the call, never notices the peer closing
        await asyncio.sleep(3600)

    supervisor = make_supervisor(deaf)
    webrtc = SmallWebRTC(supervisor.loop, load_settings({"CLIENT_DISCONNECT_GRACE": "4"}))
    connection = await run_aio(supervisor.loop, _new_connection, SmallWebRTCConnection)
    pending = PendingConnection("peer-1", {}, None)
    pending.deliver(connection)
    handle = await supervisor.start(
        SessionSpec("peer-1", None, connect=lambda h: webrtc.connect(pending, h))
    )
    await trio.sleep(60)  # the bot holds the call as long as the peer is there
    assert handle.outcome is None
    closed_at = trio.current_time()
    await run_aio(supervisor.loop, connection.disconnect)  # the peer connection closes
    assert await handle.wait() == Outcome.CLIENT_DISCONNECTED
    assert trio.current_time() - closed_at == 4
    assert ("WARNING", "peer-1", "Bot session stopped: client disconnected") in logs.records


async def _new_connection(cls):
    return cls()


# -- ICE configuration -------------------------------------------------------------------------


async def test_ice_servers_come_from_the_sidecar(make_supervisor, logs):
    from pipecat_base.transports.webrtc import SmallWebRTC

    turn = {"urls": ["turn:turn.example:3478"], "username": "u", "credential": "ice-secret-77"}
    async with serve_app(ice_sidecar([turn])) as url:
        supervisor = make_supervisor(never_called)
        settings = load_settings({"ICE_CONFIG_URL": f"{url}/ice-servers"})
        webrtc = SmallWebRTC(supervisor.loop, settings)
        (server,) = await webrtc.ice_servers()
    assert (server.urls, server.username, server.credential) == (
        ["turn:turn.example:3478"], "u", "ice-secret-77")  # fmt: skip
    assert "ice-secret-77" not in logs.text


@pytest.mark.parametrize("status", [None, 500])
async def test_ice_failure_falls_back_to_public_stun_and_says_so(make_supervisor, logs, status):
    from pipecat_base.transports.webrtc import FALLBACK_STUN, SmallWebRTC

    supervisor = make_supervisor(never_called)
    async with serve_app(ice_sidecar(status=status or 200)) as url:
        target = f"{url}/ice-servers" if status else "http://127.0.0.1:9/ice-servers"
        webrtc = SmallWebRTC(supervisor.loop, load_settings({"ICE_CONFIG_URL": target}))
        (server,) = await webrtc.ice_servers()
    assert server.urls == FALLBACK_STUN
    (error,) = logs.having("Failed to fetch ICE configuration from")
    assert error[0] == "ERROR"
    assert error[2].startswith(f"Failed to fetch ICE configuration from {target}: ")


# -- end to end, real peers on 127.0.0.1 ------------------------------------------------------


async def _call(url: str, **options):
    from .webrtc_client import call

    return await trio.to_thread.run_sync(lambda: asyncio.run(call(url, **options)))


@pytest.mark.slow
async def test_waiting_bot_gets_the_offer_and_echoes_audio_until_hang_up(serve_bot, logs):
    async with (
        serve_app(ice_sidecar()) as ice,
        serve_bot(EXAMPLE, ICE_CONFIG_URL=f"{ice}/ice-servers") as served,
        httpx.AsyncClient(base_url=served.url, timeout=60) as http,
        trio.open_nursery() as nursery,
    ):
        answered: list[httpx.Response] = []

        async def platform_starts_the_session() -> None:
            headers = {"X-Daily-Session-Id": "rtc-1", "X-PCC-Max-Session-Seconds": "60", **WEBRTC}
            answered.append(await http.post("/bot", json={"greeting": "hi"}, headers=headers))

        nursery.start_soon(platform_starts_the_session)
        with trio.fail_after(10):
            await logs.wait_for("Will wait for the webrtc_connection to be set!")
        with trio.fail_after(40):
            result = await _call(served.url, session_id="rtc-1")
            await logs.wait_for("Stopping bot session")
    (response,) = answered
    assert response.status_code == 200
    assert response.json() == {}
    assert result.patch_status == 200
    assert result.patched_candidates > 0
    assert result.loud_frames >= 25
    assert set(result.answer) == {"sdp", "type", "pc_id"}
    session = [m for _, sid, m in logs.records if sid == "rtc-1"]
    assert "webrtc echo: body={'greeting': 'hi'} flow_config=None" in session
    assert "webrtc echo: caller hung up" in session
    assert "Received the webrtc_connection from Pipecat Cloud, cancelling the timeout" in session
    assert sum(m.startswith("Starting bot session") for m in session) == 1
    assert sum(m.startswith("Stopping bot session") for m in session) == 1
    assert not logs.having("Failed to fetch ICE configuration")


@pytest.mark.slow
async def test_an_offer_without_a_waiting_bot_runs_its_own_session(serve_bot, logs):
    async with (
        serve_app(ice_sidecar()) as ice,
        serve_bot(EXAMPLE, ICE_CONFIG_URL=f"{ice}/ice-servers") as served,
    ):
        with trio.fail_after(40):
            result = await _call(served.url, session_id="direct-1", request_data={"from": "offer"})
            await logs.wait_for("Stopping bot session")
    assert result.loud_frames >= 25
    session = [m for _, sid, m in logs.records if sid == "direct-1"]
    assert "webrtc echo: body={'from': 'offer'} flow_config=None" in session
    assert "Will wait for the webrtc_connection to be set!" not in session


@pytest.mark.slow
async def test_webrtc_libraries_load_only_when_a_call_comes(tmp_path):
    """aiortc and PyAV cost ~30 MiB and 0.4 s: an image serving no WebRTC call never loads them."""
    from .process import server_process

    def loaded(pid: int) -> bool:
        maps = Path(f"/proc/{pid}/maps").read_text()
        return "/aiortc/" in maps or "/av/" in maps or "/av.libs/" in maps

    async with (
        serve_app(ice_sidecar()) as ice,
        server_process(EXAMPLE, env={"ICE_CONFIG_URL": f"{ice}/ice-servers"}) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        pid = server.process.pid
        assert (await http.get("/livez")).status_code == 200
        assert not loaded(pid)
        response = await http.patch("/api/offer", json={"pc_id": "none", "candidates": []})
        assert response.status_code == 404  # served: the handler exists now
        assert loaded(pid)
        await server.terminate()
