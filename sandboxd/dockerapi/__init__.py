"""The Docker Engine API face: the daemon's second protocol, REST over a unix socket,
so that the docker CLI, docker-py and testcontainers drive sandboxd unchanged.

It is thin by design: each route builds a params class of the operation table and calls
the same ``Handlers`` method a msgpack request would (``calls.py``), then shapes the
result as Docker's JSON (``translate.py``, ``sandboxd.render``). One store, one set of
names: a container made through either face is seen by both. docs/docker-api.md lists
what is covered.
"""
from __future__ import annotations

import logging
import socket

from .. import streams
from ..errors import (CommandNotExecutable, CommandNotFound, Conflict, InvalidArgument,
                      LimitExceeded, NotFound, SandboxError, Unavailable)
from ..handlers import Handlers
from .calls import Calls
from .containers import ContainerRoutes
from .events import EventRoutes
from .http import HttpServer
from .images import ImageRoutes
from .networks import NetworkRoutes
from .system import SystemRoutes
from .volumes import VolumeRoutes

log = logging.getLogger(__name__)


def error_status(exc: BaseException) -> tuple[int, str] | None:
    """dockerd's status for one of our errors (None: not ours, a 500)."""
    if isinstance(exc, NotFound):
        return 404, exc.message
    if isinstance(exc, Conflict):
        return 409, exc.message
    if isinstance(exc, CommandNotFound):     # the CLI exits 127 on these words
        return 400, f"failed to create task: {exc.message}"
    if isinstance(exc, CommandNotExecutable):    # and 126 on "permission denied"
        return 400, f"failed to create task: {exc.message.replace('Permission', 'permission')}"
    if isinstance(exc, (InvalidArgument, LimitExceeded)):
        return 400, exc.message
    if isinstance(exc, Unavailable):                 # dockerd's errdefs.Unavailable
        return 503, exc.message
    if isinstance(exc, OSError) and (refusal := Unavailable.out_of_fds("", exc)):
        log.warning("docker api: %s (%s)", refusal.message, exc)
        return 503, refusal.message
    if isinstance(exc, SandboxError):
        return 500, exc.message
    return None


class DockerApi:
    def __init__(self, handlers: Handlers):
        calls = Calls(handlers)
        routes = SystemRoutes(calls).routes() + ContainerRoutes(calls).routes() + \
            ImageRoutes(calls).routes()
        routes += NetworkRoutes(calls).routes()
        routes += VolumeRoutes(calls).routes()
        routes += EventRoutes(calls).routes()
        self.http = HttpServer(routes, error_status)
        self._listener: streams.Listener | None = None

    async def start(self, sock: socket.socket) -> None:
        self._listener = streams.serve(self.http.accept, sock, limit=1 << 20)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        await self.http.close()
