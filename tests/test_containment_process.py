"""What a bot cannot do to the server, where only a real process shows it: signals, fds, exits
and child processes (README: "What a bot cannot do to the server")."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest
import trio

from .process import BOTS, server_process

pytestmark = pytest.mark.slow

BOT = BOTS / "hostile_bot.py"


async def post(url: str, body: dict, session_id: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as client:
        return await client.post(
            f"{url}/bot", json=body, headers={"X-Daily-Session-Id": session_id}
        )


async def hostile_session_then_sigterm(what: str) -> str:
    """A session whose bot does ``what``, then an ordinary one; both answered, and SIGTERM
    exits 0. The server's output."""
    async with server_process(BOT) as server:
        assert (await post(server.url, {"do": what}, "hostile")).status_code == 200
        assert (await post(server.url, {}, "after")).status_code == 200
        code, _ = await server.terminate(limit=30)
    assert code == 0
    return server.text


@pytest.mark.parametrize("what", ["sys-exit", "keyboard-interrupt"])
async def test_a_bot_exiting_ends_its_session_and_the_server_serves_on(what):
    text = await hostile_session_then_sigterm(what)
    assert "Exception running bot(): bot() raised" in text
    assert text.count("Stopping bot session") == 2
    assert "before the server was up" not in text


@pytest.mark.parametrize(("what", "name"), [("close-stdout", "stdout"), ("close-stderr", "stderr")])
async def test_a_bot_closing_stdout_or_stderr_breaks_neither_logging_nor_shutdown(what, name):
    text = await hostile_session_then_sigterm(what)
    assert f"A bot closed {name}" in text  # reopened, and said so on the reopened stderr
    assert text.count("Stopping bot session") == 2


async def test_a_bot_installing_its_own_sigterm_handler_is_undone_and_shutdown_works():
    env = {"SHUTDOWN_TIMEOUT": "1", "SESSION_CANCEL_GRACE": "1"}
    async with server_process(BOT, env=env) as server:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(post, server.url, {"do": "own-sigterm"}, "thief")
            with trio.fail_after(30):
                await server.wait_for_output(b"replaced the SIGTERM handler")
            code, elapsed = await server.terminate(limit=30)
            nursery.cancel_scope.cancel()
    assert code == 0
    assert elapsed < 1 + 1 + 0.5, elapsed
    warning = next(line for line in server.text.splitlines() if "replaced the SIGTERM" in line)
    assert "WARNING" in warning
    assert "thief" in warning


async def test_a_bots_asyncio_signal_handler_is_refused_with_a_warning_naming_it():
    async with server_process(BOT, env={"SHUTDOWN_TIMEOUT": "1"}) as server:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(post, server.url, {"do": "loop-sigterm"}, "asyncio-thief")
            with trio.fail_after(30):
                await server.wait_for_output(b"asyncio signal handler for SIGTERM")
            code, _ = await server.terminate(limit=30)
            nursery.cancel_scope.cancel()
    assert code == 0
    warning = next(line for line in server.text.splitlines() if "asyncio signal handler" in line)
    assert "WARNING" in warning
    assert "asyncio-thief" in warning


def children_named(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


async def test_child_processes_a_session_started_end_with_it_and_none_survive_the_server():
    marker = "pipecat-base-test-child"
    env = {"SESSION_CANCEL_GRACE": "0.5", "SHUTDOWN_TIMEOUT": "0.5"}
    try:
        async with server_process(BOT, env=env) as server:
            assert (await post(server.url, {"do": "children"}, "parent")).status_code == 200
            assert children_named(marker) == []  # gone with the session
            warning = next(line for line in server.text.splitlines() if "child process" in line)
            assert "WARNING" in warning
            assert "parent" in warning
            assert marker in warning
            # A session still running at shutdown: its children go with the server.
            async with trio.open_nursery() as nursery:
                body = {"do": "children", "seconds": 3600, "tag": "for the shutdown"}
                nursery.start_soon(post, server.url, body, "running")
                with trio.fail_after(30):
                    await server.wait_for_output(b"children started for the shutdown")
                code, _ = await server.terminate(limit=30)
                nursery.cancel_scope.cancel()
        assert code == 0
        assert children_named(marker) == []
    finally:
        for pid in children_named(marker):
            os.kill(pid, signal.SIGKILL)


TOKEN = "tok-5ecr3t-9f8e7d6c5b4a"


@pytest.mark.parametrize("lane", [False, True], ids=["lane-off", "lane-on"])
async def test_a_sessions_room_token_reaches_no_output(tmp_path, lane):
    env = {"PCC_LOG_DIR": str(tmp_path / "logs")} if lane else {}
    headers = {
        "X-Daily-Session-Id": "leaky",
        "X-Daily-Room-Url": "https://example.daily.co/room",
        "X-Daily-Room-Token": TOKEN,
    }
    bot = BOTS / "leaky_bot.py"
    async with server_process(bot, env=env, capture_stdout=True) as server:
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(f"{server.url}/bot", json={}, headers=headers)
        assert response.status_code == 200
        code, _ = await server.terminate(limit=30)
    assert code == 0
    outputs = {"stdout": server.stdout.decode(), "stderr": server.text}
    if lane:
        outputs["lane"] = (tmp_path / "logs" / "bot.jsonl").read_text()
    for name, text in outputs.items():
        assert TOKEN not in text, name
    err = outputs["stderr"]
    for said in ("stderr token", "logged token", "stdlib token", "failed with token"):
        assert f"{said} <room token>" in err, said
    assert "printed token <room token>" in outputs["stdout"]
    # stdlib logging arrives through loguru: the console format, with the session's id.
    stdlib = next(line for line in err.splitlines() if "stdlib token" in line)
    assert "| WARNING  |" in stdlib
    assert "leaky - stdlib token" in stdlib
