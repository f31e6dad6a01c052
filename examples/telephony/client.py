"""A local caller for ``/ws``: speaks a provider's Media Streams JSON and counts the echo.

    uv run pipecat-base serve examples/telephony/bot.py          # in one terminal
    uv run python examples/telephony/client.py --provider twilio  # in another

``--url`` names another server's ``/ws`` (default: ``ws://localhost:$PORT/ws``, port 8080).

It sends the provider's handshake, ``--seconds`` of 20 ms audio frames in real time, waits
for the echo, sends ``stop`` and hangs up, then prints how much audio came back and the
round-trip time of the first frame.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import time

import protocol
import websockets


async def call(url: str, provider: str, seconds: float, body: dict) -> None:
    frames = protocol.test_audio(provider, int(seconds * 50))
    query = "?body=" + base64.b64encode(json.dumps(body).encode()).decode() if body else ""
    received = bytearray()
    async with websockets.connect(url + query) as ws:
        for message in protocol.handshake(provider):
            await ws.send(message)
        started = time.monotonic()
        first_echo = None

        async def listen() -> None:
            nonlocal first_echo
            async for message in ws:
                audio = protocol.media_payload(message)
                if audio:
                    first_echo = first_echo or time.monotonic() - started
                    received.extend(audio)

        listener = asyncio.create_task(listen())
        try:
            for n, frame in enumerate(frames):
                await ws.send(protocol.media(provider, n, frame))
                await asyncio.sleep(max(0.0, started + (n + 1) * 0.02 - time.monotonic()))
            await asyncio.sleep(1.0)
            await ws.send(protocol.stop(provider))
        except websockets.ConnectionClosedOK as closed:
            # The bot ended the call (1000) or the server went away (1001): a normal end.
            print(f"the server closed the call ({closed.rcvd.code if closed.rcvd else '-'})")
        listener.cancel()
    sent = sum(len(f) for f in frames)
    print(f"{provider}: sent {sent} bytes, heard back {len(received)} bytes; "
          f"first echo after {first_echo or float('nan'):.3f}s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description="A local caller for /ws: a provider's Media Streams JSON, and the echo.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    port = os.environ.get("PORT", "8080")
    parser.add_argument("--url", default=f"ws://localhost:{port}/ws", help="the server's /ws")
    parser.add_argument("--provider", choices=protocol.PROVIDERS, default="twilio")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--vad", action="store_true", help="ask the bot to run Silero VAD")
    options = parser.parse_args()
    body = {"vad": True} if options.vad else {}
    asyncio.run(call(options.url, options.provider, options.seconds, body))


if __name__ == "__main__":
    main()
