"""pytest --sandbox from Python environments other than the daemon's.

The daemon runs from this interpreter (/opt/sandboxd/venv in the harness); pytest runs
as a subprocess from venvs made here with ``python -m venv`` from the real interpreter:
one under /tmp (the container's fresh /tmp must not hide it) with a package installed
only there, one under the test cache directory made with ``--system-site-packages`` and
a ``src/`` layout project installed into it as editable, and Debian's
``/usr/bin/python3`` when present. Each venv gets pytest and msgpack through a ``.pth``
naming this interpreter's site-packages (no download), and this clone's sandboxd through
another, as an install would.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

from test_pytest_plugin import PLUGIN_SRC, daemon_sock  # noqa: F401

REAL_PYTHON = os.path.realpath(sys.executable)
SITE = sysconfig.get_paths()["purelib"]          # pytest, msgpack for the made venvs
HOST_PIDNS = os.readlink("/proc/self/ns/pid")

CHECKS = f"""
import os, sys
import pytest

EXPECTED_PREFIX = {{prefix!r}}

def test_in_its_own_container_with_this_venv():
    assert os.readlink("/proc/self/ns/pid") != {HOST_PIDNS!r}
    assert sys.prefix == EXPECTED_PREFIX, sys.prefix
    assert os.environ["PATH"].split(":")[0] == os.path.dirname(sys.executable)

def test_tmp_is_fresh_but_the_project_is_there(tmp_path):
    assert os.path.exists(__file__)
    (tmp_path / "x").write_text("ok")
    with pytest.raises(OSError):
        open(os.path.join(os.path.dirname(__file__), "written"), "w")

@pytest.mark.container(memory="256m")
def test_marked():
    import _pytest._argcomplete      # imported late by pytest: the venv must be whole
"""


def _venv(path: Path, python: str = REAL_PYTHON, *flags: str) -> Path:
    subprocess.run([python, "-m", "venv", "--without-pip", *flags, str(path)], check=True)
    site = Path(subprocess.run([str(path / "bin" / "python"), "-c",
                                "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # Alphabetical: this clone's sandboxd comes before the copy installed in SITE.
    (site / "0-sandboxd-src.pth").write_text(f"{PLUGIN_SRC}\n")
    (site / "1-base.pth").write_text(f"{SITE}\n")
    return site


def _checks(prefix: Path) -> str:
    return CHECKS.replace("{prefix!r}", repr(str(prefix)))


def _run(python: Path, project: Path, sock: str, *args: str,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    run_env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTEST_ADDOPTS")}
    run_env.update({"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "COLUMNS": "200", **(env or {})})
    return subprocess.run([str(python), "-m", "pytest", "-p", "pytest_sandbox.plugin",
                           f"--sandbox-host={sock}", "-p", "no:cacheprovider", "-rA",
                           *args], cwd=project, env=run_env, capture_output=True,
                          text=True, timeout=180)


def _passed(result: subprocess.CompletedProcess[str], n: int) -> None:
    assert f"{n} passed" in result.stdout and "failed" not in result.stdout \
        and "error" not in result.stdout.lower().split("short test summary")[-1], \
        result.stdout[-6000:] + result.stderr[-2000:]
    # No warning a plain run would not give (the plugin is imported before pytest in
    # its worker or zygote, which pytest's assert rewriting used to report).
    assert "warning" not in result.stdout.lower(), result.stdout[-6000:]


@pytest.fixture
def tmp_venv():
    top = Path(tempfile.mkdtemp(prefix="sbx-anyenv-"))
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_a_venv_under_tmp_with_its_own_package(daemon_sock, tmp_venv):
    site = _venv(tmp_venv / "venv")
    (site / "only_in_this_venv.py").write_text("VALUE = 42\n")
    project = tmp_venv / "project"
    project.mkdir()
    (project / "tox.ini").write_text("[pytest]\naddopts = -p no:randomly\n")
    (project / "test_checks.py").write_text(_checks(tmp_venv / "venv") + """
def test_the_venvs_own_package():
    import only_in_this_venv
    assert only_in_this_venv.VALUE == 42
    assert only_in_this_venv.__file__.startswith(sys.prefix)
""")
    result = _run(tmp_venv / "venv" / "bin" / "python", project, daemon_sock, "--sandbox")
    _passed(result, 4)


def test_a_system_site_packages_venv_with_an_editable_src_layout(daemon_sock, request):
    """A venv outside /tmp (the cache dir, kept between runs for speed), a project with
    its package under src/ installed as editable, its config in
    pyproject.toml."""
    cache = request.config.cache.mkdir("sandbox-anyenv")
    venv = cache / "venv-system-site"
    if not (venv / "bin" / "python").exists():
        _venv(venv, REAL_PYTHON, "--system-site-packages")
    project = cache / "srcproject"
    shutil.rmtree(project, ignore_errors=True)
    (project / "src" / "srcpkg").mkdir(parents=True)
    (project / "tests").mkdir()
    (project / "src" / "srcpkg" / "__init__.py").write_text("def answer():\n    return 42\n")
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "srcpkg"\nversion = "1.0"\n'
        '[tool.setuptools.packages.find]\nwhere = ["src"]\n'
        '[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    (project / "tests" / "test_checks.py").write_text(_checks(venv) + """
