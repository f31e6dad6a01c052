"""Real HTTP peers on 127.0.0.1 for the server to talk to: the ICE sidecar, the Graph API.

Each is a small Quart-Trio app served by Hypercorn in the test's nursery, so the server under
test makes genuine HTTP requests (aiohttp, on its asyncio loop) and the test reads what arrived.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import hypercorn.trio
import trio
from hypercorn.config import Config
from quart import jsonify, request
from quart_trio import QuartTrio


@asynccontextmanager
async def serve_app(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1 for the block; yields its base URL."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = 0.1
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(hypercorn.trio.serve, app, config, shutdown_trigger=stop.wait, mode="asgi")
        )
        yield binds[0]
        stop.set()


def ice_sidecar(servers: list[dict[str, Any]] | None = None, status: int = 200) -> QuartTrio:
    """The platform's ICE config sidecar: ``GET /ice-servers``."""
    app = QuartTrio("fake_ice")

    @app.get("/ice-servers")
    async def ice_servers() -> Any:
        return jsonify({"iceConfig": {"iceServers": servers or []}}), status

    return app


@dataclass
class GraphApi:
    """What the fake Graph API was asked: ``(path, authorization, json)`` per request."""

    requests: list[tuple[str, str | None, Any]] = field(default_factory=list)
    succeed: bool = True

    def app(self) -> QuartTrio:
        app = QuartTrio("fake_graph")

        @app.post("/<version>/<phone_number_id>/calls")
        async def calls(version: str, phone_number_id: str) -> Any:
            body = await request.get_json()
            self.requests.append((request.path, request.headers.get("Authorization"), body))
            if not self.succeed:
                return jsonify({"error": {"message": "call not found", "code": 138006}}), 400
            return jsonify({"success": True})

        return app
