"""``pipecat-base cloud``: Pipecat Cloud's start and Session API, locally, with no account.

``pipecat-base cloud run [BOT]`` starts the real server (``pipecat-base serve BOT``, as a child
process on a free port) and, in front of it, the two platform APIs a bot's clients use:

* ``POST /v1/public/{agent}/start`` -- ``{"body": {...}, "transport": "webrtc"}`` (both
  optional) starts a session as the platform does: a new session id, ``POST /bot`` with
  ``X-Daily-Session-Id``, ``X-PCC-Max-Session-Seconds`` (``--max-session-seconds``),
  ``X-Daily-Transport-Type`` and the body. It answers ``{"sessionId": ...}`` at once; the
  ``/bot`` request stays open until the bot ends, as on the platform.
* ``/v1/public/{agent}/sessions/{session_id}/{path}`` (any method, and WebSocket) -- the
  Session API: the request goes to the server's ``/{path}`` with ``x-daily-session-id`` added,
  and the server's answer comes back (``/api/offer`` for SmallWebRTC, the bot's own routes);
  a WebSocket is relayed message for message both ways.
* ``GET /v1/emulator/sessions`` -- the sessions started here and how their ``/bot`` ended;
  ``GET /v1/emulator/sessions/{id}?wait=ended`` answers once that one has ended.
* ``POST /v1/emulator/drain`` (or ``pipecat-base cloud drain``, or Ctrl-C) -- what a scale-down
  does: SIGTERM to the server, which drains its sessions; answers with the server's exit code
  and how long it took, then the emulator exits.

Daily rooms are not created (``createDailyRoom`` is refused): use a transport that needs no
room, such as ``webrtc``, or ``/ws`` on the server directly.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio
from quart import Response, request, websocket
from quart_trio import QuartTrio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from pipecat_base.startup.failures import find_failure

READY = re.compile(rb"Serving (?:module )?\S+ on (http://[\d.:\[\]a-z]+)")
# Headers the proxy does not forward: hop-by-hop ones, and those the client recomputes.
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
}  # fmt: skip
DEFAULT_PORT = 7860
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class StartedSession:
    """A session the emulator started, and how its ``/bot`` request ended."""

    session_id: str
    status: str = "running"
    http_status: int | None = None
    detail: Any = None
    ended: trio.Event = field(default_factory=trio.Event)

    def report(self) -> dict[str, Any]:
        return {"status": self.status, "http_status": self.http_status, "detail": self.detail}


@dataclass
class ServerChild:
    """The ``pipecat-base serve`` child process and the URL it announced."""

    process: trio.Process
    url: str = ""
    exit_code: int | None = None
    _ready: trio.Event = field(default_factory=trio.Event)

    async def relay_output(self) -> None:
        """Pass the server's stderr through to ours, noting the URL it serves on."""
        assert self.process.stderr is not None
        buffer = b""
        try:
            async for chunk in self.process.stderr:
                sys.stderr.buffer.write(chunk)
                sys.stderr.buffer.flush()
                if not self._ready.is_set():
                    buffer += chunk
                    match = READY.search(buffer)
                    if match:
                        self.url = match.group(1).decode()
                        self._ready.set()
        finally:
            self._ready.set()  # the server exited: nothing more to wait for

    async def wait_ready(self) -> None:
        """Until the server serves (`url` set) or has exited (`url` empty)."""
        await self._ready.wait()

    async def drain(self) -> tuple[int, float]:
        """SIGTERM, then wait for the exit: (exit code, seconds taken)."""
        began = time.monotonic()
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        self.exit_code = await self.process.wait()
        return self.exit_code, time.monotonic() - began


