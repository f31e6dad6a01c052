"""Waits until cancelled; records what it saw in the file named by body["marker"]."""

import asyncio
from pathlib import Path


async def bot(args):
    marker = Path(args.body["marker"])
    marker.write_text("started\n")
    try:
        await asyncio.sleep(args.body.get("seconds", 3600))
        with marker.open("a") as f:
            f.write("finished\n")
    except asyncio.CancelledError:
        with marker.open("a") as f:
            f.write("cancelled\n")
        raise
