"""HTTP/1.1 for the Docker Engine API face, on h11 (parsing, framing, keep-alive and the
``Upgrade: tcp`` switch are h11's; h11 does no I/O, so the asyncio loop stays ours and a
hijacked connection is just the same stream after a 101).

A route's handler gets a :class:`Request` and returns a :class:`Response`: JSON, a
stream of chunks (``logs``, ``events``, pull progress), or a :class:`Hijack` whose
coroutine then owns the raw connection (``attach``, ``exec start``).
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import re
import struct
import termios
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qs, unquote, urlsplit

import h11

from .. import streams, untrusted_json
from ..errors import SandboxError

log = logging.getLogger(__name__)

MAX_HEAD = 64 << 10          # bytes of a request line and headers
MAX_JSON_BODY = 16 << 20     # bytes of a JSON body (a create is a few KiB)
READ_CHUNK = 256 << 10
HEAD_PATIENCE = 0.5          # seconds a hijacked stream waits for its head to be read
VERSION_PREFIX = re.compile(r"^/v(\d+)\.(\d+)(/.*)$")


class HttpError(Exception):
    """Answered as Docker's error shape: ``{"message": ...}`` with this status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: AsyncIterator[bytes] | None = None     # streamed (chunked) when set


def json_response(value: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(value).encode() + b"\n")


def empty(status: int = 204) -> Response:
    return Response(status, b"", content_type="")


@dataclass
class Hijack:
    """Take the connection over after the head: ``run(reader, writer)`` reads the
    client's raw bytes and writes Docker's stream; ``content_type`` says which
    (multiplexed frames or a raw TTY stream)."""
    run: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    content_type: str = "application/vnd.docker.raw-stream"


class Request:
    def __init__(self, conn: "_Connection", event: h11.Request):
        self._conn = conn
        self.method = event.method.decode()
        target = urlsplit(event.target.decode("latin-1"))
        path = unquote(target.path)
        match = VERSION_PREFIX.match(path)
        self.api_version = (int(match[1]), int(match[2])) if match else None
        self.path = match[3] if match else path
        self.query = {k: v for k, v in parse_qs(target.query, keep_blank_values=True).items()}
        self.headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
        self.upgrade = "upgrade" in self.headers.get("connection", "").lower()
        self.params: dict[str, str] = {}       # the route's path parameters
        self._body_done = False

    # -- query
    def arg(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str, default: bool = False) -> bool:
        """Docker's boolean query values: 1/true/True/yes, 0/false/False/no, or empty."""
        value = self.arg(name)
        if value == "":
            return default
        lowered = value.lower()
        if lowered in ("1", "true", "yes"):
            return True
        if lowered in ("0", "false", "no"):
            return False
        raise HttpError(400, f"invalid boolean value {value!r} for query parameter {name}")

    def integer(self, name: str, default: int) -> int:
        value = self.arg(name)
        if value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise HttpError(400, f"invalid value {value!r} for query parameter {name}: "
                                 f"not an integer") from None

    def seconds(self, name: str) -> float | None:
        """Docker's ``since``/``until``: Unix seconds, with a fraction or Go's
        ``seconds.nanoseconds`` (the CLI turns durations and dates into these)."""
        value = self.arg(name)
        if not value:
            return None
        try:
            return float(value)
        except ValueError:
            raise HttpError(400, f"invalid value {value!r} for query parameter {name}: "
                                 f"expected Unix seconds") from None

    def json_arg(self, name: str) -> Any:
        """A JSON-encoded query value (``filters``, ``buildargs``, ``labels``)."""
        value = self.arg(name)
        if not value:
            return None
        try:
            return untrusted_json.loads(value)
        except ValueError as e:
            raise HttpError(400, f"invalid JSON in query parameter {name}: {e}") from None

    # -- body
    async def chunks(self, limit: int) -> AsyncIterator[bytes]:
        """The body as it arrives, refused past ``limit`` bytes."""
        total = 0
        async for data in self._conn.body_chunks():
            total += len(data)
            if total > limit:
                raise HttpError(413, f"request body larger than {limit} bytes")
            yield data
        self._body_done = True

    async def body(self, limit: int = MAX_JSON_BODY) -> bytes:
        return b"".join([c async for c in self.chunks(limit)])

    async def disconnected(self) -> None:
        """Returns once the client closed the connection: a long stream with nothing to
        send (``/events``) ends then, not at its next write. Bytes that come meanwhile
        stay h11's (a pipelined next request)."""
        while True:
            data = await self._conn.reader.read(READ_CHUNK)
            self._conn.h11.receive_data(data)
            if not data:
                return

    async def json(self, *, required: bool = False) -> dict:
        raw = await self.body()
        if not raw.strip():
            if required:
                raise HttpError(400, "request body is empty: a JSON object was expected")
            return {}
        try:
            value = untrusted_json.loads(raw)
        except ValueError as e:
            raise HttpError(400, f"invalid JSON body: {e}") from None
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise HttpError(400, f"invalid JSON body: expected an object, got "
                                 f"{type(value).__name__}")
        return value


