"""A bot whose sessions a test drives through the Session API (as the platform proxies it)."""

import asyncio

from fastapi import Request, WebSocket
from loguru import logger

from pipecatcloud_system import app

RUNNING: dict[str, tuple[asyncio.Event, dict]] = {}


async def bot(args):
    finished = asyncio.Event()
    RUNNING[args.session_id] = (finished, args.body)
    logger.info("cloud bot running")
    try:
        await finished.wait()
    finally:
        del RUNNING[args.session_id]


@app.get("/state")
async def state(request: Request):
    session_id = request.headers.get("x-daily-session-id")
    running = RUNNING.get(session_id)
    return {
        "session_id": session_id,
        "running": running is not None,
        "body": running[1] if running else None,
        "query": dict(request.query_params),
    }


@app.post("/finish")
async def finish(request: Request):
    session_id = request.headers.get("x-daily-session-id")
    RUNNING[session_id][0].set()
    return {"finished": session_id, "said": await request.json()}


@app.websocket("/talk")
async def talk(websocket: WebSocket):
    await websocket.accept()
    session_id = websocket.headers.get("x-daily-session-id")
    async for text in websocket.iter_text():
        await websocket.send_text(f"{session_id} heard {text}")
