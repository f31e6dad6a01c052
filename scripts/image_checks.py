"""Build the real container images with podman, run them, and check what a platform relies on.

Run by ``scripts/test-image`` (which installs podman first), from ``.ci/run``:

1. a Debian rootfs (``mmdebstrap``; bookworm has Python 3.11, trixie 3.13) with uv from PyPI,
   imported as the local base image, since upstream images cannot be pulled here;
2. the project's ``Dockerfile`` built FROM it (``BASE_IMAGE``), tagged
   ``dailyco/pipecat-base:latest``, the name the agent Dockerfiles build FROM;
3. ``examples/agent-image`` built with its uv and its pip Dockerfile;
4. each agent container run (host network, a free port) and checked: ``/pre-app.sh`` ran before
   the server, ``/livez``, a ``POST /bot`` session, a ``/ws`` Twilio echo call answered byte for
   byte, the runtime intact beside the agent's environment, an idle ``podman stop`` (SIGTERM
   through tini) exiting 0 within 1 s; and, on the uv image, a stop that drains a running call;
5. image sizes and cold start (``podman start`` to ``/livez`` 200) printed.

Exit status 0 when every check passed. The rootfs image is kept and reused (``--rebuild-rootfs``
makes it anew); the built images are removed at the end unless ``--keep-images``.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "telephony"))
import protocol  # noqa: E402  (the bundled caller's Media Streams messages)

PODMAN = ["podman", "--storage-driver=vfs", "--cgroup-manager=cgroupfs", "--runtime", "runc"]
ULIMITS = ["--ulimit", "nofile=16384:16384", "--ulimit", "nproc=32768:32768"]
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_TAG = "docker.io/dailyco/pipecat-base:latest"
AGENT = ROOT / "examples" / "agent-image"
PRE_APP = 'echo "pre-app: ran" >&2\n'
FRAMES = 50  # one second of Twilio media: 20 ms frames of 8 kHz mu-law
# pipecat's Twilio serializer hangs up through Twilio's REST API and refuses to start without
# credentials; these make it start (the hang-up after the call fails, and is only logged).
AGENT_ENV = {"TWILIO_ACCOUNT_SID": "ACimagetest", "TWILIO_AUTH_TOKEN": "image-test"}


def podman(*args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    out = subprocess.PIPE if quiet else None
    result = subprocess.run([*PODMAN, *args], stdout=out, stderr=out, text=True)
    if check and result.returncode != 0:
        detail = (result.stderr or "").strip()[-2000:] if quiet else ""
        raise SystemExit(f"podman {' '.join(args[:2])} failed ({result.returncode}) {detail}")
    return result


def podman_out(*args: str) -> str:
    result = subprocess.run([*PODMAN, *args], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def image_exists(tag: str) -> bool:
    return podman("image", "exists", tag, check=False, quiet=True).returncode == 0


def build_args() -> list[str]:
    # RUN steps reach the registries through the host's network and trust its CA bundle (this
    # machine's proxy); the image's SSL_CERT_FILE points uv at the same path.
    mount = ["-v", f"{HOST_CA}:{HOST_CA}:ro"] if HOST_CA.exists() else []
    return ["--network=host", *mount, *ULIMITS]


def build_rootfs(tag: str, suite: str) -> None:
    with tempfile.TemporaryDirectory() as work:
        tarball = Path(work) / "rootfs.tar"
        hooks = [
            f'cp {HOST_CA} "$1/tmp/host-ca.crt"' if HOST_CA.exists() else "true",
            'chroot "$1" env -i PATH=/usr/bin:/bin python3 -m pip install --no-cache-dir'
            " --break-system-packages"
            + (" --cert /tmp/host-ca.crt" if HOST_CA.exists() else "")
            + " uv",
            'rm -f "$1/tmp/host-ca.crt"',
        ]
        command = [
            "mmdebstrap",
            "--quiet",
            "--variant=minbase",
            "--include=python3,python3-pip,ca-certificates",
            *(f"--customize-hook={hook}" for hook in hooks),
            suite,
            str(tarball),
            "http://deb.debian.org/debian",
        ]
        subprocess.run(command, check=True)
        podman("import", str(tarball), tag)


def build(tag: str, context: Path, dockerfile: Path, *extra: str) -> float:
    # --layers=false: one commit per image. vfs storage copies the whole tree for every layer
    # it commits, so a layer per instruction cost minutes and ~20 GB per build; downloads are
    # still cached across builds by the Dockerfiles' cache mounts.
    started = time.monotonic()
    podman(
        "build", "--layers=false", *build_args(), "-f", str(dockerfile), "-t", tag, *extra,
        str(context),
    )  # fmt: skip
    return time.monotonic() - started


def size_mb(tag: str) -> float:
    return int(podman_out("image", "inspect", "--format", "{{.Size}}", tag)) / 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Report:
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        (self.passed if ok else self.failed).append(name)
        print(f"{'PASS' if ok else 'FAIL'}  {name}{'' if ok else ': ' + detail}", flush=True)
        return ok


@dataclass
class Container:
    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        result = subprocess.run([*PODMAN, "logs", self.name], capture_output=True, text=True)
        return result.stdout + result.stderr

    def exit_code(self) -> int:
        return int(podman_out("inspect", "--format", "{{.State.ExitCode}}", self.name))

    def stop(self, timeout: int = 60) -> float:
        started = time.monotonic()
        podman("stop", "-t", str(timeout), self.name, quiet=True)
        return time.monotonic() - started


def create(image: str, name: str, pre_app: Path, env: dict[str, str]) -> Container:
    podman("rm", "-f", name, check=False, quiet=True)
    port = free_port()
    settings = {"PORT": str(port), **AGENT_ENV, **env}
    environment = [arg for k, v in settings.items() for arg in ("-e", f"{k}={v}")]
    podman(
        "create", "--name", name, "--network=host", *ULIMITS, *environment,
        "-v", f"{pre_app}:/app/pre-app.sh:ro", image, quiet=True,
    )  # fmt: skip
    return Container(name, port)


async def wait_live(container: Container, limit: float = 60.0) -> float:
    """Start the container; seconds from ``podman start`` to ``/livez`` answering 200."""
    started = time.monotonic()
    await trio.to_thread.run_sync(lambda: podman("start", container.name, quiet=True))
    async with httpx.AsyncClient(timeout=2) as client:
        with trio.fail_after(limit):
            while True:
                try:
                    if (await client.get(f"{container.url}/livez")).status_code == 200:
                        return time.monotonic() - started
                except httpx.TransportError:
                    pass
                await trio.sleep(0.02)


@dataclass
class Call:
    """A Twilio Media Streams caller: sends frames, collects what the bot plays back."""

    ws: object
    heard: bytearray = field(default_factory=bytearray)
    sent: int = 0
    _grew: trio.Event = field(default_factory=trio.Event)

    async def listen(self) -> None:
        try:
            while True:
                self.heard.extend(protocol.media_payload(await self.ws.get_message()) or b"")
                self._grew.set()
                self._grew = trio.Event()
        except ConnectionClosed:
            pass

    async def speak(self, frames: list[bytes]) -> None:
        for frame in frames:
            await self.ws.send_message(protocol.media("twilio", self.sent, frame))
            self.sent += 1

    async def heard_at_least(self, size: int, limit: float = 20.0) -> None:
        with trio.move_on_after(limit):
            while len(self.heard) < size:
                await self._grew.wait()


async def twilio_echo(container: Container, session_id: str) -> tuple[bytes, bytes]:
    frames = protocol.test_audio("twilio", FRAMES)
    url = container.url.replace("http://", "ws://") + "/ws"
    headers = [("X-Daily-Session-Id", session_id)]
    async with open_websocket_url(url, extra_headers=headers) as ws, trio.open_nursery() as n:
        call = Call(ws)
        n.start_soon(call.listen)
        for message in protocol.handshake("twilio"):
            await ws.send_message(message)
        await call.speak(frames)
        await call.heard_at_least(sum(map(len, frames)))
        await ws.send_message(protocol.stop("twilio"))
        n.cancel_scope.cancel()
    return b"".join(frames), bytes(call.heard)


async def check_serving(report: Report, label: str, container: Container, version: str) -> None:
    """``/livez``, a ``/bot`` session and a ``/ws`` call, against a started container."""
    async with httpx.AsyncClient(timeout=30) as client:
        live = await client.get(f"{container.url}/livez")
        report.check(f"{label}: /livez 200", live.status_code == 200, live.text)
        bot = await client.post(
            f"{container.url}/bot", headers={"X-Daily-Session-Id": f"{label}-bot"}, json={}
        )
        report.check(
            f"{label}: POST /bot answered 200 {{}} once bot() ended",
            bot.status_code == 200 and bot.json() == {},
            f"{bot.status_code} {bot.text}",
        )
    sent, heard = await twilio_echo(container, f"{label}-call")
    report.check(
        f"{label}: /ws Twilio call echoed byte for byte",
        heard == sent,
        f"sent {len(sent)} bytes, heard {len(heard)}",
    )
    logs = container.logs()
    first = logs.lstrip().splitlines()[0] if logs.strip() else ""
    report.check(f"{label}: /app/pre-app.sh ran before the server", first == "pre-app: ran", first)
    started = f'Starting bot session with metadata: {{"session_id": "{label}-bot", '
    report.check(
        f"{label}: session logged with the image's version",
        started in logs and f'"image_version": "{version}"' in logs,
        "no start line with the image version",
    )
    report.check(
        f"{label}: both sessions ran to their end",
        logs.count("agent: session over") == 2,
        f"{logs.count('agent: session over')} ended",
    )


def check_runtime_intact(report: Report, container: Container) -> None:
    runtime = podman(
        "exec", container.name, "/opt/pipecat-base/.venv/bin/python", "-c",
        "import trio, hypercorn, quart_trio, trio_asyncio, pipecat_base.cli", check=False,
        quiet=True,
    )  # fmt: skip
    report.check(
        "uv: the runtime's environment is whole after the agent's uv sync --locked",
        runtime.returncode == 0,
        runtime.stderr,
    )
    probe = "import importlib.util as u; print(u.find_spec('trio') is None, u.find_spec('pipecat'))"
    agent = podman("exec", container.name, "/app/.venv/bin/python", "-c", probe, quiet=True)
    only_agent, pipecat = agent.stdout.split(maxsplit=1)
    report.check(
        "uv: the agent's environment holds its own lock (pipecat, no trio)",
        only_agent == "True" and "/app/.venv/" in pipecat,
        agent.stdout,
    )


def check_idle_stop(report: Report, label: str, container: Container) -> None:
    elapsed = container.stop()
    code = container.exit_code()
    report.check(
        f"{label}: idle podman stop exits 0 within 1 s",
        code == 0 and elapsed < 1.0,
        f"exit {code} after {elapsed:.2f}s",
    )


async def check_drain(report: Report, container: Container, shutdown_timeout: int) -> None:
    """SIGTERM during a call: the call goes on until the caller hangs up, then exit 0."""
    frames = protocol.test_audio("twilio", FRAMES)
    url = container.url.replace("http://", "ws://") + "/ws"
    stopped_after: list[float] = []
    async with trio.open_nursery() as nursery:
        async with open_websocket_url(url, extra_headers=[("X-Daily-Session-Id", "drain")]) as ws:
            call = Call(ws)
            nursery.start_soon(call.listen)
            for message in protocol.handshake("twilio"):
                await ws.send_message(message)
            await call.speak(frames[:10])
            await call.heard_at_least(sum(map(len, frames[:10])))

            nursery.start_soon(lambda: _stop_in_thread(container, stopped_after))
            draining = await _wait_draining(container)
            report.check("drain: /readyz says draining after SIGTERM", draining, "never draining")
            await call.speak(frames[10:])
            await call.heard_at_least(sum(map(len, frames)))
            report.check(
                "drain: the running call is still echoed while draining",
                bytes(call.heard) == b"".join(frames),
                f"heard {len(call.heard)} of {sum(map(len, frames))} bytes",
            )
            hung_up = time.monotonic()
            await ws.send_message(protocol.stop("twilio"))
        # The socket is closed: the bot ends, the drain finds no session left, the server exits.
    after = stopped_after[0] - hung_up
    code = container.exit_code()
    logs = container.logs()
    report.check(
        "drain: exit 0 soon after the call ended, not at SHUTDOWN_TIMEOUT",
        code == 0 and after < shutdown_timeout / 2,
        f"exit {code}, {after:.2f}s after hang-up",
    )
    report.check(
        "drain: the call's session ended by itself, not cancelled",
        'Stopping bot session with metadata: {"session_id": "drain"' in logs
        and "Bot session stopped: shutdown" not in logs,
        "no clean stop line for the drained call",
    )
    report.figures["drain: exit after hang-up"] = f"{after:.2f} s"


async def _stop_in_thread(container: Container, out: list[float]) -> None:
    await trio.to_thread.run_sync(container.stop)
    out.append(time.monotonic())


async def _wait_draining(container: Container) -> bool:
    async with httpx.AsyncClient(timeout=2) as client:
        with trio.move_on_after(10):
            while True:
                response = await client.get(f"{container.url}/readyz")
                if response.status_code == 503 and "draining" in response.text:
                    return True
                await trio.sleep(0.02)
    return False


async def check_agent(
    report: Report, label: str, image: str, pre_app: Path, version: str, extra: Callable | None
) -> None:
    container = create(image, f"pipecat-agent-{label}", pre_app, {})
    cold = await wait_live(container)
    report.figures[f"cold start, {label} agent (podman start to /livez 200)"] = f"{cold:.2f} s"
    try:
        await check_serving(report, label, container, version)
        if extra is not None:
            extra(report, container)
        check_idle_stop(report, label, container)
    finally:
        podman("rm", "-f", container.name, check=False, quiet=True)


async def check_all(args: argparse.Namespace, report: Report) -> None:
    rootfs = f"localhost/pipecat-base-rootfs:{args.suite}"
    if args.rebuild_rootfs or not image_exists(rootfs):
        print(f"== rootfs: Debian {args.suite} with uv (mmdebstrap)", flush=True)
        build_rootfs(rootfs, args.suite)
    print("== base image", flush=True)
    seconds = build(
        BASE_TAG, ROOT, ROOT / "Dockerfile",
        "--build-arg", f"BASE_IMAGE={rootfs}", "--build-arg", f"VERSION={args.version}",
    )  # fmt: skip
    report.figures["build, base image"] = f"{seconds:.0f} s"
    for kind, dockerfile in (("uv", "Dockerfile"), ("pip", "Dockerfile.pip")):
        print(f"== agent image ({kind})", flush=True)
        seconds = build(f"localhost/pipecat-agent:{kind}", AGENT, AGENT / dockerfile)
        report.figures[f"build, {kind} agent image"] = f"{seconds:.0f} s"
    for tag in (BASE_TAG, "localhost/pipecat-agent:uv", "localhost/pipecat-agent:pip"):
        report.figures[f"size, {tag}"] = f"{size_mb(tag):.0f} MB"
    python = podman_out("run", "--rm", *ULIMITS, "--entrypoint", "python3", rootfs, "-V")
    report.figures["Python"] = python

    with tempfile.TemporaryDirectory() as work:
        pre_app = Path(work) / "pre-app.sh"
        pre_app.write_text(PRE_APP)
        pre_app.chmod(0o644)
        await check_agent(
            report, "uv", "localhost/pipecat-agent:uv", pre_app, args.version, check_runtime_intact
        )
        await check_agent(report, "pip", "localhost/pipecat-agent:pip", pre_app, args.version, None)

        shutdown_timeout = 30
        container = create(
            "localhost/pipecat-agent:uv", "pipecat-agent-drain", pre_app,
            {"SHUTDOWN_TIMEOUT": str(shutdown_timeout)},
        )  # fmt: skip
        try:
            await wait_live(container)
            await check_drain(report, container, shutdown_timeout)
        finally:
            podman("rm", "-f", container.name, check=False, quiet=True)
    if not args.keep_images:
        # Each image is gigabytes on vfs: leave only the rootfs, which the next run reuses.
        for tag in (BASE_TAG, "localhost/pipecat-agent:uv", "localhost/pipecat-agent:pip"):
            podman("rmi", "-f", tag, check=False, quiet=True)
    podman("image", "prune", "-f", check=False, quiet=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="bookworm", help="Debian suite of the local base")
    parser.add_argument("--version", default="0.0.0-image-test", help="the VERSION build arg")
    parser.add_argument("--rebuild-rootfs", action="store_true")
    parser.add_argument(
        "--keep-images", action="store_true", help="keep the built images (to try them by hand)"
    )
    args = parser.parse_args()
    report = Report()
    trio.run(check_all, args, report)
    print("\n== figures")
    for name, value in report.figures.items():
        print(f"{name}: {value}")
    print(f"images: {len(report.passed)} passed, {len(report.failed)} failed")
    sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
    main()
