"""A bot that does what no bot should; body["do"] picks what (tests/test_containment_process.py)."""

import asyncio
import os
import signal
import subprocess
import sys

from loguru import logger


async def bot(args):
    what = (args.body or {}).get("do")
    logger.info(f"hostile bot: {what}")
    if what == "sys-exit":
        sys.exit(3)
    elif what == "keyboard-interrupt":
        raise KeyboardInterrupt
    elif what == "close-stdout":
        os.close(1)
    elif what == "close-stderr":
        os.close(2)
    elif what == "own-sigterm":
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        await asyncio.sleep(3600)
    elif what == "loop-sigterm":
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: None)
        await asyncio.sleep(3600)
    elif what == "children":
        # Children that ignore SIGTERM, started the ways bots start them.
        script = (
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"
        )
        subprocess.Popen([sys.executable, "-c", script, "pipecat-base-test-child"])
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, "pipecat-base-test-child"
        )
        logger.info(f"children started {(args.body or {}).get('tag', '')}")
        await asyncio.sleep(float((args.body or {}).get("seconds", 0.5)))
    print("hostile bot done")
