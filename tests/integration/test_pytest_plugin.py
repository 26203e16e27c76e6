"""The pytest plugin end to end: example projects run by pytester against a real daemon
(a subprocess with its own root, socket and cgroup parent ``sandboxd-pyt-<pid>``).

Inner runs disable plugin autoloading and load ``pytest_sandbox.plugin`` with ``-p``
(so the result does not depend on which other plugins the machine has, and each
container starts only pytest). Every containerised test costs a fresh interpreter and
pytest start-up inside its container, so the projects are small and combine outcomes.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import sandboxd
from sandboxd.api import Client

pytest_plugins = ("pytester",)

SANDBOXD_SRC = Path(sandboxd.__file__).resolve().parent.parent     # the daemon we test
PLUGIN_SRC = Path(__file__).resolve().parents[2]                    # pytest_sandbox
CGROUP_ROOT = Path("/sys/fs/cgroup")
HOST_PIDNS = os.readlink("/proc/self/ns/pid")
HOST_HOSTNAME = socket.gethostname()
HOST_INIT = Path("/proc/1/cmdline").read_bytes()


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)
    return value


@pytest.fixture(scope="module")
def daemon_sock():
    """A daemon for this module; at the end: SIGTERM, exit 0, and nothing of it left."""
    tmp = tempfile.mkdtemp(prefix="sbxp-")
    sock = os.path.join(tmp, "d.sock")
    parent = f"sandboxd-pyt-{os.getpid()}"
    log_path = os.path.join(tmp, "daemon.log")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(SANDBOXD_SRC), os.environ.get("PYTHONPATH", "")])}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sandboxd.daemon", "--root",
                                 os.path.join(tmp, "root"), "--host", sock,
                                 "--cgroup-parent", parent, "--no-ip-masq"],
                                stdout=log, stderr=log, env=env, cwd=tmp)
    try:
        _wait(lambda: os.path.exists(sock) or proc.poll() is not None, 15, "the socket")
        assert proc.poll() is None, Path(log_path).read_text()
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        log = Path(log_path).read_text(errors="replace")
        assert rc == 0, f"daemon exited {rc}:\n{log[-4000:]}"
        mounts = [l for l in Path("/proc/self/mountinfo").read_text().splitlines()
                  if tmp in l]
        assert not mounts, f"mounts left behind: {mounts}"
        for path in CGROUP_ROOT.glob(f"*/{parent}"):
            left = [c.name for c in path.iterdir() if c.is_dir()]
            assert not left, f"cgroups left under {path}: {left}"
            path.rmdir()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def inner(pytester: pytest.Pytester, daemon_sock: str, monkeypatch: pytest.MonkeyPatch):
    """Run pytest on the pytester project with the plugin and our daemon."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(SANDBOXD_SRC), str(PLUGIN_SRC), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("COLUMNS", "200")          # short-summary lines in full
    pytester.makeini("[pytest]\n")           # the project dir is the rootdir

    def run(*args: str, subprocess: bool = False) -> pytest.RunResult:
        argv = ("-p", "pytest_sandbox.plugin", f"--sandbox-host={daemon_sock}", *args)
        if subprocess:
            return pytester.runpytest_subprocess(*argv, timeout=120)
        return pytester.runpytest(*argv)
    return run


