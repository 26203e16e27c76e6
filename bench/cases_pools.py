"""Pools of prepared containers (issue 17, sandboxd/pools.py): ``client.run`` of ``true``
with 64 MiB and 64 pids through the in-process Python client, taking a parked container
(a pool hit) beside the same request started cold, crun's spec -> exit and the
``unshare`` floor in the same run; and the host memory (PSS, /proc/PID/smaps_rollup) of
a parked container, right after parking and after the fork server has started 100 more
containers (its heap moves on, and a parked copy keeps the pages it had); and the CPU the
daemon's process spends per such request (the issue's ≤ 1 ms of daemon work a start).

A hit's sample starts with the pool full and idle: the refill of the previous take is
waited for outside the timing, so a sample is the take alone, as for a request that
arrives at a daemon with a ready pool. The pool is declared for the chunk of samples
and dropped after it, so the cold row's identical request never finds one.
"""
from __future__ import annotations

import os
import time
from functools import partial

from sandboxd.runner.park import build_helper

from . import ours
from .cases import case, peer_sequential, shared_daemon
from .context import MEMORY, PIDS, Bench
from .peers import PEERS

POOL_RUN = "client.run('busybox', ['true'], memory='64m', pids_limit=64)"
PARKED = "PSS per parked container (smaps_rollup)"
DAEMON_CPU = f"CPU of the daemon's process per {POOL_RUN}, back to back (schedstat)"
OPTIONS = {"memory": MEMORY, "pids_limit": PIDS}
POOL_SIZE = 8
BLOCK = 8           # requests per sample of the daemon's CPU


def _pool(client) -> dict:
    pools = client.pools()["pools"]
    return pools[0] if pools else {}


def _wait(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _declared(client, count: int) -> None:
    client.set_pool("busybox", count, **OPTIONS)
    if count:
        _wait(lambda: _pool(client).get("ready") == count, "the pool to fill")
    else:
        _wait(lambda: not client.pools()["pools"], "the pool to go")


def _runs(bench: Bench, n: int, pooled: bool) -> list[float]:
    client = shared_daemon(bench).client
    if pooled:
        _declared(client, 2)
    samples = []
    try:
        for i in range(bench.settings.warmup + n):
            if pooled:
                _wait(lambda: _pool(client).get("ready") == 2, "the refill")
                hits = _pool(client)["hits"]
            start = time.perf_counter()
            result = client.run("busybox", ["true"], **OPTIONS)
            elapsed = time.perf_counter() - start
            if result.exit_code != 0:
                raise RuntimeError(f"exit {result.exit_code}: {result.stderr[-300:]!r}")
            if pooled and _pool(client)["hits"] != hits + 1:
                raise RuntimeError("the request did not take a pooled container")
            if i >= bench.settings.warmup:
                samples.append(elapsed)
    finally:
        if pooled:
            _declared(client, 0)
    return samples


def _takes(bench: Bench, n: int) -> list[float]:
    """The runner alone: ``take`` of a container prepared (untimed) just before, in
    sbx-park, until its exit is reported: what a hit costs below the daemon."""
    runner = bench.shared("runner", ours.start_runner)
    helper = build_helper()
    samples = []
    with open(os.devnull, "r+b") as null:
        stdio = (null.fileno(),) * 3
        for i in range(bench.settings.warmup + n):
            spec = ours.spec(bench, net=True)
            runner.prepare(spec, helper)
            time.sleep(0.005)                   # parked: its report came, it waits
            start = time.perf_counter()
            runner.take(spec.id, spec.process, stdio)
            info = runner.wait(spec.id)
            elapsed = time.perf_counter() - start
            ours.check_exit(spec.id, info.exit_code)
            if i >= bench.settings.warmup:
                samples.append(elapsed)
    return samples


case(POOL_RUN, "sandboxd daemon, cold", reference=True)(partial(_runs, pooled=False))
case(POOL_RUN, "sandboxd daemon, pool hit")(partial(_runs, pooled=True))
case(POOL_RUN, "sandboxd runner, take -> exit (sbx-park)")(_takes)
for _peer in PEERS:
    if _peer.name in ("crun", "unshare"):
        case(POOL_RUN, f"{_peer.name} (spec -> exit, new netns)")(
            partial(peer_sequential, peer=_peer, net=True))


def _cpu(pid: int) -> float:
    """Seconds of CPU the process ``pid`` has run, all its threads (schedstat's first
    field: nanoseconds, not the 10 ms ticks of /proc/PID/stat)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:       # a thread that ended meanwhile
            pass
    return total / 1e9


def _daemon_cpu(bench: Bench, n: int, pooled: bool) -> list[float]:
    """The daemon's CPU per request over blocks of BLOCK requests made back to back (as
    a test suite makes them), each block read after its work has settled: the --rm
    removals after the replies and, for hits, the refill of the pool they emptied. The
    settling is a sleep, not a poll: polling is daemon work too."""
    daemon = shared_daemon(bench)
    client = daemon.client
    if pooled:
        _declared(client, BLOCK)
    samples = []
    try:
        for i in range(bench.settings.warmup + n):
            before = _cpu(daemon.proc.pid)
            for _ in range(BLOCK):
                result = client.run("busybox", ["true"], **OPTIONS)
                if result.exit_code != 0:
                    raise RuntimeError(f"exit {result.exit_code}: {result.stderr[-300:]!r}")
            time.sleep(0.3 if pooled else 0.05)
            used = _cpu(daemon.proc.pid) - before
            if pooled:
                pool = _pool(client)
                if pool.get("ready") != BLOCK or pool["hits"] != (i + 1) * BLOCK:
                    raise RuntimeError(f"the block did not take and refill the pool: {pool}")
            if i >= bench.settings.warmup:
                samples.append(used / BLOCK)
    finally:
        if pooled:
            _declared(client, 0)
    return samples


case(DAEMON_CPU, "sandboxd daemon, cold", reference=True)(
    partial(_daemon_cpu, pooled=False))
case(DAEMON_CPU, "sandboxd daemon, pool hit and its refill")(
    partial(_daemon_cpu, pooled=True))


def _pss(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def _parked(bench: Bench, n: int, starts_between: int) -> list[float]:
    client = shared_daemon(bench).client
    _declared(client, POOL_SIZE)
    try:
        time.sleep(0.5)
        pids = _pool(client)["pids"]
        for _ in range(starts_between):
            client.run("busybox", ["true"], memory="32m")        # cold: another key
        return [float(_pss(pid)) for pid in pids]
    finally:
        _declared(client, 0)


case(PARKED, f"right after parking ({POOL_SIZE} parked)", unit="MiB", count="")(
    partial(_parked, starts_between=0))
case(PARKED, "after 100 more starts", unit="MiB", count="")(
    partial(_parked, starts_between=100))
