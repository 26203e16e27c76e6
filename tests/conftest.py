"""Shared fixtures. Integration tests need root and the real kernel; they say so when
skipped. Each module that makes kernel objects cleans them up itself; the session-end
check below fails the run when something of ours is left behind."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxd import testing

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config, items):
    skip_root = pytest.mark.skip(reason="needs root: real namespaces, mounts and cgroups")
    for item in items:
        if "integration" in item.path.parts and not IS_ROOT:
            item.add_marker(skip_root)


@pytest.fixture(scope="session")
def busybox_rootfs() -> Path:
    """A read-only busybox tree to use as a lower dir (never written by tests)."""
    return testing.busybox_rootfs()
