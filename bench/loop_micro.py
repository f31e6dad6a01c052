"""Per-callback cost of the asyncio loop bots run on: ``python -m bench.loop_micro [N]``.

Four asyncio patterns pipecat leans on, timed in CPU microseconds per operation, on the
server's loop (trio-asyncio with `pipecat_base.bridge.loop`'s adaptations, every speedup
engaged as the server runs it; ``bridge-stock`` with none) and, in child processes that never
import trio-asyncio (which patches asyncio process-wide), on plain asyncio and on uvloop (the
peer stack's loop):

* ``call_soon`` -- a chain of callbacks, each scheduling the next;
* ``sleep0`` -- ``await asyncio.sleep(0)``, a task yielding;
* ``queue_rtt`` -- a round trip through two ``asyncio.Queue``s between two tasks;
* ``timed_sleep`` -- ``await asyncio.sleep(1e-5)``: the loop sleeps until a timer is due and
  wakes for it (pipecat paces its output and times out its waits with timers).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time


async def measure(n: int) -> dict[str, float]:
    """CPU microseconds per operation for each pattern, on the running loop."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    count = 0

    def step() -> None:
        nonlocal count
        count += 1
        if count < n:
            loop.call_soon(step)
        else:
            done.set_result(None)

    t = time.process_time()
    loop.call_soon(step)
    await done
    call_soon = (time.process_time() - t) / n * 1e6

    t = time.process_time()
    for _ in range(n):
        await asyncio.sleep(0)
    sleep0 = (time.process_time() - t) / n * 1e6

    requests: asyncio.Queue[int | None] = asyncio.Queue()
    replies: asyncio.Queue[int] = asyncio.Queue()

    async def echo() -> None:
        while (item := await requests.get()) is not None:
            replies.put_nowait(item)

    echo_task = asyncio.ensure_future(echo())
    t = time.process_time()
    for i in range(n):
        requests.put_nowait(i)
        await replies.get()
    queue_rtt = (time.process_time() - t) / n * 1e6
    requests.put_nowait(None)
    await echo_task

    t = time.process_time()
    for _ in range(n):
        await asyncio.sleep(1e-5)
    timed_sleep = (time.process_time() - t) / n * 1e6
    return {
        "call_soon": call_soon,
        "sleep0": sleep0,
        "queue_rtt": queue_rtt,
        "timed_sleep": timed_sleep,
    }


def on_bridge_loop(n: int, speedups: str | None = None) -> dict[str, float]:
    """`measure` on the server's trio-asyncio loop, with the ``speedups`` selection
    (``PIPECAT_BASE_SPEEDUPS``; all by default, as the server runs)."""
    import trio

    from pipecat_base import _speedups
    from pipecat_base.bridge.loop import open_bridge_loop, run_aio

    before = _speedups.engaged()
    _speedups.install(speedups)

    async def main() -> dict[str, float]:
        async with open_bridge_loop() as loop:
            return await run_aio(loop, measure, n)

    try:
        return trio.run(main)
    finally:  # the selection in place before (a test process's, say) comes back
        _speedups.install(",".join(sorted(before)) or "0")


def on_plain_asyncio(n: int, runner: str = "asyncio") -> dict[str, float]:
    """`measure` on plain asyncio (``runner`` ``uvloop``: on uvloop), in a child process
    (trio-asyncio patches asyncio)."""
    code = (
        f"import asyncio, json, {runner}, bench.loop_micro as m; "
        f"print(json.dumps({runner}.run(m.measure({n}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    rows = (
        ("asyncio", lambda: on_plain_asyncio(n)),
        ("uvloop", lambda: on_plain_asyncio(n, "uvloop")),
        ("bridge", lambda: on_bridge_loop(n)),
        ("bridge-stock", lambda: on_bridge_loop(n, "0")),
    )
    for name, run in rows:
        print(f"{name:12} " + "  ".join(f"{k} {v:.2f} us" for k, v in run().items()))


if __name__ == "__main__":
    main()
