"""pytest --sandbox through the session's zygote, end to end on the real kernel: each
test a fork of the zygote in a fresh container (pid 1, its own namespaces and /tmp, its
limits), module state as after collection for every test, the ``fresh=True`` marker
option for a cold container, a dead zygote restarted once and then given up, every
failure reported and nothing left behind (the daemon fixture checks cgroups and mounts).
"""
from __future__ import annotations

import pytest

from test_pytest_plugin import daemon_sock, inner  # noqa: F401  (fixtures)

pytest_plugins = ("pytester",)


@pytest.fixture(autouse=True)
def readable_project(pytester: pytest.Pytester):
    # pytester's directory is 0700; the zygote (a non-root uid) needs to read it.
    pytester.path.chmod(0o755)


def test_each_test_is_a_fresh_fork(inner, pytester: pytest.Pytester):
    pytester.makeconftest("""
        import os
        LOADED_IN = os.getpid()          # the zygote's pid: forks see another one
        """)
    pytester.makepyfile(test_fresh="""
        import os, signal, socket, time, pytest
        import conftest
        STATE = []
        SEEN = {}

        @pytest.mark.parametrize("n", range(4))
        def test_fresh(n):
            assert os.getpid() == 1 and conftest.LOADED_IN != 1
            assert sorted(p for p in os.listdir("/proc") if p.isdigit()) == ["1"]
            assert not os.path.exists("/tmp/mark")
            open("/tmp/mark", "w").write(socket.gethostname())
            STATE.append(n)
            assert STATE == [n]          # module state as the zygote left it
            for pid in range(2, 50):     # neither the zygote nor a sibling is reachable
                with pytest.raises(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

        @pytest.mark.container(memory="64m")
        def test_oom():
            hog = bytearray(512 * 2**20)
            hog[::4096] = b"x" * len(hog[::4096])

        @pytest.mark.container(pids=8)
        def test_pids():
            with pytest.raises(BlockingIOError):
                for _ in range(20):
                    if os.fork() == 0:
                        time.sleep(3)
                        os._exit(0)

        @pytest.mark.container(timeout=1)
        def test_timeout():
            time.sleep(30)

        def test_after_timeout():        # a new zygote: a timeout is no crash
            assert os.getpid() == 1 and conftest.LOADED_IN != 1

        @pytest.mark.container(fresh=True)
        def test_cold():                  # its own worker imported the conftest
            assert conftest.LOADED_IN == os.getpid()
        """)
    result = inner("--sandbox", "-rA")
    result.assert_outcomes(passed=7, failed=2)
    result.stdout.fnmatch_lines_random([
        "FAILED test_fresh.py::test_oom - killed: out of memory (limit 64 MiB)",
        "FAILED test_fresh.py::test_timeout - timed out after 1 s"])


def test_unreadable_project_goes_cold(inner, pytester: pytest.Pytester):
    pytester.path.chmod(0o700)
    pytester.makepyfile(test_cold="""
        import os
        def test_one():
            assert os.path.exists("/proc/1")
        """)
    result = inner("--sandbox", "-rA", "-W", "default")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*runs no zygote*not readable by other users*"])


def test_zygote_crash_is_restarted_once(inner, pytester: pytest.Pytester):
    # The zygote (and only it: a fork's pending alarm is cleared) dies 2 s after its
    # conftest import; a test running then dies with it.
    pytester.makeconftest("""
        import os, signal
        if os.environ.get("PYTEST_SANDBOX_WORKER"):
            signal.alarm(2)
        """)
    pytester.makepyfile(test_crash="""
        import time

        def test_a():
            time.sleep(4)

        def test_b():
            pass

        def test_c():
            time.sleep(4)

        def test_d():
            pass
        """)
    result = inner("--sandbox", "-rA")
    result.assert_outcomes(passed=2, errors=0, failed=2)
    result.stdout.fnmatch_lines_random([
        "FAILED test_crash.py::test_a - worker crashed: *the session's zygote died*"
        "restarted for the next test*",
        "FAILED test_crash.py::test_c - worker crashed: *died before too*cold containers*",
        "PASSED test_crash.py::test_b", "PASSED test_crash.py::test_d"])


def test_next_container_made_ahead_is_never_reused(inner, pytester: pytest.Pytester):
    # The zygote makes each test's container while the test before runs (parked until
    # its turn): still one never-used container per test, with its own limits and
    # nothing the one before wrote, whatever the neighbours asked for.
    pytester.makepyfile(test_ahead="""
        import os, socket, pytest

        def fresh():
            assert os.getpid() == 1
            assert not os.path.exists("/tmp/mark") and os.listdir("/dev/shm") == []
            open("/tmp/mark", "w").close()
            open("/dev/shm/mark", "w").close()
            print(f"HOST={socket.gethostname()}")

        def forks(n):
            made = 0
            try:
                for _ in range(n):
                    if os.fork() == 0:
                        os._exit(0)
                    os.wait()
                    made += 1
            except BlockingIOError:
                pass
            return made

        @pytest.mark.parametrize("n", range(5))
        def test_plain(n):
            fresh()

        @pytest.mark.container(pids=1)
        def test_limited():
            fresh()
            assert forks(3) == 0

        def test_after_limited():
            fresh()
            assert forks(3) == 3

        @pytest.mark.container(env={"MARK": "set"})
        def test_env():
            fresh()
            assert os.environ["MARK"] == "set"

        def test_env_gone():
            fresh()
            assert "MARK" not in os.environ
        """)
    result = inner("--sandbox", "-rP")
    result.assert_outcomes(passed=9)
    hosts = [line.split("=", 1)[1] for line in result.outlines if line.startswith("HOST=")]
    assert len(hosts) == 9 and len(set(hosts)) == 9, hosts


def test_stop_early_with_a_container_made_ahead(inner, pytester: pytest.Pytester):
    # -x stops after the failure; the container made ahead for the next test never
    # runs it and goes with the zygote (the daemon fixture checks that no cgroup or
    # mount is left).
    pytester.makepyfile(test_stop="""
        import os

        def test_fails():
            assert False

        def test_never():
            os.makedirs("/tmp/never-ran")
        """)
    result = inner("--sandbox", "-x")
    result.assert_outcomes(failed=1)


def test_output_of_a_killed_test_is_not_the_next_ones(inner, pytester: pytest.Pytester):
    # pytest's capture files come from the zygote; a test that dies in the middle of a
    # phase leaves its output there. The next test (made ahead, before that) captures
    # into files of its own.
    pytester.makepyfile(test_leftover="""
        import os, sys

        def test_dies():
            print("LEFTOVER-FROM-THE-DEAD")
            sys.stdout.flush()
            os._exit(3)

        def test_next():
            print("MINE")
        """)
    result = inner("--sandbox", "-rP")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_next*", "*Captured stdout call*", "MINE"])
    passes = result.stdout.str().split("PASSES", 1)[1]
    assert "LEFTOVER-FROM-THE-DEAD" not in passes
