"""What an operation gets besides its params, as the services see it: the request's
stream and its session. The daemon's ``RequestContext`` is the one implementation; the
services name this protocol instead, so that they never import the daemon (which builds
them)."""
from __future__ import annotations

from typing import Any, Protocol


class Session(Protocol):
    id: str

    def track(self, kind: str, obj_id: str) -> None: ...

    def untrack(self, kind: str, obj_id: str) -> None: ...


class RequestContext(Protocol):
    id: int
    op: str
    streaming: bool

    @property
    def session(self) -> Session | None: ...

    async def send_event(self, name: str, data: Any = None) -> None: ...

    async def receive(self) -> tuple[str, Any]: ...
