"""`tcp_server`: Hypercorn's connection server with fewer Trio steps per WebSocket frame, and
otherwise Hypercorn's behaviour. Real Hypercorn, real sockets on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import struct
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.protocol.h11 import H11Protocol
from trio_websocket import open_websocket_url

from pipecat_base._speedups import tcp_server
from pipecat_base._speedups.frame_writer import FrameWriter
from pipecat_base.bridge.asgi import open_asgi_bridge
from pipecat_base.bridge.loop import open_bridge_loop, wait_task

from .hypercorn_serving import LEAN, STOCK, agree_to_lifespan, open_tcp, serving
from .steps import counting_steps

FRAMES = 50


SLOW_SECONDS = 10


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI WebSocket echo, a plain HTTP 200 (after `SLOW_SECONDS` on ``/slow``), and a
    lifespan that just agrees."""
    if scope["type"] == "http":
        if scope["path"] == "/slow":
            await trio.sleep(SLOW_SECONDS)
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})
        return
    if scope["type"] == "lifespan":
        await agree_to_lifespan(receive, send)
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while (event := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": event["text"]})


def bridged_echo_app(loop: Any) -> Any:
    """`echo_app`'s WebSocket echo run on the asyncio side of an `asgi_bridge`, as /ws bots are
    (with a `FrameWriter` when the server is lean)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await echo_app(scope, receive, send)
            return
        async with open_asgi_bridge(loop, receive, send, FrameWriter.of(send)) as bridge:
            await wait_task(
                loop.create_task(echo_app(scope, bridge.receive, bridge.send)), cancel_grace=1
            )

    return app


async def steps_per_echo(classes: tuple[type, type]) -> tuple[int, int]:
    """Steps of the connection's reader task and of its app task over `FRAMES` echoes, one
    frame in flight at a time (as a call's inbound audio arrives)."""
    async with serving(classes, Config(), echo_app) as url, open_websocket_url(url) as ws:
        await ws.send_message("warm-up")
        await ws.get_message()
        with counting_steps("._run_handler", "._handle") as steps:
            for n in range(FRAMES):
                await ws.send_message(f"frame {n}")
                assert await ws.get_message() == f"frame {n}"
    return steps.counts["._run_handler"], steps.counts["._handle"]


@pytest.mark.usefixtures("all_speedups")
async def test_each_frame_costs_one_step_in_each_direction():
    stock_reader, stock_app = await steps_per_echo(STOCK)
    lean_reader, lean_app = await steps_per_echo(LEAN)
    # Stock: the reader wakes for the frame and yields again handing it to the app; the app
    # wakes for it, yields taking the send lock, and yields after the socket send.
    assert (stock_reader, stock_app) == (2 * FRAMES, 3 * FRAMES)
    # Lean: no fairness round after handing over the frame, after taking the free lock, nor
    # after a send the kernel took at once.
    assert (lean_reader, lean_app) == (FRAMES, FRAMES)


async def bridged_steps_per_echo(classes: tuple[type, type]) -> tuple[int, int]:
    """Steps of the reader task and of the bridge's inbound pump over `FRAMES` echoes of
    `bridged_echo_app`."""
    async with open_bridge_loop() as loop:
        async with serving(classes, Config(), bridged_echo_app(loop)) as url:
            async with open_websocket_url(url) as ws:
                await ws.send_message("warm-up")
                await ws.get_message()
                with counting_steps("._run_handler", "._pump_in", "._pump_out") as steps:
                    for n in range(FRAMES):
                        await ws.send_message(f"frame {n}")
                        assert await ws.get_message() == f"frame {n}"
    return steps.counts["._run_handler"], steps.counts["._pump_in"], steps.counts["._pump_out"]


@pytest.mark.usefixtures("all_speedups")
async def test_a_bridged_app_gets_each_frame_from_the_reader_without_a_pump():
    stock = await bridged_steps_per_echo(STOCK)
    lean = await bridged_steps_per_echo(LEAN)
    # Stock: the reader hands each frame to the app's channel (and yields), the bridge's
    # inbound pump wakes to take it across; the outbound pump wakes for the echo, yields
    # taking the send lock and after the send.
    assert stock == (2 * FRAMES, FRAMES, 3 * FRAMES)
    # Lean: the reader puts each frame on the asyncio side itself (there is no inbound pump),
    # and the asyncio side writes the echo itself: the outbound pump never wakes.
    assert lean == (FRAMES, 0, 0)


async def h11_rounds_per_echo(classes: tuple[type, type], monkeypatch) -> int:
    """How often Hypercorn's h11 layer handled events over `FRAMES` echoes of `echo_app`."""
    rounds = 0
    handle_events = H11Protocol._handle_events

    async def counted(self: H11Protocol) -> None:
        nonlocal rounds
        rounds += 1
        await handle_events(self)

    async with serving(classes, Config(), echo_app) as url, open_websocket_url(url) as ws:
        await ws.send_message("warm-up")
        await ws.get_message()
        with monkeypatch.context() as patch:
            patch.setattr(H11Protocol, "_handle_events", counted)
            for n in range(FRAMES):
                await ws.send_message(f"frame {n}")
                assert await ws.get_message() == f"frame {n}"
    return rounds


async def test_a_websockets_frames_go_from_the_reader_to_its_stream_past_the_h11_layer(
    monkeypatch,
):
    # Stock: every read goes through h11's event loop, which only passes the bytes on.
    assert await h11_rounds_per_echo(STOCK, monkeypatch) == FRAMES
    assert await h11_rounds_per_echo(LEAN, monkeypatch) == 0


@pytest.mark.parametrize("read_timeout", [None, 2])
@pytest.mark.parametrize("classes", [STOCK, LEAN], ids=["stock", "lean"])
async def test_a_read_timeout_stops_reading_as_in_hypercorn(autojump_clock, classes, read_timeout):
    config = Config()
    config.read_timeout = read_timeout
    config.keep_alive_timeout = 60
    async with serving(classes, config, echo_app) as url:
        stream = await open_tcp(url)
        await trio.sleep(3)
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        try:
            reply = await stream.receive_some()
        except trio.BrokenResourceError:  # closed with the request unread: a reset
            reply = b""
        if read_timeout is None:
            assert reply.startswith(b"HTTP/1.1 200")
        else:
            # Reading stopped at 2 s. Hypercorn's idle task then holds the connection open until
            # the keep-alive timeout; the lean one ends with the reading, and the request sent
            # at 3 s finds the connection closed.
            assert reply == b""
            assert trio.current_time() == (60 if classes is STOCK else 3)
        await stream.aclose()


@pytest.mark.parametrize("classes", [STOCK, LEAN], ids=["stock", "lean"])
async def test_a_client_closing_at_once_ends_the_connection(autojump_clock, classes):
    config = Config()
    config.keep_alive_timeout = 60
    async with serving(classes, config, echo_app) as url:
        with counting_steps("._run_handler") as tasks:
            stream = await open_tcp(url)
            await stream.aclose()
            await tasks.exited["._run_handler"].wait()
            # Hypercorn's idle task holds a connection that never sent a request until the
            # keep-alive timeout; the lean one ends with the connection.
            assert trio.current_time() == (60 if classes is STOCK else 0)
        # Reading stopped at the EOF: a handful of steps (9 with Hypercorn 0.18), not a loop
        # over empty reads.
        assert tasks.counts["._run_handler"] <= 12


# -- keep-alive connections: the idle timeout (`IdleTimer`) ---------------------------------

KEEP_ALIVE = 5


async def request(stream: trio.SocketStream, path: str = "/") -> None:
    """One keep-alive ``GET`` and its whole response (`echo_app` answers ``ok``)."""
    await stream.send_all(f"GET {path} HTTP/1.1\r\nhost: test\r\n\r\n".encode())
    reply = b""
    while not reply.endswith(b"\r\n\r\nok"):
        data = await stream.receive_some()
        assert data, f"closed before the answer to {path}"
        reply += data
    assert reply.startswith(b"HTTP/1.1 200")


async def closed_at(stream: trio.SocketStream) -> float:
    """When the server closes the connection (it sends nothing more before that)."""
    try:
        assert await stream.receive_some() == b""
    except trio.BrokenResourceError:
        pass
    return trio.current_time()


def keep_alive_config() -> Config:
    config = Config()
    config.keep_alive_timeout = KEEP_ALIVE
    return config


@pytest.mark.parametrize("classes", [STOCK, LEAN], ids=["stock", "lean"])
async def test_an_idle_connection_closes_a_keep_alive_timeout_after_its_last_answer(
    autojump_clock, classes
):
    async with serving(classes, keep_alive_config(), echo_app) as url:
        stream = await open_tcp(url)
        await trio.sleep(3)  # idle, but not for long enough
        await request(stream)
        await trio.sleep(4)
        await request(stream)  # at 7: the timeout starts over
        assert await closed_at(stream) == 7 + KEEP_ALIVE


@pytest.mark.parametrize("classes", [STOCK, LEAN], ids=["stock", "lean"])
async def test_a_request_longer_than_the_keep_alive_timeout_is_answered(autojump_clock, classes):
    async with serving(classes, keep_alive_config(), echo_app) as url:
        stream = await open_tcp(url)
        await request(stream, "/slow")
        assert trio.current_time() == SLOW_SECONDS
        assert await closed_at(stream) == SLOW_SECONDS + KEEP_ALIVE


@pytest.mark.parametrize("classes", [STOCK, LEAN], ids=["stock", "lean"])
async def test_shutdown_closes_idle_connections_at_once_and_busy_ones_after_their_answer(
    autojump_clock, classes
):
    stop = trio.Event()
    config = keep_alive_config()
    config.graceful_timeout = 2 * SLOW_SECONDS  # Hypercorn's bound on the busy one: not reached
    async with serving(classes, config, echo_app, stop=stop) as url:
        idle, busy = await open_tcp(url), await open_tcp(url)
        await request(idle)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(request, busy, "/slow")
            await trio.sleep(1)
            stop.set()  # at 1, with one request under way
            assert await closed_at(idle) == 1
        assert trio.current_time() == SLOW_SECONDS
        assert await closed_at(busy) == SLOW_SECONDS


@pytest.mark.parametrize("classes", [STOCK, LEAN], ids=["stock", "lean"])
async def test_a_connection_idle_when_the_worker_terminates_closes_at_once(autojump_clock, classes):
    stop = trio.Event()
    async with serving(classes, keep_alive_config(), echo_app, stop=stop) as url:
        stream = await open_tcp(url)  # never sends a request
        await trio.sleep(2)
        stop.set()
        assert await closed_at(stream) == 2


async def due_at(timer: tcp_server.IdleTimer, terminated: trio.Event, events: Any) -> float:
    """How long after it was called `IdleTimer.wait_until_due` returns, while
    ``events(timer)`` runs beside it."""
    began = trio.current_time()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(events, timer)
            assert await timer.wait_until_due(terminated)
            nursery.cancel_scope.cancel()
    return trio.current_time() - began


async def test_idle_timer_is_due_a_timeout_after_the_connection_opened_or_last_went_idle(
    autojump_clock,
):
    async def nothing(timer: tcp_server.IdleTimer) -> None:
        await trio.sleep_forever()

    async def a_request_from_1_to_4(timer: tcp_server.IdleTimer) -> None:
        await trio.sleep(1)
        timer.busy()
        await trio.sleep(3)
        timer.idle()

    assert await due_at(tcp_server.IdleTimer(5), trio.Event(), nothing) == 5
    assert await due_at(tcp_server.IdleTimer(5), trio.Event(), a_request_from_1_to_4) == 4 + 5


async def test_idle_timer_is_due_when_the_worker_terminates_or_once_the_request_ended(
    autojump_clock,
):
    terminated = trio.Event()

    async def terminated_at_2(timer: tcp_server.IdleTimer) -> None:
        await trio.sleep(2)
        terminated.set()

    assert await due_at(tcp_server.IdleTimer(5), terminated, terminated_at_2) == 2

    terminated = trio.Event()

    async def terminated_at_2_during_a_request_to_30(timer: tcp_server.IdleTimer) -> None:
        timer.busy()
        await trio.sleep(2)
        terminated.set()
        await trio.sleep(28)
        timer.idle()

    timer = tcp_server.IdleTimer(5)
    assert await due_at(timer, terminated, terminated_at_2_during_a_request_to_30) == 30


async def test_idle_timer_stopped_with_its_connection_is_not_due(autojump_clock):
    timer = tcp_server.IdleTimer(5)
    async with trio.open_nursery() as nursery:

        async def stop_at_1() -> None:
            await trio.sleep(1)
            timer.stop()

        nursery.start_soon(stop_at_1)
        assert not await timer.wait_until_due(trio.Event())
        assert trio.current_time() == 1


@pytest.mark.parametrize("classes", [STOCK, LEAN], ids=["stock", "lean"])
async def test_a_connection_its_client_left_mid_request_ends_with_the_request(
    autojump_clock, classes
):
    async with serving(classes, keep_alive_config(), echo_app) as url:
        with counting_steps("._run_handler") as tasks:
            stream = await open_tcp(url)
            await stream.send_all(b"GET /slow HTTP/1.1\r\nhost: test\r\n\r\n")
            await trio.sleep(1)
            await stream.aclose()
            with trio.fail_after(60):
                await tasks.exited["._run_handler"].wait()
            assert trio.current_time() == SLOW_SECONDS


async def test_a_keep_alive_request_starts_no_idle_task():
    async def idle_task_steps(classes: tuple[type, type]) -> int:
        async with serving(classes, Config(), echo_app) as url:
            stream = await open_tcp(url)
            await request(stream)
            with counting_steps("._idle_timeout") as steps:
                for _ in range(FRAMES):
                    await request(stream)
            await stream.aclose()
        return steps.counts["._idle_timeout"]

    # Stock: each request cancels the idle task and starts a new one, which runs its first
    # step and then its last (cancelled) one.
    assert await idle_task_steps(STOCK) == 2 * FRAMES
    # Lean: one idle task for the connection; a request only moves its deadline.
    assert await idle_task_steps(LEAN) == 0


# -- the socket reads and writes (`receive_some`, `send_all`) ------------------------------


def stream_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """A connected pair over 127.0.0.1 (resets need TCP)."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        accepted: list[trio.SocketStream] = []

        async def accept() -> None:
            accepted.append(await listener.accept())

        nursery.start_soon(accept)
        peer = await trio.open_tcp_stream("127.0.0.1", port)
    await listener.aclose()
    return accepted[0], peer


async def test_receive_some_returns_what_arrived_and_empty_bytes_at_eof():
    ours, peer = stream_pair()
    async with trio.open_nursery() as nursery:
        received: list[bytes] = []

        async def reader() -> None:
            while data := await tcp_server.receive_some(ours):
                received.append(data)
            received.append(b"<eof>")

        nursery.start_soon(reader)
        await peer.send_all(b"one")
        await trio.testing.wait_all_tasks_blocked()
        await peer.send_all(b"two")
        await peer.send_eof()
    assert received == [b"one", b"two", b"<eof>"]


async def test_receive_some_waits_for_data_and_takes_one_step_and_one_read_per_arrival(
    monkeypatch,
):
    reads: list[str] = []

    def read(fd: int, size: int) -> bytes:
        try:
            data = os.read(fd, size)
        except BlockingIOError:
            reads.append("EAGAIN")
            raise
        reads.append("data")
        return data

    # Only this module's view of `os`: trio's own I/O is left alone.
    monkeypatch.setattr(tcp_server, "os", SimpleNamespace(read=read, write=os.write))
    ours, peer = stream_pair()
    with counting_steps(".reader") as steps:
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                for _ in range(FRAMES):
                    await tcp_server.receive_some(ours)

            nursery.start_soon(reader)
            for n in range(FRAMES):
                await trio.testing.wait_all_tasks_blocked()  # the reader waits, as in a call
                await peer.send_all(b"frame %d" % n)
    # Its start, then one per frame: it parks on the socket and wakes to read.
    assert steps.counts[".reader"] == FRAMES + 1
    # One read per frame, none failing first (trio's receive_some tries before it waits, and
    # a waiting reader's try fails with EAGAIN).
    assert reads == ["data"] * FRAMES


async def test_receive_some_raises_closed_when_the_stream_is_closed_while_waiting():
    ours, peer = stream_pair()
    raised: list[BaseException] = []

    async def reader() -> None:
        try:
            await tcp_server.receive_some(ours)
        except trio.ClosedResourceError as exc:
            raised.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        await ours.aclose()  # as Hypercorn's idle timeout does while the reader waits
    assert len(raised) == 1
    with pytest.raises(trio.ClosedResourceError):
        await tcp_server.receive_some(ours)
    await peer.aclose()


async def test_receive_some_raises_broken_when_the_peer_resets():
    ours, peer = await tcp_pair()
    peer.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await peer.aclose()  # an RST, not a FIN
    with pytest.raises(trio.BrokenResourceError):
        await tcp_server.receive_some(ours)
    await ours.aclose()


async def test_send_all_sends_at_once_without_a_checkpoint():
    ours, peer = stream_pair()
    with trio.testing.assert_no_checkpoints():
        await tcp_server.send_all(ours, b"frame")
    assert await peer.receive_some() == b"frame"


async def test_send_all_waits_for_room_when_the_buffer_is_full_and_loses_nothing():
    ours, peer = stream_pair()
    data = bytes(range(256)) * 40_000  # ~10 MB: far more than a socket buffer holds
    received = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tcp_server.send_all, ours, data)
        await trio.testing.wait_all_tasks_blocked()
        assert len(received) == 0  # the sender waits for the peer to read
        while len(received) < len(data):
            received += await peer.receive_some()
    assert received == data


async def test_a_cancelled_send_that_waits_for_room_still_sends_the_whole_frame():
    # Hypercorn shields its sends: a frame cut short would corrupt the stream.
    ours, peer = stream_pair()
    data = bytes(range(256)) * 40_000
    received = bytearray()
    sender = trio.CancelScope()

    async def send() -> None:
        with sender:
            await tcp_server.send_all(ours, data)
        await ours.aclose()  # the peer reads to the end of what was sent

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await trio.testing.wait_all_tasks_blocked()
        sender.cancel()  # while it waits for room
        while chunk := await peer.receive_some():
            received += chunk
    assert received == data


async def test_send_all_raises_closed_after_close_or_eof_and_broken_when_the_peer_is_gone():
    ours, peer = stream_pair()
    await ours.send_eof()
    with pytest.raises(trio.ClosedResourceError):
        await tcp_server.send_all(ours, b"late")
    await ours.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await tcp_server.send_all(ours, b"late")
    ours, peer = stream_pair()
    await peer.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await tcp_server.send_all(ours, b"nobody reads this")


async def test_a_message_larger_than_the_socket_buffer_is_echoed_whole():
    message = "x" * (8 << 20)
    async with serving(LEAN, Config(), echo_app) as url:
        async with open_websocket_url(url, max_message_size=16 << 20) as ws:
            await ws.send_message(message)
            assert await ws.get_message() == message
