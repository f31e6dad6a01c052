"""The child processes a session started, ended with it.

A bot may start processes (an ``ffmpeg``, a helper script, ``asyncio.create_subprocess_exec``)
and leave them running; one that ignores SIGTERM outlived both its session and the server. The
supervisor notes when each session starts (`ChildProcesses.mark`) and, at its end, ends the
children started since that were not started after another running session began (those are
attributed to that later session, so concurrent sessions do not end each other's): SIGTERM,
then SIGKILL after the grace, each named in one WARNING. `ChildProcesses.end_all` does the
same for whatever is left when the server stops.

Linux only (``/proc`` and pidfds); elsewhere nothing is found and nothing is done.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import trio
from loguru import logger

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Child:
    pid: int
    started: float
    """Seconds since boot (``/proc/<pid>/stat``)."""
    command: str


def _boot_time_now() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def has_children() -> bool:
    """Whether this process has any child at all: one system call, where reading ``/proc``
    costs a few hundred microseconds (it runs at every session's end). ``WNOWAIT``: nothing
    is reaped, so no ``Popen`` loses its child's exit status."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    except (OSError, AttributeError):  # no waitid here: look in /proc
        return True
    return True


def children() -> list[Child]:
    """This process' living children (every thread's), oldest first."""
    if not has_children():
        return []
    pids: set[int] = set()
    try:
        for task in Path("/proc/self/task").iterdir():
            try:
                pids.update(int(p) for p in (task / "children").read_text().split())
            except (OSError, ValueError):
                continue
    except OSError:
        return []
    found = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":  # exited, waiting to be reaped: nothing to end
            continue
        command = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
        found.append(Child(pid, int(fields[19]) / _TICKS, command))
    return sorted(found, key=lambda child: child.started)


class ChildProcesses:
    """Ends sessions' leftover child processes (see the module docstring)."""

    def mark(self) -> float:
        """When a session starts: the moment its children are counted from (a clock tick
        early: ``/proc`` counts start times in ticks)."""
        return _boot_time_now() - 1 / _TICKS

    def left_by(self, started: float, others: list[float]) -> list[Child]:
        """The living children a session that started at ``started`` is answerable for, with
        ``others`` the starts of the sessions still running."""
        later = [mark for mark in others if mark > started]
        until = min(later, default=float("inf"))
        return [c for c in children() if started <= c.started < until]

    async def end(self, left: list[Child], *, grace: float, whose: str) -> None:
        """SIGTERM each of ``left``, SIGKILL what still runs after ``grace``; one WARNING."""
        if not left:
            return
        named = ", ".join(f"{c.pid} ({c.command[:200]})" for c in left)
        logger.warning(f"{whose} left {len(left)} child process(es) running; ending them: {named}")
        async with trio.open_nursery() as nursery:
            for child in left:
                nursery.start_soon(_end_one, child, grace)

    async def end_all(self, *, grace: float) -> None:
        await self.end(children(), grace=grace, whose="The server's sessions")


async def _end_one(child: Child, grace: float) -> None:
    try:
        pidfd = os.pidfd_open(child.pid)
    except OSError:
        return  # gone already
    try:
        os.kill(child.pid, signal.SIGTERM)
        with trio.move_on_after(grace):
            await trio.lowlevel.wait_readable(pidfd)  # readable once it has exited
            return
        os.kill(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)