def spawn_inner(pytester: pytest.Pytester, daemon_sock: str, *args: str) -> subprocess.Popen:
    """pytest with the plugin and our daemon on the pytester project, as a process of
    its own with its output discarded: for a run the test kills."""
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONPATH": os.pathsep.join(
        [str(SANDBOXD_SRC), str(PLUGIN_SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "pytest", "-p", "pytest_sandbox.plugin",
                             f"--sandbox-host={daemon_sock}", *args],
                            cwd=pytester.path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


INSIDE = f"""
import os, socket
HOST_PIDNS = {HOST_PIDNS!r}
HOST_HOSTNAME = {HOST_HOSTNAME!r}
HOST_INIT = {HOST_INIT!r}

def assert_inside():
    assert os.readlink("/proc/self/ns/pid") != HOST_PIDNS
    assert socket.gethostname() != HOST_HOSTNAME
    assert open("/proc/1/cmdline", "rb").read() != HOST_INIT
"""


def test_outcomes_match_a_local_run(inner, pytester: pytest.Pytester):
    pytester.makepyfile(inside=INSIDE)
    pytester.makepyfile(test_outcomes="""
        import os, pytest
        from inside import assert_inside

        @pytest.fixture
        def broken_setup():
            raise RuntimeError("setup went wrong")

        @pytest.fixture
        def broken_teardown():
            yield
            raise RuntimeError("teardown went wrong")

        @pytest.mark.container
        def test_pass():
            assert_inside()
            print("HOST=" + os.uname().nodename)

        @pytest.mark.container
        def test_project_is_read_only():
            with pytest.raises(OSError):
                open(os.path.join(os.path.dirname(__file__), "new.txt"), "w")
            with open("/tmp/scratch.txt", "w") as f:       # /tmp is the container's
                f.write("x")

        @pytest.mark.container
        def test_fail():
            values = [1, 2, 3]
            print("some output before failing")
            assert values == [1, 2, 4]

        @pytest.mark.container
        def test_skip():
            pytest.skip("not here")

        @pytest.mark.container
        @pytest.mark.xfail(reason="known bug")
        def test_xfail():
            assert 0

        @pytest.mark.container
        @pytest.mark.xfail(reason="fixed already")
        def test_xpass():
            pass

        @pytest.mark.container
        def test_error_in_setup(broken_setup):
            pass

        @pytest.mark.container
        def test_error_in_teardown(broken_teardown):
            pass

        def test_local():
            assert os.readlink("/proc/self/ns/pid") == {HOST_PIDNS!r}
        """.replace("{HOST_PIDNS!r}", repr(HOST_PIDNS)))
    result = inner("-rA", "-v", "--junitxml=junit.xml", "-o", "junit_logging=all")
    result.assert_outcomes(passed=4, failed=1, skipped=1, xfailed=1, xpassed=1, errors=2)
    result.stdout.fnmatch_lines([
        "*test_outcomes.py::test_pass PASSED*",
        "*_ test_fail _*",
        ">       assert values == [[]1, 2, 4[]]",
        "E       *assert [[]1, 2, 3[]] == [[]1, 2, 4[]]",
        "test_outcomes.py:*: AssertionError",
        "*- Captured stdout call -*",
        "some output before failing",
    ])
    result.stdout.fnmatch_lines(["*ERROR at setup of test_error_in_setup*",
                                 "*RuntimeError: setup went wrong*"])
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_error_in_teardown*",
                                 "*RuntimeError: teardown went wrong*"])
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] test_outcomes.py:*: not here",
                                 "XFAIL test_outcomes.py::test_xfail - known bug"])
    hosts = re.findall(r"^HOST=(\S+)$", result.stdout.str(), re.M)
    assert hosts and HOST_HOSTNAME not in hosts

    suite = ET.parse(pytester.path / "junit.xml").getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {"test_pass", "test_project_is_read_only", "test_fail",
                          "test_skip", "test_xfail", "test_xpass", "test_error_in_setup",
                          "test_error_in_teardown", "test_local"}
    assert cases["test_fail"].find("failure") is not None
    assert "some output before failing" in cases["test_fail"].find("system-out").text
    assert cases["test_skip"].find("skipped") is not None
    assert cases["test_error_in_setup"].find("error") is not None
    assert suite.get("failures") == "1" and suite.get("errors") == "2"


