"""`checkpoints`: a free lock or a channel with room costs no scheduling round, but the call
stays a cancellation point and still waits when it must."""

from __future__ import annotations

import pytest
import trio

from pipecat_base._speedups import checkpoints

from .steps import counting_steps


async def _yielded(action) -> bool:
    """Whether awaiting ``action()`` gave the scheduler a round (this task took a new step)."""
    this = trio.lowlevel.current_task().name
    with counting_steps(this) as steps:
        await action()
    return steps.counts[this] > 0


async def test_stock_acquire_and_send_yield_even_when_nothing_waits():
    # What the module avoids (if trio stops doing this, the module is no longer needed).
    send, _receive = trio.open_memory_channel[int](1)
    assert await _yielded(trio.Lock().acquire)
    assert await _yielded(lambda: send.send(1))


async def test_acquire_takes_a_free_lock_or_semaphore_without_a_round():
    lock, semaphore = trio.Lock(), trio.Semaphore(1)
    assert not await _yielded(lambda: checkpoints.acquire(lock))
    assert not await _yielded(lambda: checkpoints.acquire(semaphore))
    assert lock.locked()
    assert semaphore.value == 0


async def test_acquire_waits_for_a_held_lock(autojump_clock):
    lock = trio.Lock()

    async def hold_for_a_second(task_status: trio.TaskStatus[None]) -> None:
        async with lock:
            task_status.started()
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        await nursery.start(hold_for_a_second)
        start = trio.current_time()
        await checkpoints.acquire(lock)
        assert trio.current_time() - start == 1
        assert lock.statistics().owner is trio.lowlevel.current_task()


async def test_acquire_is_a_cancellation_point_and_takes_nothing_when_cancelled():
    lock = trio.Lock()
    with trio.CancelScope() as scope:
        scope.cancel()
        await checkpoints.acquire(lock)
    assert scope.cancelled_caught
    assert not lock.locked()


async def test_send_puts_without_a_round_when_there_is_room():
    send, receive = trio.open_memory_channel[int](1)
    assert not await _yielded(lambda: checkpoints.send(send, 7))
    assert receive.receive_nowait() == 7


async def test_send_waits_while_the_channel_is_full(autojump_clock):
    send, receive = trio.open_memory_channel[int](1)
    send.send_nowait(1)

    async def take_later() -> None:
        await trio.sleep(2)
        assert receive.receive_nowait() == 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take_later)
        start = trio.current_time()
        await checkpoints.send(send, 2)
        assert trio.current_time() - start == 2
    assert receive.receive_nowait() == 2


async def test_send_is_a_cancellation_point_and_sends_nothing_when_cancelled():
    send, receive = trio.open_memory_channel[int](1)
    with trio.CancelScope() as scope:
        scope.cancel()
        await checkpoints.send(send, 1)
    assert scope.cancelled_caught
    with pytest.raises(trio.WouldBlock):
        receive.receive_nowait()
