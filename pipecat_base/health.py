"""``/readyz``: the server's own state first, then the bot module's optional ``readyz()``.

Order of precedence (first match answers):

1. draining → 503 ``{"status": "draining"}``
2. a bot ignored cancellation → 503 ``{"status": "degraded", "abandoned_sessions": [...]}``
3. ``MAX_SESSIONS`` reached → 503 ``{"status": "at capacity"}``
4. the bot's ``readyz()`` (sync, or async run on the asyncio loop), mapped as the existing
   image maps it; without one, 200 ``{"status": "ok"}``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import trio_asyncio
from loguru import logger

from .nursery import SessionSupervisor

Answer = tuple[dict[str, Any], int]


async def readiness(supervisor: SessionSupervisor, user_readyz: Callable[[], Any] | None) -> Answer:
    """The body and status code ``/readyz`` answers with."""
    if supervisor.draining:
        return {"status": "draining"}, 503
    if supervisor.abandoned_sessions:
        return {"status": "degraded", "abandoned_sessions": supervisor.abandoned_sessions}, 503
    if supervisor.at_capacity:
        return {"status": "at capacity"}, 503
    if user_readyz is None:
        return {"status": "ok"}, 200
    try:
        if inspect.iscoroutinefunction(user_readyz):
            # Async readyz is asyncio code (it may touch the bot's asyncio clients).
            result = await trio_asyncio.aio_as_trio(user_readyz)()
        else:
            result = user_readyz()
    except Exception as exc:
        logger.warning(f"Health check function raised exception: {exc}")
        return {"ready": False, "error": str(exc)}, 503
    return _map_result(result)


def _map_result(result: Any) -> Answer:
    if result is True:
        return {"status": "ok"}, 200
    if result is False:
        return {"status": "not ready"}, 503
    if isinstance(result, dict):
        return result, 200 if result.get("ready") else 503
    logger.warning(f"readyz() returned unexpected type: {type(result)}")
    return {"status": "error", "error": "invalid readyz return type"}, 503
