"""A real ``pipecat-base serve`` child process, for what only a process shows.

The server announces readiness with its ``Serving bot.py on http://HOST:PORT`` log line; the
harness reads the port from it (the server binds port 0), keeps reading stderr in the
background, and exposes the exit code.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

BOTS = Path(__file__).parent / "bots"
MARK_VAR = "PIPECAT_BASE_TEST_PROCESS"


def left_behind(mark: str) -> list[int]:
    """Living processes (not zombies) started under ``mark``, by way of their environment."""
    needle = f"{MARK_VAR}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(entry.name))
    return found


READY = re.compile(rb"Serving (?:module )?\S+ on http://[\d.]+:(\d+)")


class ServerProcess:
    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.stderr = bytearray()
        self.stdout = bytearray()
        self.port: int | None = None
        self._ready = trio.Event()
        self._changed = trio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _pump(self) -> None:
        assert self.process.stderr is not None
        async for chunk in self.process.stderr:
            self.stderr.extend(chunk)
            match = READY.search(self.stderr)
            if match and not self._ready.is_set():
                self.port = int(match.group(1))
                self._ready.set()
            self._changed.set()
            self._changed = trio.Event()

    async def _pump_stdout(self) -> None:
        assert self.process.stdout is not None
        async for chunk in self.process.stdout:
            self.stdout.extend(chunk)

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def wait_for_output(self, text: bytes) -> None:
        while text not in self.stderr:
            await self._changed.wait()

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    async def wait_exit(self) -> int:
        return await self.process.wait()

    async def terminate(self, *, limit: float = 10) -> tuple[int, float]:
        """SIGTERM, then wait (at most ``limit`` seconds) for the exit: (code, seconds taken)."""
        sent = time.monotonic()
        self.signal(signal.SIGTERM)
        with trio.fail_after(limit):
            code = await self.process.wait()
        return code, time.monotonic() - sent

    @property
    def text(self) -> str:
        return self.stderr.decode(errors="replace")


@asynccontextmanager
async def server_process(
    bot: str | Path | None = None,
    *,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
    argv: list[str] | None = None,
    cwd: Path | None = None,
    capture_stdout: bool = False,
) -> AsyncIterator[ServerProcess]:
    """Start ``python -m pipecat_base serve BOT`` (or ``argv``) on a free port of 127.0.0.1."""
    mark = uuid.uuid4().hex  # inherited by everything the child starts: see `left_behind`
    child_env = {
        **os.environ,
        MARK_VAR: mark,
        "HOST": "127.0.0.1",
        "PORT": "0",
        "PIPECAT_LOG_LEVEL": "DEBUG",
        "PCC_TOKEN_REFRESHER_DIR": "/nonexistent",
        **(env or {}),
    }
    process = await trio.lowlevel.open_process(
        argv or [sys.executable, "-m", "pipecat_base", "serve", str(bot)],
        env=child_env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = ServerProcess(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server._pump)
            if capture_stdout:
                nursery.start_soon(server._pump_stdout)
            if wait_ready:
                with trio.fail_after(60):
                    await server.wait_ready()
            yield server
            with trio.fail_after(60):
                await process.wait()
    except BaseException:
        # pytest shows a failing test's captured output: the child's log says what happened.
        sys.stderr.write(f"--- the child's stderr ---\n{server.text}\n")
        if capture_stdout:
            sys.stderr.write(
                f"--- the child's stdout ---\n{server.stdout.decode(errors='replace')}\n"
            )
        raise
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    # A test leaves no process behind: the child's own children (a server an emulator
    # started, a bot's subprocesses) are gone shortly after it.
    with trio.CancelScope(shield=True):
        for _ in range(200):
            if not left_behind(mark):
                break
            await trio.sleep(0.05)
    assert left_behind(mark) == [], f"processes left behind: {left_behind(mark)}"
