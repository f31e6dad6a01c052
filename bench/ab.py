"""``python -m bench.ab NAME=CHECKOUT NAME=CHECKOUT ... [--mode pipecat] [--calls 10]``: paired
A/B of the media path's CPU across checkouts of this repository.

On a shared machine the CPU a call costs drifts by tens of percent within minutes (the same
code measured 33 and 56 CPU ms per call-second an hour apart), far more than the change being
measured. So every variant's server runs *at the same time*, each under its own ``--calls``
concurrent calls from one load generator, and each run yields a ratio to the first variant
that the drift mostly cancels out of; the median of those ratios is the figure to quote.
``baseline`` (no checkout) names the asyncio baseline server.

Make a checkout of the commit to compare with ``git worktree add /tmp/before <commit>``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import trio

from . import load, servers
from .scenarios import settle

BASELINE_NAME = "baseline"


@dataclass(frozen=True)
class Variant:
    name: str
    kind: servers.Kind
    root: Path


def parse_variant(spec: str) -> Variant:
    """``NAME=CHECKOUT``, or ``baseline``."""
    if spec == BASELINE_NAME:
        return Variant(BASELINE_NAME, servers.BASELINE, servers.ROOT)
    name, sep, path = spec.partition("=")
    root = Path(path).resolve()
    if not (sep and name and (root / "pipecat_base").is_dir()):
        raise argparse.ArgumentTypeError(f"expected NAME=CHECKOUT of this repository: {spec!r}")
    return Variant(name, servers.OURS, root)


@dataclass
class RunResult:
    cpu_ms_per_call_second: float
    lost_reordered_corrupted: int


async def paired_run(
    variants: list[Variant], mode: str, calls: int, seconds: float
) -> dict[str, RunResult]:
    """One run: all servers up at once, the same calls against each at the same time."""
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
            before = servers.cpu_seconds(server.pid)
            made = await load.calls(server.ws_url, mode, calls, seconds)
            await settle(server.pid)  # the bots' teardown and any backlog count, as in the bench
            cpu = servers.cpu_seconds(server.pid) - before
            results[name] = RunResult(cpu * 1000 / (calls * seconds), sum(c.faults for c in made))

        async with trio.open_nursery() as warm_up:  # imports and first-call costs, not counted
            for server in ready.values():
                warm_up.start_soon(load.calls, server.ws_url, mode, 1, 1.0)
        async with trio.open_nursery() as runs:
            for name, server in ready.items():
                runs.start_soon(measure, name, server)
        done.set()
    return results


def paired_ratios(runs: list[dict[str, RunResult]], reference: str) -> dict[str, list[float]]:
    """Per variant, its CPU over the reference's, run by run."""
    ratios: dict[str, list[float]] = {}
    for name in runs[0]:
        if name != reference:
            ratios[name] = [
                run[name].cpu_ms_per_call_second / run[reference].cpu_ms_per_call_second
                for run in runs
            ]
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", type=parse_variant, metavar="NAME=CHECKOUT")
    parser.add_argument("--mode", default="pipecat", choices=["raw", "pipecat", "vad"])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args(argv)
    if len(options.variants) < 2:
        parser.error("give at least two variants")
    runs = []
    for _ in range(options.runs):
        run = trio.run(paired_run, options.variants, options.mode, options.calls, options.seconds)
        runs.append(run)
        line = (f"{v.name} {run[v.name].cpu_ms_per_call_second:5.1f}" for v in options.variants)
        print("  ".join(line), flush=True)
    reference = options.variants[0].name
    calls = f"{options.calls} calls of {options.seconds:g} s"
    print(f"CPU ms per call-second ({options.mode}, {calls})")
    for variant in options.variants:
        values = [run[variant.name].cpu_ms_per_call_second for run in runs]
        lost = sum(run[variant.name].lost_reordered_corrupted for run in runs)
        spread = f"{min(values):.1f}-{max(values):.1f}"
        print(f"  {variant.name}: median {statistics.median(values):.1f} ({spread}), "
              f"lost/reordered/corrupted {lost}")  # fmt: skip
    for name, ratios in paired_ratios(runs, reference).items():
        print(f"  {name}/{reference}: median {statistics.median(ratios):.3f} "
              f"({min(ratios):.3f}-{max(ratios):.3f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
