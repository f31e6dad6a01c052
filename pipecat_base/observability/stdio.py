"""Keeping file descriptors 1 and 2 open whatever a bot does to them.

A bot that calls ``os.close(1)`` leaves the number free, and the next socket the server accepts
takes it: the bot's prints then go into a client's HTTP response, and the server's own writes
to stdout fail (the existing image died at shutdown with ``OSError: Bad file descriptor``).
`StdioGuard` keeps a duplicate of each descriptor from startup and puts it back under its
number when the number is found closed: at each session's end and on every watchdog beat, so
the number is free for at most a beat.
"""

from __future__ import annotations

import os

from loguru import logger

_NAMES = {1: "stdout (fd 1)", 2: "stderr (fd 2)"}


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


class StdioGuard:
    """Duplicates of fds 1 and 2 taken now, put back by `check` when a number is closed."""

    def __init__(self) -> None:
        self._saved: dict[int, int] = {}
        for fd in _NAMES:
            if _is_open(fd):
                copy = os.dup(fd)
                os.set_inheritable(copy, False)
                self._saved[fd] = copy

    def check(self) -> list[int]:
        """Reopen each descriptor found closed; returns which were."""
        reopened = [fd for fd in self._saved if not _is_open(fd)]
        for fd in reopened:
            os.dup2(self._saved[fd], fd)
        if reopened:
            names = " and ".join(_NAMES[fd] for fd in reopened)
            logger.warning(f"A bot closed {names}: reopened, so output and shutdown go on")
        return reopened

    def close(self) -> None:
        for copy in self._saved.values():
            os.close(copy)
        self._saved.clear()
