"""Console logging: one loguru sink, the session id on every record, probes kept out.

`configure_logging` runs after the bot module is imported (a bot may reconfigure loguru at
import; we take over afterwards, as the existing image does). `session_context` binds the
session id through a context variable, so everything logged inside a session, on the trio side
and on the asyncio side (asyncio tasks copy the context they are created in), carries it.
Every sink writes the formatted record, traceback included, through `redaction.Secrets.scrub`:
no running session's token or relay URL reaches a line. Stdlib ``logging`` (a bot's, its
libraries') is routed into loguru, so it gets the format, the session id and the scrubbing too.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TextIO

from loguru import logger

from pipecat_base.observability.lane import NO_SESSION, JsonlFile
from pipecat_base.observability.redaction import SECRETS, Secrets

CONSOLE_FORMAT = (
    "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {name}:{function}:{line} | "
    "{extra[session_id]} - {message}"
)
PROBE_PATHS = ("/livez", "/readyz", "/metrics")


# C0 and C1 control characters and DEL (`printable`).
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def configure_logging(
    level: str,
    sink: TextIO | None = None,
    jsonl: JsonlFile | None = None,
    secrets: Secrets = SECRETS,
) -> None:
    """Replace every loguru sink with the console sink and route stdlib logging into it.

    Args:
        level: ``PIPECAT_LOG_LEVEL``.
        sink: Where the console goes (the real stderr; with the lane on, past the capture).
        jsonl: The structured lane, which then gets every record as an ``app`` record.
        secrets: What no sink may write (`redaction`).
    """
    logger.remove()
    logger.configure(extra={"session_id": NO_SESSION})
    # diagnose=False: tracebacks without the values of local variables, which hold tokens.
    console = _scrubbing_stream(sink or sys.stderr, secrets)
    logger.add(console, format=CONSOLE_FORMAT, level=level, backtrace=False, diagnose=False)
    if jsonl is not None:
        lane = _lane_sink(jsonl, secrets)
        logger.add(lane, format="{message}\n{exception}", level=level, diagnose=False)
    for name in ("hypercorn.error", "hypercorn.access"):
        std = logging.getLogger(name)
        std.handlers[:] = [_ToLoguru()]
        std.setLevel(logging.INFO)
        std.propagate = False
    logging.getLogger("hypercorn.access").addFilter(_drop_probes)
    # Everything else logged through stdlib logging: the standard intercept handler on the
    # root logger (its level stays the bot's to set; WARNING unless it does).
    root = logging.getLogger()
    root.handlers[:] = [handler for handler in root.handlers if isinstance(handler, _ToLoguru)]
    if not root.handlers:
        root.addHandler(_ToLoguru())


def session_context(session_id: str | None) -> AbstractContextManager[None]:
    """Bind ``session_id`` to every record logged in this context (trio and asyncio alike);
    its control characters escaped (`printable`: it comes from a request header)."""
    return logger.contextualize(session_id=printable(session_id) if session_id else NO_SESSION)


def printable(text: str) -> str:
    """``text`` with each control character written as an escape (``\\x1b``): for request
    values on their way into a log line, which they could otherwise rewrite or forge."""
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _scrubbing_stream(stream: TextIO, secrets: Secrets) -> Callable[[Any], None]:
    def write(message: Any) -> None:
        stream.write(secrets.scrub(message))
        stream.flush()

    return write


def _lane_sink(jsonl: JsonlFile, secrets: Secrets) -> Callable[[Any], None]:
    def write(message: Any) -> None:
        record = message.record
        session_id = record["extra"].get("session_id")
        jsonl.record(
            "app",
            secrets.scrub(str(message)).rstrip("\n"),
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
    """Forward a stdlib record (Hypercorn's, a bot's) to loguru, keeping its level and origin."""

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
