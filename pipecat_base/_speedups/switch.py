"""Which speedups are engaged: set by `pipecat_base._speedups.install`, read by the fast paths
that consult each other (the connection server asks whether ``ws_frames`` may read frames)."""

from __future__ import annotations

_engaged: frozenset[str] = frozenset()


def engage(names: frozenset[str]) -> None:
    global _engaged
    _engaged = names


def engaged() -> frozenset[str]:
    return _engaged


def on(name: str) -> bool:
    return name in _engaged
