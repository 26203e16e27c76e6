"""The client side of the wire protocol: connect to sandboxd (starting a local one when
none runs), send requests, demultiplex replies and streamed events.

    conn = connect()                          # or connect("unix:///tmp/x.sock", session=True)
    conn.call("ping")                         # -> "pong"; errors raise typed SandboxErrors
    with conn.stream("container.attach", {"id": cid}) as s:
        s.send(b"echo hi\\n"); s.close_stdin()
        for name, data in s:                  # ("stdout", b"hi\\n"), ("exit", {...}) ...
            ...
        value = s.result()                    # the final ok value, or raises its error

``AsyncConnection`` (from ``await connect_async()``) has the same methods as coroutines and
any number of concurrent calls. The sync ``Connection`` routes frames by request id, so
several threads may call at once: the first thread that waits reads the socket for all
of them until its own reply comes, then another waiting thread takes over (no thread of
its own, so a reply wakes its caller directly, not a reader that then wakes it). While a
stream that sends stdin is in flight, a reader thread reads instead, so that stdin can be
written while events are being read (no deadlock when both sides' buffers are full); it
leaves once the last such stream has ended.

This module is imported by ``sbx`` on every start: it imports only the standard library's
os/sys/itertools and ``_socket``, msgpack (through ``protocol``) and ``errors`` at import
time; threading, asyncio and subprocess are imported where they are used. The blocking
side uses ``_socket.socket``, the C type that ``socket.socket`` subclasses: socket.py's
enum wrappers alone cost ~2.5 ms of every ``sbx`` start, and only its plain methods are used.
"""
from __future__ import annotations

import _socket
import itertools
import os
import sys

from . import protocol
from .errors import SandboxError, Unavailable, from_wire
from .version import __version__

CLIENT_NAME = f"sbx/{__version__}"
CONNECT_TIMEOUT = 10.0        # seconds for connect + hello, and for an autostarted daemon
STDIN_CHUNK = 256 * 1024      # stdin is sent in frames of at most this many bytes

_FINAL = ("ok", "error", "lost")   # "lost": the connection failed before the reply came
_TURN = ("turn", None)             # to a waiting thread: the reader left, read if you can


def _outcome(kind: str, payload: object) -> object:
    if kind == "ok":
        return payload
    if kind == "error":
        raise from_wire(payload)
    exc = payload
    raise type(exc)(exc.message, exc.details)   # "lost": a fresh copy per raise


class _Demux:
    """Routes daemon messages to per-request queues (anything with ``put_nowait``)."""

    def __init__(self) -> None:
        self._pending: dict[int, object] = {}
        self._ids = itertools.count(1)          # 0 is the hello
        self._lost: SandboxError | None = None

    def _register(self, queue: object) -> int:
        rid = next(self._ids)
        self._pending[rid] = queue
        # Checked after registering: _fail_all sets _lost before it empties _pending.
        if self._lost is not None:
            self._pending.pop(rid, None)
            _outcome("lost", self._lost)
        return rid

    def _route(self, message: dict) -> None:
        rid, kind, payload = protocol.parse_server_message(message)
        if rid is None:          # a connection-level error; the daemon closes next
            self._fail_all(from_wire(payload))
            return
        queue = self._pending.pop(rid, None) if kind in _FINAL else self._pending.get(rid)
        if queue is not None:
            queue.put_nowait((kind, payload))

    def _fail_all(self, exc: SandboxError) -> None:
        if self._lost is None:
            self._lost = exc
        for rid in list(self._pending):
            queue = self._pending.pop(rid, None)
            if queue is not None:
                queue.put_nowait(("lost", self._lost))


# ---------------------------------------------------------------- sync

