"""Says its room token every way a bot can: print, loguru, stdlib logging, an exception."""

import logging
import sys

from loguru import logger


async def bot(args):
    token = args.token
    print(f"printed token {token}")
    sys.stderr.write(f"stderr token {token}\n")
    logger.info(f"logged token {token}")
    logging.getLogger("bot.stdlib").warning("stdlib token %s", token)
    raise RuntimeError(f"failed with token {token}")
