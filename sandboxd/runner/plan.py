"""Spec -> the ordered filesystem steps that build a container's root (pure).

``build_plan`` decides everything; :mod:`sandboxd.runner.mounts` only carries the steps
out, one loop, each failure naming its step. Unit tests read the plan without root.

Order (runc's standard_init): make ``/`` private, assemble the root (overlay), the
spec's files, kernel filesystems (/proc, /sys, /dev and its nodes), the caller's
mounts, masked and read-only paths, pivot_root, hostname.
"""
from __future__ import annotations

import functools
import os.path
from collections.abc import Sequence
from dataclasses import dataclass

from . import syscalls as sc
from .spec import ContainerSpec, Mount

PAGE_SIZE = 4096
# A --tmpfs mount's size when its options give none. Its pages are charged to the
# container's memory cgroup, so a memory limit bounds it as well.
TMPFS_SIZE = "1g"
NOSUID_NODEV_NOEXEC = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC

# (name, major, minor): the only device nodes a container gets.
DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
           ("urandom", 1, 9), ("tty", 5, 0))
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
             ("ptmx", "pts/ptmx"))
CGROUP_DIR = "/sys/fs/cgroup"
# One cgroupfs a container sees: (directory under CGROUP_DIR, "" for a cgroup2 at
# CGROUP_DIR itself; fstype; mount options), from cgroups.container_view.
CgroupMount = tuple[str, str, str]


@dataclass(frozen=True)
class MountStep:
    """mount(2). ``target`` is inside the new root when ``in_root`` (resolved without
    leaving it), else a host path. ``create``: make the mountpoint as "dir" or "file".
    ``plain_target``: the target must be a real directory, not a symlink (/proc, /sys,
    /dev): a rootfs cannot redirect the kernel filesystems elsewhere."""
    target: str
    fstype: str | None = None
    source: str | None = None
    flags: int = 0
    data: str = ""
    in_root: bool = True
    create: str = "dir"
    plain_target: bool = False
    chdir: str | None = None      # cwd for the call: lets long overlay options be relative

    def describe(self) -> str:
        kind = "bind " + (self.source or "") if self.flags & sc.MS_BIND else self.fstype
        if self.flags & sc.MS_REMOUNT:
            kind = "remount"
        return f"mount {kind} on {self.target}"


@dataclass(frozen=True)
class AttachMount:
    """move_mount(2) of a detached mount (an fd the fork server made) onto a host path
    of the container's own namespace (``in_root``: a path inside the new root, resolved
    without leaving it, its directory made if missing); the fd is closed after."""
    fd: int
    target: str
    in_root: bool = False

    def describe(self) -> str:
        what = "a capped volume" if self.in_root else "the writable layer"
        return f"attach {what} on {self.target}"


@dataclass(frozen=True)
class MakeDirs:
    path: str
    mode: int = 0o755
    in_root: bool = False

    def describe(self) -> str:
        return f"mkdir {self.path}"


@dataclass(frozen=True)
class MakeDevice:
    path: str                     # inside the root
    major: int
    minor: int

    def describe(self) -> str:
        return f"mknod {self.path}"


@dataclass(frozen=True)
class MakeLink:
    path: str                     # inside the root
    target: str

    def describe(self) -> str:
        return f"symlink {self.path} -> {self.target}"


@dataclass(frozen=True)
class WriteFile:
    """Write ``content`` to ``path`` inside the root (made, or truncated)."""
    path: str
    content: str

    def describe(self) -> str:
        return f"write {self.path}"


@dataclass(frozen=True)
class MaskPath:
    """Hide a path: /dev/null over a file, an empty read-only tmpfs over a directory."""
    path: str

    def describe(self) -> str:
        return f"mask {self.path}"


@dataclass(frozen=True)
class ReadonlyPath:
    """Bind a path onto itself, then remount the bind read-only."""
    path: str

    def describe(self) -> str:
        return f"make {self.path} read-only"


@dataclass(frozen=True)
class PivotRoot:
    root: str

    def describe(self) -> str:
        return f"pivot_root into {self.root}"


@dataclass(frozen=True)
class SetHostname:
    name: str

    def describe(self) -> str:
        return f"sethostname {self.name}"


Step = MountStep | AttachMount | MakeDirs | MakeDevice | MakeLink | WriteFile | MaskPath | ReadonlyPath \
    | PivotRoot | SetHostname


