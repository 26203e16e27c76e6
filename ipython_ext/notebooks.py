"""Run a Jupyter notebook's code cells in a sandboxed session and record the results in
the notebook (nbformat v4), the way ``nbclient`` does with a local kernel.

The session is anything with ``execute(code, *, timeout=None)``
returning a reply shaped like :class:`ipython_ext.session.ExecuteReply` (one
container running one interpreter, state kept between cells); the caller starts and
closes it, so the ``sbx notebook run`` command and the pytest collector choose its
image and limits. This module only walks cells:

- code cells run in order; markdown and raw cells, empty code cells and cells tagged
  ``skip-execution`` are left alone;
- every code cell's old outputs and execution count are cleared before the run, so the
  written notebook shows this run only (cells after a stop stay empty);
- each executed cell gets its execution count, its outputs (consecutive stream outputs
  of one name merged, as Jupyter shows them) and ``metadata.execution`` timestamps;
- the first failing cell stops the run unless ``allow_errors`` (or the cell is tagged
  ``raises-exception``); a cell that times out or runs the container out of memory
  always stops it: the session's state can no longer be trusted (its container may be
  gone); so does an interrupted cell (``KeyboardInterrupt``: Ctrl-C means stop).
"""
from __future__ import annotations

import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Protocol

import nbformat
from nbformat import NotebookNode

SKIP_TAG = "skip-execution"            # nbclient's tags, honoured the same way
RAISES_TAG = "raises-exception"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class NotebookError(Exception):
    """A notebook file that cannot be read or written (the message names the file and
    what was wrong with it)."""


class Reply(Protocol):
    status: str
    execution_count: int
    outputs: list[dict[str, Any]]
    error: dict[str, Any] | None
    timed_out: bool
    oom_killed: bool


class Executes(Protocol):
    """What :func:`run_notebook` needs of a session."""

    def execute(self, code: str, *, timeout: float | None = None) -> Reply: ...


@dataclass(frozen=True)
class CellFailure:
    """One cell that failed: where it is (``index`` counts every cell from 0, as
    ``nb.cells[index]``), what it ran and what it raised."""
    index: int
    cell_id: str | None
    source: str
    ename: str
    evalue: str
    traceback: tuple[str, ...]
    reason: str = "error"              # "error", "interrupt", "timeout" or "oom"
    expected: bool = False             # allowed: allow_errors or a raises-exception tag

    def describe(self) -> str:
        """Plain text for a terminal or a test report: header, source, traceback."""
        where = f"cell {self.index}" + (f" (id {self.cell_id})" if self.cell_id else "")
        rule = "-" * 40
        tb = ANSI.sub("", "\n".join(self.traceback)).rstrip() or \
            f"{self.ename}: {self.evalue}"
        return (f"{where} failed: {self.ename}: {self.evalue}\n{rule}\n"
                f"{self.source.rstrip()}\n{rule}\n{tb}")


@dataclass
class NotebookRun:
    """What :func:`run_notebook` did. ``notebook`` is the same object it was given, now
    holding this run's outputs."""
    notebook: NotebookNode
    executed: int = 0                               # code cells sent to the session
    failures: list[CellFailure] = field(default_factory=list)
    stopped_at: CellFailure | None = None           # the failure that ended the run early

    @property
    def ok(self) -> bool:
        """Every code cell ran and none failed unexpectedly (a failure allowed by
        ``allow_errors`` or a ``raises-exception`` tag is in ``failures``, expected)."""
        return self.stopped_at is None and all(f.expected for f in self.failures)


# ---------------------------------------------------------------- files

