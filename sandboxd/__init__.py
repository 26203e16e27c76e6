"""sandboxd: fresh, strictly limited Linux containers for tests and notebook code.

    from sandboxd import Client
    with Client() as client:
        result = client.run("busybox", ["sh", "-c", "echo hi"], memory="64m")

Names are loaded on first use (``sbx`` and the daemon import this package on every
start and must not pay for the client API).
"""
from __future__ import annotations

# Annotations only: ``typing`` costs ~2 ms of every ``sbx`` start (sandboxd/cli/main.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from .version import __version__

_EXPORTS = {
    "Client": "api", "AsyncClient": "api", "Result": "api", "ExecResult": "api",
    "ExitStatus": "api", "ContainerError": "api", "Container": "api", "Image": "api",
    "ContainerConfig": "model", "HostConfig": "model", "build_config": "flags",
    "SandboxError": "errors", "NotFound": "errors", "Conflict": "errors",
    "InvalidArgument": "errors", "LimitExceeded": "errors", "Unavailable": "errors",
    "SetupFailed": "errors", "CommandNotFound": "errors", "CommandNotExecutable": "errors",
    "Cancelled": "errors", "Internal": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sandboxd' has no attribute {name!r}")
    from importlib import import_module
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value          # later look-ups skip this function
    return value


def load_ipython_extension(ip: Any) -> None:
    """``%load_ext sandboxd``: the same as ``%load_ext ipython_ext`` (imported only now,
    so ``import sandboxd`` stays free of IPython)."""
    from ipython_ext import load_ipython_extension as load
    load(ip)


def unload_ipython_extension(ip: Any) -> None:
    from ipython_ext import unload_ipython_extension as unload
    unload(ip)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
