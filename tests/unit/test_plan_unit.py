"""The setup plan, read without root: order, flags, and the long-lowerdir fallback."""
from __future__ import annotations

import pytest

from sandboxd.runner import syscalls as sc
from sandboxd.runner.plan import (MakeDevice, MakeLink, MaskPath, MountStep, PivotRoot, ReadonlyPath,
                                  SetHostname, WriteFile, build_plan)
from sandboxd.runner.spec import ContainerSpec, File, Mount, Namespaces, Process, RootFS


def make(**kw) -> ContainerSpec:
    base = dict(id="c1", process=Process(args=("true",)), root=RootFS(lowerdirs=("/a", "/b")))
    base.update(kw)
    return ContainerSpec(**base)


def test_order_and_private_root():
    steps = build_plan(make(hostname="h"), "/mnt")
    first = steps[0]
    assert isinstance(first, MountStep) and first.flags == sc.MS_REC | sc.MS_PRIVATE
    kinds = [type(s).__name__ for s in steps]
    assert kinds.index("MaskPath") < kinds.index("PivotRoot") < kinds.index("SetHostname")
    assert isinstance(steps[-1], SetHostname)


def test_files_are_written_once_the_root_is_assembled_before_any_mount():
    steps = build_plan(make(files=(File("/etc/hosts", "h\n"),),
                            mounts=(Mount("/etc", "bind", "/src"),)), "/mnt")
    write = steps.index(WriteFile("/etc/hosts", "h\n"))
    overlay = next(s for s in steps if isinstance(s, MountStep) and s.fstype == "overlay")
    proc = next(s for s in steps if isinstance(s, MountStep) and s.fstype == "proc")
    bind = next(s for s in steps if isinstance(s, MountStep) and s.source == "/src")
    assert steps.index(overlay) < write < steps.index(proc) < steps.index(bind)


def test_tmpfs_upper_by_default():
    steps = build_plan(make(), "/mnt")
    overlay = next(s for s in steps if isinstance(s, MountStep) and s.fstype == "overlay")
    assert overlay.data == "lowerdir=/a:/b,upperdir=/mnt/upper,workdir=/mnt/work"
    assert next(s for s in steps if isinstance(s, PivotRoot)).root == "/mnt/root"


def test_read_only_root_is_made_read_only_after_its_mountpoints():
    steps = build_plan(make(root=RootFS(lowerdirs=("/a",), readonly=True),
                            mounts=(Mount("/etc/hostname", "bind", "/h"),)), "/mnt")
    overlay = next(s for s in steps if isinstance(s, MountStep) and s.fstype == "overlay")
    assert "upperdir=/mnt/upper" in overlay.data      # a tmpfs layer for the mountpoints
    remount = steps[-2]
    assert (remount.target, isinstance(steps[-1], PivotRoot)) == ("/mnt/root", True)
    assert remount.flags & sc.MS_RDONLY and remount.flags & sc.MS_REMOUNT
    bind = next(s for s in steps if isinstance(s, MountStep) and s.source == "/h")
    assert steps.index(bind) < steps.index(remount)


def test_long_lowerdir_chain_goes_relative():
    lowers = tuple(f"/var/lib/sandboxd/snapshots/{i:04d}/some-long-directory-name/fs"
                   for i in range(80))
    steps = build_plan(make(root=RootFS(lowerdirs=lowers)), "/mnt")
    overlay = next(s for s in steps if isinstance(s, MountStep) and s.fstype == "overlay")
    assert overlay.chdir == "/var/lib/sandboxd/snapshots"
    assert len(overlay.data) < 4096 and "lowerdir=0000/" in overlay.data


def test_kernel_filesystems_and_devices():
    steps = build_plan(make(), "/mnt")
    proc = next(s for s in steps if isinstance(s, MountStep) and s.fstype == "proc")
    assert proc.plain_target and proc.flags == sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    devices = {s.path for s in steps if isinstance(s, MakeDevice)}
    assert devices == {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom",
                       "/dev/tty"}
    assert {s.path for s in steps if isinstance(s, MaskPath)} >= {"/proc/kcore", "/sys/firmware"}
    assert {s.path for s in steps if isinstance(s, ReadonlyPath)} >= {"/proc/sys"}


V1_VIEW = (("cpu,cpuacct", "cgroup", "cpu,cpuacct"), ("memory", "cgroup", "memory"),
           ("pids", "cgroup", "pids,xattr"))


@pytest.mark.parametrize("net", ["private", "host", "/proc/7/ns/net"])
def test_sys_is_a_fresh_read_only_sysfs_on_every_network_mode(net):
    # Never a bind of the host's /sys: it would bring the host's cgroupfs (read-write).
    steps = build_plan(make(namespaces=Namespaces(net=net)), "/mnt", V1_VIEW)
    sys_steps = [s for s in steps if isinstance(s, MountStep) and s.target == "/sys"]
    assert len(sys_steps) == 1 and sys_steps[0].fstype == "sysfs"
    assert sys_steps[0].flags & sc.MS_RDONLY and sys_steps[0].plain_target
    assert not any(isinstance(s, MountStep) and s.source == "/sys" for s in steps)


