"""sandboxd, the daemon: one asyncio loop serving the wire protocol on a unix socket.

The server core knows nothing about containers. Every operation is an entry of the
table in ``operations.py`` (name, params class, result type, handler method);
:func:`build_services`, the composition root, builds the services and serves each
entry. A request's params are built into the entry's frozen params class (every
problem listed, nothing done) before its handler runs. Other code can plug in too::

    server.register("x.echo", echo)                               # echo(ctx, params: dict)
    server.register("x.attach", attach, streaming=True)           # may use ctx.receive()
    server.register_cleanup("container", remove_container)        # for ctx.session.track
    server.on_startup(open_store)                                 # before the socket opens
    server.on_shutdown(stop_containers)                           # on SIGTERM/SIGINT

Each request runs as its own task, so one connection can have many requests in flight.
A handler returns the ``ok`` value or raises: a ``SandboxError`` becomes an error reply with
its code; anything else is logged with its traceback and becomes ``internal``. No request
can take the daemon down.

Limits (all in :class:`DaemonConfig`): the frame size; a partial frame must complete
within ``frame_timeout`` or the connection is dropped; at most ``max_connections``
connections (the next gets an error frame and is closed); at most ``max_inflight``
requests per connection; writes wait for the client to read (a transport buffer of
64 KiB, then ``send_event`` blocks), and queued stdin per request is capped at
``stdin_buffer`` bytes (then the connection's reader waits), so neither a slow nor a fast
client can grow the daemon's memory without bound.

Sessions: after ``session.open`` the connection owns a :class:`Session`; handlers tie
objects to it (``ctx.session.track("container", cid)`` or ``add_cleanup(fn)``) and when
the connection drops, its cleanups run in reverse order.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import functools
import itertools
import logging
import os
import platform
import resource
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import click
import uvloop

from . import operations, protocol, streams
from .errors import (Cancelled, Conflict, Internal, InvalidArgument, LimitExceeded,
                     SandboxError, Unavailable)
from .daemonconfig import LOG_LEVELS, DaemonConfig, load_config
from .protocol import DEFAULT_ROOT, DEFAULT_SOCKET, Params
from .version import __version__

log = logging.getLogger("sandboxd")

SERVER_NAME = f"sandboxd/{__version__}"
FEATURES = ("events", "stdin", "resize", "cancel", "sessions", "networks", "quiet-run")
BUILT_KEPT = 64             # requests whose built params are kept (a loop of runs: one)
BUILT_BODY_MAX = 16 * 1024  # bytes after the id; a longer request is built each time

Handler = Callable[["RequestContext", dict], Awaitable[Any]]
Cleanup = Callable[[], Awaitable[None]]
KindCleanup = Callable[[str], Awaitable[None]]


# ---------------------------------------------------------------- sessions

@dataclass
class _CleanupEntry:
    what: str
    fn: Cleanup
    key: tuple[str, str] | None = None


class Session:
    """Objects tied to one client connection, removed when that connection drops."""

    def __init__(self, server: Server, session_id: str, label: str):
        self.id = session_id
        self.label = label
        self._server = server
        self._entries: list[_CleanupEntry] = []

    def add_cleanup(self, fn: Cleanup, what: str = "") -> None:
        """Run ``await fn()`` when the session ends (last added runs first)."""
        self._entries.append(_CleanupEntry(what or getattr(fn, "__qualname__", repr(fn)), fn))

    def track(self, kind: str, obj_id: str) -> None:
        """Tie object ``obj_id`` to the session; at its end the cleanup registered with
        ``server.register_cleanup(kind, fn)`` runs as ``await fn(obj_id)``."""
        fn = self._server._kind_cleanups.get(kind)
        if fn is None:
            raise ValueError(f"no cleanup registered for kind {kind!r}; call "
                             f"server.register_cleanup({kind!r}, fn) first")
        self.untrack(kind, obj_id)
        self._entries.append(_CleanupEntry(f"{kind} {obj_id}", functools.partial(fn, obj_id),
                                           (kind, obj_id)))

    def untrack(self, kind: str, obj_id: str) -> None:
        """Forget a tracked object (e.g. it was removed explicitly)."""
        self._entries = [e for e in self._entries if e.key != (kind, obj_id)]

    def tracked(self, kind: str) -> list[str]:
        return [e.key[1] for e in self._entries if e.key and e.key[0] == kind]

    async def _close(self) -> None:
        entries, self._entries = self._entries, []
        if entries:
            log.info("session %s%s ended: cleaning up %d object(s)", self.id,
                     f" ({self.label})" if self.label else "", len(entries))
        for entry in reversed(entries):
            try:
                await entry.fn()
                log.info("session %s: cleaned up %s", self.id, entry.what)
            except Exception:  # one failed cleanup must not stop the others
                log.exception("session %s: cleanup of %s failed", self.id, entry.what)


# ---------------------------------------------------------------- requests

class ConnectionClosed(Unavailable):
    """The client's connection is gone; nothing more can be sent on it."""


