"""The benchmark scenarios; each run measures both servers, alternating."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

from . import load
from .servers import KINDS, Kind, Server, cpu_seconds, prime, rss_mib, running

CALL_P99_BUDGET = 0.020
# The load of sequential `POST /bot` sessions, beside the media modes (`bench.ab`, `bench.steps`).
BOT = "bot"


@dataclass(frozen=True)
class Plan:
    runs: int
    sequential: int
    concurrent: int
    media_loads: tuple[int, ...]
    media_seconds: float
    media_modes: tuple[str, ...]
    memory_marks: tuple[int, ...]
    capacity_ladder: tuple[int, ...] = ()
    capacity_seconds: float = 4.0
    ping_pong_frames: int = 100


# 300 sessions: the peer's take ~0.3 CPU ms each, and CPU is read in 10 ms ticks.
QUICK = Plan(1, 300, 10, (1, 10), 1.0, ("raw", "pipecat"), (1, 20), ping_pong_frames=30)
# 1000 sequential sessions: the p99 of 100 (as until 2026-12-01) was their slowest one.
FULL = Plan(3, 1000, 50, (1, 10, 50), 5.0, ("raw", "pipecat", "vad"), (1, 100, 1000),
            (5, 10, 15, 20, 25, 30, 35, 40, 50, 60, 80), 4.0)  # fmt: skip


@dataclass
class Results:
    """``values[metric][server] = [one value per run]``; raw samples kept for the plots."""

    values: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    rtt_samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def add(self, metric: str, kind: Kind, value: float) -> None:
        self.values[metric][kind.name].append(value)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def post_bots(
    server: Server, count: int, concurrency: int, tag: str
) -> list[tuple[str, float, float]]:
    """``count`` ``/bot`` sessions, ``concurrency`` at a time: (session id, sent, answered)."""
    out: list[tuple[str, float, float]] = []
    limiter = trio.CapacityLimiter(concurrency)
    async with httpx.AsyncClient(
        timeout=60, limits=httpx.Limits(max_connections=concurrency)
    ) as client:

        async def one(i: int) -> None:
            async with limiter:
                sid = f"{tag}-{i}"
                sent = time.monotonic()
                response = await client.post(
                    f"{server.url}/bot", json={}, headers={"X-Daily-Session-Id": sid}
                )
                response.raise_for_status()
                out.append((sid, sent, time.monotonic()))

        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i)
    return out


def round_trips_ms(answered: list[tuple[str, float, float]]) -> list[float]:
    """Each `post_bots` session's round trip: request sent to answer, in milliseconds."""
    return [(at - sent) * 1000 for _, sent, at in answered]


async def warm_up(server: Server, mode: str) -> None:
    """Imports and first-call costs, before what is counted: a few sessions or one short call."""
    if mode == BOT:
        await post_bots(server, 20, 1, "warm-up")
    else:
        await load.calls(server.ws_url, mode, 1, 1.0)


def _entries(path: Path) -> dict[str, float]:
    entries = {}
    for line in path.read_text().splitlines():
        sid, at = line.split()
        entries[sid] = float(at)
    return entries


async def session_starts(servers: list[tuple[Server, Path]], plan: Plan, results: Results) -> None:
    """Sequential, then concurrent (``plan.concurrent`` at a time) ``/bot`` sessions; each row
    on every server in turn (with the log where its bot notes when it was entered)."""
    # As many sessions at once as one after the other: CPU is read in 10 ms ticks, and 50
    # sessions of ~1 ms are 5 ticks (until 2026-12-08 the concurrent row sent only 50).
    for label, count, concurrency in (
        ("seq", plan.sequential, 1),
        ("conc", max(plan.sequential, plan.concurrent), plan.concurrent),
    ):
        for server, entry_log in servers:
            before = cpu_seconds(server.pid)
            done = await post_bots(server, count, concurrency, label)
            await settle(server.pid)  # memory release after the last answers counts too
            cpu_ms = (cpu_seconds(server.pid) - before) * 1000 / count
            results.add(f"bot_cpu_ms_per_session_{label}", server.kind, cpu_ms)
            entries = _entries(entry_log)
            enter = [(entries[sid] - sent) * 1000 for sid, sent, _ in done if sid in entries]
            rtt = round_trips_ms(done)
            results.add(f"bot_entry_{label}_p50_ms", server.kind, pct(enter, 50))
            results.add(f"bot_entry_{label}_p99_ms", server.kind, pct(enter, 99))
            results.add(f"bot_rtt_{label}_p50_ms", server.kind, pct(rtt, 50))
            results.add(f"bot_rtt_{label}_p99_ms", server.kind, pct(rtt, 99))