Handler = Callable[[Request], Awaitable["Response | Hijack"]]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern
    handler: Handler


def route(method: str, template: str, handler: Handler) -> Route:
    """``/containers/{id}/json``: a ``{name}`` matches one path segment; ``{name:path}``
    the rest (image names have slashes)."""
    regex = re.sub(r"\{(\w+):path\}", r"(?P<\1>.+)", template)
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex)
    return Route(method, re.compile(f"^{regex}$"), handler)


class _Connection:
    def __init__(self, server: "HttpServer", reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter):
        self.server = server
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)

    async def _next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.reader.read(READ_CHUNK)
            self.h11.receive_data(data)

    async def body_chunks(self) -> AsyncIterator[bytes]:
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            else:       # EndOfMessage, ConnectionClosed, or PAUSED before an upgrade
                return

    async def send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            streams.write(self.writer, data)
            await self.writer.drain()

    async def serve(self) -> None:
        try:
            while True:
                event = await self._next_event()
                if isinstance(event, h11.ConnectionClosed):
                    return
                if not isinstance(event, h11.Request):
                    return
                if not await self._handle(Request(self, event)):
                    return
                if self.h11.our_state is h11.MUST_CLOSE:
                    return
                try:
                    self.h11.start_next_cycle()
                except h11.LocalProtocolError:
                    return
        except h11.RemoteProtocolError as e:
            await self._bad_request(e)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.writer.close()

    async def _bad_request(self, e: h11.RemoteProtocolError) -> None:
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = json.dumps({"message": f"malformed HTTP request: {e}"}).encode()
        try:
            await self.send(h11.Response(status_code=e.error_status_hint, headers=[
                ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                ("Connection", "close")]))
            await self.send(h11.Data(data=body))
            await self.send(h11.EndOfMessage())
        except (ConnectionError, h11.LocalProtocolError):
            pass

    async def _handle(self, request: Request) -> bool:
        """Answer one request; False when the connection must end."""
        try:
            result = await self.server.dispatch(request)
        except HttpError as e:
            result = json_response({"message": e.message}, e.status)
        if isinstance(result, Hijack):
            await self._hijack(request, result)
            return False
        if result.status == 413:         # the rest of a body too large is not read
            result.headers.append(("Connection", "close"))
            await self._respond(result)
            return False
        if not request._body_done:       # what the handler did not read is dropped
            async for _ in self.body_chunks():
                pass
        if request.method == "HEAD" and result.chunks is None:   # h11 sends no body here
            result = Response(result.status, b"", result.content_type,
                              result.headers + [("Content-Length", str(len(result.body)))])
        await self._respond(result)
        return True

    def _headers(self, response: Response, length: int | None) -> list[tuple[str, str]]:
        headers = [("Api-Version", API_VERSION), ("Server", SERVER_HEADER),
                   ("Docker-Experimental", "false"), ("Ostype", "linux")]
        if response.content_type:
            headers.append(("Content-Type", response.content_type))
        if length is not None and response.status not in (204, 304) and \
                not any(k == "Content-Length" for k, _ in response.headers):
            headers.append(("Content-Length", str(length)))
        return headers + response.headers

    async def _respond(self, response: Response) -> None:
        if response.chunks is None:
            await self.send(h11.Response(status_code=response.status,
                                         headers=self._headers(response, len(response.body))))
            if response.body:
                await self.send(h11.Data(data=response.body))
            await self.send(h11.EndOfMessage())
            return
        await self.send(h11.Response(status_code=response.status,
                                     headers=self._headers(response, None)))
        try:
            async for chunk in response.chunks:
                if chunk:
                    await self.send(h11.Data(data=chunk))
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as e:
            # The status went out already: the stream is cut (never ended as if whole),
            # the op's error logged; a bad request's (SandboxError) in one line.
            if isinstance(e, SandboxError):
                log.warning("docker api: stream cut: %s", e)
            else:
                log.exception("docker api: stream failed", exc_info=e)
            raise ConnectionAbortedError(str(e)) from None
        finally:
            aclose = getattr(response.chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        await self.send(h11.EndOfMessage())

    async def _hijack(self, request: Request, hijack: Hijack) -> None:
        """Docker's hijack: a 101 switch when the client asked to upgrade (the CLI and
        docker-py do), else a 200 head and the raw stream on the same connection."""
        if not request._body_done:
            async for _ in self.body_chunks():
                pass
        if request.upgrade:
            await self.send(h11.InformationalResponse(status_code=101, headers=[
                ("Content-Type", hijack.content_type), ("Connection", "Upgrade"),
                ("Upgrade", "tcp"), ("Api-Version", API_VERSION)]))
        else:
            streams.write(self.writer, (
                f"HTTP/1.1 200 OK\r\nContent-Type: {hijack.content_type}\r\n"
                f"Api-Version: {API_VERSION}\r\nConnection: close\r\n\r\n").encode())
        tail, _closed = self.h11.trailing_data
        if tail:
            self.reader.feed_data(bytes(tail))       # stdin that came with the head
        await self.writer.drain()
        # The stream runs at once (an attach subscribes before the client's start),
        # but its bytes wait until the client has read the head.
        writer = _AfterHead(self.writer, asyncio.ensure_future(
            _until_read(self.writer, HEAD_PATIENCE)))
        try:
            await hijack.run(self.reader, writer)     # type: ignore[arg-type]
        finally:
            writer.cancel_wait()
        await writer.drain()


class _AfterHead:
    """A hijacked stream's writer: bytes written before the client has read the
    response's head are held until it has (``head_read``), then sent in order. docker-py
    reads the head through a buffered file, then the stream from the raw socket: stream
    bytes that arrived with the head sat in that buffer and were lost. An ``exec_run``
    of ``echo x`` gave b"" about once in 300 with four clients at once (dockerd has the
    same race, hidden by its exec's ~50 ms start)."""

    def __init__(self, writer: asyncio.StreamWriter, head_read: asyncio.Future):
        self._writer = writer
        self._head_read = head_read
        self._held: list[bytes] | None = []

    def write(self, data: bytes) -> None:
        if self._held is None:
            streams.write(self._writer, data)
        else:
            self._held.append(data)

    async def drain(self) -> None:
        if self._held is not None:
            try:
                await asyncio.shield(self._head_read)
            except asyncio.CancelledError:
                if not self._head_read.cancelled():
                    raise                    # we were cancelled, not the wait
            held, self._held = self._held, None
            streams.write(self._writer, b"".join(held))
        await self._writer.drain()

    def cancel_wait(self) -> None:
        self._head_read.cancel()

    def __getattr__(self, name: str) -> Any:        # close, transport, get_extra_info ...
        return getattr(self._writer, name)


async def _until_read(writer: asyncio.StreamWriter, patience: float) -> None:
    """Until the client has read all that was written (its socket's send queue is
    empty; on a unix socket that is what the peer has not read yet), ``patience``
    seconds at most."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while loop.time() < deadline:
        if not writer.transport.get_write_buffer_size():
            try:
                queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ,
                                                        bytes(4)))[0]
            except OSError:
                return
            if not queued:
                return
        await asyncio.sleep(0.001)


API_VERSION = "1.43"
# Older prefixes are refused as dockerd does; newer ones are served (nothing here changes
# by version), which lets a client that skipped negotiation work.
MIN_API_VERSION = (1, 24)
SERVER_HEADER = "Docker/24.0.0-sandboxd (linux)"


class HttpServer:
    """Routes requests to handlers; errors become Docker's ``{"message": ...}``."""

    def __init__(self, routes: list[Route],
                 error_status: Callable[[BaseException], tuple[int, str] | None]):
        self.routes = routes
        self._error_status = error_status
        self.tasks: set[asyncio.Task] = set()

    async def dispatch(self, request: Request) -> Response | Hijack:
        if request.api_version is not None and request.api_version < MIN_API_VERSION:
            raise HttpError(400, f"client version {'.'.join(map(str, request.api_version))} "
                                 f"is too old. Minimum supported API version is "
                                 f"{'.'.join(map(str, MIN_API_VERSION))}, please upgrade "
                                 f"your client to a newer version")
        allowed = []
        for r in self.routes:
            match = r.pattern.match(request.path)
            if match is None:
                continue
            if r.method != request.method:
                allowed.append(r.method)
                continue
            request.params = match.groupdict()
            try:
                return await r.handler(request)
            except (HttpError, h11.RemoteProtocolError):    # the latter: a body cut off
                raise
            except Exception as e:
                mapped = self._error_status(e)
                if mapped is None:
                    log.exception("docker api: %s %s", request.method, request.path)
                    raise HttpError(500, f"internal error: {type(e).__name__}: {e}") from None
                raise HttpError(*mapped) from None
        if allowed:
            raise HttpError(405, f"method {request.method} not allowed for "
                                 f"{request.path} (allowed: {', '.join(sorted(set(allowed)))})")
        raise HttpError(404, f"page not found: {request.method} {request.path} is not part "
                             f"of sandboxd's Docker Engine API (docs/docker-api.md)")

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            await _Connection(self, reader, writer).serve()
        except asyncio.CancelledError:
            # close() at shutdown: ended, not cancelled (asyncio's stream callback on
            # Python 3.11 logs a cancelled connection task as an error)
            pass
        finally:
            if task is not None:
                self.tasks.discard(task)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