def build_plan(spec: ContainerSpec, mnt: str, cgroupfs: tuple[CgroupMount, ...] = (),
               layer_fd: int = -1, image_fds: Sequence[int] = ()) -> list[Step]:
    """All filesystem steps for ``spec``; ``mnt`` is an existing empty host directory
    that the new root is assembled on (inside the container's private mount namespace,
    so every container may use the same one). ``cgroupfs``: what is mounted read-only at
    /sys/fs/cgroup (the fork server's ``CgroupManager.cgroupfs``); empty leaves sysfs's
    own empty, read-only directory there. ``layer_fd``: the detached mount of
    ``spec.root.layer`` the fork server made (runner/layers.py); ``image_fds``: those of
    the ``image`` mounts, in their order."""
    steps: list[Step] = [MountStep("/", None, None, sc.MS_REC | sc.MS_PRIVATE, in_root=False,
                                   create="")]
    root, root_steps = _root_steps(spec, mnt, layer_fd)
    steps += root_steps
    steps += [WriteFile(f.path, f.content) for f in spec.files]
    steps += _kernel_fs_steps(spec.namespaces.ipc == "private", cgroupfs)
    images = iter(image_fds)
    for m in spec.mounts:
        steps += _user_mount_steps(m, next(images, -1) if m.type == "image" else -1)
    if spec.zygote:
        steps += _hidden_proc_steps()
    steps += _protect_steps(spec.masked_paths, spec.readonly_paths)
    if spec.root.readonly:
        # Read-only once every mountpoint exists (as Docker does): the image need not
        # have /etc/hostname or a bind's target.
        steps.append(MountStep(root, None, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY,
                               in_root=False, create=""))
    steps.append(PivotRoot(root))
    if spec.hostname and spec.namespaces.uts == "private":
        steps.append(SetHostname(spec.hostname))
    return steps


def _root_steps(spec: ContainerSpec, mnt: str, layer_fd: int) -> tuple[str, list[Step]]:
    r = spec.root
    steps: list[Step] = []
    if r.upperdir:
        upper, work, root = r.upperdir, r.workdir, mnt
    elif r.layer:
        # The capped layer's filesystem, attached here only: the container's namespace.
        if layer_fd < 0:
            raise ValueError("build_plan: a layer image needs the mount of it")
        steps.append(AttachMount(layer_fd, mnt))
        upper, work, root = f"{mnt}/fs", f"{mnt}/work", f"{mnt}/root"
        steps += [MakeDirs(upper), MakeDirs(work, 0o700), MakeDirs(root)]
    else:
        # Fresh writable layer on a tmpfs private to this container: nothing to clean
        # on the host, gone when the mount namespace goes. A read-only root gets one
        # too, for the mountpoints its mounts need; build_plan then makes it read-only.
        steps.append(MountStep(mnt, "tmpfs", "tmpfs", 0, f"mode=755,size={r.tmpfs_size}",
                               in_root=False, create=""))
        upper, work, root = f"{mnt}/upper", f"{mnt}/work", f"{mnt}/root"
        steps += [MakeDirs(upper), MakeDirs(work), MakeDirs(root)]
    steps.append(_overlay_step(r.lowerdirs, upper, work, root))
    return root, steps


def _overlay_step(lowers: tuple[str, ...], upper: str | None, work: str | None,
                  target: str) -> MountStep:
    def options(lower: list[str]) -> str:
        opts = ["lowerdir=" + ":".join(lower)]
        if upper:
            opts += [f"upperdir={upper}", f"workdir={work}"]
        return ",".join(opts)

    data = options(list(lowers))
    chdir = None
    if len(data) >= PAGE_SIZE:
        # Mount options are limited to one page: name the lowers relative to their
        # common parent and mount from there.
        chdir = os.path.commonpath(list(lowers))
        data = options([os.path.relpath(d, chdir) for d in lowers])
    return MountStep(target, "overlay", "overlay", 0, data, in_root=False, create="",
                     chdir=chdir)


# The steps below are the same for most containers; the fork server builds each plan, so
# the cached tuples are made once and shared by every start.

@functools.lru_cache(maxsize=8)
def _protect_steps(masked: tuple[str, ...], readonly: tuple[str, ...]) -> tuple[Step, ...]:
    return tuple([MaskPath(p) for p in masked] + [ReadonlyPath(p) for p in readonly])


@functools.lru_cache(maxsize=4)
def _kernel_fs_steps(new_ipc: bool, cgroupfs: tuple[CgroupMount, ...]) -> tuple[Step, ...]:
    steps: list[Step] = [
        MountStep("/proc", "proc", "proc", NOSUID_NODEV_NOEXEC, plain_target=True),
        # A fresh sysfs on every network mode, as runc mounts it: it shows the devices of
        # the netns the container is in (joined before the mounts), and nothing mounted
        # under the host's /sys (a bind of it would bring the host's cgroupfs, debugfs,
        # tracefs, securityfs ... with their own, writable, flags).
        MountStep("/sys", "sysfs", "sysfs", NOSUID_NODEV_NOEXEC | sc.MS_RDONLY,
                  plain_target=True),
    ]
    steps += _cgroupfs_steps(cgroupfs)
    steps.append(MountStep("/dev", "tmpfs", "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME,
                           "mode=755,size=65536k", plain_target=True))
    steps += [MakeDevice(f"/dev/{name}", major, minor) for name, major, minor in DEVICES]
    steps += [MakeLink(f"/dev/{name}", target) for name, target in DEV_LINKS]
    steps += [
        MountStep("/dev/pts", "devpts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC,
                  "newinstance,ptmxmode=0666,mode=0620,gid=5"),
        MountStep("/dev/shm", "tmpfs", "shm", NOSUID_NODEV_NOEXEC, "mode=1777,size=65536k"),
    ]
    if new_ipc:
        steps.append(MountStep("/dev/mqueue", "mqueue", "mqueue", NOSUID_NODEV_NOEXEC))
    return tuple(steps)


