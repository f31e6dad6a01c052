"""Starting the two servers as child processes, and reading their CPU time and memory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
BENCH_BOT = str(ROOT / "bench" / "bots" / "bench_bot.py")
CLOCK_TICK = os.sysconf("SC_CLK_TCK")

# Where the servers' bytecode is cached. The image compiles every module when it is built
# (``UV_COMPILE_BYTECODE=1`` in the Dockerfile), so its server never compiles at startup. A
# development environment often has no bytecode at all: uv does not compile on install, and
# ``PYTHONDONTWRITEBYTECODE`` (set on this machine) keeps Python from caching what it compiles,
# so every start compiled each imported module from source. Measured that way, startup was
# mostly the compiler (2.5 s against the baseline's 1.6 s; with bytecode 1.05 s against 0.67 s).
# The servers therefore cache bytecode here (outside the checkouts, which stay untouched), and
# `prime` starts each once before anything is measured.
PYCACHE = Path(tempfile.gettempdir()) / f"pipecat-base-bench-pycache-{os.getuid()}"


@dataclass(frozen=True)
class Kind:
    name: str
    module: str
    args: tuple[str, ...] = ()


OURS = Kind("pipecat-base", "pipecat_base")
# What users run today: the existing image's FastAPI on uvicorn[standard] (uvloop, httptools).
PEER = Kind("peer-stack", "bench.baseline")
# The same app on asyncio's own loop and h11: the yardstick until 2026-12-08 (`--with-stdlib`).
STDLIB = Kind("uvicorn-stdlib", "bench.baseline", ("--stack", "stdlib"))
KINDS = (OURS, PEER)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Server:
    kind: Kind
    process: trio.Process
    url: str
    startup_seconds: float

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"

    async def stop(self) -> float:
        """SIGTERM; the seconds until the process exited."""
        sent = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(60):
            await self.process.wait()
        return time.monotonic() - sent


def child_env(port: int, root: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """A server's environment: this one's, bytecode cached in `PYCACHE`, and the bench's
    settings. Memory release between sessions (gc + malloc_trim) stays at its default (on):
    it runs after `/bot` has answered, and users run it (see bench/NOTES.md)."""
    inherited = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**inherited, "PYTHONPYCACHEPREFIX": str(PYCACHE), "PORT": str(port),
            "HOST": "127.0.0.1", "PIPECAT_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(root),
            **(env or {})}  # fmt: skip


async def prime(kinds: tuple[Kind, ...] = KINDS, bot: str = BENCH_BOT) -> None:
    """Start and stop each server once, so that its modules' bytecode is in `PYCACHE` before
    a startup is timed (as it is in the image)."""
    for kind in kinds:
        async with running(kind, bot) as server:
            await server.stop()


@asynccontextmanager
async def running(
    kind: Kind,
    bot: str = BENCH_BOT,
    *,
    env: dict[str, str] | None = None,
    cpu: int | None = None,
    root: Path | None = None,
    launcher: Path | None = None,
) -> AsyncIterator[Server]:
    """A server of ``kind`` on a free port, ready (``/livez`` 200) when yielded; its code is
    taken from ``root`` (another checkout of this repository; this one by default). ``launcher``
    is a script run by path in place of ``-m kind.module`` (`bench.instrumented`)."""
    root = root or ROOT
    port = free_port()
    argv = [sys.executable, *([str(launcher)] if launcher else ["-m", kind.module])]
    argv += ["serve", bot] if kind is OURS else [bot, "--port", str(port), *kind.args]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    started = time.monotonic()
    process = await trio.lowlevel.open_process(
        argv,
        env=child_env(port, root, env),
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            with trio.fail_after(60):
                while True:  # readiness is what is measured: poll /livez
                    try:
                        if (await client.get(f"{url}/livez")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.01)
        yield Server(kind, process, url, time.monotonic() - started)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
