"""Takes long to import (like Silero or smart-turn models), and says when it began."""

import sys
import time

# One write: print() writes the text and the newline separately, and with unbuffered stderr
# (PYTHONUNBUFFERED) the server's SIGTERM line could land between them.
sys.stderr.write("IMPORTING\n")
sys.stderr.flush()
time.sleep(60)


async def bot(args):
    pass
