"""Swallows every cancellation: the server must abandon it and still exit."""

import asyncio
from pathlib import Path


async def bot(args):
    Path(args.body["marker"]).write_text("started\n")
    while True:
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            pass
