"""The daemon dies or stops with containers running (CHECKS 23, 24). Each test has its
own daemon (``conftest.Daemon``), since it kills it."""
from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from harness import Daemon, _parent, _processes, pid_alive, running, wait_until


@pytest.fixture
def fresh():
    with running() as d:
        yield d


def _pid(d: Daemon, name: str) -> int:
    return int(d.sbx("inspect", "-f", "{{.State.Pid}}", name, check=True).out)


def test_kill9_then_restart(fresh: Daemon) -> None:
    d = fresh
    for name, flags in (("r-rm", ["--rm"]), ("r-rmvol", ["--rm", "-v", "/data"]),
                        ("r-a", []), ("r-b", [])):
        d.sbx("run", "-d", "--name", name, *flags, "busybox", "sleep", "600", check=True)
    # A --rm container's row stays in the daemon's memory (the next start forgets it
    # anyway), unless it has a volume that start must remove: listed all the same.
    assert {"r-rm", "r-rmvol"} <= set(d.sbx("ps", "--format", "{{.Names}}",
                                            check=True).out.split())
    stored = {r[0] for r in d.meta_rows("SELECT name FROM containers")}
    assert "r-rm" not in stored and "r-rmvol" in stored, stored
    assert d.sbx("volume", "ls", "-q", check=True).out.split()      # r-rmvol's /data
    d.sbx("run", "-d", "--name", "r-done", "busybox", "sh", "-c",
          "echo stored-out; echo stored-err >&2; exit 5", check=True)
    assert d.sbx("wait", "r-done", check=True).out.strip() == "5"
    pids = [_pid(d, name) for name in ("r-rm", "r-a", "r-b")]
    rm_id = d.sbx("inspect", "-f", "{{.Id}}", "r-rm", check=True).out.strip()
    forkservers = d.forkserver_pids()
    assert forkservers and all(pid_alive(p) for p in pids)

    d.kill9()
    # The fork server sees its owner's socket close: it kills every container, removes
    # their cgroups and exits. Nothing may linger until the next start.
    wait_until(lambda: not any(pid_alive(p) for p in pids + forkservers), 15,
               "the fork server and the containers to die with the daemon")
    wait_until(lambda: not d.cgroup_children(pooled=True), 15, "the cgroups to go")
    # The network server outlives them a little: it removes its bridges and veths first.
    wait_until(lambda: not d.leftover_processes(), 15, "the network server to clean up")

    d.start()
    ps = d.sbx("ps", "-a", "--format", "{{.Names}}", check=True).out.split()
    assert sorted(ps) == ["r-a", "r-b", "r-done"]          # the --rm ones are gone
    assert d.sbx("volume", "ls", "-q", check=True).out.split() == []   # and its volume
    assert not (Path(d.root) / "containers" / rm_id).exists()
    for name in ("r-a", "r-b"):
        status, code = d.sbx("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", name,
                             check=True).out.split()
        assert (status, code) == ("exited", "137")
        error = d.sbx("inspect", "-f", "{{.State.Error}}", name, check=True).out
        assert "daemon stopped" in error
    assert d.sbx("inspect", "-f", "{{.State.ExitCode}}", "r-done").out.strip() == "5"
    logs = d.sbx("logs", "r-done", check=True)
    assert (logs.out, logs.err) == ("stored-out\n", "stored-err\n")

    # A container from before the crash starts again and works.
    d.sbx("start", "r-a", check=True)
    assert d.sbx("exec", "r-a", "echo", "alive", check=True).out == "alive\n"
    d.stop()              # SIGTERM with r-a running: exit 0, nothing left (conftest)


def _helpers(d: Daemon) -> list[int]:
    """The daemon's fork server and network server."""
    assert d.proc is not None
    return [pid for pid, cmd in _processes() if _parent(pid) == d.proc.pid
            and ("sandboxd.runner.forkserver" in cmd or "sandboxd.runner.netserver" in cmd)]


def _with_pool(d: Daemon) -> tuple[Any, list[int]]:
    """``d`` restarted with a pool of 2 busybox containers (its image is there now),
    once full: a client and the parked pids."""
    d.proc.terminate()
    assert d.proc.wait(30) == 0
    d.flags = ("--pool", "busybox,memory=64m=2")
    d.start()
    client = d.client()
    wait_until(lambda: (client.pools()["pools"] or [{}])[0].get("ready") == 2,
               what="the pool")
    return client, client.pools()["pools"][0]["pids"]