class Connection(_Demux):
    """A blocking connection. Built by :func:`connect`; thread-safe."""

    def __init__(self, sock: _socket.socket, *, client_name: str = CLIENT_NAME,
                 timeout: float = CONNECT_TIMEOUT, max_frame: int = protocol.MAX_FRAME):
        import threading
        super().__init__()
        self._sock = sock
        self._frames = protocol.FrameBuffer(max_frame)
        self._max_frame = max_frame
        self._send_lock = threading.Lock()
        self._read_lock = threading.Lock()        # held by the thread reading the socket
        self._waiting: set = set()                # queues of threads waiting meanwhile
        self._reader: threading.Thread | None = None
        self._senders: set[int] = set()           # streams that send stdin: the reader's
        self._closing = False
        self.session_id: str | None = None
        sock.settimeout(timeout)
        self.server_info: dict = _handshake_sync(sock, self._frames, client_name, max_frame)
        sock.settimeout(None)

    def call(self, op: str, params: dict | None = None, *,
             timeout: float | None = None) -> object:
        """Send one request and wait for its value (raises its typed error). After
        ``timeout`` seconds the request is cancelled and ``TimeoutError`` raised."""
        import queue
        import time
        replies: queue.SimpleQueue = queue.SimpleQueue()
        rid = self._register(replies)
        self._send(protocol.request(rid, op, params))
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                kind, payload = self._next(replies, deadline)
                if kind != "event":
                    return _outcome(kind, payload)
        except queue.Empty:
            self._send_quietly({"id": rid, "cancel": True})
            raise TimeoutError(f"{op}: no reply within {timeout:g}s; the request was "
                               f"cancelled") from None

    def stream(self, op: str, params: dict | None = None) -> Stream:
        """Start a request whose events are read by iterating the returned Stream."""
        import queue
        replies: queue.SimpleQueue = queue.SimpleQueue()
        rid = self._register(replies)
        self._send(protocol.request(rid, op, params))
        return Stream(self, rid, op, replies)

    def open_session(self, label: str = "") -> str:
        """Tie what this connection creates to it: when it closes, the daemon removes it."""
        self.session_id = self.call("session.open", {"label": label} if label else {})["session"]
        return self.session_id

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        try:
            self._sock.shutdown(_socket.SHUT_RDWR)
        except OSError:
            pass
        if self._reader is not None and self._reader is not _current_thread():
            self._reader.join(5.0)
        self._sock.close()
        self._fail_all(Unavailable("the connection was closed"))   # none read its EOF

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, message: dict) -> None:
        frame = protocol.encode(message, self._max_frame)
        with self._send_lock:
            if self._lost is not None:
                _outcome("lost", self._lost)
            try:
                self._sock.sendall(frame)
            except OSError as exc:
                raise Unavailable(f"lost the connection to sandboxd: {exc}") from None

    def _send_quietly(self, message: dict) -> None:
        try:
            self._send(message)
        except SandboxError:
            pass

    def _next(self, replies: queue.SimpleQueue, deadline: float | None = None  # noqa: F821
              ) -> tuple[str, object]:
        """The next item of a request's queue. Unless a reader thread reads, the first
        thread to wait reads the socket, routing every frame, until an item of its own
        has come; a thread that finds the socket taken waits on its queue, and is told
        when the reader leaves. Raises ``queue.Empty`` at ``deadline``."""
        import queue
        import time
        while True:
            try:
                item = replies.get_nowait()
            except queue.Empty:
                pass
            else:
                if item is not _TURN:
                    return item
                continue
            # Listed before trying the lock: a reader that leaves once our try has
            # failed finds this queue and gives it the turn.
            self._waiting.add(replies)
            try:
                if self._read_lock.acquire(blocking=False):
                    try:
                        while replies.empty() and self._lost is None:
                            if not self._read_some(deadline):
                                raise queue.Empty
                    finally:
                        self._read_lock.release()
                        self._waiting.discard(replies)
                        for other in list(self._waiting):
                            other.put(_TURN)
                    if replies.empty():
                        return "lost", self._lost
                    continue
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise queue.Empty
                item = replies.get(timeout=left)
            finally:
                self._waiting.discard(replies)
            if item is not _TURN:
                return item

    def _read_some(self, deadline: float | None) -> bool:
        """One read of the socket, its frames routed; False if ``deadline`` came first.
        A closed or broken connection fails every request in flight."""
        if deadline is not None:
            import select
            import time
            left = deadline - time.monotonic()
            # poll, not select: a busy process's socket may be numbered above 1023.
            readable = select.poll()
            readable.register(self._sock.fileno(), select.POLLIN)
            if left <= 0 or not readable.poll(left * 1000):
                return False
        reason = "sandboxd closed the connection"
        try:
            data = self._sock.recv(1 << 18)
            if data:
                for message in self._frames.feed(data):
                    self._route(message)
                return True
            if self._frames.partial:
                reason = "sandboxd closed the connection in the middle of a frame"
        except OSError as exc:
            reason = f"lost the connection to sandboxd: {exc}"
        except SandboxError as exc:
            reason = f"sandboxd sent a bad frame: {exc.message}"
        if self._closing:
            reason = "the connection was closed"
        self._fail_all(Unavailable(reason))
        return True

    def _start_reader(self, rid: int) -> None:
        """Until stream ``rid`` has ended, a thread of its own reads: the stream sends
        stdin, and a daemon that cannot write its output to us may stop reading that
        stdin. Afterwards the waiting threads read again (a reply wakes its caller, not
        a reader that then wakes it)."""
        import threading
        with self._send_lock:
            self._senders.add(rid)
            if self._reader is not None:
                return
            self._reader = reader = threading.Thread(target=self._read_loop, daemon=True,
                                                     name="sandboxd-client-reader")
        reader.start()

    def _read_loop(self) -> None:
        with self._read_lock:             # once the thread reading now has its reply
            while self._lost is None:
                with self._send_lock:     # a stream whose final came is not pending
                    self._senders = {rid for rid in self._senders if rid in self._pending}
                    if not self._senders:
                        self._reader = None
                        break
                self._read_some(None)
        # Released first: a thread that found the socket taken listed itself before.
        for other in list(self._waiting):
            other.put(_TURN)


