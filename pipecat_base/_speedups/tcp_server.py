"""Hypercorn's per-connection server, minus what it pays per frame and per request for nothing.

Hypercorn's trio worker runs one ``TCPServer`` per connection. On the media path each inbound
WebSocket frame is one socket read and each outbound frame one send, and these cost a
noticeable share of a call's CPU (``py-spy`` on 10 pipecat calls, see ``bench/NOTES.md``):

* every read is wrapped in ``trio.fail_after(read_timeout or inf)`` -- with no read timeout
  configured (ours) a cancel scope that can never fire, built and torn down per read;
* trio's socket read tries first and waits after: a frame arrives while the reader waits, so
  the first try fails with EAGAIN (a syscall and an exception) on almost every frame;
* every send takes ``send_lock`` with ``trio.Lock.acquire``, every received frame goes to the
  app with ``MemorySendChannel.send``, and trio's socket send yields after sending; each is a
  fairness round, a whole Trio task step per frame, although the caller yields anyway before
  it could send or read again;
* every received frame crosses a memory channel to the app's task -- for a bridged app, only
  for a pump task to hand it on to asyncio;
* every request on a keep-alive connection cancels the connection's idle task when it begins
  and starts a new one (a task spawn, a ``nursery.start`` handshake and two lock rounds) when
  it ends -- five Trio steps of the twenty a ``POST /bot`` took;
* h11 ends a response that has a length with an empty write, a system call for nothing;
* once a connection is a WebSocket, every read still goes through Hypercorn's protocol wrapper
  and h11 layer (a buffer copy, an event object and a loop of type checks) only to be passed on
  to the WebSocket stream unchanged.

`LeanTCPServer` reads with `receive_some` (wait, then read; no scope) when no read timeout is
set, sends with `send_all` (no yield when the kernel takes the data at once) on plain TCP,
skips empty writes, hands a WebSocket's bytes straight to its stream once h11 only passes
them through (and the whole simple frames among them straight to the app: `ws_frames`), and
takes the send lock with `checkpoints.acquire` (`frame_writer` takes it
without waiting, from the asyncio side). Its idle timeout is
one task per connection whose deadline requests move (`IdleTimer`), and which ends with the
connection. `LeanTaskGroup` gives each app an `AppInbox`, which puts with `checkpoints.send`
and which `asgi_bridge` and `http_connection` take over, so the reader hands frames and body
parts straight to their consumer. With a read timeout or TLS, Hypercorn's own reads and sends
run. Everything else -- protocol handling, closing -- is Hypercorn's. The speedups' `install`
makes Hypercorn's trio worker use them (``tcp_server`` and ``app_inbox``).
``tests/test_tcp_server.py`` runs real Hypercorn with and without them: the steps per frame
(one in each direction instead of two and three), the idle timeout, shutdown, and the
read-timeout and close behaviour are checked against stock Hypercorn, so an upgrade that
changes what this overrides fails there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from math import inf
from types import TracebackType
from typing import Any, cast

import h11
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.events import Data
from hypercorn.protocol.h11 import STREAM_ID, H11Protocol, H11WSConnection
from hypercorn.protocol.ws_stream import WSStream
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.task_group import _handle as hypercorn_handle
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer

from pipecat_base._speedups import checkpoints, switch, ws_frames
from pipecat_base._speedups.app_inbox import AppInbox


class SendLock:
    """Hypercorn's send lock (an ``async with`` lock), taken without a fairness round.

    Not owned by a task (a semaphore of one, not a ``trio.Lock``): `frame_writer` takes it in
    the asyncio loop's task and, when a frame did not fit in the kernel's buffer, the bridge's
    send task finishes the frame and releases it.
    """

    def __init__(self) -> None:
        self._free = trio.Semaphore(1)

    async def __aenter__(self) -> None:
        if switch.on("checkpoints"):
            await checkpoints.acquire(self._free)
        else:
            await self._free.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def take_nowait(self) -> bool:
        """Take the lock if it is free; False if a send holds it or waits for it."""
        try:
            self._free.acquire_nowait()
        except trio.WouldBlock:
            return False
        return True

    def release(self) -> None:
        self._free.release()


class IdleTimer:
    """When an idle connection is to be closed: Hypercorn's idle task, without a task per request.

    Hypercorn closes a connection that stays idle (no request under way) for
    ``keep_alive_timeout``, or that is idle once the worker is terminating; a request under way
    is never cut. It does so with a task it cancels when a request begins and starts anew when
    it ends. Here one task per connection waits in `wait_until_due`, and `busy` and `idle`
    only move its deadline -- no task step at all on a keep-alive request. A termination that
    arrives while a request is under way takes effect when it ends, as with Hypercorn (whose
    new idle task would find the worker terminated at once).

    Unlike Hypercorn's, the task ends with the connection (`stop`): Hypercorn's idle task
    outlives a connection its client closed while idle, holding the connection's task group
    for the rest of the timeout.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._idle = True
        # The scope `wait_until_due` waits in; its deadline is when an idle connection closes.
        self._scope = trio.CancelScope()
        self._wake_when_idle = False
        self._stopped = False

    def busy(self) -> None:
        """A request began: the connection is not closed until `idle`."""
        self._idle = False
        self._scope.deadline = inf

    def idle(self) -> None:
        """The connection is idle from now on: the timeout starts over."""
        self._idle = True
        if self._wake_when_idle:
            self._scope.cancel()  # the worker terminated meanwhile: close now
        else:
            self._scope.deadline = trio.current_time() + self._timeout

    def stop(self) -> None:
        """The connection has ended: `wait_until_due` returns False."""
        self._stopped = True
        self._scope.cancel()

    async def wait_until_due(self, terminated: Any) -> bool:
        """Return True once the connection is to be closed: idle for the timeout, or idle
        while or after ``terminated`` (Hypercorn's worker-wide event) is set; False if it
        ended otherwise (`stop`)."""
        if self._stopped:
            return False
        # A new connection starts idle.
        with trio.CancelScope(deadline=trio.current_time() + self._timeout) as self._scope:
            await terminated.wait()
        if self._stopped:
            return False
        # The deadline passed (it is only ever finite while idle; a request that began as it
        # passed is closed on, as Hypercorn's idle task would), or the worker terminated.
        if self._idle or not terminated.is_set():
            return True
        # Terminated while a request is under way: close once it has ended.
        self._wake_when_idle = True
        with trio.CancelScope() as self._scope:
            await trio.sleep_forever()
        return not self._stopped


