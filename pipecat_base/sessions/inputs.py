"""Parsing what the platform sends: its headers, the session budget header and JSON bodies.

Each parser either returns a value or says, in words a caller can act on, what was wrong.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterable
from typing import Any

from loguru import logger

SESSION_ID_HEADER = "X-Daily-Session-Id"
ROOM_URL_HEADER = "X-Daily-Room-Url"
ROOM_TOKEN_HEADER = "X-Daily-Room-Token"
TRANSPORT_TYPE_HEADER = "X-Daily-Transport-Type"
BUDGET_HEADER = "X-PCC-Max-Session-Seconds"
# `/ws`'s query parameter that marks a plain WebSocket session, as the header does:
# ``?transport=websocket``.
TRANSPORT_QUERY = "transport"
PLAIN_WEBSOCKET = "websocket"
# Session ids are UUIDs (36 characters); a longer one is refused rather than repeated in every
# log line of its session.
MAX_SESSION_ID_LENGTH = 256
# A budget is a plain decimal number of seconds ("30", "7.5"); float() would also take "1_0",
# "1e3" or "  30\n".
_PLAIN_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


class HeaderLookup(dict[str, str]):
    """A request's headers by case-insensitive name (the first value of each), read once.

    For a route that looks up many headers, most of them absent: werkzeug's ``Headers.get``
    scans every header per lookup and builds a ``BadRequestKeyError`` for each one missing.
    """

    def __init__(self, headers: Iterable[tuple[str, str]]) -> None:
        super().__init__()
        for name, value in headers:
            self.setdefault(name.lower(), value)

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


class BadInput(ValueError):
    """The request cannot start a session; `str()` is the message for the 4xx body."""


def parse_budget(raw: str | None) -> float | None:
    """Parse ``X-PCC-Max-Session-Seconds``: a finite number of seconds greater than zero.

    Absent means no budget. A malformed, non-finite or non-positive value is ignored with one
    WARNING naming the raw value: refusing the session would lose a call over a header the
    platform owns, and running it unbounded is what the platform gets without the header.
    """
    if raw is None:
        return None
    try:
        budget = float(raw)
    except ValueError:
        logger.warning(f"Ignoring malformed {BUDGET_HEADER}: {raw!r}")
        return None
    if not math.isfinite(budget):
        logger.warning(f"Ignoring non-finite {BUDGET_HEADER}: {raw!r}")
        return None
    if budget <= 0:
        logger.warning(f"Ignoring non-positive {BUDGET_HEADER}: {raw!r}")
        return None
    if not _PLAIN_DECIMAL.fullmatch(raw):
        # float() also takes "1_0", "1e3" and surrounding spaces: only "30" or "7.5" here.
        logger.warning(f"Ignoring malformed {BUDGET_HEADER}: {raw!r}")
        return None
    return budget


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a request body that must be a JSON object.

    Raises:
        BadInput: empty body, invalid UTF-8 or JSON, or JSON that is not an object.
    """
    if not raw.strip():
        raise BadInput("request body is empty: send a JSON object (for example {})")
    try:
        value = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise BadInput(
            f"request body is not UTF-8 text: {exc.reason} at byte {exc.start}"
        ) from None
    except json.JSONDecodeError as exc:
        raise BadInput(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise BadInput(
            f"request body is JSON this server does not take: {json_limit(exc)}"
        ) from None
    if not isinstance(value, dict):
        raise BadInput(f"request body must be a JSON object, got a JSON {_json_kind(value)}")
    return value


def json_limit(exc: ValueError | RecursionError) -> str:
    """What of a JSON document Python's parser refused beyond its syntax: a number too long,
    nesting too deep."""
    if isinstance(exc, RecursionError):
        return "it is nested too deeply"
    return str(exc).split(";")[0]


def session_id_problem(session_id: str | None) -> str | None:
    """Why ``X-Daily-Session-Id`` cannot name a session, or None."""
    if session_id is not None and len(session_id) > MAX_SESSION_ID_LENGTH:
        return f"{SESSION_ID_HEADER} is longer than {MAX_SESSION_ID_LENGTH} characters"
    return None


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def declares_plain_websocket(header: str | None, query: str | None) -> bool:
    """``X-Daily-Transport-Type: websocket`` on the upgrade, or ``?transport=websocket``: the
    session is a plain WebSocket one (pipecat's ``transport_type = "websocket"``), not
    telephony whose provider pipecat detects from its first messages."""
    return any(
        value is not None and value.strip().lower() == PLAIN_WEBSOCKET for value in (header, query)
    )


def decode_ws_body(raw: str | None) -> Any:
    """Decode ``/ws``'s ``body`` query parameter: base64 of UTF-8 JSON; absent → None.

    A value that does not decode logs one ERROR naming the step that failed and returns None:
    the call is already connected, and running it without its body loses less than refusing.
    Spaces (a ``+`` that went through form decoding), the URL-safe alphabet and missing padding
    are accepted.
    """
    if raw is None:
        return None
    step = "base64"
    try:
        text = raw.strip().replace(" ", "+")
        data = base64.b64decode(
            text + "=" * (-len(text) % 4),
            altchars=b"-_" if "-" in text or "_" in text else None,
            validate=True,
        )
        step = "UTF-8"
        decoded = data.decode("utf-8")
        step = "JSON"
        return json.loads(decoded)
    except (binascii.Error, ValueError) as exc:
        logger.error(f"Failed to decode body parameter ({step} step): {exc}")
        return None
    except RecursionError:
        logger.error(f"Failed to decode body parameter ({step} step): it is nested too deeply")
        return None
