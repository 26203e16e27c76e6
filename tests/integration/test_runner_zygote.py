"""Zygote containers (ContainerSpec.zygote) on the real kernel: each test forked from the
zygote is its own container (pid/mount/net/ipc/uts namespaces, /tmp, /dev/shm, /proc,
a cgroup with its limits), the zygote runs as a non-root host uid in a user namespace of
its own, and a test cannot reach the zygote or a sibling.

A small zygote script stands in for pytest_sandbox's: it reads one JSON request a line,
forks a test with sandboxd.runner.testfork, and prints what the test saw and how it ended.
"""
from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness import remove_cgroup_parent, wait_until
from sandboxd.errors import InvalidArgument
from sandboxd.images.host import host_rootfs
from sandboxd.runner import Runner
from sandboxd.runner.spec import ContainerSpec, Limits, Mount, Process, RootFS
from sandboxd.runner.zygote import ZYGOTE_ID_BASE

PARENT = f"sandboxd-test-zyg-{os.getpid()}"
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_ids = itertools.count()

ZYGOTE = r'''
import json, os, signal, socket, sys, time
from sandboxd.runner import syscalls as sc
from sandboxd.runner.testfork import TestContainer, fork_test

def ns(name):
    return os.stat(f"/proc/self/ns/{name}").st_ino

def test(req):
    seen = {"pid": os.getpid(), "hostname": socket.gethostname(),
            "ns": {n: ns(n) for n in ("pid", "mnt", "net", "ipc", "uts")},
            "tmp": sorted(os.listdir("/tmp")), "shm": sorted(os.listdir("/dev/shm")),
            "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
            "uid_map": open("/proc/self/uid_map").read().split(),
            "status": dict(l.split(":\t", 1) for l in open("/proc/self/status")
                           .read().splitlines() if ":\t" in l)}
    open("/tmp/mark", "w").write(req["hostname"])
    open("/dev/shm/mark", "w").write(req["hostname"])
    seen["timer_list"] = open("/proc/timer_list").read()       # masked: /dev/null
    seen["cgroup2"] = next(l.strip() for l in open("/proc/self/cgroup") if l[:3] == "0::")
    seen["cgroupfs"] = sorted(d for d in os.listdir("/sys/fs/cgroup") if "." not in d)
    for path in ("/proc/sys/vm/drop_caches", "/dev/.sandboxd-proc/proc/1/status",
                 "/sys/fs/cgroup/memory/cgroup.procs", "/sys/fs/cgroup/pids/pids.max",
                 "/sys/fs/cgroup/cgroup.procs"):
        try:
            open(path, "w").close()
            seen[path] = "opened"
        except OSError as e:
            seen[path] = e.strerror
    killed = []
    for pid in range(2, 64):          # nobody else is in its pid namespace
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    seen["killed"] = killed
    try:
        sc.unshare(sc.CLONE_NEWUSER)  # refused by the container's seccomp filter
        seen["unshare_user"] = "made"
    except OSError as e:
        seen["unshare_user"] = e.strerror
    try:
        os.kill(-1, signal.SIGKILL)   # every process it may signal: none but itself
    except OSError as e:
        seen["kill_all"] = e.strerror
    try:
        os.kill(int(req["zygote"]), signal.SIGKILL)
        seen["kill_zygote"] = "sent"
    except OSError as e:
        seen["kill_zygote"] = e.strerror
    if req.get("alloc"):
        hog = bytearray(req["alloc"])
        hog[::4096] = b"x" * len(hog[::4096])
    if req.get("forks"):
        made = 0
        try:
            for _ in range(req["forks"]):
                if os.fork() == 0:
                    time.sleep(5)
                    os._exit(0)
                made += 1
        except OSError as e:
            seen["fork_error"] = e.strerror
        seen["forked"] = made
    print(json.dumps(seen), flush=True)
    return 0

def fork(req):
    req["zygote"] = os.getpid()
    child = fork_test(TestContainer(hostname=req["hostname"],
                                    limits=req.get("limits", {})))
    if child.pid == 0:
        os._exit(test(req))
    return child

for line in sys.stdin:
    req = json.loads(line)
    if "ahead" in req:
        # Every child forked before the first runs (parked); each released in turn,
        # the last one discarded without ever being released.
        children = [fork(r) for r in req["ahead"]]
        for child in children[:-1]:
            child.release()
            print(json.dumps({"exit": child.wait(), "oom_killed": child.oom_killed}),
                  flush=True)
        children[-1].discard()
        print(json.dumps({"discarded": children[-1].wait()}), flush=True)
        continue
    child = fork(req)
    child.release()
    code = child.wait()
    print(json.dumps({"exit": code, "oom_killed": child.oom_killed}), flush=True)
print(json.dumps({"zygote_alive": os.getpid(),
                  "ns": {n: ns(n) for n in ("pid", "mnt", "net", "ipc", "uts")}}),
      flush=True)
'''


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    r = Runner(state_dir=str(tmp_path_factory.mktemp("runner")), cgroup_parent=PARENT)
    r.start()
    yield r
    r.close()
    remove_cgroup_parent(PARENT)


