"""Event publishing: envelopes, the per-session sender, observers' records, session_info.

Sessions run under the real supervisor in virtual time, their events going to a receiver
behind httpx's MockTransport (which answers in-process, so autojump_clock can drive timeouts
and flushes); the end-to-end test runs a real server process and a real receiver on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import platform
import re
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio

from pipecat_base.config import ConfigError, load_settings
from pipecat_base.nursery import SessionSpec
from pipecat_base.observability import events
from pipecat_base.observability.events import EventPublisher, envelope_for

from .conftest import PIPECAT, needs_pipecat

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")
ENVELOPE_KEYS = {"ts", "session_id", "event_name", "event_uuid", "event_properties"}


def problems(record: Any) -> list[str]:
    """What a strict receiver rejects a record for (empty: accepted)."""
    if not isinstance(record, dict):
        return ["not an object"]
    found = []
    if not set(record) <= ENVELOPE_KEYS or not ENVELOPE_KEYS - {"event_properties"} <= set(record):
        found.append(f"keys {sorted(record)}")
    for key in ("ts", "session_id", "event_name", "event_uuid"):
        value = record.get(key)
        if not isinstance(value, str) or not 0 < len(value) < 256:
            found.append(f"{key} is not a string of 1-255 characters")
    if not TS.match(str(record.get("ts"))):
        found.append("ts is not UTC ISO-8601 with microseconds")
    try:
        uuid.UUID(str(record.get("event_uuid")), version=4)
    except ValueError:
        found.append("event_uuid is not a UUID")
    properties = record.get("event_properties", {})
    if not isinstance(properties, dict) or len(json.dumps(properties).encode()) >= 10 * 1024:
        found.append("event_properties is not an object under 10 KB")
    return found


class Receiver:
    """The platform's event endpoint: records what it accepts, rejects bad records (400)."""

    def __init__(self, status: Callable[[int], int] = lambda n: 200) -> None:
        self.accepted: list[dict[str, Any]] = []
        self.rejected: list[list[str]] = []
        self.requests = 0
        self.status = status
        self.hang = False

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.hang:
            await trio.sleep_forever()
        record = json.loads(request.content)
        found = problems(record)
        if found:
            self.rejected.append(found)
            return httpx.Response(400, json={"detail": found})
        status = self.status(self.requests)
        if status < 400:
            self.accepted.append(record)
        return httpx.Response(status)

    def names(self) -> list[str]:
        return [r["event_name"] for r in self.accepted]


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
async def publisher(receiver: Receiver):
    transport = httpx.MockTransport(receiver.handle)
    async with httpx.AsyncClient(transport=transport, timeout=events.TIMEOUT) as client:
        yield EventPublisher("http://publisher.test/events", client)


def publishing_bot(*names: str, sleep: float = 0.0) -> Callable[[Any], Any]:
    async def bot(args: Any) -> None:
        for name in names:
            events.publish(name, {"n": name})
        await asyncio.sleep(sleep)

    return bot


# -- envelopes -------------------------------------------------------------------------------


def test_envelope_has_the_platforms_fields():
    first = json.loads(envelope_for("s-1", "speech_event", {"kind": "user_started"}))
    second = json.loads(envelope_for("s-1", "speech_event", None))
    assert problems(first) == []
    assert problems(second) == []
    assert (first["session_id"], first["event_name"]) == ("s-1", "speech_event")
    assert first["event_properties"] == {"kind": "user_started"}
    assert "event_properties" not in second  # left out when empty
    assert first["event_uuid"] != second["event_uuid"]


