"""Which session every asyncio task belongs to, and taking back what a session left behind.

A context variable names the session's `SessionTasks`; the supervisor sets it where it creates
the bot's task, and asyncio tasks copy the context they are created in, so every task the bot
creates -- directly, or through pipecat and the SDKs it calls, at any depth -- carries it. A
task factory on the process' loop reads the variable and records the task with its session.
Tasks created elsewhere (Session-API routes, the server itself) belong to no session.

When a session ends, its still-pending tasks are cancelled, given a bounded grace, and any
survivor is abandoned (unregistered, so the loop's exit does not wait on it). The supervisor
logs one WARNING per session naming them.

A bot (pipecat does, for its task manager) may set its own task factory: the loop keeps ours
installed and chains to theirs; ``loop.get_task_factory()`` answers with theirs.
"""

from __future__ import annotations

import asyncio
import contextvars
import types
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import trio

from pipecat_base.bridge.loop import forget_task

TaskFactory = Callable[..., "asyncio.Task[Any]"]

_OWNER: contextvars.ContextVar[SessionTasks | None] = contextvars.ContextVar(
    "pipecat_base_session_tasks", default=None
)


class SessionTasks:
    """The asyncio tasks created on behalf of one session."""

    def __init__(self, session_id: str | None) -> None:
        self.session_id = session_id
        self._tasks: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()

    def add(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)

    def pending(self, *, exclude: asyncio.Task[Any] | None = None) -> list[asyncio.Task[Any]]:
        """Tasks of this session that have not finished."""
        return [t for t in list(self._tasks) if not t.done() and t is not exclude]

    @contextmanager
    def owning(self) -> Iterator[None]:
        """Tasks created in this block (and, through context copies, by them) are ours."""
        token = _OWNER.set(self)
        try:
            yield
        finally:
            _OWNER.reset(token)


def current_session_id() -> str | None:
    """The session whose code is running here (asyncio task, or a thread it started)."""
    owner = _OWNER.get()
    return owner.session_id if owner is not None else None


def owner_of(task: asyncio.Task[Any]) -> SessionTasks | None:
    """The session a task belongs to (None: created outside any session)."""
    owners = getattr(task.get_loop(), "_pipecat_base_task_owners", None)
    return owners.get(task) if owners is not None else None


def install_task_factory(loop: asyncio.AbstractEventLoop) -> None:
    """Record every task created on ``loop`` with its session; chain to a bot's own factory.

    Idempotent: a loop that already has it is left alone.
    """
    if hasattr(loop, "_pipecat_base_task_owners"):
        return
    # Task -> session, per loop and weak: a task's context is not readable on Python < 3.12.
    owners: weakref.WeakKeyDictionary[asyncio.Task[Any], SessionTasks] = weakref.WeakKeyDictionary()
    loop._pipecat_base_task_owners = owners  # type: ignore[attr-defined]
    user_factory: Any = loop.get_task_factory()
    original_set = loop.set_task_factory

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        if user_factory is not None:
            task = user_factory(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        context = kwargs.get("context")
        owner = context.get(_OWNER) if context is not None else _OWNER.get()
        if owner is not None:
            owner.add(task)
            owners[task] = owner
        return task

    def set_task_factory(self: asyncio.AbstractEventLoop, new: TaskFactory | None) -> None:
        nonlocal user_factory
        if new is not None and not callable(new):
            raise TypeError("task factory must be a callable or None")
        user_factory = new

    def get_task_factory(self: asyncio.AbstractEventLoop) -> TaskFactory | None:
        return user_factory

    original_set(factory)
    loop.set_task_factory = types.MethodType(set_task_factory, loop)  # type: ignore[method-assign]
    loop.get_task_factory = types.MethodType(get_task_factory, loop)  # type: ignore[method-assign]


@dataclass(frozen=True)
class Reaped:
    """What became of a session's leftover tasks."""

    cancelled: list[str]
    abandoned: list[str]


def describe(task: asyncio.Task[Any]) -> str:
    """``name (coroutine qualname)`` for logs."""
    coro = task.get_coro()
    qualname = getattr(coro, "__qualname__", None) or type(coro).__name__
    return f"{task.get_name()} ({qualname})"


async def reap(tasks: list[asyncio.Task[Any]], *, grace: float) -> Reaped:
    """Cancel ``tasks``, wait up to ``grace`` seconds for them, abandon the survivors.

    Shielded by the caller; bounded by ``grace``.
    """
    if not tasks:
        return Reaped([], [])
    names = {task: describe(task) for task in tasks}
    remaining = set(tasks)
    all_done = trio.Event()

    def finished(task: asyncio.Task[Any]) -> None:
        remaining.discard(task)
        if not remaining:
            all_done.set()

    for task in tasks:
        task.cancel()
        task.add_done_callback(finished)
    with trio.move_on_after(grace):
        await all_done.wait()
    survivors = [t for t in tasks if not t.done()]
    for task in survivors:
        task.remove_done_callback(finished)
        forget_task(task)
    return Reaped(
        cancelled=[names[t] for t in tasks if t.done()],
        abandoned=[names[t] for t in survivors],
    )
