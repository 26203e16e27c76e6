"""cgroups without the kernel: the pure converters, version detection and v1 mount
discovery on fake trees, and the v2 driver's file logic against a temp directory laid out
like a cgroup2 filesystem.

The fake cgroup2 tree differs from the kernel's in one way only, made explicit in
``FakeTreeManager._mkdir``: a new directory gets the interface files the kernel would
create in it, with the kernel's default contents. Everything the driver then reads and
writes is what is under test. (Removal, freezing and killing need the kernel: they are
in tests/integration/test_cgroups_kernel.py.)
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandboxd.errors import Conflict, InvalidArgument, NotFound, SetupFailed
from sandboxd.runner import cgroups
from sandboxd.runner.cgroups import CgroupManager, CgroupStats, CgroupUsage
from sandboxd.runner.spec import Limits, parse_size

MiB = 1 << 20


# ---------------------------------------------------------------- converters

def test_to_max():
    assert cgroups.to_max(None) == "max"
    assert cgroups.to_max(-1) == "max"
    assert cgroups.to_max(0) == "0"
    assert cgroups.to_max(41943040) == "41943040"


def test_cpu_max():
    assert cgroups.cpu_max(-1) == "max 100000"
    assert cgroups.cpu_max(-1, 50000) == "max 50000"
    assert cgroups.cpu_max(50000, 100000) == "50000 100000"


def test_shares_to_weight_known_points():
    assert cgroups.shares_to_weight(2) == 1
    assert cgroups.shares_to_weight(1024) == 39
    assert cgroups.shares_to_weight(262144) == 10000


@given(st.integers(2, 262143))
def test_shares_to_weight_in_range_and_monotonic(shares):
    weight = cgroups.shares_to_weight(shares)
    assert 1 <= weight <= 10000
    assert weight <= cgroups.shares_to_weight(shares + 1)


def test_memsw_v1():
    m = parse_size("40m")
    assert cgroups.memsw_v1(None, None) == -1
    assert cgroups.memsw_v1(-1, None) == -1
    assert cgroups.memsw_v1(m, None) == m                   # default: no swap beyond memory
    assert cgroups.memsw_v1(m, -1) == -1                    # unlimited swap
    assert cgroups.memsw_v1(m, 60 * MiB) == 60 * MiB        # memory + swap total as given


def test_swap_max_v2_is_swap_only():
    m = 40 * MiB
    assert cgroups.swap_max_v2(None, None) == -1
    assert cgroups.swap_max_v2(-1, -1) == -1
    assert cgroups.swap_max_v2(m, None) == 0
    assert cgroups.swap_max_v2(m, -1) == -1
    assert cgroups.swap_max_v2(m, 60 * MiB) == 20 * MiB
    assert cgroups.swap_max_v2(m, m) == 0


# ---------------------------------------------------------------- detection

def test_detect_v2_when_root_is_cgroup2(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    assert cgroups.detect(str(tmp_path)) == "v2"
    assert cgroups.detect(str(tmp_path) + "/") == "v2"


def test_detect_hybrid_is_v1(tmp_path):
    for name in ("memory", "cpu", "pids", "unified"):
        (tmp_path / name).mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("")
    assert cgroups.detect(str(tmp_path)) == "v1"


def test_detect_plain_v1(tmp_path):
    (tmp_path / "memory").mkdir()
    assert cgroups.detect(str(tmp_path)) == "v1"


MOUNTINFO = """\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 22 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:10 - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/net_cls,net_prio rw,relatime - cgroup cgroup rw,net_cls,net_prio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 1 0:35 / /mnt/other\\040place rw,relatime - cgroup cgroup rw,memory
"""


def test_v1_hierarchies_co_mounted_and_filtered():
    found = cgroups.v1_hierarchies(MOUNTINFO, "/sys/fs/cgroup")
    assert found == {
        "cpu": "/sys/fs/cgroup/cpu,cpuacct",
        "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
        "memory": "/sys/fs/cgroup/memory",
        "devices": "/sys/fs/cgroup/devices",
        "freezer": "/sys/fs/cgroup/freezer",
        "pids": "/sys/fs/cgroup/pids",
    }


def test_v1_hierarchies_unescapes_mount_points():
    assert cgroups.v1_hierarchies(MOUNTINFO, "/mnt/other place") == {
        "memory": "/mnt/other place"}


def test_v1_manager_shares_co_mounted_directory(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    mgr = CgroupManager("sandboxd", version="v1", mountinfo=str(info))
    assert mgr.paths("c1") == (
        "/sys/fs/cgroup/cpu,cpuacct/sandboxd/c1",
        "/sys/fs/cgroup/memory/sandboxd/c1",
        "/sys/fs/cgroup/devices/sandboxd/c1",
        "/sys/fs/cgroup/freezer/sandboxd/c1",
        "/sys/fs/cgroup/pids/sandboxd/c1",
    )


def test_container_view_v1_is_the_joined_hierarchies_without_release_agent():
    info = MOUNTINFO.replace("rw,memory\n", "rw,memory,release_agent=/x\n", 1)
    assert cgroups.container_view("v1", info, "/sys/fs/cgroup") == (
        ("cpu,cpuacct", "cgroup", "cpu,cpuacct"),
        ("memory", "cgroup", "memory"),
        ("devices", "cgroup", "devices"),
        ("freezer", "cgroup", "freezer"),
        ("pids", "cgroup", "pids"),
    )                     # no cpuset, net_cls, name=systemd or the hybrid's cgroup2


def test_container_view_v2_is_one_mount(tmp_path):
    assert cgroups.container_view("v2") == (("", "cgroup2", ""),)
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert CgroupManager("sandboxd", version="v1", mountinfo=str(info)).cgroupfs == \
        cgroups.container_view("v1", MOUNTINFO)


def test_v1_manager_names_missing_controllers(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text("\n".join(line for line in MOUNTINFO.splitlines()
                              if "pids" not in line and "freezer" not in line))
    with pytest.raises(SetupFailed, match="controllers pids, freezer are not mounted"):
        CgroupManager("sandboxd", version="v1", mountinfo=str(info))


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../escape", "x\x00y"])
def test_bad_names_refused(tmp_path, name):
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids")
    mgr = CgroupManager("sandboxd", mount_root=str(tmp_path))
    with pytest.raises(InvalidArgument, match="cgroup name"):
        mgr.create(name, Limits())
    assert not (tmp_path / "sandboxd").exists()


@pytest.mark.parametrize("parent", ["/abs", "a/../b", "", "a//b"])
def test_bad_parents_refused(tmp_path, parent):
    with pytest.raises(InvalidArgument, match="cgroup parent"):
        CgroupManager(parent, mount_root=str(tmp_path), version="v2")


# ---------------------------------------------------------------- v2 driver on a fake tree

# What the kernel puts in a new cgroup2 directory (with memory, cpu and pids enabled
# by its parent), at their default values.
V2_CHILD_FILES = {
    "cgroup.procs": "", "cgroup.controllers": "", "cgroup.subtree_control": "",
    "cgroup.events": "populated 0\nfrozen 0\n", "cgroup.freeze": "0\n",
    "cgroup.kill": "", "memory.max": "max\n", "memory.swap.max": "max\n",
    "memory.current": "0\n", "memory.peak": "0\n",
    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    "memory.events.local": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    "cpu.max": "max 100000\n", "cpu.weight": "100\n", "pids.max": "max\n",
    "pids.current": "0\n",
    "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\nnr_periods 0\n"
                "nr_throttled 0\nthrottled_usec 0\n",
}


class FakeTreeManager(CgroupManager):
    """Stands in for the kernel's part of mkdir: the new directory gets its files."""

    omit: tuple[str, ...] = ()

    def _mkdir(self, path: str) -> None:
        super()._mkdir(path)
        for name, text in V2_CHILD_FILES.items():
            if name not in self.omit:
                Path(path, name).write_text(text)


