"""The setup plan, read without root: order, flags, and the long-lowerdir fallback."""
from __future__ import annotations

from sandboxd.runner import syscalls as sc
from sandboxd.runner.plan import (MakeDevice, MaskPath, MountStep, PivotRoot, ReadonlyPath,
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


def test_host_net_binds_sys_read_only():
    steps = build_plan(make(namespaces=Namespaces(net="host", ipc="host")), "/mnt")
    sys_steps = [s for s in steps if isinstance(s, MountStep) and s.target == "/sys"]
    assert sys_steps[0].flags & sc.MS_BIND and sys_steps[1].flags & sc.MS_RDONLY
    assert not any(isinstance(s, MountStep) and s.fstype == "mqueue" for s in steps)


def test_user_mounts():
    steps = build_plan(make(mounts=(Mount("/data", "bind", "/src", readonly=True),
                                    Mount("/scratch", "tmpfs", options=("size=1m",)))), "/mnt")
    binds = [s for s in steps if isinstance(s, MountStep) and s.target == "/data"]
    assert binds[0].source == "/src" and binds[1].flags & sc.MS_RDONLY
    tmpfs = next(s for s in steps if isinstance(s, MountStep) and s.target == "/scratch")
    assert tmpfs.data == "size=1m"


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
