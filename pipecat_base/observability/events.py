"""Event publishing: what a session's observers report, POSTed as JSON to the platform.

With ``PIPECAT_EVENT_PUBLISHER_ENDPOINT`` set (a full URL, route included), every event a
session publishes goes out as one POST of::

    {"ts": "2026-12-04T21:30:00.123456+00:00", "session_id": "...", "event_name": "...",
     "event_uuid": "<uuid4>", "event_properties": {...}}

``ts`` is UTC with microseconds, taken when the event happened; ``event_properties`` is left out
when empty. Envelope strings are 1-255 characters and properties stay under 10 KB: an event
outside those limits, or one that does not serialise, is dropped with a WARNING.

How it stays out of the bot's way: `publish` is synchronous and never waits. It queues the
event in the current session's `SessionOutbox` (a bounded Trio channel; when it is full the
event is dropped) and returns; outside a session, or without an endpoint, it does nothing. Each
session's sender runs beside the bot in the session's nursery and posts the events in order
through the process' one HTTP client (5 s timeout). A failure logs
``[pcc-observability] Event publish failed: <status>`` (or ``... error: <e>``); after 10 in a
row the session stops publishing, with one WARNING. When the bot has ended, what is still
queued gets `FLUSH_GRACE` seconds to go out.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import trio
from loguru import logger

if TYPE_CHECKING:
    import httpx

PREFIX = "[pcc-observability]"
TIMEOUT = 5.0
MAX_FAILURES = 10
MAX_STRING = 255
MAX_PROPERTIES_BYTES = 10 * 1024 - 1
OUTBOX_SIZE = 512
# Seconds a session's queued events may take to go out once its bot has ended (the session's
# stop line, and the /bot answer, wait for them).
FLUSH_GRACE = 1.0

_OUTBOX: ContextVar[SessionOutbox | None] = ContextVar("pipecat_base_outbox", default=None)


def content_allowed() -> bool:
    """Whether the current session may publish conversation content (transcripts): it
    publishes at all, and ``PCC_EXCLUDE_CONTENT`` does not exclude content."""
    outbox = _OUTBOX.get()
    return outbox is not None and outbox.include_content


def publish(event_name: str, properties: Mapping[str, Any] | None = None) -> None:
    """Queue an event for the current session; never waits, never raises.

    Does nothing outside a session or when no endpoint is configured. Call from either side
    (Trio or asyncio code of the session): the outbox is found through the session's context.
    """
    outbox = _OUTBOX.get()
    if outbox is not None:
        outbox.put(event_name, properties)


class SessionOutbox:
    """One session's queue of serialised events, and its run of failures."""

    def __init__(self, session_id: str, *, include_content: bool = True) -> None:
        self.session_id = session_id
        self.include_content = include_content
        self._send, self.receive = trio.open_memory_channel[bytes](OUTBOX_SIZE)
        self.failures = 0
        self.dropped = 0
        # A bot's threads (asyncio.to_thread copies the session's context) publish too: their
        # events are handed to the Trio thread, which alone may touch the channel.
        self._thread = threading.get_ident()
        self._token = trio.lowlevel.current_trio_token()

    def put(self, event_name: str, properties: Mapping[str, Any] | None) -> None:
        try:
            envelope = envelope_for(self.session_id, event_name, properties)
        except (TypeError, ValueError) as exc:
            logger.warning(f"{PREFIX} Event {event_name} dropped: {exc}")
            return
        if threading.get_ident() != self._thread:
            try:
                self._token.run_sync_soon(self._queue, envelope)
            except trio.RunFinishedError:
                pass
            return
        self._queue(envelope)

    def _queue(self, envelope: bytes) -> None:
        try:
            self._send.send_nowait(envelope)
        except trio.WouldBlock:
            self.dropped += 1
            if self.dropped == 1:
                logger.warning(
                    f"{PREFIX} The event publisher is behind; dropping events of this session"
                )
        except trio.ClosedResourceError:
            pass  # the session has ended

    def close(self) -> None:
        self._send.close()