@pytest.fixture
def root(tmp_path) -> Path:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    (tmp_path / "cgroup.procs").write_text("1\n")
    return tmp_path


def read(path: Path) -> str:
    return path.read_text().strip()


def test_v2_detected_and_controllers_enabled_down_to_parent(root):
    mgr = FakeTreeManager("sandboxd", mount_root=str(root))
    assert mgr.version == "v2"
    mgr.create("c1", Limits())
    # io too, as the root offers it: the block I/O counters of stats
    assert read(root / "cgroup.subtree_control") == "+memory +cpu +pids +io"
    assert read(root / "sandboxd" / "cgroup.subtree_control") == "+memory +cpu +pids +io"
    # the leaf enables nothing: it holds the processes
    assert read(root / "sandboxd" / "c1" / "cgroup.subtree_control") == ""


def test_v2_nested_parent_enables_every_level(root):
    FakeTreeManager("sandboxd/tests", mount_root=str(root)).create("c1", Limits())
    for level in (root, root / "sandboxd", root / "sandboxd" / "tests"):
        assert read(level / "cgroup.subtree_control") == "+memory +cpu +pids +io"
    assert (root / "sandboxd" / "tests" / "c1").is_dir()


def test_v2_io_is_enabled_only_where_offered(root):
    (root / "cgroup.controllers").write_text("cpuset cpu memory pids\n")
    FakeTreeManager("sandboxd", mount_root=str(root)).create("c1", Limits())
    assert read(root / "sandboxd" / "cgroup.subtree_control") == "+memory +cpu +pids"


