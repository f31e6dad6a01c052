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
import trio.testing
import trio_asyncio

from pipecat_base._speedups.loop_scheduler import ITERATIONS_PER_ROUND
from pipecat_base.bridge.loop import ASYNCGEN_CLOSE_BOUND, open_bridge_loop, run_aio, wait_task

from .steps import counting_steps

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
    # A WARNING at each call, in the caller's session (the line names it).
    refused = logs.having("Refused the bot's asyncio signal handler for SIGINT")
    assert [level for level, _, _ in refused] == ["WARNING", "WARNING"]


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


# -- the scheduler (pipecat_base._speedups.loop_scheduler) -----------------------------------------


async def _rounds_until(done: trio.Event, work: Callable[[], None]) -> int:
    """Trio scheduler rounds a bystander task gets from ``work()`` queueing callbacks until
    ``done`` is set by one of them."""
    rounds = 0

    async def bystander() -> None:
        nonlocal rounds
        while not done.is_set():
            rounds += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(bystander)
        work()
        await done.wait()
    return rounds


@pytest.mark.usefixtures("all_speedups")
async def test_ready_callbacks_run_in_one_trio_round_in_order():
    async with open_bridge_loop() as loop:
        ran: list[int] = []
        done = trio.Event()

        def work() -> None:
            for i in range(100):
                loop.call_soon(ran.append, i)
            loop.call_soon(done.set)

        rounds = await _rounds_until(done, work)
    assert ran == list(range(100))
    # trio-asyncio's own scheduler takes one Trio round per callback (100 here).
    assert rounds <= 3


@pytest.mark.usefixtures("all_speedups")
async def test_a_chain_of_callbacks_runs_as_asyncio_iterations_within_one_trio_round():
    # A pipecat frame crossing its processors is such a chain: each link queued by the last.
    async with open_bridge_loop() as loop:
        ran: list[str] = []
        chain_done = trio.Event()

        def link(n: int) -> None:
            ran.append(f"link{n}")
            if n < 8:
                loop.call_soon(link, n + 1)
            else:
                chain_done.set()

        def work() -> None:
            loop.call_soon(link, 1)
            loop.call_soon(ran.append, "queued before link2")

        rounds = await _rounds_until(chain_done, work)
    # asyncio's order: what an iteration queues runs after what was already queued.
    assert ran[:3] == ["link1", "queued before link2", "link2"]
    assert ran[3:] == [f"link{n}" for n in range(3, 9)]
    # trio-asyncio's own scheduler takes a Trio round per link (8 here).
    assert rounds <= 3


@pytest.mark.usefixtures("all_speedups")
async def test_waking_an_idle_loop_costs_it_one_trio_step():
    async with open_bridge_loop() as loop:
        for _ in range(5):  # let the loop go idle
            await trio.lowlevel.checkpoint()
        done = trio.Event()
        with counting_steps("_main_loop") as steps:
            for _ in range(10):
                loop.call_soon(done.set)
                await done.wait()
                done = trio.Event()
                for _ in range(5):  # the loop has nothing left and sleeps again
                    await trio.lowlevel.checkpoint()
    # One step runs the callback and goes back to sleep; a yield before sleeping made it two.
    assert steps.counts["_main_loop"] == 10


@pytest.mark.usefixtures("all_speedups")
async def test_a_timer_wakes_an_idle_loop_in_one_step(autojump_clock):
    async with open_bridge_loop() as loop:
        await trio.sleep(1)
        fired = trio.Event()
        with counting_steps("_main_loop") as steps:
            loop.call_later(5, fired.set)
            t0 = trio.current_time()
            await fired.wait()
            assert trio.current_time() == t0 + 5
            await trio.sleep(1)
    # The call_later wakes the sleeping loop to take the new deadline (a step), the deadline
    # wakes it again to run the timer (a step).
    assert steps.counts["_main_loop"] == 2


