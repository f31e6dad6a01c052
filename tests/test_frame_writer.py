"""`frame_writer` and the bridge's use of it: a bot's frames written from the asyncio side
without waking the bridge's pump, in order and whole even when the kernel's buffer is full.
Real Hypercorn and sockets on 127.0.0.1 where the server is involved; the bridge's contract
with a writer is checked with a recording writer."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.config import Config
from trio_websocket import open_websocket_url
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import Request, TextMessage
from wsproto.extensions import PerMessageDeflate

from pipecat_base._speedups.frame_writer import FrameWriter
from pipecat_base.bridge.asgi import AsgiBridge, open_asgi_bridge
from pipecat_base.bridge.loop import open_bridge_loop, wait_task
from pipecat_base.transports.session_api import run_asgi_on_loop

from .hypercorn_serving import LEAN, STOCK, agree_to_lifespan, open_tcp, serving
from .steps import counting_steps

BIG = 256 << 10  # a frame of this size fills a loopback socket's buffer within a few


def _text(n: int, size: int = 8) -> str:
    return f"{n:08d}".ljust(size, chr(ord("a") + n % 26))


async def _on_loop(loop: Any, coro: Any) -> Any:
    task = loop.create_task(coro)
    await wait_task(task, cancel_grace=1)
    return task.result()


def _writer_app(seen: list[FrameWriter | None], then: Any = None) -> Any:
    """A WebSocket app that records `FrameWriter.of` its ``send`` and runs ``then``."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await agree_to_lifespan(receive, send)
            return
        seen.append(FrameWriter.of(send))
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        if then is not None:
            await then(seen[-1], receive, send)
        while (await receive())["type"] == "websocket.receive":
            pass

    return app


@pytest.mark.parametrize(("classes", "expected"), [(LEAN, FrameWriter), (STOCK, type(None))])
async def test_a_writer_exists_only_for_the_lean_servers_websockets(classes, expected):
    seen: list[FrameWriter | None] = []
    async with serving(classes, Config(), _writer_app(seen)) as url:
        async with open_websocket_url(url):
            pass
    assert [type(w) for w in seen] == [expected]

    async def not_hypercorns(message: dict) -> None:
        pass

    assert FrameWriter.of(not_hypercorns) is None


async def test_a_frame_goes_out_at_once_unless_a_send_holds_the_lock_or_the_socket_closed():
    outcomes: list[bytes | None] = []

    async def then(writer: FrameWriter, receive: Any, send: Any) -> None:
        outcomes.append(writer.write({"type": "websocket.send", "text": "at once"}))
        async with writer._server.send_lock:  # another send under way: Hypercorn's way
            outcomes.append(writer.write({"type": "websocket.send", "text": "held"}))
        outcomes.append(writer.write({"type": "websocket.send", "bytes": b"\x00bytes"}))

        def failing(payload: Any) -> bytes:
            raise ValueError("framing failed")

        writer._frame = failing  # type: ignore[method-assign]
        with pytest.raises(ValueError, match="framing"):
            writer.write({"type": "websocket.send", "text": "lost"})
        del writer._frame
        # The failure gave the send lock back.
        outcomes.append(writer.write({"type": "websocket.send", "text": "after a failure"}))
        # A message Hypercorn rejects is left to it (it raises).
        outcomes.append(writer.write({"type": "websocket.send", "text": None}))
        await send({"type": "websocket.close", "code": 1000})
        outcomes.append(writer.write({"type": "websocket.send", "text": "after close"}))

    async with serving(LEAN, Config(), _writer_app([], then)) as url:
        async with open_websocket_url(url) as ws:
            assert await ws.get_message() == "at once"
            assert await ws.get_message() == b"\x00bytes"
            assert await ws.get_message() == "after a failure"
            with pytest.raises(Exception, match="1000"):
                await ws.get_message()
    assert outcomes == [b"", None, b"", b"", None, None]


async def test_frames_beyond_the_socket_buffer_arrive_whole_and_in_order(monkeypatch):
    """The bot sends faster than the client reads: the frame the kernel takes only part of is
    finished by the pump, everything after queues behind it, nothing is cut or reordered."""
    count = 48
    finished: list[int] = []
    finish = FrameWriter.finish

    async def counted(self: FrameWriter, rest: bytes) -> None:
        finished.append(len(rest))
        await finish(self, rest)

    monkeypatch.setattr(FrameWriter, "finish", counted)
    async with open_bridge_loop() as loop:

        async def bot(bridge: AsgiBridge) -> None:
            for n in range(count):
                await bridge.send({"type": "websocket.send", "text": _text(n, BIG)})

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "websocket":
                await agree_to_lifespan(receive, send)
                return
            await receive()
            await send({"type": "websocket.accept"})
            async with open_asgi_bridge(loop, receive, send, FrameWriter.of(send)) as bridge:
                await _on_loop(loop, bot(bridge))

        async with serving(LEAN, Config(), app) as url:
            async with open_websocket_url(url, max_message_size=2 * BIG) as ws:
                with trio.fail_after(20):
                    received = [await ws.get_message() for _ in range(count)]
    assert received == [_text(n, BIG) for n in range(count)]
    assert finished, "no frame was left half sent: the test did not fill the buffer"


