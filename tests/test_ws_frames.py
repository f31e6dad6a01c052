"""`ws_frames`: whole simple frames read as wsproto reads them, and nothing else read at all.

wsproto itself is the oracle: frames are built with its client side and the messages compared
with what its server side makes of the same bytes."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from hypercorn.config import Config
from hypercorn.protocol.ws_stream import WebsocketBuffer
from wsproto import WSConnection
from wsproto.connection import Connection, ConnectionType
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol, XorMaskerSimple

from pipecat_base._speedups.ws_frames import (
    at_message_boundary,
    sends_plain_frames,
    server_frame,
    unmask,
    whole_messages,
)

from .hypercorn_serving import LEAN, STOCK, agree_to_lifespan, open_tcp, serving

BIG = 1 << 24


def client_frame(payload: str | bytes, fin: bool = True) -> bytes:
    """One masked frame, as a client sends it (a fresh random masking key each time)."""
    return bytes(FrameProtocol(client=True, extensions=[]).send_data(payload, fin))


def wsprotos_messages(data: bytes) -> list[dict[str, Any]]:
    """The ASGI messages Hypercorn makes of ``data`` through wsproto, on a fresh connection."""
    server = Connection(ConnectionType.SERVER)
    server.receive_data(data)
    messages = []
    for event in server.events():
        assert isinstance(event, (TextMessage, BytesMessage))
        assert event.message_finished
        text = isinstance(event, TextMessage)
        messages.append(
            {
                "type": "websocket.receive",
                "bytes": None if text else bytes(event.data),
                "text": event.data if text else None,
            }
        )
    return messages


PAYLOADS = [
    "",
    "x",
    "é€😀" * 10,
    "y" * 125,
    "z" * 126,
    '{"event": "media", "media": {"payload": "' + "A" * 216 + '"}}',
    "w" * 65535,
    b"",
    b"\x00\xff" * 3,
    bytes(range(256)) * 4,
    b"\x01" * 65535,
]


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: f"{type(p).__name__}-{len(p)}")
def test_a_whole_simple_frame_is_read_as_wsproto_reads_it(payload):
    frame = client_frame(payload)
    messages, used = whole_messages(frame, BIG)
    assert used == len(frame)
    assert messages == wsprotos_messages(frame)
    assert messages[0]["text" if isinstance(payload, str) else "bytes"] == payload


def test_many_frames_in_one_read_are_read_in_order():
    payloads = [f"frame {n}" if n % 3 else bytes([n]) * n for n in range(40)]
    data = b"".join(client_frame(p) for p in payloads)
    messages, used = whole_messages(data, BIG)
    assert used == len(data)
    assert messages == wsprotos_messages(data)
    assert [m["text"] if m["text"] is not None else m["bytes"] for m in messages] == payloads


def test_unmask_is_wsprotos_masking_for_every_alignment():
    rng = random.Random(4)
    for size in [*range(12), 125, 126, 1000, 65536]:
        payload, key = rng.randbytes(size), rng.randbytes(4)
        assert unmask(payload, key) == bytes(XorMaskerSimple(key).process(bytearray(payload)))


def client_close() -> bytes:
    return bytes(FrameProtocol(client=True, extensions=[]).close(1000))


def with_first_byte(frame: bytes, first: int) -> bytes:
    return bytes([first]) + frame[1:]


def two_byte_length(payload: bytes) -> bytes:
    """A masked binary frame whose short length is written in the two-byte form anyway."""
    key = b"\x01\x02\x03\x04"
    return bytes([0x82, 0x80 | 126]) + len(payload).to_bytes(2, "big") + key + unmask(payload, key)


NOT_READ = {
    "ping": bytes(FrameProtocol(client=True, extensions=[]).ping(b"hi")),
    "close": client_close(),
    "first fragment": client_frame("part", fin=False),
    "reserved bit (compressed)": with_first_byte(client_frame("c"), 0xC1),
    "unknown opcode": with_first_byte(client_frame("c"), 0x83),
    "continuation": with_first_byte(client_frame("c"), 0x80),
    "unmasked": bytes([0x81, 1]) + b"u",
    "two-byte length for a short payload": two_byte_length(b"short"),
    "eight-byte length": client_frame(b"e" * 65536),
    "invalid utf-8": with_first_byte(client_frame(b"\xff\xfe"), 0x81),
    "larger than the limit": client_frame("t" * 101),
}


@pytest.mark.parametrize("frame", NOT_READ.values(), ids=NOT_READ.keys())
def test_reading_stops_at_any_other_frame_and_leaves_it_to_wsproto(frame):
    before, after = client_frame("before"), client_frame("after")
    messages, used = whole_messages(before + frame + after, 100)
    assert used == len(before)
    assert messages == wsprotos_messages(before)


def test_an_incomplete_frame_is_left_whole_at_every_cut():
    first, second = client_frame("complete"), client_frame("z" * 300)
    for cut in range(len(second)):
        messages, used = whole_messages(first + second[:cut], BIG)
        assert (len(messages), used) == (1, len(first))


def stream(connection: Connection, **changes: Any) -> SimpleNamespace:
    """A Hypercorn ``WSStream``'s state, as `at_message_boundary` reads it."""
    state = {
        "closed": False,
        "handshake": SimpleNamespace(accepted=True),
        "buffer": WebsocketBuffer(BIG),
        "connection": connection,
    }
    return SimpleNamespace(**{**state, **changes})


