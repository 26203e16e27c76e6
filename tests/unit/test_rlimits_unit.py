"""rlimits: the name table, the raisability check against this process's real limits,
and apply() in a forked child, read back from the outside through /proc/<pid>/limits.
(No root needed: lowering limits is allowed to everyone.)"""
from __future__ import annotations

import os
import resource

import pytest

from sandboxd.errors import SetupFailed
from sandboxd.runner import rlimits
from sandboxd.runner.spec import ULIMIT_NAMES, Ulimit

# /proc/<pid>/limits row titles by Docker's ulimit name.
LIMITS_ROWS = {
    "cpu": "Max cpu time", "fsize": "Max file size", "data": "Max data size",
    "stack": "Max stack size", "core": "Max core file size", "rss": "Max resident set",
    "nproc": "Max processes", "nofile": "Max open files", "memlock": "Max locked memory",
    "as": "Max address space", "locks": "Max file locks", "sigpending": "Max pending signals",
    "msgqueue": "Max msgqueue size", "nice": "Max nice priority",
    "rtprio": "Max realtime priority", "rttime": "Max realtime timeout",
}


def proc_limits(pid: int | str) -> dict[str, tuple[str, str]]:
    """``/proc/<pid>/limits`` as row title -> (soft, hard)."""
    rows = {}
    with open(f"/proc/{pid}/limits") as f:
        next(f)
        for line in f:
            title = line[:26].strip()
            soft, hard = line[26:].split()[:2]
            rows[title] = (soft, hard)
    return rows


def test_every_docker_name_maps_to_the_kernels_resource():
    assert set(rlimits.RLIMITS) == set(ULIMIT_NAMES)
    # /proc/self/limits lists the resources in RLIMIT_* number order: the table agrees.
    titles = list(proc_limits("self"))
    for name, number in rlimits.RLIMITS.items():
        assert titles[number] == LIMITS_ROWS[name], name


def test_minus_one_is_infinity():
    assert rlimits.to_rlim(-1) == resource.RLIM_INFINITY
    assert rlimits.to_rlim(0) == 0
    assert rlimits.to_rlim(1024) == 1024


def has_cap_sys_resource() -> bool:
    with open("/proc/self/status") as f:
        eff = next(line for line in f if line.startswith("CapEff:"))
    return bool(int(eff.split()[1], 16) >> 24 & 1)


def finite_nofile_hard() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("this process's nofile hard limit is unlimited: nothing is above it")
    return hard


def test_check_raisable_flags_hard_limit_above_ours():
    if has_cap_sys_resource():
        pytest.skip("this process has CAP_SYS_RESOURCE and may raise hard limits")
    hard = finite_nofile_hard()
    want = hard + 1
    assert rlimits.check_raisable([Ulimit("nofile", 1024, want)]) == [
        f"ulimit nofile: hard limit {want} is above this host's {hard} and raising it "
        f"needs CAP_SYS_RESOURCE"]


def test_check_raisable_accepts_equal_and_lower():
    hard = finite_nofile_hard()
    assert rlimits.check_raisable([Ulimit("nofile", 64, hard), Ulimit("nofile", 8, 16)]) == []


def test_check_raisable_nofile_above_nr_open():
    with open("/proc/sys/fs/nr_open") as f:
        nr_open = int(f.read())
    problems = rlimits.check_raisable([Ulimit("nofile", 64, -1),
                                       Ulimit("nofile", 64, nr_open + 1)])
    assert problems == [
        f"ulimit nofile: hard limit unlimited is above this kernel's fs.nr_open {nr_open}",
        f"ulimit nofile: hard limit {nr_open + 1} is above this kernel's fs.nr_open "
        f"{nr_open}"]


def test_check_raisable_unknown_name():
    assert rlimits.check_raisable([Ulimit("files", 1, 1)])[0].startswith(
        "ulimit files: unknown (known: as, core")


def run_in_child(ulimits: list[Ulimit]) -> tuple[int, dict[str, tuple[str, str]], str]:
    """Fork; the child applies ``ulimits`` and waits. Returns the child's exit status,
    its /proc/<pid>/limits read from here while it waits, and its error message if any."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            os.close(ready_r)
            os.close(go_w)
            try:
                rlimits.apply(ulimits)
                os.write(ready_w, b"ok")
            except SetupFailed as e:
                os.write(ready_w, e.message.encode())
                status = 3
            os.read(go_r, 1)
        except BaseException:
            status = 4
        finally:
            os._exit(status)
    os.close(ready_w)
    os.close(go_r)
    try:
        message = os.read(ready_r, 4096).decode()
        limits = proc_limits(pid)
    finally:
        os.close(go_w)
        os.close(ready_r)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), limits, message


def test_apply_in_child_lowers_limits():
    code, limits, message = run_in_child([Ulimit("nofile", 100, 200), Ulimit("core", 0, 0),
                                          Ulimit("locks", 50, 60)])
    assert (code, message) == (0, "ok")
    assert limits["Max open files"] == ("100", "200")
    assert limits["Max core file size"] == ("0", "0")
    assert limits["Max file locks"] == ("50", "60")
    # the parent keeps its own
    assert resource.getrlimit(resource.RLIMIT_NOFILE) != (100, 200)


def test_apply_unlimited_soft_where_hard_is_unlimited():
    if resource.getrlimit(resource.RLIMIT_FSIZE)[1] != resource.RLIM_INFINITY:
        pytest.skip("this process's fsize hard limit is finite")
    code, limits, message = run_in_child([Ulimit("fsize", -1, -1)])
    assert (code, message) == (0, "ok")
    assert limits["Max file size"] == ("unlimited", "unlimited")


def test_apply_refused_names_limit_and_errno():
    if has_cap_sys_resource():
        pytest.skip("this process has CAP_SYS_RESOURCE and may raise hard limits")
    hard = finite_nofile_hard()
    code, _, message = run_in_child([Ulimit("nofile", 64, hard + 1)])
    assert code == 3
    assert message == f"setrlimit nofile 64:{hard + 1}: Operation not permitted"


def test_apply_soft_above_hard_is_einval():
    code, _, message = run_in_child([Ulimit("nofile", 300, 200)])
    assert code == 3
    assert message == "setrlimit nofile 300:200: Invalid argument"
