"""Writes every way a bot does, inside and outside a session, for the structured lane."""

import os
import sys

from loguru import logger

print("import print")
sys.stderr.write("import stderr\n")
logger.info("import logger line")  # before the server configures logging


async def bot(args):
    logger.info("session log ünï")
    print("session print")
    sys.stderr.write("session stderr\n")
    os.write(2, b"session native stderr\n")
    if (args.body or {}).get("exit"):
        logger.warning("last logger words")
        print("last printed words")
        os._exit(17)


def readyz():
    print("readyz print outside sessions")
    return True
