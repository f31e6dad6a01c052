"""The secrets of the sessions running now, kept out of everything the process writes.

A session's room token (Daily) or relay URL (MoQ) is a credential: in a log line, a print, a
traceback or an exception's message it would reach the platform's log store and anyone who
reads it. While a session runs, its secrets are held here (`Secrets.holding`), and every
writer the server controls passes its text through `Secrets.scrub`: the console and lane sinks
(our lines, the bot's, pipecat's, tracebacks, stdlib logging routed into loguru), and
``sys.stdout``/``sys.stderr`` (with the lane on, the capture's tee; without it a thin wrapper).
What native code writes straight to file descriptors 1 and 2 is scrubbed only with the lane on
(the capture reads it); a secret cut across two writes is not recognised.

`Secret` is one session's: a value and its percent-encoded forms, each replaced with a
placeholder.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

Scrub = Callable[[str], str]
TOKEN_PLACEHOLDER = "<room token>"
# Shorter values would blank out ordinary words wherever they appear.
MIN_SECRET_LENGTH = 8


class Secret:
    """One value kept out of text: itself and its percent-encoded forms, longest first."""

    def __init__(self, value: str, placeholder: str = TOKEN_PLACEHOLDER) -> None:
        forms = {value, quote(value, safe=""), quote_plus(value, safe="")}
        self._forms = sorted((f for f in forms if len(f) >= MIN_SECRET_LENGTH), key=len)[::-1]
        self._placeholder = placeholder

    def scrub(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, self._placeholder)
        return text

    def __repr__(self) -> str:
        return f"Secret({self._placeholder})"


class Secrets:
    """The scrubbers of the sessions running now (thread-safe; reads take no lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, Scrub] = {}
        self._next = 0
        # Rebuilt on every change, read without a lock: a writer on any thread sees a whole
        # tuple, the one before or the one after.
        self._scrubs: tuple[Scrub, ...] = ()

    @contextmanager
    def holding(self, scrub: Scrub | None) -> Iterator[None]:
        """Keep ``scrub``'s secret out of every output for as long as the block runs."""
        if scrub is None:
            yield
            return
        with self._lock:
            key = self._next
            self._next += 1
            self._held[key] = scrub
            self._scrubs = tuple(self._held.values())
        try:
            yield
        finally:
            with self._lock:
                del self._held[key]
                self._scrubs = tuple(self._held.values())

    def scrub(self, text: str) -> str:
        """``text`` with every held secret replaced (the same object when none is held)."""
        for scrub in self._scrubs:
            text = scrub(text)
        return text

    def scrub_bytes(self, data: bytes) -> bytes:
        if not self._scrubs:
            return data
        return self.scrub(data.decode("utf-8", "surrogateescape")).encode(
            "utf-8", "surrogateescape"
        )


SECRETS = Secrets()
"""The process' secrets: the server's supervisor holds each session's here, and the writers
above scrub with it."""


class ScrubbingStream(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` without the lane: what Python code writes, scrubbed, to
    the stream it wraps (everything else is the wrapped stream's)."""

    def __init__(self, stream: TextIO, secrets: Secrets = SECRETS) -> None:
        self._stream = stream
        self._secrets = secrets

    def write(self, text: str) -> int:
        self._stream.write(self._secrets.scrub(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._stream.encoding

    @property
    def buffer(self) -> Any:
        return self._stream.buffer

    @property
    def wrapped(self) -> TextIO:
        return self._stream
