"""Take a free lock or put into a channel with room, without a scheduling round.

``trio.Lock.acquire``, ``trio.Semaphore.acquire`` and ``MemorySendChannel.send`` end with a
checkpoint that yields to the scheduler even when nothing has to wait: a fairness round, so a
task looping on them cannot starve others. On the media path every frame takes several (the
bridge's receive credits, Hypercorn's send lock, Hypercorn handing a frame to the app), and
each costs a whole Trio task step. Where the caller reaches a real yield anyway before it
could loop back (a socket read or send, a channel receive), that round buys no fairness, so
these keep the cancellation check and skip the round.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

import trio

T = TypeVar("T")


class Acquirable(Protocol):
    def acquire_nowait(self) -> None: ...

    async def acquire(self) -> None: ...


async def acquire(primitive: Acquirable) -> None:
    """Like ``await primitive.acquire()``, minus the fairness round when it is free.

    Still a cancellation point: a cancelled caller gets ``Cancelled`` and takes nothing. Use it
    only where the caller yields again before it could loop back here.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        primitive.acquire_nowait()
    except trio.WouldBlock:
        await primitive.acquire()


async def send(channel: trio.MemorySendChannel[T], value: T) -> None:
    """Like ``await channel.send(value)``, minus the fairness round when there is room.

    Still a cancellation point (a cancelled caller sends nothing); waits when the channel is
    full, as ``send`` does. Use it only where the caller yields again before sending more.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        channel.send_nowait(value)
    except trio.WouldBlock:
        await channel.send(value)
