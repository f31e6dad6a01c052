"""Capturing stdout and stderr into the structured lane, without changing what the console shows.

Installed before the bot module is imported (bots print at import), only when the lane is on.
Two paths, because they fail differently:

* **Python-level writes** (``print``, ``sys.stderr.write``, logging handlers) go through a
  `TeeStream` that replaces ``sys.stdout``/``sys.stderr``: it writes the bytes to the real
  descriptor and the complete lines to the lane *synchronously*, so a print right before
  ``os._exit`` is on disk; and it reads the writer's context, so a print from a session's code
  is attributed to that session even when several run.
* **Native writes** to file descriptors 1 and 2 (C extensions, child processes) reach a pipe
  that `FdCapture` installed with ``dup2``; a pump thread passes the bytes on to the real
  descriptor unchanged and records the lines, attributed by `attribution.Attribution`.

The console sink writes to the real stderr (`Capture.console`), never into a captured
descriptor: the existing image once fed its own output back into the capture, 43 MB in 50 ms.

**Before logging is configured** (pipecat's import banner, a bot's import-time ``logger`` lines,
pipecatcloud's own sink), loguru writes to ``sys.stderr`` -- the tee, provided loguru is first
imported after `install` (the CLI keeps it so, and a test checks it). The tee recognises a
loguru message (it carries its ``record``) and writes it to the lane as an ``app`` record with
its level, as every later record is; `Capture.app_line` does the same for the lines the server
writes itself before logging is up (the early-SIGTERM warning, a refusal).
"""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from pipecat_base.observability.attribution import Attribution
from pipecat_base.observability.lane import NO_SESSION, JsonlFile
from pipecat_base.observability.redaction import SECRETS, Secrets

MAX_LINE = 16 * 1024
# How long the pump threads get to pass on what native code wrote just before a hard exit.
PUMP_BEAT = 0.05
TRUNCATED = " ...[truncated]"


class LineAssembler:
    """Bytes in, complete text lines out: ``\\n`` ends a line, a trailing ``\\r`` is dropped,
    invalid UTF-8 is replaced, and a line over 16 KiB is cut with a marker."""

    def __init__(self) -> None:
        self._partial = bytearray()

    def feed(self, data: bytes) -> list[str]:
        self._partial += data
        *complete, rest = self._partial.split(b"\n")
        self._partial = bytearray(rest)
        return [self._text(line) for line in complete]

    def flush(self) -> list[str]:
        """What is left without a newline (at exit)."""
        if not self._partial:
            return []
        line, self._partial = bytes(self._partial), bytearray()
        return [self._text(line)]

    @staticmethod
    def _text(line: bytes | bytearray) -> str:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > MAX_LINE:
            return line[:MAX_LINE].decode("utf-8", "replace") + TRUNCATED
        return line.decode("utf-8", "replace")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Sink:
    """Shared by both paths: pass bytes through, record complete lines."""

    def __init__(
        self,
        stream: str,
        real_fd: int,
        jsonl: JsonlFile,
        session: Callable[[], str | None],
        secrets: Secrets,
    ) -> None:
        self._secrets = secrets
        self.stream = stream
        self.real_fd = real_fd
        self._jsonl = jsonl
        self._session = session
        self._assembler = LineAssembler()
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        data = self._secrets.scrub_bytes(data)
        with self._lock:
            _write_all(self.real_fd, data)
            lines = self._assembler.feed(data)
            if lines:
                session_id = self._session()
                for line in lines:
                    self._jsonl.record(self.stream, line, session_id=session_id)

    def write_app(self, console: str, line: str, level: str, session_id: str | None = None) -> None:
        """``console`` to the real descriptor, ``line`` to the lane as one ``app`` record."""
        console, line = self._secrets.scrub(console), self._secrets.scrub(line)
        with self._lock:
            _write_all(self.real_fd, console.encode("utf-8", "replace"))
            self._jsonl.record("app", line, session_id=session_id, level=level)

    def flush_partial(self) -> None:
        with self._lock:
            for line in self._assembler.flush():
                self._jsonl.record(self.stream, line, session_id=self._session())