class _Inbox:
    """A streaming request's client frames. Queued stdin is capped at ``budget`` bytes:
    beyond it ``put`` waits, which stops the connection's reader (flow control) instead
    of buffering without bound."""

    def __init__(self, budget: int):
        self._items: collections.deque[tuple[str, Any, int]] = collections.deque()
        self._bytes = 0
        self._budget = budget
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._closed = False

    async def put(self, kind: str, value: Any, size: int, wait: float) -> bool:
        """Queue a frame (dropped if the request ended). False when no space came
        within ``wait`` seconds; the frame is then not queued."""
        try:
            async with asyncio.timeout(wait):
                while not self._closed and self._bytes and self._bytes + size > self._budget:
                    self._space.clear()
                    await self._space.wait()
        except TimeoutError:
            return False
        if not self._closed:
            self._items.append((kind, value, size))
            self._bytes += size
            self._ready.set()
        return True

    async def get(self) -> tuple[str, Any]:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        kind, value, size = self._items.popleft()
        self._bytes -= size
        self._space.set()
        return kind, value

    def close(self) -> None:
        """The request ended: drop what is queued and release a waiting ``put``."""
        self._closed = True
        self._items.clear()
        self._bytes = 0
        self._space.set()


class RequestContext:
    """What a handler gets besides its params.

    ``id``, ``op``: the request; ``connection_id``: the client connection (an int, unique
    for the daemon's life); ``session``: the connection's :class:`Session` or None when
    the client did not open one; ``streaming``: whether the op was registered as such.
    """

    def __init__(self, conn: _Connection, rid: int, op: str, streaming: bool):
        self.id = rid
        self.op = op
        self.streaming = streaming
        self._conn = conn
        self._inbox = _Inbox(conn.server.config.stdin_buffer) if streaming else None
        self._cancel_requested = False

    @property
    def connection_id(self) -> int:
        return self._conn.id

    @property
    def session(self) -> Session | None:
        return self._conn.session

    async def send_event(self, name: str, data: Any = None) -> None:
        """Send ``{"id", "event": name, "data": data}``. Waits while the client is not
        reading (backpressure); raises ``LimitExceeded`` when ``data`` does not fit in
        one frame.

        A client that is gone cancels the request, as a hang-up read between frames
        does (``_close``): the handler's cancel clean-up runs (a run's container is
        killed, an exec's process too). Ended by ``ConnectionClosed`` instead, a chatty
        request finished before the hang-up was read, and nothing was left to cancel:
        ``sbx run --rm IMAGE yes | head`` left ``yes`` running in 4 runs of 20."""
        try:
            await self._conn.send(protocol.event(self.id, name, data))
        except ConnectionClosed:
            raise asyncio.CancelledError(f"connection {self._conn.id} closed") from None

    async def receive(self) -> tuple[str, Any]:
        """The next client stream frame for this request: ``("stdin", bytes)``,
        ``("stdin_eof", True)`` or ``("resize", (rows, cols))``. Waits until one comes;
        only for ops registered with ``streaming=True``. (``cancel`` is not delivered: it
        cancels the handler's task, so clean up in ``finally``.)"""
        if self._inbox is None:
            raise RuntimeError(f"{self.op} was not registered with streaming=True")
        return await self._inbox.get()


@dataclass(frozen=True)
class _Op:
    handler: Handler
    streaming: bool
    params: type | None = None      # the table's params class; None: the raw map


# ---------------------------------------------------------------- connections

