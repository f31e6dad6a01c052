"""``python -m bench [--quick] [--out FILE] [--img-dir DIR]``: run every scenario, both servers.

The full run (3 runs of each scenario, calls of 5 s at 1, 10 and 50 concurrent, a capacity
search on one core, 1000 sessions for the memory ratchet) takes about 15 minutes on 2 cores;
``--quick`` runs a reduced set in under a minute (the test suite runs it so the harness cannot
rot). Against the peer stack (the existing image's uvicorn with uvloop and httptools); with
``--with-stdlib`` also against the same app on the stdlib loop. Prints the headline ratios
(``...-vs-peer-stack: X``). Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from . import report
from .scenarios import FULL, QUICK, run_all
from .servers import KINDS, STDLIB

NOTES_FILE = Path(__file__).with_name("NOTES.md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced run, under a minute")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--img-dir", type=Path, default=Path("docs/img"))
    parser.add_argument(
        "--with-stdlib",
        action="store_true",
        help="also the same uvicorn app on asyncio's own loop and h11 (a third column)",
    )
    options = parser.parse_args(argv)
    plan = QUICK if options.quick else FULL
    kinds = (*KINDS, STDLIB) if options.with_stdlib else KINDS
    results = trio.run(run_all, plan, kinds)
    flags = [flag for flag, on in (("--quick", options.quick),
                                   ("--with-stdlib", options.with_stdlib)) if on]  # fmt: skip
    command = " ".join(["uv run python -m bench", *flags])
    notes = NOTES_FILE.read_text() if NOTES_FILE.exists() else ""
    report.write(results, plan, options.out, options.img_dir, command, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
