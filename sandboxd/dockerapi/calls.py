"""How a route reaches the daemon: through the operation table, like a msgpack request.
:meth:`Calls.call` builds the op's params class from a plain dict (every field checked
by ``operations.build``) and awaits its ``Handlers`` method with an :class:`ApiContext`,
which turns the op's events into whatever the route streams."""
from __future__ import annotations

import asyncio
import struct
from typing import Any, Awaitable, Callable

from .. import operations
from ..handlers import Handlers

Sink = Callable[[str, Any], Awaitable[None]]
INBOX_FRAMES = 8         # data frames (≤ 64 KiB each) queued for an op at most


class ApiContext:
    """``sandboxd.context.RequestContext`` for a Docker API request: events go to
    ``sink`` (None: dropped), stdin and resize frames come from :meth:`feed`."""
    session = None

    def __init__(self, op: str, sink: Sink | None = None):
        self.id = 0
        self.op = op
        self.streaming = operations.BY_NAME[op].streaming
        self._sink = sink
        self._inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._taken = asyncio.Event()

    async def send_event(self, name: str, data: Any = None) -> None:
        if self._sink is not None:
            await self._sink(name, data)

    async def receive(self) -> tuple[str, Any]:
        item = await self._inbox.get()
        self._taken.set()
        return item

    def feed(self, kind: str, data: Any) -> None:
        """A control frame (resize, the end of stdin): queued at once."""
        self._inbox.put_nowait((kind, data))

    async def push(self, kind: str, data: Any) -> None:
        """A data frame, once fewer than INBOX_FRAMES wait: a client's bytes never run
        ahead of what the op consumes (a container that does not read its stdin holds
        the client, not the daemon's memory)."""
        while self._inbox.qsize() >= INBOX_FRAMES:
            self._taken.clear()
            await self._taken.wait()
        self._inbox.put_nowait((kind, data))


class Calls:
    def __init__(self, handlers: Handlers):
        self.handlers = handlers
        self.containers = handlers.containers

    async def call(self, op: str, raw: dict[str, Any], ctx: ApiContext | None = None) -> Any:
        entry = operations.BY_NAME[op]
        params = entry.build(raw)
        return await getattr(self.handlers, entry.method)(ctx or ApiContext(op), params)


def frame(stream: int, data: bytes) -> bytes:
    """Docker's multiplexed stream frame: stream (0 stdin, 1 stdout, 2 stderr), three
    zero bytes, the payload's length (big-endian u32), the payload."""
    return struct.pack(">BxxxL", stream, len(data)) + data


STREAMS = {"stdout": 1, "stderr": 2}
MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
RAW = "application/vnd.docker.raw-stream"


async def pump_stdin(reader: asyncio.StreamReader, ctx: ApiContext) -> None:
    """A hijacked connection's client bytes are the container's stdin; its half-close
    (the CLI's CloseWrite after stdin's end) is stdin's end."""
    while True:
        data = await reader.read(64 << 10)
        if not data:
            ctx.feed("stdin_eof", True)
            return
        await ctx.push("stdin", data)