def test_selection_parametrize_and_marker_scopes(inner, pytester: pytest.Pytester,
                                                 daemon_sock):
    pytester.makepyfile(inside=INSIDE)
    pytester.makepyfile(test_module_mark="""
        import os, pytest
        from inside import assert_inside

        pytestmark = pytest.mark.container(env={"LEVEL": "module", "FROM_MODULE": "1"})

        @pytest.mark.parametrize("n", [1, 2, 3])
        def test_param(n):
            assert_inside()
            print("HOST=" + os.uname().nodename)

        @pytest.mark.container(env={"LEVEL": "function"})
        def test_closest_marker_wins():
            assert os.environ["LEVEL"] == "function"
            assert "FROM_MODULE" not in os.environ    # env is one argument: replaced

        def test_deselected_by_k():
            raise AssertionError("-k should have left this out")
        """)
    pytester.makepyfile(test_class_mark="""
        import pytest
        from inside import assert_inside

        @pytest.mark.container
        class TestInside:
            def test_one(self):
                assert_inside()

        def test_first_failure():
            assert False, "first"

        def test_not_reached():
            pass
        """)
    result = inner("-rA", "-k", "not deselected_by_k", "test_module_mark.py",
                   "test_class_mark.py::TestInside")
    result.assert_outcomes(passed=5)
    hosts = re.findall(r"^HOST=(\S+)$", result.stdout.str(), re.M)
    assert len(hosts) == 3 and len(set(hosts)) == 3, hosts      # one container each
    assert HOST_HOSTNAME not in hosts

    pytester.makepyfile(test_stop="""
        import pytest
        pytestmark = pytest.mark.container

        def test_a():
            assert False, "first failure"

        def test_b():
            pass
        """)
    result = inner("-x", "--tb=line", "test_stop.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_stop.py:*: AssertionError: first failure*",
                                 "*stopping after 1 failures*"])
    # test_b's container was started ahead, while test_a ran; -x cancelled it
    with Client(daemon_sock, autostart=False) as client:
        _wait(lambda: not client.containers.list(all=True), 15,
              "the cancelled container of the test -x did not run to go")


def test_crash_oom_and_timeout_become_failures(inner, pytester: pytest.Pytester):
    pytester.makepyfile(test_limits="""
        import ctypes, os, sys, time, pytest

        # First: its container starts at its turn, and the daemon kills it at the
        # timeout. test_timeout's container is started ahead (during test_oom): the
        # plugin keeps that one's timeout from its turn.
        @pytest.mark.container(timeout=1)
        def test_first_timeout():
            time.sleep(60)

        @pytest.mark.container
        def test_exit():
            os._exit(3)

        @pytest.mark.container
        def test_segfault():
            ctypes.string_at(0)

        @pytest.mark.container(memory="64m")
        def test_oom():
            hog = bytearray(512 * 2**20)

        @pytest.mark.container(timeout=1)
        def test_timeout():
            time.sleep(60)
        """)
    result = inner("-rf")
    result.assert_outcomes(failed=5)
    result.stdout.fnmatch_lines_random([
        "FAILED test_limits.py::test_first_timeout - timed out after 1 s",
        "FAILED test_limits.py::test_exit - worker crashed: exit code 3",
        "FAILED test_limits.py::test_segfault - worker crashed: killed by signal SIGSEGV*",
        "FAILED test_limits.py::test_oom - killed: out of memory (limit 64 MiB)",
        "FAILED test_limits.py::test_timeout - timed out after 1 s",
    ])
    # pytest's faulthandler writes to the worker's real stderr, which the report shows
    result.stdout.fnmatch_lines(["*_ test_segfault _*", "*worker stderr*",
                                 "Fatal Python error: Segmentation fault"])


def test_sandbox_option_markers_and_bad_marker(inner, pytester: pytest.Pytester):
    pytester.makepyfile(inside=INSIDE)
    pytester.makepyfile(test_all="""
        from inside import assert_inside

        def test_unmarked_runs_inside_too():
            assert_inside()
        """)
    result = inner("--sandbox", "--sandbox-report", "test_all.py")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*sandbox resources*",
                                 "* MiB * cpu * wall  exit code 0 test_all.py::"
                                 "test_unmarked_runs_inside_too"])

    result = inner("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.container(image='host', memory=None*"])

    pytester.makepyfile(test_bad="""
        import pytest

        @pytest.mark.container(memroy="64m")
        def test_typo():
            pass

        @pytest.mark.container(links={"db": "db_server"})
        def test_links():
            pass
        """)
    result = inner("test_bad.py")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines_random([
        "*unknown argument(s) memroy; it takes image, memory*",
        "*links: 'db_server' is neither a fixture nor a container*"])


