"""Timing of whole commands: one after another, or many at once.

Stdlib only, so the same code also runs as a small worker process
(``python measure.py`` reading a job as JSON on stdin, answering JSON on stdout). crun
needs that: on a hybrid-cgroup host it must run in a private mount namespace with
``/sys/fs/cgroup/unified`` unmounted, so its rows are timed by a worker started once
inside such a namespace; each run is then a plain exec of crun, exactly like the other
runtimes' rows, and the namespace set-up is not counted.

A job is ``{"mode": "sequential", "warmup": N, "runs": [RUN, ...]}`` or
``{"mode": "concurrent", "batches": [[RUN, ...], ...]}``; a RUN is
``{"argv": [...], "cleanup": [...] or null}``; ``cleanup`` runs only when the run fails.
The answer is ``{"samples": [seconds, ...]}`` or ``{"error": "what failed"}``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

TAIL = 2000       # bytes of a failed command's stderr quoted in the error


class RunFailed(Exception):
    """A timed command exited non-zero; the message names it and quotes its stderr."""


def _spawn(argv: list[str], err) -> subprocess.Popen:
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=err, close_fds=True)


def _failed(run: dict, code: int, err) -> RunFailed:
    err.seek(0)
    tail = err.read()[-TAIL:].decode(errors="replace").strip()
    if run.get("cleanup"):
        subprocess.run(run["cleanup"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return RunFailed(f"{' '.join(run['argv'])} exited {code}: {tail or '(no stderr)'}")


def sequential(runs: list[dict], warmup: int = 0) -> list[float]:
    """Seconds from spawn to exit for each run, one at a time; the first ``warmup`` runs
    are made but not returned."""
    samples = []
    # stderr goes to a file, not a pipe: no reader thread, nothing to drain in the timing.
    with tempfile.TemporaryFile() as err:
        for i, run in enumerate(runs):
            err.seek(0)
            err.truncate()
            start = time.perf_counter()
            code = _spawn(run["argv"], err).wait()
            elapsed = time.perf_counter() - start
            if code != 0:
                raise _failed(run, code, err)
            if i >= warmup:
                samples.append(elapsed)
    return samples


def concurrent(batches: list[list[dict]]) -> list[float]:
    """For each batch: seconds from the first spawn until every run of it has exited."""
    samples = []
    for batch in batches:
        errs = [tempfile.TemporaryFile() for _ in batch]
        try:
            start = time.perf_counter()
            procs = [_spawn(run["argv"], err) for run, err in zip(batch, errs)]
            codes = [p.wait() for p in procs]
            elapsed = time.perf_counter() - start
            for run, code, err in zip(batch, codes, errs):
                if code != 0:
                    raise _failed(run, code, err)
            samples.append(elapsed)
        finally:
            for err in errs:
                err.close()
    return samples


def run_job(job: dict) -> list[float]:
    if job["mode"] == "sequential":
        return sequential(job["runs"], job.get("warmup", 0))
    if job["mode"] == "concurrent":
        return concurrent(job["batches"])
    raise ValueError(f"unknown job mode {job['mode']!r} (sequential or concurrent)")


def in_worker(launcher: list[str], job: dict) -> list[float]:
    """Run ``job`` in a fresh worker started through ``launcher`` (a command prefix that
    sets up the environment, e.g. a private mount namespace, then execs its arguments)."""
    argv = launcher + [sys.executable, "-I", os.path.abspath(__file__)]
    proc = subprocess.run(argv, input=json.dumps(job), capture_output=True, text=True)
    try:
        answer = json.loads(proc.stdout)
    except ValueError:
        raise RunFailed(f"timing worker {' '.join(argv)} exited {proc.returncode} without "
                        f"an answer: {proc.stderr.strip()[-TAIL:]}") from None
    if "error" in answer:
        raise RunFailed(answer["error"])
    return answer["samples"]


def main() -> int:
    job = json.load(sys.stdin)
    try:
        answer: dict = {"samples": run_job(job)}
    except (RunFailed, OSError, ValueError, KeyError) as exc:
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
