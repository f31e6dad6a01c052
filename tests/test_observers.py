"""Observability: the observers setup file on the installed pipecat, and the features summary."""

from __future__ import annotations

import os

import pytest
import trio

from pipecat_base import cli
from pipecat_base.nursery import Outcome, SessionSpec
from pipecat_base.sessions.args import http_session_args
from pipecat_base.startup.features import OBSERVERS, detect, summary
from pipecat_base.startup.loader import load_bot

from .conftest import PIPECAT, needs_pipecat
from .process import BOTS, server_process


def test_setup_file_is_appended_keeping_the_users_entries(monkeypatch):
    path = cli.observers_setup_path()
    assert os.path.isfile(path)
    monkeypatch.setenv("PIPECAT_SETUP_FILES", "/app/mine.py:/app/other.py")
    cli.register_setup_file(path)
    cli.register_setup_file(path)  # once only
    assert os.environ["PIPECAT_SETUP_FILES"] == f"/app/mine.py:/app/other.py:{path}"
    monkeypatch.delenv("PIPECAT_SETUP_FILES")
    cli.register_setup_file(path)
    assert os.environ["PIPECAT_SETUP_FILES"] == path


@needs_pipecat
@pytest.mark.slow
async def test_observers_load_on_the_installed_pipecat_without_warnings(
    make_supervisor, logs, monkeypatch
):
    assert next(f for f in detect() if f.name == OBSERVERS).available
    monkeypatch.setenv("PIPECAT_SETUP_FILES", cli.observers_setup_path())
    sup = make_supervisor(load_bot(str(BOTS / "pipeline_bot.py")).bot)
    args = http_session_args("obs", {}, room_url=None, token=None)
    with trio.fail_after(30):
        handle = await sup.start(SessionSpec("obs", args, budget=1.0))
        assert await handle.wait() == Outcome.BUDGET
    assert not [r for r in logs.records if r[0] in ("WARNING", "ERROR") and "setup" in r[2]]
    assert not logs.having("deprecated")
    (timing,) = logs.having("[pcc-observability] Startup timing")
    assert timing[:2] == ("INFO", "obs")
    assert "processors: [" in timing[2]


def test_summary_lists_every_feature_and_why():
    text = summary(detect())
    assert text.splitlines()[1] == "Features available in this base image:"
    assert "transport.websocket: ENABLED" in text
    assert "whatsapp: DISABLED" in text
    reason = (
        "Missing environment variables: WHATSAPP_TOKEN, WHATSAPP_PHONE_NUMBER_ID, "
        "WHATSAPP_APP_SECRET"
        if PIPECAT
        else "Requires SmallWebRTC (transport.webrtc) to be enabled"
    )
    assert f"whatsapp: DISABLED\n   Reason: {reason}" in text


@pytest.mark.slow
async def test_features_summary_is_logged_when_asked(tmp_path):
    env = {"PCC_LOG_FEATURES_SUMMARY": "true"}
    async with server_process(BOTS / "raw_ws_bot_iter.py", env=env) as server:
        server.signal()
    assert server.text.count("Features available in this base image:") == 1
    async with server_process(BOTS / "raw_ws_bot_iter.py") as server:
        server.signal()
    assert "Features available" not in server.text
