"""A SIGTERM before the server is up exits at once, with code 0.

Pods deleted while the bot module was still importing (Silero, smart-turn and SDK imports take
seconds) used to linger for the whole grace period: nothing handled SIGTERM yet. The guard is
the first thing ``main()`` installs. Until serving starts (Trio's signal receiver then takes
SIGTERM over), a SIGTERM writes one line to stderr and calls ``os._exit(0)``, which no
``except BaseException`` in import-time user code can swallow.

With the structured lane on (`attach`), the line is also an ``app`` WARNING record in
``bot.jsonl``, appended with one ``os.write`` -- no loguru and no lock, since a signal handler
may run while the main thread holds the capture's lock -- after one pump beat, so output the bot
printed just before reaches the lane first; and it goes to the console past the capture.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from pipecat_base.observability.capture import PUMP_BEAT
from pipecat_base.observability.lane import encode_record, now_iso

MESSAGE = "SIGTERM received before the server was up; nothing to drain, exiting"


class EarlySigtermGuard:
    """Owns SIGTERM from process start until the server's own handling takes over."""

    def __init__(self) -> None:
        self._absorb = False
        self._lane: Path | None = None
        self._console_fd: int | None = None

    @classmethod
    def install(cls) -> EarlySigtermGuard:
        guard = cls()
        signal.signal(signal.SIGTERM, guard._handle)
        return guard

    def attach(self, lane: Path, console_fd: int) -> None:
        """The structured lane is on: record the line in ``lane`` (``bot.jsonl``) too, and write
        it to ``console_fd`` (the real stderr, past the capture)."""
        self._lane = lane
        self._console_fd = console_fd

    def absorb(self) -> None:
        """From the start of shutdown on, a SIGTERM that reaches this handler is ignored.

        Trio's receiver owns SIGTERM while serving; once it closes, the process is already on
        its way out, and the message above would be false.
        """
        self._absorb = True

    @staticmethod
    def _record(lane: Path) -> None:
        record = {"@timestamp": now_iso(), "stream": "app", "level": "WARNING", "line": MESSAGE}
        try:
            fd = os.open(lane, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError:
            return  # the console still says it
        try:
            os.write(fd, encode_record(record))
        except OSError:
            pass
        finally:
            os.close(fd)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._absorb:
            return
        try:
            if self._lane is not None:
                time.sleep(PUMP_BEAT)
                self._record(self._lane)
            if self._console_fd is not None:
                os.write(self._console_fd, (MESSAGE + "\n").encode())
            else:
                sys.stderr.write(MESSAGE + "\n")
                sys.stderr.flush()
        finally:
            os._exit(0)