@pytest.fixture(scope="module")
def host_root(tmp_path_factory):
    return host_rootfs(tmp_path_factory.mktemp("host-cache"))


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    d = tmp_path_factory.mktemp("zygote")
    (d / "zyg.py").write_text(ZYGOTE)
    os.chmod(d, 0o755)
    return d


# What a fresh /tmp still shows: the binds below /tmp (the script's directory, and a
# checkout under /tmp).
SHOWN_IN_TMP = {"pytest-of-root"} | ({Path(PACKAGE_ROOT).relative_to("/tmp").parts[0]}
                                    if PACKAGE_ROOT.startswith("/tmp/") else set())


def _spec(host_root, script, **kw) -> ContainerSpec:
    skeleton, host_mounts = host_root
    mounts = (Mount("/tmp", "tmpfs", options=("mode=1777",)), *host_mounts,
              Mount(str(script), "bind", str(script), readonly=True),
              Mount(PACKAGE_ROOT, "bind", PACKAGE_ROOT, readonly=True))
    return ContainerSpec(
        id=f"zyg{os.getpid()}-{next(_ids)}",
        process=Process(args=(sys.executable, str(script / "zyg.py")),
                        env=(f"PYTHONPATH={PACKAGE_ROOT}",)),
        root=RootFS(lowerdirs=(str(skeleton),), readonly=True), mounts=mounts,
        zygote=True, **kw)


def _run(runner, spec, requests):
    data = "".join(json.dumps(r) + "\n" for r in requests).encode()
    result = runner.run(spec, input=data, timeout=60)
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert result.exit_code == 0, (result.stderr.decode(), lines)
    return lines, result


def test_each_test_is_a_fresh_container(runner, host_root, script):
    lines, _ = _run(runner, _spec(host_root, script),
                    [{"hostname": "first"}, {"hostname": "second"}])
    first, end1, second, end2, last = lines
    assert end1 == end2 == {"exit": 0, "oom_killed": False}
    assert "zygote_alive" in last
    for seen, name in ((first, "first"), (second, "second")):
        assert seen["pid"] == 1 and seen["procs"] == [1], seen["procs"]
        assert seen["hostname"] == name
        assert seen["killed"] == [] and seen["kill_zygote"] == "No such process"
    # Its own namespaces: not the zygote's, not the host's. (The kernel may give the
    # second test's the inode number the first one's freed: the /tmp check shows that
    # nothing of the first is left.)
    for kind in ("pid", "mnt", "net", "ipc", "uts"):
        for seen in (first, second):
            assert seen["ns"][kind] != last["ns"][kind], kind
            assert seen["ns"][kind] != os.stat(f"/proc/self/ns/{kind}").st_ino
    # What the first wrote in its /tmp and /dev/shm is not in the second's.
    assert set(first["tmp"]) == set(second["tmp"]) == SHOWN_IN_TMP and second["shm"] == []
    # Root of a user namespace whose 0 is a non-root host uid; no CAP_SYS_ADMIN left.
    assert first["uid_map"] == ["0", str(ZYGOTE_ID_BASE), "65536"]
    assert int(first["status"]["CapBnd"], 16) & (1 << 21) == 0
    assert first["status"]["NoNewPrivs"] == "1"
    # The zygote's filter (which lets it make namespaces) and the container's on top.
    assert first["status"]["Seccomp"] == "2" and first["status"]["Seccomp_filters"] == "2"
    assert first["unshare_user"].endswith("Operation not permitted")
    assert first["timer_list"] == ""
    assert first["/proc/sys/vm/drop_caches"] == "Read-only file system"
    # The zygote's read-only cgroupfs view: a test cannot leave or lift its limits.
    assert first["/sys/fs/cgroup/memory/cgroup.procs"] == "Read-only file system"
    assert first["/sys/fs/cgroup/pids/pids.max"] == "Read-only file system"
    assert first["/dev/.sandboxd-proc/proc/1/status"] in ("Permission denied",
                                                          "No such file or directory")


