"""The smallest bot: needs no API keys, shows what a session receives, and ends by itself.

Run it with ``uv run pipecat-base serve examples/hello/bot.py`` and start a session with::

    curl -X POST localhost:8080/bot -H 'X-Daily-Session-Id: demo' -d '{"name": "Ada"}'

The request returns ``{}`` once ``bot()`` has returned (about a second later).
"""

import asyncio

from loguru import logger


async def bot(args):
    name = (args.body or {}).get("name", "world")
    logger.info(f"Hello, {name}! ({type(args).__name__}, session {args.session_id})")
    for step in range(3):
        await asyncio.sleep(0.3)
        logger.debug(f"working... {step + 1}/3")
    logger.info("Goodbye")


def readyz():
    return True