class _Connection:
    """One client: reads frames, starts a task per request, routes stream frames."""

    def __init__(self, server: Server, cid: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter):
        self.server = server
        self.id = cid
        self.reader = reader
        self.writer = writer
        self.session: Session | None = None
        self.inflight: dict[int, tuple[asyncio.Task, RequestContext]] = {}
        self.greeted = False
        self.task: asyncio.Task | None = None
        self._write_lock = asyncio.Lock()
        self.peer = _peer(writer)

    async def run(self) -> None:
        self.task = asyncio.current_task()
        log.debug("connection %d opened (%s)", self.id, self.peer)
        try:
            await self._read_loop()
        except ConnectionClosed:
            pass        # hung up while we were answering it
        except Exception:
            log.exception("connection %d: reader failed", self.id)
        finally:
            await self._close()

    async def _read_loop(self) -> None:
        cfg = self.server.config
        while True:
            try:
                first = await self.reader.readexactly(1)    # idle between frames: no timeout
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            try:
                if self._frame_buffered(first, cfg.max_frame):
                    header = first + await self.reader.readexactly(protocol.HEADER.size - 1)
                    body = await self.reader.readexactly(
                        protocol.frame_length(header, cfg.max_frame))
                else:
                    async with asyncio.timeout(cfg.frame_timeout):
                        header = first + await self.reader.readexactly(
                            protocol.HEADER.size - 1)
                        length = protocol.frame_length(header, cfg.max_frame)
                        body = await self.reader.readexactly(length)
            except TimeoutError:
                log.warning("connection %d (%s): frame not completed within %gs; dropping it",
                            self.id, self.peer, cfg.frame_timeout)
                await self._fatal(LimitExceeded(
                    f"frame not completed within {cfg.frame_timeout:g} seconds"))
                return
            except (asyncio.IncompleteReadError, ConnectionError):
                log.debug("connection %d: closed in the middle of a frame", self.id)
                return
            except SandboxError as exc:     # header above the frame limit, or 0
                await self._fatal(exc)
                return
            split = protocol.split_request(body)
            known = self.server._built.get(split[1]) if split is not None else None
            if known is not None:       # sent before: its params are built already
                if not await self._dispatch(split[0], "request", known):
                    return
                continue
            try:
                rid, kind, value = protocol.parse_client_message(protocol.decode(body))
            except protocol.ProtocolError as exc:
                if self.greeted and exc.request_id is not None \
                        and exc.request_id not in self.inflight:
                    await self.send(protocol.error(exc.request_id, exc))
                    continue
                await self._fatal(exc)
                return
            if not await self._dispatch(rid, kind, value, split[1] if split else None):
                return

    def _frame_buffered(self, first: bytes, max_frame: int) -> bool:
        """Whether the rest of the frame that ``first`` began has arrived already (the
        usual case: a client writes a frame at once). Then it is read without arming the
        frame timeout, a timer armed and cancelled per request (~5 % of the daemon's CPU
        per cold run). asyncio's StreamReader keeps what arrived in ``_buffer``; a reader
        without one always takes the timed path. A bad header raises here as there."""
        buffered = getattr(self.reader, "_buffer", b"")
        rest = protocol.HEADER.size - 1
        return len(buffered) >= rest and len(buffered) >= rest + protocol.frame_length(
            first + bytes(buffered[:rest]), max_frame)

    async def _dispatch(self, rid: int, kind: str, value: Any,
                        tail: bytes | None = None) -> bool:
        """Act on one message; False closes the connection. ``tail``: the request's
        bytes after its id, under which its built params may be kept."""
        if not self.greeted:
            if kind == "request" and value[0] == "hello":
                return await self._hello(rid, value[1])
            await self._fatal(protocol.ProtocolError(
                'the first message must be {"id": 0, "op": "hello", "params": {"version": '
                f'{protocol.PROTOCOL_VERSION}, "client": "name/version"}}}}'))
            return False
        if kind != "request":
            return await self._stream_frame(rid, kind, value)
        op, params = value
        if rid in self.inflight:
            await self._fatal(protocol.ProtocolError(f"request id {rid} is already in flight "
                                                     f"on this connection"))
            return False
        entry = self.server._ops.get(op)
        if op == "hello":
            await self.send(protocol.error(rid, Conflict("hello was already exchanged on "
                                                         "this connection")))
        elif entry is None:
            await self.send(protocol.error(rid, InvalidArgument(
                f"unknown operation {op!r}; {self.server._known_like(op)}", {"op": op})))
        elif len(self.inflight) >= self.server.config.max_inflight:
            await self.send(protocol.error(rid, LimitExceeded(
                f"{op}: already {len(self.inflight)} requests in flight on this connection "
                f"(limit {self.server.config.max_inflight}); wait for some to finish")))
        else:
            ctx = RequestContext(self, rid, op, entry.streaming)
            task = asyncio.create_task(self._run(ctx, entry, params, tail),
                                       name=f"sandboxd {op} conn {self.id} req {rid}")
            self.inflight[rid] = (task, ctx)
        return True

    async def _hello(self, rid: int, params: dict) -> bool:
        try:
            p = Params(params, "hello")
            version = p.get("version", int)
            client = p.get("client", str, "")
            p.done()
            if rid != 0:
                raise protocol.ProtocolError(f"hello must have id 0, got {rid}")
            if version not in protocol.SUPPORTED_VERSIONS:
                raise InvalidArgument(
                    f"protocol version {version} is not supported by {SERVER_NAME} (it "
                    f"speaks {', '.join(map(str, protocol.SUPPORTED_VERSIONS))}); use a "
                    f"client of the same release as the daemon",
                    {"versions": list(protocol.SUPPORTED_VERSIONS)})
        except SandboxError as exc:
            await self._fatal(exc, rid)
            return False
        self.greeted = True
        log.debug("connection %d: hello from %s", self.id, client or "an unnamed client")
        await self.send(protocol.ok(rid, {"version": protocol.PROTOCOL_VERSION,
                                          "server": SERVER_NAME,
                                          "features": list(FEATURES)}))
        return True

    async def _stream_frame(self, rid: int, kind: str, value: Any) -> bool:
        entry = self.inflight.get(rid)
        if entry is None:   # finished already (the frame crossed the reply) or never existed
            log.debug("connection %d: dropping %s for request %d, not in flight",
                      self.id, kind, rid)
            return True
        task, ctx = entry
        if kind == "cancel":
            ctx._cancel_requested = True
            task.cancel()
        elif ctx._inbox is None:
            log.debug("connection %d: dropping %s for %s, not a streaming op",
                      self.id, kind, ctx.op)
        else:
            # While we wait for the handler to take stdin, this connection is not read,
            # so EOF would go unseen: look for the peer hanging up meanwhile.
            while not await ctx._inbox.put(kind, value, len(value) if kind == "stdin" else 0,
                                           wait=1.0):
                if _peer_hung_up(self.writer):
                    log.info("connection %d: client hung up while %s was not reading its "
                             "stdin", self.id, ctx.op)
                    return False
        return True

    async def _run(self, ctx: RequestContext, entry: _Op, params: Any,
                   tail: bytes | None) -> None:
        try:
            try:
                # checked whole before anything is done (unless built already)
                if entry.params is not None and type(params) is not entry.params:
                    params = operations.build(entry.params, params, ctx.op)
                    if tail is not None and entry.params.REPEATS:
                        self.server._keep_built(tail, ctx.op, params)
                reply = protocol.ok(ctx.id, await entry.handler(ctx, params))
            except asyncio.CancelledError:
                if not ctx._cancel_requested:
                    raise          # connection closing or daemon shutting down: no reply
                asyncio.current_task().uncancel()
                reply = protocol.error(ctx.id, Cancelled(
                    f"{ctx.op} (request {ctx.id}) was cancelled by the client"))
            except SandboxError as exc:
                reply = protocol.error(ctx.id, exc)
            except OSError as exc:
                reply = protocol.error(ctx.id, self._os_error(ctx, exc))
            except BaseException as exc:  # a request never takes the daemon down
                log.error("internal error in %s (connection %d, request %d)", ctx.op,
                          self.id, ctx.id, exc_info=exc)
                reply = protocol.error(ctx.id, Internal(
                    f"internal error in {ctx.op}: {type(exc).__name__}: {exc}"))
        finally:
            self.inflight.pop(ctx.id, None)
            if ctx._inbox is not None:
                ctx._inbox.close()
        try:
            await self.send(reply)
        except ConnectionClosed:
            pass
        except LimitExceeded as exc:
            await self._send_quietly(protocol.error(ctx.id, LimitExceeded(
                f"{ctx.op}: the reply does not fit in one frame: {exc}")))
        except protocol.ProtocolError as exc:
            log.error("%s returned a value that cannot be sent: %s", ctx.op, exc)
            await self._send_quietly(protocol.error(ctx.id, Internal(
                f"internal error in {ctx.op}: its reply cannot be encoded: {exc}")))

    def _os_error(self, ctx: RequestContext, exc: OSError) -> SandboxError:
        """Out of file descriptors is said as such, with no traceback per request; any
        other OSError is an internal error."""
        refusal = Unavailable.out_of_fds(ctx.op, exc)
        if refusal is not None:
            log.warning("%s (%s)", refusal.message, exc)
            return refusal
        log.error("internal error in %s (connection %d, request %d)", ctx.op, self.id,
                  ctx.id, exc_info=exc)
        return Internal(f"internal error in {ctx.op}: {type(exc).__name__}: {exc}")

    async def send(self, message: dict) -> None:
        frame = protocol.encode(message, self.server.config.max_frame)
        async with self._write_lock:
            if self.writer.is_closing():
                raise ConnectionClosed(f"connection {self.id} is closed")
            self.writer.write(frame)
            try:
                await self.writer.drain()
            except ConnectionError as exc:
                raise ConnectionClosed(f"connection {self.id} is closed: {exc}") from None

    async def _send_quietly(self, message: dict) -> None:
        try:
            await self.send(message)
        except SandboxError:
            pass

    async def _fatal(self, exc: SandboxError, rid: int | None = None) -> None:
        """Tell the client why, then let the caller close. Bounded: the client may not
        be reading at all."""
        log.info("connection %d (%s): closing: %s", self.id, self.peer, exc.message)
        try:
            await asyncio.wait_for(self.send(protocol.error(rid, exc)), 1.0)
        except (SandboxError, TimeoutError):
            pass

    def abort(self) -> None:
        """Drop the connection now (shutdown): wakes a reader blocked anywhere."""
        self.writer.transport.abort()
        for _, ctx in list(self.inflight.values()):
            if ctx._inbox is not None:
                ctx._inbox.close()

    async def _close(self) -> None:
        self.writer.transport.abort()
        tasks = []
        for task, ctx in list(self.inflight.values()):
            if ctx._inbox is not None:
                ctx._inbox.close()
            task.cancel()
            tasks.append(task)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.session is not None:
            session, self.session = self.session, None
            await session._close()
        log.debug("connection %d closed", self.id)


