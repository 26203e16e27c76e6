"""pytest_sandbox: run pytest tests in fresh, limited sandboxd containers.

``@pytest.mark.container(memory="256m", timeout=30)`` on a test, class or module (or
``--sandbox`` for the whole session) runs each such test in its own container; the
result appears in the normal report. Fixtures: ``sandbox`` (a connected client) and
``sandbox_container`` (service containers with readiness waits, see
:mod:`pytest_sandbox.services`), ``sandbox_network`` / ``sandbox_networks`` (user
networks); ``links=[...]`` connects a test to service fixtures (:mod:`.links`). The plugin is :mod:`pytest_sandbox.plugin`; the guide is
``docs/pytest.md``.
"""
from __future__ import annotations

from typing import Any

WORKER_ENV = "PYTEST_SANDBOX_WORKER"    # set inside a test's container: no nesting

_EXPORTS = {"Service": "services", "ServiceFactory": "services",
            "ServiceNotReady": "services", "PortOpen": "services", "LogLine": "services",
            "CommandSucceeds": "services", "ServiceNetwork": "services",
            "NetworkFactory": "services", "LinkedService": "links"}

__all__ = ["WORKER_ENV", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_sandbox' has no attribute {name!r}")
    from importlib import import_module
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
