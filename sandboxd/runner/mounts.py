"""Carry out a plan's filesystem steps inside the container's new mount namespace.

Paths inside the new root are resolved by :func:`resolve_in_root`, which follows
symlinks as if the root were ``/`` (``..`` and absolute links stay inside), so a hostile
image cannot point a mount at the host. ``/proc``, ``/sys`` and ``/dev`` must be real
directories: a symlink there stops the start with a clear error.
"""
from __future__ import annotations

import errno
import os
import socket
import stat

from ..errors import SetupFailed
from . import syscalls as sc
from .plan import (AttachMount, MakeDevice, MakeDirs, MakeLink, MaskPath, MountStep, PivotRoot,
                   ReadonlyPath, SetHostname, Step, WriteFile)

_MAX_LINKS = 40
# Flags a read-only remount must keep or the kernel refuses it (locked mount flags).
_KEEP_ON_REMOUNT = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | sc.MS_NOATIME


def resolve_in_root(root: str, path: str) -> str:
    """The host path of ``path`` as seen from inside ``root`` (which acts as ``/``).

    Missing components are fine (the result names where they would be); symlinks are
    followed with the root as their ``/``; ``..`` never climbs above the root.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = root + "/" + "/".join(done + [part])
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            done.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > _MAX_LINKS:
                raise OSError(40, f"too many levels of symbolic links in {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return root + "/" + "/".join(done) if done else root


def run_steps(steps: list[Step]) -> None:
    """Execute ``steps`` in order; the first failure raises ``SetupFailed`` naming it."""
    root = next(s.root for s in steps if isinstance(s, PivotRoot))
    for step in steps:
        try:
            _RUN[type(step)](step, root)
        except SetupFailed:
            raise
        except OSError as e:
            reason = e.strerror or str(e)
            raise SetupFailed(f"{step.describe()}: {reason}",
                              {"step": step.describe(), "errno": e.errno or 0}) from None


def _where(path: str, root: str, in_root: bool) -> str:
    return resolve_in_root(root, path) if in_root else path


def _mount(step: MountStep, root: str) -> None:
    if step.plain_target:
        target = root + step.target
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            os.makedirs(target, 0o755, exist_ok=True)
        else:
            if stat.S_ISLNK(st.st_mode):
                raise SetupFailed(
                    f"{step.describe()}: the image's {step.target} is a symlink "
                    f"(to {os.readlink(target)}); refusing to mount through it",
                    {"step": step.describe(), "errno": 40})
            if not stat.S_ISDIR(st.st_mode):
                raise SetupFailed(f"{step.describe()}: the image's {step.target} is not "
                                  f"a directory", {"step": step.describe(), "errno": 20})
    else:
        target = _where(step.target, root, step.in_root)
        if step.create and not os.path.lexists(target):
            _make_mountpoint(target, step)
    flags = step.flags
    if flags & sc.MS_REMOUNT:
        flags |= os.statvfs(target).f_flag & _KEEP_ON_REMOUNT
    if step.chdir:
        cwd = os.open(".", os.O_PATH | os.O_CLOEXEC)
        os.chdir(step.chdir)
        try:
            sc.mount(step.source, target, step.fstype, flags, step.data or None)
        finally:
            os.fchdir(cwd)
            os.close(cwd)
    else:
        sc.mount(step.source, target, step.fstype, flags, step.data or None)


def _make_mountpoint(target: str, step: MountStep) -> None:
    as_file = step.create == "like-source" and step.source and not os.path.isdir(step.source)
    if as_file:
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW,
                         0o644))
    else:
        os.makedirs(target, 0o755, exist_ok=True)


def _attach(step: AttachMount, root: str) -> None:
    try:
        target = _where(step.target, root, step.in_root)
        if step.in_root:
            os.makedirs(target, 0o755, exist_ok=True)
        sc.move_mount(step.fd, target)
    finally:
        os.close(step.fd)


def _mkdirs(step: MakeDirs, root: str) -> None:
    os.makedirs(_where(step.path, root, step.in_root), step.mode, exist_ok=True)


def _mknod(step: MakeDevice, root: str) -> None:
    path = root + step.path                     # inside our own fresh /dev tmpfs
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(step.major, step.minor))
    os.chmod(path, 0o666)


def _symlink(step: MakeLink, root: str) -> None:
    os.symlink(step.target, root + step.path)


def write_in_root(root_fd: int, path: str, content: str, resolve: int = 0) -> None:
    """Write ``content`` to ``path`` (made, or truncated in place), resolved inside the
    directory ``root_fd`` as its ``/`` in one call: symlinks and ``..`` cannot leave it,
    magic links are refused, and ``resolve`` adds RESOLVE_* flags. A FIFO there fails
    (ENXIO, O_NONBLOCK) instead of blocking, another non-regular file with EINVAL; a
    missing directory on the way raises FileNotFoundError."""
    fd = sc.openat2(root_fd, path.lstrip("/"),
                    os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_CLOEXEC,
                    sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS | resolve, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
        data = content.encode()
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def _write(step: WriteFile, root: str) -> None:
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            write_in_root(root_fd, step.path, step.content)
        except FileNotFoundError:           # a directory on the way is missing (rare)
            target = resolve_in_root(root, step.path)   # no symlink is left on the way
            os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
            write_in_root(root_fd, step.path, step.content)
    finally:
        os.close(root_fd)


def _mask(step: MaskPath, root: str) -> None:
    target = resolve_in_root(root, step.path)
    try:
        st = os.stat(target)
    except (FileNotFoundError, NotADirectoryError):
        return                                  # nothing there to hide
    if stat.S_ISDIR(st.st_mode):
        sc.mount("tmpfs", target, "tmpfs", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV
                 | sc.MS_NOEXEC, "size=0,mode=555")
    else:
        sc.mount(root + "/dev/null", target, None, sc.MS_BIND)


def _readonly(step: ReadonlyPath, root: str) -> None:
    target = resolve_in_root(root, step.path)
    if not os.path.lexists(target):
        return
    sc.mount(target, target, None, sc.MS_BIND | sc.MS_REC)
    keep = os.statvfs(target).f_flag & _KEEP_ON_REMOUNT
    sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | keep)


def _pivot(step: PivotRoot, root: str) -> None:
    # pivot_root(".", "."): the old root ends up stacked under the new one; detaching
    # "." then removes it, so nothing of the host's tree stays reachable.
    os.chdir(step.root)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


def _hostname(step: SetHostname, root: str) -> None:
    socket.sethostname(step.name)


_RUN = {MountStep: _mount, AttachMount: _attach, MakeDirs: _mkdirs, MakeDevice: _mknod, MakeLink: _symlink,
        WriteFile: _write, MaskPath: _mask, ReadonlyPath: _readonly, PivotRoot: _pivot,
        SetHostname: _hostname}