def _peer_hung_up(writer: asyncio.StreamWriter) -> bool:
    """The client closed its end (POLLRDHUP shows even with unread data queued)."""
    sock = writer.get_extra_info("socket")
    if sock is None or sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLRDHUP)
    return bool(poller.poll(0))


def _peer(writer: asyncio.StreamWriter) -> str:
    """``pid N uid U`` of the client, for log lines."""
    sock = writer.get_extra_info("socket")
    try:
        pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET,
                                                          socket.SO_PEERCRED, 12))
        return f"pid {pid} uid {uid}"
    except (OSError, AttributeError):
        return "unknown peer"


# ---------------------------------------------------------------- the server

class Server:
    """Listens on the unix socket and dispatches requests to registered handlers."""

    def __init__(self, config: DaemonConfig):
        self.config = config
        self._ops: dict[str, _Op] = {}
        # Requests whose bodies repeat (operations.NoParams.REPEATS) by their bytes after
        # the id -> (op, built params): a run sent again is neither decoded nor built
        # again (~12 % of the daemon's CPU per cold run).
        self._built: dict[bytes, tuple[str, Any]] = {}
        self._kind_cleanups: dict[str, KindCleanup] = {}
        self._startup_hooks: list[Callable[[], Awaitable[None]]] = []
        self._shutdown_hooks: list[Callable[[], Awaitable[None]]] = []
        self._connections: set[_Connection] = set()
        self._conn_ids = itertools.count(1)
        self._listener: streams.Listener | None = None
        self._socket_id: tuple[int, int] | None = None
        self._lock_fd: int | None = None
        self._closing = False
        self._shutdown_requested = asyncio.Event()
        for name in operations.BUILT_IN:
            op = operations.BY_NAME[name]
            self.register_operation(op, getattr(self, "_" + op.method))

    def _keep_built(self, tail: bytes, op: str, params: Any) -> None:
        if len(tail) > BUILT_BODY_MAX:
            return
        if len(self._built) >= BUILT_KEPT:
            self._built.pop(next(iter(self._built)))
        self._built[tail] = (op, params)

    # -- registration (before start)

    def register(self, op: str, handler: Handler, *, streaming: bool = False,
                 params: type | None = None) -> None:
        """Serve ``op`` with ``async def handler(ctx, params) -> value``. ``streaming``
        ops may also read the client's stdin/resize frames with ``ctx.receive()``.
        ``params``: a params class of ``operations`` the request's map is built into
        (and so checked) before the handler runs; None hands it the map itself."""
        if op == "hello" or op in self._ops:
            raise ValueError(f"operation {op!r} is already registered")
        if not op or len(op) > protocol.MAX_OP_LEN:
            raise ValueError(f"bad operation name {op!r}")
        self._ops[op] = _Op(handler, streaming, params)

    def register_operation(self, op: operations.Operation, handler: Handler) -> None:
        """Serve an entry of the operation table with ``handler(ctx, params)``."""
        self.register(op.name, handler, streaming=op.streaming, params=op.params)

    def register_cleanup(self, kind: str, cleanup: KindCleanup) -> None:
        """How to remove a session-tracked object of ``kind``: ``await cleanup(obj_id)``."""
        if kind in self._kind_cleanups:
            raise ValueError(f"a cleanup for kind {kind!r} is already registered")
        self._kind_cleanups[kind] = cleanup

    def on_startup(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``await hook()`` at start, in registration order, before the socket
        opens (state reconciliation goes here). A failing hook stops the start."""
        self._startup_hooks.append(hook)

    def on_shutdown(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``await hook()`` at shutdown, after clients are disconnected, last
        registered first. Errors are logged."""
        self._shutdown_hooks.append(hook)

    @property
    def operations(self) -> list[str]:
        return sorted(self._ops)

    def _known_like(self, op: str) -> str:
        """The ops of the same group as ``op`` (``container.*``), else the groups."""
        group = op.split(".", 1)[0]
        same = [o for o in self.operations if o.split(".", 1)[0] == group]
        if same:
            return f"{SERVER_NAME} knows: {', '.join(same)}"
        groups = sorted({o.split(".", 1)[0] for o in self._ops})
        return f"{SERVER_NAME} knows operations in: {', '.join(groups)}"

    # -- life cycle

    async def start(self) -> None:
        """Take the root directory's lock, run startup hooks, then listen."""
        self._lock_root()
        try:
            for hook in self._startup_hooks:
                await hook()
            sock = _bind_unix(self.config.host, self.config.group)
            st = os.stat(self.config.host)
            self._socket_id = (st.st_dev, st.st_ino)
            self._listener = streams.serve(self._accept, sock)
        except BaseException:
            # What the hooks before the failing one started (the fork and network
            # servers, their tasks) stops as at a shutdown, not with the loop.
            if self._startup_hooks:
                await self._run_shutdown_hooks()
            self._unlock_root()
            raise
        log.info("%s listening on unix://%s (root %s)", SERVER_NAME, self.config.host,
                 self.config.root)

    async def serve(self, *, handle_signals: bool = True) -> None:
        """start(), wait for SIGTERM/SIGINT (or request_shutdown()), shutdown()."""
        await self.start()
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        await self._shutdown_requested.wait()
        await self.shutdown()

    def _on_signal(self, sig: int) -> None:
        log.info("received %s", signal.Signals(sig).name)
        self.request_shutdown()

    def request_shutdown(self) -> None:
        """Make serve() shut down (call from the loop's thread)."""
        self._shutdown_requested.set()

    async def shutdown(self, client_timeout: float = 10.0) -> None:
        """Stop accepting, disconnect clients (their sessions are cleaned up), run the
        shutdown hooks, remove the socket, release the root lock."""
        if self._closing:
            return
        self._closing = True
        log.info("shutting down: %d client connection(s)", len(self._connections))
        if self._listener is not None:
            self._listener.close()
        conns = list(self._connections)
        for conn in conns:
            conn.abort()
        tasks = [c.task for c in conns if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=client_timeout)
            if pending:
                log.warning("%d connection(s) did not finish within %gs", len(pending),
                            client_timeout)
        await self._run_shutdown_hooks()
        self._remove_socket()
        self._unlock_root()
        log.info("stopped")

    async def _run_shutdown_hooks(self) -> None:
        for hook in reversed(self._shutdown_hooks):
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook %s failed", getattr(hook, "__qualname__", hook))

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        cid = next(self._conn_ids)
        if self._closing or len(self._connections) >= self.config.max_connections:
            why = (Unavailable("sandboxd is shutting down") if self._closing else
                   LimitExceeded(f"too many connections (limit "
                                 f"{self.config.max_connections}); close some and retry"))
            log.warning("refusing connection %d (%s): %s", cid, _peer(writer), why.message)
            streams.write(writer, protocol.encode(protocol.error(None, why)))
            try:
                await asyncio.wait_for(writer.drain(), 1.0)
            except (TimeoutError, ConnectionError):
                pass
            writer.transport.abort()
            return
        conn = _Connection(self, cid, reader, writer)
        self._connections.add(conn)
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)

    # -- root directory and socket

    def _lock_root(self) -> None:
        """One daemon per root: hold an exclusive flock on <root>/daemon.lock."""
        root = self.config.root
        os.makedirs(root, mode=0o700, exist_ok=True)
        # Only root may look inside: container logs, the metadata (registry credentials),
        # writable layers. Nothing needs other users in: every path under the root is
        # opened or mounted by root, and a container's own files are reached through its
        # mounts, never through this path.
        os.chmod(root, 0o700)
        path = os.path.join(root, "daemon.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise Conflict(f"another sandboxd (pid {holder}) uses root {root}; stop it or "
                           f"choose another --root") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock_root(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)     # closing drops the flock
            self._lock_fd = None

    def _remove_socket(self) -> None:
        """Unlink the socket path if it is still ours (not a newer daemon's)."""
        try:
            st = os.lstat(self.config.host)
            if (st.st_dev, st.st_ino) == self._socket_id:
                os.unlink(self.config.host)
        except FileNotFoundError:
            pass

    # -- built-in operations

    async def _ping(self, ctx: RequestContext, params: operations.NoParams) -> str:
        return "pong"

    async def _version(self, ctx: RequestContext, params: operations.NoParams) -> dict:
        return {"version": __version__, "server": SERVER_NAME,
                "protocol": protocol.PROTOCOL_VERSION, "features": list(FEATURES),
                "python": platform.python_version(), "kernel": os.uname().release,
                "pid": os.getpid(), "host": f"unix://{self.config.host}",
                "root": self.config.root}

    async def _session_open(self, ctx: RequestContext,
                            params: operations.OpenSession) -> dict:
        label = params.label
        conn = ctx._conn
        if conn.session is not None:
            raise Conflict(f"this connection already has session {conn.session.id}")
        conn.session = Session(self, f"{conn.id}-{os.urandom(4).hex()}", label[:200])
        log.info("connection %d (%s) opened session %s%s", conn.id, conn.peer,
                 conn.session.id, f" ({label[:200]})" if label else "")
        return {"session": conn.session.id}


