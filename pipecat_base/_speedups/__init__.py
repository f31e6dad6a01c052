"""Fast paths that reach into libraries' private internals, behind one switch.

Every module of this package replaces part of a library's per-frame or per-request path with
a cheaper one that behaves the same (measured in ``bench/NOTES.md``, checked against the stock
path in ``tests/``). Nothing outside this package imports those modules: the server calls
`install` once (``server.py``), and the rest of the code asks this module's small interface --
`acquire`, `send`, `inbox_of`, `frame_writer_of`, `app_class`, `adapt_loop` -- which answers
with the stock behaviour for every speedup that is not engaged.

``PIPECAT_BASE_SPEEDUPS`` selects them (`config.parse_speedups`):

* unset, ``1``, ``on`` or ``all``: every speedup (the default);
* ``0``, ``off`` or ``none``: none -- stock Hypercorn, wsproto, Quart, quart-trio, werkzeug and
  trio-asyncio paths;
* ``-ws_frames,-frame_writer``: all but those (for bisecting a problem to one speedup);
* ``tcp_server,app_inbox``: only those.

Each speedup names the library versions it was verified on (`SPEEDUPS`). Where the installed
version lies outside, `install` leaves that speedup off and says so in one WARNING, so an
upgrade can only lose a fast path, never break on a renamed internal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, TypeVar

import hypercorn.trio.run
import hypercorn.trio.tcp_server
import trio
from loguru import logger
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version
from quart_trio import QuartTrio

from pipecat_base._speedups import checkpoints, switch
from pipecat_base._speedups.app_inbox import AppInbox
from pipecat_base._speedups.frame_writer import FrameWriter
from pipecat_base._speedups.http_connection import DirectHTTPConnection, DirectRequest
from pipecat_base._speedups.loop_scheduler import install as install_loop_scheduler
from pipecat_base._speedups.route_matching import RememberingMap
from pipecat_base._speedups.tcp_server import LeanTaskGroup, LeanTCPServer
from pipecat_base.config import SPEEDUP_NAMES, SPEEDUPS_VAR, parse_speedups

T = TypeVar("T")

ENV_VAR = SPEEDUPS_VAR
# Selection is part of the settings (`config.parse_speedups`); re-exported for callers here.
parse = parse_speedups


@dataclass(frozen=True)
class Speedup:
    """One fast path: what it replaces, and the library versions it was verified on."""

    replaces: str
    verified: Mapping[str, str]


SPEEDUPS: dict[str, Speedup] = {
    "tcp_server": Speedup(
        "Hypercorn's per-connection TCPServer (reads, sends, idle timer)",
        {"hypercorn": ">=0.18,<0.19"},
    ),
    "app_inbox": Speedup(
        "Hypercorn's memory channel from the reader to the app (TaskGroup.spawn_app)",
        {"hypercorn": ">=0.18,<0.19"},
    ),
    "checkpoints": Speedup(
        "the fairness round of Trio's lock and channel operations on the frame path",
        {"trio": ">=0.31,<0.36"},
    ),
    "ws_frames": Speedup(
        "wsproto's parse and framing of whole simple WebSocket frames",
        {"wsproto": ">=1.2,<1.4", "hypercorn": ">=0.18,<0.19"},
    ),
    "frame_writer": Speedup(
        "the Trio pump task per frame a bot sends (written from the asyncio side)",
        {"hypercorn": ">=0.18,<0.19", "wsproto": ">=1.2,<1.4"},
    ),
    "http_connection": Speedup(
        "quart-trio's nursery of two tasks per HTTP request, and its body's wait",
        {"quart-trio": ">=0.12,<0.14", "quart": ">=0.20,<0.24"},
    ),
    "route_matching": Speedup(
        "werkzeug's matcher, which leaves a reference cycle per match",
        {"werkzeug": ">=3.0,<3.2", "quart": ">=0.20,<0.24"},
    ),
    "loop_scheduler": Speedup(
        "trio-asyncio's one-callback-per-Trio-round scheduler and its loop lookups",
        {"trio-asyncio": ">=0.16,<0.17"},
    ),
}
NAMES = SPEEDUP_NAMES
assert set(SPEEDUPS) == set(NAMES), "every speedup the settings name has an entry here"

# Hypercorn's own classes, put back when a speedup that replaced them is switched off.
_STOCK_TCP_SERVER = hypercorn.trio.run.TCPServer
_STOCK_TASK_GROUP = hypercorn.trio.tcp_server.TaskGroup


def installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def unverified(
    name: str, version_of: Callable[[str], str | None] = installed_version
) -> str | None:
    """Why speedup ``name`` must stay off with the installed libraries, or None if it may run."""
    for distribution, specifier in SPEEDUPS[name].verified.items():
        found = version_of(distribution)
        try:
            ok = found is not None and Version(found) in SpecifierSet(specifier)
        except InvalidVersion:
            ok = False
        if not ok:
            return (
                f"{distribution} {found or '(not installed)'} is outside the versions it was "
                f"verified on ({specifier})"
            )
    return None


def install(
    raw: str | None, *, version_of: Callable[[str], str | None] = installed_version
) -> frozenset[str]:
    """Engage exactly the speedups ``raw`` selects (`parse`) whose libraries are verified;
    returns the engaged ones. Called once per serving lifetime by ``server.py``; calling it
    again replaces the selection (tests run both ways in one process).

    Raises:
        ValueError: ``raw`` does not parse (`config.parse_speedups`).
    """
    engaged = set()
    for name in sorted(parse(raw)):
        reason = unverified(name, version_of)
        if reason is None:
            engaged.add(name)
        else:
            logger.warning(
                f"Speedup {name} is off: {reason}; running the stock path ({ENV_VAR} to choose)"
            )
    switch.engage(frozenset(engaged))
    global acquire, send
    acquire = checkpoints.acquire if switch.on("checkpoints") else _stock_acquire
    send = checkpoints.send if switch.on("checkpoints") else _stock_send
    tcp = switch.on("tcp_server")
    hypercorn.trio.run.TCPServer = LeanTCPServer if tcp else _STOCK_TCP_SERVER  # type: ignore[misc]
    group = LeanTaskGroup if switch.on("app_inbox") else _STOCK_TASK_GROUP
    hypercorn.trio.tcp_server.TaskGroup = group  # type: ignore[misc]
    return switch.engaged()


def engaged() -> frozenset[str]:
    """The speedups running now."""
    return switch.engaged()


# -- the interface the rest of the server uses --------------------------------------------


async def _stock_acquire(primitive: checkpoints.Acquirable) -> None:
    await primitive.acquire()


async def _stock_send(channel: trio.MemorySendChannel[T], value: T) -> None:
    await channel.send(value)


acquire: Callable[[checkpoints.Acquirable], Awaitable[None]] = _stock_acquire
"""``await primitive.acquire()``; with ``checkpoints`` engaged, without a fairness round when
it is free (use only where the caller yields again before it could loop back)."""

send: Callable[[trio.MemorySendChannel[Any], Any], Awaitable[None]] = _stock_send
"""``await channel.send(value)``; with ``checkpoints`` engaged, without a fairness round when
there is room (use only where the caller yields again before sending more)."""


def inbox_of(receive: Callable[[], Awaitable[Any]]) -> AppInbox | None:
    """The `AppInbox` behind Hypercorn's ASGI ``receive`` (``app_inbox`` engaged), which a
    consumer can take events from directly; None: read ``receive`` as usual."""
    return AppInbox.of(receive) if switch.on("app_inbox") else None


def frame_writer_of(send: Callable[[Any], Awaitable[None]]) -> FrameWriter | None:
    """A writer for the WebSocket whose ASGI ``send`` this is, so a bot's frames can be
    written from the asyncio side (``frame_writer`` and ``tcp_server`` engaged); None: send
    through ``send``."""
    return FrameWriter.of(send) if switch.on("frame_writer") else None


def app_class(base: type[QuartTrio]) -> type[QuartTrio]:
    """``base`` with the engaged Quart fast paths (``http_connection``, ``route_matching``)."""
    attributes: dict[str, Any] = {}
    if switch.on("http_connection"):
        attributes.update(asgi_http_class=DirectHTTPConnection, request_class=DirectRequest)
    if switch.on("route_matching"):
        attributes["url_map_class"] = RememberingMap  # on the class: built as the app is
    return type(base.__name__, (base,), attributes)


def adapt_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Give the bridge's trio-asyncio ``loop`` asyncio's own scheduler (``loop_scheduler``
    engaged); False: trio-asyncio's scheduler runs it."""
    return switch.on("loop_scheduler") and install_loop_scheduler(loop)
