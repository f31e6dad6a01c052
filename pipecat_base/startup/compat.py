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

import dataclasses
import importlib
import importlib.util
import inspect
import os
import re
import sys
import time
from collections.abc import Callable
from importlib import metadata
from types import ModuleType
from typing import Any, NoReturn

from pipecat_base.observability.capture import PUMP_BEAT

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
PROBE_FIELDS: dict[str, dict[str, Any]] = {
    "DailySessionArguments": {"room_url": "https://probe.invalid/", "token": "probe"},
    "PipecatSessionArguments": {},
    "WebSocketSessionArguments": {"websocket": object()},
    "SmallWebRTCSessionArguments": {"webrtc_connection": object()},
    "MOQSessionArguments": {
        "relay_url": "https://probe.invalid/moq",
        "namespace": "probe",
        "participant_id": "response",
        "peer_id": "request",
    },
}
_REQUIRED = ("DailySessionArguments", "PipecatSessionArguments", "WebSocketSessionArguments")
_OPTIONAL = ("SmallWebRTCSessionArguments",)
BODY_VERSION = "0.0.91"
PIPECATCLOUD_BODY_VERSION = "0.2.1"


def unbuildable(name: str, cls: type, version: Versioner = installed_version) -> str | None:
    """Why session type ``name`` (``cls``) cannot be built with probe values, or None.

    The capability report uses it too: a type that does not build is a transport the image
    cannot serve, whatever its modules say.
    """
    from pipecat_base.sessions.args import build

    try:
        build(cls, body={}, session_id="probe", **PROBE_FIELDS[name])
    except Exception as exc:
        pc = _named("pipecatcloud", version("pipecatcloud"))
        pipecat = _named("pipecat-ai", version("pipecat-ai"))
        return (
            f"{pc} with {pipecat} cannot build the {name} this image hands bot() ({_detail(exc)})"
        )
    return None


def check_session_types(
    import_module: Importer = importlib.import_module,
    version: Versioner = installed_version,
) -> tuple[str | None, list[str]]:
    """After the bot is imported: (why the session types cannot be built, or None; warnings).

    Warnings name an optional type (SmallWebRTC) that exists but does not build (those
    transports are off; one that is simply absent is no warning: the capability says so), and
    the deprecations (`deprecations`).
    """
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
    for name in _REQUIRED:
        cls = getattr(agent, name, None)
        if cls is None:
            return (
                f"{pc} has no {name}, which this image hands bot(): pin a pipecatcloud release "
                "that has it, or leave pipecatcloud to the image."
            ), []
        reason = unbuildable(name, cls, version)
        if reason is not None:
            return f"{reason}. This image supports pipecat-ai {MINIMUM} or newer.", []
    warnings = []
    for name in _OPTIONAL:
        cls = getattr(agent, name, None)
        reason = unbuildable(name, cls, version) if cls is not None else None
        if reason is not None:
            warnings.append(
                f"{reason}: the image serves without it, and the transports that need it are off."
            )
    return None, warnings + deprecations(agent, import_module, version)


def deprecations(
    agent: ModuleType,
    import_module: Importer = importlib.import_module,
    version: Versioner = installed_version,
) -> list[str]:
    """The deprecation warnings, worded as the existing image words them (operators grep for
    these): a pipecat-ai whose runner arguments take no ``body``, and a standalone pipecatcloud
    whose WebSocket session type takes none."""
    warnings = []
    try:
        runner: Any = getattr(import_module("pipecat.runner.types"), "RunnerArguments", None)
    except Exception:
        runner = None
    if runner is not None and not _takes_body(runner):
        ver = version("pipecat-ai")
        subject = f"pipecat-ai {ver}" if ver else "The installed pipecat-ai"
        warnings.append(
            f"{subject} is older than {BODY_VERSION} and deprecated on this image, which "
            f"supports pipecat-ai {MINIMUM} or newer: a future release will need pipecat-ai "
            f"{BODY_VERSION} or newer, so upgrade it in the agent image."
        )
    websocket = getattr(agent, "WebSocketSessionArguments", None)
    standalone = runner is None or not (
        isinstance(websocket, type) and issubclass(websocket, runner)
    )
    if websocket is not None and standalone and not _takes_body(websocket):
        pc = _named("pipecatcloud", version("pipecatcloud"))
        warnings.append(
            f"{pc}'s WebSocketSessionArguments does not take the request body, which is "
            f"deprecated on this image: a future release will need pipecatcloud "
            f"{PIPECATCLOUD_BODY_VERSION} or newer, so upgrade it in the agent image (or leave "
            "pipecatcloud to the image)."
        )
    return warnings


def _takes_body(cls: Any) -> bool:
    try:
        return "body" in {f.name for f in dataclasses.fields(cls) if f.init}
    except TypeError:  # not a dataclass: look at its constructor
        return "body" in inspect.signature(cls).parameters


def one_line(text: str) -> str:
    """The refusal as one plain line: the platform's CLI renders Rich markup, so no brackets."""
    text = re.sub(r"\s+", " ", text).strip()
    text = text.replace("[", "(").replace("]", ")")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def refuse(
    reason: str, termination_log: str, *, lane: Callable[[str, str, str], None] | None = None
) -> NoReturn:
    """Write the refusal where operators look, and exit with code 78 at once.

    Args:
        reason: Why (made one line).
        termination_log: ``PCC_TERMINATION_LOG_PATH``.
        lane: With the structured lane on, `Capture.app_line`: the line goes to the real stderr
            and to ``bot.jsonl`` as a CRITICAL ``app`` record, whatever the bot did to
            ``sys.stderr``. Without it the line goes to the real stderr (``sys.__stderr__``),
            which a bot that replaced ``sys.stderr`` at import cannot hide.
    """
    line = one_line(f"Refusing to start: {reason}")
    # What the bot printed at import, buffered in its own streams or the real ones, goes first.
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # a closed or broken stream must not stop the refusal
            pass
    try:
        with open(termination_log, "w", encoding="utf-8") as log:
            log.write(line)
    except OSError:
        pass  # no termination log outside Kubernetes: stderr still says it
    if lane is not None:
        time.sleep(PUMP_BEAT)  # what native code wrote just before reaches the lane first
        lane("CRITICAL", line, f"CRITICAL: {line}")
    else:
        _write_real_stderr(f"CRITICAL: {line}\n")
    os._exit(EXIT_REFUSED)


def _write_real_stderr(text: str) -> None:
    try:
        os.write(2, text.encode("utf-8", "backslashreplace"))
    except OSError:
        pass  # nowhere left to say it: the termination log and the exit code still do


def run_check(name: str, check: Callable[[], Any]) -> Any:
    """Run a check; a fault inside it is reported and never refuses (returns None)."""
    try:
        return check()
    except Exception as exc:
        sys.stderr.write(f"WARNING: The {name} check did not run ({_detail(exc)}).\n")
        return None
