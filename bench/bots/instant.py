"""Returns at once; notes when bot() was entered (CLOCK_MONOTONIC is system-wide)."""

import os
import time

ENTRY_LOG = os.environ.get("BENCH_ENTRY_LOG")


async def bot(args):
    if ENTRY_LOG:
        with open(ENTRY_LOG, "a") as log:  # noqa: ASYNC230 - one tiny append per session
            log.write(f"{args.session_id} {time.monotonic()}\n")
