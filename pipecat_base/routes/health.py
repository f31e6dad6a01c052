"""``/readyz``: the server's own state first, then the bot module's optional ``readyz()``.

Order of precedence (first match answers):

1. draining → 503 ``{"status": "draining"}``
2. a bot ignored cancellation → 503 ``{"status": "degraded", "abandoned_sessions": [...]}``
3. ``MAX_SESSIONS`` reached → 503 ``{"status": "at capacity"}``
4. the bot's ``readyz()`` (sync, or async run on the asyncio loop), mapped as the existing
   image maps it; without one, 200 ``{"status": "ok"}``. An async ``readyz()`` that has not
   answered within `READYZ_TIMEOUT` counts as one that raised: the probe answers 503 in time
   instead of hanging with it (the cancellation reaches it through `bridge.loop.run_aio`).

Once the watchdog has seen the event loop blocked, the server's own answers (not a dict the
bot's ``readyz()`` returned, which is answered verbatim) also carry ``loop_stalls`` and
``longest_loop_stall_seconds``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import trio
from loguru import logger

from pipecat_base.bridge.loop import run_aio
from pipecat_base.nursery import SessionSupervisor
from pipecat_base.observability.watchdog import StallStats

# How long an async readyz() may take; orchestrators time their probes out after a few seconds.
READYZ_TIMEOUT = 5.0
# How long a readyz() cancelled at that bound may take to unwind.
READYZ_CANCEL_GRACE = 0.5

Answer = tuple[dict[str, Any], int]
_NO_ANSWER = object()


async def readiness(
    supervisor: SessionSupervisor,
    user_readyz: Callable[[], Any] | None,
    stalls: StallStats | None = None,
) -> Answer:
    """The body and status code ``/readyz`` answers with."""
    body, status, ours = await _readiness(supervisor, user_readyz)
    if ours and stalls is not None and stalls.count:
        body = {
            **body,
            "loop_stalls": stalls.count,
            "longest_loop_stall_seconds": round(stalls.longest, 3),
        }
    return body, status


async def _readiness(
    supervisor: SessionSupervisor, user_readyz: Callable[[], Any] | None
) -> tuple[dict[str, Any], int, bool]:
    if supervisor.draining:
        return {"status": "draining"}, 503, True
    if supervisor.abandoned_sessions:
        body = {"status": "degraded", "abandoned_sessions": supervisor.abandoned_sessions}
        return body, 503, True
    if supervisor.at_capacity:
        return {"status": "at capacity"}, 503, True
    if user_readyz is None:
        return {"status": "ok"}, 200, True
    try:
        if inspect.iscoroutinefunction(user_readyz):
            # Async readyz is asyncio code (it may touch the bot's asyncio clients).
            result: Any = _NO_ANSWER
            with trio.move_on_after(READYZ_TIMEOUT):
                result = await run_aio(
                    supervisor.loop, user_readyz, cancel_grace=READYZ_CANCEL_GRACE
                )
            if result is _NO_ANSWER:
                raise TimeoutError(f"readyz() did not answer within {READYZ_TIMEOUT:g}s")
        else:
            result = user_readyz()
    except Exception as exc:
        logger.warning(f"Health check function raised exception: {exc}")
        return {"ready": False, "error": str(exc)}, 503, True
    return _map_result(result)


def _map_result(result: Any) -> tuple[dict[str, Any], int, bool]:
    if result is True:
        return {"status": "ok"}, 200, True
    if result is False:
        return {"status": "not ready"}, 503, True
    if isinstance(result, dict):
        return result, 200 if result.get("ready") else 503, False
    logger.warning(f"readyz() returned unexpected type: {type(result)}")
    return {"status": "error", "error": "invalid readyz return type"}, 503, True
