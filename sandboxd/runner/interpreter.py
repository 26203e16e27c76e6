"""The Python environment a client runs in, as data: what a container must show, at the
same paths and read-only, for ``<executable> -m ...`` to start there exactly as it does
on the host.

The pytest plugin describes its own process (:meth:`InterpreterView.current`) and turns
the description into read-only binds (:meth:`InterpreterView.binds`) over the host
image's system directories, whatever environment the daemon itself runs from. A warm
process (the runner's template, a zygote) may stand in for a fresh interpreter only when
it was started from the same view (:attr:`InterpreterView.key`).
"""
from __future__ import annotations

import ast
import hashlib
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .spec import Mount

# Host directories never bound over the container's own: the kernel's, the container's
# own /etc, /run and /tmp, and what the host image already shows.
NEVER_BOUND = ("/", "/proc", "/sys", "/dev", "/etc", "/tmp", "/run", "/usr", "/bin",
               "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/var", "/boot")


# What the host image shows of this machine for every client, read-only at the same
# paths (images/host.py): a client's view need not bind them again.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")


def system_dirs() -> list[str]:
    """Those of :data:`SYSTEM_DIRS` this machine has."""
    return [d for d in SYSTEM_DIRS if os.path.isdir(d)]


def python_prefixes() -> list[str]:
    """The running Python's prefixes: sys.prefix, base_prefix, exec_prefix and the
    directories of sys.executable (a pyenv or venv interpreter lives outside /usr)."""
    return list(InterpreterView.current().prefixes)


def view_mounts(view: InterpreterView, host_image: bool) -> list[Mount]:
    """Read-only binds that show a client's Python environment ``view`` in a container.
    The host image shows the host's system directories (never the daemon's Python: a
    client's may be anything); another image brings its own interpreter, so only the
    client's code outside the interpreter is bound. Raises ``ViewError``."""
    provided = system_dirs() if host_image else [*system_dirs(), *view.prefixes]
    return list(view.binds(provided))


class ViewError(Exception):
    """A path the view needs that cannot be shown in a container: ``path`` and why."""

    def __init__(self, path: str, why: str):
        super().__init__(f"{path}: {why}")
        self.path = path
        self.why = why


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


