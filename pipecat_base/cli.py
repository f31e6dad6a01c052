"""``pipecat-base serve [BOT]`` and ``python -m pipecat_base``.

Startup runs in this order, each step visible here:

1. install the early SIGTERM guard (a SIGTERM from here on exits 0 at once), put the agent's
   environment (``PIPECAT_BOT_VENV``) first on ``sys.path`` (see `bot_env`), and import
   trio_asyncio, whose asyncio patches must precede every import of pipecat;
2. parse every setting (a bad value: one line on stderr, exit 2);
3. check pipecat-ai (`compat`: refusal exits 78), import the bot module (no ``bot``: one line,
   exit 1; the module raising: its traceback, exit 1), then check the session types (78);
4. import the session argument types (pipecat, pipecatcloud), then configure logging: both
   the bot and pipecatcloud reconfigure loguru at import, so we take it over last;
5. serve until SIGTERM/SIGINT, drain, exit 0.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO, cast

EXIT_CONFIG = 2
EXIT_BOT = 1
EXIT_LISTEN = 3


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["cloud"]:  # the local platform emulator: it runs no bot itself
        from pipecat_base import emulator

        return emulator.main(args[1:])

    from pipecat_base.startup.early_sigterm import EarlySigtermGuard

    guard = EarlySigtermGuard.install()

    # Before anything that the agent's environment may also provide is imported (see bot_env).
    from pipecat_base.startup import bot_env

    bot_paths = bot_env.activate(os.environ.get(bot_env.ENV_VAR))

    # trio_asyncio patches asyncio's loop lookup (get_running_loop, current_task, ...). It must
    # be imported before pipecat or anything else that captures those functions at import:
    # pipecat's wait_for2 (Python < 3.12) does, and the compatibility check below imports
    # pipecat. Imported later, every pipeline fails with "no running event loop".
    import trio_asyncio  # noqa: F401

    parser = argparse.ArgumentParser(
        prog="pipecat-base",
        description="Serve a Pipecat bot's async def bot(args) as Pipecat Cloud does.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {own_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="serve a bot module on PORT (default 8080)",
        description="Serve a bot module until SIGTERM or SIGINT, then drain and exit 0.",
    )
    sub.add_parser("cloud", help="a local Pipecat Cloud emulator (pipecat-base cloud --help)")
    serve.add_argument(
        "bot",
        nargs="?",
        help="path to the bot file or a module name (default: $PIPECAT_BOT, else 'bot')",
    )
    serve.add_argument("--host", help="address to listen on (default: $HOST, else 0.0.0.0)")
    serve.add_argument(
        "--port", type=int, help="port to listen on, 0 for any free one (default: $PORT, else 8080)"
    )
    options = parser.parse_args(argv)
    if options.port is not None and not 0 <= options.port <= 65535:
        parser.error(f"--port {options.port}: a port is 0 to 65535")

    from pipecat_base.config import ConfigError, load_settings

    try:
        given = {"bot": options.bot, "host": options.host, "port": options.port}
        settings = load_settings(**{k: v for k, v in given.items() if v is not None})
    except ConfigError as exc:
        print(f"pipecat-base: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    # The structured lane (PCC_LOG_DIR): capture stdout/stderr before the bot module is
    # imported, since bots print at import.
    from pipecat_base.observability.attribution import Attribution

    attribution = Attribution()
    capture = None
    jsonl = None
    if settings.log_dir:
        from pipecat_base.observability import capture as capture_module
        from pipecat_base.observability.lane import open_jsonl

        jsonl = open_jsonl(settings.log_dir)
        if jsonl is not None:
            # Before loguru is first imported (by pipecat, the bot, or our own modules below):
            # its default sink then writes to the capture's tee, which turns each record into
            # an `app` record of the lane with its level (`capture`).
            capture = capture_module.install(jsonl, attribution)
            guard.attach(jsonl.path, capture.real_stderr_fd)

    if capture is None:
        # Without the lane (whose tee scrubs), what Python code prints is scrubbed of the
        # running sessions' secrets all the same.
        from pipecat_base.observability.redaction import ScrubbingStream

        sys.stdout = cast(TextIO, ScrubbingStream(sys.stdout))
        sys.stderr = cast(TextIO, ScrubbingStream(sys.stderr))

    from pipecat_base.startup import compat

    lane_line = capture.app_line if capture is not None else None

    plain_asyncio = compat.plain_asyncio_mode()
    if not plain_asyncio:
        refusal = compat.run_check("pipecat-ai", compat.check_pipecat)
        if refusal:
            compat.refuse(refusal, settings.termination_log_path, lane=lane_line)

    from pipecat_base.startup.loader import BotLoadError, load_bot

    try:
        bot_module = load_bot(settings.bot)
    except BotLoadError as exc:
        print(f"pipecat-base: cannot load the bot: {exc}", file=sys.stderr)
        if exc.details:
            print(exc.details, file=sys.stderr)
        return EXIT_BOT

    type_warnings: list[str] = []
    if not plain_asyncio:
        checked = compat.run_check("session arguments", compat.check_session_types)
        if checked is not None:
            refusal, type_warnings = checked
            if refusal:
                compat.refuse(refusal, settings.termination_log_path, lane=lane_line)

    import trio
    from loguru import logger

    from pipecat_base.observability.logs import configure_logging
    from pipecat_base.server import Server
    from pipecat_base.sessions import args as session_args
    from pipecat_base.startup.failures import find_failure

    types_from = session_args.preload()
    configure_logging(settings.log_level, sink=capture.console if capture else None, jsonl=jsonl)
    if bot_paths:
        logger.info(f"Agent environment first on sys.path: {', '.join(bot_paths)}")
    for problem in bot_env.check_shared_versions():
        logger.warning(f"Shared package version: {problem}")
    for warning in type_warnings:
        logger.warning(warning)
    if plain_asyncio:
        logger.info(
            "Python 3.10 without pipecat-ai (pipecat-ai 1.0 and newer need Python 3.11): serving "
            "plain asyncio bots with pipecat-base's own session arguments"
        )
    logger.info(f"Session arguments from {types_from}")
    from pipecat_base.startup import features as features_module

    detected = features_module.detect(settings=settings)
    if settings.log_features_summary:
        logger.info(features_module.summary(detected))
    from pipecat_base.transports import moq

    moq_warning = moq.startup_warning(features_module.unavailable(detected, features_module.MOQ))
    if moq_warning:
        logger.warning(moq_warning)
    if any(f.name == features_module.OBSERVERS and f.available for f in detected):
        register_setup_file(observers_setup_path())
    server = Server(
        settings,
        bot_module,
        on_shutdown=guard.absorb,
        attribution=attribution,
        features=detected,
        owns_process=True,
    )
    try:
        trio.run(server.run)
    except BaseException as exc:
        cause = None if server.listening else find_failure(exc, OSError)
        if cause is None:
            raise
        # One line, not the nested groups the failure arrives in.
        sys.stderr.write(
            f"pipecat-base: cannot listen on {settings.host}:{settings.port}: {cause}\n"
        )
        sys.stderr.flush()
        return EXIT_LISTEN
    guard.absorb()
    if capture is not None:
        capture.flush()
    assert server.supervisor is not None
    lingering = [
        t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()
    ]
    if server.supervisor.abandoned_sessions or lingering:
        # A bot that ignored cancellation, or threads a bot started and never ended, would keep
        # the interpreter from exiting (it joins non-daemon threads) past the container's grace
        # period: leave now, logs flushed.
        reason = (
            "abandoned sessions still running"
            if server.supervisor.abandoned_sessions
            else (f"threads still running: {', '.join(lingering)}")
        )
        logger.warning(f"Exiting with {reason}")
        logger.complete()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    # On its way out the interpreter collects every tracked object once more: with pipecat
    # loaded and the cyclic leftovers of many sessions that took 0.2-0.4 s of the container's
    # grace period, for nothing. Frozen objects are left out of it; atexit handlers and module
    # teardown still run (Python does not promise finalizers for objects alive at exit).
    gc.freeze()
    return 0


def own_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("pipecat-base")
    except metadata.PackageNotFoundError:
        return "unknown"


def observers_setup_path() -> str:
    """The setup file pipecat loads by path (never imported by the server itself)."""
    return str(Path(__file__).parent / "observability" / "observers_setup.py")


def register_setup_file(path: str) -> None:
    """Append ``path`` to ``PIPECAT_SETUP_FILES``, keeping the user's entries."""
    entries = [p for p in os.environ.get("PIPECAT_SETUP_FILES", "").split(os.pathsep) if p]
    if path not in entries:
        os.environ["PIPECAT_SETUP_FILES"] = os.pathsep.join([*entries, path])


def run() -> None:
    """Console-script wrapper: exit with `main`'s code."""
    sys.exit(main())