@pytest.mark.parametrize(
    ("session_id", "name", "properties", "error"),
    [
        ("x" * 256, "e", None, "its session_id must be 1-255 characters"),
        ("s", "", None, "its event_name must be 1-255 characters"),
        ("s", "e", {"blob": "x" * 10_240}, "its properties are 10251 bytes, over 10239"),
        ("s", "e", {"nan": float("nan")}, "Out of range float values are not JSON compliant"),
    ],
)
def test_envelopes_outside_the_limits_are_refused(session_id, name, properties, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        envelope_for(session_id, name, properties)
    with pytest.raises(TypeError):
        envelope_for("s", "e", {"object": object()})


async def test_a_record_that_does_not_serialise_is_dropped_with_a_warning(logs):
    outbox = events.SessionOutbox("s")
    outbox.put("error", {"bad": object()})
    (warning,) = logs.having("Event error dropped")
    assert warning[0] == "WARNING"
    assert warning[2].startswith("[pcc-observability] Event error dropped: ")


# -- the sender ------------------------------------------------------------------------------


async def test_a_session_publishes_session_info_then_its_events_in_order(
    autojump_clock, make_supervisor, publisher, receiver
):
    sup = make_supervisor(publishing_bot("a", "b", "c"), image_version="7.7", publisher=publisher)
    await (await sup.start(SessionSpec("sess-1", args=None))).wait()
    assert receiver.names() == ["session_info", "a", "b", "c"]
    assert {r["session_id"] for r in receiver.accepted} == {"sess-1"}
    info = receiver.accepted[0]["event_properties"]
    assert info == {
        "pipecat_version": importlib.metadata.version("pipecat-ai") if PIPECAT else "unknown",
        "python_version": platform.python_version(),
        "image_version": "7.7",
        "arch": platform.machine(),
    }
    assert receiver.rejected == []


async def test_events_published_from_a_bots_thread_arrive(
    autojump_clock, make_supervisor, publisher, receiver
):
    async def bot(args: Any) -> None:
        # asyncio.to_thread runs in the session's context, off the Trio thread.
        await asyncio.to_thread(events.publish, "from_thread", {"n": 1})
        await asyncio.sleep(1)

    sup = make_supervisor(bot, publisher=publisher)
    await (await sup.start(SessionSpec("s", args=None))).wait()
    assert receiver.names() == ["session_info", "from_thread"]


async def test_each_session_reports_itself(autojump_clock, make_supervisor, publisher, receiver):
    sup = make_supervisor(publishing_bot("x", sleep=1), publisher=publisher)
    async with trio.open_nursery() as nursery:
        for sid in ("one", "two"):
            handle = await sup.start(SessionSpec(sid, args=None))
            nursery.start_soon(handle.wait)
    by_session = sorted((r["session_id"], r["event_name"]) for r in receiver.accepted)
    assert by_session == [
        ("one", "session_info"), ("one", "x"), ("two", "session_info"), ("two", "x")
    ]  # fmt: skip


async def test_nothing_is_published_outside_a_session_or_without_an_endpoint(
    autojump_clock, make_supervisor, publisher, receiver
):
    events.publish("stray", {"n": 1})  # no session: dropped
    sup = make_supervisor(publishing_bot("a"))  # no publisher: nothing to send to
    await (await sup.start(SessionSpec("s", args=None))).wait()
    assert receiver.requests == 0


async def test_a_session_without_an_id_publishes_nothing(
    autojump_clock, make_supervisor, publisher, receiver
):
    sup = make_supervisor(publishing_bot("a"), publisher=publisher)
    await (await sup.start(SessionSpec(None, args=None))).wait()
    assert receiver.requests == 0


async def test_ten_failures_in_a_row_stop_the_session_publishing_the_next_one_retries(
    autojump_clock, make_supervisor, publisher, receiver, logs
):
    receiver.status = lambda n: 503
    names = [f"e{i}" for i in range(14)]
    sup = make_supervisor(publishing_bot(*names), publisher=publisher)
    await (await sup.start(SessionSpec("s1", args=None))).wait()
    assert receiver.requests == 10  # session_info and e0..e8; the rest never sent
    failed = logs.having("Event publish failed: 503")
    assert len(failed) == 10
    assert {r[:2] for r in failed} == {("WARNING", "s1")}
    assert logs.having("not publishing again") == [
        ("WARNING", "s1", "[pcc-observability] 10 publishes failed in a row; "
         "not publishing again this session")
    ]  # fmt: skip
    receiver.status = lambda n: 200
    await (await sup.start(SessionSpec("s2", args=None))).wait()
    assert receiver.names() == ["session_info", *names]
    assert {r["session_id"] for r in receiver.accepted} == {"s2"}


async def test_a_success_resets_the_run_of_failures(
    autojump_clock, make_supervisor, publisher, receiver, logs
):
    receiver.status = lambda n: 200 if n == 10 else 500  # 9 failures, a success, 9 failures
    sup = make_supervisor(publishing_bot(*[f"e{i}" for i in range(18)]), publisher=publisher)
    await (await sup.start(SessionSpec("s", args=None))).wait()
    assert receiver.requests == 19
    assert logs.having("not publishing again") == []


async def test_unreachable_publisher_errors_are_logged_and_the_session_goes_on(
    autojump_clock, make_supervisor, logs
):
    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        publisher = EventPublisher("http://publisher.test/events", client)
        sup = make_supervisor(publishing_bot("a"), publisher=publisher)
        handle = await sup.start(SessionSpec("s", args=None))
        assert (await handle.wait()).value == "completed"
    assert len(logs.having("Event publish error: connection refused")) == 2


async def test_a_hung_publisher_never_holds_the_bot_and_its_flush_is_bounded(
    autojump_clock, make_supervisor, publisher, receiver, logs
):
    receiver.hang = True
    ran: list[float] = []

    async def bot(args: Any) -> None:
        for i in range(100):
            events.publish("tick", {"i": i})  # never waits, whatever the publisher does
        ran.append(trio.current_time())
        await asyncio.sleep(3)

    sup = make_supervisor(bot, publisher=publisher)
    t0 = trio.current_time()
    await (await sup.start(SessionSpec("s", args=None))).wait()
    assert ran == [t0]
    # The bot ran its 3 s; what was still queued got FLUSH_GRACE, then the session ended.
    assert trio.current_time() == t0 + 3 + events.FLUSH_GRACE
    assert receiver.requests == 1


async def test_a_full_outbox_drops_events_with_one_warning(
    autojump_clock, make_supervisor, publisher, receiver, logs
):
    receiver.hang = True

    async def bot(args: Any) -> None:
        for i in range(events.OUTBOX_SIZE + 50):
            events.publish("tick", {"i": i})

    sup = make_supervisor(bot, publisher=publisher)
    await (await sup.start(SessionSpec("s", args=None))).wait()
    assert len(logs.having("The event publisher is behind")) == 1


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "excluded"),
    [(None, False), ("", False), ("false", False), (" FALSE ", False), ("true", True),
     ("1", True), ("no", True)],
)  # fmt: skip
def test_exclude_content_is_on_for_anything_but_empty_or_false(value, excluded):
    env = {} if value is None else {"PCC_EXCLUDE_CONTENT": value}
    assert load_settings(env).exclude_content is excluded