def test_the_installed_src_package():
    import srcpkg
    assert srcpkg.answer() == 42
    assert "/src/srcpkg/" in srcpkg.__file__
""")
    # What ``pip install -e`` with setuptools writes for a src/ layout (this venv has
    # no wheel package to build one): a .pth naming the src directory.
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c",
                                "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    pth = site / "__editable__.srcpkg-1.0.pth"
    pth.write_text(f"{project / 'src'}\n")
    try:
        result = _run(venv / "bin" / "python", project, daemon_sock, "--sandbox")
        _passed(result, 4)
    finally:
        pth.unlink()


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"),
                    reason="no Debian /usr/bin/python3 on this machine")
def test_debians_python_in_a_venv(daemon_sock, tmp_venv):
    venv = tmp_venv / "deb"
    _venv(venv, "/usr/bin/python3")
    project = tmp_venv / "project"
    project.mkdir()
    (project / "setup.cfg").write_text("[tool:pytest]\n")
    (project / "test_checks.py").write_text(_checks(venv))
    result = _run(venv / "bin" / "python", project, daemon_sock, "--sandbox")
    _passed(result, 3)


def test_a_path_that_cannot_be_shown_is_explained_once(daemon_sock, tmp_venv):
    """The rootdir / cannot be bound into a container: the first test says which path
    and why, the others name the first, and no traceback is repeated per test."""
    project = tmp_venv / "project"
    project.mkdir()
    (project / "test_two.py").write_text("def test_a():\n    pass\n\n"
                                         "def test_b():\n    pass\n")
    result = _run(Path(sys.executable), project, daemon_sock, "--sandbox", "--rootdir=/",
                  env={"PYTHONPATH": str(PLUGIN_SRC)})
    out = result.stdout
    assert "2 errors" in out, out[-4000:]
    assert out.count("in a container: /: the rootdir is (or leads to) /, which a container "
                     "never gets from the host") == 2, out      # the error and its summary
    assert "(the reason is at " in out and "Traceback" not in out, out


def test_bad_input_is_one_clear_error_naming_the_value(daemon_sock, tmp_venv):
    from sandboxd import testing
    from sandboxd.api import Client
    project = tmp_venv / "project"
    project.mkdir()
    (project / "test_bad.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.container('sbx-anyenv-bb')\ndef test_image():\n    pass\n\n"
        "@pytest.mark.container(memory='12x')\ndef test_limit():\n    pass\n\n"
        "@pytest.mark.container(colour='red')\ndef test_argument():\n    pass\n")
    with Client(daemon_sock) as client:
        client.images.import_(testing.busybox_tar(), "sbx-anyenv-bb")
        try:
            result = _run(Path(sys.executable), project, daemon_sock,
                          env={"PYTHONPATH": str(PLUGIN_SRC)})
        finally:
            client.images.remove("sbx-anyenv-bb")
    out = result.stdout
    assert "3 errors" in out, out[-4000:]
    assert f"image 'sbx-anyenv-bb' has no interpreter at {sys.executable}" in out, out
    assert "'12x'" in out and "unknown argument(s) colour" in out, out
    assert "Traceback" not in out, out


def test_an_installed_plugin_adds_no_warning(daemon_sock, tmp_venv):
    # As pip installs it: a dist-info whose RECORD lists the packages and whose pytest11
    # entry point loads the plugin; pytest then marks both packages for assert rewriting,
    # and in the worker or zygote (where they are imported before pytest) said so.
    site = _venv(tmp_venv / "venv")
    dist = site / "sandboxd-0.0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sandboxd\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text("[pytest11]\nsandbox = pytest_sandbox.plugin\n")
    (dist / "RECORD").write_text("pytest_sandbox/__init__.py,,\nsandboxd/__init__.py,,\n"
                                 "sandboxd-0.0.0.dist-info/RECORD,,\n")
    project = tmp_venv / "project"
    project.mkdir()
    (project / "test_one.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTEST_ADDOPTS",
                        "PYTEST_DISABLE_PLUGIN_AUTOLOAD")}
    for extra in ((), ("--sandbox-no-zygote",)):
        result = subprocess.run(
            [str(tmp_venv / "venv" / "bin" / "python"), "-m", "pytest", "--sandbox",
             f"--sandbox-host={daemon_sock}", "-p", "no:cacheprovider", *extra],
            cwd=project, env={**env, "COLUMNS": "200"}, capture_output=True, text=True,
            timeout=180)
        _passed(result, 1)
