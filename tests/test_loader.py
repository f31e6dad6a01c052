"""Loading the user's bot module by path or module name."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from pipecat_base.startup.loader import BotLoadError, load_bot


@pytest.fixture
def bot_dir(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("mybot", "helpers", "agent_mod"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    (tmp_path / "helpers.py").write_text("GREETING = 'hi'\n")
    (tmp_path / "mybot.py").write_text(
        "from helpers import GREETING\n"
        "async def bot(args):\n    return GREETING\n"
        "async def readyz():\n    return True\n"
    )
    (tmp_path / "agent_mod.py").write_text("async def bot(args):\n    pass\n")
    return tmp_path


def test_load_by_path_with_sibling_imports(bot_dir: Path):
    loaded = load_bot(str(bot_dir / "mybot.py"))
    assert loaded.name == "mybot"
    assert loaded.readyz is not None
    assert sys.modules["mybot"] is loaded.module


def test_load_by_relative_path(bot_dir: Path):
    assert load_bot("mybot.py", cwd=bot_dir).name == "mybot"


def test_load_by_module_name_from_working_directory(bot_dir: Path):
    loaded = load_bot("agent_mod", cwd=bot_dir)
    assert loaded.readyz is None


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("x = 1\n", "defines no bot() function"),
        ("def bot(args):\n    pass\n", "bot must be an async function"),
        ("async def bot(args):\n    pass\nreadyz = 3\n", "readyz must be callable"),
    ],
)
def test_unusable_modules_are_refused_clearly(tmp_path: Path, monkeypatch, source, message):
    monkeypatch.setattr(sys, "path", list(sys.path))
    path = tmp_path / "badbot.py"
    path.write_text(source)
    monkeypatch.delitem(sys.modules, "badbot", raising=False)
    with pytest.raises(BotLoadError, match=re.escape(message)):
        load_bot(str(path))


def test_missing_module_and_file(tmp_path: Path):
    with pytest.raises(BotLoadError, match="no module named 'nosuchbot'"):
        load_bot("nosuchbot", cwd=tmp_path)
    with pytest.raises(BotLoadError, match="bot file not found"):
        load_bot(str(tmp_path / "nosuch.py"))


def test_import_errors_of_the_bot_itself_are_summarised_with_its_traceback(
    tmp_path: Path, monkeypatch
):
    monkeypatch.setattr(sys, "path", list(sys.path))
    path = tmp_path / "raisingbot.py"
    path.write_text("raise RuntimeError('broken at import')\n")
    with pytest.raises(BotLoadError) as caught:
        load_bot(str(path))
    assert str(caught.value) == f"RuntimeError at {path}:1: broken at import"
    assert caught.value.details.endswith("RuntimeError: broken at import")
    assert str(path) in caught.value.details
    assert "raisingbot" not in sys.modules
