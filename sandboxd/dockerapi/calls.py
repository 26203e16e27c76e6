"""How a route reaches the daemon: through the operation table, like a msgpack request.
:meth:`Calls.call` builds the op's params class from a plain dict (every field checked
by ``operations.build``) and awaits its ``Handlers`` method with an :class:`ApiContext`,
which turns the op's events into whatever the route streams."""
from __future__ import annotations

import asyncio
import json
import logging
import struct
from typing import Any, AsyncIterator, Awaitable, Callable

from .. import operations
from ..errors import SandboxError, Unavailable
from ..handlers import Handlers
from .http import HttpError, Response

log = logging.getLogger(__name__)

JSON = "application/json"
TAR = "application/x-tar"

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
        try:
            return await getattr(self.handlers, entry.method)(ctx or ApiContext(op), params)
        except OSError as exc:
            # Out of fds is said as such, as the msgpack face says it (daemon.py): also
            # where the answer is already streaming (an exec's hijacked stream).
            refusal = Unavailable.out_of_fds(op, exc)
            if refusal is None:
                raise
            log.warning("docker api: %s (%s)", refusal.message, exc)
            raise refusal from None


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


# ---------------------------------------------------------------- streamed answers

def json_line(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode() + b"\r\n"


def error_line(exc: BaseException) -> bytes:
    if isinstance(exc, (SandboxError, HttpError)):
        message = exc.message
    else:
        log.exception("docker api: stream failed", exc_info=exc)
        message = f"internal error: {type(exc).__name__}: {exc}"
    return json_line({"errorDetail": {"message": message}, "error": message})


async def op_chunks(work: Awaitable[Any], queue: asyncio.Queue) -> AsyncIterator[bytes]:
    """Run the op ``work``, yielding what its sink queues meanwhile; then its error, if
    any (raised here). Leaving early cancels the op."""
    task = asyncio.ensure_future(work)
    getter: asyncio.Future | None = None
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
                continue
            getter.cancel()
            while not queue.empty():
                yield queue.get_nowait()
            task.result()
            return
    finally:
        if getter is not None:
            getter.cancel()
        task.cancel()


async def stream_response(work: Awaitable[Any], queue: asyncio.Queue, *,
                          content_type: str = JSON, in_band: bool = True,
                          convert: Callable[[BaseException], BaseException] = lambda e: e
                          ) -> Response:
    """Run the op ``work`` and answer with what its sink queues. Its error before the
    first item is this request's error (``convert`` may turn it into dockerd's);
    after, a last error line (``in_band``), else the connection is cut (a tar cut short
    must not look complete)."""
    items = op_chunks(work, queue)
    try:
        first = await anext(items, None)
    except Exception as e:
        raise convert(e) from None

    async def body() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield first
            async for item in items:
                yield item
        except Exception as e:
            if not in_band:
                log.warning("docker api: stream cut: %s", e)
                raise ConnectionAbortedError(str(e)) from None
            yield error_line(e)
        finally:
            await items.aclose()
    return Response(200, content_type=content_type, chunks=body())


async def tar_response(calls: Calls, op: str, params: dict[str, Any], *,
                       convert: Callable[[BaseException], BaseException] = lambda e: e
                       ) -> Response:
    """The ``data`` events of the streaming op ``op`` as a tar body (``docker export``,
    ``docker save``); cut off, not ended with an error line, when the op fails midway."""
    queue: asyncio.Queue[bytes] = asyncio.Queue(8)

    async def sink(event: str, data: Any) -> None:
        if event == "data":
            await queue.put(data)

    return await stream_response(calls.call(op, params, ApiContext(op, sink)), queue,
                                 content_type=TAR, in_band=False, convert=convert)