def test_v2_enables_only_what_is_missing(root):
    # The kernel lists enabled controllers without '+'; those are left alone.
    (root / "cgroup.subtree_control").write_text("cpu io memory pids\n")
    mgr = FakeTreeManager("sandboxd", mount_root=str(root))
    mgr.ensure_parent()
    assert read(root / "cgroup.subtree_control") == "cpu io memory pids"
    mgr.ensure_parent()     # idempotent with the parent in place
    assert read(root / "sandboxd" / "cgroup.subtree_control") == "+memory +cpu +pids +io"


def test_v2_missing_controller_refused_before_anything_is_made(root):
    (root / "cgroup.controllers").write_text("cpuset io pids\n")
    mgr = FakeTreeManager("sandboxd", mount_root=str(root))
    with pytest.raises(SetupFailed, match="lacks controllers memory, cpu"):
        mgr.create("c1", Limits(memory=40 * MiB))
    assert not (root / "sandboxd").exists()
    assert read(root / "cgroup.subtree_control") == ""


def test_v2_limits_written(root):
    mgr = FakeTreeManager("sandboxd", mount_root=str(root))
    cg = mgr.create("c1", Limits(memory=parse_size("40m"), cpu_quota=50000,
                                 cpu_shares=1024, pids=64))
    leaf = root / "sandboxd" / "c1"
    assert cg.version == "v2" and cg.paths == (str(leaf),)
    assert read(leaf / "memory.max") == "41943040"
    assert read(leaf / "memory.swap.max") == "0"          # no swap beyond the limit
    assert read(leaf / "cpu.max") == "50000 100000"
    assert read(leaf / "cpu.weight") == "39"
    assert read(leaf / "pids.max") == "64"


def test_v2_fresh_defaults_are_not_written(root):
    mgr = FakeTreeManager("sandboxd", mount_root=str(root))
    mgr.create("c1", Limits())
    leaf = root / "sandboxd" / "c1"
    written = {name for name, text in V2_CHILD_FILES.items()
               if (leaf / name).read_text() != text}
    assert written == set()


@pytest.mark.parametrize("memory_swap, expected", [
    (None, "0"), (-1, "max"), (60 * MiB, str(20 * MiB)), (40 * MiB, "0")])
def test_v2_swap_is_swap_only(root, memory_swap, expected):
    mgr = FakeTreeManager("sandboxd", mount_root=str(root))
    mgr.create("c1", Limits(memory=40 * MiB, memory_swap=memory_swap))
    assert read(root / "sandboxd" / "c1" / "memory.swap.max") == expected


