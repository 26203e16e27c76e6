"""Compare sandboxd with the other runtimes on this machine: one command, one table.

    python bench/run.py [--runs 200] [--concurrency 50] [--json FILE] [--only TEXT]

Needs root. Every runtime runs the same busybox rootfs (``sandboxd.testing``); runtimes
that are not installed, and sandboxd parts not written yet, show as rows saying so.
Progress goes to stderr, the table to stdout. Everything the bench creates carries the
tag ``sandboxd-bench-<pid>`` and is removed at the end; the footer says if anything had
to be cleaned up or could not be.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:       # run as a script from a checkout
    sys.path.insert(0, str(ROOT))
# Child Pythons (daemon, CLI, fork server) import this checkout too.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT),
                                                         os.environ.get("PYTHONPATH")]))

import sandboxd  # noqa: E402
from bench import host, report  # noqa: E402
from bench.cases import CASES, Case  # noqa: E402
from bench.context import Bench, NotAvailable, Settings  # noqa: E402
from bench.peers import PEERS  # noqa: E402

# Each area's measurements live in bench/cases_<area>.py and register on import.
for _module in sorted(Path(__file__).parent.glob("cases_*.py")):
    importlib.import_module(f"bench.{_module.stem}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = Settings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--runs", type=int, default=defaults.runs,
                   help="sequential runs per row")
    p.add_argument("--warmup", type=int, default=defaults.warmup,
                   help="uncounted runs before them")
    p.add_argument("--concurrency", type=int, default=defaults.concurrency,
                   help="containers started at once")
    p.add_argument("--rounds", type=int, default=defaults.rounds,
                   help="repetitions of the concurrent start")
    p.add_argument("--process-runs", type=int, default=defaults.process_runs,
                   help="runs of whole CLI processes")
    p.add_argument("--chunks", type=int, default=defaults.chunks,
                   help="turns in which each row's runs are made, the rows of a case "
                        "alternating")
    p.add_argument("--only", action="append", default=[], metavar="TEXT",
                   help="only rows whose case or runtime contains TEXT (repeatable)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--list", action="store_true", help="list the rows and exit")
    args = p.parse_args(argv)
    for name in ("runs", "concurrency", "rounds", "process_runs", "chunks"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be 0 or more")
    return args


def selected(cases: list[Case], only: list[str], settings: Settings) -> list[Case]:
    fields = dataclasses.asdict(settings)
    named = [dataclasses.replace(c, name=c.name.format(**fields)) for c in cases]
    if not only:
        return named
    return [c for c in named
            if any(t.lower() in f"{c.name} {c.runtime}".lower() for t in only)]


def groups(cases: list[Case]) -> list[list[Case]]:
    """Rows of the same case together, in registration order."""
    by_name: dict[str, list[Case]] = {}
    for c in cases:
        by_name.setdefault(c.name, []).append(c)
    return list(by_name.values())


def measure_group(bench: Bench, group: list[Case], progress: str) -> list[report.Row]:
    """Every row of one case, its samples asked for in ``chunks`` turns; each turn takes
    the rows in a rotated order, so slow phases of the machine spread over all of them."""
    rows = [report.Row(c.name, c.runtime, c.unit, c.reference) for c in group]
    fields = dataclasses.asdict(bench.settings)
    turns = bench.settings.chunks if all(c.count for c in group) else 1
    for turn in range(turns):
        for i in [(turn + j) % len(group) for j in range(len(group))]:
            c, row = group[i], rows[i]
            total = fields[c.count] if c.count else 0
            n = total // turns + (turn < total % turns)
            if row.status or (c.count and n == 0):
                continue
            print(f"{progress} turn {turn + 1}/{turns}: {c.runtime} ...", end=" ",
                  file=sys.stderr, flush=True)
            began = time.monotonic()
            try:
                row.samples += report.scaled(c.measure(bench, n), c.unit)
            except NotAvailable as exc:
                row.samples, row.status = [], str(exc)
            except Exception as exc:       # a broken row must not lose the others
                row.samples, row.status = [], f"failed: {type(exc).__name__}: {exc}"
            status = " ".join(row.status.split())[:100] or "done"
            print(f"{status} ({time.monotonic() - began:.1f}s)", file=sys.stderr, flush=True)
    return rows


def sandboxd_version() -> str:
    """The package version and the checkout's commit (uncommitted edits are likely while
    the project is worked on, so say when the tree differs from it)."""
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no", "sandboxd"],
                           capture_output=True, text=True).stdout.strip()
    return f"{sandboxd.__version__} ({commit or 'no git'}{' + local edits' if dirty else ''})"


def footer(bench: Bench, machine_start: dict, load_end: str, leftovers: list[str]) -> list[str]:
    present = [p for p in PEERS if p.name in machine_start["versions"]]
    versions = [f"{name} {v}" for name, v in machine_start["versions"].items()]
    lines = [
        "vs sandboxd: median / the sandboxd row's median in the same case "
        "(above 1x: slower than sandboxd); p95: nearest rank.",
        f"machine: nproc {machine_start['nproc']}, kernel {machine_start['kernel']}, "
        f"cgroups {machine_start['cgroups']}, python {machine_start['python']}, "
        f"load {machine_start['loadavg']} (start) -> {load_end} (end), "
        f"{machine_start['date']}",
        "versions: " + ("; ".join(versions) or "-"),
        f"settings: {bench.settings.runs} runs per row, {bench.settings.concurrency} at "
        f"once x {bench.settings.rounds} rounds, {bench.settings.process_runs} CLI "
        f"process runs; made in {bench.settings.chunks} turns, the rows of a case taking "
        f"turns; each turn starts with {bench.settings.warmup} uncounted runs "
        f"(1 round when concurrent)",
        "each runtime: sandboxd runner: all namespaces, overlay with a fresh tmpfs upper, "
        "/proc /dev /sys, memory+pids cgroup",
    ]
    lines += [f"  {p.name}: {p.does}" for p in present]
    if any(p.launcher for p in present):
        lines.append("  crun runs are timed inside one private mount namespace with the "
                     "cgroup2 mount removed (crun 1.8 refuses hybrid cgroups); that "
                     "set-up is not counted")
    lines.append("cleanup: " + ("nothing was left over" if not leftovers
                                else "; ".join(leftovers)))
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings(runs=args.runs, warmup=args.warmup, concurrency=args.concurrency,
                        rounds=args.rounds, process_runs=args.process_runs,
                        chunks=args.chunks)
    cases = selected(CASES, args.only, settings)
    if args.list:
        print("\n".join(f"{c.name} | {c.runtime}" for c in cases))
        return 0
    if os.geteuid() != 0:
        print("bench/run.py needs root (namespaces, mounts, cgroups)", file=sys.stderr)
        return 2
    if not cases:
        print(f"no rows match {args.only}", file=sys.stderr)
        return 2

    # SIGTERM unwinds like Ctrl-C, so the cleanup below still runs.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    machine = {**host.machine(),
               "versions": {"sandboxd": sandboxd_version(),
                            **{p.name: p.version() for p in PEERS if p.missing() is None}}}
    bench = Bench(settings)
    rows: list[report.Row] = []
    interrupted = False
    try:
        todo = groups(cases)
        for i, group in enumerate(todo, 1):
            rows += measure_group(bench, group, f"[{i}/{len(todo)}] {group[0].name}:")
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        interrupted = True
    finally:
        leftovers = bench.close()
    report.add_ratios(rows)
    load_end = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(report.table(rows, footer(bench, machine, load_end, leftovers)))
    if args.json:
        doc = report.to_json(rows, {**machine, "loadavg_end": load_end},
                             dataclasses.asdict(settings), {"leftovers": leftovers})
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
