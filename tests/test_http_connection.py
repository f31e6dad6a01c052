"""`http_connection.DirectHTTPConnection`: quart-trio's HTTP handling in the request's own
task. Real Hypercorn with pipecat-base's connection classes, real sockets on 127.0.0.1; each
behaviour is checked against quart-trio's own connection class too."""

from __future__ import annotations

import gc
import hashlib

import httpx
import pytest
import trio
from hypercorn.config import Config
from quart import request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection

from pipecat_base._speedups.app_inbox import AppInbox
from pipecat_base._speedups.http_connection import DirectHTTPConnection, DirectRequest

from .hypercorn_serving import LEAN, STOCK, open_tcp, serving
from .steps import counting_steps

CONNECTIONS = pytest.mark.parametrize(
    "connection", [TrioASGIHTTPConnection, DirectHTTPConnection], ids=["quart-trio", "direct"]
)
REQUESTS_CLASSES = pytest.mark.parametrize(
    "request_class", [None, DirectRequest], ids=["quart-trio-request", "direct-request"]
)


class Probe:
    """What the routes saw."""

    def __init__(self) -> None:
        self.entered = trio.Event()
        self.cancelled = trio.Event()


def make_app(connection: type, probe: Probe, request_class: type | None = None) -> QuartTrio:
    app = QuartTrio(__name__)
    app.asgi_http_class = connection
    if request_class is not None:
        app.request_class = request_class

    @app.post("/digest")
    async def digest() -> dict:
        data = await request.get_data()
        return {"length": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    @app.get("/wait")
    async def wait() -> str:
        probe.entered.set()
        try:
            await trio.sleep_forever()
        finally:
            probe.cancelled.set()
        return ""

    @app.get("/boom")
    async def boom() -> str:
        raise RuntimeError("the route failed")

    @app.get("/ok")
    async def ok() -> str:
        return "ok"

    return app


def http_url(ws_url: str) -> str:
    return ws_url.replace("ws://", "http://")


@CONNECTIONS
@REQUESTS_CLASSES
async def test_a_body_sent_in_parts_after_the_headers_reaches_the_route_whole(
    autojump_clock, connection, request_class
):
    body = bytes(range(256)) * 1024  # 256 KiB: several reads, several ASGI messages

    async def parts():
        for start in range(0, len(body), 32 * 1024):
            yield body[start : start + 32 * 1024]
            await trio.sleep(0.01)  # the route is already waiting for the rest

    app = make_app(connection, Probe(), request_class)
    async with serving(LEAN, Config(), app) as url:
        async with httpx.AsyncClient(base_url=http_url(url)) as client:
            response = await client.post("/digest", content=parts())
    assert response.status_code == 200
    assert response.json() == {
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }


@CONNECTIONS
async def test_a_client_leaving_before_the_answer_cancels_the_route(connection):
    probe = Probe()
    async with serving(LEAN, Config(), make_app(connection, probe)) as url:
        stream = await open_tcp(url)
        await stream.send_all(b"GET /wait HTTP/1.1\r\nhost: test\r\n\r\n")
        with trio.fail_after(5):
            await probe.entered.wait()
            await stream.aclose()
            await probe.cancelled.wait()


@CONNECTIONS
async def test_a_failing_route_answers_500_and_the_connection_serves_on(connection):
    async with serving(LEAN, Config(), make_app(connection, Probe())) as url:
        async with httpx.AsyncClient(base_url=http_url(url)) as client:
            assert (await client.get("/boom")).status_code == 500
            assert (await client.get("/ok")).text == "ok"
            assert (await client.post("/digest", content=b"x")).json()["length"] == 1


async def test_keep_alive_requests_are_answered_under_stock_hypercorn_too():
    # Stock Hypercorn's reader hands messages over a plain channel: quart-trio's own
    # connection runs, unchanged.
    async with serving(STOCK, Config(), make_app(DirectHTTPConnection, Probe())) as url:
        async with httpx.AsyncClient(base_url=http_url(url)) as client:
            for n in range(3):
                response = await client.post("/digest", content=b"x" * n)
                assert response.json()["length"] == n


async def test_the_quart_test_client_is_served_by_quart_trios_connection():
    client = make_app(DirectHTTPConnection, Probe()).test_client()
    response = await client.post("/digest", data=b"abc")
    assert (await response.get_json())["length"] == 3


REQUESTS = 20


async def tasks_and_steps(connection: type, request_class: type | None = None) -> tuple[int, int]:
    """Trio tasks spawned and steps taken per keep-alive ``POST`` (body and all)."""
    spawned = 0

    class Spawns(trio.abc.Instrument):
        def task_spawned(self, task: trio.lowlevel.Task) -> None:
            nonlocal spawned
            spawned += 1

    app = make_app(connection, Probe(), request_class)
    async with serving(LEAN, Config(), app) as url:
        async with httpx.AsyncClient(base_url=http_url(url)) as client:
            await client.post("/digest", content=b"warm-up")
            spawns = Spawns()
            trio.lowlevel.add_instrument(spawns)
            with counting_steps("._handle", ".handle_request", ".handle_messages") as steps:
                for _ in range(REQUESTS):
                    await client.post("/digest", content=b"{}")
            trio.lowlevel.remove_instrument(spawns)
    return spawned // REQUESTS, sum(steps.counts.values()) // REQUESTS


async def test_a_request_runs_in_the_task_hypercorn_started_for_it():
    stock_tasks, stock_steps = await tasks_and_steps(TrioASGIHTTPConnection)
    direct_tasks, direct_steps = await tasks_and_steps(DirectHTTPConnection)
    # quart-trio: Hypercorn's task for the request, and two more in a nursery inside it (one
    # reading the body, one running the route). Direct: Hypercorn's task alone, which also
    # runs the route.
    assert (stock_tasks, direct_tasks) == (3, 1)
    assert direct_steps < stock_steps


@CONNECTIONS
async def test_http2_requests_are_answered_on_one_connection(connection):
    async with serving(LEAN, Config(), make_app(connection, Probe())) as url:
        async with httpx.AsyncClient(base_url=http_url(url), http1=False, http2=True) as client:
            for n in range(5):
                response = await client.post("/digest", content=b"x" * n)
                assert response.http_version == "HTTP/2"
                assert response.json()["length"] == n


async def test_the_disconnect_reported_inside_the_last_send_cuts_nothing_short():
    # Hypercorn puts the request's closing `http.disconnect` from inside the app's last send
    # (the stream closes as the answer completes); the server's work after it in that send
    # must not be cancelled.
    inbox = AppInbox(10)
    finished: list[str] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            await inbox.put({"type": "http.disconnect"})
            await trio.lowlevel.checkpoint()  # the rest of the server's send
            finished.append("last send")

    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/digest",
        "raw_path": b"/digest",
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    await inbox.put({"type": "http.request", "body": b"abc", "more_body": False})
    app = make_app(DirectHTTPConnection, Probe())
    await DirectHTTPConnection(app, scope)(inbox.receive, send)
    assert finished == ["last send"]


@REQUESTS_CLASSES
async def test_a_body_over_max_content_length_is_refused_413(request_class):
    app = make_app(DirectHTTPConnection, Probe(), request_class)
    app.config["MAX_CONTENT_LENGTH"] = 10
    async with serving(LEAN, Config(), app) as url:
        async with httpx.AsyncClient(base_url=http_url(url)) as client:
            declared = await client.post("/digest", content=b"x" * 100)

            async def undeclared():  # chunked: refused once the body grows past the limit
                yield b"x" * 100

            grown = await client.post("/digest", content=undeclared())
            fits = await client.post("/digest", content=b"x" * 10)
    assert (declared.status_code, grown.status_code, fits.status_code) == (413, 413, 200)


@pytest.mark.usefixtures("all_speedups")
async def test_a_body_that_came_with_its_request_is_read_without_a_scheduling_round():
    _, quart_trio_request = await tasks_and_steps(DirectHTTPConnection)
    _, direct_request = await tasks_and_steps(DirectHTTPConnection, DirectRequest)
    # The whole request in one Trio step: quart-trio's body waits on its completion event, and
    # a Trio event already set still yields a round. (quart-trio 0.13, on Python 3.13, also
    # yields to queue each body part: 3 steps.)
    assert quart_trio_request >= 2
    assert direct_request == 1


async def test_a_finished_request_leaves_no_reference_cycle_for_the_collector():
    # The route's sink held the request, whose push-promise sender held Hypercorn's stream,
    # which held the inbox and so the sink: every request's objects waited for a collection.
    async with serving(
        LEAN, Config(), make_app(DirectHTTPConnection, Probe(), DirectRequest)
    ) as url:
        async with httpx.AsyncClient(base_url=http_url(url)) as client:
            await client.post("/digest", content=b"warm-up")
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                for _ in range(REQUESTS):
                    await client.post("/digest", content=b"{}")
                gc.collect()
                ours = [o for o in gc.garbage if isinstance(o, (AppInbox, DirectHTTPConnection))]
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
    assert ours == []
