"""Starts a non-daemon thread at import: a refusal after the import must still exit."""

import threading
import time

threading.Thread(target=time.sleep, args=(3600,), name="import-time-worker").start()


async def bot(args):
    pass
