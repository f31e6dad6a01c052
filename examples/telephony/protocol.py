"""The Media Streams JSON of Twilio, Telnyx, Plivo and Exotel, for a local test caller.

Each provider opens with its handshake, then sends 20 ms audio frames (8 kHz: 160 bytes of
μ-law, or 320 bytes of 16-bit PCM for Exotel), then a stop message. `media_payload` reads the
audio the bot sends back.
"""

from __future__ import annotations

import base64
import json

PROVIDERS = ("twilio", "telnyx", "plivo", "exotel")
STREAM_ID = "MZ00000000000000000000000000000000"
CALL_ID = "CA00000000000000000000000000000000"
FRAME_BYTES = {"twilio": 160, "telnyx": 160, "plivo": 160, "exotel": 320}


def handshake(provider: str) -> list[str]:
    """The messages a provider sends before the first audio frame."""
    if provider == "twilio":
        start = {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": "AC0",
                "streamSid": STREAM_ID,
                "callSid": CALL_ID,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": {"from_number": "+15550001", "to_number": "+15550002"},
            },
            "streamSid": STREAM_ID,
        }
        return [json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
                json.dumps(start)]  # fmt: skip
    if provider == "telnyx":
        start = {
            "event": "start",
            "sequence_number": "1",
            "start": {
                "call_control_id": "v3:" + CALL_ID,
                "from": "+15550001",
                "to": "+15550002",
                "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
            },
            "stream_id": STREAM_ID,
        }
        return [json.dumps({"event": "connected", "version": "1.0.0"}), json.dumps(start)]
    if provider == "plivo":
        start = {
            "event": "start",
            "sequenceNumber": 0,
            "start": {
                "callId": CALL_ID,
                "streamId": STREAM_ID,
                "accountId": "MA0",
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
            },
            "extra_headers": "{}",
        }
        # Plivo sends no message before "start"; pipecat's detection then reads the first
        # media frame as its second handshake message, so that frame is not heard.
        return [json.dumps(start)]
    if provider == "exotel":
        start = {
            "event": "start",
            "sequence_number": 1,
            "stream_sid": STREAM_ID,
            "start": {
                "stream_sid": STREAM_ID,
                "call_sid": CALL_ID,
                "account_sid": "exotel-account",
                "from": "+915550001",
                "to": "+915550002",
                "custom_parameters": {},
                "media_format": {
                    "encoding": "raw/slin",
                    "sample_rate": "8000",
                    "bit_rate": "128kbps",
                },
            },
        }
        return [json.dumps({"event": "connected"}), json.dumps(start)]
    raise ValueError(provider)


def media(provider: str, sequence: int, audio: bytes) -> str:
    """One inbound audio frame."""
    payload = base64.b64encode(audio).decode()
    chunk = {"track": "inbound", "chunk": str(sequence), "timestamp": str(sequence * 20),
             "payload": payload}  # fmt: skip
    if provider == "twilio":
        return json.dumps({"event": "media", "sequenceNumber": str(sequence + 2),
                           "media": chunk, "streamSid": STREAM_ID})  # fmt: skip
    if provider == "telnyx":
        return json.dumps({"event": "media", "sequence_number": str(sequence + 2),
                           "media": chunk, "stream_id": STREAM_ID})  # fmt: skip
    if provider == "plivo":
        return json.dumps({"event": "media", "sequenceNumber": sequence + 1,
                           "streamId": STREAM_ID, "media": chunk})  # fmt: skip
    if provider == "exotel":
        return json.dumps({"event": "media", "sequence_number": sequence + 2,
                           "stream_sid": STREAM_ID, "media": chunk})  # fmt: skip
    raise ValueError(provider)


def stop(provider: str) -> str:
    """The message a provider sends when the call ends."""
    if provider == "twilio":
        return json.dumps({"event": "stop", "streamSid": STREAM_ID, "stop": {"callSid": CALL_ID}})
    if provider == "telnyx":
        return json.dumps({"event": "stop", "stream_id": STREAM_ID})
    if provider == "plivo":
        return json.dumps({"event": "stop", "streamId": STREAM_ID})
    return json.dumps({"event": "stop", "stream_sid": STREAM_ID})


def media_payload(message: str | bytes) -> bytes | None:
    """The audio in an outbound (bot → caller) message; None for anything else."""
    data = json.loads(message)
    if data.get("event") in ("media", "playAudio"):
        return base64.b64decode(data["media"]["payload"])
    return None


def test_audio(provider: str, frames: int) -> list[bytes]:
    """Distinct frames of audio that survive the serializers' decode/encode round trip.

    μ-law code 0x7F decodes to the same sample as 0xFF, so it is avoided. The first two bytes
    count frames in base 127 (so no 0x7F either): distinct for 16 129 frames, over five minutes.
    """
    size = FRAME_BYTES[provider]
    out = []
    for n in range(frames):
        pattern = bytes((n * 37 + i * 11) % 256 for i in range(2, size))
        out.append(bytes((n % 127, n // 127 % 127)) + pattern.replace(b"\x7f", b"\x7e"))
    return out
