"""A SmallWebRTC caller built on aiortc, the way pipecat's clients talk to ``/api/offer``.

It runs on a plain asyncio loop in a worker thread (``asyncio.run``), apart from the server's
trio-asyncio loop: two real peers over UDP on the loopback interface. The offer goes out
without its ICE candidates, which follow by ``PATCH /api/offer`` (trickle ICE), as a browser
client sends them.
"""

from __future__ import annotations

import asyncio
import fractions
import math
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from av import AudioFrame

RATE = 48000
SAMPLES = 960  # 20 ms


class Tone(MediaStreamTrack):
    """A 440 Hz tone, paced in real time like a microphone."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        wait = self._start + self._pts / RATE - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (np.arange(SAMPLES) + self._pts) / RATE
        samples = (0.5 * 32767 * np.sin(2 * math.pi * 440 * t)).astype(np.int16)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        self._pts += SAMPLES
        return frame


@dataclass
class CallResult:
    answer: dict[str, Any] = field(default_factory=dict)
    patch_status: int = 0
    patched_candidates: int = 0
    loud_frames: int = 0  # received frames carrying audio (the echo), not silence


def split_candidates(sdp: str) -> tuple[str, list[dict[str, Any]]]:
    """The SDP without its candidate lines, and those candidates as PATCH entries."""
    kept, candidates = [], []
    mline, mid = -1, "0"
    for line in sdp.splitlines():
        if line.startswith("m="):
            mline += 1
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        if line.startswith("a=candidate:"):
            candidates.append({"candidate": line[2:], "sdp_mid": mid, "sdp_mline_index": mline})
            continue
        if line.startswith("a=end-of-candidates"):
            continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n", candidates


async def call(
    base_url: str,
    *,
    session_id: str | None,
    request_data: Any = None,
    echo_frames: int = 25,
    timeout: float = 20.0,
) -> CallResult:
    """Offer, trickle, send a tone until ``echo_frames`` loud frames came back (0: until the
    peers are connected), hang up."""
    result = CallResult()
    pc = RTCPeerConnection()
    pc.addTrack(Tone())
    echoed = asyncio.Event()
    connected = asyncio.Event()
    listeners: list[asyncio.Task[None]] = []

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState == "connected":
            connected.set()

    @pc.on("track")
    def on_track(track: Any) -> None:
        async def listen() -> None:
            while True:
                frame = await track.recv()
                if np.abs(frame.to_ndarray()).max() > 1000:
                    result.loud_frames += 1
                    if result.loud_frames >= echo_frames:
                        echoed.set()

        listeners.append(asyncio.ensure_future(listen()))

    headers = {"X-Daily-Session-Id": session_id} if session_id else {}
    try:
        await pc.setLocalDescription(await pc.createOffer())
        sdp, candidates = split_candidates(pc.localDescription.sdp)
        offer = {"sdp": sdp, "type": "offer", "request_data": request_data}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base_url}/api/offer", json=offer, headers=headers) as r:
                r.raise_for_status()
                result.answer = await r.json()
            await pc.setRemoteDescription(
                RTCSessionDescription(sdp=result.answer["sdp"], type=result.answer["type"])
            )
            patch = {"pc_id": result.answer["pc_id"], "candidates": candidates}
            async with http.patch(f"{base_url}/api/offer", json=patch, headers=headers) as r:
                result.patch_status = r.status
                result.patched_candidates = len(candidates)
        # echo_frames=0: hang up as soon as the peers are connected.
        await asyncio.wait_for((echoed if echo_frames else connected).wait(), timeout)
    finally:
        for listener in listeners:
            listener.cancel()
        await pc.close()
    return result


async def offer_sdp() -> str:
    """An SDP offer with an audio track, as a WhatsApp caller's phone would send."""
    pc = RTCPeerConnection()
    pc.addTrack(Tone())
    try:
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()
