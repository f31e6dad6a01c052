"""Import the user's bot module and find ``bot`` (required, async) and ``readyz`` (optional).

The bot is named by a path (``/app/bot.py``, ``examples/hello/bot.py``) or a module name
(``bot``, ``mypkg.agent``). A path's directory goes first on ``sys.path`` so the bot can import
its sibling modules, exactly as ``python bot.py`` would allow.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any


class BotLoadError(Exception):
    """The bot module cannot be used; `str()` says why in one line, `details` (may be empty)
    the part of the traceback that is the user's."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def import_failure(exc: Exception, path: Path | None) -> BotLoadError:
    """A summary line for what the bot's import raised, and the traceback's frames that are
    the user's (importlib's and ours are left out)."""
    trace = traceback.TracebackException.from_exception(exc)
    ours = ("<frozen importlib", str(Path(__file__).parent.parent))
    trace.stack = traceback.StackSummary.from_list(
        [frame for frame in trace.stack if not frame.filename.startswith(ours)]
    )
    name = type(exc).__name__
    if isinstance(exc, SyntaxError):
        where = f"{exc.filename}:{exc.lineno}"
        summary = f"{name} at {where}: {exc.msg}"
    else:
        frame = trace.stack[-1] if trace.stack else None
        where = f" at {frame.filename}:{frame.lineno}" if frame is not None else ""
        summary = f"{name}{where}: {exc}"
    details = "".join(trace.format()).rstrip("\n")
    return BotLoadError(summary, details)


@dataclass(frozen=True)
class BotModule:
    """What the server needs from the user's module."""

    module: ModuleType
    bot: Callable[[Any], Any]
    readyz: Callable[[], Any] | None

    @property
    def name(self) -> str:
        return self.module.__name__

    @property
    def label(self) -> str:
        """How log lines name it: its file (``bot.py``), or ``module <name>``."""
        path = getattr(self.module, "__file__", None)
        return Path(path).name if path else f"module {self.name}"


def load_bot(spec: str, *, cwd: Path | None = None) -> BotModule:
    """Import the module named by ``spec`` and check its ``bot`` callable.

    What the module's own import code raises becomes a `BotLoadError` with a summary line and
    the user's part of the traceback (`import_failure`). Imports nothing of its own: the server
    imports trio_asyncio before any bot (see `pipecat_base.cli`), and the benchmark's asyncio
    baseline loads bots with this function without it.

    Raises:
        BotLoadError: the module does not exist, raises at import, or has no
            ``async def bot(args)``.
    """
    base = cwd or Path.cwd()
    path = Path(spec)
    if spec.endswith(".py") or "/" in spec:
        module = _import_path(path if path.is_absolute() else base / path)
    else:
        module = _import_name(spec, base)

    bot = getattr(module, "bot", None)
    if bot is None:
        raise BotLoadError(f"{module.__name__} ({module.__file__}) defines no bot() function")
    if not inspect.iscoroutinefunction(bot):
        raise BotLoadError(
            f"{module.__name__}.bot must be an async function (async def bot(args)), "
            f"got {type(bot).__name__}"
        )
    readyz = getattr(module, "readyz", None)
    if readyz is not None and not callable(readyz):
        raise BotLoadError(f"{module.__name__}.readyz must be callable")
    return BotModule(module=module, bot=bot, readyz=readyz)


def _import_path(path: Path) -> ModuleType:
    if path.is_dir():
        raise BotLoadError(
            f"{path} is a directory: name the bot file in it (for example {path / 'bot.py'})"
        )
    if not path.is_file():
        raise BotLoadError(f"bot file not found: {path}")
    directory = str(path.parent.resolve())
    if directory not in sys.path:
        sys.path.insert(0, directory)
    name = path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise BotLoadError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered before executing, like a normal import, so `from bot import X` inside the
    # bot's own helpers (and pickling) find this module rather than importing it twice.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise import_failure(exc, path) from None
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _import_name(name: str, base: Path) -> ModuleType:
    directory = str(base.resolve())
    if directory not in sys.path:
        sys.path.insert(0, directory)
    if importlib.util.find_spec(name.split(".")[0]) is None:
        raise BotLoadError(f"no module named {name!r} (looked in {directory} and sys.path)")
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise import_failure(exc, None) from None
