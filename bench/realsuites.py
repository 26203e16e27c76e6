"""Real projects' own test suites, run plainly, under ``--sandbox`` and under
``--sandbox -n 2``: the same outcomes, and what a container adds per test.

    python bench/realsuites.py --host /path/to/sandboxd.sock [--only attrs] [--rounds 1]

Each project's sdist (pinned below) is downloaded once with ``pip download --no-binary
:all: --no-deps`` into ``bench/.realsuites/`` (git ignores it) and unpacked there. Every
run uses the same pytest arguments with plugin autoloading off (``-p`` loads the
sandbox plugin and xdist; what the machine happens to have installed does not load in
each container), junit-xml and ``-p no:cacheprovider``. For each suite it prints the
passed/failed/skipped/xfailed counts per mode, whether the junit-xml test ids and their
outcomes are the same as the plain run's, and the added wall time per test: the whole
suite's (mode wall - plain wall) / tests, and the median over tests of the container's
wall time (``--sandbox-report``) minus the test's plain duration (junit-xml).

The plugin and its dependencies must be importable by ``--python`` (default: this
interpreter), with pytest-xdist and hypothesis.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".realsuites"


@dataclass(frozen=True)
class Suite:
    name: str
    version: str
    args: tuple[str, ...]                # pytest arguments inside the unpacked sdist
    pythonpath: str = ""                 # relative to the project (a src/ layout)
    why: str = ""                        # what differs in a sandbox, if anything

    @property
    def directory(self) -> Path:
        return CACHE / f"{self.name}-{self.version}"


SUITES = (
    Suite("more-itertools", "10.5.0", ("tests",)),
    Suite("cachetools", "5.5.0", ("tests",), pythonpath="src"),
    # test_3rd_party needs cloudpickle, which is not installed here.
    Suite("attrs", "24.2.0", ("tests", "--ignore=tests/test_3rd_party.py"),
          pythonpath="src"),
)


def fetch(suite: Suite, python: str) -> Path:
    if suite.directory.is_dir():
        return suite.directory
    CACHE.mkdir(exist_ok=True)
    sdist = CACHE / f"{suite.name}-{suite.version}.tar.gz"
    if not sdist.exists():
        subprocess.run([python, "-m", "pip", "download", "-q", "--no-binary", ":all:",
                        "--no-deps", "-d", str(CACHE), f"{suite.name}=={suite.version}"],
                       check=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(CACHE, filter="data")
    return suite.directory


@dataclass
class Run:
    mode: str
    wall: float
    counts: dict[str, int]
    outcomes: dict[str, str]             # junit test id -> outcome
    durations: dict[str, float]          # junit test id -> the test's own time
    containers: dict[str, float]         # nodeid -> container wall (--sandbox-report)


def junit(path: Path) -> tuple[dict[str, str], dict[str, float]]:
    outcomes: dict[str, str] = {}
    durations: dict[str, float] = {}
    for case in ET.parse(path).iter("testcase"):
        key = f"{case.get('classname')}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = child.tag
            elif child.tag == "skipped":
                outcome = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
        outcomes[key] = outcome
        durations[key] = float(case.get("time") or 0)
    return outcomes, durations


SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?)\b")
USAGE = re.compile(r"^\s*[\d.]+ MiB\s+[\d.]+s cpu\s+([\d.]+)s wall\s+\S.*?\s(\S+::\S.*)$")


def run(suite: Suite, python: str, host: str, mode: str, out: Path) -> Run:
    xml = out / f"{suite.name}-{mode.replace(' ', '_')}.xml"
    extra = {"plain": [], "sandbox": ["--sandbox", "--sandbox-report"],
             "sandbox -n 2": ["--sandbox", "-n", "2"]}[mode]
    argv = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "xdist.plugin",
            "-p", "pytest_sandbox.plugin", f"--sandbox-host={host}", f"--junitxml={xml}",
            "-o", "junit_family=xunit1", *suite.args, *extra]
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "COLUMNS": "250"}
    if suite.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(suite.directory / suite.pythonpath), env.get("PYTHONPATH", "")]).rstrip(":")
    began = time.monotonic()
    proc = subprocess.run(argv, cwd=suite.directory, env=env, capture_output=True, text=True)
    wall = time.monotonic() - began
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
    counts = {("error" if k.startswith("error") else k): int(n)
              for n, k in SUMMARY.findall(tail)}
    if not xml.exists():
        raise SystemExit(f"{suite.name} ({mode}) wrote no junit-xml:\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    outcomes, durations = junit(xml)
    containers = {m.group(2): float(m.group(1)) for m in map(USAGE.match,
                  proc.stdout.splitlines()) if m}
    return Run(mode, wall, counts, outcomes, durations, containers)


def compare(plain: Run, other: Run) -> list[str]:
    """Test ids and outcomes that differ from the plain run."""
    problems = []
    for key in sorted(set(plain.outcomes) | set(other.outcomes)):
        a, b = plain.outcomes.get(key, "absent"), other.outcomes.get(key, "absent")
        if a != b:
            problems.append(f"{key}: plain {a}, {other.mode} {b}")
    return problems


def added_per_test(plain: Run, sandboxed: Run) -> list[float]:
    """Per test: the container's wall time minus the test's plain duration."""
    by_name = {}
    for key, seconds in plain.durations.items():
        by_name[key.rpartition("::")[2]] = seconds   # junit names lose the module path
    out = []
    for nodeid, wall in sandboxed.containers.items():
        name = nodeid.rpartition("::")[2]
        out.append(wall - by_name.get(name, 0.0))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("SANDBOXD_HOST", ""),
                        help="the daemon's socket (default $SANDBOXD_HOST)")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--only", action="append", default=[], help="suite name(s)")
    parser.add_argument("--modes", default="plain,sandbox,sandbox -n 2")
    args = parser.parse_args()
    if not args.host:
        parser.error("give --host (or set SANDBOXD_HOST)")
    out = CACHE / "results"
    out.mkdir(parents=True, exist_ok=True)
    modes = [m.strip() for m in args.modes.split(",")]
    failed = False
    for suite in SUITES:
        if args.only and suite.name not in args.only:
            continue
        fetch(suite, args.python)
        runs = [run(suite, args.python, args.host, mode, out) for mode in modes]
        plain, n = runs[0], max(len(runs[0].outcomes), 1)
        print(f"\n== {suite.name} {suite.version}: {len(plain.outcomes)} tests")
        for r in runs:
            line = (f"  {r.mode:<13} {r.wall:7.1f} s  "
                    + " ".join(f"{k}={v}" for k, v in sorted(r.counts.items())))
            if r is not plain:
                problems = compare(plain, r)
                failed |= bool(problems)
                line += (f"  | added {(r.wall - plain.wall) / n * 1000:6.1f} ms/test (suite)"
                         + ("  | same ids and outcomes" if not problems
                            else f"  | {len(problems)} DIFFER"))
                added = added_per_test(plain, r)
                if added:
                    line += (f"  | per container: median {statistics.median(added) * 1000:.1f}"
                             f" ms, total {sum(added):.1f} s")
                print(line)
                for p in problems[:20]:
                    print(f"      {p}")
            else:
                print(line)
        if suite.why:
            print(f"  note: {suite.why}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
