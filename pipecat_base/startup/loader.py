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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any


class BotLoadError(Exception):
    """The bot module cannot be used; `str()` says why in one line."""


@dataclass(frozen=True)
class BotModule:
    """What the server needs from the user's module."""

    module: ModuleType
    bot: Callable[[Any], Any]
    readyz: Callable[[], Any] | None

    @property
    def name(self) -> str:
        return self.module.__name__


def load_bot(spec: str, *, cwd: Path | None = None) -> BotModule:
    """Import the module named by ``spec`` and check its ``bot`` callable.

    Exceptions raised by the module's own import code propagate unchanged (a traceback and exit
    code 1 tell the user more than any summary of ours). Imports nothing of its own: the server
    imports trio_asyncio before any bot (see `pipecat_base.cli`), and the benchmark's asyncio
    baseline loads bots with this function without it.

    Raises:
        BotLoadError: the module does not exist or has no ``async def bot(args)``.
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
    return importlib.import_module(name)
