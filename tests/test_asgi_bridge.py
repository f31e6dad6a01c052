"""`asgi_bridge`'s inbound pump: one Trio step per event, and reading bounded by credits."""

from __future__ import annotations

import trio
import trio.testing

from pipecat_base.asgi_bridge import RECEIVE_CREDITS, open_asgi_bridge
from pipecat_base.bridge import open_bridge_loop, wait_task

from .steps import counting_steps


async def _no_send(message: dict) -> None:
    raise AssertionError(f"nothing is sent here: {message}")


async def test_the_inbound_pump_takes_one_step_per_event():
    events = 20
    send, receive = trio.open_memory_channel[dict](events)
    for n in range(events):
        send.send_nowait({"type": "websocket.receive", "text": str(n)})
    async with open_bridge_loop() as loop:
        with counting_steps("._pump_in") as steps:
            async with open_asgi_bridge(loop, receive.receive, _no_send) as bridge:

                async def read_all() -> list[str]:
                    return [(await bridge.receive())["text"] for _ in range(events)]

                task = loop.create_task(read_all())
                await wait_task(task, cancel_grace=1)
                assert task.result() == [str(n) for n in range(events)]
                await trio.testing.wait_all_tasks_blocked()
    # Its start, one per event (the channel receive's checkpoint), one to park on the empty
    # channel. Semaphore.acquire's fairness round used to add one per event.
    assert steps.counts["._pump_in"] == events + 2


async def test_reading_stops_at_the_credits_until_the_asyncio_side_takes_events():
    send, receive = trio.open_memory_channel[dict](100)
    for n in range(100):
        send.send_nowait({"type": "websocket.receive", "text": str(n)})
    async with open_bridge_loop() as loop:
        async with open_asgi_bridge(loop, receive.receive, _no_send) as bridge:
            await trio.testing.wait_all_tasks_blocked()
            assert receive.statistics().current_buffer_used == 100 - RECEIVE_CREDITS

            async def take(count: int) -> None:
                for _ in range(count):
                    await bridge.receive()

            await wait_task(loop.create_task(take(5)), cancel_grace=1)
            await trio.testing.wait_all_tasks_blocked()
            assert receive.statistics().current_buffer_used == 100 - RECEIVE_CREDITS - 5