def test_the_endpoint_must_be_a_full_url():
    url = "http://publisher:3000/events"
    assert load_settings({"PIPECAT_EVENT_PUBLISHER_ENDPOINT": url}).event_publisher_endpoint == url
    with pytest.raises(ConfigError, match="PIPECAT_EVENT_PUBLISHER_ENDPOINT='publisher:3000'"):
        load_settings({"PIPECAT_EVENT_PUBLISHER_ENDPOINT": "publisher:3000"})


# -- observers' records ----------------------------------------------------------------------


@needs_pipecat
def test_allow_lists_name_real_fields_and_no_conversation_content():
    from pipecat.observers.error_observer import ErrorEvent
    from pipecat.observers.function_call_observer import FunctionCallEvent
    from pipecat.observers.service_metrics_observer import (
        ServiceLatencyRecord,
        ServiceUsageRecord,
    )
    from pipecat.observers.speaking_observer import SpeechEvent
    from pipecat.observers.startup_timing_observer import (
        StartupTimingReport,
        TransportTimingReport,
    )
    from pipecat.observers.user_bot_latency_observer import LatencyBreakdown

    from pipecat_base.observability.observers_setup import ALLOWED

    models = {
        "startup_timing": StartupTimingReport, "transport_timing": TransportTimingReport,
        "latency_breakdown": LatencyBreakdown, "service_latency": ServiceLatencyRecord,
        "service_usage": ServiceUsageRecord, "speech_event": SpeechEvent,
        "function_call_event": FunctionCallEvent, "error": ErrorEvent,
    }  # fmt: skip
    assert set(ALLOWED) == set(models)
    for name, model in models.items():
        assert ALLOWED[name] <= set(model.model_fields), name
    assert not {"arguments", "result", "error"} & ALLOWED["function_call_event"]
    assert "message" not in ALLOWED["error"]


