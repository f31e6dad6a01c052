"""Keeps a large heap of objects in reference cycles alive, as a process with pipecat loaded and
many sessions served does, and reports at exit whether the heap was left out of the
interpreter's last collection (to the file named by ``HEAP_BOT_REPORT``)."""

import asyncio
import atexit
import gc
import os
from pathlib import Path

HEAP: list = []


def _build(count: int) -> None:
    for _ in range(count):
        node: list = []
        node.append(node)  # a cycle: only the cyclic collector can free it
        HEAP.append(node)


def _report() -> None:
    frozen = gc.get_freeze_count() >= len(HEAP)
    Path(os.environ["HEAP_BOT_REPORT"]).write_text(f"frozen at exit: {frozen}\n")


_build(500_000)
atexit.register(_report)


async def bot(args):
    await asyncio.sleep(0)
