"""Plain WebSocket sessions on ``/ws``: pipecat-examples' ``websocket`` bot, unmodified.

The bot (``tests/bots/plain_ws_bot.py``) builds its transport with pipecat's
``create_transport`` and ``"websocket"`` params (protobuf frames), which it does only when the
session's ``transport_type`` is ``"websocket"``. The client speaks pipecat's protobuf frames
over a real socket on 127.0.0.1.
"""

from __future__ import annotations

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from pipecat_base.sessions import inputs

from .conftest import needs_pipecat
from .process import BOTS

BOT = str(BOTS / "plain_ws_bot.py")
FRAME_BYTES = 640  # 20 ms of 16 kHz 16-bit mono
FRAMES = 24  # pipecat sends 40 ms chunks and keeps a partial one until more comes


@pytest.mark.parametrize(
    ("header", "query", "plain"),
    [
        ("websocket", None, True),
        (" WebSocket ", None, True),
        (None, "websocket", True),
        ("webrtc", None, False),
        (None, "twilio", False),
        (None, None, False),
    ],
)
def test_a_session_declares_itself_plain_by_header_or_query(header, query, plain):
    assert inputs.declares_plain_websocket(header, query) is plain


def audio_of(index: int) -> bytes:
    """Frame ``index``'s audio: distinct per frame, so the echo is checked byte for byte."""
    return bytes((index * 7 + k) % 256 for k in range(FRAME_BYTES))


def audio_frame(index: int) -> bytes:
    from pipecat.frames.protobufs import frames_pb2

    frame = frames_pb2.Frame(
        audio=frames_pb2.AudioRawFrame(audio=audio_of(index), sample_rate=16000, num_channels=1)
    )
    return frame.SerializeToString()


def heard_audio(message: bytes | str) -> bytes:
    from pipecat.frames.protobufs import frames_pb2

    assert isinstance(message, bytes), "pipecat's protobuf serializer sends binary frames"
    frame = frames_pb2.Frame.FromString(message)
    return frame.audio.audio if frame.WhichOneof("frame") == "audio" else b""


async def talk(url: str, headers: list[tuple[str, str]]) -> bytes:
    """Send FRAMES protobuf audio frames in real time, collect the echo, hang up."""
    sent = b"".join(audio_of(i) for i in range(FRAMES))
    heard = bytearray()
    enough = trio.Event()

    async def listen(ws) -> None:
        try:
            while True:
                heard.extend(heard_audio(await ws.get_message()))
                if len(heard) >= len(sent):
                    enough.set()
        except ConnectionClosed:
            pass

    async with open_websocket_url(url, extra_headers=headers) as ws, trio.open_nursery() as n:
        n.start_soon(listen, ws)
        for i in range(FRAMES):
            await ws.send_message(audio_frame(i))
            await trio.sleep(0.02)
        with trio.fail_after(10):
            await enough.wait()
        n.cancel_scope.cancel()
    assert bytes(heard[: len(sent)]) == sent
    return bytes(heard)


@needs_pipecat
@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "suffix", "headers"),
    [
        ("first frame binary", "", []),
        ("header", "", [(inputs.TRANSPORT_TYPE_HEADER, "websocket")]),
        ("query parameter", "?transport=websocket", []),
    ],
)
async def test_a_protobuf_client_is_served_as_a_plain_websocket_session(
    serve_bot, logs, how, suffix, headers
):
    async with serve_bot(BOT) as served:
        await talk(served.ws_url + suffix, [("X-Daily-Session-Id", "plain-1"), *headers])
        with trio.fail_after(10):
            await logs.wait_for("plain websocket bot: ended")
    ours = [m for _, sid, m in logs.records if sid == "plain-1"]
    assert "plain websocket bot: transport_type=websocket" in ours, how
    assert "plain websocket bot: client left" in ours


@needs_pipecat
@pytest.mark.slow
async def test_a_telephony_client_stays_undeclared_for_pipecats_detection(serve_bot, logs):
    # Twilio opens with a JSON text message: the session is not marked plain, and pipecat's
    # create_transport goes looking for the provider (this bot has no telephony params).
    async with serve_bot(BOT) as served:
        headers = [("X-Daily-Session-Id", "tel-1")]
        async with open_websocket_url(served.ws_url, extra_headers=headers) as ws:
            await ws.send_message('{"event": "connected", "protocol": "Call", "version": "1"}')
            with trio.fail_after(10):
                await logs.wait_for("plain websocket bot: transport_type=")
    ours = [m for _, sid, m in logs.records if sid == "tel-1"]
    assert "plain websocket bot: transport_type=None" in ours


@needs_pipecat
@pytest.mark.slow
async def test_a_silent_client_starts_undeclared_after_the_first_frame_wait(serve_bot, logs):
    # A client that waits for the bot to speak first: the session starts without a verdict
    # once FIRST_FRAME_WAIT has passed, not never.
    from pipecat_base.routes.websocket import FIRST_FRAME_WAIT

    async with serve_bot(BOT) as served:
        headers = [("X-Daily-Session-Id", "quiet-1")]
        async with open_websocket_url(served.ws_url, extra_headers=headers):
            connected = trio.current_time()
            with trio.fail_after(FIRST_FRAME_WAIT + 5):
                await logs.wait_for("plain websocket bot: transport_type=")
            waited = trio.current_time() - connected
    ours = [m for _, sid, m in logs.records if sid == "quiet-1"]
    assert "plain websocket bot: transport_type=None" in ours
    assert waited >= FIRST_FRAME_WAIT * 0.9