def drained(connection: Connection, data: bytes | None) -> Connection:
    connection.receive_data(data)
    list(connection.events())
    return connection


def test_a_new_open_connection_and_one_between_messages_are_at_a_boundary():
    assert at_message_boundary(stream(Connection(ConnectionType.SERVER)))
    connection = drained(Connection(ConnectionType.SERVER), client_frame("a") + client_frame(b"b"))
    assert at_message_boundary(stream(connection))


def server_with_deflate() -> Connection:
    deflate = PerMessageDeflate()
    deflate.accept("permessage-deflate")
    return Connection(ConnectionType.SERVER, [deflate])


def message_begun() -> SimpleNamespace:
    buffer = WebsocketBuffer(BIG)
    buffer.extend(TextMessage(data="begun", message_finished=False))
    return stream(Connection(ConnectionType.SERVER), buffer=buffer)


NOT_AT_A_BOUNDARY = {
    "half a header": lambda: stream(drained(Connection(ConnectionType.SERVER), b"\x81")),
    "half a payload": lambda: stream(
        drained(Connection(ConnectionType.SERVER), client_frame("x" * 300)[:100])
    ),
    "a fragmented message under way": lambda: stream(
        drained(Connection(ConnectionType.SERVER), client_frame("part", fin=False))
    ),
    "after a parse error": lambda: stream(
        drained(Connection(ConnectionType.SERVER), bytes([0x81, 1]) + b"u")
    ),
    "closing": lambda: stream(drained(Connection(ConnectionType.SERVER), client_close())),
    "closed under it": lambda: stream(drained(Connection(ConnectionType.SERVER), None)),
    "bytes not yet parsed": lambda: stream(
        Connection(ConnectionType.SERVER, trailing_data=client_frame("unread"))
    ),
    "permessage-deflate": lambda: stream(server_with_deflate()),
    "Hypercorn holds part of a message": message_begun,
    "the stream is closed": lambda: stream(Connection(ConnectionType.SERVER), closed=True),
    "not accepted": lambda: stream(
        Connection(ConnectionType.SERVER), handshake=SimpleNamespace(accepted=False)
    ),
    "state laid out otherwise": lambda: SimpleNamespace(closed=False),
}


@pytest.mark.parametrize("make", NOT_AT_A_BOUNDARY.values(), ids=NOT_AT_A_BOUNDARY.keys())
def test_anything_under_way_is_not_a_boundary(make):
    assert not at_message_boundary(make())


def close_frame_with_code(code: int) -> bytes:
    key = b"\x05\x06\x07\x08"
    return bytes([0x88, 0x80 | 2]) + key + unmask(code.to_bytes(2, "big"), key)


def test_after_a_parse_error_wsproto_reads_nothing_more_and_neither_does_the_boundary():
    # Why the parser's liveness is part of the boundary: a close frame with a code no one may
    # send was consumed whole, so every other part of wsproto's state looks idle.
    connection = Connection(ConnectionType.SERVER)
    connection.receive_data(close_frame_with_code(999))
    events = list(connection.events())
    assert isinstance(events[-1], CloseConnection)
    assert events[-1].code == 1002
    connection.receive_data(client_frame("later"))
    assert list(connection.events()) == []
    assert not at_message_boundary(stream(connection))


# In the real server: Hypercorn, stock and with `tcp_server.LeanTCPServer`, on 127.0.0.1.


