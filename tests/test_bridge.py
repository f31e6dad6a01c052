"""What pipecat (and the libraries it uses) does with asyncio, on the server's trio-asyncio loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio

from pipecat_base.bridge import open_bridge_loop, wait_task

needs_311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio API of Python 3.11")


@pytest.fixture
async def on_loop() -> AsyncIterator[Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]]:
    """Run an asyncio coroutine function as a task on an adapted bridge loop; return its result."""
    async with open_bridge_loop() as loop:

        async def run(fn: Callable[[], Awaitable[Any]]) -> Any:
            task = loop.create_task(fn())
            with trio.fail_after(10):
                await wait_task(task, cancel_grace=1)
            return task.result()

        yield run


async def test_run_in_executor_accepts_a_thread_pool_executor(on_loop):
    # pipecat's Silero VAD and smart-turn analyzers pass their own ThreadPoolExecutor.
    def work(x: int) -> tuple[int, str]:
        return x * 2, threading.current_thread().name

    with concurrent.futures.ThreadPoolExecutor(thread_name_prefix="vad") as pool:

        async def main() -> Any:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(pool, work, 21)

        result, thread = await on_loop(main)
    assert result == 42
    assert thread.startswith("vad")


async def test_run_in_executor_propagates_exceptions_and_default_executor_still_works(on_loop):
    def fail() -> None:
        raise ValueError("in a thread")

    with concurrent.futures.ThreadPoolExecutor() as pool:

        async def main() -> Any:
            loop = asyncio.get_running_loop()
            with pytest.raises(ValueError, match="in a thread"):
                await loop.run_in_executor(pool, fail)
            return await loop.run_in_executor(None, sum, [1, 2, 3])

        assert await on_loop(main) == 6


async def test_add_signal_handler_is_recorded_not_installed_and_works_twice(on_loop, logs):
    # pipecat's runner calls this on every session when a bot leaves handle_sigint=True.
    before = signal.getsignal(signal.SIGINT)

    async def session() -> bool:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        return loop.remove_signal_handler(signal.SIGINT)

    assert await on_loop(session) is True
    assert await on_loop(session) is True  # trio-asyncio alone asserts here
    assert signal.getsignal(signal.SIGINT) is before
    assert len(logs.having("The server owns process signals")) == 1


async def test_to_thread(on_loop):
    async def main() -> str:
        return await asyncio.to_thread(lambda: threading.current_thread().name)

    assert await on_loop(main) != threading.current_thread().name


async def test_call_soon_threadsafe_from_a_foreign_thread(on_loop):
    # daily-python and aiortc deliver callbacks from their own threads like this.
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[list[str]] = loop.create_future()
        seen: list[str] = []

        def from_thread() -> None:
            seen.append(threading.current_thread().name)
            loop.call_soon_threadsafe(got.set_result, seen)

        threading.Thread(target=from_thread, name="sdk-thread").start()
        return await got

    assert await on_loop(main) == ["sdk-thread"]


@needs_311
async def test_asyncio_timeout(on_loop):
    async def main() -> str:
        try:
            async with asyncio.timeout(0.05):
                await asyncio.sleep(10)
        except TimeoutError:
            return "timed out"
        return "no"

    assert await on_loop(main) == "timed out"


@needs_311
async def test_task_group(on_loop):
    async def main() -> list[int]:
        results: list[int] = []

        async def child(i: int) -> None:
            await asyncio.sleep(0.01 * (3 - i))
            results.append(i)

        async with asyncio.TaskGroup() as group:
            for i in range(3):
                group.create_task(child(i))
        return results

    assert await on_loop(main) == [2, 1, 0]


async def test_aiohttp_client_session_against_a_local_server(on_loop, logs):
    aiohttp = pytest.importorskip("aiohttp")
    from aiohttp import web

    async def main() -> tuple[int, str]:
        async def hello(request: web.Request) -> web.Response:
            return web.json_response({"hello": request.query.get("name")})

        app = web.Application()
        app.router.add_get("/hello", hello)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/hello?name=bot") as response:
                    return response.status, (await response.json())["hello"]
        finally:
            await runner.cleanup()

    assert await on_loop(main) == (200, "bot")


async def test_unclosed_aiohttp_session_is_logged_not_raised(on_loop, logs):
    aiohttp = pytest.importorskip("aiohttp")
    import gc

    async def main() -> None:
        session = aiohttp.ClientSession()
        del session  # never closed: aiohttp reports it through the loop's exception handler
        gc.collect()
        await asyncio.sleep(0)

    await on_loop(main)
    assert logs.having("Unclosed client session")
    assert logs.having("Unclosed client session")[0][0] == "ERROR"
