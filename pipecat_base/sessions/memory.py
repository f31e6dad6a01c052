"""Giving memory back between sessions.

A warm pod runs many sessions in one process. Pipelines leave reference cycles that only a full
collection frees, and glibc keeps freed pages in its arenas; memory then ratchets up from one
session to the next (the existing image measured 154 MB to 377 MB, and 226-282 MB once it
released). After a session, when no other session is running, the supervisor runs a full
``gc.collect()`` and ``malloc_trim(0)``. What was alive at startup is frozen out of collections
first (`freeze_startup_heap`), so that collection walks what sessions allocated, not pipecat.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Released:
    collected: int
    gc_ms: float
    trimmed: bool
    trim_ms: float

    def __str__(self) -> str:
        return (
            f"Released session memory: collected {self.collected} objects in {self.gc_ms:.1f} ms, "
            f"malloc_trim returned memory: {self.trimmed} in {self.trim_ms:.1f} ms"
        )


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): collection only
        return None


def release_memory(malloc_trim: Callable[[int], int] | None = None) -> Released:
    """Collect every generation, then hand free heap pages back to the OS where glibc can."""
    start = time.perf_counter()
    collected = gc.collect()
    collected_at = time.perf_counter()
    trim = malloc_trim if malloc_trim is not None else _load_malloc_trim()
    trimmed = bool(trim(0)) if trim is not None else False
    done = time.perf_counter()
    return Released(collected, (collected_at - start) * 1000, trimmed, (done - collected_at) * 1000)


def parse_switch(raw: str | None) -> tuple[bool, str | None]:
    """``PCC_RELEASE_SESSION_MEMORY``: on unless exactly false; returns (on, error message)."""
    if raw is None:
        return True, None
    value = raw.strip().lower()
    if value in ("true", "false"):
        return value == "true", None
    return True, f"PCC_RELEASE_SESSION_MEMORY must be true or false, not '{raw}'; leaving it on."


def freeze_startup_heap() -> int:
    """Collect, then leave every object alive now out of later collections; returns how many.

    Run once the bot is imported and before serving. With pipecat loaded, a full collection
    walks the ~120k objects of the modules, classes and functions imported at startup, which
    live as long as the process: ~65 ms per collection, paid by every `release_memory` before
    the ``/bot`` route answers, and as a pause of every call whenever the collector runs a
    full collection on its own. Frozen (``gc.freeze``), they are skipped: the same release
    takes ~0.3 ms and still frees everything sessions leave, since they allocate after this.
    Garbage already there is collected first, so nothing collectable is frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
