"""Notebooks end to end: ``sbx notebook run`` (the real CLI process) and the pytest
collector (pytester, in process) against the shared real daemon (``conftest.daemon``):
every code cell runs in one real container through ``ipython_ext.session.Session``, and
the written notebooks are read back and validated with nbformat.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from harness import PY, REPO, Daemon, wait_until
from test_pytest_anyenv import _venv, tmp_venv  # noqa: F401

pytest_plugins = ("pytester",)

HOST_PIDNS = os.readlink("/proc/self/ns/pid")
HOST_NAME = socket.gethostname()
EXAMPLE = REPO / "examples" / "sandboxed.ipynb"


def write(path: Path, *cells: Any, **metadata: Any) -> Path:
    nb = new_notebook(cells=list(cells), metadata=metadata)
    nbformat.validate(nb)
    nbformat.write(nb, str(path))
    return path


def read(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    return nb


def texts(cell: Any, name: str = "stdout") -> str:
    return "".join(o.text for o in cell.outputs
                   if o.output_type == "stream" and o.name == name)


def no_containers_left(daemon: Daemon, before: set[str]) -> None:
    """The session's container is removed when the command ends."""
    left = set(daemon.ids("-a")) - before
    assert not left, f"containers left behind: {left}"


# ---------------------------------------------------------------- sbx notebook run

