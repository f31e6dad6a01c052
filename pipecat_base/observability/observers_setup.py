"""A pipecat setup file: observability observers on every pipeline worker.

Not imported by the server: at startup, when pipecat-ai has the observers, its path is appended
to ``PIPECAT_SETUP_FILES`` (keeping the user's entries), and pipecat loads it for every pipeline
worker. What the observers measure is logged as ``[pcc-observability] ...`` INFO lines, which
land in the session's logs (and the structured lane) with its session id, and published as
events (`pipecat_base.observability.events`, when ``PIPECAT_EVENT_PUBLISHER_ENDPOINT`` is set):

* ``startup_timing``, ``transport_timing`` (StartupTimingObserver);
* ``user_bot_latency``, ``first_bot_speech_latency`` (``{latency_secs, timestamp}``) and
  ``latency_breakdown`` (UserBotLatencyObserver);
* ``service_latency``, ``service_usage`` (ServiceMetricsObserver);
* ``speech_event`` (SpeakingObserver);
* ``function_call_event`` (FunctionCallObserver: never the arguments, results or errors);
* ``error`` (ErrorObserver: never the message, which may quote the conversation);
* ``transcript`` (``{role, text, timestamp, interrupted}``, from the pipeline's LLM context
  aggregators; empty turns skipped; off when ``PCC_EXCLUDE_CONTENT`` excludes content).

Only the fields in `ALLOWED` leave the process. An older pipecat-ai publishes what it has.

Hooks: ``setup_pipeline_worker`` (and ``setup_pipeline_task``, the name pipecat < 1.3 uses),
and a no-op ``setup_worker_runner``, without which pipecat >= 1.3 warns on every session.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from loguru import logger

from pipecat_base.observability import events

PREFIX = events.PREFIX

# The fields each record may publish: measurements and names, never conversation content.
ALLOWED: dict[str, set[str]] = {
    "startup_timing": {
        "start_time", "total_duration_secs", "setup_phase_secs", "start_phase_secs",
        "processor_timings", "warmup",
    },
    "transport_timing": {"start_time", "bot_connected_secs", "client_connected_secs"},
    "latency_breakdown": {
        "ttfb", "contributions", "measured_from", "total_secs", "text_aggregation",
        "user_turn_start_time", "user_turn_secs", "function_calls",
    },
    "service_latency": {
        "kind", "processor", "model", "timestamp", "seconds", "ttfb_secs",
        "leading_silence_secs", "thinking_time_secs",
    },
    "service_usage": {
        "kind", "processor", "model", "timestamp", "audio_seconds", "characters",
        "prompt_tokens", "completion_tokens", "total_tokens", "cache_read_input_tokens",
        "cache_creation_input_tokens", "reasoning_tokens", "input_audio_tokens",
        "output_audio_tokens", "cache_read_input_audio_tokens",
    },
    "speech_event": {"kind", "timestamp", "started_at"},
    "function_call_event": {
        "kind", "function_name", "tool_call_id", "timestamp", "group_id", "blocking",
        "started_at", "in_progress_at",
    },
    "error": {"category", "exception_type", "processor", "processor_usable", "timestamp"},
}  # fmt: skip


def publish_record(event_name: str, record: Any) -> None:
    """Publish a pipecat record (a pydantic model) with only its allowed fields."""
    try:
        properties = record.model_dump(mode="json", include=ALLOWED[event_name])
    except Exception as exc:
        logger.warning(f"{PREFIX} Event {event_name} dropped: {exc}")
        return
    events.publish(event_name, properties)


def publish_latency(event_name: str, seconds: float) -> None:
    events.publish(event_name, {"latency_secs": seconds, "timestamp": time.time()})


def _secs(value: float | None) -> str:
    return f"{value:.3f}s" if value is not None else "?"


async def setup_pipeline_worker(worker: Any) -> None:
    for attach in (
        _startup_timing,
        _user_bot_latency,
        *(_record_observer(*entry) for entry in RECORD_OBSERVERS),
    ):
        try:
            observer = attach()
        except ImportError:  # an older pipecat-ai: nothing of that kind to attach
            continue
        worker.add_observer(observer)
    pipeline = getattr(worker, "pipeline", None)
    if pipeline is not None:
        _transcripts(pipeline)


def _startup_timing() -> Any:
    from pipecat.observers.startup_timing_observer import StartupTimingObserver

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
        publish_record("startup_timing", report)

    @startup.event_handler("on_transport_timing_report")
    async def on_transport_timing(observer: Any, report: Any) -> None:
        parts = [f"start_time={report.start_time:.3f}"]
        if report.bot_connected_secs is not None:
            parts.append(f"bot_connected={report.bot_connected_secs:.3f}s")
        if report.client_connected_secs is not None:
            parts.append(f"client_connected={report.client_connected_secs:.3f}s")
        logger.info(f"{PREFIX} Transport timing | {' | '.join(parts)}")
        publish_record("transport_timing", report)

    return startup


def _user_bot_latency() -> Any:
    from pipecat.observers.user_bot_latency_observer import UserBotLatencyObserver

    latency = UserBotLatencyObserver()

    @latency.event_handler("on_latency_measured")
    async def on_latency(observer: Any, seconds: float) -> None:
        logger.info(f"{PREFIX} User-bot latency | latency={_secs(seconds)}")
        publish_latency("user_bot_latency", seconds)

    @latency.event_handler("on_latency_breakdown")
    async def on_breakdown(observer: Any, breakdown: Any) -> None:
        dumped = breakdown.model_dump(mode="json") if hasattr(breakdown, "model_dump") else {}
        start = getattr(breakdown, "user_turn_start_time", None)
        head = f"start_time={start:.3f} | " if start is not None else ""
        logger.info(f"{PREFIX} Latency breakdown | {head}events: {json.dumps(dumped)}")
        publish_record("latency_breakdown", breakdown)

    @latency.event_handler("on_first_bot_speech_latency")
    async def on_first_speech(observer: Any, seconds: float) -> None:
        logger.info(f"{PREFIX} First bot speech | latency={_secs(seconds)}")
        publish_latency("first_bot_speech_latency", seconds)

    return latency


# Observers whose records are published as they are (allow-listed): module, class, options,
# and which event handler publishes which event.
RECORD_OBSERVERS: list[tuple[str, str, dict[str, Any], dict[str, str]]] = [
    ("pipecat.observers.service_metrics_observer", "ServiceMetricsObserver", {},
     {"on_service_latency": "service_latency", "on_service_usage": "service_usage"}),
    ("pipecat.observers.speaking_observer", "SpeakingObserver", {},
     {"on_speech_event": "speech_event"}),
    # Without arguments and results at the source, not only filtered out of the record.
    ("pipecat.observers.function_call_observer", "FunctionCallObserver",
     {"include_arguments": False, "include_results": False},
     {"on_function_call_event": "function_call_event"}),
    ("pipecat.observers.error_observer", "ErrorObserver", {}, {"on_error": "error"}),
]  # fmt: skip


def _record_observer(
    module: str, name: str, options: dict[str, Any], published: dict[str, str]
) -> Callable[[], Any]:
    def attach() -> Any:
        observer = getattr(importlib.import_module(module), name)(**options)
        for handler, event_name in published.items():
            observer.add_event_handler(handler, _publisher(event_name))
        return observer

    return attach


def _publisher(event_name: str) -> Callable[[Any, Any], Awaitable[None]]:
    async def handler(observer: Any, record: Any) -> None:
        publish_record(event_name, record)

    return handler


def _transcripts(pipeline: Any) -> None:
    """Publish each finished turn's text from the pipeline's LLM context aggregators."""
    try:
        from pipecat.processors.aggregators.llm_response_universal import (
            LLMAssistantAggregator,
            LLMUserAggregator,
        )
    except ImportError:
        return
    for processor in walk(pipeline):
        if isinstance(processor, LLMUserAggregator):
            processor.add_event_handler("on_user_turn_stopped", _user_turn)
        elif isinstance(processor, LLMAssistantAggregator):
            processor.add_event_handler("on_assistant_turn_stopped", _assistant_turn)


async def _user_turn(aggregator: Any, strategy: Any, message: Any) -> None:
    _publish_transcript("user", message.content, message.timestamp, None)


async def _assistant_turn(aggregator: Any, message: Any) -> None:
    _publish_transcript("assistant", message.content, message.timestamp, message.interrupted)


def _publish_transcript(role: str, text: str | None, timestamp: Any, interrupted: Any) -> None:
    if not text or not text.strip() or not events.content_allowed():
        return
    properties: dict[str, Any] = {"role": role, "text": text, "timestamp": timestamp}
    if interrupted is not None:
        properties["interrupted"] = bool(interrupted)
    events.publish("transcript", properties)


def walk(root: Any) -> Iterator[Any]:
    """Every processor in ``root``, nested pipelines (parallel ones too) included."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        processor = stack.pop()
        if id(processor) in seen:
            continue
        seen.add(id(processor))
        yield processor
        children = getattr(processor, "processors", None)
        if isinstance(children, list):
            stack.extend(reversed(children))


setup_pipeline_task = setup_pipeline_worker


async def setup_worker_runner(runner: Any) -> None:
    """Nothing to set up per runner; defined so pipecat >= 1.3 does not warn."""
