"""Runs until cancelled (for drain measurements)."""

import asyncio


async def bot(args):
    await asyncio.sleep(3600)
