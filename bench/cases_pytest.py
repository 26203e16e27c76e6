"""pytest_sandbox: one suite of 100 trivial tests run by pytest locally, with
``--sandbox`` (each test in its own fresh container), with ``--sandbox -n 2``
(pytest-xdist), and written with testcontainers-style Docker fixtures when docker is here.

Every sample is one whole pytest process over the suite (start-up, collection, the 100
tests, the report), divided by 100: milliseconds per test. The inner pytest loads only
the plugins it needs (``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``, ``-p pytest_sandbox.plugin``)
and may write bytecode (as a developer's checkout does), so a container reads the test
module's rewritten ``.pyc`` instead of rewriting it again. The daemon is the bench's.
"""
from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import ours
from .cases import case
from .context import Bench, NotAvailable

TESTS = 100
REPEATS = 3              # whole-suite runs per row: a sandboxed run takes tens of seconds
SUITE_TIMEOUT = 1200.0
ROOT = Path(__file__).resolve().parent.parent

SUITE = "pytest: 100 trivial tests, wall time per test"
PER_TEST = "pytest --sandbox: one test's container, options sent to result"
OVERHEAD = "pytest --sandbox: overhead per test over the local run"

# Suite walls per row, kept for the overhead rows (measured after the suite rows).
_walls: dict[tuple[int, str], list[float]] = {}
_reported: dict[int, list[float]] = {}


def _project(bench: Bench, name: str, body: str) -> Path:
    path = bench.tmp / f"pytest-{name}"
    if not path.exists():
        path.mkdir()
        (path / "pytest.ini").write_text("[pytest]\n")
        (path / "test_suite.py").write_text(body)
    return path


def _trivial(bench: Bench) -> Path:
    return _project(bench, "trivial", "".join(
        f"def test_{i}():\n    assert {i} + 1 == {i + 1}\n\n" for i in range(TESTS)))


def _run_suite(bench: Bench, project: Path, args: list[str]) -> tuple[float, str]:
    """One pytest process over the suite: (seconds, its output); all must pass."""
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True,
                          timeout=SUITE_TIMEOUT)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or f"{TESTS} passed" not in proc.stdout:
        raise RuntimeError(f"pytest {' '.join(args)} exited {proc.returncode}: "
                           f"{(proc.stdout + proc.stderr).strip()[-600:]}")
    return elapsed, proc.stdout


def _sandboxed(bench: Bench, key: str, extra: list[str]) -> list[float]:
    daemon = bench.shared("daemon", ours.Daemon.start)
    project = _trivial(bench)
    args = ["-p", "pytest_sandbox.plugin", f"--sandbox-host={daemon.host}", "--sandbox",
            "--sandbox-report", *extra]
    _run_suite(bench, project, args)                 # warm-up (page cache, pyc files)
    walls = []
    for _ in range(REPEATS):
        wall, out = _run_suite(bench, project, args)
        walls.append(wall)
        if not extra:
            _reported.setdefault(id(bench), []).extend(
                float(w) for w in re.findall(r"cpu\s+([\d.]+)s wall", out))
    _walls[(id(bench), key)] = walls
    return [w / TESTS for w in walls]


@case(SUITE, "local (no container)", count="")
def local(bench: Bench, n: int) -> list[float]:
    project = _trivial(bench)
    _run_suite(bench, project, [])
    walls = [_run_suite(bench, project, [])[0] for _ in range(REPEATS)]
    _walls[(id(bench), "local")] = walls
    return [w / TESTS for w in walls]


@case(SUITE, "pytest --sandbox", reference=True, count="")
def sandbox(bench: Bench, n: int) -> list[float]:
    return _sandboxed(bench, "sandbox", [])


@case(SUITE, "pytest --sandbox --sandbox-no-template (a fresh interpreter per test)",
      count="")
def sandbox_no_template(bench: Bench, n: int) -> list[float]:
    return _sandboxed(bench, "no-template", ["--sandbox-no-template"])


@case(SUITE, "pytest --sandbox -n 2 (xdist)", count="")
def sandbox_xdist(bench: Bench, n: int) -> list[float]:
    try:
        import xdist  # noqa: F401
    except ImportError:
        raise NotAvailable("pytest-xdist is not installed") from None
    return _sandboxed(bench, "xdist", ["-p", "xdist", "-n", "2"])


DOCKER_SUITE = """
import subprocess, pytest

@pytest.fixture
def container():
    cid = subprocess.run(["docker", "run", "-d", "busybox", "sleep", "60"], check=True,
                         capture_output=True, text=True).stdout.strip()
    yield cid
    subprocess.run(["docker", "rm", "-f", cid], check=True, capture_output=True)

""" + "".join(f"""
def test_{i}(container):
    out = subprocess.run(["docker", "exec", container, "sh", "-c", "echo $(({i} + 1))"],
                         check=True, capture_output=True, text=True).stdout
    assert out.strip() == "{i + 1}"
""" for i in range(TESTS))


@case(SUITE, "docker: a container per test (testcontainers-style fixture)", count="")
def docker_fixtures(bench: Bench, n: int) -> list[float]:
    """The test body runs on the host; the fixture starts a container per test and the
    test execs into it: how a testcontainers suite isolates each test."""
    if shutil.which("docker") is None:
        raise NotAvailable("docker is not installed")
    if subprocess.run(["docker", "image", "inspect", "busybox"],
                      capture_output=True).returncode != 0:
        raise NotAvailable("docker has no busybox image (no registry access here)")
    project = _project(bench, "docker", DOCKER_SUITE)
    return [_run_suite(bench, project, [])[0] / TESTS for _ in range(REPEATS)]


@case(PER_TEST, "pytest --sandbox (--sandbox-report wall)", reference=True, count="")
def per_test(bench: Bench, n: int) -> list[float]:
    """Each test's container as the controller saw it, from writing the item's options
    until the container's result (the test, pytest's session, the container's end and
    removal; the container's start, interpreter and pytest import too unless it was
    started ahead during the previous test)."""
    samples = _reported.get(id(bench))
    if not samples:
        raise NotAvailable("needs the 'pytest --sandbox' row of the suite case")
    return samples


def _overhead(bench: Bench, key: str) -> list[float]:
    local_walls = _walls.get((id(bench), "local"))
    walls = _walls.get((id(bench), key))
    if not local_walls or not walls:
        raise NotAvailable("needs the local and sandboxed rows of the suite case")
    base = statistics.median(local_walls)
    return [(w - base) / TESTS for w in walls]


case(OVERHEAD, "pytest --sandbox", reference=True, count="")(
    lambda bench, n: _overhead(bench, "sandbox"))
case(OVERHEAD, "pytest --sandbox --sandbox-no-template", count="")(
    lambda bench, n: _overhead(bench, "no-template"))
case(OVERHEAD, "pytest --sandbox -n 2 (xdist)", count="")(
    lambda bench, n: _overhead(bench, "xdist"))
