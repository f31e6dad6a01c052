"""Blocks the event loop the ways bots do by mistake; body["block"] picks how."""

import asyncio
import time

from loguru import logger


async def bot(args):
    how = args.body.get("block")
    logger.info("blocking now")
    if how == "sleep":
        time.sleep(args.body.get("seconds", 1.2))  # BLOCKING LINE
    elif how == "on-cancel":
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            time.sleep(3600)  # a bot that blocks forever while shutting down
    logger.info("unblocked")