def test_v2_update_sets_exactly_the_new_limits(root):
    mgr = FakeTreeManager("sandboxd", mount_root=str(root))
    cg = mgr.create("c1", Limits(memory=40 * MiB, cpu_quota=50000, cpu_period=50000,
                                 cpu_shares=512, pids=10))
    leaf = root / "sandboxd" / "c1"
    cg.update(Limits(memory=80 * MiB, memory_swap=100 * MiB, cpu_quota=200000))
    assert read(leaf / "memory.max") == str(80 * MiB)
    assert read(leaf / "memory.swap.max") == str(20 * MiB)
    assert read(leaf / "cpu.max") == "200000 100000"
    assert read(leaf / "cpu.weight") == "100"             # unset shares: the default
    assert read(leaf / "pids.max") == "max"
    cg.update(Limits())
    assert [read(leaf / f) for f in ("memory.max", "memory.swap.max", "cpu.max", "pids.max")] \
        == ["max", "max", "max 100000", "max"]


def test_v2_join_only_touches_the_leaf(root):
    mgr = FakeTreeManager("sandboxd", mount_root=str(root))
    cg = mgr.create("c1", Limits())
    cg.join(4242)
    assert read(root / "sandboxd" / "c1" / "cgroup.procs") == "4242"
    assert read(root / "sandboxd" / "cgroup.procs") == ""  # the parent never holds one
    assert read(root / "cgroup.procs") == "1"
    assert cg.pids() == [4242]


def test_v2_without_swap_accounting(root):
    mgr = FakeTreeManager("sandboxd", mount_root=str(root))
    mgr.omit = ("memory.swap.max",)
    mgr.create("c1", Limits(memory=40 * MiB))             # default swap: skipped
    mgr.create("c2", Limits(memory=40 * MiB, memory_swap=-1))
    with pytest.raises(SetupFailed, match="no swap accounting") as err:
        mgr.create("c3", Limits(memory=40 * MiB, memory_swap=60 * MiB))
    assert "memory.swap.max" in err.value.message
    assert err.value.details["path"].endswith("/sandboxd/c3/memory.swap.max")


def test_v2_refused_write_names_file_value_and_errno(root):
    mgr = FakeTreeManager("sandboxd", mount_root=str(root))
    mgr.omit = ("pids.max",)
    os.mkdir(root / "sandboxd")
    (root / "sandboxd" / "cgroup.subtree_control").write_text("")
    with pytest.raises(SetupFailed) as err:
        mgr.create("c1", Limits(pids=64))
    path = root / "sandboxd" / "c1" / "pids.max"
    assert err.value.message == f"write 64 to {path}: No such file or directory"
    assert err.value.details == {"step": "cgroup", "errno": 2, "path": str(path)}


def test_v2_existing_cgroup_is_a_conflict(root):
    mgr = FakeTreeManager("sandboxd", mount_root=str(root))
    mgr.create("c1", Limits())
    with pytest.raises(Conflict, match="already exists"):
        mgr.create("c1", Limits())


def test_v2_names_and_open(root):
    mgr = FakeTreeManager("sandboxd", mount_root=str(root))
    assert mgr.names() == []
    mgr.create("b", Limits())
    mgr.create("a", Limits())
    assert mgr.names() == ["a", "b"]
    assert mgr.open("a").paths == (str(root / "sandboxd" / "a"),)
    with pytest.raises(NotFound, match="no cgroup sandboxd/zzz"):
        mgr.open("zzz")


def test_v2_stats_parsed(root):
    mgr = FakeTreeManager("sandboxd", mount_root=str(root))
    cg = mgr.create("c1", Limits())
    leaf = root / "sandboxd" / "c1"
    (leaf / "memory.current").write_text("1048576\n")
    (leaf / "memory.peak").write_text("2097152\n")
    (leaf / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n"
                                   "nr_periods 10\nnr_throttled 3\nthrottled_usec 250\n")
    (leaf / "pids.current").write_text("4\n")
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\n"
                                        "oom_group_kill 0\n")
    assert cg.stats() == CgroupStats(memory_current=1048576, memory_peak=2097152,
                                     cpu_usage_ns=1_500_000, cpu_throttled_periods=3,
                                     cpu_throttled_ns=250_000, pids_current=4, oom_kills=2)
    assert cg.oom_kills() == 2
    (leaf / "memory.peak").unlink()                        # kernels before 5.19
    assert cg.stats().memory_peak is None


