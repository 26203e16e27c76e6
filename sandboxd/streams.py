"""Streams that behave the same under either event loop.

The daemon runs on uvloop (daemon.py), whose transports and servers differ from
asyncio's in two places that matter to a daemon:

- **Writes after a hang-up.** asyncio's transports drop a write or a ``write_eof`` once
  the connection is closing, and the next ``drain`` raises ``ConnectionResetError``;
  uvloop's raise ``RuntimeError`` once the handle is closed. Every write of the daemon's
  that can follow a hang-up goes through :func:`write` and :func:`write_eof`, so a
  client that leaves early ends its stream the asyncio way, whatever the loop.
- **Accepting while out of file descriptors.** libuv's listener, when ``accept`` fails
  with EMFILE, accepts every waiting connection on a spare fd and closes it at once (its
  "EMFILE trick"): each of those clients' requests is lost. A docker CLI whose ``start``
  was so dropped waited for ever for its ``--rm`` container's removal. asyncio's
  listener, and Go's (dockerd's), leave them waiting and retry. :func:`serve` accepts
  that way under either loop.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Awaitable, Callable

log = logging.getLogger("sandboxd.streams")

# An accept that failed for want of fds or memory is retried after this, doubling up to
# ACCEPT_RETRY_MAX while it keeps failing (Go's net/http: 5 ms to 1 s).
ACCEPT_RETRY = 0.005
ACCEPT_RETRY_MAX = 1.0
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_ACCEPTS_PER_TURN = 64        # then the loop's other work; the reader fires again

OnClient = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def write(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Queue ``data``, or drop it when the connection is closing (the caller's next
    ``drain`` raises ``ConnectionResetError``)."""
    if not writer.is_closing():
        writer.write(data)


def write_eof(writer: asyncio.StreamWriter) -> None:
    """Half-close, where the transport can and the connection is still open."""
    if not writer.is_closing() and writer.can_write_eof():
        writer.write_eof()


class Listener:
    """Serves a listening socket as ``asyncio.start_server`` does (each connection a
    reader and a writer for ``on_client``), but leaves connections waiting in the
    backlog while the process is out of file descriptors, and tries again shortly."""

    def __init__(self, sock: socket.socket, on_client: OnClient, limit: int):
        self._sock = sock
        self._on_client = on_client
        self._limit = limit
        self._loop = asyncio.get_running_loop()
        self._delay = 0.0
        self._retry: asyncio.TimerHandle | None = None
        self._connecting: set[asyncio.Task] = set()      # held until each is made
        sock.setblocking(False)
        self._fd = sock.fileno()
        self._loop.add_reader(self._fd, self._accept)

    def close(self) -> None:
        """Stop accepting and close the listening socket (not its connections)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        elif self._fd >= 0:
            self._loop.remove_reader(self._fd)
        self._fd = -1
        self._sock.close()

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_TURN):
            try:
                conn, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue                            # gone before we got to it
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                self._pause(exc)
                return
            self._delay = 0.0
            conn.setblocking(False)
            task = self._loop.create_task(self._connect(conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    def _pause(self, exc: OSError) -> None:
        """Out of fds (or memory): the waiting connections stay queued in the kernel."""
        if not self._delay:
            log.warning("%s: cannot accept connections (%s); they wait, and accepting is "
                        "retried", _name(self._sock), exc.strerror)
        self._delay = min(max(self._delay * 2, ACCEPT_RETRY), ACCEPT_RETRY_MAX)
        self._loop.remove_reader(self._fd)
        self._retry = self._loop.call_later(self._delay, self._resume)

    def _resume(self) -> None:
        self._retry = None
        self._loop.add_reader(self._fd, self._accept)

    async def _connect(self, conn: socket.socket) -> None:
        reader = asyncio.StreamReader(limit=self._limit)
        protocol = asyncio.StreamReaderProtocol(reader, self._on_client)
        try:
            await self._loop.connect_accepted_socket(lambda: protocol, conn)
        except OSError as exc:                      # out of fds again, say
            log.warning("%s: dropping a connection: %s", _name(self._sock), exc)
            conn.close()


def serve(on_client: OnClient, sock: socket.socket, *, limit: int = 1 << 16,
          backlog: int = 100) -> Listener:
    """Listen on ``sock`` (bound) and serve it on the running loop: see
    :class:`Listener`. ``limit`` and ``backlog`` as ``asyncio.start_server``'s."""
    sock.listen(backlog)
    return Listener(sock, on_client, limit)


def _name(sock: socket.socket) -> str:
    try:
        address = sock.getsockname()
    except OSError:
        return "a listener"
    return f"unix://{address}" if sock.family == socket.AF_UNIX else f"{address}"