def test_children_made_ahead_are_used_once(runner, host_root, script):
    # Three children made at once, before any test runs (as the zygote makes the next
    # item's while the current one runs): each released one is its own container and
    # sees nothing the one before wrote; the one never released never runs the test.
    lines, _ = _run(runner, _spec(host_root, script), [{"ahead": [
        {"hostname": "one"}, {"hostname": "two", "limits": {"pids": 16}},
        {"hostname": "never"}]}])
    one, end1, two, end2, discarded, last = lines
    assert end1 == end2 == {"exit": 0, "oom_killed": False}
    assert discarded == {"discarded": 0}
    assert [seen["hostname"] for seen in (one, two)] == ["one", "two"]
    assert not any(line.get("hostname") == "never" for line in lines)
    for seen in (one, two):
        assert seen["pid"] == 1 and seen["procs"] == [1] and seen["killed"] == []
        assert set(seen["tmp"]) == SHOWN_IN_TMP and seen["shm"] == []
        assert seen["status"]["Seccomp_filters"] == "2"
    assert one["ns"]["mnt"] != two["ns"]["mnt"] and one["ns"]["net"] != two["ns"]["net"]
    assert "zygote_alive" in last


def test_limits_per_test(runner, host_root, script):
    lines, _ = _run(runner, _spec(host_root, script), [
        {"hostname": "greedy", "alloc": 256 << 20, "limits": {"memory": 64 << 20}},
        {"hostname": "forky", "forks": 40, "limits": {"pids": 8}},
        {"hostname": "after"}])
    greedy_end = next(x for x in lines if "exit" in x)
    assert greedy_end == {"exit": 137, "oom_killed": True}
    forky = next(x for x in lines if x.get("hostname") == "forky")
    assert forky["fork_error"] == "Resource temporarily unavailable" and forky["forked"] < 8
    assert lines[-2] == {"exit": 0, "oom_killed": False}     # "after" ran normally
    assert "zygote_alive" in lines[-1]


ZYGOTE_ITSELF = r'''
import os
from sandboxd.runner import syscalls as sc
print(open("/proc/self/uid_map").read().split()[1], os.getuid())
print([l.split()[1] for l in open("/proc/self/status") if l.startswith("Seccomp")])
for what, call in (("umount a mask", lambda: sc.umount2("/proc/timer_list")),
                   ("mount in its container's mount ns",
                    lambda: sc.mount("tmpfs", "/tmp", "tmpfs"))):
    try:
        call()
        print(what, "succeeded")
    except OSError as e:
        print(what, "refused")
sc.unshare(sc.CLONE_NEWNS | sc.CLONE_NEWNET)     # its own namespaces: allowed
sc.mount("tmpfs", "/tmp", "tmpfs")
print("own namespaces ok")
'''


def test_zygote_is_not_host_root(runner, host_root, script):
    # The zygote itself: its uid outside is ZYGOTE_ID_BASE; it cannot change its
    # container's mounts (owned by the host's user namespace), only make its own.
    spec = _spec(host_root, script)
    spec = ContainerSpec(**{**spec.__dict__, "process": Process(
        args=(sys.executable, "-c", ZYGOTE_ITSELF), env=spec.process.env)})
    result = runner.run(spec, timeout=30)
    assert result.exit_code == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == [
        f"{ZYGOTE_ID_BASE} 0", "['2', '1']", "umount a mask refused",
        "mount in its container's mount ns refused", "own namespaces ok"]


def test_zygote_spec_is_checked(runner, host_root, script):
    spec = _spec(host_root, script)
    bad = ContainerSpec(**{**spec.__dict__, "hold": True})
    with pytest.raises(InvalidArgument, match="zygote"):
        runner.run(bad, timeout=10)
    assert Limits  # the wire form of Limits is what a test asks for


