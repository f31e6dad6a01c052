"""``python -m bench.ab NAME=CHECKOUT NAME=CHECKOUT ... [--mode pipecat] [--calls 10]``: paired
A/B of the media path's (or ``--mode bot``: a ``POST /bot``'s) CPU across checkouts of this
repository.

On a shared machine the CPU a call costs drifts by tens of percent within minutes (the same
code measured 33 and 56 CPU ms per call-second an hour apart), far more than the change being
measured. So every variant's server runs *at the same time*, each under its own ``--calls``
concurrent calls from one load generator, and each run yields a ratio to the first variant
that the drift mostly cancels out of; the median of those ratios is the figure to quote.
With ``--in-turn`` the servers are still all up, but each run loads them one after the other
(starting with a different one each run), as the full benchmark measures its rows: loaded at
once, the servers and the load generator share two cores, which changes how many frames each
wake-up finds (and so the per-frame overheads) from what a server alone sees.
``peer-stack`` (no checkout; ``baseline`` is the same) names the existing image's stack
(FastAPI on uvicorn with uvloop and httptools), ``uvicorn-stdlib`` the same app on asyncio's own
loop and h11. ``--mode bot`` sends each server ``--sessions`` sequential ``POST /bot`` of a bot
that returns at once, and also reports their round trips.

Make a checkout of the commit to compare with ``git worktree add /tmp/before <commit>``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import trio

from . import servers
from .scenarios import BOT, calls_cost, pct, post_bots, round_trips_ms, warm_up

# Servers named without a checkout: this repository's bench.baseline on either stack.
PEERS = {
    servers.PEER.name: servers.PEER,
    "baseline": servers.PEER,
    servers.STDLIB.name: servers.STDLIB,
}


@dataclass(frozen=True)
class Variant:
    name: str
    kind: servers.Kind
    root: Path


def parse_variant(spec: str) -> Variant:
    """``NAME=CHECKOUT``, or one of `PEERS`."""
    if spec in PEERS:
        return Variant(spec, PEERS[spec], servers.ROOT)
    name, sep, path = spec.partition("=")
    root = Path(path).resolve()
    if not (sep and name and (root / "pipecat_base").is_dir()):
        raise argparse.ArgumentTypeError(f"expected NAME=CHECKOUT of this repository: {spec!r}")
    return Variant(name, servers.OURS, root)


@dataclass
class RunResult:
    cpu_ms: float
    """Per call-second of audio, or per session in ``bot`` mode."""
    lost_reordered_corrupted: int
    rtt_p50_ms: float = math.nan
    rtt_p99_ms: float = math.nan


async def paired_run(
    variants: list[Variant],
    mode: str,
    calls: int,
    seconds: float,
    sessions: int = 1000,
    in_turn: int | None = None,
    concurrency: int = 1,
) -> dict[str, RunResult]:
    """One run: all servers up at once, the same calls (or ``bot`` sessions) against each at
    the same time -- or, with ``in_turn``, against each in turn, starting with the variant at
    that index."""
    results: dict[str, RunResult] = {}
    async with trio.open_nursery() as nursery:
        ready: dict[str, servers.Server] = {}
        done = trio.Event()

        async def serve(variant: Variant, task_status: trio.TaskStatus[None]) -> None:
            async with servers.running(variant.kind, root=variant.root) as server:
                ready[variant.name] = server
                task_status.started()
                await done.wait()

        for variant in variants:
            await nursery.start(serve, variant)

        async def measure(name: str, server: servers.Server) -> None:
            if mode == BOT:
                before = servers.cpu_seconds(server.pid)
                answered = await post_bots(server, sessions, concurrency, "ab")
                cpu = servers.cpu_seconds(server.pid) - before
                rtts = round_trips_ms(answered)
                results[name] = RunResult(cpu * 1000 / sessions, 0, pct(rtts, 50), pct(rtts, 99))
                return
            cpu_ms, made = await calls_cost(server, mode, calls, seconds)
            results[name] = RunResult(cpu_ms, sum(c.faults for c in made))

        async with trio.open_nursery() as warming:
            for server in ready.values():
                warming.start_soon(warm_up, server, mode)
        if in_turn is None:
            async with trio.open_nursery() as runs:
                for name, server in ready.items():
                    runs.start_soon(measure, name, server)
        else:
            order = list(ready.items())
            first = in_turn % len(order)
            for name, server in order[first:] + order[:first]:
                await measure(name, server)
        done.set()
    return results


def paired_ratios(runs: list[dict[str, RunResult]], reference: str) -> dict[str, list[float]]:
    """Per variant, its CPU over the reference's, run by run."""
    ratios: dict[str, list[float]] = {}
    for name in runs[0]:
        if name != reference:
            ratios[name] = [run[name].cpu_ms / run[reference].cpu_ms for run in runs]
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", type=parse_variant, metavar="NAME=CHECKOUT")
    parser.add_argument("--mode", default="pipecat", choices=["raw", "pipecat", "vad", BOT])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sessions", type=int, default=1000, help="per run, in bot mode")
    parser.add_argument("--concurrency", type=int, default=1, help="sessions at once, bot mode")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--in-turn", action="store_true", help="load the servers one after the other, not at once"
    )
    options = parser.parse_args(argv)
    if len(options.variants) < 2:
        parser.error("give at least two variants")
    runs = []
    for number in range(options.runs):
        run = trio.run(
            paired_run,
            options.variants,
            options.mode,
            options.calls,
            options.seconds,
            options.sessions,
            number if options.in_turn else None,
            options.concurrency,
        )
        runs.append(run)
        line = (f"{v.name} {run[v.name].cpu_ms:6.3f}" for v in options.variants)
        print("  ".join(line), flush=True)
    reference = options.variants[0].name
    if options.mode == BOT:
        print(f"CPU ms per session (bot, {options.sessions} sessions, "
              f"{options.concurrency} at a time)")  # fmt: skip
    else:
        calls = f"{options.calls} calls of {options.seconds:g} s"
        print(f"CPU ms per call-second ({options.mode}, {calls})")
    for variant in options.variants:
        values = [run[variant.name].cpu_ms for run in runs]
        spread = f"{min(values):.3g}-{max(values):.3g}"
        if options.mode == BOT:
            p50 = statistics.median(run[variant.name].rtt_p50_ms for run in runs)
            p99 = statistics.median(run[variant.name].rtt_p99_ms for run in runs)
            detail = f"round trip p50 {p50:.2f} ms, p99 {p99:.2f} ms (medians of runs)"
        else:
            lost = sum(run[variant.name].lost_reordered_corrupted for run in runs)
            detail = f"lost/reordered/corrupted {lost}"
        print(f"  {variant.name}: median {statistics.median(values):.3g} ({spread}), {detail}")
    for name, ratios in paired_ratios(runs, reference).items():
        print(f"  {name}/{reference}: median {statistics.median(ratios):.3f} "
              f"({min(ratios):.3f}-{max(ratios):.3f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
