"""``GET /events``: the daemon's event bus (``sandboxd.events``) as Docker's stream of
JSON objects, one a line, over the ``system.events`` operation."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, AsyncIterator

from .. import operations
from ..errors import SandboxError
from ..events import check_filters
from .calls import ApiContext, Calls, op_chunks
from .containers import docker_filters
from .http import Request, Response, Route, route

log = logging.getLogger(__name__)
QUEUE = 64       # lines between the bus's reader and the socket


class EventRoutes:
    def __init__(self, calls: Calls):
        self.calls = calls

    def routes(self) -> list[Route]:
        return [route("GET", "/events", self.events)]

    async def events(self, req: Request) -> Response:
        params = {"since": req.seconds("since"), "until": req.seconds("until"),
                  "filters": docker_filters(req.json_arg("filters"))}
        # Checked before the head goes out: a bad filter is a 400, not a cut stream.
        check_filters(operations.BY_NAME["system.events"].build(params).filters)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE)

        async def sink(name: str, data: Any) -> None:
            if name == "event":
                await queue.put(json.dumps(data).encode() + b"\n")

        ctx = ApiContext("system.events", sink)
        return Response(200, chunks=_while_connected(req, op_chunks(
            self.calls.call("system.events", params, ctx), queue)))


async def _while_connected(req: Request, chunks: AsyncIterator[bytes]
                           ) -> AsyncIterator[bytes]:
    """``chunks`` until they end or the client goes (an idle stream would otherwise
    notice only at its next event)."""
    gone = asyncio.ensure_future(req.disconnected())
    step: asyncio.Future | None = None
    try:
        while True:
            step = asyncio.ensure_future(chunks.__anext__())
            await asyncio.wait({step, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                return
            try:
                chunk = step.result()
            except StopAsyncIteration:
                return
            except SandboxError as e:      # after the head: the stream ends (as dockerd's)
                log.info("docker api: events stream ended: %s", e.message)
                return
            step = None
            yield chunk
    finally:
        if gone.done() and not gone.cancelled():
            gone.exception()               # a reset connection is just a gone client
        gone.cancel()
        if step is not None:
            step.cancel()
            await asyncio.gather(step, return_exceptions=True)
        await chunks.aclose()          # type: ignore[attr-defined]