async def memory(server: Server, plan: Plan, results: Results) -> None:
    results.add("idle_rss_mib", server.kind, rss_mib(server.pid))
    done = 0
    for mark in plan.memory_marks:
        await post_bots(server, mark - done, 1, f"mem{mark}")
        done = mark
        await settle(server.pid)  # pipecat-base releases memory once idle (`AfterSessions`)
        results.add(f"rss_after_{mark}_sessions_mib", server.kind, rss_mib(server.pid))


async def media(servers: list[Server], plan: Plan, results: Results) -> None:
    """Ping-pong, then each media load; each row on every server in turn, seconds apart, so
    the machine's drift over minutes stays out of the ratio."""
    for server in servers:
        rtts = await load.ping_pong(server.ws_url, plan.ping_pong_frames)
        results.add("ping_pong_rtt_p50_ms", server.kind, pct(rtts, 50) * 1000)
        results.add("ping_pong_rtt_p99_ms", server.kind, pct(rtts, 99) * 1000)
    for mode in plan.media_modes:
        for count in plan.media_loads:
            for server in servers:
                await media_load(server, plan, mode, count, results)


async def calls_cost(
    server: Server, mode: str, count: int, seconds: float
) -> tuple[float, list[load.CallResult]]:
    """``count`` concurrent calls of ``seconds``: the server's CPU ms per call-second, and the
    calls. The bots' teardown after the hang-up, and any backlog an overloaded server is still
    working through, are part of the cost -- and must not spill into the next figures."""
    before = cpu_seconds(server.pid)
    calls = await load.calls(server.ws_url, mode, count, seconds)
    await settle(server.pid)
    return (cpu_seconds(server.pid) - before) * 1000 / (count * seconds), calls


async def media_load(server: Server, plan: Plan, mode: str, count: int, results: Results) -> None:
    cpu_ms, calls = await calls_cost(server, mode, count, plan.media_seconds)
    rtts = [r for c in calls for r in c.rtts]
    key = f"{mode}_{count}"
    results.add(f"cpu_ms_per_call_s_{key}", server.kind, cpu_ms)
    results.add(f"rtt_p50_ms_{key}", server.kind, pct(rtts, 50) * 1000)
    results.add(f"rtt_p99_ms_{key}", server.kind, pct(rtts, 99) * 1000)
    results.add(f"lost_reordered_corrupted_frames_{key}", server.kind, sum(c.faults for c in calls))
    if mode == "pipecat" and count == 10:
        results.rtt_samples[server.kind.name] = [r * 1000 for r in rtts]


async def settle(
    pid: int,
    window: float = 0.2,
    idle_share: float = 0.05,
    bound: float = 30.0,
    after: float = 0.3,
    cpu: Callable[[int], float] = cpu_seconds,
) -> None:
    """Return once the process has used under ``idle_share`` of a core over ``window`` seconds
    (at least ``after`` seconds after the call, at most ``bound``); ``cpu`` reads its CPU time."""
    await trio.sleep(after)
    with trio.move_on_after(bound):
        while True:
            before = cpu(pid)
            await trio.sleep(window)
            if cpu(pid) - before <= idle_share * window:
                return


