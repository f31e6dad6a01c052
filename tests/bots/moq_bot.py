"""A MoQ bot as pipecat's examples write one: ``create_transport`` dials the session's relay.

The tests' relay is a UDP socket on 127.0.0.1 that records the QUIC handshake's first packet
and never answers, so the dial fails the way an unreachable relay makes it fail.
"""

from loguru import logger
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.runner.utils import create_transport
from pipecat.transports.base_transport import TransportParams
from pipecat.workers.runner import WorkerRunner


def _params() -> TransportParams:
    return TransportParams(
        audio_in_enabled=True,
        audio_out_enabled=True,
        audio_in_sample_rate=16000,
        audio_out_sample_rate=16000,
    )


async def bot(args):
    logger.info(f"bot dials {args.relay_url} in namespace {args.namespace}")
    transport = await create_transport(args, {"moq": _params})
    worker = PipelineWorker(
        Pipeline([transport.input(), transport.output()]),
        params=PipelineParams(),
        idle_timeout_secs=None,
    )
    runner = WorkerRunner(handle_sigint=args.handle_sigint, handle_sigterm=args.handle_sigterm)
    await runner.add_workers(worker)
    await runner.run()
