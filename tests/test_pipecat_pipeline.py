"""A real pipecat-ai pipeline inside bot(), cancelled by its session budget."""

from __future__ import annotations

import pytest
import trio

from pipecat_base.nursery import Outcome, SessionSpec
from pipecat_base.sessions.args import http_session_args
from pipecat_base.startup.loader import load_bot

from .conftest import needs_pipecat
from .process import BOTS

pytestmark = [needs_pipecat, pytest.mark.slow]


async def test_budget_cancels_pipeline_and_processors_clean_up_before_stop_line(
    make_supervisor, logs
):
    bot = load_bot(str(BOTS / "pipeline_bot.py")).bot
    supervisor = make_supervisor(bot)
    args = http_session_args("pipe-1", {}, room_url=None, token=None)
    with trio.fail_after(30):
        handle = await supervisor.start(SessionSpec("pipe-1", args, budget=1.0))
        assert await handle.wait() == Outcome.BUDGET
    ours = [
        m
        for m in logs.messages()
        if m.startswith(
            ("Starting bot", "Stopping bot", "Bot session stopped", "tracker", "pipeline", "runner")
        )
    ]
    assert ours[0].startswith("Starting bot session")
    assert ours[1] == "pipeline running"
    # pipecat's runner turns the CancelledError into its normal cancel path: CancelFrame,
    # processor cleanup(), then run() returns -- all before our stop line.
    assert "tracker first cleaned up" in ours
    assert "tracker second cleaned up" in ours
    assert ours.index("runner returned") > ours.index("tracker second cleaned up")
    assert ours[-2] == "Bot session stopped: maximum session duration reached (1s)"
    assert ours[-1].startswith("Stopping bot session")
    assert all(sid == "pipe-1" for _, sid, m in logs.records if m.startswith("tracker"))