class TeeStream(io.TextIOBase):
    """A text stream for ``sys.stdout``/``sys.stderr``: real descriptor plus lane, in step."""

    def __init__(self, sink: _Sink, fd: int) -> None:
        self._sink = sink
        self._fd = fd
        self.buffer = _TeeBuffer(sink)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        record = getattr(text, "record", None)  # a loguru message: see the module docstring
        if isinstance(record, dict) and "level" in record:
            session_id = record["extra"].get("session_id")
            level = record["level"].name
            session = None if session_id in (None, NO_SESSION) else str(session_id)
            self._sink.write_app(text, _lane_text(text, record), level, session)
        else:
            self._sink.write(text.encode("utf-8", "replace"))
        return len(text)

    def fileno(self) -> int:
        return self._fd  # writes through the descriptor reach the pipe capture

    def isatty(self) -> bool:
        return False


class _TeeBuffer(io.RawIOBase):
    """``sys.stdout.buffer`` for code that writes bytes."""

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sink.write(bytes(data))
        return len(data)


class FdCapture:
    """Route a file descriptor through a pipe and a pump thread (see module docstring)."""

    def __init__(self, fd: int, sink: _Sink) -> None:
        self._sink = sink
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        self._read_end = read_end
        self._thread = threading.Thread(
            target=self._pump, name=f"pipecat-base-capture-{sink.stream}", daemon=True
        )
        self._thread.start()

    def _pump(self) -> None:
        while True:
            try:
                data = os.read(self._read_end, 65536)
            except OSError:
                return
            if not data:
                return
            self._sink.write(data)


class Capture:
    """The installed capture of stdout and stderr."""

    def __init__(
        self, jsonl: JsonlFile, attribution: Attribution, secrets: Secrets = SECRETS
    ) -> None:
        def by_context() -> str | None:
            return _context_session() or attribution.current()

        self._sinks: list[_Sink] = []
        self._pipes: list[FdCapture] = []
        for fd, stream, name in ((1, "stdout", "stdout"), (2, "stderr", "stderr")):
            getattr(sys, name).flush()
            real_fd = os.dup(fd)
            tee_sink = _Sink(stream, real_fd, jsonl, by_context, secrets)
            pipe_sink = _Sink(stream, real_fd, jsonl, attribution.current, secrets)
            self._pipes.append(FdCapture(fd, pipe_sink))
            self._sinks += [tee_sink, pipe_sink]
            setattr(sys, name, TeeStream(tee_sink, fd))
        real_stderr = self._sinks[2].real_fd
        # The console sink's stream: the real stderr, bypassing the capture (see module doc).
        self.console: TextIO = os.fdopen(os.dup(real_stderr), "w", buffering=1, encoding="utf-8")

    def app_line(self, level: str, line: str, console: str | None = None) -> None:
        """One line of the server's own, before logging is configured: ``console`` (default:
        the line) to the real stderr, and the line to the lane as an ``app`` record with
        ``level``. Partial lines waiting for a newline are recorded first."""
        self.flush()
        self._sinks[2].write_app((console or line) + "\n", line, level)

    @property
    def real_stderr_fd(self) -> int:
        """The real stderr, past the capture."""
        return self._sinks[2].real_fd

    def flush(self) -> None:
        """Record partial lines still waiting for a newline (at exit)."""
        for sink in self._sinks:
            sink.flush_partial()


def _lane_text(text: str, record: dict[str, Any]) -> str:
    """A loguru record's lane line, as the lane sink writes it (``{message}\n{exception}``):
    its message, then the traceback the console text carries after the first line."""
    message = str(record["message"])
    if record.get("exception") is None:
        return message
    traceback = text.split("\n", 1)[1] if "\n" in text.rstrip("\n") else ""
    return f"{message}\n{traceback}".rstrip("\n")


def _context_session() -> str | None:
    # Imported on first use, not with this module: it imports loguru, whose default sink binds
    # to whatever ``sys.stderr`` is at that moment -- it must be the tee (see the module doc).
    from pipecat_base.bridge.session_tasks import current_session_id

    return current_session_id()


def install(jsonl: JsonlFile, attribution: Attribution) -> Capture:
    """Start capturing fds 1 and 2 and ``sys.stdout``/``sys.stderr`` into ``jsonl``."""
    return Capture(jsonl, attribution)
