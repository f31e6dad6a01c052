"""A plain asyncio bot (no pipecat) on the Starlette WebSocket it receives.

Echoes binary frames with ``iter_bytes``/``send_bytes`` until the caller hangs up; text frames
are commands: "body" sends the session body back, "text" echoes a text frame, "bye" makes the
bot return, "sleep" makes it ignore the socket until cancelled.
"""

import asyncio
import json

from loguru import logger
from starlette.websockets import WebSocket, WebSocketDisconnect


async def bot(args):
    ws = args.websocket
    assert isinstance(ws, WebSocket)
    logger.info(f"raw bot: {type(args).__name__} query={dict(ws.query_params)}")
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                logger.info(f"raw bot: caller hung up with code {message.get('code')}")
                return
            if message.get("bytes") is not None:
                await ws.send_bytes(message["bytes"])
                continue
            command = message["text"]
            if command == "body":
                await ws.send_text(json.dumps(args.body))
            elif command == "text":
                await ws.send_text("text:" + command)
            elif command == "bye":
                return
            elif command == "sleep":
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    logger.info("raw bot: cancelled while sleeping")
                    raise
            elif command == "ignore-hangup":
                try:
                    await ws.receive_bytes()
                except WebSocketDisconnect:
                    logger.info("raw bot: saw the hang-up, keeps running")
                await asyncio.sleep(3600)
    finally:
        logger.info("raw bot: finally")