def test_v1_cgroupfs_read_only_on_a_read_only_tmpfs():
    steps = build_plan(make(namespaces=Namespaces(ipc="host")), "/mnt", V1_VIEW)
    assert not any(isinstance(s, MountStep) and s.fstype == "mqueue" for s in steps)
    under = [s for s in steps if isinstance(s, (MountStep, MakeLink))
             and (s.target if isinstance(s, MountStep) else s.path).startswith(
                 "/sys/fs/cgroup")]
    tmpfs, *middle, remount = under
    assert (tmpfs.target, tmpfs.fstype) == ("/sys/fs/cgroup", "tmpfs")
    assert (remount.target, remount.fstype) == ("/sys/fs/cgroup", None)
    assert remount.flags & sc.MS_REMOUNT and remount.flags & sc.MS_RDONLY
    cgroupfs = [s for s in middle if isinstance(s, MountStep)]
    assert [(s.target, s.fstype, s.data) for s in cgroupfs] == [
        ("/sys/fs/cgroup/cpu,cpuacct", "cgroup", "cpu,cpuacct"),
        ("/sys/fs/cgroup/memory", "cgroup", "memory"),
        ("/sys/fs/cgroup/pids", "cgroup", "pids,xattr")]
    assert all(s.flags & sc.MS_RDONLY and s.flags & sc.MS_NOSUID and s.flags & sc.MS_NOEXEC
               for s in cgroupfs)
    links = {(s.path, s.target) for s in middle if isinstance(s, MakeLink)}
    assert links == {("/sys/fs/cgroup/cpu", "cpu,cpuacct"),
                     ("/sys/fs/cgroup/cpuacct", "cpu,cpuacct")}
    sysfs = next(s for s in steps if isinstance(s, MountStep) and s.target == "/sys")
    mask = next(s for s in steps if isinstance(s, MaskPath))
    assert steps.index(sysfs) < steps.index(tmpfs) < steps.index(remount) < steps.index(mask)


def test_v2_cgroupfs_is_one_read_only_mount():
    steps = build_plan(make(), "/mnt", (("", "cgroup2", ""),))
    under = [s for s in steps if isinstance(s, MountStep)
             and s.target.startswith("/sys/fs/cgroup")]
    assert [(s.target, s.fstype) for s in under] == [("/sys/fs/cgroup", "cgroup2")]
    assert under[0].flags & sc.MS_RDONLY


def test_no_cgroupfs_leaves_sysfs_own_directory():
    steps = build_plan(make(), "/mnt")
    assert not any(isinstance(s, MountStep) and s.target.startswith("/sys/fs/cgroup")
                   for s in steps)


def test_user_mounts():
    steps = build_plan(make(mounts=(Mount("/data", "bind", "/src", readonly=True),
                                    Mount("/scratch", "tmpfs", options=("size=1m",)))), "/mnt")
    binds = [s for s in steps if isinstance(s, MountStep) and s.target == "/data"]
    assert binds[0].source == "/src" and binds[1].flags & sc.MS_RDONLY
    tmpfs = next(s for s in steps if isinstance(s, MountStep) and s.target == "/scratch")
    assert tmpfs.data == "size=1m"


def test_a_capped_layer_is_attached_first_and_holds_upper_and_work():
    from sandboxd.runner.plan import AttachMount, MakeDirs
    steps = build_plan(make(root=RootFS(lowerdirs=("/a",), layer="/state/7/layer.img")),
                       "/mnt", layer_fd=9)
    assert steps[1] == AttachMount(9, "/mnt")
    assert MakeDirs("/mnt/work", 0o700) in steps
    overlay = next(s for s in steps if isinstance(s, MountStep) and s.fstype == "overlay")
    assert overlay.data == "lowerdir=/a,upperdir=/mnt/fs,workdir=/mnt/work"
    assert next(s for s in steps if isinstance(s, PivotRoot)).root == "/mnt/root"


def test_a_tmpfs_without_a_size_gets_the_bounded_default():
    from sandboxd.runner.plan import TMPFS_SIZE
    steps = build_plan(make(mounts=(Mount("/run", "tmpfs"),
                                    Mount("/x", "tmpfs", options=("mode=700",)))), "/mnt")
    data = {s.target: s.data for s in steps if isinstance(s, MountStep)
            and s.target in ("/run", "/x")}
    assert data == {"/run": f"mode=1777,size={TMPFS_SIZE}", "/x": f"mode=700,size={TMPFS_SIZE}"}


def test_a_zygote_gets_a_hidden_fully_visible_proc():
    plain = build_plan(make(), "/mnt")
    assert not any(isinstance(s, MountStep) and s.target.startswith("/dev/.sandboxd")
                   for s in plain)
    steps = build_plan(make(zygote=True), "/mnt")
    procs = [s for s in steps if isinstance(s, MountStep) and s.fstype == "proc"]
    assert [p.target for p in procs] == ["/proc", "/dev/.sandboxd-proc/proc"]
    cover = next(s for s in steps if isinstance(s, MountStep)
                 and s.target == "/dev/.sandboxd-proc")
    # Covered after it is mounted (so it is unreachable), read-only, and its own root is
    # not covered (that would make it "not fully visible" to the kernel).
    assert steps.index(procs[1]) < steps.index(cover)
    assert cover.fstype == "tmpfs" and cover.flags & sc.MS_RDONLY
    assert steps.index(cover) < next(i for i, s in enumerate(steps)
                                     if isinstance(s, PivotRoot))