def _current_thread() -> object:
    import threading
    return threading.current_thread()


class Stream:
    """A request in progress: iterate ``(event, data)``; then ``result()``."""

    def __init__(self, conn: Connection, rid: int, op: str, replies: object):
        self.id = rid
        self.op = op
        self._conn = conn
        self._replies = replies
        self._final: tuple[str, object] | None = None

    def __iter__(self):
        while self._final is None:
            kind, payload = self._conn._next(self._replies)
            if kind == "event":
                yield payload
            else:
                self._final = (kind, payload)

    @property
    def done(self) -> bool:
        return self._final is not None

    def result(self) -> object:
        """Wait for the end (events still unread are dropped); the value or its error."""
        for _ in self:
            pass
        return _outcome(*self._final)

    def send(self, data: bytes) -> None:
        """Feed the process's stdin (any thread may, while another iterates)."""
        self._conn._start_reader(self.id)
        for start in range(0, len(data), STDIN_CHUNK):
            self._send({"id": self.id, "stdin": bytes(data[start:start + STDIN_CHUNK])})

    def close_stdin(self) -> None:
        self._send({"id": self.id, "stdin_eof": True})

    def collect(self) -> tuple[bytes, bytes, object]:
        """Read to the end: (stdout, stderr, result)."""
        out, err = bytearray(), bytearray()
        for event, data in self:
            if event == "stdout":
                out += data
            elif event == "stderr":
                err += data
        return bytes(out), bytes(err), self.result()

    def merged(self) -> bytes:
        """Read to the end: stdout and stderr in the order they arrived."""
        both = bytearray()
        for event, data in self:
            if event in ("stdout", "stderr"):
                both += data
        return bytes(both)

    def resize(self, rows: int, cols: int) -> None:
        self._send({"id": self.id, "resize": [rows, cols]})

    def cancel(self) -> None:
        """Ask the daemon to cancel; the result then raises ``Cancelled`` (unless the
        request finished first)."""
        self._send({"id": self.id, "cancel": True})

    def _send(self, message: dict) -> None:
        if self._final is None:     # after the end the daemon would drop it anyway
            self._conn._send(message)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        """Leaving early cancels the request and waits for its end."""
        if self._final is None:
            self._conn._send_quietly({"id": self.id, "cancel": True})
            for _ in self:
                pass