@pytest.mark.usefixtures("all_speedups")
async def test_a_bot_apps_websocket_route_writes_its_frames_without_the_pump():
    frames = 20

    async def asyncio_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while (event := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": event["text"]})

    async with open_bridge_loop() as loop:

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "websocket":
                await agree_to_lifespan(receive, send)
                return
            await run_asgi_on_loop(loop, asyncio_echo, scope, receive, send, cancel_grace=1)

        async with serving(LEAN, Config(), app) as url, open_websocket_url(url) as ws:
            with counting_steps("._pump_out") as steps:
                for n in range(frames):
                    await ws.send_message(_text(n))
                    assert await ws.get_message() == _text(n)
    assert steps.counts["._pump_out"] == 0


class _RecordingWriter:
    """A writer that leaves ``rests`` (one per write, then b"": all sent) and records."""

    def __init__(self, log: list[tuple[str, Any]], rests: list[bytes | None]) -> None:
        self.log = log
        self.rests = rests

    def write(self, message: dict) -> bytes | None:
        self.log.append(("write", message["text"]))
        return self.rests.pop(0) if self.rests else b""

    async def finish(self, rest: bytes) -> None:
        self.log.append(("finish", rest))


def _message(text: str) -> dict:
    return {"type": "websocket.send", "text": text}


async def test_the_bridge_writes_when_nothing_is_queued_and_queues_behind_a_frames_rest():
    log: list[tuple[str, Any]] = []
    writer = _RecordingWriter(log, [b"", b"rest of 2", None])

    async def send(message: dict) -> None:
        log.append(("send", message.get("text", message["type"])))

    async with open_bridge_loop() as loop:
        async with open_asgi_bridge(loop, _never, send, writer) as bridge:  # type: ignore[arg-type]

            async def bot() -> None:
                await bridge.send(_message("1"))  # written
                await bridge.send(_message("2"))  # written in part: its rest is queued
                await bridge.send(_message("3"))  # behind the rest: not offered to the writer
                await bridge.send({"type": "websocket.close"})  # never offered

            await _on_loop(loop, bot())
            await trio.testing.wait_all_tasks_blocked()
            log.append(("--", "all sent"))
            await _on_loop(loop, bridge.send(_message("4")))  # nothing queued: offered,
            await trio.testing.wait_all_tasks_blocked()  # declined (None), sent by the pump
            await _on_loop(loop, bridge.send(_message("5")))
        await _on_loop(loop, _sending_after_the_end(bridge))
    assert log == [
        ("write", "1"),
        ("write", "2"),
        ("finish", b"rest of 2"),
        ("send", "3"),
        ("send", "websocket.close"),
        ("--", "all sent"),
        ("write", "4"),
        ("send", "4"),
        ("write", "5"),
    ]


async def _sending_after_the_end(bridge: AsgiBridge) -> None:
    with pytest.raises(OSError, match="closed"):
        await bridge.send(_message("late"))


async def _never() -> dict:
    await trio.sleep_forever()
    raise AssertionError


async def test_a_frames_rest_is_finished_even_when_the_pump_is_cancelled_before_it():
    log: list[tuple[str, Any]] = []
    writer = _RecordingWriter(log, [b"rest"])

    async def send(message: dict) -> None:
        log.append(("send", message["text"]))

    async with open_bridge_loop() as loop:
        bridge = AsgiBridge(loop, writer)  # type: ignore[arg-type]
        await _on_loop(loop, bridge.send(_message("1")))
        with trio.CancelScope() as scope:
            scope.cancel()
            await bridge._pump_out(send)
    # The frame's start is on the wire: its end must follow (the send lock waits for it).
    assert log == [("write", "1"), ("finish", b"rest")]


async def test_with_permessage_deflate_the_writer_sends_wsprotos_compressed_frame():
    text = "squeezed " * 20
    outcomes: list[bytes | None] = []

    async def then(writer: FrameWriter, receive: Any, send: Any) -> None:
        outcomes.append(writer.write({"type": "websocket.send", "text": text}))

    async with serving(LEAN, Config(), _writer_app([], then)) as url:
        stream = await open_tcp(url)
        client = WSConnection(ConnectionType.CLIENT)
        offer = Request(host="test", target="/", extensions=[PerMessageDeflate()])
        await stream.send_all(client.send(offer))
        received, messages = b"", []
        while not messages:
            data = await stream.receive_some()
            received += data
            client.receive_data(data)
            messages += [e.data for e in client.events() if isinstance(e, TextMessage)]
        await stream.aclose()
    assert outcomes == [b""]
    assert messages == [text]
    frame = received.split(b"\r\n\r\n", 1)[1]
    assert frame[0] == 0xC1  # final, compressed (RSV1), text: written by wsproto
    assert len(frame) < len(text)