def create_emulator_app(
    agent: str,
    server_url: str,
    client: httpx.AsyncClient,
    nursery: trio.Nursery,
    *,
    max_session_seconds: float | None = None,
    drain: Any = None,
) -> QuartTrio:
    """The emulator's routes in front of the server at ``server_url``.

    Args:
        agent: The agent name the start and Session API paths must carry.
        server_url: The pipecat-base server's base URL.
        client: Used for every call to the server.
        nursery: Where the open ``/bot`` requests run.
        max_session_seconds: Sent as ``X-PCC-Max-Session-Seconds`` with each start.
        drain: ``async () -> (exit_code, seconds)``, the drain behind ``/v1/emulator/drain``;
            None when the emulator fronts a server it did not start.
    """
    app = QuartTrio("pipecat_base.emulator")
    sessions: dict[str, StartedSession] = {}

    def unknown_agent(name: str) -> tuple[Response, int] | None:
        if name == agent:
            return None
        return _error(f"no agent named {name!r} here (this emulator serves {agent!r})", 404)

    async def run_bot(session: StartedSession, headers: dict[str, str], body: Any) -> None:
        try:
            response = await client.post(
                f"{server_url}/bot", json=body, headers=headers, timeout=None
            )
        except httpx.HTTPError as exc:
            session.status, session.detail = "failed", f"{type(exc).__name__}: {exc}"
        else:
            session.status, session.http_status = "ended", response.status_code
            try:
                session.detail = response.json()
            except ValueError:
                session.detail = response.text
        finally:
            session.ended.set()

    @app.post("/v1/public/<name>/start")
    async def start(name: str) -> Any:
        # The body is read before any answer, refusals included: answered with its body still
        # on the way, a keep-alive connection lost the client's next request (Hypercorn with
        # quart-trio never read it), which hung tests under load.
        raw = await request.get_data()
        if (refusal := unknown_agent(name)) is not None:
            return refusal
        try:
            start_request = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            return _error(f"the start request is not valid JSON: {exc}", 400)
        if not isinstance(start_request, dict):
            return _error("the start request must be a JSON object", 400)
        if start_request.get("createDailyRoom"):
            return _error(
                "the emulator cannot create Daily rooms: start with a transport that needs "
                'none ("transport": "webrtc"), or call the server\'s /ws directly',
                400,
            )
        body = start_request.get("body", {})
        if not isinstance(body, dict):
            return _error("'body' must be a JSON object", 400)
        transport = start_request.get("transport")
        if transport is not None and not isinstance(transport, str):
            return _error("'transport' must be a string", 400)
        session = StartedSession(str(uuid.uuid4()))
        sessions[session.session_id] = session
        headers = {"X-Daily-Session-Id": session.session_id}
        if max_session_seconds is not None:
            headers["X-PCC-Max-Session-Seconds"] = f"{max_session_seconds:g}"
        if transport:
            headers["X-Daily-Transport-Type"] = transport
        nursery.start_soon(run_bot, session, headers, body)
        return {"sessionId": session.session_id}

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

    @app.route("/v1/public/<name>/sessions/<session_id>/<path:rest>", methods=methods)
    async def session_api(name: str, session_id: str, rest: str) -> Any:
        content = await request.get_data()  # before any answer (see `start`)
        if (refusal := unknown_agent(name)) is not None:
            return refusal
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["x-daily-session-id"] = session_id
        try:
            answer = await client.request(
                request.method,
                f"{server_url}/{rest}",
                params=list(request.args.items(multi=True)),
                content=content,
                headers=headers,
            )
        except httpx.HTTPError as exc:
            return _error(f"the server did not answer: {type(exc).__name__}: {exc}", 502)
        out_headers = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        out_headers.pop("content-encoding", None)  # httpx has decoded the body
        return Response(answer.content, status=answer.status_code, headers=out_headers)

    @app.websocket("/v1/public/<name>/sessions/<session_id>/<path:rest>")
    async def session_api_websocket(name: str, session_id: str, rest: str) -> Any:
        if (refusal := unknown_agent(name)) is not None:
            return refusal  # before accepting: an HTTP answer
        query = websocket.query_string.decode()
        target = server_url.replace("http", "ws", 1) + f"/{rest}" + (f"?{query}" if query else "")
        try:
            async with open_websocket_url(
                target, extra_headers=[(b"x-daily-session-id", session_id.encode())]
            ) as upstream:
                await websocket.accept()
                await _relay(upstream)
        except (HandshakeError, OSError) as exc:
            return _error(f"the server did not take the WebSocket: {exc}", 502)
        return None

    @app.get("/v1/emulator/sessions")
    async def list_sessions() -> Any:
        return {s.session_id: s.report() for s in sessions.values()}

    @app.get("/v1/emulator/sessions/<session_id>")
    async def one_session(session_id: str) -> Any:
        session = sessions.get(session_id)
        if session is None:
            return _error(f"no session {session_id!r} was started here", 404)
        if request.args.get("wait") == "ended":
            await session.ended.wait()
        return session.report()

    @app.post("/v1/emulator/drain")
    async def drain_server() -> Any:
        if drain is None:
            return _error("this emulator did not start the server, so it cannot drain it", 409)
        code, seconds = await drain()
        return {"exit_code": code, "seconds": round(seconds, 3)}

    return app


async def _relay(upstream: Any) -> None:
    """Messages both ways between the client's socket and the server's, until either closes."""
    async with trio.open_nursery() as nursery:

        async def down() -> None:
            try:
                while True:
                    await websocket.send(await upstream.get_message())
            except ConnectionClosed:
                pass
            nursery.cancel_scope.cancel()

        async def up() -> None:
            while True:
                await upstream.send_message(await websocket.receive())

        nursery.start_soon(down)
        nursery.start_soon(up)


def _error(message: str, status: int) -> tuple[Response, int]:
    response = Response(json.dumps({"error": message}), content_type="application/json")
    return response, status


