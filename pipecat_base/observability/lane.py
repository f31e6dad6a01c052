"""The structured log lane: ``$PCC_LOG_DIR/bot.jsonl``, one JSON object per line.

Only when ``PCC_LOG_DIR`` is set; without it nothing here runs and the console is unchanged.

A record::

    {"@timestamp":"2026-11-24T01:52:00.428117+00:00","stream":"app","level":"INFO",
     "session_id":"demo","line":"Starting bot session with metadata: ..."}

``stream`` is ``app`` for logger records (which alone carry ``level``), ``stdout`` or
``stderr`` for captured output (`capture`); ``session_id`` is omitted outside a session.
Non-ASCII is kept. Each record is one synchronous ``write()`` on an ``O_APPEND`` descriptor, so
the last words before ``os._exit`` or SIGKILL are on disk (a queued sink lost them in the
existing image). At 64 MB the file is rotated to ``bot.jsonl.1`` (one rotated file kept).

A record that cannot be serialised becomes a placeholder with its timestamp, session id and
level ``ERROR`` -- never dropped silently.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

FILE_NAME = "bot.jsonl"
ROTATE_BYTES = 64 * 1024 * 1024
PLACEHOLDER = "<pcc_structured_logs: serialization failed>"


def now_iso() -> str:
    return datetime.now().astimezone().isoformat()


def encode_record(record: dict[str, Any]) -> bytes:
    """One compact JSON line; a placeholder record if this one cannot be serialised."""
    try:
        return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    except (TypeError, ValueError, UnicodeEncodeError):
        placeholder = {"@timestamp": record.get("@timestamp") or now_iso(), "stream": "app",
                       "level": "ERROR", "line": PLACEHOLDER}  # fmt: skip
        session_id = record.get("session_id")
        if isinstance(session_id, str):
            placeholder["session_id"] = session_id.encode("utf-8", "replace").decode()
        return (json.dumps(placeholder, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


class JsonlFile:
    """``bot.jsonl``: synchronous appends, rotation at `ROTATE_BYTES`."""

    def __init__(self, directory: Path, rotate_bytes: int = ROTATE_BYTES) -> None:
        self.path = directory / FILE_NAME
        self._rotate_bytes = rotate_bytes
        self._lock = threading.Lock()
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def write(self, record: dict[str, Any]) -> None:
        data = encode_record(record)
        with self._lock:
            if self._size and self._size + len(data) > self._rotate_bytes:
                os.close(self._fd)
                os.replace(self.path, self.path.with_name(FILE_NAME + ".1"))
                self._fd = self._open()
                self._size = 0
            os.write(self._fd, data)
            self._size += len(data)

    def record(
        self,
        stream: str,
        line: str,
        *,
        session_id: str | None = None,
        level: str | None = None,
        timestamp: str | None = None,
    ) -> None:
        record: dict[str, Any] = {"@timestamp": timestamp or now_iso(), "stream": stream}
        if level is not None:
            record["level"] = level
        if session_id is not None:
            record["session_id"] = session_id
        record["line"] = line
        self.write(record)


# The session id of a record made outside any session (loguru's ``extra``).
NO_SESSION = "NONE"


def open_jsonl(log_dir: str) -> JsonlFile | None:
    """Create the directory and open the file; on failure one stderr line, and no lane."""
    try:
        directory = Path(log_dir)
        directory.mkdir(parents=True, exist_ok=True)
        return JsonlFile(directory)
    except OSError as exc:
        sys.stderr.write(f"pipecat-base: structured log lane off: cannot use {log_dir}: {exc}\n")
        return None
