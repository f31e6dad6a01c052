"""Telephony end to end: real pipecat transports, real sockets on 127.0.0.1, real time.

The bot is ``examples/telephony/bot.py`` (pipecat's ``parse_telephony_websocket``, the
provider's serializer, ``FastAPIWebsocketTransport``, an echo pipeline); the caller speaks each
provider's Media Streams JSON with 20 ms frames of 8 kHz audio (``examples/telephony/protocol``).
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from .conftest import needs_pipecat

EXAMPLE = Path(__file__).parent.parent / "examples" / "telephony"
sys.path.insert(0, str(EXAMPLE))
import protocol  # noqa: E402  (the example's own module, shared with its client)

pytestmark = [needs_pipecat, pytest.mark.slow]

BOT = str(EXAMPLE / "bot.py")
FRAMES = 24  # about half a second of audio


def frame_count(provider: str) -> int:
    # pipecat's output transport sends 40 ms chunks (two of our frames) and keeps a partial
    # chunk until more audio comes, so the echo is checked over whole chunks; Plivo's first
    # frame is consumed by detection (see expected_echo).
    return FRAMES + 1 if provider == "plivo" else FRAMES


class Call:
    """One caller: what it heard, and how the server closed the socket."""

    def __init__(self) -> None:
        self.heard = bytearray()
        self.close_code: int | None = None
        self.heard_enough = trio.Event()
        self.expect = 0

    async def listen(self, ws) -> None:
        try:
            while True:
                audio = protocol.media_payload(await ws.get_message())
                if audio:
                    self.heard.extend(audio)
                    if len(self.heard) >= self.expect:
                        self.heard_enough.set()
        except ConnectionClosed as closed:
            self.close_code = closed.reason.code


def ws_url(served, body: dict | None = None) -> str:
    if not body:
        return served.ws_url
    return served.ws_url + "?body=" + base64.b64encode(json.dumps(body).encode()).decode()


def expected_echo(provider: str, frames: list[bytes]) -> bytes:
    # Plivo sends no message before "start", so pipecat's detection consumes the first frame.
    return b"".join(frames[1:] if provider == "plivo" else frames)


async def speak_and_hang_up(url: str, provider: str, *, session_id: str) -> bytes:
    frames = protocol.test_audio(provider, frame_count(provider))
    call = Call()
    call.expect = len(expected_echo(provider, frames))
    headers = [("X-Daily-Session-Id", session_id)]
    async with open_websocket_url(url, extra_headers=headers) as ws, trio.open_nursery() as n:
        n.start_soon(call.listen, ws)
        for message in protocol.handshake(provider):
            await ws.send_message(message)
        for i, frame in enumerate(frames):
            await ws.send_message(protocol.media(provider, i, frame))
            await trio.sleep(0.02)
        with trio.fail_after(10):
            await call.heard_enough.wait()
        await ws.send_message(protocol.stop(provider))
        n.cancel_scope.cancel()
    return bytes(call.heard)


def assert_session_ended_by_hang_up(logs, session_id: str) -> None:
    ours = [m for lv, sid, m in logs.records if sid == session_id]
    assert ours.count("echo: caller hung up") == 1
    assert ours.index("echo: caller hung up") < ours.index("echo: cleaned up")
    assert ours.index("echo: cleaned up") < ours.index("echo: call ended")
    starts = [m for m in ours if m.startswith("Starting bot session")]
    stops = [m for m in ours if m.startswith("Stopping bot session")]
    assert len(starts) == len(stops) == 1
    assert ours.index("echo: call ended") < ours.index(stops[0])
    assert not [m for m in ours if m.startswith("Bot session stopped")]


@pytest.mark.parametrize("provider", protocol.PROVIDERS)
async def test_provider_call_echoes_audio_and_hang_up_ends_the_bot(serve_bot, logs, provider):
    sid = f"call-{provider}"
    async with serve_bot(BOT) as served:
        heard = await speak_and_hang_up(served.ws_url, provider, session_id=sid)
        with trio.fail_after(10):
            await served.server.supervisor.wait_idle()
    frames = protocol.test_audio(provider, frame_count(provider))
    assert heard == expected_echo(provider, frames)  # every frame, in order, byte for byte
    assert logs.having(f"echo: {provider} call connected")
    assert_session_ended_by_hang_up(logs, sid)


async def test_call_with_silero_vad(serve_bot, logs):
    # VADProcessor runs Silero in pipecat's own ThreadPoolExecutor via run_in_executor.
    async with serve_bot(BOT) as served:
        heard = await speak_and_hang_up(
            ws_url(served, {"vad": True}), "twilio", session_id="call-vad"
        )
        with trio.fail_after(10):
            await served.server.supervisor.wait_idle()
    assert heard == expected_echo("twilio", protocol.test_audio("twilio", FRAMES))
    assert not logs.having("exception")
    assert_session_ended_by_hang_up(logs, "call-vad")


async def test_create_transport_accepts_the_session_arguments(serve_bot, logs):
    # Exotel's serializer needs no credentials, so create_transport() builds it as is.
    async with serve_bot(BOT) as served:
        heard = await speak_and_hang_up(
            ws_url(served, {"transport": "create_transport"}), "exotel", session_id="call-ct"
        )
        with trio.fail_after(10):
            await served.server.supervisor.wait_idle()
    assert heard == expected_echo("exotel", protocol.test_audio("exotel", FRAMES))
    assert logs.having("Using pre-detected telephony provider: exotel")
    assert_session_ended_by_hang_up(logs, "call-ct")


async def test_two_concurrent_calls_stay_independent(serve_bot, logs):
    results: dict[str, bytes] = {}

    async with serve_bot(BOT) as served:

        async def one(provider: str) -> None:
            results[provider] = await speak_and_hang_up(
                served.ws_url, provider, session_id=f"both-{provider}"
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "twilio")
            nursery.start_soon(one, "telnyx")
        with trio.fail_after(10):
            await served.server.supervisor.wait_idle()
    for provider in ("twilio", "telnyx"):
        assert results[provider] == expected_echo(provider, protocol.test_audio(provider, FRAMES))
        assert_session_ended_by_hang_up(logs, f"both-{provider}")


async def test_shutdown_during_a_call_closes_1001_after_the_pipeline_cleaned_up(serve_bot, logs):
    call = Call()
    call.expect = 160 * 5
    async with serve_bot(BOT, SHUTDOWN_TIMEOUT="0") as served:
        url = served.ws_url
        headers = [("X-Daily-Session-Id", "call-shutdown")]
        async with open_websocket_url(url, extra_headers=headers) as ws:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call.listen, ws)
                for message in protocol.handshake("twilio"):
                    await ws.send_message(message)
                for i, frame in enumerate(protocol.test_audio("twilio", 10)):
                    await ws.send_message(protocol.media("twilio", i, frame))
                    await trio.sleep(0.02)
                with trio.fail_after(10):
                    await call.heard_enough.wait()
                served.server.request_shutdown()
    assert call.close_code == 1001
    ours = [m for lv, sid, m in logs.records if sid == "call-shutdown"]
    assert ours.index("echo: cleaned up") < ours.index("Bot session stopped: shutdown")
    assert "echo: caller hung up" not in ours
