"""Real projects' own test suites, run plainly, under ``--sandbox`` and under
``--sandbox -n 2``: the same outcomes, and what a container adds per test.

    python bench/realsuites.py --host /path/to/sandboxd.sock [--only attrs] [--rounds 3]

Each project's sdist (pinned below) is downloaded once with ``pip download --no-binary
:all: --no-deps`` into ``bench/.realsuites/`` (git ignores it) and unpacked there. Every
run uses the same pytest arguments with plugin autoloading off (``-p`` loads the
sandbox plugin, xdist and ``bench/realsuites_timing.py``; what the machine happens to
have installed does not load in each container), junit-xml and ``-p no:cacheprovider``.

The modes run in turns (plain, sandbox, sandbox -n 2, plain, ...) ``--rounds`` times,
so that load from other work lands on every mode alike; the load average is printed
with each run. For each suite it prints the passed/failed/skipped/xfailed counts per
mode, whether the junit-xml test ids and their outcomes are the same as the plain
run's, and, per mode (medians over the rounds):

- added per test, suite: (mode wall - plain wall) / tests;
- added per test, median: over tests, the item's wall time in this mode minus its wall
  time in the plain run of the same round, both measured the same way (the whole
  run-test protocol, ``realsuites_timing``), exactly, not rounded;
- cold: the same for the first test of each pytest process (each xdist worker), which
  waits for its zygote (a container, the interpreter, pytest, the collection);
- warm: the median over the other tests.

The plugin and its dependencies must be importable by ``--python`` (default: this
interpreter), with pytest-xdist and hypothesis.
"""
from __future__ import annotations

import argparse
import json
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
    items: dict[str, float]              # nodeid -> the item's protocol wall time
    first: set[str]                      # the first item of each pytest process
    load: str                            # the load average when it ended


def junit(path: Path) -> dict[str, str]:
    outcomes: dict[str, str] = {}
    for case in ET.parse(path).iter("testcase"):
        key = f"{case.get('classname')}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = child.tag
            elif child.tag == "skipped":
                outcome = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
        outcomes[key] = outcome
    return outcomes


def timings(path: Path) -> tuple[dict[str, float], set[str]]:
    """(nodeid -> protocol wall time, the first nodeid of each process)."""
    items: dict[str, float] = {}
    first: dict[int, str] = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        items[entry["nodeid"]] = float(entry["seconds"])
        first.setdefault(int(entry["pid"]), entry["nodeid"])
    return items, set(first.values())


SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?)\b")


def run(suite: Suite, python: str, host: str, mode: str, out: Path) -> Run:
    tag = f"{suite.name}-{mode.replace(' ', '_')}"
    xml, times = out / f"{tag}.xml", out / f"{tag}.timings"
    times.unlink(missing_ok=True)
    extra = {"plain": [], "sandbox": ["--sandbox"],
             "sandbox -n 2": ["--sandbox", "-n", "2"]}[mode]
    argv = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "xdist.plugin",
            "-p", "pytest_sandbox.plugin", "-p", "realsuites_timing",
            f"--sandbox-host={host}", f"--junitxml={xml}", "-o", "junit_family=xunit1",
            *suite.args, *extra]
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "COLUMNS": "250",
           "REALSUITES_TIMINGS": str(times)}
    paths = [str(Path(__file__).resolve().parent), env.get("PYTHONPATH", "")]
    if suite.pythonpath:
        paths.insert(0, str(suite.directory / suite.pythonpath))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    began = time.monotonic()
    proc = subprocess.run(argv, cwd=suite.directory, env=env, capture_output=True, text=True)
    wall = time.monotonic() - began
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
    counts = {("error" if k.startswith("error") else k): int(n)
              for n, k in SUMMARY.findall(tail)}
    if not xml.exists():
        raise SystemExit(f"{suite.name} ({mode}) wrote no junit-xml:\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    if not times.exists():
        raise SystemExit(f"{suite.name} ({mode}) wrote no timings:\n{proc.stderr[-3000:]}")
    items, first = timings(times)
    return Run(mode, wall, counts, junit(xml), items, first, load())


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def compare(plain: Run, other: Run) -> list[str]:
    """Test ids and outcomes that differ from the plain run."""
    problems = []
    for key in sorted(set(plain.outcomes) | set(other.outcomes)):
        a, b = plain.outcomes.get(key, "absent"), other.outcomes.get(key, "absent")
        if a != b:
            problems.append(f"{key}: plain {a}, {other.mode} {b}")
    return problems


def added(plain: Run, other: Run) -> tuple[list[float], list[float]]:
    """(cold, warm): per test, its wall time in ``other`` minus the plain run's."""
    cold, warm = [], []
    for nodeid, seconds in other.items.items():
        if nodeid in plain.items:
            (cold if nodeid in other.first else warm).append(seconds - plain.items[nodeid])
    return cold, warm


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:6.1f}" if values else "     -"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("SANDBOXD_HOST", ""),
                        help="the daemon's socket (default $SANDBOXD_HOST)")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--only", action="append", default=[], help="suite name(s)")
    parser.add_argument("--modes", default="plain,sandbox,sandbox -n 2",
                        help="comma-separated; the first is the reference (plain)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the modes in turns this often (medians are printed)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)       # a suite's lines as it finishes
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
        print(f"\n== {suite.name} {suite.version}  (load at start {load()})")
        rounds: list[list[Run]] = []
        for number in range(args.rounds):
            runs = []
            for mode in modes:
                r = run(suite, args.python, args.host, mode, out)
                runs.append(r)
                print(f"  round {number + 1} {r.mode:<13} {r.wall:7.1f} s  load {r.load}")
            rounds.append(runs)
        plain_runs = [runs[0] for runs in rounds]
        n = max(len(plain_runs[0].outcomes), 1)
        print(f"  {n} tests; per mode, medians over {args.rounds} round(s); added ms:"
              f"  suite = (wall - plain wall) / tests; median, cold, warm = per test")
        for index, mode in enumerate(modes):
            runs = [r[index] for r in rounds]
            wall = statistics.median(r.wall for r in runs)
            counts = " ".join(f"{k}={v}" for k, v in sorted(runs[-1].counts.items()))
            line = f"  {mode:<13} {wall:7.1f} s  {counts}"
            if index:
                problems = [p for plain, r in zip(plain_runs, runs) for p in compare(plain, r)]
                failed |= bool(problems)
                suite_added = statistics.median(
                    (r.wall - plain.wall) / n for plain, r in zip(plain_runs, runs))
                per_round = [added(plain, r) for plain, r in zip(plain_runs, runs)]
                cold = [c for c, _ in per_round for c in c]
                warm = [w for _, w in per_round for w in w]
                line += (f"  | added: suite {suite_added * 1000:6.1f}  median "
                         f"{ms(cold + warm)}  cold {ms(cold)}  warm {ms(warm)}"
                         + ("  | same ids and outcomes" if not problems
                            else f"  | {len(problems)} DIFFER"))
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
