"""ipython_ext: a ``%%container`` cell of ``print(1)`` through the real magic in an
IPython shell, in a fresh container (create, start the worker, run, remove) and in a
running session, with the floors they are compared against: a host Python start-up, the
same Python started in a fresh host-image container by ``client.run`` (the image's
Python start-up the fresh target allows for), and the same cell run by IPython itself. One sample is one ``run_cell_magic`` call, its output captured. The daemon is
the bench's.
"""
from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from . import ours
from .cases import case
from .context import Bench, NotAvailable

FRESH = "%%container print(1): fresh container per cell"
SESSION = "%%container print(1): in a running session"


class _Shell:
    """An InteractiveShell with the extension loaded against the bench's daemon."""

    def __init__(self, bench: Bench):
        try:
            from IPython.core.interactiveshell import InteractiveShell
            from IPython.utils.capture import capture_output
        except ImportError:
            raise NotAvailable("IPython is not installed") from None
        daemon = bench.shared("daemon", ours.Daemon.start)
        self.capture = capture_output
        self.ip = InteractiveShell.instance()
        self.ip.config.ContainerMagics.host = daemon.host
        self.ip.run_line_magic("load_ext", "sandboxd")
        with capture_output():            # its "session started" line is not the table's
            self.ip.run_line_magic("container", "start bench")

    def cell(self, line: str, body: str) -> float:
        with self.capture() as captured:
            start = time.perf_counter()
            self.ip.run_cell_magic("container", line, body)
            elapsed = time.perf_counter() - start
        if captured.stdout != "1\n":
            raise RuntimeError(f"%%container {line} printed {captured.stdout!r}")
        return elapsed

    def close(self) -> None:
        self.ip.run_line_magic("unload_ext", "sandboxd")     # stops the session


def _timed(bench: Bench, once: Any) -> list[float]:
    samples = [once() for _ in range(bench.settings.warmup + bench.settings.runs)]
    return samples[bench.settings.warmup:]


@case(FRESH, "sandboxd %%container (host image)", reference=True, count="")
def fresh(bench: Bench, n: int) -> list[float]:
    shell = bench.shared("ipython", _Shell)
    return _timed(bench, lambda: shell.cell("", "print(1)"))


@case(FRESH, "host python -c 'print(1)' (start-up floor)", count="")
def python_startup(bench: Bench, n: int) -> list[float]:
    def once() -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "print(1)"], check=True,
                       stdout=subprocess.DEVNULL)
        return time.perf_counter() - start
    return _timed(bench, once)


@case(FRESH, "client.run host python -c 'print(1)' (container + its Python)", count="")
def container_python(bench: Bench, n: int) -> list[float]:
    """The same container and interpreter with no worker and no magic: what the fresh
    cell adds is the difference."""
    daemon = bench.shared("daemon", ours.Daemon.start)

    def once() -> float:
        start = time.perf_counter()
        result = daemon.client.run("host", [sys.executable, "-c", "print(1)"])
        elapsed = time.perf_counter() - start
        if result.stdout != b"1\n":
            raise RuntimeError(f"python in the host image printed {result.stdout!r}")
        return elapsed
    return _timed(bench, once)


@case(SESSION, "sandboxd %%container NAME", reference=True, count="")
def session(bench: Bench, n: int) -> list[float]:
    shell = bench.shared("ipython", _Shell)
    return _timed(bench, lambda: shell.cell("bench", "print(1)"))


@case(SESSION, "IPython run_cell, no container (floor)", count="")
def local_cell(bench: Bench, n: int) -> list[float]:
    shell = bench.shared("ipython", _Shell)

    def once() -> float:
        with shell.capture() as captured:
            start = time.perf_counter()
            shell.ip.run_cell("print(1)", store_history=False)
            elapsed = time.perf_counter() - start
        assert captured.stdout == "1\n"
        return elapsed
    return _timed(bench, once)
