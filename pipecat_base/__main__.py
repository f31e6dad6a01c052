"""``python -m pipecat_base serve [BOT]``."""

from pipecat_base.cli import run

run()
