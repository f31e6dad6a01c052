"""Process-level behaviour: signals, exit codes, startup failures, with real child processes.

These run on the real clock (a child process has no virtual time); every wait is bounded with
``trio.fail_after`` and the time assertions are upper bounds with headroom for a loaded CI box.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

from pipecat_base.startup.early_sigterm import MESSAGE as EARLY_SIGTERM

from .process import BOTS, server_process

pytestmark = pytest.mark.slow


async def post_bot(url: str, body: dict, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as client:
        return await client.post(f"{url}/bot", json=body, headers=headers)


async def test_sigterm_while_idle_exits_0_fast_and_signals_the_token_refresher(tmp_path: Path):
    refresher = tmp_path / "token-refresher"
    refresher.mkdir()
    env = {"PCC_TOKEN_REFRESHER_DIR": str(refresher)}
    async with server_process(BOTS / "waiting_bot.py", env=env) as server:
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{server.url}/livez")).status_code == 200
        code, elapsed = await server.terminate()
    assert code == 0
    assert elapsed < 0.5, f"idle shutdown took {elapsed:.2f}s"
    assert "Server stopped" in server.text
    assert (refresher / "shutdown").exists()
    assert "Shutting down token refresher" in server.text


CONSOLE_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \| INFO     \| "
    r"pipecat_base\.nursery:_run:\d+ \| fmt-1 - Starting bot session with metadata: "
    r'\{"session_id": "fmt-1", "pipecat_version": "[^"]+", "python_version": "[\d.]+", '
    r'"image_version": "9\.9\.9", "arch": "[^"]+"\}$',
    re.MULTILINE,
)


async def test_console_format_and_probes_kept_out_of_the_access_log(tmp_path: Path):
    env = {"IMAGE_VERSION": "9.9.9"}
    async with server_process(BOTS / "waiting_bot.py", env=env) as server:
        async with httpx.AsyncClient() as client:
            for path in ("/livez", "/readyz", "/metrics", "/livez"):
                assert (await client.get(f"{server.url}{path}")).status_code == 200
        body = {"marker": str(tmp_path / "m"), "seconds": 0}
        response = await post_bot(server.url, body, **{"X-Daily-Session-Id": "fmt-1"})
        assert response.status_code == 200
        server.signal(signal.SIGTERM)
    assert CONSOLE_LINE.search(server.text), server.text
    assert '"POST /bot 1.1" 200' in server.text  # the access log is on...
    assert "/livez" not in server.text  # ...but probes stay out of it
    assert "/readyz" not in server.text
    assert "/metrics" not in server.text
    # uvicorn's two lines, which log-based alerts on the existing image key on, each once.
    lines = server.text.splitlines()
    started = [i for i, line in enumerate(lines) if line.endswith("Application startup complete.")]
    ended = [i for i, line in enumerate(lines) if line.endswith("Application shutdown complete.")]
    assert len(started) == len(ended) == 1
    assert started[0] < ended[0]


async def test_idle_shutdown_skips_the_interpreters_last_collection_of_a_large_heap(
    tmp_path: Path,
):
    # On its way out Python collects every tracked object once more: with pipecat loaded and
    # the cyclic leftovers of many sessions, that alone took idle shutdown past 0.5 s. The
    # server freezes the heap once its logs are flushed, so that collection has nothing to do.
    report = tmp_path / "report"
    async with server_process(BOTS / "heap_bot.py", env={"HEAP_BOT_REPORT": str(report)}) as server:
        code, elapsed = await server.terminate()
    assert code == 0
    assert elapsed < 0.5, f"idle shutdown took {elapsed:.2f}s"
    assert report.read_text() == "frozen at exit: True\n"


async def test_the_startup_heap_is_frozen_so_releasing_a_sessions_memory_stays_cheap(
    tmp_path: Path,
):
    # What the bot's import built (pipecat, here 500k objects in cycles) lives as long as the
    # process; walking it made every release between sessions (on by default, once /bot
    # has answered) a full collection of tens of milliseconds.
    env = {"HEAP_BOT_REPORT": str(tmp_path / "report")}
    async with server_process(BOTS / "heap_bot.py", env=env) as server:
        assert (await post_bot(server.url, {})).status_code == 200
        with trio.fail_after(30):
            await server.wait_for_output(b"Released session memory")
        server.signal(signal.SIGTERM)
        assert await server.wait_exit() == 0
    (frozen,) = re.findall(r"Froze (\d+) objects alive at startup", server.text)
    assert int(frozen) >= 500_000
    (gc_ms,) = re.findall(
        r"Released session memory: collected \d+ objects in ([\d.]+) ms", server.text
    )
    # Unfrozen, this heap alone took ~50 ms to walk on the machine these numbers come from.
    assert float(gc_ms) < 10, gc_ms


async def test_sigterm_during_session_drains_for_shutdown_timeout_then_cancels(tmp_path: Path):
    marker = tmp_path / "marker"
    env = {"SHUTDOWN_TIMEOUT": "1", "SESSION_CANCEL_GRACE": "2"}
    async with server_process(BOTS / "waiting_bot.py", env=env) as server:
        responses: list[httpx.Response] = []

        async def call() -> None:
            responses.append(
                await post_bot(server.url, {"marker": str(marker)}, **{"X-Daily-Session-Id": "s1"})
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            with trio.fail_after(30):
                await server.wait_for_output(b"Starting bot session")
            sent = time.monotonic()
            server.signal(signal.SIGTERM)
            with trio.fail_after(30):
                await server.wait_for_output(b"Bot session stopped: shutdown")
            stopped_after = time.monotonic() - sent
            code = await server.wait_exit()
            exited_after = time.monotonic() - sent
    assert code == 0
    assert 0.9 <= stopped_after < 2.0, stopped_after
    assert exited_after < 3.0, exited_after
    assert marker.read_text() == "started\ncancelled\n"
    assert [r.status_code for r in responses] == [200]
    assert server.text.count("Stopping bot session") == 1


async def test_bot_ignoring_cancellation_is_abandoned_and_process_still_exits_0(tmp_path: Path):
    env = {"SHUTDOWN_TIMEOUT": "0.5", "SESSION_CANCEL_GRACE": "0.5"}
    async with server_process(BOTS / "stubborn_bot.py", env=env) as server:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(post_bot, server.url, {"marker": str(tmp_path / "m")})
            with trio.fail_after(30):
                await server.wait_for_output(b"Starting bot session")
            code, elapsed = await server.terminate(limit=30)
    assert code == 0
    # SHUTDOWN_TIMEOUT + SESSION_CANCEL_GRACE + the second-cancel window = 1.5 s.
    assert 1.4 <= elapsed < 3.5, elapsed
    assert "ignored cancellation" in server.text
    assert "Exiting with abandoned sessions still running" in server.text


async def test_threads_a_bot_left_running_do_not_hold_the_exit():
    async with server_process(BOTS / "thread_bot.py") as server:
        assert (await post_bot(server.url, {})).status_code == 200
        code, elapsed = await server.terminate()
    assert code == 0
    assert elapsed < 1.0, elapsed
    assert "Exiting with threads still running: forgotten-worker" in server.text


async def test_sigterm_during_slow_bot_import_exits_0_promptly():
    async with server_process(BOTS / "slow_import_bot.py", wait_ready=False) as server:
        with trio.fail_after(30):
            await server.wait_for_output(b"IMPORTING")
        code, elapsed = await server.terminate()
    assert code == 0
    assert elapsed < 1.0, elapsed
    lines = server.text.splitlines()
    assert lines[-1] == "SIGTERM received before the server was up; nothing to drain, exiting"
    assert "Application startup complete" not in server.text


async def test_early_sigterm_with_the_lane_on_is_an_app_warning_record(tmp_path: Path):
    log_dir = tmp_path / "logs"
    env = {"PCC_LOG_DIR": str(log_dir)}
    async with server_process(BOTS / "slow_import_bot.py", env=env, wait_ready=False) as server:
        with trio.fail_after(30):
            await server.wait_for_output(b"IMPORTING")
        code, _ = await server.terminate()
    assert code == 0
    assert server.text.splitlines()[-1] == EARLY_SIGTERM
    records = [json.loads(line) for line in (log_dir / "bot.jsonl").read_text().splitlines()]
    last = records[-1]
    assert {k: v for k, v in last.items() if k != "@timestamp"} == {
        "stream": "app",
        "level": "WARNING",
        "line": EARLY_SIGTERM,
    }
    assert not [r for r in records if r["stream"] == "stderr" and r["line"] == EARLY_SIGTERM]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SHUTDOWN_TIMEOUT": "abc"}, "SHUTDOWN_TIMEOUT='abc'"),
        ({"PORT": "-1"}, "PORT='-1'"),
        ({"SESSION_CANCEL_GRACE": "nan"}, "SESSION_CANCEL_GRACE='nan'"),
        ({"MAX_SESSIONS": "0"}, "MAX_SESSIONS='0'"),
    ],
)
async def test_bad_environment_variable_exits_2_with_one_line(env, expected):
    async with server_process(BOTS / "waiting_bot.py", env=env, wait_ready=False) as server:
        with trio.fail_after(30):
            code = await server.wait_exit()
    assert code == 2
    lines = server.text.strip().splitlines()
    assert len(lines) == 1, lines
    assert expected in lines[0]
    assert lines[0].startswith("pipecat-base: Invalid environment variable ")


@pytest.mark.parametrize(
    ("bot", "expected"),
    [
        ("no_bot.py", "defines no bot() function"),
        ("sync_bot.py", "bot must be an async function"),
        ("missing_bot.py", "bot file not found"),
    ],
)
async def test_unusable_bot_module_fails_startup_with_a_clear_message(bot, expected):
    async with server_process(BOTS / bot, wait_ready=False) as server:
        with trio.fail_after(30):
            code = await server.wait_exit()
    assert code == 1
    assert expected in server.text
    assert "Traceback" not in server.text


async def test_trio_asyncio_is_imported_before_pipecat():
    # pipecat's wait_for2 (Python < 3.12) captures asyncio.get_running_loop at import; if pipecat
    # is imported (by the compatibility check) before trio_asyncio patches it, every pipeline
    # fails with "no running event loop". Found on 3.11 only; this checks the order everywhere.
    async with server_process(BOTS / "import_order_bot.py") as server:
        server.signal()
    assert "IMPORT ORDER OK" in server.text


async def test_console_script_runs_the_same_cli():
    script = Path(sys.executable).parent / "pipecat-base"
    result = await trio.run_process([str(script), "serve", "--help"], capture_stdout=True)
    assert b"path to the bot file or a module name" in result.stdout


@pytest.mark.parametrize(
    ("host", "cause"), [("127.0.0.1", "Address already in use"), ("bad.invalid", "")]
)
async def test_an_address_the_server_cannot_listen_on_is_one_line_and_exit_3(host, cause):
    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"HOST": host, "PORT": str(port)}
        async with server_process(BOTS / "waiting_bot.py", env=env, wait_ready=False) as server:
            with trio.fail_after(60):
                assert await server.wait_exit() == 3
    lines = [line for line in server.text.splitlines() if line.startswith("pipecat-base:")]
    assert lines == [lines[0]]
    assert lines[0].startswith(f"pipecat-base: cannot listen on {host}:{port}: ")
    assert cause in lines[0]
    assert "Traceback" not in server.text


@pytest.mark.parametrize(
    ("source", "summary", "user_line"),
    [
        ("import asyncio\n\ndef oops(:\n    pass\n", "SyntaxError at {bot}:3: invalid syntax",
         "def oops(:"),
        ("import not_a_module_xyz\n", "ModuleNotFoundError at {bot}:1: No module named "
         "'not_a_module_xyz'", "import not_a_module_xyz"),
        ("def helper():\n    raise RuntimeError('boom')\n\nhelper()\n",
         "RuntimeError at {bot}:2: boom", "raise RuntimeError('boom')"),
    ],
    ids=["syntax", "import", "raises"],
)  # fmt: skip
async def test_a_bot_that_fails_to_load_gets_one_summary_line_and_its_own_traceback(
    tmp_path, source, summary, user_line
):
    bot = tmp_path / "bot.py"
    bot.write_text(source)
    async with server_process(bot, wait_ready=False) as server:
        with trio.fail_after(30):
            assert await server.wait_exit() == 1
    lines = server.text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("pipecat-base:"))
    assert lines[first] == f"pipecat-base: cannot load the bot: {summary.format(bot=bot)}"
    rest = "\n".join(lines[first + 1 :])
    assert user_line in rest
    assert "pipecat_base" not in rest  # the user's frames only
    assert "importlib" not in rest


async def test_a_directory_as_the_bot_says_so(tmp_path):
    async with server_process(tmp_path, wait_ready=False) as server:
        with trio.fail_after(30):
            assert await server.wait_exit() == 1
    assert f"pipecat-base: cannot load the bot: {tmp_path} is a directory" in server.text


async def test_version_and_serve_flags_over_the_environment():
    done = await trio.run_process(
        [sys.executable, "-m", "pipecat_base", "--version"], capture_stdout=True
    )
    assert done.stdout.decode().startswith("pipecat-base ")
    argv = [sys.executable, "-m", "pipecat_base", "serve", str(BOTS / "waiting_bot.py"),
            "--host", "127.0.0.1", "--port", "0"]  # fmt: skip
    # The flags win over HOST and PORT (which would not even parse).
    async with server_process(argv=argv, env={"HOST": "bad.invalid", "PORT": "1"}) as server:
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{server.url}/livez")).status_code == 200
        code, _ = await server.terminate()
    assert code == 0
