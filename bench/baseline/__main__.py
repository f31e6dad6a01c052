"""``python -m bench.baseline BOT --port N``: the existing image's serving model, for comparison.

Native asyncio: ``bot(args)`` is awaited inside the request handler; ``/ws`` accepts, hands the
bot Starlette's WebSocket, and closes it afterwards. Same argument types (pipecatcloud's), same
bot files as pipecat-base, and the same observability observers on every pipeline (the existing
image registers them through ``PIPECAT_SETUP_FILES`` too).

Nothing here may import trio-asyncio: importing it replaces ``asyncio.get_running_loop`` and
friends process-wide with Python functions that, outside Trio, raise and catch two exceptions
per call -- about a tenth of the baseline's CPU per pipecat call-second until 2026-11-24, when
`pipecat_base.startup.loader` still imported it.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, WebSocket
from loguru import logger
from starlette.websockets import WebSocketState

import pipecat_base
from pipecat_base.sessions.args import http_session_args, websocket_session_args
from pipecat_base.startup.loader import load_bot

OBSERVERS_SETUP = str(Path(pipecat_base.__file__).parent / "observability" / "observers_setup.py")


def create_app(bot: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/livez")
    async def livez() -> dict:
        return {"status": "ok"}

    @app.post("/bot")
    async def start_bot(request: Request) -> dict:
        body = await request.json()
        headers = request.headers
        args = http_session_args(
            headers.get("x-daily-session-id"),
            body,
            room_url=headers.get("x-daily-room-url"),
            token=headers.get("x-daily-room-token"),
        )
        try:
            await bot(args)
        except Exception:  # the existing image logs and answers 200
            pass
        return {}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        body = None
        raw = websocket.query_params.get("body")
        if raw:
            try:
                body = json.loads(base64.b64decode(raw).decode())
            except (binascii.Error, ValueError):
                body = None
        session_id = websocket.headers.get("x-daily-session-id")
        await bot(websocket_session_args(session_id, body, websocket))
        if websocket.client_state == WebSocketState.CONNECTED:
            await websocket.close()

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bot")
    parser.add_argument("--port", type=int, default=8081)
    options = parser.parse_args()
    setup_files = [p for p in os.environ.get("PIPECAT_SETUP_FILES", "").split(os.pathsep) if p]
    os.environ["PIPECAT_SETUP_FILES"] = os.pathsep.join([*setup_files, OBSERVERS_SETUP])
    app = create_app(load_bot(options.bot).bot)
    # As the existing image: loguru at PIPECAT_LOG_LEVEL, and shutdown bounded by
    # SHUTDOWN_TIMEOUT (its waiting server's deadline), here uvicorn's graceful timeout.
    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("PIPECAT_LOG_LEVEL", "DEBUG"))
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=options.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=float(os.environ.get("SHUTDOWN_TIMEOUT", "7200")),
    )


if __name__ == "__main__":
    main()
