"""Console logging: one loguru sink, the session id on every record, probes kept out.

`configure_logging` runs after the bot module is imported (a bot may reconfigure loguru at
import; we take over afterwards, as the existing image does). `session_context` binds the
session id through a context variable, so everything logged inside a session, on the trio side
and on the asyncio side (asyncio tasks copy the context they are created in), carries it.
`redacting` works the same way for a session's secrets (a MoQ relay URL): every sink writes the
formatted record, traceback included, through the session's redaction.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import Any, TextIO

from loguru import logger

from pipecat_base.observability.lane import NO_SESSION, JsonlFile

CONSOLE_FORMAT = (
    "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {name}:{function}:{line} | "
    "{extra[session_id]} - {message}"
)
PROBE_PATHS = ("/livez", "/readyz", "/metrics")

Redaction = Callable[[str], str]
_REDACTION: ContextVar[Redaction | None] = ContextVar("pipecat_base_redaction", default=None)


def configure_logging(
    level: str, sink: TextIO | None = None, jsonl: JsonlFile | None = None
) -> None:
    """Replace every loguru sink with the console sink and route stdlib logging into it.

    Args:
        level: ``PIPECAT_LOG_LEVEL``.
        sink: Where the console goes (the real stderr; with the lane on, past the capture).
        jsonl: The structured lane, which then gets every record as an ``app`` record.
    """
    logger.remove()
    logger.configure(extra={"session_id": NO_SESSION})
    # diagnose=False: tracebacks without the values of local variables, which hold tokens.
    console = _redacting_stream(sink or sys.stderr)
    logger.add(console, format=CONSOLE_FORMAT, level=level, backtrace=False, diagnose=False)
    if jsonl is not None:
        logger.add(_lane_sink(jsonl), format="{message}\n{exception}", level=level, diagnose=False)
    for name in ("hypercorn.error", "hypercorn.access"):
        std = logging.getLogger(name)
        std.handlers[:] = [_ToLoguru()]
        std.setLevel(logging.INFO)
        std.propagate = False
    logging.getLogger("hypercorn.access").addFilter(_drop_probes)


def session_context(session_id: str | None) -> AbstractContextManager[None]:
    """Bind ``session_id`` to every record logged in this context (trio and asyncio alike)."""
    return logger.contextualize(session_id=session_id or NO_SESSION)


@contextmanager
def redacting(redaction: Redaction | None) -> Iterator[None]:
    """Pass every record logged in this context (trio and asyncio alike) through
    ``redaction`` before any sink writes it; None redacts nothing."""
    if redaction is None:
        yield
        return
    token = _REDACTION.set(redaction)
    try:
        yield
    finally:
        _REDACTION.reset(token)


def redacted(text: str) -> str:
    """``text`` through the current context's redaction (sinks of our own call this)."""
    redaction = _REDACTION.get()
    return text if redaction is None else redaction(text)


def _redacting_stream(stream: TextIO) -> Callable[[Any], None]:
    def write(message: Any) -> None:
        stream.write(redacted(message))
        stream.flush()

    return write


def _lane_sink(jsonl: JsonlFile) -> Callable[[Any], None]:
    def write(message: Any) -> None:
        record = message.record
        session_id = record["extra"].get("session_id")
        jsonl.record(
            "app",
            redacted(str(message)).rstrip("\n"),
            session_id=None if session_id in (None, NO_SESSION) else str(session_id),
            level=record["level"].name,
            timestamp=record["time"].isoformat(),
        )

    return write


def _drop_probes(record: logging.LogRecord) -> bool:
    # Health probes arrive every few seconds; they drowned the access log in the existing image.
    message = record.getMessage()
    return not any(path in message for path in PROBE_PATHS)


class _ToLoguru(logging.Handler):
    """Forward a stdlib record (Hypercorn's) to loguru, keeping its level and origin."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.patch(
            lambda r: r.update(
                {"name": record.name, "function": record.funcName, "line": record.lineno}
            )
        ).opt(exception=record.exc_info).log(level, record.getMessage())
