"""A bot with Session API routes that read and feed its running pipecat pipeline."""

import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import WebSocket
from loguru import logger
from pipecat.frames.frames import EndFrame, Frame, TextFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from pipecatcloud_system import add_lifespan_to_app, app

LIFESPAN_LOG = Path(os.environ["LIFESPAN_LOG"])
SESSION = {"worker": None, "heard": []}


@asynccontextmanager
async def lifespan(app):
    with LIFESPAN_LOG.open("a") as f:
        f.write("start\n")
    yield
    with LIFESPAN_LOG.open("a") as f:
        f.write("stop\n")


add_lifespan_to_app(lifespan)


class Heard(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, TextFrame):
            SESSION["heard"].append(frame.text)
        await self.push_frame(frame, direction)


@app.get("/state")
async def state():
    return {"running": SESSION["worker"] is not None, "heard": SESSION["heard"]}


@app.post("/say")
async def say(item: dict):
    worker = SESSION["worker"]
    if worker is None:
        return {"queued": False}
    text = item["text"]
    await worker.queue_frame(EndFrame() if text == "bye" else TextFrame(text))
    return {"queued": True}


@app.websocket("/echo")
async def echo(websocket: WebSocket):
    await websocket.accept()
    async for text in websocket.iter_text():
        await websocket.send_text(f"echo: {text}")


@app.get("/readyz")
async def not_the_readyz():
    return {"from": "the bot"}


@app.get("/pcc/capabilities")
async def not_the_capabilities():
    return {"from": "the bot"}


async def bot(args):
    worker = PipelineWorker(Pipeline([Heard()]), params=PipelineParams(), idle_timeout_secs=None)
    runner = WorkerRunner(handle_sigint=args.handle_sigint)
    await runner.add_workers(worker)
    SESSION["worker"] = worker
    try:
        await runner.run()
    finally:
        SESSION["worker"] = None
        logger.info("session api bot: pipeline ended")
