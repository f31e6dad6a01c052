"""Starts a non-daemon thread that never ends, then returns (it would block interpreter exit)."""

import threading
import time


async def bot(args):
    threading.Thread(target=time.sleep, args=(3600,), name="forgotten-worker").start()