def _cgroupfs_steps(cgroupfs: tuple[CgroupMount, ...]) -> list[Step]:
    """/sys/fs/cgroup as runc and crun mount it: each cgroupfs read-only and mounted from
    inside the container's cgroup namespace (unshared after it joined its cgroup), so its
    root is the container's own cgroup. Nothing there can be written (no limit,
    ``cgroup.procs``, ``tasks``, ``notify_on_release``; no mkdir), a v1 ``release_agent``
    does not exist below a hierarchy's real root, and the container has no capability to
    remount or unmount. Mounted rather than left out because programs size themselves
    from it (the JVM, Go, libuv, loky/joblib read their memory and CPU limits there). v1
    needs a tmpfs to hold a directory per hierarchy; it is made read-only last."""
    if not cgroupfs:
        return []
    ro = NOSUID_NODEV_NOEXEC | sc.MS_RDONLY
    # plain_target: the path is in the sysfs and tmpfs mounted just before, not the image's.
    if cgroupfs[0][0] == "":                                    # v2: one mount
        _, fstype, data = cgroupfs[0]
        return [MountStep(CGROUP_DIR, fstype, fstype, ro, data, plain_target=True)]
    steps: list[Step] = [MountStep(CGROUP_DIR, "tmpfs", "tmpfs", NOSUID_NODEV_NOEXEC,
                                   "mode=755,size=64k", plain_target=True)]
    names = {name for name, _, _ in cgroupfs}
    for name, fstype, data in cgroupfs:
        steps.append(MountStep(f"{CGROUP_DIR}/{name}", fstype, fstype, ro, data,
                               plain_target=True))
        # Co-mounted controllers ("cpu,cpuacct") are also found by each name.
        steps += [MakeLink(f"{CGROUP_DIR}/{alias}", name) for alias in name.split(",")
                  if alias not in names]
    steps.append(MountStep(CGROUP_DIR, None, None, sc.MS_BIND | sc.MS_REMOUNT | ro))
    return steps


def _hidden_proc_steps() -> list[Step]:
    """A zygote's tests mount their own /proc from its user namespace: the kernel wants a
    fully visible proc in the mount namespace for that, and /proc has masked paths. This
    one is fully visible and unreachable: its parent is covered by an empty read-only
    tmpfs, locked in every namespace the zygote makes (see runner/zygote.py)."""
    from .zygote import HIDDEN_PROC, HIDDEN_PROC_COVER
    return [MountStep(HIDDEN_PROC, "proc", "proc", NOSUID_NODEV_NOEXEC),
            MountStep(HIDDEN_PROC_COVER, "tmpfs", "tmpfs",
                      sc.MS_RDONLY | NOSUID_NODEV_NOEXEC, "size=0,mode=000")]


# Mount flags a tmpfs option may name; nosuid and nodev are always on.
_FLAG_WORDS = frozenset(("noexec", "exec", "nosuid", "nodev"))


def _user_mount_steps(m: Mount, fd: int = -1) -> list[Step]:
    if m.type == "image":
        if fd < 0:
            raise ValueError("build_plan: an image mount needs the mount of it")
        steps: list[Step] = [AttachMount(fd, m.destination, in_root=True)]
        if m.readonly:
            steps.append(MountStep(m.destination, None, None,
                                   sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY, create=""))
        return steps
    if m.type == "tmpfs":
        # Flag words (Docker's --tmpfs /x:noexec) are mount flags, not tmpfs data.
        flags = sc.MS_NOSUID | sc.MS_NODEV | (sc.MS_RDONLY if m.readonly else 0)
        if "noexec" in m.options:
            flags |= sc.MS_NOEXEC
        options = tuple(o for o in m.options if o not in _FLAG_WORDS) or ("mode=1777",)
        if not any(o.startswith("size=") for o in options):
            options += (f"size={TMPFS_SIZE}",)   # the kernel's default is half of RAM
        data = ",".join(options)
        return [MountStep(m.destination, "tmpfs", "tmpfs", flags, data)]
    steps: list[Step] = [MountStep(m.destination, None, m.source, sc.MS_BIND | sc.MS_REC,
                                   create="like-source")]
    if m.readonly:
        steps.append(MountStep(m.destination, None, None,
                               sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY, create=""))
    return steps