def test_v2_usage_parsed(root):
    cg = FakeTreeManager("sandboxd", mount_root=str(root)).create("c1", Limits())
    leaf = root / "sandboxd" / "c1"
    (leaf / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n"
                                   "nr_periods 10\nnr_throttled 3\nthrottled_usec 250\n")
    (leaf / "memory.stat").write_text("anon 4096\nfile 8192\nkernel 0\n"
                                      "inactive_file 4096\nactive_file 4096\n")
    # no io.stat: the io controller is not enabled for it
    assert cg.usage() == CgroupUsage(cpu_user_ns=1_000_000, cpu_system_ns=500_000,
                                     cpu_periods=10, memory_cache=8192,
                                     memory_inactive_file=4096, io=None)
    (leaf / "io.stat").write_text("8:0 rbytes=1024 wbytes=4096 rios=1 wios=2 dbytes=0 dios=0\n"
                                  "253:1 rbytes=0 wbytes=512 rios=0 wios=1 dbytes=0 dios=0\n")
    assert cg.usage().io == [(8, 0, 1024, 4096), (253, 1, 0, 512)]


# ---------------------------------------------------------------- v2 nesting (zygotes)

def test_v2_nesting_cgroup_keeps_its_processes_in_a_leaf(root):
    mgr = FakeTreeManager("sandboxd", mount_root=str(root))
    cg = mgr.create("z1", Limits(memory=40 * MiB, pids=64), nest=True)
    z1 = root / "sandboxd" / "z1"
    leaf = z1 / cgroups.LEAF
    assert cg.paths == (str(z1), str(leaf))       # made in this order, removed reversed
    # the limits are the cgroup's; the leaf has none of its own
    assert read(z1 / "memory.max") == str(40 * MiB) and read(z1 / "pids.max") == "64"
    assert read(leaf / "memory.max") == "max" and read(leaf / "pids.max") == "max"
    # nothing enabled below it yet: its first process may still pass through it
    assert read(z1 / "cgroup.subtree_control") == ""
    cg.join(4242)                                 # an exec: into the leaf
    assert read(leaf / "cgroup.procs") == "4242"
    assert read(z1 / "cgroup.procs") == ""
    assert cg.pids() == [4242]


def test_v2_nesting_cgroup_counts_its_own_oom_kills_only(root):
    # As v1 does: a test's OOM kill is the test's, not its zygote container's.
    cg = FakeTreeManager("sandboxd", mount_root=str(root)).create("z1", Limits(), nest=True)
    z1 = root / "sandboxd" / "z1"
    (z1 / "memory.events").write_text("oom 5\noom_kill 5\n")     # hierarchical: tests too
    (z1 / "memory.events.local").write_text("oom 1\noom_kill 1\n")  # before memory below
    (z1 / cgroups.LEAF / "memory.events").write_text("oom 2\noom_kill 2\n")
    assert cg.oom_kills() == 3 and cg.stats().oom_kills == 3
    (z1 / cgroups.LEAF / "memory.events").unlink()   # memory not enabled below it (yet)
    assert cg.oom_kills() == 1


def test_v2_nesting_enter_makes_the_namespace_at_the_cgroup_then_moves_to_the_leaf(root):
    mgr = FakeTreeManager("sandboxd", mount_root=str(root))
    z1 = root / "sandboxd" / "z1"
    seen = []

    def unshare():
        seen.append((read(z1 / "cgroup.procs"), read(z1 / cgroups.LEAF / "cgroup.procs")))

    mgr.create("z1", Limits(), nest=True).enter(unshare)
    assert seen == [("0", "")]                    # in the cgroup itself when unsharing
    assert read(z1 / cgroups.LEAF / "cgroup.procs") == "0"

    plain = root / "sandboxd" / "c1"
    seen.clear()
    mgr.create("c1", Limits()).enter(
        lambda: seen.append(read(plain / "cgroup.procs")))
    assert seen == ["0"] and not (plain / cgroups.LEAF).exists()