@pytest.mark.usefixtures("all_speedups")
async def test_a_timer_wakes_the_loop_without_raising_a_cancellation_into_it(
    autojump_clock, monkeypatch
):
    created: list[str] = []
    init = trio.Cancelled.__init__

    def counted(self: trio.Cancelled, **fields: Any) -> None:
        created.append(fields.get("source", "?"))
        init(self, **fields)

    async with open_bridge_loop() as loop:
        await trio.sleep(1)
        fired: list[float] = []
        done = trio.Event()
        t0 = trio.current_time()
        with monkeypatch.context() as patch:
            patch.setattr(trio.Cancelled, "__init__", counted)
            for n in range(1, 11):
                loop.call_later(n, lambda: fired.append(trio.current_time() - t0))
            loop.call_later(11, done.set)
            await done.wait()
    assert fired == [float(n) for n in range(1, 11)]
    # Trio ends a sleep at a deadline by raising `Cancelled` into the task; the loop's sleep
    # until its first timer is woken with a plain value instead.
    assert created == []


@pytest.mark.usefixtures("all_speedups")
async def test_a_cancellation_still_stops_the_loop_while_it_sleeps_until_a_timer(autojump_clock):
    t0 = trio.current_time()
    with trio.move_on_after(5) as scope:
        async with open_bridge_loop() as loop:
            loop.call_later(100, lambda: None)  # the loop sleeps until then
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert trio.current_time() == t0 + 5


@pytest.mark.usefixtures("all_speedups")
async def test_a_timed_sleep_tells_a_cancellation_from_its_own_deadline(autojump_clock):
    # trio-asyncio runs the loop shielded, so the test above stops it with `stop()`; the sleep
    # itself must still deliver any cancellation that is not its own deadline.
    from pipecat_base._speedups.loop_scheduler import ReadyQueue

    async with open_bridge_loop() as loop:  # only for the handle's constructor
        queue = ReadyQueue([])  # a queue of its own, not the loop's
        t0 = trio.current_time()
        queue.add_timer(asyncio.TimerHandle(t0 + 100, lambda: None, (), loop))
        with trio.move_on_after(5) as scope:
            await queue.wait(trio.current_time())
        assert scope.cancelled_caught
        assert trio.current_time() == t0 + 5
        await queue.wait(trio.current_time())  # its own deadline: returns, nothing raised
        assert trio.current_time() == t0 + 100


@pytest.mark.usefixtures("all_speedups")
async def test_callbacks_see_the_loop_as_asyncios_running_loop_and_trio_tasks_do_not():
    import _asyncio

    from pipecat_base._speedups.loop_scheduler import speed_up_running_loop_lookup

    async with open_bridge_loop() as loop:
        seen: dict[str, Any] = {}
        done = trio.Event()

        def callback() -> None:
            seen["c"] = _asyncio._get_running_loop()
            seen["asyncio"] = asyncio.get_running_loop()
            done.set()

        loop.call_soon(callback)
        await done.wait()
        assert seen == {"c": loop, "asyncio": loop}
        # Between batches asyncio's own (per-thread) slot is empty again; Trio code inside
        # the loop's block still gets the loop from trio-asyncio's lookup, threads get none.
        assert _asyncio._get_running_loop() is None
        assert asyncio.get_running_loop() is loop
        assert await trio.to_thread.run_sync(asyncio.events._get_running_loop) is None

        async def from_asyncio() -> Any:
            # A Trio task started from asyncio code runs outside the batch.
            return await trio_asyncio.trio_as_aio(trio_side)()

        async def trio_side() -> Any:
            return _asyncio._get_running_loop()

        assert await trio_asyncio.aio_as_trio(from_asyncio)() is None
    assert speed_up_running_loop_lookup() is True  # installed once; asking again is harmless
    assert getattr(asyncio.events._get_running_loop, "fast_path", False)


