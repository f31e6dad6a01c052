"""Which session captured output belongs to, when the writer itself cannot say.

Logger records carry their session through the context, and so do ``print``s made from a
session's asyncio code (the capture reads the writer's context). Output whose writer is unknown
-- native code writing to file descriptor 1 or 2, threads outside any session -- is attributed
here: to the most recently started session that is still running; once the last one ends, a
short linger (0.25 s) keeps late output (final flushes, teardown prints) with it; a new session
takes over at once. With several sessions running, such output goes to the newest: there is no
way to know better from a file descriptor.

Thread-safe: the capture's pump threads ask while the trio thread starts and ends sessions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

LINGER = 0.25


class Attribution:
    def __init__(self, clock: Callable[[], float] = time.monotonic, linger: float = LINGER) -> None:
        self._clock = clock
        self._linger = linger
        self._running: list[str | None] = []
        self._last: tuple[str | None, float] | None = None
        self._lock = threading.Lock()

    def started(self, session_id: str | None) -> None:
        with self._lock:
            self._running.append(session_id)

    def ended(self, session_id: str | None) -> None:
        with self._lock:
            if session_id in self._running:
                self._running.remove(session_id)
            self._last = (session_id, self._clock())

    def current(self) -> str | None:
        """The session unattributed output belongs to now, or None."""
        with self._lock:
            if self._running:
                return self._running[-1]
            if self._last is not None:
                session_id, ended_at = self._last
                if self._clock() - ended_at < self._linger:
                    return session_id
            return None
