"""``python bench/instrumented.py serve BOT``: pipecat-base's server with a Trio instrument.

The instrument counts, per task name, the steps Trio runs and the tasks it spawns, the
scheduler rounds (one I/O wait each), and the wall time spent inside each task's steps and
between steps. ``SIGUSR2`` starts counting afresh; ``SIGUSR1`` takes a snapshot, which is
written as JSON to ``$BENCH_INSTRUMENT_OUT`` when the server exits. `bench.steps` drives it.
Run by path, so that ``PYTHONPATH`` can name another checkout's ``pipecat_base`` (the
instrument adds its own cost to the times).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter
from typing import Any

import trio


class Counts(trio.abc.Instrument):
    """Steps, spawns and step time per task name; scheduler rounds; time between steps."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, *_: Any) -> None:
        self.steps: Counter[str] = Counter()
        self.spawns: Counter[str] = Counter()
        self.step_seconds: Counter[str] = Counter()
        self.rounds = 0
        self.between_seconds = 0.0
        # A reset (a signal handler) may come in the middle of a step: it counts from here.
        self._step_began = self._last_end = time.perf_counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        now = time.perf_counter()
        self.between_seconds += now - self._last_end
        self._step_began = now

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        now = time.perf_counter()
        name = _short(task.name)
        self.steps[name] += 1
        self.step_seconds[name] += now - self._step_began
        self._last_end = now

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawns[_short(task.name)] += 1

    def before_io_wait(self, timeout: float) -> None:
        self.rounds += 1

    def after_io_wait(self, timeout: float) -> None:
        self._last_end = time.perf_counter()  # waiting for I/O is not scheduler time

    def as_json(self) -> dict[str, Any]:
        return {
            "steps": dict(self.steps),
            "spawns": dict(self.spawns),
            "step_seconds": dict(self.step_seconds),
            "rounds": self.rounds,
            "between_seconds": self.between_seconds,
        }


def _short(name: str) -> str:
    """A task's function name without its module path (``..._handle`` -> ``_handle``)."""
    return name.rsplit(".", 1)[-1]


def main() -> None:
    counts = Counts()
    snapshot: dict[str, Any] = {}

    def take(*_: Any) -> None:
        snapshot.update(counts.as_json())

    signal.signal(signal.SIGUSR1, take)
    signal.signal(signal.SIGUSR2, counts.reset)
    run = trio.run

    def instrumented_run(*args: Any, **kwargs: Any) -> Any:
        kwargs["instruments"] = [*kwargs.get("instruments", ()), counts]
        return run(*args, **kwargs)

    trio.run = instrumented_run  # the server's own trio.run, looked up when it starts
    # Run by path, this file's folder came first on sys.path: its modules (load, report, ...)
    # must not stand in for anything the server imports.
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    sys.argv = ["pipecat-base", *sys.argv[1:]]
    from pipecat_base.cli import run as serve

    try:
        serve()
    finally:
        with open(os.environ["BENCH_INSTRUMENT_OUT"], "w") as file:
            json.dump(snapshot, file)


if __name__ == "__main__":
    main()
