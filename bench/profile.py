"""``python -m bench.profile [--server pipecat-base|peer-stack|uvicorn-stdlib] [--mode pipecat]
[--calls 10] [--seconds 8] [--top 25]``: where a server's CPU goes, by package and by function.

Starts the server alone, samples it with py-spy (250 Hz per thread, idle samples dropped) while
``--calls`` calls of ``--mode`` run (``--mode bot``: ``--sessions`` sequential ``POST /bot``),
and prints the share of samples whose innermost frame is in each package, then the functions
with the most samples of their own. Profile both servers under the same load before cutting
anything (bench/NOTES.md): py-spy slows neither the interpreter nor the loop it samples.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import trio

from . import load, servers
from .ab import PEERS
from .scenarios import BOT, post_bots, settle, warm_up

# "func (path/to/file.py:123)", as py-spy's raw (collapsed) format writes each frame.
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


@dataclass(frozen=True)
class Frame:
    func: str
    file: str

    @property
    def package(self) -> str:
        return package_of(self.file)


def package_of(path: str) -> str:
    """The package a file belongs to, from py-spy's short paths (``asyncio/queues.py``,
    ``pipecat/transports/base_output.py``): its first folder, and for ours the sub-package
    too (``pipecat_base/_speedups``); ``<native>`` for frames with no Python file."""
    parts = path.split("/")
    if len(parts) == 1:
        return "<native>" if not path.endswith(".py") else path.removesuffix(".py")
    if parts[0] == "pipecat_base" and len(parts) > 2:
        return "/".join(parts[:2])
    return parts[0]


def parse_collapsed(text: str) -> Counter[tuple[Frame, ...]]:
    """py-spy's raw output: ``frame;frame;... count`` per line, outermost first."""
    stacks: Counter[tuple[Frame, ...]] = Counter()
    for line in text.splitlines():
        body, _, count = line.rpartition(" ")
        if not body or not count.isdigit():
            continue
        frames = []
        for part in body.split(";"):
            match = FRAME.match(part)
            if match:
                frames.append(Frame(match["func"], match["file"]))
        if frames:
            stacks[tuple(frames)] += int(count)
    return stacks


def self_time(stacks: Counter[tuple[Frame, ...]]) -> tuple[Counter[str], Counter[str]]:
    """Samples by the innermost frame's package, and by its function."""
    packages: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    for stack, count in stacks.items():
        leaf = stack[-1]
        packages[leaf.package] += count
        functions[f"{leaf.package}: {leaf.func} ({Path(leaf.file).name})"] += count
    return packages, functions


def report(stacks: Counter[tuple[Frame, ...]], top: int) -> str:
    packages, functions = self_time(stacks)
    total = sum(packages.values()) or 1
    lines = [f"{total} samples", "", "by package (self):"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in packages.most_common(top)]
    lines += ["", "by function (self):"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in functions.most_common(top)]
    return "\n".join(lines)


async def profiled(kind: servers.Kind, mode: str, calls: int, seconds: float, sessions: int,
                   out: Path) -> None:  # fmt: skip
    async with servers.running(kind) as server:
        await warm_up(server, mode)
        await settle(server.pid)
        argv = ["py-spy", "record", "--pid", str(server.pid), "--format", "raw", "--rate", "250",
                "--nonblocking", "--output", str(out)]  # fmt: skip
        spy = await trio.lowlevel.open_process(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            if mode == BOT:
                await post_bots(server, sessions, 1, "profile")
            else:
                await load.calls(server.ws_url, mode, calls, seconds)
            await settle(server.pid)
        finally:
            spy.send_signal(2)  # SIGINT: py-spy writes what it sampled and exits
            with trio.fail_after(30):
                await spy.wait()
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=servers.OURS.name,
                        choices=[servers.OURS.name, *PEERS])  # fmt: skip
    parser.add_argument("--mode", default="pipecat", choices=["raw", "pipecat", "vad", BOT])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--keep", type=Path, help="also keep py-spy's raw output here")
    options = parser.parse_args(argv)
    kind = servers.OURS if options.server == servers.OURS.name else PEERS[options.server]
    with tempfile.TemporaryDirectory() as tmp:
        out = options.keep or Path(tmp) / "profile.txt"
        trio.run(profiled, kind, options.mode, options.calls, options.seconds, options.sessions,
                 out)  # fmt: skip
        print(report(parse_collapsed(out.read_text()), options.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
