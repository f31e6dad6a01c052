"""The container image, checked without a Docker daemon.

* the Dockerfile passes hadolint and states the rules the image depends on;
* its exact CMD runs under Debian's tini against an /app-like directory, as the container does;
* the image's environment layout is rebuilt here: the runtime in its own environment, an
  agent project's ``uv sync --locked --no-install-project --no-dev`` in another, the server
  started from the runtime -- and a pipecat bot served through ``/bot`` and ``/ws``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from .conftest import needs_pipecat
from .process import BOTS, server_process

ROOT = Path(__file__).parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
RUNTIME_SCRIPT = "/opt/pipecat-base/.venv/bin/pipecat-base"
TINI = shutil.which("tini")
needs_tini = pytest.mark.skipif(TINI is None, reason="tini is not installed (.ci/run installs it)")


def instruction(name: str) -> list[str]:
    """The arguments of every ``NAME`` instruction, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.*)$", joined, re.MULTILINE)]


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_states_the_rules_the_image_depends_on():
    assert instruction("ARG")[:2] == [
        "PYTHON_VERSION=3.12",
        "BASE_IMAGE=ghcr.io/astral-sh/uv:python${PYTHON_VERSION}-bookworm-slim",
    ]
    assert instruction("FROM") == ["${BASE_IMAGE}"]
    assert json.loads(instruction("ENTRYPOINT")[0]) == ["/usr/bin/tini", "-e", "143", "--"]
    (cmd,) = instruction("CMD")
    assert json.loads(cmd)[:2] == ["sh", "-c"]
    script = json.loads(cmd)[2]
    assert script.startswith("if [ -f /app/pre-app.sh ]; then sh /app/pre-app.sh; fi && exec ")
    assert script.endswith(f"exec {RUNTIME_SCRIPT} serve /app/bot.py")
    runs = " ".join(instruction("RUN"))
    assert "uv sync --locked --no-install-project --no-dev" in runs
    assert "--mount=type=cache,target=/root/.cache/uv" in runs
    assert "--mount=type=bind,source=uv.lock,target=/opt/pipecat-base/uv.lock" in runs
    assert "--mount=type=bind,source=pyproject.toml,target=/opt/pipecat-base/pyproject.toml" in runs
    assert "tini" in runs
    envs = " ".join(instruction("ENV"))
    assert "UV_COMPILE_BYTECODE=1" in envs
    assert "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" in envs
    assert 'PATH="/app/.venv/bin:/opt/pipecat-base/.venv/bin:$PATH"' in envs
    assert "PIPECAT_BOT_VENV=/app/.venv" in envs
    assert "IMAGE_VERSION=${VERSION}" in envs
    assert "VERSION=0.0.0" in instruction("ARG")
    labels = " ".join(instruction("LABEL"))
    for label in (
        'daily.co/pipecat-cloud-base-version="${VERSION}"',
        "org.opencontainers.image.version=",
        "org.opencontainers.image.source=",
        "org.opencontainers.image.licenses=",
        "org.opencontainers.image.title=",
    ):
        assert label in labels
    copies = instruction("COPY")
    assert "pipecat_base ./pipecat_base" in copies
    assert "pipecatcloud_system ./pipecatcloud_system" in copies
    assert instruction("WORKDIR")[-1] == "/app"


def container_command(app: Path, runtime_script: str) -> list[str]:
    """The image's ENTRYPOINT + CMD, pointed at this machine's tini, ``app`` and runtime."""
    entrypoint = json.loads(instruction("ENTRYPOINT")[0])
    cmd = json.loads(instruction("CMD")[0])
    script = cmd[2].replace(RUNTIME_SCRIPT, runtime_script).replace("/app/", f"{app}/")
    return [TINI or "tini", *entrypoint[1:], *cmd[:2], script]


def app_dir(tmp_path: Path, bot: str, pre_app: str | None = None) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(BOTS / bot, app / "bot.py")
    if pre_app is not None:
        (app / "pre-app.sh").write_text(pre_app)
    return app


def process_info(pid: int) -> tuple[int, str]:
    """A process' parent pid and the program it runs (its argv[1]: the script python runs)."""
    parent = int(Path(f"/proc/{pid}/stat").read_text().split()[3])
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return parent, argv[1].decode()


LOCAL_RUNTIME = str(Path(sys.executable).parent / "pipecat-base")


