"""Reports, at import, whether trio_asyncio was imported before pipecat (sys.modules keeps the
order in which imports began)."""

import sys

names = list(sys.modules)
pipecat_first = names.index("pipecat") if "pipecat" in names else len(names)
verdict = "OK" if names.index("trio_asyncio") < pipecat_first else "BAD"
print(f"IMPORT ORDER {verdict}", file=sys.stderr, flush=True)


async def bot(args):
    pass
