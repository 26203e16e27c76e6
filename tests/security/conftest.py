"""The adversarial suite: every check of shared/CHECKS.md as a real attempt, made from
inside a container (or checked from the host), that must fail closed.

Tests are named after the check they prove: ``test_check_08_...`` is CHECKS.md item 8.
They share one daemon (``secure_daemon``: busybox imported, the default profile) and a
``probe`` helper that runs a shell or Python snippet in a fresh container and returns the
finished run. Tests that kill or restart a daemon start their own :class:`Daemon`.
"""
from __future__ import annotations

import pytest

from harness import running


@pytest.fixture(scope="session")
def secure_daemon():
    """A daemon with the defaults a user gets (busybox imported)."""
    with running() as d:
        yield d