@needs_pipecat
async def test_function_calls_and_errors_leave_without_their_content(
    autojump_clock, make_supervisor, publisher, receiver
):
    from pipecat.observers.error_observer import ErrorEvent
    from pipecat.observers.function_call_observer import FunctionCallEvent
    from pipecat.utils.errors import ErrorCategory

    from pipecat_base.observability.observers_setup import publish_record

    async def bot(args: Any) -> None:
        call = FunctionCallEvent(
            kind="function_call_completed", function_name="get_weather", tool_call_id="t1",
            timestamp=1.5, arguments={"city": "Paris"}, result={"temp": 21}, error="detail",
        )  # fmt: skip
        publish_record("function_call_event", call)
        error = ErrorEvent(
            message="the user said their card number", category=next(iter(ErrorCategory)),
            processor="LLM#0", processor_usable=True, timestamp=2.0,
        )  # fmt: skip
        publish_record("error", error)

    sup = make_supervisor(bot, publisher=publisher)
    await (await sup.start(SessionSpec("s", args=None))).wait()
    call, error = (r["event_properties"] for r in receiver.accepted[1:])
    assert (call["function_name"], call["tool_call_id"]) == ("get_weather", "t1")
    assert not {"arguments", "result", "error"} & set(call)
    assert "message" not in error
    assert error["processor"] == "LLM#0"
    assert "Paris" not in json.dumps(receiver.accepted)


def _aggregators() -> tuple[Any, Any, Any]:
    from pipecat.pipeline.parallel_pipeline import ParallelPipeline
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair

    pair = LLMContextAggregatorPair(LLMContext())
    # Nested the way real bots nest them: a pipeline inside a parallel branch.
    nested = Pipeline([ParallelPipeline([Pipeline([pair.user()])], [pair.assistant()])])
    return nested, pair.user(), pair.assistant()


@needs_pipecat
@pytest.mark.slow
@pytest.mark.parametrize("exclude", [False, True])
async def test_transcripts_of_both_roles_from_nested_aggregators(
    autojump_clock, make_supervisor, receiver, exclude
):
    from pipecat.processors.aggregators.llm_response_universal import (
        AssistantTurnStoppedMessage,
        UserTurnStoppedMessage,
    )

    from pipecat_base.observability.observers_setup import _transcripts

    pipeline, user, assistant = _aggregators()
    _transcripts(pipeline)

    async def bot(args: Any) -> None:
        said = UserTurnStoppedMessage(content="what's the weather?", timestamp="2026-12-04T10:00")
        await user._call_event_handler("on_user_turn_stopped", None, said)
        empty = AssistantTurnStoppedMessage(content="", interrupted=True, timestamp="t")
        await assistant._call_event_handler("on_assistant_turn_stopped", empty)
        reply = AssistantTurnStoppedMessage(
            content="Sunny.", interrupted=True, timestamp="2026-12-04T10:01"
        )
        await assistant._call_event_handler("on_assistant_turn_stopped", reply)
        await asyncio.sleep(1)  # event handlers may run in tasks of their own

    transport = httpx.MockTransport(receiver.handle)
    async with httpx.AsyncClient(transport=transport) as client:
        publisher = EventPublisher("http://p.test/e", client, include_content=not exclude)
        sup = make_supervisor(bot, publisher=publisher)
        await (await sup.start(SessionSpec("s", args=None))).wait()
    transcripts = [
        r["event_properties"] for r in receiver.accepted if r["event_name"] == "transcript"
    ]
    if exclude:
        assert transcripts == []
        return
    assert transcripts == [
        {"role": "user", "text": "what's the weather?", "timestamp": "2026-12-04T10:00"},
        {"role": "assistant", "text": "Sunny.", "timestamp": "2026-12-04T10:01",
         "interrupted": True},
    ]  # fmt: skip


