"""The argument objects ``bot(args)`` receives.

pipecatcloud's types (``pipecatcloud.agent``) are used when they import, so pipecat's
``create_transport`` and ``isinstance`` checks accept them. Without pipecat-ai (Python 3.10, or
an image that does not ship it) same-shaped dataclasses stand in, so plain asyncio bots still
run. Either way ``body``, ``session_id``, ``flow_config`` and ``handle_sigint``/
``handle_sigterm`` (False: the server owns signals) are always readable.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _FallbackArguments:
    session_id: str | None
    body: Any = field(default_factory=dict, kw_only=True)
    handle_sigint: bool = field(default=False, kw_only=True)
    handle_sigterm: bool = field(default=False, kw_only=True)
    pipeline_idle_timeout_secs: float | None = field(default=300, kw_only=True)


@dataclass
class FallbackPipecatSessionArguments(_FallbackArguments):
    """Stand-in for ``pipecatcloud.agent.PipecatSessionArguments`` (no transport)."""


@dataclass
class FallbackDailySessionArguments(_FallbackArguments):
    """Stand-in for ``pipecatcloud.agent.DailySessionArguments``."""

    room_url: str = field(default="", kw_only=True)
    token: str | None = field(default=None, kw_only=True)


@dataclass
class FallbackWebSocketSessionArguments(_FallbackArguments):
    """Stand-in for ``pipecatcloud.agent.WebSocketSessionArguments``."""

    websocket: Any = field(default=None, kw_only=True)
    # "websocket" for a plain WebSocket session (pipecat's WebSocketRunnerArguments field).
    transport_type: str | None = field(default=None, kw_only=True)


def preload() -> str:
    """Import the session types now; returns which family is in use (for the startup log).

    Call before configuring logging: importing pipecat and pipecatcloud reconfigures loguru
    (pipecatcloud adds its own stderr sink), which must happen before we take loguru over.
    """
    pipecat_cls = _session_types()[0]
    return pipecat_cls.__module__


@functools.cache
def _session_types() -> tuple[type, type, type]:
    try:
        from pipecatcloud.agent import (
            DailySessionArguments,
            PipecatSessionArguments,
            WebSocketSessionArguments,
        )
    except ImportError:
        return (
            FallbackPipecatSessionArguments,
            FallbackDailySessionArguments,
            FallbackWebSocketSessionArguments,
        )
    return PipecatSessionArguments, DailySessionArguments, WebSocketSessionArguments


def build(cls: type, *, body: Any, **fields: Any) -> Any:
    # Older session types did not take `body` in their constructor; setting it afterwards keeps
    # `args.body` readable on every version (the existing image learnt this the hard way).
    init_fields = {f.name for f in dataclasses.fields(cls) if f.init}
    if "body" in init_fields:
        args = cls(body=body, **fields)
    else:
        args = cls(**fields)
        args.body = body
    args.handle_sigint = False
    args.handle_sigterm = False
    args.flow_config = None
    return args


def http_session_args(
    session_id: str | None, body: Any, *, room_url: str | None, token: str | None
) -> Any:
    """Arguments for a ``POST /bot`` session: Daily when room URL and token are both given."""
    pipecat_cls, daily_cls, _ = _session_types()
    if room_url and token:
        return build(daily_cls, body=body, session_id=session_id, room_url=room_url, token=token)
    return build(pipecat_cls, body=body, session_id=session_id)


def websocket_session_args(session_id: str | None, body: Any, websocket: Any) -> Any:
    """Arguments for a ``WS /ws`` session, carrying a Starlette WebSocket."""
    _, _, ws_cls = _session_types()
    return build(ws_cls, body=body, session_id=session_id, websocket=websocket)


@functools.cache
def webrtc_session_type() -> type | None:
    """``pipecatcloud.agent.SmallWebRTCSessionArguments``, or None where it does not import.

    There is no stand-in: a SmallWebRTC session needs pipecat's connection anyway.
    """
    try:
        from pipecatcloud.agent import SmallWebRTCSessionArguments
    except ImportError:
        return None
    return SmallWebRTCSessionArguments


def webrtc_session_args(session_id: str | None, body: Any, connection: Any) -> Any:
    """Arguments for a SmallWebRTC session, carrying pipecat's ``SmallWebRTCConnection``."""
    cls = webrtc_session_type()
    if cls is None:
        raise RuntimeError(
            "SmallWebRTC sessions need pipecatcloud.agent.SmallWebRTCSessionArguments"
        )
    return build(cls, body=body, session_id=session_id, webrtc_connection=connection)


def moq_session_type() -> type | None:
    """``pipecatcloud.agent.MOQSessionArguments``, or None where it does not import."""
    try:
        from pipecatcloud.agent import MOQSessionArguments
    except ImportError:
        return None
    return MOQSessionArguments
