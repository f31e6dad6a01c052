"""`asgi_bridge`'s inbound side: one Trio step per event through the pump, none of its own
through a diverted `AppInbox`, and reading bounded by credits either way."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pipecat_base._speedups.app_inbox import AppInbox
from pipecat_base.bridge.asgi import RECEIVE_CREDITS, open_asgi_bridge
from pipecat_base.bridge.loop import open_bridge_loop, wait_task

from .steps import counting_steps


async def _no_send(message: dict) -> None:
    raise AssertionError(f"nothing is sent here: {message}")


def _event(n: int) -> dict:
    return {"type": "websocket.receive", "text": str(n)}


async def _take(loop, bridge, count: int) -> list[str]:
    """The texts of the next ``count`` events the asyncio side receives."""

    async def take() -> list[str]:
        return [(await bridge.receive())["text"] for _ in range(count)]

    task = loop.create_task(take())
    await wait_task(task, cancel_grace=1)
    return task.result()


class _Reader:
    """Hypercorn's reader task, as the inbox sees it: puts events, counting those handed over."""

    def __init__(self, inbox: AppInbox, numbers: range) -> None:
        self.inbox = inbox
        self.numbers = numbers
        self.delivered = 0

    async def run(self) -> None:
        for n in self.numbers:
            await self.inbox.put(_event(n))
            self.delivered += 1


@pytest.mark.usefixtures("all_speedups")
async def test_the_inbound_pump_takes_one_step_per_event():
    events = 20
    send, receive = trio.open_memory_channel[dict](events)
    for n in range(events):
        send.send_nowait(_event(n))
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
        send.send_nowait(_event(n))
    async with open_bridge_loop() as loop:
        async with open_asgi_bridge(loop, receive.receive, _no_send) as bridge:
            await trio.testing.wait_all_tasks_blocked()
            assert receive.statistics().current_buffer_used == 100 - RECEIVE_CREDITS
            assert await _take(loop, bridge, 5) == [str(n) for n in range(5)]
            await trio.testing.wait_all_tasks_blocked()
            assert receive.statistics().current_buffer_used == 100 - RECEIVE_CREDITS - 5


@pytest.mark.usefixtures("all_speedups")
async def test_a_diverted_inbox_delivers_from_the_reader_in_order_without_a_pump():
    inbox = AppInbox(10)
    for n in range(3):  # arrived before the bridge: they come first
        await inbox.put(_event(n))
    async with open_bridge_loop() as loop:
        with counting_steps("._pump_in", ".reader") as steps:
            async with open_asgi_bridge(loop, inbox.receive, _no_send) as bridge:

                async def reader() -> None:
                    for n in range(3, 20):
                        await inbox.put(_event(n))
                    await inbox.put({"type": "websocket.disconnect", "code": 1000})

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reader)
                assert bridge.disconnected.is_set()
                assert await _take(loop, bridge, 20) == [str(n) for n in range(20)]
    assert steps.counts["._pump_in"] == 0
    # The reader delivers all 18 events in its first step: with credits free, nothing yields.
    assert steps.counts[".reader"] == 1


@pytest.mark.usefixtures("all_speedups")
async def test_a_diverted_reader_waits_at_the_credits_until_the_asyncio_side_takes_events():
    inbox = AppInbox(10)
    reader = _Reader(inbox, range(100))
    async with open_bridge_loop() as loop:
        async with open_asgi_bridge(loop, inbox.receive, _no_send) as bridge:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader.run)
                await trio.testing.wait_all_tasks_blocked()
                assert reader.delivered == RECEIVE_CREDITS
                assert await _take(loop, bridge, 5) == [str(n) for n in range(5)]
                await trio.testing.wait_all_tasks_blocked()
                assert reader.delivered == RECEIVE_CREDITS + 5
                nursery.cancel_scope.cancel()


@pytest.mark.usefixtures("all_speedups")
async def test_a_reader_waiting_when_the_bridge_ends_hands_its_event_back_to_the_inbox(
    autojump_clock,
):
    inbox = AppInbox(10)
    async with open_bridge_loop() as loop:
        # A reader left waiting would hold the nursery open: fail (in virtual time), not hang.
        with trio.fail_after(1):
            async with trio.open_nursery() as nursery:
                async with open_asgi_bridge(loop, inbox.receive, _no_send):
                    reader = _Reader(inbox, range(RECEIVE_CREDITS + 2))
                    nursery.start_soon(reader.run)
                    await trio.testing.wait_all_tasks_blocked()  # waits with event 32
                    assert reader.delivered == RECEIVE_CREDITS
                # The bridge ended: the waiting event and the next go where the app reads.
    assert (await inbox.receive())["text"] == str(RECEIVE_CREDITS)
    assert (await inbox.receive())["text"] == str(RECEIVE_CREDITS + 1)
    assert reader.delivered == RECEIVE_CREDITS + 2


@pytest.mark.usefixtures("all_speedups")
async def test_events_queued_past_the_credits_when_diverted_are_repaid_before_credits_return():
    inbox = AppInbox(RECEIVE_CREDITS + 8)
    for n in range(RECEIVE_CREDITS + 8):
        await inbox.put(_event(n))
    reader = _Reader(inbox, range(RECEIVE_CREDITS + 8, 200))
    async with open_bridge_loop() as loop:
        async with open_asgi_bridge(loop, inbox.receive, _no_send) as bridge:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader.run)
                await trio.testing.wait_all_tasks_blocked()
                assert reader.delivered == 0  # 40 queued against 32 credits
                await _take(loop, bridge, 8)  # repays the 8 taken without a credit
                await trio.testing.wait_all_tasks_blocked()
                assert reader.delivered == 0
                await _take(loop, bridge, 3)
                await trio.testing.wait_all_tasks_blocked()
                assert reader.delivered == 3
                nursery.cancel_scope.cancel()


async def test_received_frames_have_uvicorns_shape_only_the_key_that_carries_data():
    """Hypercorn adds ``"text": None`` beside ``bytes`` (and the reverse); uvicorn, which the
    existing image runs, leaves the other key out, and Starlette's receive_text/receive_bytes
    behave by that."""
    frames = [
        {"type": "websocket.receive", "bytes": b"\x01\x02", "text": None},
        {"type": "websocket.receive", "bytes": None, "text": "hello"},
        {"type": "websocket.disconnect", "code": 1000},
    ]
    send, receive = trio.open_memory_channel[dict](len(frames))
    for frame in frames:
        send.send_nowait(dict(frame))
    async with open_bridge_loop() as loop:
        async with open_asgi_bridge(loop, receive.receive, _no_send) as bridge:

            async def read_all() -> list[dict]:
                return [dict(await bridge.receive()) for _ in frames]

            task = loop.create_task(read_all())
            await wait_task(task, cancel_grace=1)
    assert task.result() == [
        {"type": "websocket.receive", "bytes": b"\x01\x02"},
        {"type": "websocket.receive", "text": "hello"},
        {"type": "websocket.disconnect", "code": 1000},
    ]
