"""cgroups against the real kernel (root): limits land in the v1 files, processes join,
stats count, the OOM killer is told apart from a plain SIGKILL, freeze/thaw stop and
resume, kill_all + remove leave nothing in any controller.

Everything lives under the parent ``sandboxd-test-<pid>``, removed at the end. The v1
tests need a v1 (or hybrid) host; the v2 process-control tests use a cgroup2 mount with
no controllers (the hybrid host's ``/sys/fs/cgroup/unified``) when there is one.
"""
from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandboxd.errors import Conflict, NotFound, SetupFailed
from sandboxd.runner import cgroups
from sandboxd.runner.cgroups import CgroupManager, DEVICE_ALLOWLIST
from sandboxd.runner.spec import Limits, cpus_to_quota, parse_size

PARENT = f"sandboxd-test-{os.getpid()}"
UNIFIED = "/sys/fs/cgroup/unified"
MiB = 1 << 20
V1_UNLIMITED = 9223372036854771712      # what v1 reads back for "-1" (page-aligned max)

pytestmark = pytest.mark.skipif(cgroups.detect() != "v1",
                                reason="the v1 driver needs a cgroup v1 or hybrid host")


@pytest.fixture(scope="module")
def mgr():
    manager = CgroupManager(PARENT)
    assert manager.version == "v1"
    yield manager
    for name in manager.names():
        manager.open(name).remove()
    for parent in {os.path.dirname(p) for p in manager.paths("x")}:
        if os.path.isdir(parent):
            os.rmdir(parent)
    assert not [p for p in Path("/sys/fs/cgroup").glob(f"*/{PARENT}")]


