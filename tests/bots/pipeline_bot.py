"""A real pipecat pipeline with no network services, written the way pipecat's examples are.

``Tracker`` notes its lifecycle with loguru, so tests can order it against the session's
start/stop lines.
"""

from loguru import logger
from pipecat.frames.frames import Frame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner


class Tracker(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)

    async def cleanup(self):
        await super().cleanup()
        logger.info(f"tracker {self.name} cleaned up")


async def bot(args):
    pipeline = Pipeline([Tracker(name="first"), Tracker(name="second")])
    worker = PipelineWorker(pipeline, params=PipelineParams(), idle_timeout_secs=None)
    runner = WorkerRunner(handle_sigint=args.handle_sigint, handle_sigterm=args.handle_sigterm)
    await runner.add_workers(worker)
    logger.info("pipeline running")
    await runner.run()
    logger.info("runner returned")