def test_v2_tests_cgroups_sit_beside_the_leaf_with_controllers_enabled(root):
    FakeTreeManager("sandboxd", mount_root=str(root)).create("z1", Limits(), nest=True)
    z1 = root / "sandboxd" / "z1"
    tests = FakeTreeManager("sandboxd/z1", mount_root=str(root))
    t1 = tests.create("t1", Limits(memory=20 * MiB))
    assert read(z1 / "cgroup.subtree_control") == "+memory +cpu +pids +io"
    assert sorted(p.name for p in z1.iterdir() if p.is_dir()) == [cgroups.LEAF, "t1"]
    assert t1.paths == (str(z1 / "t1"),)
    assert read(z1 / "t1" / "memory.max") == str(20 * MiB)
    fds = t1.open_join()
    try:
        assert len(fds) == 1
        os.write(fds[0], b"0")                    # what the test's process does
    finally:
        for fd in fds:
            os.close(fd)
    assert read(z1 / "t1" / "cgroup.procs") == "0"
    assert read(z1 / cgroups.LEAF / "cgroup.procs") == ""


def test_v2_open_join_of_a_removed_cgroup_names_the_file(root):
    mgr = FakeTreeManager("sandboxd", mount_root=str(root))
    cg = mgr.create("c1", Limits())
    (root / "sandboxd" / "c1" / "cgroup.procs").unlink()
    with pytest.raises(SetupFailed, match=r"open .*/sandboxd/c1/cgroup.procs: No such file"):
        cg.open_join()


def test_v2_open_finds_a_nesting_cgroup(root):
    mgr = FakeTreeManager("sandboxd", mount_root=str(root))
    mgr.create("z1", Limits(), nest=True)
    mgr.create("c1", Limits())
    z1 = root / "sandboxd" / "z1"
    assert mgr.open("z1").paths == (str(z1), str(z1 / cgroups.LEAF))
    assert mgr.open("c1").paths == (str(root / "sandboxd" / "c1"),)
    assert mgr.names() == ["c1", "z1"]


def test_v2_nesting_removal_kills_at_the_cgroup_and_takes_the_leaf_first(root, monkeypatch):
    # rmdir of a real cgroup directory needs the kernel (its files are not files):
    # the order is what is checked here, the removal in test_cgroups_kernel.py.
    removed = []
    monkeypatch.setattr(cgroups, "_rmdir", removed.append)
    cg = FakeTreeManager("sandboxd", mount_root=str(root)).create("z1", Limits(), nest=True)
    cg.remove()
    z1 = root / "sandboxd" / "z1"
    assert read(z1 / "cgroup.kill") == "1"        # the whole subtree, tests included
    assert read(z1 / cgroups.LEAF / "cgroup.kill") == ""
    assert removed == [str(z1 / cgroups.LEAF), str(z1)]


def test_v1_nest_changes_nothing(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    mgr = CgroupManager("sandboxd", version="v1", mountinfo=str(info))
    nested, plain = mgr._cgroup("c1", nest=True), mgr._cgroup("c1")
    assert type(nested) is type(plain) and nested.paths == plain.paths == mgr.paths("c1")


@pytest.mark.parametrize("release, refused", [
    ("5.15.0-91-generic", True), ("4.19.0-26-amd64", True), ("5.16.0", False),
    ("6.18.44-fc-v1272", False), ("10.0.1", False), ("weird", True)])
def test_v2_nesting_needs_linux_5_16(root, tmp_path, release, refused):
    problem = FakeTreeManager("sandboxd", mount_root=str(root)).nesting_problem(release)
    assert bool(problem) == refused
    if refused:
        assert "Linux 5.16" in problem and release in problem
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    v1 = CgroupManager("sandboxd", version="v1", mountinfo=str(info))
    assert v1.nesting_problem(release) == ""          # v1 lets a process move itself
