"""Takes long to import (like Silero or smart-turn models), and says when it began."""

import sys
import time

print("IMPORTING", file=sys.stderr, flush=True)
time.sleep(60)


async def bot(args):
    pass
