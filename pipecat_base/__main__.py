"""``python -m pipecat_base serve [BOT]``."""

from .cli import run

run()
