"""The benchmark harness's quick mode, so it cannot rot (the full run is not part of CI)."""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from .conftest import needs_pipecat

ROOT = Path(__file__).parent.parent


@needs_pipecat
@pytest.mark.slow
async def test_quick_benchmark_runs_both_servers_and_writes_the_report(tmp_path):
    out = tmp_path / "benchmarks.md"
    result = await trio.run_process(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--out",
            str(out),
            "--img-dir",
            str(tmp_path / "img"),
        ],
        cwd=ROOT,
        capture_stdout=True,
        capture_stderr=True,
    )
    assert result.returncode == 0
    report = out.read_text()
    printed = result.stdout.decode()
    for headline in ("cpu-ratio-media-10-calls-vs-peer-stack",
                     "cpu-ratio-media-1-call-vs-peer-stack", "bot-p50-ratio-vs-peer-stack",
                     "bot-cpu-ratio-c50-vs-peer-stack"):  # fmt: skip
        for text in (report, printed):
            match = re.search(rf"^{headline}: (\d+\.\d+)$", text, re.MULTILINE)
            assert match, (headline, text)
            assert float(match.group(1)) > 0
    for metric in ("bot_entry_seq_p50_ms", "bot_cpu_ms_per_session_conc", "ping_pong_rtt_p50_ms",
                   "cpu_ms_per_call_s_pipecat_10",
                   "idle_rss_mib", "idle_shutdown_s", "drain_exit_minus_shutdown_timeout_s",
                   "startup_s"):  # fmt: skip
        row = next(line for line in report.splitlines() if f"`{metric}`" in line)
        ours, baseline = (cell.strip() for cell in row.split("|")[2:4])
        assert "n/a" not in (ours, baseline), row
    lost = [line for line in report.splitlines() if "lost_reordered_corrupted" in line]
    assert lost
    assert all(line.split("|")[2].strip() == "0" for line in lost)
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == ["cpu.png", "rss.png", "rtt.png"]


def test_the_servers_cache_bytecode_outside_the_checkout_whatever_the_environment(monkeypatch):
    # The image runs with compiled bytecode; a server that compiles every module at each start
    # would time the compiler, not the startup.
    from bench import servers

    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    env = servers.child_env(8123, ROOT, {"SHUTDOWN_TIMEOUT": "1"})
    assert "PYTHONDONTWRITEBYTECODE" not in env
    assert env["PYTHONPYCACHEPREFIX"] == str(servers.PYCACHE)
    assert not servers.PYCACHE.is_relative_to(ROOT)
    assert (env["PORT"], env["PYTHONPATH"], env["SHUTDOWN_TIMEOUT"]) == ("8123", str(ROOT), "1")


@needs_pipecat
@pytest.mark.slow
async def test_priming_leaves_both_servers_bytecode_for_the_timed_starts(tmp_path, monkeypatch):
    from bench import servers

    monkeypatch.setattr(servers, "PYCACHE", tmp_path)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    await servers.prime()
    tag = sys.implementation.cache_tag
    for module in (ROOT / "pipecat_base" / "app.py", ROOT / "bench" / "baseline" / "__main__.py"):
        cached = tmp_path / module.parent.relative_to("/") / f"{module.stem}.{tag}.pyc"
        assert cached.is_file(), cached


async def test_calls_pace_their_frames_in_real_time(autojump_clock):
    from bench.load import FRAME_SECONDS, paced

    t0 = trio.current_time()
    times = [(n, trio.current_time()) async for n, _ in paced([b"a", b"b", b"c", b"d"])]
    assert times == [(n, t0 + n * FRAME_SECONDS) for n in range(4)]


def test_loop_micro_measures_both_loops():
    from bench.loop_micro import on_bridge_loop, on_plain_asyncio

    for result in (on_plain_asyncio(200), on_bridge_loop(200)):
        assert set(result) == {"call_soon", "sleep0", "queue_rtt", "timed_sleep"}
        assert all(v > 0 for v in result.values())