@pytest.fixture
def procs():
    """Processes a test starts; killed and reaped whatever happens."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def kfile(mgr: CgroupManager, controller: str, name: str, file: str) -> str:
    with open(f"{mgr.hierarchies[controller]}/{PARENT}/{name}/{file}") as f:
        return f.read().strip()


def python_child(procs: list, code: str) -> subprocess.Popen:
    """A Python process that waits for one line on stdin before running ``code``, so it
    can be put in a cgroup first."""
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()\n" + code],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    procs.append(p)
    return p


def go(p: subprocess.Popen) -> None:
    p.stdin.write("\n")
    p.stdin.flush()


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])         # utime + stime


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def leftover(mgr: CgroupManager, name: str) -> list[str]:
    return [p for p in mgr.paths(name) if os.path.exists(p)]


# ---------------------------------------------------------------- limits

def test_create_writes_limits(mgr):
    cg = mgr.create("limits", Limits(memory=parse_size("40m"), cpu_quota=cpus_to_quota(0.5),
                                     cpu_shares=512, pids=64))
    try:
        assert cg.version == "v1"
        assert kfile(mgr, "memory", "limits", "memory.limit_in_bytes") == "41943040"
        assert kfile(mgr, "memory", "limits", "memory.memsw.limit_in_bytes") == "41943040"
        assert kfile(mgr, "cpu", "limits", "cpu.cfs_quota_us") == "50000"
        assert kfile(mgr, "cpu", "limits", "cpu.cfs_period_us") == "100000"
        assert kfile(mgr, "cpu", "limits", "cpu.shares") == "512"
        assert kfile(mgr, "pids", "limits", "pids.max") == "64"
        assert kfile(mgr, "devices", "limits", "devices.list").splitlines() == \
            list(DEVICE_ALLOWLIST)
    finally:
        cg.remove()
    assert leftover(mgr, "limits") == []


def test_create_with_defaults_leaves_kernel_defaults(mgr):
    cg = mgr.create("defaults", Limits())
    try:
        assert int(kfile(mgr, "memory", "defaults", "memory.limit_in_bytes")) == V1_UNLIMITED
        assert kfile(mgr, "cpu", "defaults", "cpu.cfs_quota_us") == "-1"
        assert kfile(mgr, "pids", "defaults", "pids.max") == "max"
        assert cg.stats().pids_current == 0 and cg.pids() == []
    finally:
        cg.remove()


def test_update_live_keeps_memsw_above_limit(mgr, procs):
    cg = mgr.create("update", Limits(memory=40 * MiB, pids=10))
    try:
        p = python_child(procs, "hold = b'x' * (24 << 20)\nprint('held', flush=True)\n"
                                "sys.stdin.readline()")
        cg.join(p.pid)
        go(p)
        assert p.stdout.readline() == "held\n"
        # Raising both: memsw must go first (it may never be below the limit).
        cg.update(Limits(memory=80 * MiB, memory_swap=100 * MiB, cpu_quota=20000,
                         cpu_period=50000))
        assert kfile(mgr, "memory", "update", "memory.limit_in_bytes") == str(80 * MiB)
        assert kfile(mgr, "memory", "update", "memory.memsw.limit_in_bytes") == \
            str(100 * MiB)
        assert kfile(mgr, "cpu", "update", "cpu.cfs_quota_us") == "20000"
        assert kfile(mgr, "cpu", "update", "cpu.cfs_period_us") == "50000"
        assert kfile(mgr, "pids", "update", "pids.max") == "max"
        # Lowering both: the limit must go first.
        cg.update(Limits(memory=30 * MiB))
        assert kfile(mgr, "memory", "update", "memory.limit_in_bytes") == str(30 * MiB)
        assert kfile(mgr, "memory", "update", "memory.memsw.limit_in_bytes") == str(30 * MiB)
        assert kfile(mgr, "cpu", "update", "cpu.cfs_quota_us") == "-1"
        cg.update(Limits(memory=30 * MiB, memory_swap=-1))
        assert int(kfile(mgr, "memory", "update", "memory.memsw.limit_in_bytes")) == \
            V1_UNLIMITED
        # Below what the process holds (24 MiB of anonymous memory, no swap): refused.
        with pytest.raises(SetupFailed) as err:
            cg.update(Limits(memory=8 * MiB))
        path = f"{mgr.hierarchies['memory']}/{PARENT}/update/memory.limit_in_bytes"
        assert err.value.message == f"write {8 * MiB} to {path}: Device or resource busy"
        assert kfile(mgr, "memory", "update", "memory.limit_in_bytes") == str(30 * MiB)
        assert p.poll() is None
    finally:
        cg.remove()
    assert leftover(mgr, "update") == []


def test_refused_value_names_file_and_create_cleans_up(mgr):
    with pytest.raises(SetupFailed) as err:
        mgr.create("refused", Limits(cpu_quota=500))        # the kernel's minimum is 1ms
    path = f"{mgr.hierarchies['cpu']}/{PARENT}/refused/cpu.cfs_quota_us"
    assert err.value.message == f"write 500 to {path}: Invalid argument"
    assert err.value.details["errno"] == 22
    assert leftover(mgr, "refused") == []
    assert "refused" not in mgr.names()


def test_write_to_removed_cgroup_names_file(mgr):
    cg = mgr.create("gone", Limits())
    cg.remove()
    with pytest.raises(SetupFailed) as err:
        cg.join(os.getpid())
    assert "/gone/cgroup.procs: No such file or directory" in err.value.message
    with pytest.raises(SetupFailed, match="/gone/memory.limit_in_bytes: No such file"):
        cg.update(Limits(pids=10))
    cg.remove()             # removing twice is fine
    assert cg.pids() == []


def test_names_open_conflict(mgr):
    a = mgr.create("list-a", Limits())
    b = mgr.create("list-b", Limits())
    try:
        assert {"list-a", "list-b"} <= set(mgr.names())
        with pytest.raises(Conflict, match="already exists"):
            mgr.create("list-a", Limits())
        assert mgr.open("list-b").paths == b.paths
    finally:
        a.remove()
        mgr.open("list-b").remove()
    assert not {"list-a", "list-b"} & set(mgr.names())
    with pytest.raises(NotFound):
        mgr.open("list-a")


def test_open_partly_made_cgroup_is_removed(mgr):
    # A daemon crash between the mkdirs leaves the name in some hierarchies only.
    os.mkdir(f"{mgr.hierarchies['memory']}/{PARENT}/partial")
    assert "partial" in mgr.names()
    mgr.open("partial").remove()
    assert leftover(mgr, "partial") == []


# ---------------------------------------------------------------- processes

def test_join_and_stats(mgr, procs):
    cg = mgr.create("stats", Limits(memory=64 * MiB))
    try:
        p = python_child(procs, "n = sum(range(3_000_000))\nhold = b'x' * (8 << 20)\n"
                                "print('done', flush=True)\nsys.stdin.readline()")
        cg.join(p.pid)
        assert cg.pids() == [p.pid]
        for path in cg.paths:
            with open(path + "/cgroup.procs") as f:
                assert f.read().split() == [str(p.pid)]
        with open(f"/proc/{p.pid}/cgroup") as f:
            memory_line = next(line for line in f if ":memory:" in line)
        assert memory_line.strip().endswith(f":memory:/{PARENT}/stats")
        go(p)
        assert p.stdout.readline() == "done\n"
        stats = cg.stats()
        assert stats.cpu_usage_ns > 0
        assert stats.memory_current >= 8 * MiB
        assert stats.memory_peak >= stats.memory_current
        assert stats.pids_current == 1
        assert stats.oom_kills == 0
        usage = cg.usage()        # what docker stats shows beyond these
        assert usage.cpu_user_ns > 0 and usage.cpu_system_ns >= 0
        assert 0 <= usage.memory_inactive_file <= usage.memory_cache <= stats.memory_peak
        if mgr.version == "v1":
            assert usage.io is None          # no blkio cgroup of its own
    finally:
        cg.remove()
    assert p.wait() == -signal.SIGKILL
    assert leftover(mgr, "stats") == []


def test_oom_kill_is_counted(mgr, procs):
    cg = mgr.create("oom", Limits(memory=20 * MiB))
    try:
        p = python_child(procs, "hog = []\nwhile True:\n    hog.append(b'x' * (1 << 20))")
        cg.join(p.pid)
        go(p)
        assert p.wait(timeout=60) == -signal.SIGKILL
        assert cg.oom_kills() >= 1          # read after exit, before remove
        assert cg.stats().oom_kills >= 1
        assert cg.stats().memory_peak >= 19 * MiB
    finally:
        cg.remove()
    assert leftover(mgr, "oom") == []


def test_plain_sigkill_is_not_an_oom_kill(mgr, procs):
    cg = mgr.create("kill9", Limits(memory=20 * MiB))
    try:
        p = python_child(procs, "print('up', flush=True)\nsys.stdin.readline()")
        cg.join(p.pid)
        go(p)
        assert p.stdout.readline() == "up\n"
        p.kill()
        assert p.wait() == -signal.SIGKILL
        assert cg.oom_kills() == 0
    finally:
        cg.remove()


def test_freeze_and_thaw(mgr, procs):
    cg = mgr.create("freeze", Limits())
    try:
        p = python_child(procs, "print('spin', flush=True)\nwhile True: pass")
        cg.join(p.pid)
        go(p)
        assert p.stdout.readline() == "spin\n"
        cg.freeze()
        assert kfile(mgr, "freezer", "freeze", "freezer.state") == "FROZEN"
        frozen_at = cpu_ticks(p.pid)
        time.sleep(0.3)                     # a spinning process would gain ~30 ticks
        assert cpu_ticks(p.pid) == frozen_at
        cg.thaw()
        assert kfile(mgr, "freezer", "freeze", "freezer.state") == "THAWED"
        assert wait_for(lambda: cpu_ticks(p.pid) > frozen_at)
    finally:
        cg.remove()


def test_kill_all_takes_every_descendant(mgr, procs):
    cg = mgr.create("killall", Limits(pids=16))
    try:
        sh = subprocess.Popen(["/bin/busybox", "sh", "-c",
                               "read x; for i in 1 2 3 4; do sleep 300 & done; echo up; wait"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(sh)
        cg.join(sh.pid)
        go(sh)
        assert sh.stdout.readline() == "up\n"
        assert len(cg.pids()) == 5
        assert cg.stats().pids_current == 5
        cg.kill_all()
        assert cg.pids() == []
        assert sh.wait() == -signal.SIGKILL
    finally:
        cg.remove()
    assert leftover(mgr, "killall") == []


def test_kill_all_with_another_signal_signals_once(mgr, procs):
    cg = mgr.create("term", Limits())
    try:
        p = python_child(procs, "import signal, time\n"
                                "signal.signal(signal.SIGTERM, lambda *a: print('term', "
                                "flush=True))\nprint('ready', flush=True)\ntime.sleep(300)")
        cg.join(p.pid)
        go(p)
        assert p.stdout.readline() == "ready\n"
        cg.kill_all(signal.SIGTERM)
        assert p.stdout.readline() == "term\n"
        assert cg.pids() == [p.pid]             # caught it, still there
    finally:
        cg.remove()
    assert p.wait() == -signal.SIGKILL


def test_remove_kills_and_leaves_nothing(mgr, procs):
    cg = mgr.create("remove", Limits(memory=40 * MiB, pids=8))
    p = python_child(procs, "print('up', flush=True)\nsys.stdin.readline()")
    cg.join(p.pid)
    go(p)
    assert p.stdout.readline() == "up\n"
    cg.remove()
    assert p.wait() == -signal.SIGKILL
    assert leftover(mgr, "remove") == []
    for path in cg.paths:
        assert not os.path.exists(path)


def test_claim_removes_what_its_ledger_names_and_holds_the_parent(procs, tmp_path):
    parent = f"{PARENT}-claim"
    ledger = str(tmp_path / "ledger")
    dead = CgroupManager(parent, ledger=ledger)     # an owner killed without its clean-up
    left = dead.create("left", Limits(pids=8))
    dead.create("empty", Limits())
    theirs = CgroupManager(parent).create("theirs", Limits())   # someone else's
    p = python_child(procs, "print('up', flush=True)\nsys.stdin.readline()")
    left.join(p.pid)
    go(p)
    assert p.stdout.readline() == "up\n"
    assert sorted(os.listdir(ledger)) == ["empty", "left"]
    owner = CgroupManager(parent, ledger=ledger)
    other = CgroupManager(parent, ledger=str(tmp_path / "other"))   # another daemon's
    try:
        assert other.claim() == ([], [], False)
        # The owner of the ledger removes what it names, with the other one there too,
        # and nothing else.
        assert owner.claim() == (["empty", "left"], [], True)
        assert p.wait(10) == -signal.SIGKILL
        assert owner.names() == ["theirs"] and os.listdir(ledger) == []
        mine = owner.create("mine", Limits())
        assert os.listdir(ledger) == ["mine"]
        other.release()                          # not its to remove, and not alone
        assert owner.names() == ["mine", "theirs"]
        mine.remove()
        assert os.listdir(ledger) == []
        theirs.remove()
        owner.release()               # the parent stays: the dead owner made it, not we
        assert len(list(Path("/sys/fs/cgroup").glob(f"*/{parent}"))) >= 6
        # A parent that claim made goes at release, once no one else holds it.
        fresh = CgroupManager(f"{parent}-fresh", ledger=ledger)
        assert fresh.claim() == ([], [], False)
        assert len(list(Path("/sys/fs/cgroup").glob(f"*/{parent}-fresh"))) >= 6
        fresh.release()
        assert not list(Path("/sys/fs/cgroup").glob(f"*/{parent}-fresh"))
    finally:
        for name in owner.names():
            owner.open(name).remove()
        for path in {os.path.dirname(p) for p in owner.paths("x")}:
            if os.path.isdir(path):
                os.rmdir(path)


# ---------------------------------------------------------------- v2 process control

def unified_available() -> bool:
    return os.path.isdir(UNIFIED) and cgroups.detect(UNIFIED) == "v2"


@pytest.mark.skipif(not unified_available(),
                    reason=f"no controller-less cgroup2 mount at {UNIFIED}")
def test_v2_process_control_on_unified(procs):
    """The hybrid host's cgroup2 has no controllers (all are bound to v1), so limits
    cannot be set there, but joining, freezing, cgroup.kill and removal are core v2."""
    v2 = CgroupManager(PARENT, mount_root=UNIFIED, version="v2")
    with pytest.raises(SetupFailed, match="lacks controllers memory, cpu, pids"):
        v2.ensure_parent()
    parent = f"{UNIFIED}/{PARENT}"
    assert not os.path.exists(parent)
    os.makedirs(parent + "/c1")
    try:
        cg = v2.open("c1")
        assert v2.names() == ["c1"]
        p = python_child(procs, "print('spin', flush=True)\nwhile True: pass")
        cg.join(p.pid)
        assert cg.pids() == [p.pid]
        with open(parent + "/cgroup.procs") as f:
            assert f.read() == ""               # the parent holds no process
        go(p)
        assert p.stdout.readline() == "spin\n"
        cg.freeze()
        with open(parent + "/c1/cgroup.events") as f:
            assert "frozen 1" in f.read().splitlines()
        frozen_at = cpu_ticks(p.pid)
        time.sleep(0.3)
        assert cpu_ticks(p.pid) == frozen_at
        cg.thaw()
        assert wait_for(lambda: cpu_ticks(p.pid) > frozen_at)
        cg.remove()                             # cgroup.kill, then rmdir
        assert p.wait() == -signal.SIGKILL
        assert not os.path.exists(parent + "/c1")
    finally:
        for path in (parent + "/c1", parent):
            if os.path.isdir(path):
                os.rmdir(path)


@pytest.mark.skipif(not unified_available(),
                    reason=f"no controller-less cgroup2 mount at {UNIFIED}")
def test_v2_claim_kills_and_removes_what_a_dead_owner_left(procs, tmp_path):
    parent = f"{PARENT}-claim2"
    ledger = tmp_path / "ledger"
    owner = CgroupManager(parent, mount_root=UNIFIED, version="v2", controllers=(),
                          ledger=str(ledger))
    path = f"{UNIFIED}/{parent}"
    os.makedirs(f"{path}/left/{cgroups.LEAF}")          # a nesting one, and a plain one
    os.makedirs(f"{path}/plain")
    (ledger / "left").touch()                          # as their owner wrote them
    (ledger / "plain").touch()
    p = python_child(procs, "print('up', flush=True)\nsys.stdin.readline()")
    owner.open("left").join(p.pid)
    go(p)
    assert p.stdout.readline() == "up\n"
    try:
        assert owner.claim() == (["left", "plain"], [], False)
        assert p.wait(10) == -signal.SIGKILL
        assert owner.names() == []
        other = CgroupManager(parent, mount_root=UNIFIED, version="v2", controllers=(),
                              ledger=str(tmp_path / "other"))
        assert other.claim() == ([], [], True)
        other.release()
        owner.release()
        assert os.path.exists(path)             # made by the dead owner: it stays
        fresh = CgroupManager(f"{parent}-fresh", mount_root=UNIFIED, version="v2",
                              controllers=(), ledger=str(ledger))
        assert fresh.claim() == ([], [], False) and os.path.isdir(f"{path}-fresh")
        fresh.release()
        assert not os.path.exists(f"{path}-fresh")
    finally:
        for name in owner.names():
            owner.open(name).remove()
        if os.path.isdir(path):
            os.rmdir(path)


# ---------------------------------------------------------------- v2 nesting (zygotes)

ZYGOTE_UID = 0x70000000             # runner/zygote.py's ZYGOTE_ID_BASE: not host root


def hugetlb_on_unified() -> bool:
    if not unified_available():
        return False
    with open(UNIFIED + "/cgroup.controllers") as f:
        return "hugetlb" in f.read().split()


def v2_cgroup() -> str:
    """The cgroup2 line of /proc/self/cgroup (a hybrid host lists the v1 ones too)."""
    with open("/proc/self/cgroup") as f:
        return next(line.strip() for line in f if line.startswith("0::"))


def _child(sock, body) -> None:
    """In a forked child: run ``body``, report an error over ``sock``, never return."""
    try:
        body()
    except BaseException as e:               # the parent's assertion says what
        try:
            sock.send(f"error {type(e).__name__}: {e}".encode())
        except OSError:
            pass
        os._exit(1)
    os._exit(0)


@pytest.mark.skipif(not hugetlb_on_unified(),
                    reason=f"no cgroup2 at {UNIFIED} offering a controller (hugetlb) to "
                           f"nest with")
def test_v2_nesting_and_fd_join_on_unified(tmp_path):
    """The zygote's v2 layout on the real kernel. The hybrid host's cgroup2 offers
    hugetlb only (the rest is bound to v1): enabled down to the zygote's cgroup, it is
    enough for the kernel's no-internal-process rule to apply. A forked "pid 1" enters
    the nesting cgroup (cgroup namespace made there, then into the leaf); the "fork
    server" (this process) then makes a test cgroup beside the leaf, which enables the
    controller in the zygote's cgroup, and opens its cgroup.procs; a "test" forked by
    pid 1, no longer root (host uid 0x70000000), joins through that fd alone."""
    from sandboxd.runner import syscalls as sc
    parent = f"sbxtest-{os.getpid()}"
    root_control = UNIFIED + "/cgroup.subtree_control"
    with open(root_control) as f:
        root_had = "hugetlb" in f.read().split()
    mgr = CgroupManager(parent, mount_root=UNIFIED, version="v2", controllers=("hugetlb",))
    z1 = f"{UNIFIED}/{parent}/z1"
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid1 = 0
    try:
        zcg = mgr.create("z1", Limits(), nest=True)
        assert zcg.paths == (z1, z1 + "/" + cgroups.LEAF)
        view = tmp_path / "view"
        view.mkdir()

        def as_pid1() -> None:
            ours.close()

            def unshare() -> None:
                sc.unshare(sc.CLONE_NEWCGROUP | sc.CLONE_NEWNS)
            zcg.enter(unshare)
            # What the container sees: its cgroup namespace's root is z1.
            sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
            sc.mount("cgroup2", str(view), "cgroup2", sc.MS_RDONLY)
            theirs.send(f"pid1 {v2_cgroup()} {sorted(os.listdir(view))}".encode())
            fds = socket.recv_fds(theirs, 64, 1)[1]        # the test's cgroup, opened
            theirs.send(f"view {sorted(d for d in os.listdir(view) if '.' not in d)}"
                        .encode())
            test = os.fork()
            if test == 0:
                def as_test() -> None:
                    os.setgroups([])
                    os.setresgid(ZYGOTE_UID, ZYGOTE_UID, ZYGOTE_UID)
                    os.setresuid(ZYGOTE_UID, ZYGOTE_UID, ZYGOTE_UID)
                    try:
                        os.open(z1 + "/t1/cgroup.procs", os.O_WRONLY)
                        by_path = "opened"
                    except PermissionError:
                        by_path = "EACCES"
                    os.write(fds[0], b"0")
                    os.close(fds[0])
                    theirs.send(f"test {v2_cgroup()} {by_path}".encode())
                    theirs.recv(1)                          # stay until killed
                _child(theirs, as_test)
            os.close(fds[0])
            theirs.recv(1)

        pid1 = os.fork()
        if pid1 == 0:
            _child(theirs, as_pid1)
        theirs.close()
        said = ours.recv(4096).decode()
        assert said.startswith("pid1 0::/init "), said
        assert "'init'" in said and "'cgroup.subtree_control'" in said
        assert zcg.pids() == [pid1]
        with open(z1 + "/cgroup.procs") as f:
            assert f.read() == ""                 # the cgroup itself holds no process
        # The fork server's side: a test cgroup beside the leaf, controller enabled.
        tests = CgroupManager(f"{parent}/z1", mount_root=UNIFIED, version="v2",
                              controllers=("hugetlb",))
        t1 = tests.create("t1", Limits())
        with open(z1 + "/cgroup.subtree_control") as f:
            assert f.read().split() == ["hugetlb"]
        # Which the kernel allows only because z1 holds no process now:
        with pytest.raises(OSError) as busy:
            with open(z1 + "/cgroup.procs", "w") as f:
                f.write(str(pid1))
        assert busy.value.errno == errno.EBUSY
        fds = t1.open_join()
        try:
            socket.send_fds(ours, [b"t1"], fds)
        finally:
            for fd in fds:
                os.close(fd)
        said = ours.recv(4096).decode()
        assert said == "view ['init', 't1']", said            # the live cgroupfs view
        said = ours.recv(4096).decode()
        # Not root: the path itself is closed to it; the fd, opened by root, works, and
        # it sees itself at /t1 of its zygote's namespace.
        assert said == "test 0::/t1 EACCES", said
        test_pids = t1.pids()
        assert len(test_pids) == 1 and test_pids[0] not in (pid1, os.getpid())
        assert zcg.pids() == [pid1]
        # Removal: the test's cgroup first (as the fork server does), then the
        # zygote's: cgroup.kill of z1 takes pid 1, the leaf goes before z1.
        t1.remove()
        assert not os.path.exists(z1 + "/t1")
        zcg.remove()
        assert os.waitpid(pid1, 0)[1] == signal.SIGKILL
        pid1 = 0
        assert not os.path.exists(z1)
    finally:
        ours.close()
        if pid1:
            os.kill(pid1, signal.SIGKILL)
            os.waitpid(pid1, 0)
        for path in (z1 + "/t1", z1 + "/" + cgroups.LEAF, z1, f"{UNIFIED}/{parent}"):
            for _ in range(100):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)          # EBUSY for a moment after the last exit
        if not root_had:
            with open(root_control, "w") as f:
                f.write("-hugetlb")
    assert not os.path.exists(f"{UNIFIED}/{parent}")
