"""``python -m bench.steps [--mode bot|raw|pipecat|vad] [--root CHECKOUT]``: where a unit of
work goes in Trio, per task.

Runs pipecat-base's server (this checkout's, or ``--root``'s) with `bench.instrumented`'s Trio
instrument, warms it up, then sends ``--sessions`` sequential ``POST /bot`` (``bot`` mode) or
``--calls`` concurrent Twilio echo calls of ``--seconds`` (the media modes), and prints per
unit -- one ``/bot``, or one inbound frame -- the Trio steps and wall time of each task, the
tasks spawned, the scheduler rounds and the time between steps. Counts are exact; times
include the instrument's own cost, so compare them with each other, not with other tables.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trio

from . import load
from .scenarios import BOT, post_bots, warm_up
from .servers import OURS, ROOT, running

INSTRUMENTED = Path(__file__).with_name("instrumented.py")


@dataclass
class PerUnit:
    """Counts divided by the units of work: ``/bot`` sessions or inbound frames."""

    unit: str
    units: int
    steps: dict[str, float]
    spawns: dict[str, float]
    step_us: dict[str, float]
    rounds: float
    between_us: float

    @classmethod
    def of(cls, counts: dict, unit: str, units: int) -> PerUnit:
        return cls(
            unit,
            units,
            {name: n / units for name, n in counts["steps"].items()},
            {name: n / units for name, n in counts["spawns"].items()},
            {name: s * 1e6 / units for name, s in counts["step_seconds"].items()},
            counts["rounds"] / units,
            counts["between_seconds"] * 1e6 / units,
        )

    def lines(self) -> list[str]:
        out = [f"per {self.unit} ({self.units} in all):"]
        for name in sorted(self.steps, key=lambda n: -self.step_us.get(n, 0)):
            if self.steps[name] * self.units < 2:
                continue  # one-offs: the listener, a single connection's tasks
            out.append(
                f"  {name}: {self.steps[name]:.2f} steps, {self.step_us.get(name, 0):.1f} us"
            )
        spawned = sum(self.spawns.values())
        out.append(f"  tasks spawned: {spawned:.2f} ({_named(self.spawns)})")
        out.append(f"  scheduler rounds: {self.rounds:.2f}")
        out.append(f"  time between steps: {self.between_us:.1f} us")
        return out


def _named(counts: dict[str, float]) -> str:
    return ", ".join(f"{name} {n:.2f}" for name, n in sorted(counts.items(), key=lambda i: -i[1]))


async def measure(
    mode: str, sessions: int, calls: int, seconds: float, root: Path = ROOT
) -> PerUnit:
    """Run the instrumented server of ``root`` under the load and return its counts per unit."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "counts.json"
        env = {"BENCH_INSTRUMENT_OUT": str(out)}
        async with running(OURS, env=env, root=root, launcher=INSTRUMENTED) as server:
            await warm_up(server, mode)
            server.process.send_signal(signal.SIGUSR2)  # count from here
            if mode == BOT:
                await post_bots(server, sessions, 1, "steps")
                unit, units = "POST /bot", sessions
            else:
                made = await load.calls(server.ws_url, mode, calls, seconds)
                unit, units = "inbound frame", sum(len(c.rtts) for c in made)
            # The snapshot, then SIGTERM, which the snapshot's handler runs before (signals are
            # handled in number order); the server writes the snapshot as it exits.
            server.process.send_signal(signal.SIGUSR1)
            await server.stop()
        counts = json.loads(out.read_text())
    return PerUnit.of(counts, unit, max(units, 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default=BOT, choices=[BOT, "raw", "pipecat", "vad"])
    parser.add_argument("--sessions", type=int, default=1000, help="bot mode")
    parser.add_argument("--calls", type=int, default=10, help="media modes")
    parser.add_argument("--seconds", type=float, default=5.0, help="media modes")
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout to run")
    options = parser.parse_args(argv)
    per_unit = trio.run(
        measure, options.mode, options.sessions, options.calls, options.seconds, options.root
    )
    print("\n".join(per_unit.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
