"""What a failed run raised, found inside the exception groups Trio wraps it in.

The CLI and the emulator turn a known failure (an address the server cannot listen on, a
server that exited before serving) into one line and an exit code, instead of the nested
groups a nursery reports it in.
"""

from __future__ import annotations

from typing import TypeVar

E = TypeVar("E", bound=BaseException)


def find_failure(exc: BaseException, kind: type[E]) -> E | None:
    """``exc`` itself, or the first exception of ``kind`` inside its groups; None if none."""
    if isinstance(exc, kind):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = find_failure(inner, kind)
        if found is not None:
            return found
    return None