def _handshake_sync(sock: _socket.socket, frames: protocol.FrameBuffer, client_name: str,
                    max_frame: int) -> dict:
    try:
        sock.sendall(protocol.encode(protocol.hello(client_name), max_frame))
    except OSError:
        pass    # a daemon refusing us (too many connections) may have closed already:
                # its reason is waiting to be read
    while True:
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            raise Unavailable("sandboxd accepted the connection but did not answer hello") \
                from None
        except OSError as exc:
            data, reason = b"", f": {exc}"
        else:
            reason = ""
        if not data:
            raise Unavailable(f"sandboxd closed the connection during the handshake{reason}")
        messages = frames.feed(data)
        if messages:
            return _hello_reply(messages[0])


def _hello_reply(message: dict) -> dict:
    rid, kind, payload = protocol.parse_server_message(message)
    if kind == "error":
        raise from_wire(payload)
    if rid != 0 or kind != "ok" or not isinstance(payload, dict):
        raise Unavailable(f"unexpected answer to hello: {message!r:.200}")
    return payload


# ---------------------------------------------------------------- async

class AsyncConnection(_Demux):
    """An asyncio connection. Built by :func:`connect_async`; one loop only."""

    def __init__(self, reader: object, writer: object, server_info: dict,
                 max_frame: int = protocol.MAX_FRAME):
        import asyncio
        super().__init__()
        self._reader = reader
        self._writer = writer
        self._max_frame = max_frame
        self._write_lock = asyncio.Lock()
        self._closing = False
        self.server_info = server_info
        self.session_id: str | None = None
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    async def call(self, op: str, params: dict | None = None, *,
                   timeout: float | None = None) -> object:
        import asyncio
        replies: asyncio.Queue = asyncio.Queue()
        rid = self._register(replies)
        await self._send(protocol.request(rid, op, params))
        try:
            async with asyncio.timeout(timeout):
                while True:
                    kind, payload = await replies.get()
                    if kind != "event":
                        return _outcome(kind, payload)
        except TimeoutError:
            await self._send_quietly({"id": rid, "cancel": True})
            raise TimeoutError(f"{op}: no reply within {timeout:g}s; the request was "
                               f"cancelled") from None

    async def stream(self, op: str, params: dict | None = None) -> AsyncStream:
        import asyncio
        replies: asyncio.Queue = asyncio.Queue()
        rid = self._register(replies)
        await self._send(protocol.request(rid, op, params))
        return AsyncStream(self, rid, op, replies)

    async def open_session(self, label: str = "") -> str:
        reply = await self.call("session.open", {"label": label} if label else {})
        self.session_id = reply["session"]
        return self.session_id

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._writer.close()
        self._task.cancel()
        try:
            await self._task
        except BaseException:
            pass

    async def __aenter__(self) -> AsyncConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _send(self, message: dict) -> None:
        frame = protocol.encode(message, self._max_frame)
        async with self._write_lock:
            if self._lost is not None:
                _outcome("lost", self._lost)
            try:
                self._writer.write(frame)
                await self._writer.drain()
            except (OSError, RuntimeError) as exc:
                raise Unavailable(f"lost the connection to sandboxd: {exc}") from None

    async def _send_quietly(self, message: dict) -> None:
        try:
            await self._send(message)
        except SandboxError:
            pass

    async def _read_loop(self) -> None:
        import asyncio
        reason = "sandboxd closed the connection"
        try:
            while True:
                header = await self._reader.readexactly(protocol.HEADER.size)
                body = await self._reader.readexactly(
                    protocol.frame_length(header, self._max_frame))
                self._route(protocol.decode(body))
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                reason = "sandboxd closed the connection in the middle of a frame"
        except OSError as exc:
            reason = f"lost the connection to sandboxd: {exc}"
        except SandboxError as exc:
            reason = f"sandboxd sent a bad frame: {exc.message}"
        finally:
            self._fail_all(Unavailable("the connection was closed" if self._closing
                                       else reason))