def test_service_fixtures(inner, pytester: pytest.Pytester):
    pytester.makepyfile(test_services=f"""
        import sys, pytest
        from pytest_sandbox import CommandSucceeds, LogLine, PortOpen, ServiceNotReady

        PY = {sys.executable!r}

        @pytest.fixture(scope="module")
        def web(sandbox_container):
            with sandbox_container("host", [PY, "-m", "http.server", "8000"],
                                   wait=PortOpen(8000), timeout=20) as svc:
                yield svc

        def test_port_open(web):
            assert PortOpen(8000).probe(web.container)
            assert not PortOpen(8001).probe(web.container)
            assert web.exec(["sh", "-c", "echo $$"]).exit_code == 0

        def test_log_line_and_command(sandbox_container):
            with sandbox_container("host", ["sh", "-c", "echo booted; touch /tmp/ok; "
                                            "sleep 60"], wait=LogLine("boot+ed")) as svc:
                assert "booted" in svc.logs()
            with sandbox_container("host", ["sh", "-c", "sleep 0.3; touch /tmp/ok; "
                                            "sleep 60"],
                                   wait=CommandSucceeds(["test", "-e", "/tmp/ok"])):
                pass

        def test_not_ready_carries_logs(sandbox_container, sandbox):
            before = {{c.id for c in sandbox.containers.list(all=True)}}
            with pytest.raises(ServiceNotReady) as info:
                sandbox_container("host", ["sh", "-c", "echo starting slowly; sleep 60"],
                                  wait=PortOpen(9), timeout=1)
            assert "was not ready after 1 s" in str(info.value)
            assert "starting slowly" in str(info.value)
            with pytest.raises(ServiceNotReady, match="exited with code 4"):
                sandbox_container("host", ["sh", "-c", "echo bye; exit 4"],
                                  wait=PortOpen(9), timeout=10)
            assert {{c.id for c in sandbox.containers.list(all=True)}} == before

        def test_sandbox_client(sandbox):
            assert sandbox.run("host", ["echo", "hi"]).stdout == b"hi\\n"
        """)
    result = inner("-rA")
    result.assert_outcomes(passed=4)


def test_interrupted_run_leaves_nothing(inner, pytester: pytest.Pytester, daemon_sock):
    """kill -9 of the pytest process: the daemon removes its session's container."""
    pytester.makepyfile(test_slow="""
        import time, pytest

        @pytest.mark.container
        def test_sleeps():
            time.sleep(60)
        """)
    proc = spawn_inner(pytester, daemon_sock, "test_slow.py")
    with Client(daemon_sock, autostart=False) as client:
        def ours():
            return [c for c in client.containers.list(all=True)
                    if c.record.config.labels_dict().get("pytest_sandbox.nodeid")
                    == "test_slow.py::test_sleeps"]
        try:
            _wait(ours, 30, "the test's container")
        finally:
            proc.kill()
            proc.wait()
        _wait(lambda: not ours(), 15, "the daemon to remove the killed session's container")


def test_xdist_runs_containers_in_parallel(inner, pytester: pytest.Pytester):
    pytest.importorskip("xdist", reason="pytest-xdist is not installed (test extras)")
    pytester.makepyfile(test_par="""
        import os, pytest

        @pytest.mark.container
        @pytest.mark.parametrize("n", range(10))
        def test_case(n):
            print("HOST=" + os.uname().nodename)
        """)
    result = inner("-p", "xdist", "-n", "2", "-rA", subprocess=True)
    result.assert_outcomes(passed=10)
    # Both workers' clones start at once: each must get its own spec (host name).
    hosts = re.findall(r"HOST=(\S+)", result.stdout.str())
    assert len(set(hosts)) == 10, hosts
