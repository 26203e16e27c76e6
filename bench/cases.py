"""The registry of measurements: one row of the table is one :class:`Case`.

A case is a function ``measure(bench, n) -> samples`` registered with :func:`case` under
a case name (rows with the same name form one group of the table) and a runtime name. It
returns ``n`` samples (after its own warm-up): seconds for ``unit="ms"``, bytes for
``unit="MiB"``. ``count`` names the :class:`Settings` field that says how many samples a
row gets in all; the driver asks for them in chunks, taking the rows of a group in turn,
so a burst of load elsewhere on the machine does not land on one runtime only. With
``count=""`` the function is called once and decides (``n`` is 0).

A function raises :class:`NotAvailable` when its runtime or module is missing here; any
other exception shows as a failed row. Adding a measurement is one decorated function::

    @case("exec into a running container", "sandboxd runner", reference=True)
    def runner_exec(bench: Bench, n: int) -> list[float]:
        ...

``reference=True`` marks the row the others in its group are compared with (sandboxd).
Names may use ``{concurrency}`` and the other :class:`Settings` fields.
"""
from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable

from . import measure, ours
from .context import Bench
from .host import rss
from .peers import PEERS, Peer

Measure = Callable[[Bench, int], list[float]]


@dataclass(frozen=True)
class Case:
    name: str
    runtime: str
    measure: Measure
    unit: str = "ms"
    reference: bool = False
    count: str = "runs"


CASES: list[Case] = []


def case(name: str, runtime: str, *, unit: str = "ms", reference: bool = False,
         count: str = "runs") -> Callable[[Measure], Measure]:
    def register(fn: Measure) -> Measure:
        CASES.append(Case(name, runtime, fn, unit, reference, count))
        return fn
    return register


def timed(job: dict, launcher: list[str] = ()) -> list[float]:
    """Run a :mod:`bench.measure` job here, or in a worker started through ``launcher``
    (a prepared environment, e.g. crun's private mount namespace)."""
    return measure.in_worker(list(launcher), job) if launcher else measure.run_job(job)


# ---------------------------------------------------------------- start /bin/true

def runner_sequential(bench: Bench, n: int, net: bool,
                      seccomp: str = "default") -> list[float]:
    """``runner.run(spec)`` from the call to its return (exit reported)."""
    runner = bench.shared("runner", ours.start_runner)
    samples = []
    for i in range(bench.settings.warmup + n):
        spec = ours.spec(bench, net, seccomp)
        start = time.perf_counter()
        result = runner.run(spec)
        elapsed = time.perf_counter() - start
        ours.check_exit(spec.id, result.exit_code, result.stderr)
        if i >= bench.settings.warmup:
            samples.append(elapsed)
    return samples


def peer_sequential(bench: Bench, n: int, peer: Peer, net: bool) -> list[float]:
    bench.peer(peer)
    return timed({"mode": "sequential", "warmup": bench.settings.warmup,
                  "runs": [peer.run(bench, net) for _ in range(bench.settings.warmup + n)]},
                 peer.launcher)


for _net, _label in ((True, "new netns"), (False, "host net")):
    _name = f"spec -> exit of /bin/true, {_label}"
    case(_name, "sandboxd runner", reference=True)(partial(runner_sequential, net=_net))
    # The same without the seccomp filter: the difference is what installing it costs.
    case(_name, "sandboxd runner, seccomp=unconfined")(
        partial(runner_sequential, net=_net, seccomp="unconfined"))
    for _peer in PEERS:
        case(_name, _peer.name)(partial(peer_sequential, peer=_peer, net=_net))


# ---------------------------------------------------------------- many at once

CONCURRENT = "{concurrency} concurrent starts, wall time"


@case(CONCURRENT, "sandboxd runner", reference=True, count="rounds")
def runner_concurrent(bench: Bench, n: int) -> list[float]:
    return asyncio.run(ours.concurrent_starts(bench, n))


def peer_concurrent(bench: Bench, n: int, peer: Peer) -> list[float]:
    """All ``concurrency`` commands spawned at once, until the last exits; one warm-up
    round first."""
    bench.peer(peer)
    batches = [[peer.run(bench, True) for _ in range(bench.settings.concurrency)]
               for _ in range(1 + n)]
    return timed({"mode": "concurrent", "batches": batches}, peer.launcher)[1:]


for _peer in PEERS:
    case(CONCURRENT, _peer.name, count="rounds")(partial(peer_concurrent, peer=_peer))


# ---------------------------------------------------------------- the daemon

DAEMON = "idle RSS after start + import"


def shared_daemon(bench: Bench) -> ours.Daemon:
    """Our daemon, started once per bench and shared by every case that needs one."""
    return bench.shared("daemon", ours.Daemon.start)


def _rss_samples(bench: Bench, n: int,
                 which: Callable[[int, list[int]], list[int]]) -> list[float]:
    """VmRSS of the chosen processes, five readings 0.2 s apart after a 1 s rest."""
    daemon = shared_daemon(bench)
    time.sleep(1.0)
    samples = []
    for _ in range(5):
        pid, kids = daemon.pids()
        samples.append(float(sum(rss(p) for p in which(pid, kids))))
        time.sleep(0.2)
    return samples


case(DAEMON, "sandboxd daemon", unit="MiB", count="")(
    partial(_rss_samples, which=lambda pid, kids: [pid]))
case(DAEMON, "its helpers (fork + network server)", unit="MiB", count="")(
    partial(_rss_samples, which=lambda pid, kids: kids))
case(DAEMON, "daemon + helpers", unit="MiB", count="")(
    partial(_rss_samples, which=lambda pid, kids: [pid, *kids]))


CLIENT_RUN = "client.run('busybox', ['true'])"


def client_run(bench: Bench, n: int, options: dict) -> list[float]:
    """``Client.run`` in-process against the bench's daemon, request to result."""
    client = shared_daemon(bench).client
    samples = []
    for i in range(bench.settings.warmup + n):
        start = time.perf_counter()
        result = client.run("busybox", ["true"], **options)
        elapsed = time.perf_counter() - start
        ours.check_exit(result.id, result.exit_code, result.stderr)
        if i >= bench.settings.warmup:
            samples.append(elapsed)
    return samples


case(CLIENT_RUN, "sandboxd daemon", reference=True)(partial(client_run, options={}))
case(CLIENT_RUN, "sandboxd daemon, network none")(
    partial(client_run, options={"network_mode": "none"}))


CLI = "process: sbx run --rm busybox true"


@case(CLI, "sbx CLI", reference=True, count="process_runs")
def cli_run(bench: Bench, n: int) -> list[float]:
    argv = shared_daemon(bench).cli("run", "--rm", "busybox", "true")
    return _processes(bench, n, argv)


@case(CLI, "python -c pass", count="process_runs")
def python_pass(bench: Bench, n: int) -> list[float]:
    return _processes(bench, n, [sys.executable, "-c", "pass"])


def _processes(bench: Bench, n: int, argv: list[str]) -> list[float]:
    return timed({"mode": "sequential", "warmup": bench.settings.warmup,
                  "runs": [{"argv": argv, "cleanup": None}] * (bench.settings.warmup + n)})
