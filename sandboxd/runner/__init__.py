"""The runner: turns a ``ContainerSpec`` into a running, isolated, limited process.

``Runner`` / ``AsyncRunner`` (in :mod:`.api`) own a fork server; importing this package
stays cheap (``spec`` is used by the CLI), so they load on first use.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Runner", "AsyncRunner", "RunResult", "ExitInfo"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api
        return getattr(api, name)
    raise AttributeError(name)