async def drain_accuracy(kind: Kind, results: Results) -> None:
    async with running(kind, env={"SHUTDOWN_TIMEOUT": "1"}) as server:
        async with httpx.AsyncClient(timeout=30) as client, trio.open_nursery() as nursery:

            async def forever() -> None:
                try:
                    await client.post(f"{server.url}/bot", json={"mode": "forever"})
                except httpx.HTTPError:
                    pass

            nursery.start_soon(forever)
            await trio.sleep(0.5)
            took = await server.stop()
        results.add("drain_exit_minus_shutdown_timeout_s", kind, took - 1.0)


@contextmanager
def off_core(core: int) -> Iterator[None]:
    """Keep this process (the load generator) off ``core`` inside the block, when it has others.

    Only around the capacity scenario: children inherit the mask, so setting it for the whole
    run (as until 2026-11-24) put every other scenario's server on the load generator's core.
    """
    cores = os.sched_getaffinity(0)
    if len(cores) > 1:
        os.sched_setaffinity(0, cores - {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


async def climb(
    p99_at: Callable[[int], Awaitable[float]], ladder: tuple[int, ...]
) -> tuple[int, int]:
    """Climb ``ladder`` (numbers of concurrent calls) and return the two capacities.

    * absolute: the most calls whose frame RTT p99 stays under `CALL_P99_BUDGET` (the issue's
      criterion; pipecat's echo pipeline paces its output, so even one call's p99 is ~22 ms on
      either server and this is 0 for the pipecat echo);
    * added: the most calls whose p99 stays under one call's p99 plus `CALL_P99_BUDGET`, i.e.
      at most 20 ms of queueing added by load, which does tell the servers apart.

    ``p99_at(n)`` runs ``n`` calls and returns their p99 in seconds; one call is measured first,
    and the climb stops at the first step past the added criterion.
    """
    reference = await p99_at(1)
    absolute_holds = reference < CALL_P99_BUDGET
    absolute, added = (1 if absolute_holds else 0), 1
    for count in ladder:
        p99 = await p99_at(count)
        if p99 >= reference + CALL_P99_BUDGET:
            break
        added = count
        absolute_holds = absolute_holds and p99 < CALL_P99_BUDGET
        if absolute_holds:
            absolute = count
    return absolute, added


async def capacity(kind: Kind, plan: Plan, results: Results) -> None:
    with off_core(0):
        async with running(kind, cpu=0) as server:

            async def p99_at(count: int) -> float:
                calls = await load.calls(server.ws_url, "pipecat", count, plan.capacity_seconds)
                await settle(server.pid)
                return pct([r for c in calls for r in c.rtts], 99)

            absolute, added = await climb(p99_at, plan.capacity_ladder)
    results.add("capacity_calls_p99_under_20ms_one_core", kind, absolute)
    results.add("capacity_calls_p99_within_20ms_of_one_call_one_core", kind, added)


async def run_all(plan: Plan, servers_: tuple[Kind, ...] = KINDS) -> Results:
    """Every scenario, ``plan.runs`` times. Within a run every server is up, and each row is
    measured on one and then the next (the order turns from run to run)."""
    results = Results()
    await prime(servers_)  # startups are timed with bytecode compiled, as in the image
    for run in range(plan.runs):
        first = run % len(servers_)
        kinds = servers_[first:] + servers_[:first]
        with tempfile.TemporaryDirectory() as tmp:
            async with AsyncExitStack() as stack:
                servers: list[tuple[Server, Path]] = []
                for kind in kinds:
                    entry_log = Path(tmp) / f"entries-{kind.module}"
                    entry_log.touch()
                    env = {"BENCH_ENTRY_LOG": str(entry_log)}
                    server = await stack.enter_async_context(running(kind, env=env))
                    results.add("startup_s", kind, server.startup_seconds)
                    servers.append((server, entry_log))
                for server, _ in servers:
                    await memory(server, plan, results)
                await session_starts(servers, plan, results)
                await media([server for server, _ in servers], plan, results)
                await trio.sleep(0.5)  # let the last sessions finish: these stops are idle
                for server, _ in servers:
                    results.add("idle_shutdown_s", server.kind, await server.stop())
        for kind in kinds:
            await drain_accuracy(kind, results)
            if plan.capacity_ladder:
                await capacity(kind, plan, results)
    return results


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
