"""WebSocket messages that are one whole frame each, read and written past wsproto's machinery.

Every media frame a caller sends (a Twilio ``media`` event is a ~400-byte text frame) goes
through wsproto's parser and Hypercorn's message buffer: a generator, a frame decoder that
copies the bytes through a buffer three times, a ``Header``, a ``Frame`` and an event object,
a masker rebuilt per frame, an incremental UTF-8 decoder per message and a ``StringIO`` to
assemble the message that was whole all along -- ~14 µs per frame in a tight loop, and about
an eighth of the server's CPU on 10 pipecat echo calls (``py-spy``, see ``bench/NOTES.md``).

`whole_messages` reads only the simplest frames: final (not fragmented), no reserved bits (no
extension in use), text or binary, masked (as a client must), with a length of at most 65535
given in its shortest form, and whose text is valid UTF-8. It stops at the first frame that is
anything else -- a control frame, a fragment, an incomplete frame, a malformed one -- and the
rest of the bytes go to wsproto, which handles them (and reports their errors) as always.
`at_message_boundary` says when that is equivalent to wsproto's own parse: the connection is
open, neither wsproto nor Hypercorn holds part of a frame or message, its parser is alive,
and no extension (permessage-deflate) was negotiated. A complete unfragmented data frame then
leaves wsproto's state as it found it, so what is read here need never reach it.

Outbound, `server_frame` writes a message as the one frame wsproto would write for it, when
`sends_plain_frames` says wsproto would (open, no extension, no fragmented message under way).

``tests/test_ws_frames.py`` checks all of it against wsproto itself, and against stock
Hypercorn in the real server."""

from __future__ import annotations

from typing import Any

from wsproto.connection import ConnectionState

_TEXT = 0x81  # FIN, no reserved bits, opcode 1
_BINARY = 0x82  # FIN, no reserved bits, opcode 2
_MASKED = 0x80
_LENGTH = 0x7F
_TWO_BYTE_LENGTH = 126
_EIGHT_BYTE_LENGTH = 127
_LONGEST_ONE_BYTE_LENGTH = 125
_LONGEST_TWO_BYTE_LENGTH = 0xFFFF


def unmask(payload: bytes, key: bytes) -> bytes:
    """``payload`` XOR the 4-byte masking ``key`` repeated (RFC 6455, 5.3)."""
    size = len(payload)
    repeated = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(
        size, "little"
    )


def whole_messages(data: bytes, max_size: int) -> tuple[list[dict[str, Any]], int]:
    """The ASGI ``websocket.receive`` messages of the simple frames (see module) that ``data``
    begins with, no bigger than ``max_size`` bytes each, and how many bytes they took."""
    messages: list[dict[str, Any]] = []
    used = 0
    end = len(data)
    while end - used >= 2:
        first, second = data[used], data[used + 1]
        if (first != _TEXT and first != _BINARY) or not second & _MASKED:
            break
        size = second & _LENGTH
        key_at = used + 2
        if size == _TWO_BYTE_LENGTH:
            size = int.from_bytes(data[key_at : key_at + 2], "big")
            key_at += 2
            if size <= _LONGEST_ONE_BYTE_LENGTH:  # not the shortest form: wsproto refuses it
                break
        elif size == _EIGHT_BYTE_LENGTH:
            break  # eight-byte length: rare, wsproto's
        payload_at = key_at + 4
        frame_end = payload_at + size
        if frame_end > end or size > max_size:
            break
        payload = unmask(data[payload_at:frame_end], data[key_at:payload_at])
        if first == _TEXT:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                break  # wsproto closes the connection with 1007
            messages.append({"type": "websocket.receive", "bytes": None, "text": text})
        else:
            messages.append({"type": "websocket.receive", "bytes": payload, "text": None})
        used = frame_end
    return messages, used


def at_message_boundary(stream: Any) -> bool:
    """Whether Hypercorn's WebSocket ``stream`` (a ``WSStream``) would read a whole simple
    frame exactly as `whole_messages` does; False whenever anything is under way (see module),
    and for a wsproto or Hypercorn whose state is not laid out as expected."""
    try:
        if stream.closed or not stream.handshake.accepted or stream.buffer.value is not None:
            return False
        connection = stream.connection
        # (wsproto queues an unread event only as the connection closes under it: OPEN covers it)
        if connection.state is not ConnectionState.OPEN:
            return False
        protocol = connection._proto
        decoder = protocol._frame_decoder
        return (
            not decoder.extensions
            and decoder.header is None
            and not decoder.buffer.buffer
            and protocol._message_decoder.opcode is None
            # a parse error ends wsproto's parser for good: nothing is read after it
            and protocol._parse_more.gi_frame is not None
        )
    except AttributeError:
        return False


def server_frame(payload: bytes | str) -> bytes:
    """``payload`` as one whole unmasked frame, as a server sends it: text for a ``str``, with
    its length in the shortest form (RFC 6455, 5.2), as wsproto writes it when no extension is
    in use."""
    if isinstance(payload, str):
        first, data = _TEXT, payload.encode("utf-8")
    else:
        first, data = _BINARY, payload
    size = len(data)
    if size <= _LONGEST_ONE_BYTE_LENGTH:
        header = bytes((first, size))
    elif size <= _LONGEST_TWO_BYTE_LENGTH:
        header = bytes((first, _TWO_BYTE_LENGTH)) + size.to_bytes(2, "big")
    else:
        header = bytes((first, _EIGHT_BYTE_LENGTH)) + size.to_bytes(8, "big")
    return header + data


def sends_plain_frames(connection: Any) -> bool:
    """Whether wsproto's ``connection`` would send a message as `server_frame` writes it: it
    is open, uses no extension, and is not in the middle of a fragmented message (False for a
    wsproto laid out otherwise). Such a send changes none of its state."""
    try:
        protocol = connection._proto
        return (
            connection.state is ConnectionState.OPEN
            and not protocol.extensions
            and protocol._outbound_opcode is None
        )
    except AttributeError:
        return False