def read_notebook(path: str | os.PathLike[str]) -> NotebookNode:
    """Read ``path`` as nbformat v4 (older versions are upgraded) and validate it.
    Missing cell ids of a v4.5+ notebook are filled in, as Jupyter does on save."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", nbformat.validator.MissingIDFieldWarning)
            nb = nbformat.read(os.fspath(path), as_version=4)
    except FileNotFoundError:
        raise NotebookError(f"notebook {os.fspath(path)!r} does not exist") from None
    except OSError as e:
        raise NotebookError(f"cannot read notebook {os.fspath(path)!r}: "
                            f"{e.strerror or e}") from None
    except Exception as e:                     # nbformat's reader raises many kinds
        raise NotebookError(f"{os.fspath(path)!r} is not a notebook nbformat can read: "
                            f"{e}") from None
    _check(nb, f"notebook {os.fspath(path)!r}")
    return nb


def dumps_notebook(nb: NotebookNode) -> str:
    """Validate ``nb`` and return it as JSON text (Jupyter's layout, newline-ended)."""
    _check(nb, "the executed notebook")
    return nbformat.writes(nb) + "\n"


def write_notebook(nb: NotebookNode, path: str | os.PathLike[str]) -> None:
    """Validate ``nb`` and write it to ``path`` atomically (a temporary file in the same
    directory renamed over it, so a failed write never leaves half a notebook)."""
    _check(nb, "the executed notebook")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".sbx-", suffix=".ipynb", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(nbformat.writes(nb) + "\n")
        if os.path.exists(path):                 # keep the file's permissions
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check(nb: NotebookNode, what: str) -> None:
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as e:
        raise NotebookError(f"{what} does not validate against nbformat "
                            f"{nb.get('nbformat')}.{nb.get('nbformat_minor')}: "
                            f"{e.message}") from None


# ---------------------------------------------------------------- running

def code_cells(nb: NotebookNode) -> list[tuple[int, NotebookNode]]:
    """The cells a run executes, with their index in ``nb.cells``."""
    return [(i, cell) for i, cell in enumerate(nb.cells)
            if cell.cell_type == "code" and cell.source.strip()
            and SKIP_TAG not in cell.get("metadata", {}).get("tags", ())]


def clear_outputs(nb: NotebookNode) -> None:
    """Empty every code cell's outputs and execution count, and drop old timings."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)


def run_notebook(nb: NotebookNode, session: Executes, *, cell_timeout: float | None = None,
                 timeout: float | None = None, allow_errors: bool = False) -> NotebookRun:
    """Execute ``nb``'s code cells in ``session`` and write the results into ``nb``.

    ``cell_timeout``: seconds one cell may run; ``timeout``: seconds the whole run may
    take (each cell gets what is left)."""
    clear_outputs(nb)
    run = NotebookRun(nb)
    deadline = time.monotonic() + timeout if timeout is not None else None
    for index, cell in code_cells(nb):
        limit = cell_timeout
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:                 # the time ran out between two cells
                evalue = f"the notebook's time limit of {timeout:g}s ran out before this cell"
                cell.outputs = [nbformat.v4.new_output(
                    "error", ename="TimeoutError", evalue=evalue,
                    traceback=[f"TimeoutError: {evalue}"])]
                run.stopped_at = CellFailure(index, cell.get("id"), cell.source,
                                             "TimeoutError", evalue,
                                             (f"TimeoutError: {evalue}",), "timeout")
                run.failures.append(run.stopped_at)
                break
            limit = left if limit is None else min(limit, left)
        started = _now()
        reply = session.execute(cell.source, timeout=limit)
        finished = _now()
        run.executed += 1
        cell.execution_count = reply.execution_count or None
        cell.outputs = _outputs(reply)
        cell.metadata["execution"] = {
            "iopub.status.busy": started, "iopub.execute_input": started,
            "shell.execute_reply": finished, "iopub.status.idle": finished}
        failure = _failure(index, cell, reply, limit, cell_timeout is not None and
                           limit == cell_timeout)
        if failure is None:
            continue
        if failure.reason == "error" and (allow_errors or
                                          RAISES_TAG in cell.metadata.get("tags", ())):
            failure = replace(failure, expected=True)
        run.failures.append(failure)
        if not failure.expected:
            run.stopped_at = failure
            break
    return run


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace(
        "+00:00", "Z")


def _outputs(reply: Reply) -> list[NotebookNode]:
    """The reply's outputs as nbformat nodes; consecutive stream outputs of one name
    merged into one, as a live notebook shows them."""
    outputs: list[NotebookNode] = []
    for raw in reply.outputs:
        out = nbformat.from_dict(dict(raw))
        if out.output_type == "stream":
            if outputs and outputs[-1].output_type == "stream" and \
                    outputs[-1].name == out.name:
                outputs[-1].text += out.text
                continue
        elif out.output_type == "execute_result":
            out.setdefault("metadata", {})
            if out.get("execution_count") is None:
                out.execution_count = reply.execution_count or None
        elif out.output_type == "display_data":
            out.setdefault("metadata", {})
        outputs.append(out)
    return outputs


def _failure(index: int, cell: NotebookNode, reply: Reply, limit: float | None,
             cell_limit: bool) -> CellFailure | None:
    """The cell's failure, if it failed. A failed cell without an ``error`` output (a
    timeout or OOM the session did not describe) gets one, so the notebook itself says
    why the run stopped."""
    reason = "oom" if reply.oom_killed else "timeout" if reply.timed_out else "error"
    if reason == "error" and reply.status == "ok":
        return None
    errors = [o for o in cell.outputs if o.output_type == "error"]
    error = dict(errors[-1]) if errors else dict(reply.error or {})
    if not error and reason == "oom":
        error = {"ename": "MemoryError", "evalue": "the container ran out of memory and "
                 "was killed (give it more with -m/--memory)"}
    elif not error and reason == "timeout":
        what = "the cell timeout" if cell_limit else "the notebook's time limit"
        error = {"ename": "TimeoutError",
                 "evalue": f"the cell did not finish within {limit:g}s ({what})"}
    ename = str(error.get("ename", "Error"))
    evalue = str(error.get("evalue", ""))
    if reason == "error" and ename == "KeyboardInterrupt":
        reason = "interrupt"            # Ctrl-C, passed on to the cell: the user wants out
    tb = [str(line) for line in error.get("traceback", ())] or [f"{ename}: {evalue}"]
    if not errors:
        cell.outputs.append(nbformat.v4.new_output("error", ename=ename, evalue=evalue,
                                                   traceback=tb))
    return CellFailure(index, cell.get("id"), cell.source, ename, evalue, tuple(tb), reason)