def test_run_writes_outputs_and_counts_and_leaves_the_source_alone(daemon: Daemon,
                                                                   tmp_path: Path):
    src = write(
        tmp_path / "nb.ipynb",
        new_markdown_cell("# not run"),
        new_code_cell("import os, socket, sys\n"
                      "print('pidns', os.readlink('/proc/self/ns/pid'))\n"
                      "print('host', socket.gethostname())\n"
                      "print('to stderr', file=sys.stderr)\n"
                      "state = 41"),
        new_code_cell("state + 1"),
        new_code_cell("from IPython.display import HTML, display\n"
                      "display(HTML('<b>bold</b>'))\n"
                      "print(sorted(n for _, n in socket.if_nameindex()))"),
        new_code_cell("print(os.environ.get('NB_VAR'), open('/data/in.txt').read())"),
        language_info={"name": "python"})
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from the host")
    before = set(daemon.ids("-a"))
    r = daemon.sbx("notebook", "run", str(src), "-o", str(tmp_path / "out.ipynb"),
                   "-m", "256m", "--cpus", "1", "-e", "NB_VAR=hello",
                   "-v", f"{data}:/data:ro", timeout=120)
    assert r.returncode == 0, r.err
    no_containers_left(daemon, before)

    out = read(tmp_path / "out.ipynb")
    code = [c for c in out.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == [1, 2, 3, 4]
    assert out.cells[0].cell_type == "markdown" and "execution_count" not in out.cells[0]
    first = texts(code[0])
    assert "pidns" in first and HOST_PIDNS not in first          # its own pid namespace
    assert f"host {HOST_NAME}\n" not in first
    assert texts(code[0], "stderr") == "to stderr\n"
    (result,) = code[1].outputs                                   # state kept between cells
    assert result.output_type == "execute_result" and result.execution_count == 2
    assert result.data["text/plain"] == "42"
    display = [o for o in code[2].outputs if o.output_type == "display_data"]
    assert display and display[0].data["text/html"] == "<b>bold</b>"
    assert texts(code[2]) == "['lo']\n"                            # --net none by default
    assert texts(code[3]) == "hello from the host\n"
    for cell in code:
        assert set(cell.metadata.execution) >= {"iopub.status.busy", "shell.execute_reply"}
    # the source notebook is untouched when -o is given
    assert all(c.outputs == [] for c in read(src).cells if c.cell_type == "code")


def test_run_in_place_and_to_stdout(daemon: Daemon, tmp_path: Path):
    src = write(tmp_path / "nb.ipynb", new_code_cell("print('in place')"))
    r = daemon.sbx("notebook", "run", str(src), "-o", "-", timeout=120)
    assert r.returncode == 0, r.err
    streamed = nbformat.reads(r.out, as_version=4)
    nbformat.validate(streamed)
    assert texts(streamed.cells[0]) == "in place\n"
    assert read(src).cells[0].outputs == []                       # stdout only

    r = daemon.sbx("notebook", "run", str(src), timeout=120)
    assert r.returncode == 0, r.err
    cell = read(src).cells[0]
    assert texts(cell) == "in place\n" and cell.execution_count == 1


def test_a_failing_cell_exits_1_writes_the_error_and_stops(daemon: Daemon, tmp_path: Path):
    src = write(tmp_path / "nb.ipynb", new_code_cell("x = 1"),
                new_code_cell("print('before')\n{}['missing']"),
                new_code_cell("print('after')"))
    before = set(daemon.ids("-a"))
    r = daemon.sbx("notebook", "run", str(src), "-o", str(tmp_path / "out.ipynb"),
                   timeout=120)
    assert r.returncode == 1, r.err
    no_containers_left(daemon, before)
    # the terminal names the cell, shows its source and its traceback
    assert f"cell 1 (id {read(src).cells[1].id}) failed: KeyError: 'missing'" in r.err
    assert "{}['missing']" in r.err and "Traceback" in r.err
    assert "1 later code cell(s) not run" in r.err
    out = read(tmp_path / "out.ipynb")
    failing = out.cells[1]
    assert texts(failing) == "before\n"
    (err,) = [o for o in failing.outputs if o.output_type == "error"]
    assert err.ename == "KeyError" and err.traceback
    assert out.cells[2].execution_count is None and out.cells[2].outputs == []

    r = daemon.sbx("notebook", "run", str(src), "-o", str(tmp_path / "all.ipynb"),
                   "--allow-errors", timeout=120)
    assert r.returncode == 0, r.err
    assert "allowed error in cell 1: KeyError" in r.err
    out = read(tmp_path / "all.ipynb")
    assert [c.execution_count for c in out.cells] == [1, 2, 3]
    assert texts(out.cells[2]) == "after\n"


def test_cell_timeout_stops_the_run(daemon: Daemon, tmp_path: Path):
    src = write(tmp_path / "nb.ipynb",
                new_code_cell("import time\nprint('start', flush=True)\ntime.sleep(120)"),
                new_code_cell("print('never')"))
    before = set(daemon.ids("-a"))
    r = daemon.sbx("notebook", "run", str(src), "-o", str(tmp_path / "out.ipynb"),
                   "--cell-timeout", "2", "--allow-errors", timeout=120)
    assert r.returncode == 1, r.err
    no_containers_left(daemon, before)
    assert "TimeoutError: the cell did not finish within 2s" in r.err
    out = read(tmp_path / "out.ipynb")
    assert texts(out.cells[0]) == "start\n"
    errors = [o.ename for o in out.cells[0].outputs if o.output_type == "error"]
    assert errors == ["TimeoutError"]
    assert out.cells[1].outputs == []


def test_memory_limit_ends_the_run_with_a_clear_error(daemon: Daemon, tmp_path: Path):
    src = write(tmp_path / "nb.ipynb",
                new_code_cell("blocks = []\nwhile True:\n    blocks.append(bytearray(2**24))"),
                new_code_cell("print('never')"))
    r = daemon.sbx("notebook", "run", str(src), "-o", str(tmp_path / "out.ipynb"),
                   "-m", "64m", timeout=120)
    assert r.returncode == 1, r.err
    out = read(tmp_path / "out.ipynb")
    (err,) = [o for o in out.cells[0].outputs if o.output_type == "error"]
    assert err.ename == "MemoryError" and "out of memory" in err.evalue, err
    assert "memory" in r.err.lower()
    assert out.cells[1].outputs == []


def test_ctrl_c_interrupts_the_cell_writes_the_notebook_and_exits_130(daemon: Daemon,
                                                                      tmp_path: Path):
    shared = tmp_path / "shared"
    shared.mkdir()
    src = write(tmp_path / "nb.ipynb", new_code_cell("print('a')"),
                new_code_cell("import time\nopen('/shared/started', 'w').close()\n"
                              "time.sleep(120)"),
                new_code_cell("print('never')"))
    out_path = tmp_path / "out.ipynb"
    before = set(daemon.ids("-a"))
    proc = subprocess.Popen([PY, "-m", "sandboxd.cli", "notebook", "run", str(src), "-o",
                             str(out_path), "--allow-errors", "-v", f"{shared}:/shared"],
                            env=daemon.env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        wait_until(lambda: (shared / "started").exists() or proc.poll() is not None, 60,
                   "the second cell to start")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err.decode()
    assert b"KeyboardInterrupt" in err
    no_containers_left(daemon, before)
    out = read(out_path)
    assert texts(out.cells[0]) == "a\n"
    errors = [o.ename for o in out.cells[1].outputs if o.output_type == "error"]
    assert errors == ["KeyboardInterrupt"]
    assert out.cells[2].outputs == [] and out.cells[2].execution_count is None


@pytest.mark.parametrize("setup, args, words", [
    ("missing", [], "does not exist"),
    ("garbage", [], "is not a notebook nbformat can read"),
    ("ok", ["--image", "no-such-image"], "no-such-image"),
    ("ok", ["--cell-timeout", "0"], "--cell-timeout must be a positive number"),
    ("ok", ["--image", "busybox"], "image 'busybox' cannot run the notebook"),
    ("ok", ["-m", "1k"], "memory"),
])
def test_refusals_exit_125_and_write_nothing(daemon: Daemon, tmp_path: Path, setup: str,
                                             args: list[str], words: str):
    src = tmp_path / "nb.ipynb"
    if setup == "garbage":
        src.write_text("{not json")
    elif setup == "ok":
        write(src, new_code_cell("1"))
    before = set(daemon.ids("-a"))
    r = daemon.sbx("notebook", "run", str(src), "-o", str(tmp_path / "out.ipynb"), *args,
                   timeout=120)
    assert r.returncode == 125, (r.returncode, r.err)
    assert words in r.err
    assert not (tmp_path / "out.ipynb").exists()
    no_containers_left(daemon, before)


def test_no_daemon_exits_125(daemon: Daemon, tmp_path: Path):
    src = write(tmp_path / "nb.ipynb", new_code_cell("1"))
    r = daemon.sbx("notebook", "run", str(src), env={
        "SANDBOXD_HOST": str(tmp_path / "nobody.sock")})
    assert r.returncode == 125 and "nobody.sock" in r.err, r.err


def test_the_example_notebook_runs(daemon: Daemon, tmp_path: Path):
    r = daemon.sbx("notebook", "run", str(EXAMPLE), "-o", str(tmp_path / "ex.ipynb"),
                   "-m", "256m", timeout=120)
    assert r.returncode == 0, r.err
    out = read(tmp_path / "ex.ipynb")
    code = [c for c in out.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    assert "network interfaces: ['lo']" in texts(code[0])
    assert code[1].outputs[0].data["text/plain"] == "285"
    last = code[-1]
    assert "raises-exception" in last.metadata.tags
    assert [o.ename for o in last.outputs if o.output_type == "error"] == \
        ["ConnectionRefusedError"]


# ---------------------------------------------------------------- the same outputs as a kernel

IPYTHON_CELLS = ["%%bash\necho from bash; echo to stderr >&2",
                 "%time x = sum(range(1000))",
                 "%config InlineBackend.figure_format = 'png'",
                 "!echo shell escape",
                 "%%latex\n$x^2$",
                 "type(get_ipython()).__name__",
                 "from IPython.display import HTML, Image, display\n"
                 "display(HTML('<b>bold</b>'))\nprint('between')\n"
                 "display(Image(data=bytes.fromhex("
                 "'89504e470d0a1a0a0000000d4948445200000001000000010806000000'"
                 "'1f15c4890000000d4944415478da63f8ffff3f0005fe02fea73581e40000000049454e44ae426082')))"
                 "\n6 * 7",
                 "h = display('first', display_id=True)\nh.update('second')",
                 "import sys\nprint('err', file=sys.stderr)\nprint('out')\n_",
                 "_i1.splitlines()[0], Out[6]",
                 "x?",
                 "def f():\n    return 1 / 0\nf()",
                 "1 +"]


def normalised(nb: Any) -> list[Any]:
    """Each code cell's count and outputs, without what differs from run to run: output
    metadata that is empty, timings, addresses; a run of stream outputs as each stream's
    whole text (where a kernel cuts a stream into messages, and how it orders stdout
    against stderr, is a matter of timing)."""
    import json
    import re

    def clean(text: str) -> str:
        text = re.sub(r"0x[0-9a-f]+", "0x?", text)
        return re.sub(r"\d+(\.\d+)?(e[+-]?\d+)? ?(µs|μs|ms|ns|s)\b", "T", text)
    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outs: list[dict[str, Any]] = []
        for raw in cell.outputs:
            out = json.loads(json.dumps(raw))
            if not out.get("metadata"):
                out.pop("metadata", None)
            if "text" in out:
                out["text"] = clean(out["text"])
            if "data" in out:
                out["data"] = {k: clean(v) if isinstance(v, str) else v
                               for k, v in out["data"].items()}
            if "traceback" in out:
                out["traceback"] = [clean(line) for line in out["traceback"]]
            if out["output_type"] == "stream":
                # A kernel orders stdout against stderr by when each buffer was flushed
                # (ipykernel's IOPub thread: a loaded machine splits and reorders them,
                # the reference's too), so a run of stream outputs compares as each
                # stream's whole text.
                if not outs or outs[-1]["output_type"] != "streams":
                    outs.append({"output_type": "streams"})
                outs[-1][out["name"]] = outs[-1].get(out["name"], "") + out["text"]
                continue
            outs.append(out)
        cells.append((cell.execution_count, outs))
    return cells


def nbclient_run(path: Path) -> Any:
    """The notebook executed by nbclient with a plain local ipykernel: the reference."""
    from nbclient import NotebookClient
    nb = nbformat.read(str(path), as_version=4)
    NotebookClient(nb, kernel_name="python3", allow_errors=True, timeout=60,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def test_cells_run_in_ipython_with_the_outputs_of_a_kernel(daemon: Daemon, tmp_path: Path):
    """Magics, ! escapes, get_ipython(), display() and update_display, Out[n], the pager,
    IPython's tracebacks: cell for cell what nbclient writes with a local ipykernel."""
    src = write(tmp_path / "magics.ipynb", *[new_code_cell(c) for c in IPYTHON_CELLS])
    r = daemon.sbx("notebook", "run", str(src), "-o", str(tmp_path / "out.ipynb"),
                   "--allow-errors", timeout=120)
    assert r.returncode == 0, r.err
    ours = read(tmp_path / "out.ipynb")
    code = [c for c in ours.cells if c.cell_type == "code"]
    assert texts(code[0]) == "from bash\n" and texts(code[3]).strip() == "shell escape"
    assert code[5].outputs[0].data["text/plain"] == "'ZMQInteractiveShell'"
    assert "Cell \x1b[39m\x1b[36m \x1b[39m\x1b[32mIn[12]" in "".join(
        code[11].outputs[-1].traceback).replace("\x1b[36mCell\x1b[39m", "Cell \x1b[39m")
    for index, (want, got) in enumerate(zip(normalised(nbclient_run(src)),
                                            normalised(ours), strict=True)):
        assert got == want, f"cell {index} ({IPYTHON_CELLS[index]!r})"


def test_a_client_from_another_python_environment(daemon: Daemon, tmp_venv: Path):
    """The host image shows the system and the daemon's own Python. A client from a venv
    under /tmp (which the container's fresh /tmp hides) still runs its cells on its own
    interpreter and packages: ``sbx notebook run`` and a ``Session`` (``%%container``)."""
    venv = tmp_venv / "venv"
    (_venv(venv) / "only_in_this_venv.py").write_text("VALUE = 42\n")
    src = write(tmp_venv / "nb.ipynb",
                new_code_cell("import sys, only_in_this_venv\n"
                              "print(sys.prefix, only_in_this_venv.VALUE)"),
                new_code_cell("!echo shell escape"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = subprocess.run([str(venv / "bin" / "python"), "-m", "sandboxd.cli", "notebook",
                          "run", str(src)], env={**env, "SANDBOXD_HOST": daemon.sock},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    cells = read(src).cells
    assert texts(cells[0]) == f"{venv} 42\n" and texts(cells[1]).strip() == "shell escape"
    session = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "from ipython_ext.session import Session\n"
         "with Session(image='host') as s:\n"
         "    print(s.execute('import sys; sys.prefix', outputs=['sys']).outputs)"],
        env={**env, "SANDBOXD_HOST": daemon.sock}, capture_output=True, text=True,
        timeout=120)
    assert session.returncode == 0, session.stderr
    assert repr(str(venv)) in session.stdout, session.stdout


NBSPHINX_DOC = Path("/usr/share/doc/python-nbsphinx/html/code-cells.ipynb.gz")


@pytest.mark.skipif(not NBSPHINX_DOC.exists(),
                    reason="needs Debian's python-nbsphinx-doc (.ci/install --test)")
def test_a_debian_doc_notebook_gives_what_nbclient_gives(daemon: Daemon, tmp_path: Path):
    """nbsphinx's own code-cells notebook (39 code cells: rich output, streams, ANSI,
    errors), not written here, against nbclient; the two cells that fetch a URL differ by
    design (no network in the session: the resolver's error is another)."""
    import gzip
    src = tmp_path / "code-cells.ipynb"
    src.write_bytes(gzip.decompress(NBSPHINX_DOC.read_bytes()))
    r = daemon.sbx("notebook", "run", str(src), "-o", str(tmp_path / "out.ipynb"),
                   "--allow-errors", "-w", str(tmp_path), timeout=120)
    assert r.returncode == 0, r.err
    sources = [c.source for c in read(src).cells if c.cell_type == "code"]
    pairs = zip(normalised(nbclient_run(src)), normalised(read(tmp_path / "out.ipynb")),
                sources, strict=True)
    differing = [source for want, got, source in pairs if want != got]
    assert len(sources) >= 30
    assert len(differing) <= 2 and all("https://" in source for source in differing), \
        differing


# ---------------------------------------------------------------- pytest --sandbox-notebooks

@pytest.fixture
def inner(pytester: pytest.Pytester, daemon: Daemon, monkeypatch: pytest.MonkeyPatch):
    """pytest on the pytester project with the plugin loaded and our daemon."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("COLUMNS", "200")
    pytester.makeini("[pytest]\n")

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest("-p", "pytest_sandbox.plugin",
                                  f"--sandbox-host={daemon.sock}", *args)
    return run


def test_pytest_collects_notebooks_only_when_asked(inner, pytester: pytest.Pytester,
                                                   daemon: Daemon):
    write(pytester.path / "good.ipynb", new_code_cell("import os\nx = 2"),
          new_code_cell(f"assert os.readlink('/proc/self/ns/pid') != {HOST_PIDNS!r}\n"
                        "assert os.getcwd() == " + repr(str(pytester.path)) + "\n"
                        "assert open('helper.txt').read() == 'next to the notebook'"),
          new_code_cell("raise ValueError('expected')",
                        metadata={"tags": ["raises-exception"]}))
    (pytester.path / "helper.txt").write_text("next to the notebook")
    write(pytester.path / "bad.ipynb", new_code_cell("y = 1"),
          new_code_cell("def f():\n    return 1 / 0\nf()"),
          new_code_cell("print('never')"))
    write(pytester.path / "magics.ipynb", new_code_cell("%%bash\necho hi"),
          new_code_cell("out = !echo escaped\nassert out == ['escaped'], out"),
          new_code_cell("assert type(get_ipython()).__name__ == 'ZMQInteractiveShell'"))
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")

    result = inner("-v")
    result.assert_outcomes(passed=1)                 # .ipynb ignored without the option
    before = set(daemon.ids("-a"))
    result = inner("-v", "--sandbox-notebooks")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*magics.ipynb::magics PASSED*"])
    result.stdout.fnmatch_lines(["*bad.ipynb::bad FAILED*"])
    result.stdout.fnmatch_lines(["*good.ipynb::good PASSED*"])
    result.stdout.fnmatch_lines([
        "*_ notebook bad.ipynb _*",
        "cell 1 (id *) failed: ZeroDivisionError: division by zero",
        "-*",
        "def f():",
        "    return 1 / 0",
        "f()",
        "-*",
        "*ZeroDivisionError*",
    ])
    assert "1 / 0" in result.stdout.str() and "never" not in result.stdout.str()
    no_containers_left(daemon, before)

    # --sandbox wraps plain tests in containers, not the notebook items a second time
    result = inner("--sandbox", "--sandbox-notebooks", "good.ipynb")
    result.assert_outcomes(passed=1)


def test_pytest_notebook_limits_from_metadata_and_ini(inner, pytester: pytest.Pytester):
    write(pytester.path / "slow.ipynb", new_code_cell("import time\ntime.sleep(120)"),
          sandbox={"cell_timeout": 2})
    write(pytester.path / "typo.ipynb", new_code_cell("1"), sandbox={"memroy": "64m"})
    write(pytester.path / "hungry.ipynb",      # its metadata over the ini's 512m
          new_code_cell("blocks = []\nwhile True:\n    blocks.append(bytearray(2**24))"),
          sandbox={"memory": "64m"})
    write(pytester.path / "env.ipynb", new_code_cell(
        "import os\nassert os.environ['FROM_NB'] == 'yes'\n"
        "assert os.environ['PYTHONPATH']"), sandbox={"env": {"FROM_NB": "yes"}})
    pytester.makeini("[pytest]\nsandbox_notebooks = true\nsandbox_memory = 512m\n")
    result = inner("-rf")
    result.assert_outcomes(passed=1, failed=3)
    out = result.stdout.str()
    assert "TimeoutError: the cell did not finish within 2s" in out
    assert "metadata.sandbox has unknown key(s) memroy" in out
    assert "MemoryError: the container ran out of memory (limit of 64m)" in out


def test_pytest_runs_the_example_notebook(inner, pytester: pytest.Pytester):
    (pytester.path / EXAMPLE.name).write_bytes(EXAMPLE.read_bytes())
    result = inner("-v", "--sandbox-notebooks")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*sandboxed.ipynb::sandboxed PASSED*"])
