"""A Twilio Media Streams caller: 20 ms frames of 8 kHz μ-law, per-frame round-trip times."""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "telephony"))
import protocol

FRAME = 160
FRAME_SECONDS = 0.02


@dataclass
class CallResult:
    rtts: list[float] = field(default_factory=list)
    lost: int = 0
    reordered: int = 0
    corrupted: int = 0

    @property
    def faults(self) -> int:
        """Frames lost, reordered or corrupted: zero on a correct server."""
        return self.lost + self.reordered + self.corrupted


async def call(ws_url: str, mode: str, seconds: float) -> CallResult:
    """One call: handshake, ``seconds`` of audio in real time, then hang up.

    Every frame's audio is distinct, so each 160-byte piece of echo is matched to the frame it
    came from: a frame's round trip ends when its piece comes back (pipecat sends 40 ms chunks,
    so every other frame also waits for its neighbour, on both servers alike). Frames never
    heard are lost; pieces heard out of order are reordered; pieces matching no frame are
    corrupted.
    """
    frames = protocol.test_audio("twilio", max(2, int(seconds / FRAME_SECONDS)) // 2 * 2)
    index = {frame: k for k, frame in enumerate(frames)}
    assert len(index) == len(frames), "frames must be distinct to be matched"
    query = "?body=" + base64.b64encode(json.dumps({"mode": mode}).encode()).decode()
    sent_at: dict[int, float] = {}
    heard_at: dict[int, float] = {}
    pending = bytearray()
    result = CallResult()
    all_heard = trio.Event()
    last = -1

    async def listen(ws) -> None:
        nonlocal last
        try:
            while True:
                audio = protocol.media_payload(await ws.get_message())
                if not audio:
                    continue
                now = time.monotonic()
                pending.extend(audio)
                while len(pending) >= FRAME:
                    piece, pending[:FRAME] = bytes(pending[:FRAME]), b""
                    k = index.get(piece)
                    if k is None:
                        result.corrupted += 1
                        continue
                    if k < last:
                        result.reordered += 1
                    last = max(last, k)
                    heard_at.setdefault(k, now)
                if len(heard_at) == len(frames):
                    all_heard.set()
        except ConnectionClosed:
            all_heard.set()

    async with open_websocket_url(ws_url + query) as ws, trio.open_nursery() as nursery:
        nursery.start_soon(listen, ws)
        for message in protocol.handshake("twilio"):
            await ws.send_message(message)
        async for n, frame in paced(frames):
            sent_at[n] = time.monotonic()
            await ws.send_message(protocol.media("twilio", n, frame))
        await until_heard(all_heard, lambda: len(heard_at))
        await ws.send_message(protocol.stop("twilio"))
        nursery.cancel_scope.cancel()
    result.rtts = [heard_at[k] - sent_at[k] for k in sorted(heard_at)]
    result.lost = len(frames) - len(heard_at)
    return result


ECHO_SILENCE = 2.0
ECHO_BOUND = 60.0


async def until_heard(
    all_heard: trio.Event,
    heard: Callable[[], int],
    silence: float = ECHO_SILENCE,
    bound: float = ECHO_BOUND,
) -> None:
    """After the last frame: wait for the echoes still on their way.

    Returns when every frame was heard, or when ``silence`` seconds pass without a new echo
    (the rest is lost), or after ``bound`` seconds. An overloaded server answers late, not
    never: its late echoes count in the RTT figures, not as lost frames.
    """
    with trio.move_on_after(bound):
        while not all_heard.is_set():
            before = heard()
            with trio.move_on_after(silence):
                await all_heard.wait()
            if heard() == before:
                return


async def paced(frames: list[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    """Each frame at its place in real time: frame ``n`` at ``start + n * 20 ms``.

    On Trio's clock: `trio.sleep_until` takes Trio time, which has its own random offset from
    ``time.monotonic()`` (mixing them made every deadline lie in the past, so a "paced" call
    went out as one burst).
    """
    start = trio.current_time()
    for n, frame in enumerate(frames):
        await trio.sleep_until(start + n * FRAME_SECONDS)
        yield n, frame


async def calls(ws_url: str, mode: str, count: int, seconds: float) -> list[CallResult]:
    """``count`` concurrent calls, started within one frame of each other."""
    results: list[CallResult] = []

    async def one(delay: float) -> None:
        await trio.sleep(delay)
        results.append(await call(ws_url, mode, seconds))

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, (i % 10) * FRAME_SECONDS / 10)
    return results


async def ping_pong(ws_url: str, frames: int = 100) -> list[float]:
    """Round trips of one frame at a time (send, await its echo, pause a frame): the server's
    own latency, free of the load generator's pipelining."""
    query = "?body=" + base64.b64encode(json.dumps({"mode": "raw"}).encode()).decode()
    rtts = []
    async with open_websocket_url(ws_url + query) as ws:
        for message in protocol.handshake("twilio"):
            await ws.send_message(message)
        for n, frame in enumerate(protocol.test_audio("twilio", frames)):
            sent = time.monotonic()
            await ws.send_message(protocol.media("twilio", n, frame))
            while not protocol.media_payload(await ws.get_message()):
                pass
            rtts.append(time.monotonic() - sent)
            await trio.sleep(FRAME_SECONDS)
        await ws.send_message(protocol.stop("twilio"))
    return rtts
