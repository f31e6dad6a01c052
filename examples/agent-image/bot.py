"""A sample agent: a pipecat pipeline on whichever transport the session brings.

* ``WS /ws`` (telephony): pipecat's ``create_transport`` detects the provider and the pipeline
  plays the caller's audio back. (Exotel needs no credentials; Twilio, Telnyx and Plivo hang
  up through their REST API, so set their ``*_ACCOUNT_SID``/``*_AUTH_TOKEN``/``*_API_KEY``.)
* ``POST /bot`` without a transport: a short pipeline that ends itself.

The log says where pipecat and the packages it shares with the server were imported from: in
the image, the agent's own environment, ``/app/.venv``.
"""

import importlib

from loguru import logger
from pipecat.frames.frames import EndFrame, Frame, InputAudioRawFrame, OutputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.runner.utils import create_transport
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams
from pipecat.workers.runner import WorkerRunner

SHARED = ("pipecat", "pipecatcloud", "pydantic", "loguru", "starlette", "aiohttp")


class Echo(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            frame = OutputAudioRawFrame(frame.audio, frame.sample_rate, frame.num_channels)
        await self.push_frame(frame, direction)


def _telephony_params() -> FastAPIWebsocketParams:
    return FastAPIWebsocketParams(audio_in_enabled=True, audio_out_enabled=True)


async def bot(runner_args):
    for name in SHARED:
        logger.info(f"agent: {name} from {importlib.import_module(name).__file__}")

    if getattr(runner_args, "websocket", None) is not None:
        providers = ("twilio", "telnyx", "plivo", "exotel")
        transport = await create_transport(runner_args, {p: _telephony_params for p in providers})
        processors = [transport.input(), Echo(), transport.output()]
    else:
        transport = None
        processors = [Echo()]

    worker = PipelineWorker(
        Pipeline(processors),
        params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000),
        idle_timeout_secs=None,
    )
    if transport is not None:

        @transport.event_handler("on_client_disconnected")
        async def on_client_disconnected(transport, client):
            await worker.cancel()

    else:
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner(handle_sigint=runner_args.handle_sigint)
    await runner.add_workers(worker)
    await runner.run()
    logger.info("agent: session over")
