"""The bot both servers run in the benchmarks; the session picks the workload.

* ``POST /bot`` -- returns at once (``instant``), or with body ``{"mode": "forever"}`` runs until
  cancelled;
* ``WS /ws`` with body ``{"mode": "raw"}`` -- echoes Twilio media without pipecat;
  ``"pipecat"`` -- the pipecat echo pipeline of ``examples/telephony/bot.py``; ``"vad"`` -- the
  same with Silero VAD.
"""

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import forever  # noqa: E402
import instant  # noqa: E402
import raw_echo  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "telephony_echo", HERE.parent.parent / "examples" / "telephony" / "bot.py"
)
telephony_echo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(telephony_echo)


async def bot(args):
    mode = (args.body or {}).get("mode", "instant")
    if getattr(args, "websocket", None) is None:
        return await (forever.bot(args) if mode == "forever" else instant.bot(args))
    if mode == "raw":
        return await raw_echo.bot(args)
    args.body = {"vad": mode == "vad"}
    return await telephony_echo.bot(args)
