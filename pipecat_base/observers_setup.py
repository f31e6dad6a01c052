"""A pipecat setup file: observability observers on every pipeline worker.

Not imported by the server: at startup, when pipecat-ai has the observers, its path is appended
to ``PIPECAT_SETUP_FILES`` (keeping the user's entries), and pipecat loads it for every pipeline
worker. It logs what the observers measure as ``[pcc-observability] ...`` INFO lines, which land
in the session's logs (and the structured lane) with its session id.

Hooks: ``setup_pipeline_worker`` (and ``setup_pipeline_task``, the name pipecat < 1.3 uses),
and a no-op ``setup_worker_runner``, without which pipecat >= 1.3 warns on every session.
"""

from __future__ import annotations

import json
from typing import Any

from loguru import logger

PREFIX = "[pcc-observability]"


def _secs(value: float | None) -> str:
    return f"{value:.3f}s" if value is not None else "?"


async def setup_pipeline_worker(worker: Any) -> None:
    try:
        from pipecat.observers.startup_timing_observer import StartupTimingObserver
        from pipecat.observers.user_bot_latency_observer import UserBotLatencyObserver
    except ImportError:  # an older pipecat-ai: nothing to attach
        return

    startup = StartupTimingObserver()

    @startup.event_handler("on_startup_timing_report")
    async def on_startup_timing(observer: Any, report: Any) -> None:
        processors = [
            {"name": t.processor_name, "offset": round(t.start_offset_secs, 3),
             "duration": round(t.duration_secs, 3)}
            for t in report.processor_timings
        ]  # fmt: skip
        logger.info(
            f"{PREFIX} Startup timing | start_time={report.start_time:.3f} | "
            f"total={report.total_duration_secs:.3f}s | processors: {json.dumps(processors)}"
        )

    @startup.event_handler("on_transport_timing_report")
    async def on_transport_timing(observer: Any, report: Any) -> None:
        parts = [f"start_time={report.start_time:.3f}"]
        if report.bot_connected_secs is not None:
            parts.append(f"bot_connected={report.bot_connected_secs:.3f}s")
        if report.client_connected_secs is not None:
            parts.append(f"client_connected={report.client_connected_secs:.3f}s")
        logger.info(f"{PREFIX} Transport timing | {' | '.join(parts)}")

    latency = UserBotLatencyObserver()

    @latency.event_handler("on_latency_measured")
    async def on_latency(observer: Any, seconds: float) -> None:
        logger.info(f"{PREFIX} User-bot latency | latency={_secs(seconds)}")

    @latency.event_handler("on_latency_breakdown")
    async def on_breakdown(observer: Any, breakdown: Any) -> None:
        events = breakdown.model_dump(mode="json") if hasattr(breakdown, "model_dump") else {}
        start = getattr(breakdown, "user_turn_start_time", None)
        head = f"start_time={start:.3f} | " if start is not None else ""
        logger.info(f"{PREFIX} Latency breakdown | {head}events: {json.dumps(events)}")

    @latency.event_handler("on_first_bot_speech_latency")
    async def on_first_speech(observer: Any, seconds: float) -> None:
        logger.info(f"{PREFIX} First bot speech | latency={_secs(seconds)}")

    worker.add_observer(startup)
    worker.add_observer(latency)


setup_pipeline_task = setup_pipeline_worker


async def setup_worker_runner(runner: Any) -> None:
    """Nothing to set up per runner; defined so pipecat >= 1.3 does not warn."""