def envelope_for(session_id: str, event_name: str, properties: Mapping[str, Any] | None) -> bytes:
    """The JSON body of one event.

    Raises:
        ValueError: a string outside 1-255 characters, or properties of 10 KB or more.
        TypeError: properties that do not serialise.
    """
    for field, value in (("session_id", session_id), ("event_name", event_name)):
        if not isinstance(value, str) or not 0 < len(value) <= MAX_STRING:
            raise ValueError(f"its {field} must be 1-{MAX_STRING} characters")
    envelope: dict[str, Any] = {
        "ts": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "session_id": session_id,
        "event_name": event_name,
        "event_uuid": str(uuid.uuid4()),
    }
    if properties:
        size = len(json.dumps(properties, separators=(",", ":"), allow_nan=False).encode())
        if size > MAX_PROPERTIES_BYTES:
            raise ValueError(f"its properties are {size} bytes, over {MAX_PROPERTIES_BYTES}")
        envelope["event_properties"] = dict(properties)
    return json.dumps(envelope, separators=(",", ":"), allow_nan=False).encode()


class EventPublisher:
    """The process' HTTP client for the event endpoint, and each session's sender."""

    def __init__(
        self, endpoint: str, client: httpx.AsyncClient, *, include_content: bool = True
    ) -> None:
        self.endpoint = endpoint
        self.include_content = include_content
        self._client = client

    @classmethod
    @asynccontextmanager
    async def open(
        cls, endpoint: str, *, include_content: bool = True
    ) -> AsyncIterator[EventPublisher]:
        """The publisher for the serving lifetime (one connection pool for all sessions).

        Args:
            endpoint: ``PIPECAT_EVENT_PUBLISHER_ENDPOINT``.
            include_content: False when ``PCC_EXCLUDE_CONTENT`` excludes transcripts.
        """
        import httpx  # only a process that publishes pays for the import

        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            yield cls(endpoint, client, include_content=include_content)

    @asynccontextmanager
    async def session(
        self, session_id: str | None, nursery: trio.Nursery
    ) -> AsyncIterator[SessionOutbox | None]:
        """Publish for ``session_id`` while the block runs: `publish` in the block's context
        (and in asyncio tasks created in it) reaches this session's sender.

        The sender runs in ``nursery`` (the supervisor's) and is joined when the block ends:
        what is still queued then gets `FLUSH_GRACE` seconds, shielded, so even a session
        cancelled from outside hands its last events over within that bound. A session
        without an id publishes nothing: the platform files events by session.
        """
        if not session_id:
            yield None
            return
        outbox = SessionOutbox(session_id, include_content=self.include_content)
        flush = trio.CancelScope()
        sent = trio.Event()
        nursery.start_soon(self._send_all, outbox, flush, sent)
        token = _OUTBOX.set(outbox)
        try:
            yield outbox
        finally:
            _OUTBOX.reset(token)
            outbox.close()
            flush.deadline = trio.current_time() + FLUSH_GRACE
            with trio.CancelScope(shield=True):
                await sent.wait()

    async def _send_all(
        self, outbox: SessionOutbox, flush: trio.CancelScope, sent: trio.Event
    ) -> None:
        try:
            with flush:
                async for envelope in outbox.receive:
                    if outbox.failures >= MAX_FAILURES:
                        continue  # given up for this session: drain without sending
                    failure = await self._post(envelope)
                    if failure is None:
                        outbox.failures = 0
                        continue
                    logger.warning(f"{PREFIX} {failure}")
                    outbox.failures += 1
                    if outbox.failures == MAX_FAILURES:
                        logger.warning(
                            f"{PREFIX} {MAX_FAILURES} publishes failed in a row; "
                            "not publishing again this session"
                        )
        finally:
            sent.set()

    async def _post(self, envelope: bytes) -> str | None:
        try:
            response = await self._client.post(
                self.endpoint, content=envelope, headers={"Content-Type": "application/json"}
            )
        except Exception as exc:  # whatever the network does, the session goes on
            return f"Event publish error: {str(exc) or type(exc).__name__}"
        if response.status_code >= 400:
            return f"Event publish failed: {response.status_code}"
        return None