def _socket_group(name: str) -> int:
    """The gid of group ``name``, made (``groupadd --system``) when missing, as Docker's
    packages make ``docker``; 0 (root) when there is none and it cannot be made, or when
    ``name`` is empty."""
    import grp
    if not name:
        return 0
    for attempt in range(2):
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            pass
        if attempt == 0:
            try:
                made = subprocess.run(["groupadd", "--system", name], capture_output=True,
                                      text=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as exc:
                log.warning("socket group %s: cannot run groupadd (%s); the socket stays "
                            "root:root 0660", name, exc)
                return 0
            # 9: made meanwhile by someone else; then the lookup below finds it
            if made.returncode not in (0, 9):
                log.warning("socket group %s: groupadd failed (%s); the socket stays "
                            "root:root 0660", name, made.stderr.strip() or made.returncode)
                return 0
    log.warning("socket group %s: missing after groupadd; the socket stays root:root 0660",
                name)
    return 0


def _bind_unix(path: str, group: str = "") -> socket.socket:
    """A listening unix socket at ``path``, mode 0660 and group ``group`` (root when
    empty or unavailable), replacing a stale socket file."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise Conflict(f"{path} exists and is not a socket; remove it or choose another "
                           f"--host")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)           # stale: its daemon is gone
        else:
            raise Conflict(f"another daemon is already listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117)     # no window where the socket is wider than 0660
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o660)
    os.chown(path, 0, _socket_group(group))
    sock.setblocking(False)
    return sock


# ---------------------------------------------------------------- wiring and main

def build_services(server: Server, config: DaemonConfig) -> None:
    """The composition root: build the metadata store, the content store and
    snapshotter, the image, network and container services, each handed what it needs,
    and serve every operation of the table (``operations.TABLE``) with its
    :class:`~sandboxd.handlers.Handlers` method. Nothing imports this module back.

    The built-ins (hello, ping, system.version, session.open) are served by
    :class:`Server` itself."""
    from pathlib import Path

    from .containers import ContainerService
    from .events import EventBus
    from .handlers import Handlers
    from .images.registry import Registries
    from .images.service import ImageService
    from .network import NetworkService
    from .pools import PoolService
    from .snapshots import Snapshotter
    from .store import ContentStore, Store
    from .volumes import VolumeService

    root = Path(config.root)
    store = Store(root)
    images = ImageService(store, ContentStore(root), Snapshotter(root, store))
    images.registries = Registries(config.registry_mirrors, config.insecure_registries,
                                   config.hub_endpoint)
    networks = NetworkService(store, root, prefix=config.network_prefix,
                              ip_masq=config.ip_masq)
    volumes = VolumeService(root, store)
    containers = ContainerService(config, store, images, networks, volumes)
    containers.pools = pools = PoolService(containers, config.pools, config.pool_memory)
    handlers = Handlers(config, containers, images, networks, volumes)
    handlers.events = containers.events = networks.events = volumes.events = EventBus()
    server.on_startup(containers.startup)
    server.on_startup(pools.startup)
    server.on_shutdown(containers.shutdown)
    server.on_shutdown(pools.shutdown)         # first: last registered runs first
    docker_socket = config.docker_socket()
    if docker_socket:
        from .dockerapi import DockerApi
        docker = DockerApi(handlers)

        async def serve_docker() -> None:
            await docker.start(_bind_unix(docker_socket, config.group))
            log.info("Docker Engine API on unix://%s", docker_socket)

        async def stop_docker() -> None:
            await docker.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(docker_socket)
        server.on_startup(serve_docker)
        server.on_shutdown(stop_docker)       # runs first: hooks run last-added first
    server.register_cleanup("container", handlers.session_cleanup)
    server.register_cleanup("network", handlers.session_network_cleanup)
    for op in operations.TABLE:
        if op.name not in operations.BUILT_IN:
            server.register_operation(op, getattr(handlers, op.method))


def raise_open_files_limit() -> None:
    """The soft limit of open files up to the hard one (as dockerd's unit and Go's
    runtime do): the daemon keeps a few fds per running container (its output pipes and
    log) and its fork server one (the container's mount namespace), so a service's soft
    limit (systemd's 1024) would stop starts at a few hundred containers with EMFILE.
    The helpers inherit it; containers do not (each gets its own nofile, 1024 unless
    --ulimit or --default-ulimit says otherwise)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return
    target = hard
    if hard == resource.RLIM_INFINITY:          # the kernel's own ceiling, then
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("open files limit stays %d: %s", soft, exc)


def run(config: DaemonConfig) -> int:
    """Serve until SIGTERM/SIGINT; the process exit status."""
    raise_open_files_limit()
    server = Server(config)
    try:
        build_services(server, config)     # a bad setting (network prefix ...) says so
        # asyncio's API on libuv's loop: less of the daemon's CPU per start (pyproject.toml)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(server.serve())
    except SandboxError as exc:
        log.error("cannot start: %s", exc.message)
        return 1
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


@click.command(name="sandboxd", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", "-H", envvar="SANDBOXD_HOST", metavar="unix:///PATH",
              help=f"Socket to listen on [default: unix://{DEFAULT_SOCKET}; env SANDBOXD_HOST]")
@click.option("--root", envvar="SANDBOXD_ROOT", metavar="DIR",
              help=f"State directory [default: {DEFAULT_ROOT}; env SANDBOXD_ROOT]")
@click.option("--default-ulimit", "default_ulimits", multiple=True, metavar="NAME=SOFT[:HARD]",
              help="Default ulimit for containers, e.g. nofile=1280:2560 (repeatable)")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False),
              help="Log level [default: info]")
@click.option("--config", "config_file", metavar="FILE",
              help="JSON file whose keys mirror these flags; flags override it")
@click.option("--ip-masq/--no-ip-masq", default=None, envvar="SANDBOXD_IP_MASQ",
              help="Forwarding and masquerade for traffic leaving bridge networks "
                   "(iptables) [default: on; env SANDBOXD_IP_MASQ=0 turns it off]")
@click.option("--cgroup-parent", metavar="NAME", envvar="SANDBOXD_CGROUP_PARENT",
              help="cgroup under which containers' cgroups are made [default: sandboxd; "
                   "env SANDBOXD_CGROUP_PARENT]")
@click.option("--network-prefix", metavar="PREFIX", envvar="SANDBOXD_NETWORK_PREFIX",
              help="Start of our bridge and veth names; start-up removes unowned links "
                   "with it, so two daemons need two prefixes [default: sbx; env "
                   "SANDBOXD_NETWORK_PREFIX]")
@click.option("--group", "-G", metavar="NAME",
              help="Group of the socket, made if missing (its members can do all root "
                   "can) [default: sandboxd; \"\" leaves it root's]")
@click.option("--default-storage-size", metavar="SIZE",
              help="Cap of a container's writable layer when it gives no --storage-opt "
                   "size (0: no cap) [default: 10G]")
@click.option("--log-driver", metavar="DRIVER",
              help="Containers' default log driver: json-file, local or none "
                   "[default: json-file]")
@click.option("--log-opt", "log_opts", multiple=True, metavar="KEY=VALUE",
              help="Containers' default log options, max-size=SIZE and max-file=N "
                   "(repeatable) [default: max-size=20m, max-file=5]")
@click.option("--docker-host", metavar="unix:///PATH", envvar="SANDBOXD_DOCKER_HOST",
              help="Socket of the Docker Engine API (docker CLI, docker-py, "
                   "testcontainers); '' turns it off [default: docker.sock beside --host, "
                   "/run/sandboxd/docker.sock; env SANDBOXD_DOCKER_HOST]")
@click.option("--dns", multiple=True, metavar="IP",
              help="Containers' DNS server when they give no --dns (repeatable) "
                   "[default: the host's, loopback ones filtered out]")
@click.option("--registry-mirror", "registry_mirrors", multiple=True, metavar="URL",
              help="A mirror of Docker Hub tried before it, http(s)://host[:port] "
                   "(repeatable)")
@click.option("--insecure-registry", "insecure_registries", multiple=True,
              metavar="HOST[:PORT]|CIDR",
              help="A registry spoken to without certificate checks, and over plain "
                   "HTTP when it has no TLS (repeatable) [loopback ones always are]")
@click.option("--hub-endpoint", metavar="URL", envvar="SANDBOXD_HUB_ENDPOINT",
              help="Where Docker Hub (docker.io) is served [default: "
                   "https://registry-1.docker.io; env SANDBOXD_HUB_ENDPOINT]; an "
                   "air-gapped host or a test points it at its own registry")
@click.option("--pool", "pools", multiple=True, metavar="IMAGE[,OPTION=VALUE...]=N",
              help="Keep N prepared --rm containers of IMAGE with these options "
                   "(memory, cpus, pids-limit, network, user, ...) ready (repeatable)")
@click.option("--pool-memory", metavar="SIZE",
              help="Memory for parked containers in all; also learns pools of what was "
                   "recently asked for [default: 0, no learned pools]")
def main(host: str | None, root: str | None, default_ulimits: tuple[str, ...],
         log_level: str | None, config_file: str | None, ip_masq: bool | None,
         cgroup_parent: str | None, network_prefix: str | None, group: str | None,
         default_storage_size: str | None, log_driver: str | None,
         log_opts: tuple[str, ...], docker_host: str | None, dns: tuple[str, ...],
         registry_mirrors: tuple[str, ...], insecure_registries: tuple[str, ...],
         hub_endpoint: str | None, pools: tuple[str, ...], pool_memory: str | None) -> None:
    """Run the sandboxd daemon."""
    try:
        config = load_config(config_file, host=host, root=root,
                             default_ulimits=default_ulimits, log_level=log_level,
                             ip_masq=ip_masq, cgroup_parent=cgroup_parent,
                             network_prefix=network_prefix, group=group,
                             default_storage_size=default_storage_size,
                             log_driver=log_driver, log_opts=log_opts, dns=dns,
                             docker_host=docker_host,
                             registry_mirrors=registry_mirrors,
                             insecure_registries=insecure_registries,
                             hub_endpoint=hub_endpoint,
                             pools=pools, pool_memory=pool_memory)
    except InvalidArgument as exc:
        raise click.UsageError(exc.message) from None
    logging.basicConfig(stream=sys.stderr, level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(run(config))


if __name__ == "__main__":
    main()
