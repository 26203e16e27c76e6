"""The limits as the kernel holds them (CHECKS.md 13-17): the exact cgroup file values a
flag writes, and the workload running into them. Also the mount table (5): a host mount
made after the start is invisible inside, and nothing of a container's mounts shows on
the host."""
from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from harness import CGROUP_ROOT, wait_until


def _started(d, *args: str) -> tuple[str, str]:
    name = "lim-" + uuid.uuid4().hex[:6]
    d.sbx("run", "-d", "--name", name, *args, check=True)
    return name, d.sbx("inspect", "-f", "{{.Id}}", name, check=True).out.strip()


def _exit_state(d, name: str) -> tuple[str, str]:
    code, oom = d.sbx("inspect", "-f", "{{.State.ExitCode}} {{.State.OOMKilled}}", name,
                      check=True).out.split()
    return code, oom


def test_check_13_memory_flags_write_exact_values(secure_daemon):
    d = secure_daemon
    name, cid = _started(d, "-m", "40m", "busybox", "sleep", "600")
    try:
        assert d.cgroup_file("memory", cid, "memory.limit_in_bytes") == "41943040"
        memsw = Path(f"{CGROUP_ROOT}/memory/{d.parent}/{cid}/memory.memsw.limit_in_bytes")
        if memsw.exists():                         # no swap beyond the limit
            assert memsw.read_text().strip() == "41943040"
    finally:
        d.sbx("rm", "-f", name)
    if memsw.exists():
        name, cid = _started(d, "-m", "40m", "--memory-swap", "60m", "busybox", "sleep", "600")
        try:
            assert d.cgroup_file("memory", cid, "memory.memsw.limit_in_bytes") == "62914560"
        finally:
            d.sbx("rm", "-f", name)
    before = d.ids("-a")
    for flags in (["-m", "5m"], ["-m", "40m", "--memory-swap", "20m"]):
        run = d.sbx("run", "--rm", *flags, "busybox", "true")
        assert run.returncode != 0 and "memory" in run.err.lower(), run.err
    assert d.ids("-a") == before


def test_check_13_soft_limit_and_oom_kill_disable(secure_daemon):
    """--memory-reservation writes the soft limit; --oom-kill-disable sets v1's
    oom_control (a container over its limit then waits instead of being killed: it is
    removed with -f); a reservation above the limit is refused."""
    d = secure_daemon
    if not Path(f"{CGROUP_ROOT}/memory/{d.parent}").exists():
        pytest.skip("needs the cgroup v1 memory controller (this host's driver is v2)")
    name, cid = _started(d, "-m", "40m", "--memory-reservation", "20m", "busybox",
                         "sleep", "600")
    try:
        assert d.cgroup_file("memory", cid, "memory.soft_limit_in_bytes") == "20971520"
        assert "oom_kill_disable 0" in d.cgroup_file("memory", cid, "memory.oom_control")
    finally:
        d.sbx("rm", "-f", name)
    name, cid = _started(d, "-m", "20m", "--oom-kill-disable", "busybox", "sh", "-c",
                         "x=a; while :; do x=$x$x; done")
    try:
        assert "oom_kill_disable 1" in d.cgroup_file("memory", cid, "memory.oom_control")
        wait_until(lambda: "under_oom 1" in d.cgroup_file("memory", cid,
                                                          "memory.oom_control"),
                   15, "the container to sit at its limit")
        assert d.sbx("inspect", "-f", "{{.State.Status}}", name).out.strip() == "running"
    finally:
        assert d.sbx("rm", "-f", name).returncode == 0
    run = d.sbx("run", "--rm", "-m", "20m", "--memory-reservation", "40m", "busybox", "true")
    assert run.returncode == 125 and "memory reservation" in run.err


def test_check_14_oom_and_its_controls(secure_daemon):
    d = secure_daemon
    cases = {
        "oom": (["-m", "20m"], "x=a; while :; do x=$x$x; done", ("137", "true")),
        "echo": (["-m", "20m"], "echo hi", ("0", "false")),
        "kill": (["-m", "20m", "--init"], "kill -9 $$", ("137", "false")),
    }
    for label, (flags, script, expected) in cases.items():
        name = f"oom-{label}-" + uuid.uuid4().hex[:6]
        d.sbx("run", "--name", name, *flags, "busybox", "sh", "-c", script)
        try:
            assert _exit_state(d, name) == expected, label
        finally:
            d.sbx("rm", "-f", name)


def test_check_15_cpu_quota_values_and_throttling(secure_daemon):
    d = secure_daemon
    name, cid = _started(d, "--cpus", "0.5", "busybox", "sh", "-c",
                         "for i in 1 2 3 4; do (while :; do :; done) & done; wait")
    try:
        assert d.cgroup_file("cpu", cid, "cpu.cfs_quota_us") == "50000"
        assert d.cgroup_file("cpu", cid, "cpu.cfs_period_us") == "100000"
        usage = Path(f"{CGROUP_ROOT}/cpuacct/{d.parent}/{cid}/cpuacct.usage")
        start, t0 = int(usage.read_text()), time.monotonic()
        time.sleep(3)
        used = (int(usage.read_text()) - start) / 1e9 / (time.monotonic() - t0)
        assert used <= 0.6, f"{used:.2f} CPUs at --cpus 0.5"
        stat = dict(line.split() for line in
                    d.cgroup_file("cpu", cid, "cpu.stat").splitlines())
        # On a loaded host the loops may not even reach the quota: throttled only if so.
        assert int(stat["nr_throttled"]) > 0 or used < 0.45, (used, stat)
    finally:
        d.sbx("rm", "-f", name)
    name, cid = _started(d, "busybox", "sleep", "600")
    try:
        assert d.cgroup_file("cpu", cid, "cpu.cfs_quota_us") == "-1"
        assert d.cgroup_file("cpu", cid, "cpu.cfs_period_us") == "100000"
    finally:
        d.sbx("rm", "-f", name)


