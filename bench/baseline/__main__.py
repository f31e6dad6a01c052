"""``python -m bench.baseline BOT --port N [--stack stdlib]``: the existing image's serving model,
for comparison: the peer stack.

The existing image's lock installs ``fastapi[standard]``, so its server is uvicorn with
``uvicorn[standard]``'s choices: **uvloop** for the loop, **httptools** for HTTP/1.1 and
**websockets** for WebSocket (its sans-I/O protocol, uvicorn's "auto"). They are named here
(``--stack peer``, the default), so a missing one fails the start instead of silently falling
back to the stdlib loop and h11, which cost about what pipecat-base costs and would flatter it.
``--stack stdlib`` runs the same app on asyncio's own loop with h11 and ``websockets``' sans-I/O
protocol: the optional second column.

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
import asyncio
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


# uvicorn's loop, HTTP and WebSocket implementations, by name. The peer's are what uvicorn's
# "auto" resolves to with uvicorn[standard] installed (its WebSocket "auto" is websockets'
# sans-I/O protocol), named so that a missing one fails instead of falling back.
STACKS = {
    "peer": {"loop": "uvloop", "http": "httptools", "ws": "websockets-sansio"},
    "stdlib": {"loop": "asyncio", "http": "h11", "ws": "websockets-sansio"},
}


def create_app(bot: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/livez")
    async def livez() -> dict:
        # The loop's module ("uvloop" or "asyncio"): the harness's tests check the stack.
        return {"status": "ok", "loop": type(asyncio.get_running_loop()).__module__.split(".")[0]}

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
    parser.add_argument("--stack", choices=sorted(STACKS), default="peer")
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
        **STACKS[options.stack],
    )


if __name__ == "__main__":
    main()
