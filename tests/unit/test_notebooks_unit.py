"""ipython_ext.notebooks without a container: reading and writing files, and the cell walk
driven by a scripted session (the walk is what is under test here; real sessions run in
tests/integration/test_notebooks_run.py)."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_raw_cell

from ipython_ext.notebooks import (NotebookError, clear_outputs, code_cells, dumps_notebook,
                                   read_notebook, run_notebook, write_notebook)


@dataclass
class Reply:
    status: str = "ok"
    execution_count: int = 0
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    values: dict[str, Any] = field(default_factory=dict)
    timed_out: bool = False
    oom_killed: bool = False
    duration: float = 0.0


class Scripted:
    """Answers each ``execute`` with the next reply of a script and records the call."""

    def __init__(self, *replies: Reply):
        self.replies = list(replies)
        self.calls: list[tuple[str, float | None]] = []

    def execute(self, code: str, *, timeout: float | None = None) -> Reply:
        self.calls.append((code, timeout))
        reply = self.replies.pop(0)
        reply.execution_count = len(self.calls)
        return reply


def stream(text: str, name: str = "stdout") -> dict[str, Any]:
    return {"output_type": "stream", "name": name, "text": text}


def error(ename: str, evalue: str) -> dict[str, Any]:
    return {"status": "error", "ename": ename, "evalue": evalue,
            "traceback": ["\x1b[0;31mTraceback\x1b[0m", f"{ename}: {evalue}"]}


def failed(ename: str, evalue: str) -> Reply:
    err = error(ename, evalue)
    out = {"output_type": "error", "ename": ename, "evalue": evalue,
           "traceback": err["traceback"]}
    return Reply(status="error", outputs=[out], error=err)


def notebook(*cells: Any) -> nbformat.NotebookNode:
    nb = new_notebook(cells=list(cells))
    nbformat.validate(nb)
    return nb


def test_walks_code_cells_only_and_records_results():
    stale = new_code_cell("x = 1", execution_count=7, outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="old\n")])
    stale.metadata["execution"] = {"iopub.status.busy": "2020-01-01T00:00:00Z"}
    nb = notebook(new_markdown_cell("# title"), stale, new_raw_cell("raw"),
                  new_code_cell("   \n"),
                  new_code_cell("print('a'); print('b'); x", metadata={}),
                  new_code_cell("ignored", metadata={"tags": ["skip-execution"]}))
    session = Scripted(
        Reply(),
        Reply(outputs=[stream("a\n"), stream("b\n"), stream("warn\n", "stderr"),
                       {"output_type": "execute_result", "data": {"text/plain": "1"},
                        "metadata": {}, "execution_count": None}]))
    run = run_notebook(nb, session)
    assert [code for code, _ in session.calls] == ["x = 1", "print('a'); print('b'); x"]
    assert run.ok and run.executed == 2 and run.failures == []
    first, last = nb.cells[1], nb.cells[4]
    assert first.execution_count == 1 and first.outputs == []      # old output cleared
    assert set(first.metadata.execution) == {"iopub.status.busy", "iopub.execute_input",
                                             "shell.execute_reply", "iopub.status.idle"}
    assert last.execution_count == 2
    # consecutive stdout merged; stderr stays separate; the result gets its count
    assert [(o.output_type, o.get("name"), o.get("text")) for o in last.outputs] == [
        ("stream", "stdout", "a\nb\n"), ("stream", "stderr", "warn\n"),
        ("execute_result", None, None)]
    assert last.outputs[2].execution_count == 2
    assert nb.cells[3].execution_count is None and nb.cells[5].execution_count is None
    nbformat.validate(nb)


def test_first_error_stops_the_run_and_describes_the_cell():
    nb = notebook(new_code_cell("a = 1"), new_code_cell("1/0"), new_code_cell("b = 2"))
    session = Scripted(Reply(), failed("ZeroDivisionError", "division by zero"))
    run = run_notebook(nb, session)
    assert not run.ok and len(session.calls) == 2
    failure = run.stopped_at
    assert failure is not None and failure.index == 1 and failure.reason == "error"
    assert (failure.ename, failure.evalue) == ("ZeroDivisionError", "division by zero")
    assert failure.cell_id == nb.cells[1].id
    text = failure.describe()
    assert f"cell 1 (id {nb.cells[1].id}) failed: ZeroDivisionError" in text
    assert "1/0" in text and "\x1b" not in text and "Traceback" in text
    assert nb.cells[2].execution_count is None and nb.cells[2].outputs == []
    assert [o.output_type for o in nb.cells[1].outputs] == ["error"]
    nbformat.validate(nb)


def test_allow_errors_and_raises_exception_tag_keep_going():
    nb = notebook(new_code_cell("raise KeyError('k')"), new_code_cell("c = 3"))
    run = run_notebook(nb, Scripted(failed("KeyError", "'k'"), Reply()),
                       allow_errors=True)
    assert run.ok and run.executed == 2 and run.stopped_at is None
    assert [f.expected for f in run.failures] == [True]

    nb = notebook(new_code_cell("raise KeyError('k')",
                                metadata={"tags": ["raises-exception"]}),
                  new_code_cell("raise ValueError('v')"), new_code_cell("never"))
    session = Scripted(failed("KeyError", "'k'"), failed("ValueError", "v"))
    run = run_notebook(nb, session)
    assert not run.ok and len(session.calls) == 2
    assert run.stopped_at is not None and run.stopped_at.ename == "ValueError"


def test_error_reply_without_error_output_gets_one():
    nb = notebook(new_code_cell("boom()"))
    err = error("NameError", "name 'boom' is not defined")
    run = run_notebook(nb, Scripted(Reply(status="error", error=err)))
    assert run.stopped_at is not None and run.stopped_at.ename == "NameError"
    (out,) = nb.cells[0].outputs
    assert out.output_type == "error" and out.ename == "NameError"
    nbformat.validate(nb)


@pytest.mark.parametrize("flag, reason, ename", [("timed_out", "timeout", "TimeoutError"),
                                                  ("oom_killed", "oom", "MemoryError")])
def test_timeout_and_oom_stop_even_with_allow_errors(flag, reason, ename):
    nb = notebook(new_code_cell("while True: pass"), new_code_cell("after = 1"))
    reply = Reply(status="error", outputs=[stream("partial\n")], **{flag: True})
    session = Scripted(reply)
    run = run_notebook(nb, session, cell_timeout=2.5, allow_errors=True)
    assert len(session.calls) == 1 and session.calls[0][1] == 2.5
    assert run.stopped_at is not None and run.stopped_at.reason == reason
    assert run.stopped_at.ename == ename and not run.ok
    # the session said nothing about why: the notebook gets an error output that does
    assert [o.output_type for o in nb.cells[0].outputs] == ["stream", "error"]
    if reason == "timeout":
        assert "within 2.5s (the cell timeout)" in nb.cells[0].outputs[1].evalue
    assert nb.cells[1].outputs == [] and nb.cells[1].execution_count is None
    nbformat.validate(nb)


def test_the_sessions_own_timeout_error_is_kept():
    nb = notebook(new_code_cell("sleep()"))
    reply = failed("TimeoutError", "the cell did not finish within 1s")
    reply.timed_out = True
    run = run_notebook(nb, Scripted(reply), cell_timeout=1)
    assert run.stopped_at is not None and run.stopped_at.reason == "timeout"
    assert [o.ename for o in nb.cells[0].outputs] == ["TimeoutError"]      # not twice


def test_whole_run_timeout_shrinks_each_cells_limit():
    nb = notebook(new_code_cell("a"), new_code_cell("b"))
    session = Scripted(Reply(), Reply())
    run_notebook(nb, session, cell_timeout=1000, timeout=60)
    limits = [limit for _, limit in session.calls]
    assert all(limit is not None and 0 < limit <= 60 for limit in limits)


def test_a_notebook_out_of_time_stops_before_the_next_cell():
    class Slow(Scripted):
        def execute(self, code: str, *, timeout: float | None = None) -> Reply:
            time.sleep(0.05)                  # longer than the whole run may take
            return super().execute(code, timeout=timeout)

    nb = notebook(new_code_cell("first"), new_code_cell("second"))
    session = Slow(Reply(), Reply())
    run = run_notebook(nb, session, timeout=0.01)
    assert [code for code, _ in session.calls] == ["first"]
    assert run.stopped_at is not None and run.stopped_at.index == 1
    assert run.stopped_at.reason == "timeout"
    assert "time limit of 0.01s ran out before this cell" in nb.cells[1].outputs[0].evalue
    nbformat.validate(nb)


def test_clear_outputs_and_code_cells():
    nb = notebook(new_markdown_cell("m"), new_code_cell("x", execution_count=3, outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="y")]))
    assert [i for i, _ in code_cells(nb)] == [1]
    clear_outputs(nb)
    assert nb.cells[1].outputs == [] and nb.cells[1].execution_count is None


def test_read_fills_missing_ids_and_upgrades(tmp_path):
    nb = notebook(new_code_cell("1"))
    data = json.loads(nbformat.writes(nb))
    del data["cells"][0]["id"]
    path = tmp_path / "noid.ipynb"
    path.write_text(json.dumps(data))
    read = read_notebook(path)
    assert read.cells[0].id and read.nbformat == 4
    v3 = {"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": [
        {"cells": [{"cell_type": "code", "input": "1+1", "language": "python",
                    "outputs": [], "metadata": {}}], "metadata": {}}]}
    (tmp_path / "v3.ipynb").write_text(json.dumps(v3))
    assert read_notebook(tmp_path / "v3.ipynb").cells[0].source == "1+1"


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("not json", "is not a notebook nbformat can read"),
    (json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {},
                 "cells": [{"cell_type": "code"}]}), "not a notebook|does not validate"),
])
def test_read_refuses_with_the_file_named(tmp_path, content, message):
    path = tmp_path / "bad.ipynb"
    if content is not None:
        path.write_text(content)
    with pytest.raises(NotebookError, match=message) as info:
        read_notebook(path)
    assert str(path) in str(info.value)


def test_write_is_atomic_validated_and_keeps_mode(tmp_path):
    path = tmp_path / "out.ipynb"
    nb = notebook(new_code_cell("1"))
    write_notebook(nb, path)
    assert read_notebook(path) == nb
    os.chmod(path, 0o640)
    nb.cells[0].outputs = [nbformat.from_dict({"output_type": "stream", "name": "stdout",
                                               "text": "1\n"})]
    write_notebook(nb, path)
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert read_notebook(path).cells[0].outputs[0].text == "1\n"
    nb.cells[0].outputs = [nbformat.from_dict({"output_type": "nonsense"})]
    with pytest.raises(NotebookError, match="does not validate"):
        write_notebook(nb, path)
    with pytest.raises(NotebookError, match="does not validate"):
        dumps_notebook(nb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ipynb"]   # no temp left
    assert read_notebook(path).cells[0].outputs[0].text == "1\n"         # old one intact


def test_an_interrupted_cell_stops_even_with_allow_errors():
    nb = notebook(new_code_cell("sleep()"), new_code_cell("after()"))
    session = Scripted(failed("KeyboardInterrupt", ""))
    run = run_notebook(nb, session, allow_errors=True)
    assert len(session.calls) == 1
    assert run.stopped_at is not None and run.stopped_at.reason == "interrupt"
    assert not run.ok and not run.stopped_at.expected