@needs_pipecat
@needs_pipecat
@pytest.mark.slow
@pytest.mark.parametrize(("kind", "loop"), [("PEER", "uvloop"), ("STDLIB", "asyncio")])
async def test_the_peer_stack_is_uvloop_and_httptools_and_the_stdlib_column_is_not(kind, loop):
    # The yardstick is what the existing image's fastapi[standard] lock serves on; a peer that
    # fell back to the stdlib loop and h11 would flatter us (issue 29).
    import httpx

    from bench import servers

    async with servers.running(getattr(servers, kind)) as server:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{server.url}/livez")
        assert response.json() == {"status": "ok", "loop": loop}
        # The HTTP parser shows in no response: its C extension is mapped, or not.
        maps = await trio.Path(f"/proc/{server.pid}/maps").read_text()
        assert ("httptools" in maps) == (loop == "uvloop"), kind
        await server.stop()


@needs_pipecat
async def test_the_baseline_loads_bots_without_trio_asyncio():
    # trio-asyncio replaces asyncio's loop lookups process-wide (slower outside Trio): a
    # baseline that imported it would not be the native asyncio server it stands for.
    code = (
        "import sys\n"
        "import bench.baseline.__main__\n"
        "from pipecat_base.startup.loader import load_bot\n"
        "assert callable(load_bot('bench/bots/bench_bot.py').bot)\n"
        "print('trio_asyncio' in sys.modules)\n"
    )
    result = await trio.run_process(
        [sys.executable, "-c", code], cwd=ROOT, capture_stdout=True, capture_stderr=True
    )
    assert result.stdout.decode().strip().splitlines()[-1] == "False", result.stderr.decode()


async def test_settle_waits_until_a_busy_server_goes_idle(autojump_clock):
    # An overloaded server keeps working through its backlog after the calls end; the media
    # rows count that work and wait for it, so it cannot spill into the next scenario.
    from bench.scenarios import settle

    t0 = trio.current_time()
    busy_until = 1.0  # a full core for the first second, then idle

    def cpu(pid: int) -> float:
        assert pid == 4242
        return min(trio.current_time() - t0, busy_until)

    await settle(4242, window=0.25, after=0.5, cpu=cpu)
    # Windows 0.5-0.75 and 0.75-1.0 were busy; 1.0-1.25 was the first idle one.
    assert trio.current_time() - t0 == 1.25
    assert cpu(4242) >= 0.9  # it returned only after the busy second


async def test_settle_gives_up_at_its_bound(autojump_clock):
    from bench.scenarios import settle

    t0 = trio.current_time()
    await settle(1, window=0.25, after=0.5, bound=4.0, cpu=lambda _pid: trio.current_time())
    assert trio.current_time() - t0 == 4.5  # a process busy forever: after + bound


async def test_late_echoes_are_waited_for_while_they_keep_coming(autojump_clock):
    from bench.load import until_heard

    heard = 0
    all_heard = trio.Event()

    async def slow_server() -> None:  # an echo every 1.5 s, five of them, then silence
        nonlocal heard
        for _ in range(5):
            await trio.sleep(1.5)
            heard += 1

    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_server)
        await until_heard(all_heard, lambda: heard, silence=2.0)
    assert heard == 5
    # Windows of 2 s: the last echo came at 7.5 s, the window 8-10 s heard none.
    assert trio.current_time() - t0 == 10.0


async def test_waiting_for_echoes_ends_at_once_when_all_are_heard(autojump_clock):
    from bench.load import until_heard

    all_heard = trio.Event()
    all_heard.set()
    t0 = trio.current_time()
    await until_heard(all_heard, lambda: 0)
    assert trio.current_time() == t0


def test_the_load_generator_leaves_the_servers_core_only_for_the_capacity_scenario():
    import os

    from bench.scenarios import off_core

    cores = os.sched_getaffinity(0)
    with off_core(0):
        inside = os.sched_getaffinity(0)
    assert inside == (cores - {0} if len(cores) > 1 else cores)
    assert os.sched_getaffinity(0) == cores  # restored: later servers inherit every core


@pytest.mark.parametrize(
    ("p99s", "expected", "asked"),
    [
        # pipecat's echo: one call already over 20 ms; 20 ms of added queueing reached at 30.
        ({1: 0.0226, 5: 0.023, 10: 0.024, 20: 0.03, 30: 0.05, 40: 0.2}, (0, 20),
         [1, 5, 10, 20, 30]),
        # A fast echo: under 20 ms up to 20 calls, under one call's p99 + 20 ms up to 30.
        ({1: 0.001, 5: 0.002, 10: 0.005, 20: 0.019, 30: 0.020, 40: 0.5}, (20, 30),
         [1, 5, 10, 20, 30, 40]),
        # Never past either: the whole ladder.
        ({1: 0.001, 5: 0.001, 10: 0.001, 20: 0.001, 30: 0.001, 40: 0.001}, (40, 40),
         [1, 5, 10, 20, 30, 40]),
    ],
)  # fmt: skip
async def test_capacity_climbs_the_ladder_for_both_criteria(p99s, expected, asked):
    from bench.scenarios import climb

    measured: list[int] = []

    async def p99_at(count: int) -> float:
        measured.append(count)
        return p99s[count]

    assert await climb(p99_at, (5, 10, 20, 30, 40)) == expected
    # One call first (the reference), then up the ladder until the added criterion fails.
    assert measured == asked