# -- end to end ------------------------------------------------------------------------------


@needs_pipecat
@pytest.mark.slow
async def test_a_real_server_publishes_a_pipeline_sessions_events_to_a_local_receiver():
    from quart import request
    from quart_trio import QuartTrio

    from .hypercorn_serving import STOCK, serving
    from .process import BOTS, server_process

    accepted: list[dict[str, Any]] = []
    rejected: list[list[str]] = []
    receiver_app = QuartTrio("receiver")

    @receiver_app.post("/events")
    async def receive() -> Any:
        record = json.loads(await request.get_data())
        found = problems(record)
        (rejected if found else accepted).append(found or record)
        return ({"detail": found}, 400) if found else ({}, 200)

    from hypercorn.config import Config

    async with serving(STOCK, Config(), receiver_app) as url:
        endpoint = url.replace("ws://", "http://") + "/events"
        env = {"PIPECAT_EVENT_PUBLISHER_ENDPOINT": endpoint, "IMAGE_VERSION": "e2e"}
        async with server_process(BOTS / "pipeline_bot.py", env=env) as server:
            async with httpx.AsyncClient(timeout=30) as client:
                headers = {"X-Daily-Session-Id": "e2e-1", "X-PCC-Max-Session-Seconds": "1"}
                response = await client.post(f"{server.url}/bot", json={}, headers=headers)
                assert response.status_code == 200
            server.signal()
    assert rejected == []
    names = [r["event_name"] for r in accepted]
    assert names[0] == "session_info"
    assert "startup_timing" in names
    assert {r["session_id"] for r in accepted} == {"e2e-1"}
    assert accepted[0]["event_properties"]["image_version"] == "e2e"
    timing = next(r for r in accepted if r["event_name"] == "startup_timing")
    assert set(timing["event_properties"]) >= {"start_time", "total_duration_secs"}
    assert "Event publish" not in server.text


@needs_pipecat
async def test_every_observer_is_attached_and_its_handlers_publish(
    autojump_clock, make_supervisor, publisher, receiver
):
    from pipecat.observers.error_observer import ErrorEvent
    from pipecat.observers.speaking_observer import SpeechEvent
    from pipecat.utils.errors import ErrorCategory

    from pipecat_base.observability.observers_setup import setup_pipeline_worker

    class Worker:  # what setup_pipeline_worker uses of pipecat's PipelineWorker
        pipeline = None

        def __init__(self) -> None:
            self.observers: list[Any] = []

        def add_observer(self, observer: Any) -> None:
            self.observers.append(observer)

    async def bot(args: Any) -> None:
        worker = Worker()
        await setup_pipeline_worker(worker)
        by_type = {type(o).__name__: o for o in worker.observers}
        assert set(by_type) == {
            "StartupTimingObserver", "UserBotLatencyObserver", "ServiceMetricsObserver",
            "SpeakingObserver", "FunctionCallObserver", "ErrorObserver",
        }  # fmt: skip
        speech = SpeechEvent(
            kind=next(iter(SpeechEvent.model_fields["kind"].annotation)), timestamp=1.0
        )
        await by_type["SpeakingObserver"]._call_event_handler("on_speech_event", speech)
        error = ErrorEvent(
            message="m", category=next(iter(ErrorCategory)), processor="p",
            processor_usable=False, timestamp=2.0,
        )  # fmt: skip
        await by_type["ErrorObserver"]._call_event_handler("on_error", error)
        await by_type["UserBotLatencyObserver"]._call_event_handler("on_latency_measured", 0.25)
        await asyncio.sleep(1)

    sup = make_supervisor(bot, publisher=publisher)
    await (await sup.start(SessionSpec("s", args=None))).wait()
    assert receiver.names()[1:] == ["speech_event", "error", "user_bot_latency"]
    latency = receiver.accepted[3]["event_properties"]
    assert latency["latency_secs"] == 0.25
    assert set(latency) == {"latency_secs", "timestamp"}
