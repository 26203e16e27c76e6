"""pytest_sandbox: ``@pytest.mark.container(...)`` runs a test in a fresh sandboxd
container, and its result shows up in the normal report.

Registered through the ``pytest11`` entry point (name ``sandbox``). This module is thin:
options, the marker, the protocol hook and fixtures; the work is imported when a test
first needs a container (:mod:`.controller` on the host, :mod:`.worker` inside).

Inside a container (``PYTEST_SANDBOX_WORKER`` set) the plugin only registers its
marker and options: the worker runs the test where it is.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from . import WORKER_ENV

if TYPE_CHECKING:
    from .controller import Controller
    from .services import ServiceFactory

CONTROLLER = pytest.StashKey["Controller"]()

MARKER_DOC = (
    "container(image='host', memory=None, cpus=None, cpu_quota=None, cpu_period=None, "
    "pids=None, ulimits=None, network='none', env=None, volumes=None, timeout=None, "
    "read_only=False, links=None, python=None): run this test — its fixtures' setup and "
    "teardown included — in a fresh sandboxd container with these limits; the project "
    "is visible read-only at the same path, /tmp is a fresh tmpfs. Defaults come from "
    "--sandbox-* options and sandbox_* ini values. See docs/pytest.md.")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sandbox", "run tests in sandboxd containers")
    group.addoption("--sandbox", action="store_true", default=False,
                    help="run every test of the session in a container")
    group.addoption("--sandbox-image", metavar="IMAGE", default=None,
                    help="image for containerised tests [ini sandbox_image; default host]")
    group.addoption("--sandbox-memory", metavar="SIZE", default=None,
                    help="memory limit, e.g. 256m [ini sandbox_memory; default none]")
    group.addoption("--sandbox-cpus", metavar="N", default=None,
                    help="CPU limit, e.g. 0.5 [ini sandbox_cpus; default none]")
    group.addoption("--sandbox-timeout", metavar="SECONDS", default=None,
                    help="kill a containerised test after this long and fail it "
                         "[ini sandbox_timeout; default none]")
    group.addoption("--sandbox-host", metavar="unix:///PATH", default=None,
                    help="the daemon's socket [ini sandbox_host; default $SANDBOXD_HOST "
                         "or the system socket]")
    group.addoption("--sandbox-report", action="store_true", default=False,
                    help="list each containerised test's peak memory and CPU time")
    for name, text in (("image", "image for containerised tests (default host)"),
                       ("memory", "memory limit of containerised tests"),
                       ("cpus", "CPU limit of containerised tests"),
                       ("timeout", "seconds before a containerised test is killed"),
                       ("host", "the sandboxd socket")):
        parser.addini(f"sandbox_{name}", text, default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_DOC)
    if os.environ.get(WORKER_ENV):
        return
    from .controller import Controller
    config.stash[CONTROLLER] = Controller(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    controller = config.stash.get(CONTROLLER, None)
    if controller is not None:
        controller.close()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    controller = item.config.stash.get(CONTROLLER, None)
    if controller is None:
        return None
    from .controller import wants_container
    if not wants_container(item):
        return None
    controller.run_item(item, nextitem)
    return True


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    controller = config.stash.get(CONTROLLER, None)
    if controller is not None and config.getoption("sandbox_report"):
        controller.summary(terminalreporter)


def _controller(config: pytest.Config) -> Controller:
    controller = config.stash.get(CONTROLLER, None)
    if controller is None:
        raise pytest.UsageError("the sandbox fixtures talk to the daemon from the host; "
                                "they are not available inside a containerised test")
    return controller


@pytest.fixture(scope="session")
def sandbox(pytestconfig: pytest.Config) -> Any:
    """A connected ``sandboxd.Client`` (this session's connection: what it creates is
    removed when the pytest process ends at the latest)."""
    return _controller(pytestconfig).client


@pytest.fixture(scope="session")
def sandbox_container(pytestconfig: pytest.Config) -> Iterator[ServiceFactory]:
    """Start service containers: ``sandbox_container(image, cmd, env=..., wait=...)``
    returns a started, ready :class:`~pytest_sandbox.services.Service`; use it as a
    context manager in a fixture of any scope to remove it at that scope's end::

        @pytest.fixture(scope="module")
        def web(sandbox_container):
            with sandbox_container("busybox", "httpd -f -p 80",
                                   wait=PortOpen(80)) as svc:
                yield svc

    Whatever is still running at the end of the session is removed then."""
    from .services import ServiceFactory
    factory = ServiceFactory(lambda: _controller(pytestconfig).client)
    try:
        yield factory
    finally:
        factory.remove_all()
