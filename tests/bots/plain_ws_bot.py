"""A plain WebSocket bot as pipecat-examples' ``websocket`` example builds it: protobuf frames,
the transport made by ``create_transport`` with ``"websocket"`` params, and an echo pipeline.

``create_transport`` builds a ``FastAPIWebsocketTransport`` only when the arguments say
``transport_type == "websocket"``; otherwise it tries to detect a telephony provider from the
first messages, which a protobuf client never sends.
"""

from loguru import logger
from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.runner.utils import create_transport
from pipecat.serializers.protobuf import ProtobufFrameSerializer
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams
from pipecat.workers.runner import WorkerRunner

SAMPLE_RATE = 16000


class Echo(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            frame = OutputAudioRawFrame(
                audio=frame.audio, sample_rate=frame.sample_rate, num_channels=frame.num_channels
            )
        await self.push_frame(frame, direction)


TRANSPORT_PARAMS = {
    "websocket": lambda: FastAPIWebsocketParams(
        audio_in_enabled=True,
        audio_in_sample_rate=SAMPLE_RATE,
        audio_out_enabled=True,
        audio_out_sample_rate=SAMPLE_RATE,
        add_wav_header=False,
        serializer=ProtobufFrameSerializer(),
    ),
}


async def bot(runner_args):
    logger.info(f"plain websocket bot: transport_type={runner_args.transport_type}")
    transport = await create_transport(runner_args, TRANSPORT_PARAMS)
    pipeline = Pipeline([transport.input(), Echo(), transport.output()])
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=SAMPLE_RATE, audio_out_sample_rate=SAMPLE_RATE),
    )

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, client):
        logger.info("plain websocket bot: client left")
        await worker.cancel()

    await WorkerRunner(handle_sigint=False).run(worker)
    logger.info("plain websocket bot: ended")