@pytest.mark.usefixtures("all_speedups")
async def test_a_cancelled_timer_never_runs(autojump_clock):
    async with open_bridge_loop() as loop:
        fired: list[str] = []
        loop.call_later(1, fired.append, "cancelled").cancel()
        loop.call_later(2, fired.append, "kept")
        await trio.sleep(3)
    assert fired == ["kept"]


@pytest.mark.usefixtures("all_speedups")
async def test_callbacks_queued_while_the_loop_stops_still_run():
    ran: list[str] = []
    async with open_bridge_loop() as loop:

        def first() -> None:
            ran.append("first")
            loop.call_soon(ran.append, "queued by first")  # lands after the loop's stop

        loop.call_soon(first)
        loop.stop()  # its handle runs in first's iteration, before what first queues
    # The stop handle ends the loop's main iterations; its exit drains what is left.
    assert ran == ["first", "queued by first"]


@pytest.mark.usefixtures("all_speedups")
async def test_a_callback_chain_cannot_starve_trio_tasks(mock_clock):
    async with open_bridge_loop() as loop:
        spins = 0
        spinning = True

        def spin() -> None:
            nonlocal spins
            spins += 1
            if spinning:
                loop.call_soon(spin)  # reschedules itself until told to stop

        loop.call_soon(spin)
        try:
            for _ in range(20):  # each of these needs the Trio scheduler to come round
                await trio.lowlevel.checkpoint()
            # One link of the chain per asyncio iteration, a bounded number per Trio round.
            assert 0 < spins <= 21 * ITERATIONS_PER_ROUND
            # Trio deadlines still fire while the chain runs (virtual time, moved by hand: the
            # chain keeps the loop busy, so the clock could never autojump).
            woke = trio.Event()
            deadline = trio.current_time() + 1

            async def sleeper() -> None:
                await trio.sleep_until(deadline)
                woke.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sleeper)
                mock_clock.jump(1)
                await woke.wait()
            assert spins > 20
        finally:
            spinning = False  # the loop's exit drains callbacks until none is left


@pytest.mark.usefixtures("all_speedups")
async def test_timers_fire_when_due_in_virtual_time(autojump_clock):
    async with open_bridge_loop() as loop:
        fired: list[tuple[str, float]] = []
        t0 = trio.current_time()
        loop.call_later(5, lambda: fired.append(("b", trio.current_time())))
        loop.call_later(2, lambda: fired.append(("a", trio.current_time())))
        loop.call_soon(lambda: fired.append(("soon", trio.current_time())))
        await trio.sleep(10)
    assert fired == [("soon", t0), ("a", t0 + 2), ("b", t0 + 5)]


@pytest.mark.usefixtures("all_speedups")
def test_an_unexpected_loop_keeps_its_own_scheduler(logs):
    from pipecat_base._speedups.loop_scheduler import install

    class Unfamiliar:
        async def _main_loop_one(self, no_wait: bool = False) -> None: ...

    assert install(Unfamiliar()) is False  # type: ignore[arg-type]
    assert logs.having("trio-asyncio's loop internals changed; keeping its own scheduler")


@pytest.mark.usefixtures("all_speedups")
@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at"])
async def test_callbacks_are_checked_in_debug_mode_as_asyncio_does(method, autojump_clock):
    async def not_a_callback() -> None: ...

    async with open_bridge_loop() as loop:
        schedule = getattr(loop, method)
        when = [] if method == "call_soon" else [1 if method == "call_later" else loop.time() + 1]
        loop.set_debug(True)
        checked_by = "call_soon" if method == "call_soon" else "call_at"  # asyncio's names
        with pytest.raises(TypeError, match=f"coroutines cannot be used with {checked_by}"):
            schedule(*when, not_a_callback)
        loop.set_debug(False)
        done = trio.Event()
        schedule(*when, done.set)  # no per-call check outside debug mode, as in asyncio
        await done.wait()