# ---------------------------------------------------------------- cgroup v2

UNIFIED = "/sys/fs/cgroup/unified"
V2_PARENT = f"sbxtest-zyg-{os.getpid()}"

# The fork server as sandboxd.runner.forkserver.main starts it, its cgroups on the
# hybrid host's cgroup2 instead. That one offers hugetlb only (memory, cpu and pids are
# bound to v1): enabled down to the zygote's cgroup, it is enough for the kernel's
# no-internal-process rule to apply. Its counters have no memory.current or
# pids.current, so stats() reads zeros here; nothing else is replaced.
V2_SERVER = r'''
import socket, sys
from sandboxd.runner import cgroups, forkserver
cgroups.CgroupV2.stats = lambda self: cgroups.CgroupStats(0, None, 0, 0, 0, 0, 0)
server = forkserver.ForkServer(socket.socket(fileno=int(sys.argv[1])), sys.argv[2],
                               sys.argv[3])
server.cgroups = cgroups.CgroupManager(sys.argv[3], mount_root=sys.argv[4], version="v2",
                                       controllers=("hugetlb",))
server.serve()
'''


class UnifiedRunner(Runner):
    def start(self) -> None:
        os.makedirs(self.state_dir, 0o700, exist_ok=True)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", V2_SERVER, str(theirs.fileno()), self.state_dir,
             self.cgroup_parent, UNIFIED], pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": PACKAGE_ROOT})
        theirs.close()
        self._sock = ours
        self.cgroup_version = self._next_message().get("cgroup_version", "")


def _hugetlb_on_unified() -> bool:
    try:
        with open(UNIFIED + "/cgroup.controllers") as f:
            return "hugetlb" in f.read().split()
    except OSError:
        return False


@pytest.mark.skipif(not _hugetlb_on_unified(),
                    reason=f"no cgroup2 at {UNIFIED} offering a controller (hugetlb)")
def test_zygote_on_cgroup_v2(tmp_path, host_root, script):
    """The whole path on v2, through the fork server: the zygote's cgroup nests (pid 1
    and the zygote in its leaf), each test gets a cgroup beside the leaf, made after the
    zygote's pid check, joined through the fd the fork server opened, and sees itself
    at /t<N> of a read-only cgroup2 rooted at the zygote's cgroup; all of it is gone
    once the zygote's container is."""
    root_control = UNIFIED + "/cgroup.subtree_control"
    with open(root_control) as f:
        root_had = "hugetlb" in f.read().split()
    runner = UnifiedRunner(state_dir=str(tmp_path / "runner"), cgroup_parent=V2_PARENT)
    parent = Path(UNIFIED, V2_PARENT)
    try:
        runner.start()
        assert runner.cgroup_version == "v2"
        spec = _spec(host_root, script)
        lines, _ = _run(runner, spec, [{"hostname": "first"}, {"hostname": "second"}])
        assert len(lines) == 5, lines           # two tests seen and ended, the zygote's end
        first, end1, second, end2, last = lines
        assert end1 == end2 == {"exit": 0, "oom_killed": False}
        assert "zygote_alive" in last
        assert (first["cgroup2"], second["cgroup2"]) == ("0::/t1", "0::/t2")
        # The zygote's cgroup: its leaf, and this test's own (the one before is gone
        # or going: removed when the fork server is idle).
        assert {"init", "t2"} <= set(second["cgroupfs"]) <= {"init", "t1", "t2"}
        assert second["/sys/fs/cgroup/cgroup.procs"] == "Read-only file system"
        assert first["pid"] == 1 and first["procs"] == [1] and first["killed"] == []
        # Removed once the fork server is idle after the exit: tests, leaf, its own.
        wait_until(lambda: not (parent / spec.id).exists(), 5, "the zygote's cgroup gone")
    finally:
        runner.close()
        leftovers = []
        if parent.is_dir():
            for below in sorted(parent.glob("**/"), key=lambda p: -len(p.parts)):
                if below != parent:
                    leftovers.append(str(below.relative_to(parent)))
                    below.rmdir()
            parent.rmdir()
        if not root_had:
            with open(root_control, "w") as f:
                f.write("-hugetlb")
        assert not leftovers, f"cgroups left in {parent}: {leftovers}"
