"""`app_inbox.AppInbox`: Hypercorn's reader-to-app channel, which a consumer can take over."""

from __future__ import annotations

import trio
import trio.testing

from pipecat_base._speedups.app_inbox import AppInbox

from .steps import counting_steps


def event(n: int) -> dict:
    return {"type": "websocket.receive", "text": str(n)}


async def test_events_reach_receive_in_order_and_a_put_with_room_does_not_yield():
    inbox = AppInbox(10)

    async def reader() -> None:
        for n in range(5):
            await inbox.put(event(n))

    with counting_steps(".reader") as steps:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
    # One step: its start. MemorySendChannel.send would yield once per event.
    assert steps.counts[".reader"] == 1
    assert [(await inbox.receive())["text"] for _ in range(5)] == ["0", "1", "2", "3", "4"]


async def test_a_put_is_a_cancellation_point_and_sends_nothing_when_cancelled():
    inbox = AppInbox(10)
    with trio.CancelScope() as scope:
        scope.cancel()
        await inbox.put(event(0))
    assert scope.cancelled_caught
    await inbox.put(event(1))
    assert (await inbox.receive())["text"] == "1"


async def test_divert_returns_what_is_queued_then_hands_later_events_to_the_sink():
    inbox = AppInbox(2)
    sunk: list[str] = []

    async def sink(e: dict) -> None:
        sunk.append(e["text"])

    async def reader() -> None:
        for n in range(6):
            await inbox.put(event(n))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()  # two queued, the reader waits with "2"
        queued = inbox.divert(sink)
    # The waiting reader's event is taken too, in order; the rest go to the sink.
    assert [e["text"] for e in queued] == ["0", "1", "2"]
    assert sunk == ["3", "4", "5"]


async def test_a_diverted_inbox_makes_no_channel_and_after_restore_events_go_to_receive():
    inbox = AppInbox(10)
    sunk: list[dict] = []

    async def sink(e: dict) -> None:
        sunk.append(e)

    assert inbox.divert(sink) == []
    await inbox.put(event(0))
    # An HTTP route diverts its inbox at once: a memory channel would cost it for nothing.
    assert inbox._channel is None
    inbox.restore()
    await inbox.put(event(1))
    assert [e["text"] for e in sunk] == ["0"]
    assert (await inbox.receive())["text"] == "1"


async def test_events_put_before_the_route_runs_make_no_channel_and_come_first_from_divert():
    inbox = AppInbox(2)
    sunk: list[str] = []

    async def sink(e: dict) -> None:
        sunk.append(e["text"])

    # A small body arrives with its request: Hypercorn's reader puts it before the route's task
    # has run.
    await inbox.put(event(0))
    assert inbox._channel is None
    queued = inbox.divert(sink)
    await inbox.put(event(1))
    assert [e["text"] for e in queued] == ["0"]
    assert sunk == ["1"]
    assert inbox._channel is None


async def test_events_put_before_a_channel_reach_receive_first_and_a_full_inbox_still_waits():
    inbox = AppInbox(2)
    put: list[int] = []

    async def reader() -> None:
        for n in range(4):
            await inbox.put(event(n))
            put.append(n)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert put == [0, 1]  # two fit; the third waits for room, as with a channel
        assert [(await inbox.receive())["text"] for _ in range(4)] == ["0", "1", "2", "3"]


async def test_a_discarded_inbox_drops_later_events_and_lets_go_of_the_sink():
    inbox = AppInbox(10)
    sunk: list[dict] = []

    async def sink(e: dict) -> None:
        sunk.append(e)

    inbox.divert(sink)
    inbox.discard()
    await inbox.put(event(0))
    assert sunk == []
    assert inbox._channel is None
    assert inbox._sink is not sink


def test_of_finds_the_inbox_behind_an_apps_receive_and_nothing_else():
    inbox = AppInbox(10)

    async def receive() -> dict:
        return {}

    assert AppInbox.of(inbox.receive) is inbox
    assert AppInbox.of(inbox.put) is None  # the inbox's, but not its receive
    assert AppInbox.of(receive) is None
