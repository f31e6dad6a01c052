"""``GET /metrics``: counters move as sessions end in each outcome."""

from __future__ import annotations

import asyncio
from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families

from pipecat_base.app import create_app
from pipecat_base.nursery import Outcome, SessionSpec


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def ended(outcome: str) -> tuple[str, tuple]:
    return ("pipecat_base_sessions_ended_total", (("outcome", outcome),))


RELEASED: list[bool] = []  # lets the abandoned bot end once the test is done with it


async def bot(args: Any) -> None:
    if args == "error":
        raise RuntimeError("boom")
    if args == "leak":
        asyncio.get_running_loop().create_task(asyncio.sleep(1000))
        return
    if args == "stubborn":
        while not RELEASED:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                pass
    if args == "forever":
        await asyncio.sleep(1000)


def test_every_outcome_has_a_counter_at_zero_from_the_start():
    from pipecat_base.observability.metrics import OUTCOMES, Metrics

    # `nursery.Outcome` lives above `metrics`; the two lists must not drift apart.
    assert set(OUTCOMES) == {outcome.value for outcome in Outcome}
    m = samples(Metrics().render().decode())
    for outcome in Outcome:
        assert m[ended(outcome.value)] == 0, outcome


async def test_counters_move_for_every_outcome(make_supervisor, autojump_clock):
    sup = make_supervisor(bot, cancel_grace=1)
    client = create_app(sup).test_client()

    async def run(args: Any, budget: float | None = None, stop: tuple | None = None) -> Outcome:
        handle = await sup.start(SessionSpec(str(args), args, budget))
        if stop:
            handle.stop(*stop)
        return await handle.wait()

    assert await run("ok") == Outcome.COMPLETED
    assert await run("leak") == Outcome.COMPLETED
    assert await run("error") == Outcome.ERROR
    assert await run("forever", budget=5) == Outcome.BUDGET
    assert await run("forever", stop=("operator", Outcome.STOPPED)) == Outcome.STOPPED
    assert await run("forever", stop=("gone", Outcome.CLIENT_DISCONNECTED)) == (
        Outcome.CLIENT_DISCONNECTED
    )
    assert await run("stubborn", budget=1) == Outcome.ABANDONED
    running = await sup.start(SessionSpec("last", "forever"))
    mid = samples((await (await client.get("/metrics")).get_data()).decode())
    assert mid[("pipecat_base_sessions_active", ())] == 1
    t0 = trio.current_time()
    await sup.drain(t0 + 30)
    assert running.outcome == Outcome.SHUTDOWN

    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    m = samples((await response.get_data()).decode())
    assert m[("pipecat_base_sessions_started_total", ())] == 8
    counts = {"completed": 2, "error": 1, "budget": 1, "stopped": 1,
              "client_disconnected": 1, "abandoned": 1, "shutdown": 1}  # fmt: skip
    for outcome, count in counts.items():
        assert m[ended(outcome)] == count, outcome
    assert m[("pipecat_base_session_budget_stops_total", ())] == 1
    assert m[("pipecat_base_sessions_active", ())] == 0
    assert m[("pipecat_base_session_duration_seconds_count", ())] == 8
    assert m[("pipecat_base_leaked_tasks_reaped_total", ())] == 1
    assert m[("pipecat_base_drain_duration_seconds", ())] == 30
    assert ("pipecat_base_loop_stalls_total", ()) in m
    RELEASED.append(True)
    await trio.sleep(2)