def test_check_15_cpuset_cpus_pins_the_container(secure_daemon):
    """--cpuset-cpus: the cgroup's cpuset.cpus, every process of the container (execs
    too) allowed only those CPUs, the cgroup gone with it; CPUs the host lacks refused."""
    d = secure_daemon
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs to pin to one of them")
    pin = str(cpus[-1])
    name, cid = _started(d, "--cpuset-cpus", pin, "busybox", "sleep", "600")
    try:
        if Path(f"{CGROUP_ROOT}/cpuset").is_dir():
            assert d.cgroup_file("cpuset", cid, "cpuset.cpus") == pin
        allowed = d.sbx("exec", name, "grep", "Cpus_allowed_list", "/proc/1/status",
                        "/proc/self/status", check=True).out.split()
        assert allowed.count(pin) == 2 and len(allowed) == 4, allowed
    finally:
        d.sbx("rm", "-f", name)
    # The fork server removes an exited container's cgroups once no request waits.
    wait_until(lambda: not Path(f"{CGROUP_ROOT}/cpuset/{d.parent}/{cid}").exists(), 15,
               "the container's cpuset cgroup to go")
    run = d.sbx("run", "--rm", "--cpuset-cpus", f"0-{cpus[-1] + 8}", "busybox", "true")
    assert run.returncode == 125 and "Requested CPUs are not available" in run.err


def test_check_16_pids_limit_fork_bomb(secure_daemon):
    d = secure_daemon
    name, cid = _started(d, "--pids-limit", "64", "busybox", "sh", "-c",
                         # The bomb runs in a subshell and the shell execs sleep: once the
                         # limit is hit, a fork for sleep would fail and end the container.
                         "(bomb() { bomb | bomb & }; bomb) 2>/dev/null & exec sleep 600")
    try:
        assert d.cgroup_file("pids", cid, "pids.max") == "64"
        wait_until(lambda: int(d.cgroup_file("pids", cid, "pids.events").split()[1]) > 0,
                   30, "the fork bomb to hit the limit")
        assert int(d.cgroup_file("pids", cid, "pids.current")) <= 64
        assert subprocess.run(["true"]).returncode == 0        # the host still forks
    finally:
        rm = d.sbx("rm", "-f", name)
    assert rm.returncode == 0, rm.err
    wait_until(lambda: not list(Path(CGROUP_ROOT).glob(f"*/{d.parent}/{cid}")), 15,
               "the container's cgroups to go")


def test_check_17_nofile_ulimit_main_and_exec(secure_daemon):
    d = secure_daemon
    # Opens until one fails: with a soft limit of 1024 that is EMFILE, not EBADF.
    probe = ("ulimit -n; ulimit -Hn; (i=3; while [ $i -le 1100 ]; do "
             "eval \"exec $i</dev/null\" || exit; i=$((i+1)); done) 2>&1; echo END")
    expected = ["1024", "2048", "Too many open files", "END"]

    def parsed(out: str) -> list[str]:
        lines = out.splitlines()
        return lines[:2] + [lines[2].rpartition(": ")[2]] + lines[3:]

    name, _ = _started(d, "--ulimit", "nofile=1024:2048", "busybox", "sh", "-c",
                       probe + "; sleep 600")
    try:
        wait_until(lambda: "END" in d.sbx("logs", name).out, 15, "the probe")
        assert parsed(d.sbx("logs", name).out) == expected
        assert parsed(d.sbx("exec", name, "sh", "-c", probe, check=True).out) == expected
    finally:
        d.sbx("rm", "-f", name)
    bad = d.sbx("run", "--rm", "--ulimit", "nofile=4096:1024", "busybox", "true")
    assert bad.returncode != 0 and "nofile" in bad.err, bad.err


def test_check_05_mount_table_isolated_both_ways(secure_daemon, tmp_path):
    d = secure_daemon
    name, cid = _started(d, "busybox", "sleep", "600")
    host_mount = tmp_path / "late"
    host_mount.mkdir()
    try:
        inside_before = d.sbx("exec", name, "cat", "/proc/self/mountinfo", check=True).out
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "sbx-late-mount",
                        str(host_mount)], check=True)
        try:
            inside = d.sbx("exec", name, "cat", "/proc/self/mountinfo", check=True).out
            assert "sbx-late-mount" not in inside and str(tmp_path) not in inside
            assert inside == inside_before
        finally:
            subprocess.run(["umount", str(host_mount)], check=True)
        # Every mount the container has is in its own namespace: none is the host's.
        host = Path("/proc/self/mountinfo").read_text()
        pid = d.sbx("inspect", "-f", "{{.State.Pid}}", name, check=True).out.strip()
        assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        ids = {line.split()[0] for line in host.splitlines()}
        theirs = {line.split()[0] for line in inside.splitlines()}
        assert not ids & theirs, "a container mount shows in the host's table"
    finally:
        d.sbx("rm", "-f", name)
