"""Refusing to start when the image's pipecat-ai cannot serve sessions.

An image whose pipecat-ai is missing, too old or broken used to pass its health probes and then
fail every session. The server checks before importing the bot (`check_pipecat`) and after
(`check_session_types`), deciding by what works, never by version number (versions only
appear in the messages). A refusal writes one line, ``Refusing to start: <reason>``, to the
termination log (``PCC_TERMINATION_LOG_PATH``, which Kubernetes shows as the pod's
termination message), ``CRITICAL: ...`` to stderr, and exits with code 78 via ``os._exit``
(so neither ``except BaseException`` in user code nor a non-daemon thread can hold it).

A fault inside a check never refuses: it is reported on stderr and startup continues.
On Python 3.10 (pipecat-ai 1.0 and newer need 3.11) a missing pipecat-ai is not a refusal: the
server serves plain asyncio bots with its own argument types and says so once.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from importlib import metadata
from types import ModuleType
from typing import Any, NoReturn

EXIT_REFUSED = 78
MINIMUM = "0.0.78"
RUNNER_TYPES = (
    "RunnerArguments",
    "DailyRunnerArguments",
    "WebSocketRunnerArguments",
    "SmallWebRTCRunnerArguments",
)
_DETAIL_LIMIT = 300

Finder = Callable[[str], Any]
Importer = Callable[[str], ModuleType]
Versioner = Callable[[str], "str | None"]


def installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _named(distribution: str, version: str | None) -> str:
    return f"{distribution} {version}" if version else distribution


def installed_name(distribution: str) -> str:
    """``"pipecat-ai 1.14.0"``, or the bare name when it is not installed (for messages)."""
    return _named(distribution, installed_version(distribution))


def _detail(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 3] + "..."


def plain_asyncio_mode(find_spec: Finder = importlib.util.find_spec) -> bool:
    """True on Python 3.10 without pipecat-ai: serve plain asyncio bots, do not refuse."""
    return sys.version_info < (3, 11) and find_spec("pipecat") is None


def check_pipecat(
    find_spec: Finder = importlib.util.find_spec,
    import_module: Importer = importlib.import_module,
    version: Versioner = installed_version,
) -> str | None:
    """Before the bot is imported: why pipecat-ai cannot serve sessions, or None."""
    ver = version("pipecat-ai")
    pipecat = _named("pipecat-ai", ver)
    if find_spec("pipecat") is None:
        return (
            f"pipecat-ai is not installed, and this image needs pipecat-ai {MINIMUM} or newer: "
            "add it to the agent image and deploy again."
        )
    try:
        types = import_module("pipecat.runner.types")
    except ModuleNotFoundError as exc:
        if exc.name in ("pipecat.runner", "pipecat.runner.types"):
            return (
                f"{pipecat} is too old for this image, which needs pipecat-ai {MINIMUM} or "
                "newer: upgrade pipecat-ai in the agent image and deploy again."
            )
        return f"{pipecat} failed to import ({_detail(exc)}): fix the agent image's dependencies."
    except Exception as exc:
        return f"{pipecat} failed to import ({_detail(exc)}): fix the agent image's dependencies."
    missing = [name for name in RUNNER_TYPES if not hasattr(types, name)]
    if missing:
        pronoun = "it" if len(missing) == 1 else "them"
        return (
            f"{pipecat} has no {', '.join(missing)} in pipecat.runner.types, which this image "
            f"builds session arguments on: pin a pipecat-ai release that provides {pronoun}."
        )
    return None


# Probe values for building each session type: nothing real is connected.
_REQUIRED: dict[str, dict[str, Any]] = {
    "DailySessionArguments": {"room_url": "https://probe.invalid/", "token": "probe"},
    "PipecatSessionArguments": {},
    "WebSocketSessionArguments": {"websocket": object()},
}
_OPTIONAL: dict[str, dict[str, Any]] = {
    "SmallWebRTCSessionArguments": {"webrtc_connection": object()}
}


def check_session_types(
    import_module: Importer = importlib.import_module,
    version: Versioner = installed_version,
) -> tuple[str | None, list[str]]:
    """After the bot is imported: (why the session types cannot be built, or None; warnings).

    Warnings name optional types (SmallWebRTC) that do not build: those transports are off.
    """
    from pipecat_base.sessions.args import build

    pc = _named("pipecatcloud", version("pipecatcloud"))
    pipecat = _named("pipecat-ai", version("pipecat-ai"))
    try:
        agent = import_module("pipecatcloud.agent")
    except Exception as exc:
        cause = exc.__cause__ or exc
        return (
            f"{pc} cannot load its session types with {pipecat} ({_detail(cause)}). "
            f"This image supports pipecat-ai {MINIMUM} or newer."
        ), []
    for name, fields in _REQUIRED.items():
        cls = getattr(agent, name, None)
        if cls is None:
            return (
                f"{pc} has no {name}, which this image hands bot(): pin a pipecatcloud release "
                "that has it, or leave pipecatcloud to the image."
            ), []
        try:
            build(cls, body={}, session_id="probe", **fields)
        except Exception as exc:
            return (
                f"{pc} with {pipecat} cannot build the {name} this image hands bot() "
                f"({_detail(exc)}). This image supports pipecat-ai {MINIMUM} or newer."
            ), []
    warnings = []
    for name, fields in _OPTIONAL.items():
        try:
            build(getattr(agent, name), body={}, session_id="probe", **fields)
        except Exception as exc:
            warnings.append(
                f"{pc} with {pipecat} cannot build {name} ({_detail(exc)}): the image serves "
                "without it, and the transports that need it are off."
            )
    return None, warnings


def one_line(text: str) -> str:
    """The refusal as one plain line: the platform's CLI renders Rich markup, so no brackets."""
    text = re.sub(r"\s+", " ", text).strip()
    text = text.replace("[", "(").replace("]", ")")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def refuse(reason: str, termination_log: str) -> NoReturn:
    """Write the refusal where operators look, and exit with code 78 at once."""
    line = one_line(f"Refusing to start: {reason}")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream must not stop the refusal
            pass
    try:
        with open(termination_log, "w", encoding="utf-8") as log:
            log.write(line)
    except OSError:
        pass  # no termination log outside Kubernetes: stderr still says it
    # sys.stderr, not sys.__stderr__: with the lane on it is the capture's synchronous tee,
    # so the line reaches the console and bot.jsonl before os._exit.
    sys.stderr.write(f"CRITICAL: {line}\n")
    sys.stderr.flush()
    os._exit(EXIT_REFUSED)


def run_check(name: str, check: Callable[[], Any]) -> Any:
    """Run a check; a fault inside it is reported and never refuses (returns None)."""
    try:
        return check()
    except Exception as exc:
        sys.stderr.write(f"WARNING: The {name} check did not run ({_detail(exc)}).\n")
        return None