@dataclass(frozen=True)
class InterpreterView:
    """One Python environment as a container must show it.

    ``executable`` is ``sys.executable`` as called (a venv's ``bin/python`` symlink: the
    interpreter finds ``pyvenv.cfg`` from it, so the container runs this path, not the
    real one); ``real_executable`` is where it leads. ``path`` holds the ``sys.path``
    entries that exist (directories and zips), ``sources`` other directories the process
    imports from that are not on ``sys.path`` (editable installs' import finders, this
    plugin). ``rootdir`` and ``invocation_dir`` are the project's."""
    executable: str
    real_executable: str
    version: str                         # sys.version: the template check compares it
    prefix: str
    base_prefix: str
    exec_prefix: str
    base_exec_prefix: str
    path: tuple[str, ...]
    sources: tuple[str, ...] = ()
    rootdir: str = ""
    invocation_dir: str = ""

    @classmethod
    def current(cls, rootdir: str = "", invocation_dir: str = "",
                sources: Iterable[str] = ()) -> InterpreterView:
        """This process's view. ``sources``: more directories to show (where modules
        outside ``sys.path`` come from)."""
        executable = os.path.abspath(sys.executable) if sys.executable else ""
        path: list[str] = []
        for entry in sys.path:
            p = os.path.abspath(entry or invocation_dir or os.getcwd())
            if p not in path and os.path.exists(p):
                path.append(p)
        found = [*sources, *_editable_sources(path)]
        return cls(executable=executable,
                   real_executable=os.path.realpath(executable) if executable else "",
                   version=sys.version,
                   prefix=sys.prefix, base_prefix=sys.base_prefix,
                   exec_prefix=sys.exec_prefix,
                   base_exec_prefix=getattr(sys, "base_exec_prefix", sys.exec_prefix),
                   path=tuple(path),
                   sources=tuple(dict.fromkeys(os.path.abspath(s) for s in found
                                               if os.path.exists(s))),
                   rootdir=rootdir, invocation_dir=invocation_dir)

    @property
    def prefixes(self) -> tuple[str, ...]:
        """The interpreter's own directories: its prefixes and the directories of its
        executable, as called and real (a pyenv or uv Python lives outside /usr)."""
        found = [self.prefix, self.base_prefix, self.exec_prefix, self.base_exec_prefix,
                 os.path.dirname(self.executable), os.path.dirname(self.real_executable)]
        return tuple(dict.fromkeys(os.path.abspath(p) for p in found if p))

    @property
    def key(self) -> str:
        """Names the interpreter a warm process must have been started from: the
        executable as called and what it leads to, the version and the prefixes (a
        process from another venv, or another Python at the same path, differs)."""
        doc = "\0".join([self.executable, self.real_executable, self.version,
                         self.prefix, self.base_prefix, self.exec_prefix,
                         self.base_exec_prefix])
        return hashlib.sha256(doc.encode()).hexdigest()[:16]

    def pythonpath(self) -> list[str]:
        """The ``sys.path`` entries a fresh interpreter at the same executable would not
        find itself (outside its prefixes): a container's ``PYTHONPATH``."""
        own = [os.path.realpath(p) for p in self.prefixes]
        return [p for p in self.path if not any(_under(os.path.realpath(p), o) for o in own)]

    def wanted(self) -> list[str]:
        """Every path the view needs, absolute (not yet minus what the image shows)."""
        out = [*self.prefixes, *self.path, *self.sources]
        out += [p for p in (self.rootdir, self.invocation_dir) if p]
        return list(dict.fromkeys(out))

    def role(self, path: str) -> str:
        """What ``path`` is to the view, for messages."""
        if path == self.rootdir:
            return "the rootdir"
        if path in self.prefixes:
            return "a directory of the interpreter"
        if path in self.sources:
            return "a directory code is imported from"
        if path in self.path:
            return "a sys.path entry"
        return "the invocation directory"

    def _optional(self, path: str) -> bool:
        """A path the container may show as its own instead (a ``sys.path`` entry or a
        working directory such as /tmp or /): the interpreter and the project may not."""
        return path not in (*self.prefixes, *self.sources, self.rootdir)

    def binds(self, provided: Sequence[str]) -> tuple[Mount, ...]:
        """Read-only binds, at the same paths, of every path :meth:`wanted` that is not
        under ``provided`` (directories the image already shows: the host's /usr ...),
        parents before children, none inside another. A path behind a symlink is also
        bound at its real path (modules may name either). Raises :class:`ViewError`
        for a path that no bind can show (a system directory such as /etc, or /)."""
        provided = [os.path.realpath(p) for p in provided]
        targets: dict[str, str] = {}          # destination -> source (its real path)
        for path in self.wanted():
            real = os.path.realpath(path)
            if any(_under(real, p) for p in provided):
                continue
            if not os.path.exists(real):
                raise ViewError(path, f"{self.role(path)} does not exist")
            for dest in dict.fromkeys((path, real)):
                if any(_under(dest, p) for p in provided):
                    continue
                if dest in NEVER_BOUND:
                    if self._optional(path):
                        break
                    raise ViewError(path, f"{self.role(path)} is (or leads to) {dest}, "
                                          f"which a container never gets from the host")
                targets[dest] = real
        mounts: list[Mount] = []
        chosen: list[str] = []
        for dest in sorted(targets, key=lambda d: (d.count("/"), d)):
            # Inside one already bound: shown by it (a bind is recursive; a symlink in it
            # leads to a real path that is bound as well).
            if any(_under(dest, c) for c in chosen):
                continue
            chosen.append(dest)
            mounts.append(Mount(destination=dest, source=targets[dest], readonly=True))
        return tuple(mounts)


def _editable_sources(path: Sequence[str]) -> list[str]:
    """Directories that setuptools' editable installs map packages to (its
    ``__editable___*_finder.py`` modules in site-packages carry a ``MAPPING`` literal
    of package -> source directory); they are on no ``sys.path``."""
    found: list[str] = []
    for directory in path:
        if not os.path.isdir(directory) or "-packages" not in directory:
            continue
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            if not (name.startswith("__editable__") and name.endswith("_finder.py")):
                continue
            try:
                tree = ast.parse(Path(directory, name).read_text(encoding="utf-8"))
            except (OSError, SyntaxError, ValueError):
                continue
            for node in tree.body:
                if isinstance(node, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id == "MAPPING" for t in node.targets):
                    try:
                        mapping = ast.literal_eval(node.value)
                    except ValueError:
                        continue
                    for target in dict(mapping).values():
                        # a package's directory, or a module file: its directory
                        found.append(target if os.path.isdir(target)
                                     else os.path.dirname(target))
    return found
