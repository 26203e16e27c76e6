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

    async def send_event(self, name: str, data: Any = None) -> None:
        if self._sink is not None:
            await self._sink(name, data)

    async def receive(self) -> tuple[str, Any]:
        return await self._inbox.get()

    def feed(self, kind: str, data: Any) -> None:
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
        ctx.feed("stdin", data)
