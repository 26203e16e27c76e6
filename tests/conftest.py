"""Shared fixtures. Integration tests need root and the real kernel; they say so when
skipped. Each module that makes kernel objects cleans them up itself; the session-end
check below fails the run when something of ours is left behind."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from sandboxd import testing

IS_ROOT = os.geteuid() == 0
# Every daemon a test starts (directly or by autostart) leaves the host's forwarding and
# netfilter alone: no masquerade, traffic stays on this machine.
os.environ.setdefault("SANDBOXD_IP_MASQ", "0")
# ... and keeps off the names a real daemon on this machine uses (bridge sbx0, cgroup
# sandboxd): a test daemon's start-up removes unowned links of its prefix.
SESSION_PREFIX = os.environ.setdefault("SANDBOXD_NETWORK_PREFIX",
                                       "sbxt" + secrets.token_hex(2))
os.environ.setdefault("SANDBOXD_CGROUP_PARENT", f"sandboxd-test-{os.getpid()}")
# ... and never contacts Docker Hub: an image it lacks is "pulled" from a loopback port
# where nothing listens (connection refused at once); tests that pull from "Docker Hub"
# point this at a registry of their own.
NO_HUB = "http://127.0.0.1:9"
os.environ.setdefault("SANDBOXD_HUB_ENDPOINT", NO_HUB)


def pytest_sessionstart(session):
    """The suite starts hundreds of ``sbx`` and daemon processes that import this
    checkout (``cwd`` the repository). Where PYTHONDONTWRITEBYTECODE is set (some CI and
    dev shells), none of them writes bytecode, and each compiled its ~100 modules from
    source again: ``sbx ps`` took 0.15-0.2 s a process instead of 0.08. So the
    checkout is byte-compiled once, as pip compiles what it installs."""
    import compileall
    root = Path(__file__).resolve().parent.parent
    for package in ("sandboxd", "pytest_sandbox", "ipython_ext"):
        compileall.compile_dir(root / package, quiet=1)


def pytest_collection_modifyitems(config, items):
    skip_root = pytest.mark.skip(reason="needs root: real namespaces, mounts and cgroups")
    for item in items:
        if ("integration" in item.path.parts or "security" in item.path.parts) \
                and not IS_ROOT:
            item.add_marker(skip_root)


@pytest.fixture(scope="session")
def busybox_rootfs() -> Path:
    """A read-only busybox tree to use as a lower dir (never written by tests)."""
    return testing.busybox_rootfs()


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind(tmp_path_factory):
    """After the whole run: no mount, cgroup or process of this run remains. Every
    kernel object a test makes carries this process's pid in its name
    (``sandboxd-test-<pid>``, ``sandboxd-e2e-<pid>-N``) or lives under its temp dir, so
    other runs on the machine are not counted."""
    yield
    if not IS_ROOT:
        return
    import subprocess
    import time
    tag = f"-{os.getpid()}"
    base = str(tmp_path_factory.getbasetemp())
    deadline = time.monotonic() + 10
    while True:
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text()
                  .splitlines() if line.split()[4].startswith(base)]
        cgroups = [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/sandboxd-*{tag}*")]
        procs = subprocess.run(["pgrep", "-f", f"sandboxd-[a-z0-9]+{tag}"],
                               capture_output=True, text=True).stdout.split()
        links = [line.split(":")[1].strip().split("@")[0] for line in subprocess.run(
            ["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines()
            if line.split(":")[1].strip().startswith(SESSION_PREFIX)]
        if not (mounts or cgroups or procs or links) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not links, f"links left behind: {links}"
    assert not mounts, f"mounts left behind: {mounts}"
    assert not cgroups, f"cgroups left behind: {cgroups}"
    assert not procs, f"processes left behind: {procs}"
