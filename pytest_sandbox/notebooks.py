"""Notebooks as tests: with ``--sandbox-notebooks`` (or ``sandbox_notebooks = true`` in
the ini file) every collected ``.ipynb`` file is one test item whose code cells run in
order in one sandboxed session (a fresh container running one IPython shell, as a Jupyter
kernel runs them: magics, ``!`` and IPython's tracebacks work).

The item passes when every code cell runs; the first cell that raises fails it, and the
report shows that cell's index, source and traceback. A cell tagged
``raises-exception`` may raise, one tagged ``skip-execution`` is not run (nbclient's
tags). Limits come from the ``--sandbox-*`` options and ``sandbox_*`` ini values, and a
notebook may set its own in its metadata::

    "metadata": {"sandbox": {"memory": "256m", "timeout": 60, "cell_timeout": 10}}

with the ``container`` marker's names plus ``cell_timeout`` and ``allow_errors``.
``timeout`` bounds the whole notebook. The item runs on the host and drives the
container itself, so ``--sandbox`` does not wrap it in a worker container too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from . import WORKER_ENV
from .controller import MARKER_ARGS, Settings, code_paths, defaults_from_config
from .stash import controller_of

SUFFIX = ".ipynb"
METADATA_KEY = "sandbox"
# Marker arguments a notebook cannot use: a session has no read-only root, and links
# name service fixtures, which only a Python test can request.
NOT_FOR_NOTEBOOKS = ("read_only", "links")
NOTEBOOK_ARGS = tuple(a for a in MARKER_ARGS if a not in NOT_FOR_NOTEBOOKS) + \
    ("cell_timeout", "allow_errors")


def wanted(config: pytest.Config) -> bool:
    return bool(config.getoption("sandbox_notebooks") or config.getini("sandbox_notebooks"))


def collect_file(file_path: Path, parent: pytest.Collector) -> NotebookFile | None:
    """``pytest_collect_file``: a notebook when asked for, on the host (inside a test's
    container there is no daemon to run it)."""
    if file_path.suffix != SUFFIX or os.environ.get(WORKER_ENV) or \
            not wanted(parent.config) or ".ipynb_checkpoints" in file_path.parts:
        return None
    return NotebookFile.from_parent(parent, path=file_path)


class NotebookFile(pytest.File):
    def collect(self) -> list[NotebookItem]:
        return [NotebookItem.from_parent(self, name=self.path.stem)]


@dataclass(frozen=True)
class NotebookSettings:
    container: Settings
    cell_timeout: float | None = None
    allow_errors: bool = False


class NotebookCellFailed(Exception):
    """The run stopped at a failing cell (``failure`` says which and why)."""

    def __init__(self, failure: Any):
        super().__init__(failure.describe())
        self.failure = failure


class NotebookSettingsError(Exception):
    """The notebook's ``metadata.sandbox`` asks for something a session cannot do."""


class NotebookItem(pytest.Item):
    runs_own_container = True          # the plugin's protocol hook leaves it alone

    def runtest(self) -> None:
        from ipython_ext.notebooks import read_notebook, run_notebook
        from ipython_ext.session import Session
        nb = read_notebook(self.path)
        settings = notebook_settings(self.config, nb.metadata.get(METADATA_KEY, {}))
        controller = controller_of(self.config)
        c = settings.container
        # The project read-only at its own paths (as for marked tests), and the notebook's
        # directory as the working directory, as Jupyter runs it.
        mounts, pythonpath = code_paths(self.config, _visible())
        here = str(self.path.parent)
        if not any(here == m or here.startswith(m.rstrip("/") + "/") for m in mounts):
            mounts.append(here)
        env = {"PYTHONPATH": os.pathsep.join(pythonpath), "PYTHONDONTWRITEBYTECODE": "1"}
        env.update({str(k): str(v) for k, v in dict(c.env).items()})
        volumes = [f"{m}:{m}:ro" for m in mounts] + list(c.volumes)
        with Session(controller.client, c.image, memory=c.memory, cpus=c.cpus,
                     cpu_quota=c.cpu_quota, cpu_period=c.cpu_period, pids=c.pids,
                     ulimits=_ulimits(c.ulimits), network=c.network or "none", env=env,
                     volumes=volumes, python=c.python or None, workdir=here, ipython=True,
                     show_environment=False) as session:     # the view's binds: above
            run = run_notebook(nb, session, cell_timeout=settings.cell_timeout,
                               timeout=c.timeout, allow_errors=settings.allow_errors)
        if run.stopped_at is not None:
            raise NotebookCellFailed(run.stopped_at)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str | Any:
        if isinstance(excinfo.value, (NotebookCellFailed, NotebookSettingsError)):
            return str(excinfo.value)
        from ipython_ext.notebooks import NotebookError

        from sandboxd.errors import SandboxError
        if isinstance(excinfo.value, NotebookError):
            return str(excinfo.value)
        if isinstance(excinfo.value, SandboxError):
            return f"cannot run the notebook in a container: {excinfo.value.message}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"notebook {self.path.name}"


def notebook_settings(config: pytest.Config, metadata: Any) -> NotebookSettings:
    """Options and ini values, overridden by the notebook's ``metadata.sandbox``."""
    if not isinstance(metadata, dict):
        raise NotebookSettingsError(f"metadata.{METADATA_KEY} must be a mapping of "
                                    f"{', '.join(NOTEBOOK_ARGS)}; got {metadata!r}")
    unknown = sorted(set(metadata) - set(NOTEBOOK_ARGS))
    if unknown:
        raise NotebookSettingsError(
            f"metadata.{METADATA_KEY} has unknown key(s) {', '.join(unknown)}; it takes "
            f"{', '.join(NOTEBOOK_ARGS)}")
    own = {k: v for k, v in metadata.items() if k not in ("cell_timeout", "allow_errors")}
    settings = NotebookSettings(replace(defaults_from_config(config), **own),
                                metadata.get("cell_timeout"),
                                bool(metadata.get("allow_errors", False)))
    for name, value in (("timeout", settings.container.timeout),
                        ("cell_timeout", settings.cell_timeout)):
        if value is not None and (not isinstance(value, (int, float)) or value <= 0):
            raise NotebookSettingsError(f"metadata.{METADATA_KEY}.{name} must be a "
                                        f"positive number of seconds, got {value!r}")
    return settings


def _ulimits(ulimits: Any) -> list[str]:
    """The marker's ``{"nofile": (soft, hard)}`` / ``{"nofile": n}`` form as ``sbx run``'s
    ``name=soft[:hard]`` strings, which the session takes."""
    if not isinstance(ulimits, dict):
        return [str(u) for u in ulimits]
    return [f"{name}={':'.join(map(str, value)) if isinstance(value, (tuple, list)) else value}"
            for name, value in ulimits.items()]


def _visible() -> list[str]:
    from sandboxd.runner.interpreter import python_prefixes
    return list(python_prefixes())

