"""Integration tests: the shared daemon fixture; the harness lives in tests/harness.py
(``from conftest import Daemon`` keeps working for the modules here)."""
from __future__ import annotations

import pytest

from harness import CGROUP_ROOT, PY, REPO, Daemon, pid_alive, running, wait_until  # noqa: F401


@pytest.fixture(scope="session")
def daemon():
    """The shared daemon (busybox imported; default ulimit nofile=1280:2560). Tests that
    kill or restart a daemon start their own."""
    with running("--default-ulimit", "nofile=1280:2560") as d:
        yield d


@pytest.fixture(scope="session")
def docker_host(daemon) -> str:
    """``DOCKER_HOST`` of the shared daemon's Docker Engine API (docker CLI, docker-py,
    testcontainers)."""
    return f"unix://{daemon.docker_sock}"