def test_a_daemon_killed_with_its_helpers_leaves_nothing_after_the_next_start() -> None:
    # `pkill -9 -f sandboxd` kills the daemon, the fork server and the network server at
    # once: no one is left to kill the containers or remove their cgroups. The
    # containers run on as orphans until the next start, which kills them and removes
    # their cgroups (CHECKS 23: no container outlives its daemon).
    with running() as d:
        client, parked = _with_pool(d)
        d.sbx("run", "-d", "--name", "k-keep", "busybox", "sleep", "600", check=True)
        d.sbx("run", "-d", "--rm", "busybox", "sleep", "601", check=True)
        running_ = [_pid(d, "k-keep")] + [
            pid for pid, cmd in _processes() if cmd.strip() == "sleep 601"]
        assert len(running_) == 2 and all(pid_alive(p) for p in running_)
        before = {os.path.basename(c) for c in d.cgroup_children()}
        assert len(before) == 4                 # two parked, two running
        for pid in [*_helpers(d), d.proc.pid]:
            os.kill(pid, signal.SIGKILL)
        d.proc.wait(10)
        assert all(pid_alive(p) for p in running_)          # orphans, for now
        assert {os.path.basename(c) for c in d.cgroup_children()} >= before - {
            str(p) for p in parked}

        d.flags = ()
        d.start()
        wait_until(lambda: not any(pid_alive(p) for p in running_ + parked), 15,
                   "the orphaned containers to be killed")
        assert not {os.path.basename(c) for c in d.cgroup_children()} & before
        assert "removed 4 containers left by a fork server that was killed" in d.log()
        status = d.sbx("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "k-keep",
                       check=True).out.split()
        assert status == ["exited", "137"]
        assert d.sbx("run", "--rm", "busybox", "echo", "after", check=True).out == "after\n"


def test_a_killed_fork_server_is_replaced_and_its_containers_end() -> None:
    # The fork server alone killed (the OOM killer's pick, a kill -9): the daemon ends
    # its containers as killed, starts a new fork server (which kills the orphans and
    # removes their cgroups), refills its pool and goes on serving.
    with running() as d:
        client, parked = _with_pool(d)
        d.sbx("run", "-d", "--name", "f-keep", "busybox", "sleep", "600", check=True)
        keep = _pid(d, "f-keep")
        attached: list = []
        runner = threading.Thread(target=lambda: attached.append(
            d.client().run("busybox", ["sh", "-c", "echo up; exec sleep 602"])))
        runner.start()
        wait_until(lambda: any(cmd.strip() == "sleep 602" for _, cmd in _processes()),
                   what="the attached run to start")
        old = d.forkserver_pids()
        os.kill(old[0], signal.SIGKILL)

        runner.join(15)
        assert attached and attached[0].exit_code == 137       # ended, not hung
        wait_until(lambda: d.forkserver_pids() and d.forkserver_pids() != old,
                   what="a new fork server")
        wait_until(lambda: not any(pid_alive(p) for p in [keep, *parked]) and not any(
            cmd.strip() == "sleep 602" for _, cmd in _processes()), 15,
            "the orphans to be killed")
        status = d.sbx("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}} "
                       "{{.State.Error}}", "f-keep", check=True).out
        assert status.startswith("exited 137 the daemon's fork server died")
        assert "exited unexpectedly" in d.log() and "a new fork server" in d.log()
        assert d.sbx("run", "--rm", "busybox", "echo", "after", check=True).out == "after\n"
        wait_until(lambda: (client.pools()["pools"] or [{}])[0].get("ready") == 2,
                   what="the pool to refill")
        assert not set(parked) & set(client.pools()["pools"][0]["pids"])
        d.sbx("rm", "f-keep", check=True)


def test_a_daemon_sharing_the_cgroup_parent_leaves_the_first_ones_containers() -> None:
    # A second daemon given the same --cgroup-parent (another root: another ledger)
    # touches nothing of the first's, and says in its log that the parent is shared.
    with running() as first:
        first.sbx("run", "-d", "--name", "s-first", "busybox", "sleep", "600", check=True)
        pid = _pid(first, "s-first")
        second = Daemon(parent=first.parent).start()
        try:
            wait_until(lambda: "another daemon uses the cgroup parent" in second.log(),
                       what="the second daemon's fork server to find the parent shared")
            assert pid_alive(pid)
            assert first.sbx("exec", "s-first", "echo", "alive", check=True).out == "alive\n"
        finally:
            # Not second.stop(): its checks would take the first one's parent as its own.
            second.proc.send_signal(signal.SIGTERM)
            assert second.proc.wait(30) == 0
            shutil.rmtree(second.tmp, ignore_errors=True)


def test_sigterm_stops_containers(fresh: Daemon) -> None:
    d = fresh
    d.sbx("run", "-d", "--name", "t-rm", "--rm", "busybox", "sleep", "600", check=True)
    d.sbx("run", "-d", "--name", "t-keep", "busybox", "sh", "-c",
          "echo before; exec sleep 600", check=True)
    pids = [_pid(d, "t-rm"), _pid(d, "t-keep")]
    d.stop()              # exit 0, socket removed, no mount, cgroup or process left
    assert not any(pid_alive(p) for p in pids)
    assert not os.path.exists(d.sock)
