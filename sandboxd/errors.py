"""Typed errors that cross the wire by code.

    SandboxError                  base; ``code`` is its stable wire name
    ├── NotFound                  not_found: no such container, image, network ...
    ├── Conflict                  conflict: name in use, wrong state for the operation
    ├── InvalidArgument           invalid_argument: a request or spec field is wrong
    ├── LimitExceeded             limit_exceeded: a frame, log or resource cap was hit
    ├── Unavailable               unavailable: the daemon or runner cannot be reached
    ├── SetupFailed               setup_failed: the kernel refused a container setup step
    ├── CommandNotFound           command_not_found: exec of the workload failed (127)
    ├── CommandNotExecutable      command_not_executable: exec permission denied (126)
    ├── Cancelled                 cancelled: the client cancelled the request
    └── Internal                  internal: a bug; the message says where

The daemon sends ``{"code": ..., "message": ..., "details": ...}``; the client rebuilds
the exception with :func:`from_wire`, which only ever instantiates classes listed here.
"""
from __future__ import annotations

# Annotations only: ``typing`` costs ~2 ms of every ``sbx`` start (sandboxd/cli/main.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class SandboxError(Exception):
    code = "internal"
    # Set on what the daemon sent (from_wire): ``sbx`` labels only those "Error response
    # from daemon", as Docker does; a problem the client found itself is not one.
    from_daemon = False

    def __init__(self, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class NotFound(SandboxError):
    code = "not_found"


class Conflict(SandboxError):
    code = "conflict"


class InvalidArgument(SandboxError):
    code = "invalid_argument"

    @classmethod
    def of(cls, problems: list[str]) -> "InvalidArgument":
        """One error that lists every problem found (each names its field)."""
        return cls("; ".join(problems), {"problems": problems})


class LimitExceeded(SandboxError):
    code = "limit_exceeded"


class Unavailable(SandboxError):
    code = "unavailable"

    @classmethod
    def out_of_fds(cls, op: str, exc: OSError) -> Unavailable | None:
        """EMFILE or ENFILE as what it is, the daemon's load and not a bug (None for any
        other error)."""
        import errno
        import resource
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            return None
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return cls(f"{op + ': ' if op else ''}the daemon is out of file descriptors (its "
                   f"open files limit is {limit}); retry when fewer containers, execs and "
                   f"streams are open")


class SetupFailed(SandboxError):
    """A container setup step failed; ``details`` has ``step`` and ``errno``."""

    code = "setup_failed"


class CommandNotFound(SandboxError):
    code = "command_not_found"
    exit_code = 127


class CommandNotExecutable(SandboxError):
    code = "command_not_executable"
    exit_code = 126


class Cancelled(SandboxError):
    code = "cancelled"


class Internal(SandboxError):
    code = "internal"


_BY_CODE: dict[str, type[SandboxError]] = {
    cls.code: cls
    for cls in (NotFound, Conflict, InvalidArgument, LimitExceeded, Unavailable,
                SetupFailed, CommandNotFound, CommandNotExecutable, Cancelled, Internal)
}


def from_wire(payload: Any) -> SandboxError:
    """Rebuild an error sent by the daemon; unknown codes become ``Internal``."""
    if not isinstance(payload, dict):
        return Internal(f"malformed error reply: {payload!r:.200}")
    cls = _BY_CODE.get(payload.get("code"), Internal)
    message = payload.get("message")
    details = payload.get("details")
    error = cls(str(message) if message is not None else cls.code,
                details if isinstance(details, dict) else None)
    error.from_daemon = True
    return error
