"""Count Trio task steps (each time a task is scheduled to run) and exits, per task, in a block."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import trio


class TaskSteps(trio.abc.Instrument):
    """Steps taken by tasks whose name ends with one of the given suffixes."""

    def __init__(self, *suffixes: str) -> None:
        self.suffixes = suffixes
        self.counts: Counter[str] = Counter()
        self.exited: dict[str, trio.Event] = {suffix: trio.Event() for suffix in suffixes}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        for suffix in self.suffixes:
            if task.name.endswith(suffix):
                self.counts[suffix] += 1

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        for suffix in self.suffixes:
            if task.name.endswith(suffix):
                self.exited[suffix].set()


@contextmanager
def counting_steps(*suffixes: str) -> Iterator[TaskSteps]:
    steps = TaskSteps(*suffixes)
    trio.lowlevel.add_instrument(steps)
    try:
        yield steps
    finally:
        trio.lowlevel.remove_instrument(steps)
