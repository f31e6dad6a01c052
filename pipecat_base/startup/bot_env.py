"""Make the agent's own environment importable, ahead of the runtime's.

In the image the server runs from its own environment (``/opt/pipecat-base/.venv``) and the
agent's dependencies live in ``/app/.venv``, installed by the agent's own ``uv sync`` or
``pip install``. ``uv sync`` removes whatever its lock does not list, so if both shared one
environment, an agent's sync would uninstall the server. Kept apart, each side installs what
it needs, and this module joins them at startup.

The rule for packages both sides import (pydantic, loguru, starlette, aiohttp, pipecat-ai,
pipecatcloud, ...): **the agent's environment wins.** Its ``site-packages`` goes first on
``sys.path``, so the bot -- and the server, in the same process -- import the agent's version;
the runtime's environment supplies only what the agent's lacks (trio, hypercorn, quart-trio,
trio-asyncio, ...). One interpreter cannot load two versions of a module, and the bot is the
side that must get exactly what its lock says. The server's requirements on those packages are
deliberately loose lower bounds; `check_shared_versions` warns when the agent's versions fall
outside them.

This runs before any of those packages is imported (first thing in ``cli.main``), which is why
``PIPECAT_BOT_VENV`` is read here rather than through `config`.
"""

from __future__ import annotations

import site
import sys
from importlib import metadata
from pathlib import Path

ENV_VAR = "PIPECAT_BOT_VENV"


def site_packages(venv: Path) -> list[Path]:
    """The ``site-packages`` directories of a virtual environment (for this Python version)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        venv / "lib" / version / "site-packages",
        venv / "lib64" / version / "site-packages",
    ]
    return [p for p in candidates if p.is_dir()]


def activate(venv: str | None) -> list[str]:
    """Put ``venv``'s site-packages (and its ``.pth`` entries) first on ``sys.path``.

    Returns the directories added, in order; nothing when ``venv`` is unset or has none for
    this Python (an agent environment built for another Python version is not used).
    """
    if not venv:
        return []
    before = list(sys.path)
    for directory in site_packages(Path(venv)):
        site.addsitedir(str(directory))  # appends it and what its .pth files name
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + [p for p in sys.path if p not in added]
    return added


def origin(distribution: str) -> str | None:
    """Where an installed distribution was found (its directory), or None if not installed."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return None
    return str(Path(str(dist.locate_file(""))).resolve())


SHARED = ("pipecat-ai", "pipecatcloud", "pydantic", "loguru", "starlette", "aiohttp")


def check_shared_versions() -> list[str]:
    """Shared packages whose installed version is outside the server's own requirement.

    Returns one line per mismatch (empty when all fit, or when ``packaging`` is unavailable).
    """
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging comes with every supported toolchain
        return []
    problems = []
    for line in metadata.requires("pipecat-base") or []:
        requirement = Requirement(line)
        if requirement.name not in SHARED:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            problems.append(
                f"{requirement.name} {installed} (from {origin(requirement.name)}) is outside "
                f"pipecat-base's requirement {requirement.specifier}"
            )
    return problems
