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
from .stash import CONTROLLER, controller_of

if TYPE_CHECKING:
    from .services import NetworkFactory, ServiceFactory, ServiceNetwork

MARKER_DOC = (
    "container(image='host', memory=None, cpus=None, cpu_quota=None, cpu_period=None, "
    "pids=None, ulimits=None, network=None, env=None, volumes=None, timeout=None, "
    "read_only=False, links=None, python=None, fresh=False): run this test — its fixtures' setup and "
    "teardown included — in a fresh sandboxd container with these limits; the project "
    "is visible read-only at the same path, /tmp is a fresh tmpfs. links={alias: "
    "fixture} names service fixtures, set up on the host, that the test reaches by "
    "alias; network= a network mode or a network fixture (sandbox_network); fresh=True a "
    "cold container, not a fork of the session's zygote. Defaults "
    "come from --sandbox-* options and sandbox_* ini values. See docs/pytest.md.")


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
    group.addoption("--sandbox-no-template", action="store_true", default=False,
                    help="start a fresh interpreter in each container instead of a clone "
                         "of the daemon's pre-imported worker (host image only)")
    group.addoption("--sandbox-no-zygote", action="store_true", default=False,
                    help="give every containerised test a cold container instead of a "
                         "fork of the session's zygote (which imports the test modules "
                         "once)")
    group.addoption("--sandbox-notebooks", action="store_true", default=False,
                    help="collect .ipynb files: each runs in a sandboxed session as a test "
                         "[ini sandbox_notebooks]")
    parser.addini("sandbox_notebooks", "collect .ipynb files as tests", type="bool",
                  default=False)
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
    if not wants_container(item) or getattr(item, "runs_own_container", False):
        return None
    controller.run_item(item, nextitem)
    return True


def pytest_collect_file(file_path: Any, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix == ".ipynb":
        from .notebooks import collect_file
        return collect_file(file_path, parent)
    return None


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    controller = config.stash.get(CONTROLLER, None)
    if controller is not None and config.getoption("sandbox_report"):
        controller.summary(terminalreporter)


@pytest.fixture(scope="session")
def sandbox(pytestconfig: pytest.Config) -> Any:
    """A connected ``sandboxd.Client`` (this session's connection: what it creates is
    removed when the pytest process ends at the latest)."""
    return controller_of(pytestconfig).client


@pytest.fixture(scope="session")
def sandbox_container(pytestconfig: pytest.Config,
                      sandbox_networks: NetworkFactory) -> Iterator[ServiceFactory]:
    """Start service containers: ``sandbox_container(image, cmd, env=..., wait=...)``
    returns a started, ready :class:`~pytest_sandbox.services.Service`; use it as a
    context manager in a fixture of any scope to remove it at that scope's end::

        @pytest.fixture(scope="module")
        def web(sandbox_container):
            with sandbox_container("busybox", "httpd -f -p 80",
                                   wait=PortOpen(80)) as svc:
                yield svc

    Whatever is still running at the end of the session is removed then (before the
    session's networks: hence ``sandbox_networks`` above)."""
    from .services import ServiceFactory
    factory = ServiceFactory(lambda: controller_of(pytestconfig).client)
    try:
        yield factory
    finally:
        factory.remove_all()


@pytest.fixture(scope="session")
def sandbox_networks(pytestconfig: pytest.Config) -> Iterator[NetworkFactory]:
    """Make user-defined networks: ``sandbox_networks()`` returns a fresh
    :class:`~pytest_sandbox.services.ServiceNetwork` (``pytest-<random>``); use it as a
    context manager in a fixture of any scope to remove it at that scope's end. Whatever
    is left is removed at the end of the session."""
    from .services import NetworkFactory
    factory = NetworkFactory(lambda: controller_of(pytestconfig).client)
    try:
        yield factory
    finally:
        factory.remove_all()


@pytest.fixture
def sandbox_network(sandbox_networks: NetworkFactory) -> Iterator[ServiceNetwork]:
    """A fresh user-defined network for one test, removed after it. Services join it
    with ``sandbox_container(..., network_mode=sandbox_network.name)``; a containerised
    test joins it with ``@pytest.mark.container(network="sandbox_network")`` and reaches
    them by container name."""
    with sandbox_networks() as network:
        yield network