@pytest.mark.usefixtures("all_speedups")
async def test_a_timer_due_in_the_past_runs_at_once_as_in_asyncio(autojump_clock):
    async with open_bridge_loop() as loop:
        await trio.sleep(7)
        assert loop.time() == trio.current_time()  # the loop's clock is Trio's (virtual here)
        ran: list[str] = []
        loop.call_later(-1, ran.append, "late")
        loop.call_at(loop.time() - 5, ran.append, "later")
        await trio.sleep(0.001)
    assert ran == ["later", "late"]  # in the order of their deadlines


@pytest.mark.usefixtures("all_speedups")
async def test_cancelled_timers_leave_the_heap_as_asyncios_do(autojump_clock):
    async with open_bridge_loop() as loop:
        fired: list[int] = []
        timers = [loop.call_later(10 + i, fired.append, i) for i in range(300)]
        for timer in timers[100:]:  # not due for long, as pipecat's timeouts that never fire
            timer.cancel()
        loop.call_soon(lambda: None)  # the loop wakes, then waits for its next deadline
        await trio.sleep(1)
        # Most of a heap over 100 timers was cancelled: rebuilt with the live ones only.
        assert len(loop._timers) == 100
        for timer in timers[50:100]:
            timer.cancel()
        loop.call_soon(lambda: None)
        await trio.sleep(1)
        assert len(loop._timers) == 100  # half of 100 is not most: left for now
        for timer in timers[:10]:
            timer.cancel()
        loop.call_soon(lambda: None)
        await trio.sleep(1)
        # Not over 100 timers: only the cancelled ones at the head leave.
        assert len(loop._timers) == 90
        await trio.sleep(400)
    assert fired == list(range(10, 50))


@pytest.mark.usefixtures("all_speedups")
async def test_a_batch_sees_asyncios_own_lookups_and_trio_code_sees_trio_asyncios():
    import _asyncio

    from trio_asyncio import _loop as trio_asyncio_loop

    async with open_bridge_loop() as loop:
        trio_side = (asyncio.get_running_loop, asyncio.events._get_running_loop,
                     asyncio.current_task, asyncio.tasks.current_task)  # fmt: skip
        seen: dict[str, Any] = {}

        async def in_a_task() -> None:
            seen["lookups"] = (asyncio.get_running_loop, asyncio.events._get_running_loop,
                               asyncio.current_task, asyncio.tasks.current_task)  # fmt: skip
            seen["loop"] = asyncio.get_running_loop()
            seen["task"] = asyncio.current_task()

        task = loop.create_task(in_a_task())
        await wait_task(task, cancel_grace=1)
        assert seen["lookups"] == (_asyncio.get_running_loop, _asyncio._get_running_loop,
                                   trio_asyncio_loop._orig_current_task,
                                   trio_asyncio_loop._orig_current_task)  # fmt: skip
        assert seen["loop"] is loop
        assert seen["task"] is task
        # After the batch, trio-asyncio's again: they find the loop from Trio code too.
        assert (asyncio.get_running_loop, asyncio.events._get_running_loop,
                asyncio.current_task, asyncio.tasks.current_task) == trio_side  # fmt: skip
        assert asyncio.get_running_loop() is loop


async def test_an_async_generator_whose_cleanup_never_ends_cannot_hold_the_loops_exit(
    autojump_clock,
):
    closing: list[str] = []

    async def stubborn() -> Any:
        try:
            yield 1
        finally:
            closing.append("closing")
            await asyncio.Event().wait()  # its cleanup waits for a peer that is gone

    async def start_one() -> Any:
        agen = stubborn()
        await agen.__anext__()  # open, then left open
        return agen

    began = trio.current_time()
    async with open_bridge_loop() as loop:
        kept = await run_aio(loop, start_one)
    assert closing == ["closing"]
    assert trio.current_time() - began <= ASYNCGEN_CLOSE_BOUND + 1
    del kept
