"""Prints at import, then replaces sys.stdout and sys.stderr, as some bots (and libraries) do."""

import io
import sys

print("import-time print")  # block-buffered when stdout is a pipe
sys.stdout = io.StringIO()
sys.stderr = io.StringIO()


async def bot(args):
    pass
