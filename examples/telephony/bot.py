"""A telephony echo bot on pipecat, written the way pipecat's telephony examples are.

It works with Twilio, Telnyx, Plivo and Exotel Media Streams pointed at ``/ws``: pipecat
detects the provider from the first messages, the provider's serializer turns its media JSON
into audio frames, and the pipeline plays every frame straight back to the caller. It needs no
API keys (no STT, LLM or TTS), so it is a way to check a deployment's media path end to end.

The session body (the ``body`` query parameter, base64 JSON) may carry:

* ``"vad": true`` -- add Silero VAD to the pipeline (exercises pipecat's thread-pool executor);
* ``"transport": "create_transport"`` -- build the transport with pipecat's
  ``create_transport()`` (serializers then hang up through the provider's REST API on the
  way out, which needs the provider's credentials in the environment); by default the
  serializers are built here with ``auto_hang_up=False``.
"""

from loguru import logger
from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.runner.utils import create_transport, parse_telephony_websocket
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)
from pipecat.workers.runner import WorkerRunner

SAMPLE_RATE = 8000  # telephony audio; keeping the pipeline at 8 kHz avoids resampling


class Echo(FrameProcessor):
    """Plays every frame of caller audio back to the caller."""

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            frame = OutputAudioRawFrame(
                audio=frame.audio, sample_rate=frame.sample_rate, num_channels=frame.num_channels
            )
        await self.push_frame(frame, direction)

    async def cleanup(self):
        await super().cleanup()
        logger.info("echo: cleaned up")


def _serializer(provider: str, call_data):
    params = {"auto_hang_up": False}
    if provider == "twilio":
        from pipecat.serializers.twilio import TwilioFrameSerializer

        return TwilioFrameSerializer(
            stream_sid=call_data.stream_id,
            call_sid=call_data.call_id,
            params=TwilioFrameSerializer.InputParams(**params),
        )
    if provider == "telnyx":
        from pipecat.serializers.telnyx import TelnyxFrameSerializer

        return TelnyxFrameSerializer(
            stream_id=call_data.stream_id,
            call_control_id=call_data.call_id,
            outbound_encoding=call_data.outbound_encoding or "PCMU",
            inbound_encoding="PCMU",
            params=TelnyxFrameSerializer.InputParams(**params),
        )
    if provider == "plivo":
        from pipecat.serializers.plivo import PlivoFrameSerializer

        return PlivoFrameSerializer(
            stream_id=call_data.stream_id,
            call_id=call_data.call_id,
            params=PlivoFrameSerializer.InputParams(**params),
        )
    if provider == "exotel":
        from pipecat.serializers.exotel import ExotelFrameSerializer

        return ExotelFrameSerializer(stream_sid=call_data.stream_id, call_sid=call_data.call_id)
    raise ValueError(f"unsupported telephony provider: {provider}")


def _params(**extra) -> FastAPIWebsocketParams:
    return FastAPIWebsocketParams(
        audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False, **extra
    )


async def bot(runner_args):
    options = runner_args.body or {}
    if options.get("transport") == "create_transport":
        factories = {p: _params for p in ("twilio", "telnyx", "plivo", "exotel")}
        transport = await create_transport(runner_args, factories)
        provider, _ = await parse_telephony_websocket(runner_args.websocket)  # cached
    else:
        provider, call_data = await parse_telephony_websocket(runner_args.websocket)
        transport = FastAPIWebsocketTransport(
            websocket=runner_args.websocket,
            params=_params(serializer=_serializer(provider, call_data)),
        )
    logger.info(f"echo: {provider} call connected")

    processors = [transport.input()]
    if options.get("vad"):
        from pipecat.audio.vad.silero import SileroVADAnalyzer
        from pipecat.processors.audio.vad_processor import VADProcessor

        processors.append(VADProcessor(vad_analyzer=SileroVADAnalyzer()))
    processors += [Echo(), transport.output()]

    worker = PipelineWorker(
        Pipeline(processors),
        params=PipelineParams(audio_in_sample_rate=SAMPLE_RATE, audio_out_sample_rate=SAMPLE_RATE),
        idle_timeout_secs=None,
    )

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, client):
        logger.info("echo: caller hung up")
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=runner_args.handle_sigint)
    await runner.add_workers(worker)
    await runner.run()
    logger.info("echo: call ended")