async def what_the_app_received(
    classes: tuple[type, type], parts: list[tuple[bytes, int | None]]
) -> tuple[list[Any], int]:
    """Send each of ``parts`` in a write of its own on a new WebSocket, the next once the app
    has received as many messages as the part names (the last part may name None: the server
    is to close), then close: the messages the app received, then its disconnect code; and
    how often wsproto was given bytes."""
    received: list[Any] = []
    reached: dict[int, trio.Event] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await agree_to_lifespan(receive, send)
            return
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            received.append(message)
            reached.setdefault(len(received), trio.Event()).set()
        received.append(message["code"])

    async with serving(classes, Config(), app) as url:
        stream = await open_tcp(url)
        client = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(client.send(Request(host="test", target="/")))
        while not any(isinstance(e, AcceptConnection) for e in client.events()):
            client.receive_data(await stream.receive_some())
        with counting_calls(Connection, "receive_data") as fed:
            for part, count in parts:
                await stream.send_all(part)
                if count is not None:
                    await reached.setdefault(count, trio.Event()).wait()
            if count is not None:
                await stream.send_all(client.send(CloseConnection(code=1000)))
            with contextlib.suppress(trio.BrokenResourceError):
                while await stream.receive_some():
                    pass
        await stream.aclose()
    return received, fed.count


@contextlib.contextmanager
def counting_calls(cls: type, name: str) -> Iterator[SimpleNamespace]:
    calls = SimpleNamespace(count=0)
    original = getattr(cls, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.count += 1
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cls, name, counted)
        yield calls


def received(*payloads: str | bytes) -> list[dict[str, Any]]:
    return [
        {"type": "websocket.receive", "bytes": p, "text": None}
        if isinstance(p, bytes)
        else {"type": "websocket.receive", "bytes": None, "text": p}
        for p in payloads
    ]


@pytest.mark.usefixtures("all_speedups")
async def test_simple_frames_reach_the_app_as_with_stock_hypercorn_without_wsproto():
    payloads = ["one", b"two", "three" * 100, ""]
    parts = [(b"".join(client_frame(p) for p in payloads), 4)]
    stock, stock_fed = await what_the_app_received(STOCK, parts)
    lean, lean_fed = await what_the_app_received(LEAN, parts)
    assert stock == lean == [*received(*payloads), 1006]
    assert (stock_fed, lean_fed) == (2, 1)  # lean: only the close frame's read


CUT = client_frame("d" * 300)
MIXED = [
    (
        client_frame("a")
        + bytes(FrameProtocol(client=True, extensions=[]).ping(b"p"))
        + client_frame("b")
        + client_frame("frag", fin=False)
        + with_first_byte(client_frame("ment"), 0x80),  # its final continuation
        3,
    ),
    (client_frame(b"c") + CUT[:50], 4),
    (CUT[50:] + client_frame("e"), 6),
    (client_frame("f"), 7),
]


@pytest.mark.usefixtures("all_speedups")
async def test_any_mix_of_frames_and_cuts_reaches_the_app_as_with_stock_hypercorn():
    lean, lean_fed = await what_the_app_received(LEAN, MIXED)
    stock, stock_fed = await what_the_app_received(STOCK, MIXED)
    assert lean == stock == [*received("a", "b", "fragment", b"c", "d" * 300, "e", "f"), 1006]
    # Lean: wsproto is given the first read from the ping on, the cut frame's two halves and
    # the close; "a", "c" and "f" it never sees.
    assert (stock_fed, lean_fed) == (5, 4)


async def test_invalid_utf8_ends_the_connection_after_the_messages_before_it_as_with_stock():
    parts = [
        (
            client_frame("fine")
            + with_first_byte(client_frame(b"\xff"), 0x81)
            + client_frame("never"),
            None,
        )
    ]
    assert (
        (await what_the_app_received(LEAN, parts))[0]
        == (await what_the_app_received(STOCK, parts))[0]
        == [*received("fine"), 1006]
    )


@pytest.mark.parametrize("payload", [*PAYLOADS, "v" * 65536, b"\x02" * 70000])
def test_a_server_frame_is_the_frame_wsproto_sends(payload):
    connection = Connection(ConnectionType.SERVER)
    assert sends_plain_frames(connection)
    event = TextMessage(data=payload) if isinstance(payload, str) else BytesMessage(data=payload)
    assert server_frame(payload) == connection.send(event)
    assert sends_plain_frames(connection)  # nothing about the connection changed


NOT_PLAIN = {
    "closing": lambda: drained(Connection(ConnectionType.SERVER), client_close()),
    "closed by us": lambda: sent(Connection(ConnectionType.SERVER), CloseConnection(code=1000)),
    "a fragmented message under way": lambda: sent(
        Connection(ConnectionType.SERVER), TextMessage(data="part", message_finished=False)
    ),
    "permessage-deflate": server_with_deflate,
    "laid out otherwise": lambda: SimpleNamespace(state=None),
}


def sent(connection: Connection, event: Any) -> Connection:
    connection.send(event)
    return connection


@pytest.mark.parametrize("make", NOT_PLAIN.values(), ids=NOT_PLAIN.keys())
def test_anything_else_sends_through_wsproto(make):
    assert not sends_plain_frames(make())
