"""InterpreterView: which read-only binds show a Python environment in a container, and
the template's interpreter stamp (no root needed)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from sandboxd.runner.interpreter import InterpreterView, ViewError
from sandboxd.runner.template import interpreter_stamp

SYSTEM = ["/usr", "/bin", "/lib"]


def _view(tmp: Path, **kw) -> InterpreterView:
    venv = tmp / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (venv / "lib" / "site-packages").mkdir(parents=True, exist_ok=True)
    project = tmp / "project"
    (project / "src").mkdir(parents=True, exist_ok=True)
    base = dict(executable=str(venv / "bin" / "python"), real_executable="/usr/bin/python3",
                version=sys.version, prefix=str(venv), base_prefix="/usr",
                exec_prefix=str(venv), base_exec_prefix="/usr",
                path=(str(project / "src"), "/usr/lib/python3.11",
                      str(venv / "lib" / "site-packages")),
                rootdir=str(project), invocation_dir=str(project))
    base.update(kw)
    return InterpreterView(**base)


def test_binds_the_venv_and_the_project_not_the_system(tmp_path):
    binds = _view(tmp_path).binds(SYSTEM)
    assert sorted(m.destination for m in binds) == [str(tmp_path / "project"),
                                                    str(tmp_path / "venv")]
    assert all(m.readonly and m.type == "bind" for m in binds)


def test_a_symlinked_path_is_bound_at_both_paths(tmp_path):
    view = _view(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "venv")
    view = _view(tmp_path, executable=str(link / "bin" / "python"), prefix=str(link),
                 exec_prefix=str(link))
    dests = {m.destination: m.source for m in view.binds(SYSTEM)}
    assert dests[str(link)] == str(tmp_path / "venv")
    assert str(tmp_path / "venv") in dests


def test_the_rootdir_slash_is_refused_with_its_role(tmp_path):
    with pytest.raises(ViewError, match=r"the rootdir is \(or leads to\) /, which"):
        _view(tmp_path, rootdir="/").binds(SYSTEM)


def test_an_invocation_dir_such_as_tmp_is_the_containers_own(tmp_path):
    binds = _view(tmp_path, invocation_dir="/tmp").binds(SYSTEM)
    assert "/tmp" not in [m.destination for m in binds]


def test_the_current_view_names_this_interpreter():
    view = InterpreterView.current(os.getcwd(), os.getcwd())
    assert view.executable == os.path.abspath(sys.executable)
    assert view.prefix == sys.prefix and view.real_executable == os.path.realpath(
        sys.executable)
    assert all(os.path.exists(p) for p in view.path)
    assert view.key == InterpreterView.current(os.getcwd(), os.getcwd()).key


def test_editable_finders_mapping_is_a_source(tmp_path):
    site = tmp_path / "site-packages"
    site.mkdir()
    pkg = tmp_path / "elsewhere" / "pkg"
    pkg.mkdir(parents=True)
    (site / "__editable___pkg_1_0_finder.py").write_text(f"MAPPING = {{'pkg': {str(pkg)!r}}}\n")
    sys.path.insert(0, str(site))
    try:
        view = InterpreterView.current()
    finally:
        sys.path.remove(str(site))
    assert str(pkg) in view.sources


def test_the_stamp_changes_when_a_package_is_installed(tmp_path):
    before = interpreter_stamp([str(tmp_path)])
    assert interpreter_stamp([str(tmp_path)]) == before
    os.utime(tmp_path, ns=(1, 1))
    assert interpreter_stamp([str(tmp_path)]) != before
