"""Compatibility refusal (exit 78): checks with injected imports, and real child processes
whose ``pipecat`` is a stub package placed first on ``PYTHONPATH``."""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
import trio

from pipecat_base.startup import compat

from .conftest import needs_pipecat
from .process import BOTS, server_process


def fake_import(modules: dict[str, object]):
    def import_module(name: str) -> ModuleType:
        value = modules[name]
        if isinstance(value, BaseException):
            raise value
        module = ModuleType(name)
        for attr in value:  # type: ignore[union-attr]
            setattr(module, attr, object)
        return module

    return import_module


def found(name: str) -> object:
    return object()


ALL_TYPES = compat.RUNNER_TYPES


@pytest.mark.parametrize(
    ("find", "modules", "version", "reason"),
    [
        (found, {"pipecat.runner.types": ALL_TYPES}, "1.14.0", None),
        (
            lambda name: None,
            {},
            None,
            "pipecat-ai is not installed, and this image needs pipecat-ai 0.0.78 or newer: "
            "add it to the agent image and deploy again.",
        ),
        (
            found,
            {"pipecat.runner.types": ModuleNotFoundError("x", name="pipecat.runner")},
            "0.0.60",
            "pipecat-ai 0.0.60 is too old for this image, which needs pipecat-ai 0.0.78 or "
            "newer: upgrade pipecat-ai in the agent image and deploy again.",
        ),
        (
            found,
            {"pipecat.runner.types": ModuleNotFoundError("No module named 'numpy'", name="numpy")},
            "1.0.0",
            "pipecat-ai 1.0.0 failed to import (ModuleNotFoundError: No module named 'numpy'): "
            "fix the agent image's dependencies.",
        ),
        (
            found,
            {"pipecat.runner.types": ALL_TYPES[:3]},
            "1.0.0",
            "pipecat-ai 1.0.0 has no SmallWebRTCRunnerArguments in pipecat.runner.types, which "
            "this image builds session arguments on: pin a pipecat-ai release that provides it.",
        ),
        (
            found,
            {"pipecat.runner.types": ALL_TYPES[:2]},
            None,
            "pipecat-ai has no WebSocketRunnerArguments, SmallWebRTCRunnerArguments in "
            "pipecat.runner.types, which this image builds session arguments on: pin a "
            "pipecat-ai release that provides them.",
        ),
    ],
)
def test_check_pipecat(find, modules, version, reason):
    assert compat.check_pipecat(find, fake_import(modules), lambda dist: version) == reason


@needs_pipecat
def test_installed_pipecat_and_session_types_pass():
    assert compat.check_pipecat() is None
    assert compat.check_session_types() == (None, [])


def test_session_types_that_do_not_load_are_refused_with_the_cause():
    error = ImportError("wrapper")
    error.__cause__ = TypeError("non-default argument 'room_url' follows default argument")
    reason, _ = compat.check_session_types(
        fake_import({"pipecatcloud.agent": error}), lambda dist: {"pipecatcloud": "1.4.0"}.get(dist)
    )
    assert reason == (
        "pipecatcloud 1.4.0 cannot load its session types with pipecat-ai (TypeError: "
        "non-default argument 'room_url' follows default argument). This image supports "
        "pipecat-ai 0.0.78 or newer."
    )


def test_one_line_has_no_brackets_newlines_or_lone_surrogates():
    text = "Refusing to start:  a [b]\n\tc \ud800 é  "
    assert compat.one_line(text) == "Refusing to start: a (b) c \\ud800 é"


def test_a_fault_inside_a_check_never_refuses(capsys):
    def broken() -> str:
        raise RuntimeError("the check itself broke")

    assert compat.run_check("pipecat-ai", broken) is None
    assert capsys.readouterr().err == (
        "WARNING: The pipecat-ai check did not run (RuntimeError: the check itself broke).\n"
    )


def stub_pipecat(root: Path, version: str, files: dict[str, str]) -> Path:
    """A fake ``pipecat`` package with a dist-info naming ``version``."""
    (root / "pipecat").mkdir(parents=True)
    (root / "pipecat" / "__init__.py").write_text("")
    info = root / f"pipecat_ai-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: pipecat-ai\nVersion: {version}\n")
    for name, source in files.items():
        path = root / "pipecat" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root


