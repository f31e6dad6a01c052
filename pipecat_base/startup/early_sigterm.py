"""A SIGTERM before the server is up exits at once, with code 0.

Pods deleted while the bot module was still importing (Silero, smart-turn and SDK imports take
seconds) used to linger for the whole grace period: nothing handled SIGTERM yet. The guard is
the first thing ``main()`` installs. Until serving starts (Trio's signal receiver then takes
SIGTERM over), a SIGTERM writes one line to stderr and calls ``os._exit(0)``, which no
``except BaseException`` in import-time user code can swallow.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

MESSAGE = "SIGTERM received before the server was up; nothing to drain, exiting"


class EarlySigtermGuard:
    """Owns SIGTERM from process start until the server's own handling takes over."""

    def __init__(self) -> None:
        self._absorb = False

    @classmethod
    def install(cls) -> EarlySigtermGuard:
        guard = cls()
        signal.signal(signal.SIGTERM, guard._handle)
        return guard

    def absorb(self) -> None:
        """From the start of shutdown on, a SIGTERM that reaches this handler is ignored.

        Trio's receiver owns SIGTERM while serving; once it closes, the process is already on
        its way out, and the message above would be false.
        """
        self._absorb = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._absorb:
            return
        try:
            sys.stderr.write(MESSAGE + "\n")
            sys.stderr.flush()
        finally:
            os._exit(0)