class AsyncStream:
    """``async for name, data in stream``; then ``await stream.result()``."""

    def __init__(self, conn: AsyncConnection, rid: int, op: str, replies: object):
        self.id = rid
        self.op = op
        self._conn = conn
        self._replies = replies
        self._final: tuple[str, object] | None = None

    async def __aiter__(self):
        while self._final is None:
            kind, payload = await self._replies.get()
            if kind == "event":
                yield payload
            else:
                self._final = (kind, payload)

    @property
    def done(self) -> bool:
        return self._final is not None

    async def result(self) -> object:
        async for _ in self:
            pass
        return _outcome(*self._final)

    async def send(self, data: bytes) -> None:
        for start in range(0, len(data), STDIN_CHUNK):
            await self._send({"id": self.id, "stdin": bytes(data[start:start + STDIN_CHUNK])})

    async def close_stdin(self) -> None:
        await self._send({"id": self.id, "stdin_eof": True})

    async def collect(self) -> tuple[bytes, bytes, object]:
        out, err = bytearray(), bytearray()
        async for event, data in self:
            if event == "stdout":
                out += data
            elif event == "stderr":
                err += data
        return bytes(out), bytes(err), await self.result()

    async def merged(self) -> bytes:
        both = bytearray()
        async for event, data in self:
            if event in ("stdout", "stderr"):
                both += data
        return bytes(both)

    async def resize(self, rows: int, cols: int) -> None:
        await self._send({"id": self.id, "resize": [rows, cols]})

    async def cancel(self) -> None:
        await self._send({"id": self.id, "cancel": True})

    async def _send(self, message: dict) -> None:
        if self._final is None:
            await self._conn._send(message)

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._final is None:
            await self._conn._send_quietly({"id": self.id, "cancel": True})
            async for _ in self:
                pass


# ---------------------------------------------------------------- connecting

def connect(host: str | None = None, *, autostart: bool | None = None, session: bool = False,
            root: str | None = None, timeout: float = CONNECT_TIMEOUT,
            label: str = "") -> Connection:
    """Connect to sandboxd and say hello.

    ``host``: ``unix:///path`` or a path; default ``$SANDBOXD_HOST``, then
    ``/run/sandboxd/sandboxd.sock``. When nothing listens there a daemon is started in the
    background (as root only) if ``autostart`` is True, or if it is None (the default) and
    ``host`` is the default socket; its state goes to ``root`` (default ``$SANDBOXD_ROOT``,
    then ``/var/lib/sandboxd``) and its log to ``<root>/daemon.log``. ``session=True``
    opens a session (``label`` names it in the daemon's log). Raises ``Unavailable``.
    """
    path = protocol.resolve_host(host)
    sock = _open_socket(path, autostart, root, timeout)
    try:
        conn = Connection(sock, timeout=timeout)
    except BaseException:
        sock.close()
        raise
    if session:
        try:
            conn.open_session(label)
        except BaseException:
            conn.close()
            raise
    return conn


async def connect_async(host: str | None = None, *, autostart: bool | None = None,
                        session: bool = False, root: str | None = None,
                        timeout: float = CONNECT_TIMEOUT, label: str = "") -> AsyncConnection:
    """:func:`connect` for asyncio (an autostart runs in a worker thread)."""
    import asyncio
    path = protocol.resolve_host(host)
    loop = asyncio.get_running_loop()
    import socket
    raw = await loop.run_in_executor(None, _open_socket, path, autostart, root, timeout)
    sock = socket.socket(fileno=raw.detach())           # asyncio wants socket.socket
    try:
        sock.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        async with asyncio.timeout(timeout):
            writer.write(protocol.encode(protocol.hello(CLIENT_NAME)))
            header = await reader.readexactly(protocol.HEADER.size)
            body = await reader.readexactly(protocol.frame_length(header))
            info = _hello_reply(protocol.decode(body))
    except (TimeoutError, asyncio.IncompleteReadError, OSError) as exc:
        writer.close()
        raise Unavailable(f"sandboxd at {path} did not complete the handshake: "
                          f"{type(exc).__name__}") from None
    except BaseException:
        writer.close()
        raise
    conn = AsyncConnection(reader, writer, info)
    if session:
        try:
            await conn.open_session(label)
        except BaseException:
            await conn.close()
            raise
    return conn