BROKEN = "raise RuntimeError('kaboom [x]')"
THREAD_BOT = "thread_at_import_bot.py"
TYPES_OK = """
    from dataclasses import dataclass, field
    @dataclass
    class RunnerArguments:
        body: object = field(default_factory=dict, kw_only=True)
        session_id: object = field(default=None, kw_only=True)
    @dataclass
    class DailyRunnerArguments(RunnerArguments):
        room_url: str
        token: str = None
        must_have: int = field(kw_only=True)   # a field the image cannot fill: builds fail
    @dataclass
    class WebSocketRunnerArguments(RunnerArguments):
        websocket: object
    @dataclass
    class SmallWebRTCRunnerArguments(RunnerArguments):
        webrtc_connection: object
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.version_info < (3, 11), reason="3.10 serves plain asyncio bots instead")
@pytest.mark.parametrize(
    ("version", "files", "bot", "expected"),
    [
        ("0.0.50", {}, "waiting_bot.py",
         "Refusing to start: pipecat-ai 0.0.50 is too old for this image, which needs pipecat-ai "
         "0.0.78 or newer: upgrade pipecat-ai in the agent image and deploy again."),
        ("0.0.90", {"runner/__init__.py": "", "runner/types.py": BROKEN}, "waiting_bot.py",
         "Refusing to start: pipecat-ai 0.0.90 failed to import (RuntimeError: kaboom (x)): fix "
         "the agent image's dependencies."),
        ("0.0.95", {"runner/__init__.py": "", "runner/types.py": "class RunnerArguments: pass"},
         "waiting_bot.py",
         "Refusing to start: pipecat-ai 0.0.95 has no DailyRunnerArguments, "
         "WebSocketRunnerArguments, SmallWebRTCRunnerArguments in pipecat.runner.types, which this "
         "image builds session arguments on: pin a pipecat-ai release that provides them."),
        # Passes the first check; the session types then do not build (after the bot's import,
        # whose non-daemon thread must not keep the process alive).
        ("1.0.0", {"runner/__init__.py": "", "runner/types.py": TYPES_OK}, THREAD_BOT,
         f"Refusing to start: pipecatcloud {compat.installed_version('pipecatcloud')} with "
         "pipecat-ai 1.0.0 cannot build the "
         "DailySessionArguments this image hands bot() (TypeError: DailySessionArguments."
         "__init__() missing 1 required keyword-only argument: 'must_have'). This image supports "
         "pipecat-ai 0.0.78 or newer."),
    ],
)  # fmt: skip
async def test_refusal_in_a_child_process(tmp_path, version, files, bot, expected):
    stubs = stub_pipecat(tmp_path / "stubs", version, files)
    termination = tmp_path / "termination-log"
    env = {"PYTHONPATH": str(stubs), "PCC_TERMINATION_LOG_PATH": str(termination)}
    async with server_process(BOTS / bot, env=env, wait_ready=False) as server:
        with trio.fail_after(30):
            code = await server.wait_exit()
    assert code == 78
    line = termination.read_text()
    assert line == expected
    assert "\n" not in line
    assert f"CRITICAL: {line}\n" in server.text
    assert "Application startup complete" not in server.text


SITECUSTOMIZE = """
import sys
sys.path[:] = [FILTERED if p == SITE else p for p in sys.path]
"""


def site_without_pipecat(root: Path) -> Path:
    """A sitecustomize that swaps site-packages for a view of it without pipecat-ai."""
    import site as site_module

    site = next(p for p in site_module.getsitepackages() if Path(p, "trio").is_dir())
    filtered = root / "site-packages"
    filtered.mkdir(parents=True)
    for entry in Path(site).iterdir():
        if entry.name == "pipecat" or entry.name.startswith("pipecat_ai-"):
            continue
        (filtered / entry.name).symlink_to(entry)
    custom = root / "custom"
    custom.mkdir()
    (custom / "sitecustomize.py").write_text(
        f"FILTERED = {str(filtered)!r}\nSITE = {site!r}\n" + textwrap.dedent(SITECUSTOMIZE)
    )
    return custom


@pytest.mark.slow
@pytest.mark.skipif(sys.version_info < (3, 11), reason="3.10 serves plain asyncio bots instead")
async def test_missing_pipecat_is_refused_in_a_child_process(tmp_path):
    termination = tmp_path / "termination-log"
    env = {
        "PYTHONPATH": str(site_without_pipecat(tmp_path)),
        "PCC_TERMINATION_LOG_PATH": str(termination),
    }
    async with server_process(BOTS / "waiting_bot.py", env=env, wait_ready=False) as server:
        with trio.fail_after(30):
            assert await server.wait_exit() == 78
    assert termination.read_text() == (
        "Refusing to start: pipecat-ai is not installed, and this image needs pipecat-ai 0.0.78 "
        "or newer: add it to the agent image and deploy again."
    )
    assert "CRITICAL: Refusing to start: pipecat-ai is not installed" in server.text


# -- the session types, with dataclasses standing in for pipecatcloud's and pipecat's ----------


@dataclasses.dataclass
class _Args:
    session_id: str | None = None
    body: object = None


@dataclasses.dataclass
class _NoBody:
    session_id: str | None = None


def _typed(name: str, cls: type) -> type:
    return type(name, (cls,), {})


def agent_module(**overrides: object) -> ModuleType:
    """A ``pipecatcloud.agent`` whose types build, but for ``overrides`` (None: absent)."""
    agent = ModuleType("pipecatcloud.agent")

    @dataclasses.dataclass
    class Daily(_Args):
        room_url: str = ""
        token: str = ""

    @dataclasses.dataclass
    class WebSocket(_Args):
        websocket: object = None

    @dataclasses.dataclass
    class WebRTC(_Args):
        webrtc_connection: object = None

    types = {
        "DailySessionArguments": Daily,
        "PipecatSessionArguments": _typed("PipecatSessionArguments", _Args),
        "WebSocketSessionArguments": WebSocket,
        "SmallWebRTCSessionArguments": WebRTC,
        **overrides,
    }
    for name, cls in types.items():
        if cls is not None:
            setattr(agent, name, cls)
    return agent


def runner_types(runner: type) -> ModuleType:
    module = ModuleType("pipecat.runner.types")
    module.RunnerArguments = runner  # type: ignore[attr-defined]
    return module


VERSIONS = {"pipecatcloud": "0.2.0", "pipecat-ai": "0.0.85"}.get


def check(agent: ModuleType, runner: type = _Args) -> tuple[str | None, list[str]]:
    modules = {"pipecatcloud.agent": agent, "pipecat.runner.types": runner_types(runner)}
    return compat.check_session_types(modules.__getitem__, VERSIONS)


def test_current_types_are_silent():
    assert check(agent_module()) == (None, [])


def test_an_optional_type_that_is_absent_says_nothing():
    assert check(agent_module(SmallWebRTCSessionArguments=None)) == (None, [])


def test_an_optional_type_that_does_not_build_is_a_warning_in_the_contracts_words():
    @dataclasses.dataclass
    class Broken(_Args):  # as pipecatcloud with a pipecat whose base lost __post_init__
        webrtc_connection: object = None

        def __post_init__(self) -> None:
            super().__post_init__()  # type: ignore[misc]

    reason, warnings = check(agent_module(SmallWebRTCSessionArguments=Broken))
    assert reason is None
    assert warnings == [
        "pipecatcloud 0.2.0 with pipecat-ai 0.0.85 cannot build the SmallWebRTCSessionArguments "
        "this image hands bot() (AttributeError: 'super' object has no attribute "
        "'__post_init__'): the image serves without it, and the transports that need it are off."
    ]


def test_old_versions_get_the_contracts_deprecation_warnings():
    @dataclasses.dataclass
    class StandaloneWebSocket:  # pipecatcloud's own type, not pipecat's runner arguments
        session_id: str | None = None
        websocket: object = None

    reason, warnings = check(
        agent_module(WebSocketSessionArguments=StandaloneWebSocket), runner=_NoBody
    )
    assert reason is None
    assert warnings == [
        "pipecat-ai 0.0.85 is older than 0.0.91 and deprecated on this image, which supports "
        "pipecat-ai 0.0.78 or newer: a future release will need pipecat-ai 0.0.91 or newer, so "
        "upgrade it in the agent image.",
        "pipecatcloud 0.2.0's WebSocketSessionArguments does not take the request body, which "
        "is deprecated on this image: a future release will need pipecatcloud 0.2.1 or newer, "
        "so upgrade it in the agent image (or leave pipecatcloud to the image).",
    ]


def test_the_pipecat_deprecation_names_the_installed_pipecat_when_it_has_no_version():
    modules = {"pipecatcloud.agent": agent_module(), "pipecat.runner.types": runner_types(_NoBody)}
    _, warnings = compat.check_session_types(modules.__getitem__, lambda _dist: None)
    assert warnings[0].startswith("The installed pipecat-ai is older than 0.0.91")


@pytest.mark.slow
@pytest.mark.skipif(sys.version_info < (3, 11), reason="3.10 serves plain asyncio bots instead")
@pytest.mark.parametrize("lane", [False, True], ids=["lane-off", "lane-on"])
async def test_a_refusal_reaches_the_real_streams_whatever_the_bot_did_to_them(tmp_path, lane):
    stubs = stub_pipecat(
        tmp_path / "stubs", "1.0.0", {"runner/__init__.py": "", "runner/types.py": TYPES_OK}
    )
    env = {"PYTHONPATH": str(stubs), "PCC_TERMINATION_LOG_PATH": str(tmp_path / "termination")}
    if lane:
        env["PCC_LOG_DIR"] = str(tmp_path / "logs")
    bot = BOTS / "stream_hiding_bot.py"
    async with server_process(bot, env=env, wait_ready=False, capture_stdout=True) as server:
        with trio.fail_after(30):
            assert await server.wait_exit() == 78
    line = (tmp_path / "termination").read_text()
    assert line.startswith("Refusing to start: ")
    assert f"CRITICAL: {line}\n" in server.text  # the bot's StringIO did not swallow it
    assert server.stdout.decode() == "import-time print\n"  # flushed before os._exit
    if lane:
        records = [
            json.loads(r) for r in (tmp_path / "logs" / "bot.jsonl").read_text().splitlines()
        ]
        assert {k: v for k, v in records[-1].items() if k != "@timestamp"} == {
            "stream": "app",
            "level": "CRITICAL",
            "line": line,
        }
        assert {"stream": "stdout", "line": "import-time print"} in [
            {k: v for k, v in r.items() if k != "@timestamp"} for r in records
        ]