@needs_tini
async def test_container_start_runs_pre_app_then_serves_and_sigterm_exits_0(tmp_path):
    marker = tmp_path / "pre-app-ran"
    app = app_dir(tmp_path, "waiting_bot.py", pre_app=f"echo ran > {marker}\n")
    argv = container_command(app, LOCAL_RUNTIME)
    async with server_process(argv=argv, cwd=app) as server:
        assert marker.read_text() == "ran\n"
        tini_pid = server.process.pid
        pgrep = await trio.run_process(["pgrep", "-P", str(tini_pid)], capture_stdout=True)
        python_pid = int(pgrep.stdout.split()[0])
        parent, command = process_info(python_pid)
        assert parent == tini_pid  # the server's parent is tini: Python is not PID 1
        assert command.endswith("pipecat-base")  # sh exec'd it: SIGTERM reaches it directly
        code, elapsed = await server.terminate()
    assert code == 0
    assert elapsed < 1.0, elapsed


@needs_tini
async def test_failing_pre_app_hook_stops_the_start(tmp_path):
    app = app_dir(tmp_path, "waiting_bot.py", pre_app="echo hook failed >&2\nexit 3\n")
    argv = container_command(app, LOCAL_RUNTIME)
    async with server_process(argv=argv, cwd=app, wait_ready=False) as server:
        with trio.fail_after(30):
            code = await server.wait_exit()
    assert code == 3
    assert "hook failed" in server.text
    assert "Application startup complete" not in server.text


@needs_tini
async def test_sigterm_to_tini_during_a_slow_bot_import_exits_0_promptly(tmp_path):
    app = app_dir(tmp_path, "slow_import_bot.py")
    argv = container_command(app, LOCAL_RUNTIME)
    async with server_process(argv=argv, cwd=app, wait_ready=False) as server:
        with trio.fail_after(30):
            await server.wait_for_output(b"IMPORTING")
        code, elapsed = await server.terminate()
    assert code == 0
    assert elapsed < 1.0, elapsed
    assert "SIGTERM received before the server was up; nothing to drain, exiting" in server.text


def uv(*args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
    clean = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")
    }
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run(
        ["uv", *args, "--python", python], cwd=cwd, env={**clean, **(env or {})}, check=True,
        capture_output=True,
    )  # fmt: skip


@needs_pipecat
@pytest.mark.slow
async def test_agent_uv_sync_does_not_remove_the_runtime_and_its_bot_is_served(tmp_path, logs):
    # The image's layout, rebuilt: runtime in /opt/pipecat-base/.venv ...
    runtime = tmp_path / "opt" / "pipecat-base" / ".venv"
    await trio.to_thread.run_sync(
        lambda: uv(
            "sync",
            "--locked",
            "--no-dev",
            "--no-editable",
            cwd=ROOT,
            env={"UV_PROJECT_ENVIRONMENT": str(runtime)},
        )
    )
    # ... and the agent's own project synced into /app/.venv exactly as its Dockerfile does.
    app = tmp_path / "app"
    app.mkdir()
    for name in ("pyproject.toml", "uv.lock", "bot.py"):
        shutil.copy(ROOT / "examples" / "agent-image" / name, app / name)
    await trio.to_thread.run_sync(
        lambda: uv("sync", "--locked", "--no-install-project", "--no-dev", cwd=app)
    )
    agent_site = next((app / ".venv" / "lib").glob("python3.*/site-packages"))
    assert not (agent_site / "trio").exists()  # the agent's lock does not list our runtime
    assert (next((runtime / "lib").glob("python3.*/site-packages")) / "trio").exists()

    env = {"PIPECAT_BOT_VENV": str(app / ".venv"), "VIRTUAL_ENV": str(app / ".venv")}
    argv = [str(runtime / "bin" / "pipecat-base"), "serve", str(app / "bot.py")]
    async with server_process(argv=argv, cwd=app, env=env) as server:
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(f"{server.url}/bot", json={})
            assert response.status_code == 200
        sys.path.insert(0, str(ROOT / "examples" / "telephony"))
        import protocol

        url = server.url.replace("http://", "ws://") + "/ws"
        frames = protocol.test_audio("exotel", 4)
        async with open_websocket_url(url) as ws:
            for message in protocol.handshake("exotel"):
                await ws.send_message(message)
            for i, frame in enumerate(frames):
                await ws.send_message(protocol.media("exotel", i, frame))
            heard = b""
            with trio.fail_after(20):
                while len(heard) < sum(map(len, frames)):
                    heard += protocol.media_payload(await ws.get_message()) or b""
        assert heard == b"".join(frames)
        server.signal(signal.SIGTERM)
    text = server.text
    assert f"Agent environment first on sys.path: {agent_site}" in text
    # The rule for packages both sides import: the agent's environment wins.
    for name in ("pipecat", "pipecatcloud", "pydantic", "loguru", "starlette", "aiohttp"):
        assert re.search(rf"agent: {name} from {re.escape(str(agent_site))}/{name}/", text), name
    assert "Shared package version" not in text
    assert text.count("agent: session over") == 2
