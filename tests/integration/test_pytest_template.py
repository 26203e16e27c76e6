"""pytest_sandbox with the daemon's template: each marked test's worker is a clone of a
pre-imported ``pytest_sandbox.worker`` (host image), still one fresh container per test.

The inner tests check from inside that they run in a clone (``/proc/self/cmdline`` is
the template's), in their own namespaces with dropped capabilities and no_new_privs,
with the marker's limits, and that nothing one test changed (a module global, an
attribute on an imported module) is there in the next one.
"""
from __future__ import annotations

import os

import pytest

from sandboxd.api import Client
from sandboxd.errors import InvalidArgument
from test_pytest_plugin import daemon_sock, inner  # noqa: F401

pytest_plugins = ("pytester",)      # as test_pytest_plugin's: this file runs alone too

HOST_PIDNS = os.readlink("/proc/self/ns/pid")
HOST_CAPS = next(line.split(":")[1].strip() for line in open("/proc/self/status")
                 if line.startswith("CapEff"))

PROJECT = f"""
import json, os, resource, sys
import pytest

STATE = []
CLONE = {{clone}}


def status(field):
    return next(line.split(":")[1].strip() for line in open("/proc/self/status")
                if line.startswith(field + ":"))


def check_fresh(name):
    cmdline = open("/proc/self/cmdline", "rb").read()
    assert (b"sandboxd.runner.template" in cmdline) == CLONE
    assert os.readlink("/proc/self/ns/pid") != {HOST_PIDNS!r}
    assert status("CapEff") != {HOST_CAPS!r}
    assert status("NoNewPrivs") == "1"
    assert STATE == [] and not hasattr(json, "sbx_mark") and not hasattr(pytest, "sbx_mark")
    STATE.append(name)
    json.sbx_mark = pytest.sbx_mark = name     # modules the template imported
    assert os.path.dirname(__file__) in sys.path
    # stdio, the worker's channel and pytest's capture files: no socket of the daemon,
    # the runner or the template, nothing inherited beyond what the worker opened
    links = {{}}
    for name in os.listdir("/proc/self/fd"):
        try:
            links[int(name)] = os.readlink(f"/proc/self/fd/{{name}}")
        except OSError:
            pass
    assert not [l for l in links.values() if l.startswith(("socket:", "anon_inode:"))], links
    assert all(link.startswith(("pipe:", "/tmp/", "/dev/null", "/proc/"))
               for link in links.values()), links


def test_one():
    check_fresh("one")


def test_two():
    check_fresh("two")


@pytest.mark.container(ulimits={{"nofile": (100, 100)}}, pids=20)
def test_limits():
    check_fresh("limits")
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (100, 100)
    r, w = os.pipe()
    kids = []
    try:
        with pytest.raises(BlockingIOError):          # the cgroup's pids limit
            for _ in range(30):
                pid = os.fork()
                if pid == 0:
                    os.close(w)
                    os.read(r, 1)
                    os._exit(0)
                kids.append(pid)
    finally:
        os.close(w)
        for pid in kids:
            os.waitpid(pid, 0)
    assert len(kids) < 20


@pytest.mark.container(memory="64m")
def test_oom():
    hog = bytearray(400 << 20)
    hog[::4096] = b"x" * len(hog[::4096])
"""


def _project(pytester: pytest.Pytester, clone: bool) -> None:
    pytester.makepyfile(test_project=PROJECT.replace("{clone}", repr(clone)))


def _check(result: pytest.RunResult) -> None:
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*test_oom*killed: out of memory (limit 64 MiB)*"])


def test_workers_are_clones_of_the_template(inner, pytester):
    _project(pytester, True)
    _check(inner("--sandbox", "-rf", subprocess=True))


def test_no_template_runs_fresh_interpreters(inner, pytester):
    _project(pytester, False)
    _check(inner("--sandbox", "-rf", "--sandbox-no-template", subprocess=True))


def test_start_only_settings_run_fresh_interpreters(inner, pytester, monkeypatch):
    _project(pytester, False)
    monkeypatch.setenv("PYTHONHASHSEED", "7")     # cannot be given to a clone
    _check(inner("--sandbox", "-rf", subprocess=True))


def test_a_client_cannot_name_another_entry(daemon_sock):
    import sys
    with Client(daemon_sock) as client:
        for entry in ("os:system", "pytest:main", "pytest_sandbox.worker:Channel"):
            with pytest.raises(InvalidArgument, match="is not one the daemon runs"):
                client.run("host", [sys.executable, "-m", "os"], entry=entry)


def test_a_refused_template_falls_back_to_fresh_interpreters(inner, pytester):
    # An entry the daemon does not allow: it refuses the container, as a daemon without
    # the template would; the plugin then runs fresh interpreters, this test included.
    pytester.makeconftest("""
        import pytest_sandbox.controller as controller
        controller.WORKER_ENTRY = "pytest_sandbox.worker:Channel"
    """)
    _project(pytester, False)
    _check(inner("--sandbox", "-rf", subprocess=True))


def test_only_the_host_image_runs_from_the_template(daemon_sock):
    import sys
    from sandboxd import testing
    with Client(daemon_sock) as client:
        client.images.import_(testing.busybox_tar(), "sbx-tpl-busybox")
        try:
            with pytest.raises(InvalidArgument, match="only the host image"):
                client.run("sbx-tpl-busybox", [sys.executable, "-m", "pytest_sandbox.worker"],
                           entry="pytest_sandbox.worker:main")
        finally:
            client.images.remove("sbx-tpl-busybox")