def _connect_unix(path: str, timeout: float) -> _socket.socket:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def _open_socket(path: str, autostart: bool | None, root: str | None,
                 timeout: float) -> _socket.socket:
    try:
        return _connect_unix(path, timeout)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        reason = "no such socket" if isinstance(exc, FileNotFoundError) else \
            "connection refused (a stale socket?)"
    except PermissionError:
        raise Unavailable(f"permission denied on {path}: the socket is root-only; run as "
                          f"root") from None
    except OSError as exc:
        raise Unavailable(f"cannot connect to sandboxd at {path}: {exc}") from None
    if autostart is None:
        autostart = path == protocol.DEFAULT_SOCKET
    if not autostart:
        raise Unavailable(f"cannot connect to sandboxd at {path}: {reason}; start it with "
                          f"`sandboxd --host unix://{path}` (as root)")
    _autostart(path, root or os.environ.get("SANDBOXD_ROOT") or protocol.DEFAULT_ROOT,
               timeout)
    try:
        return _connect_unix(path, timeout)
    except OSError as exc:
        raise Unavailable(f"started sandboxd at {path} but cannot connect: {exc}") from None


# The launcher forks once so the daemon is not our child (no zombie if it dies while we
# run); it prints the daemon's pid and exits, the daemon gets its own session.
_LAUNCHER = """\
import os, sys
pid = os.fork()
if pid:
    sys.stdout.write(str(pid))
    sys.stdout.flush()
    os._exit(0)
os.setsid()
os.dup2(2, 1)
os.execv(sys.argv[1], sys.argv[1:])
"""


def _autostart(path: str, root: str, timeout: float) -> None:
    """Start a daemon for ``path`` unless another client just did; one at a time per
    root (flock on <root>/autostart.lock)."""
    import fcntl
    import time
    if os.geteuid() != 0:
        raise Unavailable(f"no sandboxd listens on {path} and starting one needs root; run "
                          f"`sandboxd --host unix://{path}` as root")
    os.makedirs(root, mode=0o700, exist_ok=True)
    deadline = time.monotonic() + timeout
    lock_fd = os.open(os.path.join(root, "autostart.lock"),
                      os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Unavailable(f"another client is starting sandboxd at {path} and it "
                                      f"did not finish within {timeout:g}s") from None
                time.sleep(0.02)
        if _answers(path):
            return      # another client started it while we waited for the lock
        log_path = os.path.join(root, "daemon.log")
        pid = _spawn_daemon(path, root, log_path)
        while not _answers(path):
            if not _alive(pid):
                raise Unavailable(f"sandboxd exited while starting (log {log_path}):\n"
                                  f"{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise Unavailable(f"sandboxd (pid {pid}) did not answer on {path} within "
                                  f"{timeout:g}s; see {log_path}")
            time.sleep(0.02)
        print(f"sandboxd: started a daemon at {path} (log: {log_path})", file=sys.stderr)
    finally:
        os.close(lock_fd)


def _spawn_daemon(path: str, root: str, log_path: str) -> int:
    import subprocess
    env = dict(os.environ)
    # Run this very package, even when it is not installed (a checkout on sys.path).
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        out = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _LAUNCHER,
             sys.executable, "-m", "sandboxd.daemon", "--host", path, "--root", root],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_fd, env=env,
            check=False, timeout=CONNECT_TIMEOUT).stdout
    finally:
        os.close(log_fd)
    try:
        return int(out)
    except ValueError:
        raise Unavailable(f"could not launch sandboxd; see {log_path}") from None


def _answers(path: str) -> bool:
    """A daemon accepts on ``path`` and answers hello."""
    try:
        sock = _connect_unix(path, 2.0)
    except OSError:
        return False
    try:
        _handshake_sync(sock, protocol.FrameBuffer(), CLIENT_NAME, protocol.MAX_FRAME)
        return True
    except (SandboxError, OSError):
        return False
    finally:
        sock.close()


def _alive(pid: int) -> bool:
    """Running and not a zombie (an exited daemon may await reaping by its new parent)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
            return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
    except OSError:
        return "(no log)"