class JsonErrorH11Protocol(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol, whose own refusals (a request h11 cannot parse: 400, an
    unsupported one: 505, ...) carry a JSON ``{"detail": ...}`` body like every other answer
    of the server, instead of an empty one."""

    async def _send_error_response(self, status_code: int) -> None:
        try:
            phrase = HTTPStatus(status_code).phrase
        except ValueError:
            phrase = "Error"
        body = json.dumps({"detail": phrase}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *self.config.response_headers("h11"),
        ]
        await self._send_h11_event(h11.Response(status_code=status_code, headers=headers))
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())


# Hypercorn's HTTP/1.1 protocol as it comes, and as `LeanTCPServer` answers its refusals.
_H11_CLASSES = (H11Protocol, JsonErrorH11Protocol)


class LeanTaskGroup(TaskGroup):
    """Hypercorn's per-connection task group; each app's events arrive through an `AppInbox`.

    The app is run exactly as Hypercorn's own ``spawn_app`` runs it (its ``_handle``: errors
    logged, ``send(None)`` at the end); only the channel between reader and app differs.
    """

    async def spawn_app(
        self,
        app: Any,
        config: Config,
        scope: Any,
        send: Callable[[Any], Awaitable[None]],
    ) -> Callable[[Any], Awaitable[None]]:
        inbox = AppInbox(config.max_app_queue_size)
        assert self._nursery is not None
        handle: Any = hypercorn_handle  # typed for Hypercorn's own ASGI types
        self._nursery.start_soon(
            handle,
            app,
            config,
            scope,
            inbox.receive,
            send,
            trio.to_thread.run_sync,
            trio.from_thread.run,
        )
        return inbox.put


async def receive_some(stream: trio.SocketStream) -> bytes:
    """``stream.receive_some(MAX_RECV)`` that waits for data before reading.

    A frame arrives after the reader has gone back to wait for the next, so reading first (as
    trio does) fails with EAGAIN almost every time: a syscall and an exception per frame. When
    data is already there, the wait returns at the next scheduler round, as trio's yield after
    a successful read would. ``b""`` at EOF; ``trio.ClosedResourceError`` once the stream is
    closed (also while waiting), ``trio.BrokenResourceError`` when the peer reset it.
    """
    sock = stream.socket
    while True:
        fd = sock.fileno()
        if fd == -1:
            raise trio.ClosedResourceError("the connection is closed")
        await trio.lowlevel.wait_readable(fd)
        if sock.fileno() != fd:  # closed while waiting: the number may belong to another
            raise trio.ClosedResourceError("the connection is closed")
        try:
            return os.read(fd, MAX_RECV)
        except BlockingIOError:
            continue
        except OSError as exc:
            raise trio.BrokenResourceError(f"socket receive failed: {exc!r}") from exc


async def receive_websocket_data(websocket: WSStream, data: bytes) -> None:
    """What Hypercorn's h11 layer does with a WebSocket's bytes, minus the layers; the whole
    simple frames they begin with go to the app past wsproto when that is the same
    (`ws_frames`)."""
    if switch.on("ws_frames") and ws_frames.at_message_boundary(websocket):
        messages, used = ws_frames.whole_messages(data, websocket.buffer.max_length)
        for message in messages:
            await websocket.app_put(message)  # type: ignore[misc]  # set once accepted
        if used == len(data):
            return
        data = data[used:]
    await websocket.handle(Data(stream_id=STREAM_ID, data=data))


def write_some(stream: trio.SocketStream, data: bytes | memoryview) -> int:
    """Write what the kernel takes at once of ``data`` to ``stream``'s socket: the count (0
    when its buffer is full). ``trio.ClosedResourceError`` once the stream is closed or shut
    for writing, ``trio.BrokenResourceError`` when the peer is gone. Never waits."""
    sock = stream.socket
    fd = sock.fileno()
    if fd == -1 or sock.did_shutdown_SHUT_WR:
        raise trio.ClosedResourceError("the connection is closed")
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise trio.BrokenResourceError(f"socket send failed: {exc!r}") from exc


async def send_all(stream: trio.SocketStream, data: bytes | memoryview) -> None:
    """``stream.send_all(data)`` minus its yield when the kernel takes the data at once.

    trio's socket send ends with a scheduling round even when the data went straight into the
    kernel's buffer: a whole Trio step per outbound frame. Hypercorn's callers yield again
    before they send more (the bridge's pump receives its next message), and when the buffer is
    full this falls back to ``send_all``, which waits for room and yields, shielded from
    cancellation as Hypercorn shields its sends (a frame is never cut short). No cancel scope
    when it does not wait: nothing could be cancelled.
    """
    sent = write_some(stream, data)
    if sent < len(data):
        with trio.CancelScope(shield=True):
            await stream.send_all(memoryview(data)[sent:])


class LeanTCPServer(TCPServer):
    """Hypercorn's ``TCPServer`` with the per-frame costs above removed (see module)."""

    send_lock: SendLock  # type: ignore[assignment]  # Hypercorn's is a trio.Lock

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.send_lock = SendLock()
        self._idle_timer = IdleTimer(self.config.keep_alive_timeout)
        # Plain TCP on POSIX: the socket's descriptor can be read and written directly.
        self.plain = os.name == "posix" and isinstance(self.stream, trio.SocketStream)

    @property
    def socket_stream(self) -> trio.SocketStream:
        """The connection's stream, where `plain` says it is a socket's."""
        return cast(trio.SocketStream, self.stream)

    async def _read_data(self) -> None:
        # Hypercorn builds the connection's protocol just before it reads: its HTTP/1.1 one
        # answers its own refusals in JSON from here on (same class, one method more).
        protocol = getattr(self.protocol, "protocol", None)
        if type(protocol) is H11Protocol:
            protocol.__class__ = JsonErrorH11Protocol
        try:
            if self.config.read_timeout or not self.plain:
                await super()._read_data()
            else:
                await self._read_plain()
        finally:
            # Nothing is read any more: the connection ends now, not when an idle timeout
            # would have closed it.
            self._idle_timer.stop()

    async def _read_plain(self) -> None:
        websocket: WSStream | None = None
        while True:
            try:
                data = await receive_some(self.socket_stream)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                break
            if websocket is None:
                websocket = self._websocket_stream()
            if websocket is not None and data:
                await receive_websocket_data(websocket, data)
                continue
            await self.protocol.handle(RawData(data))
            if data == b"":
                break
        await self.protocol.handle(Closed())

    def _websocket_stream(self) -> WSStream | None:
        """The WebSocket this HTTP/1.1 connection was upgraded to, once its h11 layer only
        passes bytes through to it (nothing left in its buffer); None until then."""
        protocol = getattr(self.protocol, "protocol", None)
        if not isinstance(protocol, H11Protocol) or type(protocol) not in _H11_CLASSES:
            return None
        connection, stream = protocol.connection, protocol.stream
        if isinstance(connection, H11WSConnection) and not connection.buffer:
            return stream if isinstance(stream, WSStream) else None
        return None

    async def protocol_send(self, event: Event) -> None:
        if self.plain and isinstance(event, RawData):  # every frame: checked first
            if not event.data:
                return  # h11 ends a response with a length with no bytes: nothing to write
            async with self.send_lock:
                await self.send_locked(event.data)
        elif isinstance(event, Updated):
            # Hypercorn's run() started `_idle_timeout` once, for the whole connection.
            if event.idle:
                self._idle_timer.idle()
            else:
                self._idle_timer.busy()
        else:
            await super().protocol_send(event)

    async def send_locked(self, data: bytes | memoryview) -> None:
        """Send ``data`` whole, with the send lock held by the caller (shielded if it has to
        wait); a connection found broken or closed is handled as Hypercorn does."""
        try:
            await send_all(self.socket_stream, data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self.protocol.handle(Closed())

    async def _idle_timeout(self) -> None:
        if await self._idle_timer.wait_until_due(self.context.terminated):
            with trio.CancelScope(shield=True):
                await self._initiate_server_close()