class ServerDidNotStart(Exception):
    """The server exited before it served (its own output says why)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the server exited with code {code} before serving: see its output above")
        self.code = code


def _die_with_parent() -> None:
    # In the child, before it runs: the kernel sends it SIGTERM when the emulator dies, however
    # it dies (a test killing it, an OOM kill), so no server is left listening on its own.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the emulator's own exit still drains it
        pass


@asynccontextmanager
async def open_server_child(bot: str | None) -> AsyncIterator[ServerChild]:
    """``pipecat-base serve BOT`` on a free port of 127.0.0.1 (the rest of its settings from
    this process' environment); SIGTERM'd and awaited at the end unless already drained."""
    argv = [sys.executable, "-m", "pipecat_base", "serve", *([bot] if bot else [])]
    child_env = {**os.environ, "HOST": "127.0.0.1", "PORT": "0"}
    process = await trio.lowlevel.open_process(
        argv,
        env=child_env,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )
    child = ServerChild(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child.relay_output)
            with trio.fail_after(120):
                await child.wait_ready()
            if not child.url:
                raise ServerDidNotStart(await process.wait())
            yield child
            with trio.CancelScope(shield=True):
                await child.drain()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


async def run(options: argparse.Namespace) -> int:
    import hypercorn.trio
    from hypercorn.config import Config

    stop = trio.Event()
    async with (
        open_server_child(options.bot) as child,
        httpx.AsyncClient(timeout=30) as client,
        trio.open_nursery() as nursery,
    ):

        async def drain() -> tuple[int, float]:
            result = await child.drain()
            stop.set()
            return result

        app = create_emulator_app(
            options.agent, child.url, client, nursery,
            max_session_seconds=options.max_session_seconds, drain=drain,
        )  # fmt: skip
        config = Config()
        config.bind = [f"{options.host}:{options.port}"]
        config.accesslog = None
        config.graceful_timeout = 1.0

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    await drain()
                    return

        served = trio.Event()

        async def serve(task_status: trio.TaskStatus[list[str]]) -> None:
            # Returns after Hypercorn's graceful shutdown: the drain's own answer is out.
            await hypercorn.trio.serve(
                app, config, shutdown_trigger=stop.wait, task_status=task_status
            )
            served.set()

        nursery.start_soon(watch_signals)
        binds = await nursery.start(serve)
        remember_url(binds[0])
        print(
            f"Pipecat Cloud emulator for agent {options.agent!r} on {binds[0]} "
            f"(server {child.url}); start a session with: curl -X POST "
            f"{binds[0]}/v1/public/{options.agent}/start -d '{{\"body\": {{}}}}'",
            file=sys.stderr,
            flush=True,
        )
        await served.wait()
        nursery.cancel_scope.cancel()
    print(f"Server exited with code {child.exit_code}", file=sys.stderr, flush=True)
    return 0 if child.exit_code == 0 else 1


def url_file() -> Path:
    """Where ``cloud run`` notes its URL, so ``cloud drain`` finds it whatever the port."""
    return Path(tempfile.gettempdir()) / f"pipecat-base-cloud-{os.getuid()}.url"


def remember_url(url: str) -> None:
    try:
        url_file().write_text(url)
    except OSError:
        pass  # drain then needs --url


def last_url() -> str:
    try:
        return url_file().read_text().strip() or f"http://127.0.0.1:{DEFAULT_PORT}"
    except OSError:
        return f"http://127.0.0.1:{DEFAULT_PORT}"


def drain_command(options: argparse.Namespace) -> int:
    url = options.url or last_url()
    response = httpx.post(f"{url.rstrip('/')}/v1/emulator/drain", timeout=None)
    print(response.text)
    return 0 if response.status_code == 200 and response.json().get("exit_code") == 0 else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pipecat-base cloud",
        description="A local Pipecat Cloud: the platform's start and Session APIs in front of "
        "a pipecat-base server running your bot.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser(
        "run",
        help="serve BOT behind the platform's APIs",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run_parser.add_argument("bot", nargs="?", help="as for pipecat-base serve")
    run_parser.add_argument("--agent", default="my-agent", help="the agent name in the paths")
    run_parser.add_argument("--host", default="127.0.0.1")
    run_parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0: any free port")
    run_parser.add_argument(
        "--max-session-seconds", type=float, default=None,
        help="sent as X-PCC-Max-Session-Seconds with every start (default: none)",
    )  # fmt: skip
    drain_parser = sub.add_parser("drain", help="drain the server behind a running emulator")
    drain_parser.add_argument(
        "--url", help="the emulator's URL (default: the last `cloud run`'s, else port 7860)"
    )
    options = parser.parse_args(argv)
    if options.command == "drain":
        return drain_command(options)
    if options.max_session_seconds is not None and not options.max_session_seconds > 0:
        parser.error("--max-session-seconds must be greater than 0")
    try:
        return trio.run(run, options)
    except BaseException as exc:
        failed = find_failure(exc, ServerDidNotStart)
        if failed is None:
            raise
        print(f"pipecat-base cloud: {failed}", file=sys.stderr)
        return failed.code or 1