def test_ab_variants_are_checkouts_or_the_peer_servers(tmp_path):
    import argparse

    from bench.ab import parse_variant
    from bench.servers import OURS, PEER, STDLIB

    assert parse_variant("baseline").kind is PEER
    assert parse_variant("peer-stack").kind is PEER
    assert parse_variant("uvicorn-stdlib").kind is STDLIB
    here = parse_variant(f"now={ROOT}")
    assert (here.name, here.kind, here.root) == ("now", OURS, ROOT.resolve())
    for bad in (str(ROOT), f"x={tmp_path}", f"={ROOT}"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME=CHECKOUT"):
            parse_variant(bad)


def test_ab_ratios_are_per_run_against_the_first_variant():
    from bench.ab import RunResult, paired_ratios

    runs = [
        {"a": RunResult(20.0, 0), "b": RunResult(18.0, 0), "c": RunResult(30.0, 0)},
        {"a": RunResult(40.0, 0), "b": RunResult(38.0, 0), "c": RunResult(44.0, 0)},
    ]
    assert paired_ratios(runs, "a") == {"b": [0.9, 0.95], "c": [1.5, 1.1]}


def test_the_report_gives_each_runs_ratio_beside_the_ratio_of_medians():
    from bench.report import tables
    from bench.scenarios import Results
    from bench.servers import OURS, PEER

    results = Results()
    # Run 2 found the machine slow for both servers: paired, it is a run like the others.
    for ours, base in ((12.0, 10.0), (26.0, 20.0), (11.0, 10.0)):
        results.add("cpu_ms_per_call_s_pipecat_10", OURS, ours)
        results.add("cpu_ms_per_call_s_pipecat_10", PEER, base)
    for kind in (OURS, PEER):
        results.add("lost_reordered_corrupted_frames_pipecat_10", kind, 0)
    lines = tables(results)
    assert "| metric | pipecat-base | peer-stack | ours / peer-stack | per run |" in lines
    row = next(line for line in lines if "`cpu_ms_per_call_s_pipecat_10`" in line)
    assert row.endswith("| 1.2 | 1.2 (1.1–1.3) |")  # ratio of medians 12/10; runs 1.2, 1.3, 1.1
    lost = next(line for line in lines if "`lost_reordered" in line)
    assert lost.endswith("| n/a | n/a |")  # no ratio of zeros


@needs_pipecat
@pytest.mark.slow
async def test_ab_runs_the_variants_servers_at_once_under_the_same_calls():
    from bench.ab import Variant, paired_run
    from bench.servers import OURS, PEER

    variants = [Variant("ours", OURS, ROOT), Variant("baseline", PEER, ROOT)]
    with trio.fail_after(120):
        run = await paired_run(variants, "raw", calls=2, seconds=1.0)
    assert sorted(run) == ["baseline", "ours"]
    for result in run.values():
        assert result.cpu_ms > 0
        assert result.lost_reordered_corrupted == 0


@needs_pipecat
@pytest.mark.slow
async def test_ab_in_turn_loads_one_server_at_a_time_starting_with_the_given_one(monkeypatch):
    from bench import ab, load
    from bench.servers import OURS, PEER

    names: dict[str, str] = {}
    running = ab.servers.running

    @asynccontextmanager
    async def named(kind: Any, **options: Any) -> AsyncIterator[Any]:
        async with running(kind, **options) as server:
            names[server.ws_url] = kind.name
            yield server

    loads: list[tuple[str, str]] = []
    calls = load.calls

    async def watched(url: str, mode: str, count: int, seconds: float) -> Any:
        loads.append(("start", url))
        made = await calls(url, mode, count, seconds)
        loads.append(("end", url))
        return made

    monkeypatch.setattr(ab.servers, "running", named)
    monkeypatch.setattr(load, "calls", watched)
    variants = [ab.Variant("ours", OURS, ROOT), ab.Variant("baseline", PEER, ROOT)]
    with trio.fail_after(120):
        run = await ab.paired_run(variants, "raw", calls=1, seconds=0.5, in_turn=1)
    assert sorted(run) == ["baseline", "ours"]
    measured = [(event, names[url]) for event, url in loads[-4:]]  # after the warm-ups
    # One at a time (each load ended before the next began), the second variant first.
    assert measured == [
        ("start", PEER.name),
        ("end", PEER.name),
        ("start", OURS.name),
        ("end", OURS.name),
    ]


@needs_pipecat
@pytest.mark.slow
async def test_ab_bot_mode_measures_sessions_and_their_round_trips():
    from bench.ab import Variant, paired_run
    from bench.servers import OURS, PEER

    variants = [Variant("ours", OURS, ROOT), Variant("baseline", PEER, ROOT)]
    with trio.fail_after(120):
        run = await paired_run(variants, "bot", calls=0, seconds=0, sessions=20)
    assert sorted(run) == ["baseline", "ours"]
    for result in run.values():
        assert result.cpu_ms >= 0
        assert 0 < result.rtt_p50_ms <= result.rtt_p99_ms


@needs_pipecat
@pytest.mark.slow
async def test_steps_finds_a_bot_session_in_two_tasks_of_the_server():
    from bench.steps import measure

    with trio.fail_after(120):
        per = await measure("bot", sessions=20, calls=0, seconds=0)
    assert per.units == 20
    # Per /bot: Hypercorn's task for the request (which runs the route) and the session's
    # task; the connection's own tasks (reader, idle timeout) are spawned once for all 20.
    assert {name: n for name, n in per.spawns.items() if n * per.units > 1} == {
        "_handle": 1.0,
        "_run": 1.0,
    }
    assert per.steps["_handle"] <= 4
    assert per.rounds > 0


@needs_pipecat
@pytest.mark.slow
async def test_steps_counts_per_inbound_frame_in_the_media_modes():
    from bench.steps import measure

    with trio.fail_after(120):
        per = await measure("raw", sessions=0, calls=1, seconds=0.5)
    assert per.unit == "inbound frame"
    assert per.units > 0
    assert per.steps["_run_handler"] >= 1  # the connection's reader wakes for every frame


async def test_media_rows_are_measured_on_each_server_in_turn(monkeypatch):
    # Each load runs on one server and then on the other, seconds apart, before the next
    # load: the machine's drift over minutes stays out of the ratio.
    from bench import scenarios
    from bench.scenarios import QUICK, Results, media

    order: list[tuple[object, str, int]] = []

    async def ping_pong(ws_url: str, frames: int) -> list[float]:
        return [0.001]

    async def media_load(server, plan, mode, count, results) -> None:
        order.append((server, mode, count))

    monkeypatch.setattr(scenarios.load, "ping_pong", ping_pong)
    monkeypatch.setattr(scenarios, "media_load", media_load)

    class Stand:
        def __init__(self, name: str) -> None:
            self.kind = SimpleNamespace(name=name)
            self.ws_url = f"ws://{name}"

        def __repr__(self) -> str:
            return self.kind.name

    ours, baseline = Stand("ours"), Stand("baseline")
    await media([ours, baseline], QUICK, Results())
    expected = [
        (server, mode, count)
        for mode in QUICK.media_modes
        for count in QUICK.media_loads
        for server in (ours, baseline)
    ]
    assert order == expected


def test_profile_attributes_py_spy_samples_to_the_innermost_frames_package():
    from bench.profile import package_of, parse_collapsed, report, self_time

    raw = (
        "run (trio/_core/_run.py:2532);get_events (trio/_core/_io_epoll.py:226) 3\n"
        "step (pipecat/processors/frame_processor.py:10);get (asyncio/queues.py:149) 2\n"
        "run_batch (pipecat_base/_speedups/loop_scheduler.py:300) 1\n"
        "not a sample line\n"
    )
    stacks = parse_collapsed(raw)
    assert sum(stacks.values()) == 6
    packages, functions = self_time(stacks)
    assert packages == {"trio": 3, "asyncio": 2, "pipecat_base/_speedups": 1}
    assert functions["asyncio: get (queues.py)"] == 2
    assert package_of("<frozen runpy>") == "<native>"
    text = report(stacks, 5)
    assert text.startswith("6 samples")
    assert " 50.0%  trio" in text
