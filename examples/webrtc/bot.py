"""A SmallWebRTC echo bot on pipecat: every frame of the caller's audio is played back.

It needs no API keys (no STT, LLM or TTS), so it checks a deployment's WebRTC media path end to
end. The same bot answers WhatsApp calls: those arrive as SmallWebRTC sessions too, with the
WhatsApp call (caller, call id) as ``runner_args.body``.

Run it locally with ``uv run pipecat-base serve examples/webrtc/bot.py`` and point a pipecat
SmallWebRTC client at ``http://localhost:8080/api/offer``; on Pipecat Cloud the platform starts
the session (``POST /bot`` with ``X-Daily-Transport-Type: webrtc``) and the client's offer
reaches ``/api/offer`` through the Session API.
"""

from loguru import logger
from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.runner.utils import create_transport
from pipecat.transports.base_transport import TransportParams
from pipecat.workers.runner import WorkerRunner


class Echo(FrameProcessor):
    """Plays every frame of caller audio back to the caller."""

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            frame = OutputAudioRawFrame(
                audio=frame.audio, sample_rate=frame.sample_rate, num_channels=frame.num_channels
            )
        await self.push_frame(frame, direction)


async def bot(runner_args):
    logger.info(f"webrtc echo: body={runner_args.body!r} flow_config={runner_args.flow_config!r}")
    params = {"webrtc": lambda: TransportParams(audio_in_enabled=True, audio_out_enabled=True)}
    transport = await create_transport(runner_args, params)
    worker = PipelineWorker(
        Pipeline([transport.input(), Echo(), transport.output()]),
        params=PipelineParams(),
        idle_timeout_secs=None,
    )

    @transport.event_handler("on_client_connected")
    async def on_client_connected(transport, client):
        logger.info("webrtc echo: caller connected")

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, client):
        logger.info("webrtc echo: caller hung up")
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=runner_args.handle_sigint)
    await runner.add_workers(worker)
    await runner.run()
    logger.info("webrtc echo: call ended")
