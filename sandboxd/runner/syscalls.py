"""The few Linux calls Python 3.11 lacks, through ctypes on libc.

Every wrapper raises ``OSError`` with the real errno; callers add what they were doing.
Only the runner's single-threaded processes call these (unshare and setns of a mount
namespace fail in a threaded process).
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import signal

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_GET_NAME = 16
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

SECCOMP_SET_MODE_FILTER = 1

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10

# The new mount API's numbers are the same on every architecture.
_MOUNT_API = {"move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432}
_SYS = {"x86_64": {"clone": 56, "pivot_root": 155, "capget": 125, "capset": 126,
                   "openat2": 437, "seccomp": 317, **_MOUNT_API},
        "aarch64": {"clone": 220, "pivot_root": 41, "capget": 90, "capset": 91,
                    "openat2": 437, "seccomp": 277, **_MOUNT_API}
        }[platform.machine()]
FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 0, 1, 6
MOVE_MOUNT_F_EMPTY_PATH = 0x4
_CLOEXEC = 1                      # FSOPEN_CLOEXEC, FSMOUNT_CLOEXEC

_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long


def _check(result: int, what: str) -> None:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def clone(flags: int) -> int:
    """clone(2) with fork's semantics (no new stack: the child goes on with a copy of the
    caller's) and ``flags`` (``CLONE_NEW*``) added: 0 in the child, its pid in the caller.
    With ``CLONE_NEWPID`` the child is pid 1 of a new pid namespace, which unshare cannot
    do for the caller itself. Neither glibc's nor Python's at-fork handlers run, so only a
    single-threaded caller may use it, and the child must only exec or ``os._exit``.
    (clone's own argument order differs between architectures; with no stack, parent or
    child tid pointers and tls, every order is zeros.)"""
    pid = _libc.syscall(_SYS["clone"], ctypes.c_ulong(flags | signal.SIGCHLD),
                        ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0),
                        ctypes.c_ulong(0))
    _check(pid, "clone")
    return pid


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), "mount")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), "umount2")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(_SYS["pivot_root"], _b(new_root), _b(put_old)), "pivot_root")


def fsmount(fstype: str, source: str, options: str) -> int:
    """A new, detached mount of ``fstype`` from ``source`` with the comma-separated
    ``options`` (flags, or key=value): an fd, in no mount namespace until
    :func:`move_mount` attaches it. The device is opened here, by the caller: a process
    in a device-restricted cgroup can still attach the mount it is handed."""
    fs = _libc.syscall(_SYS["fsopen"], _b(fstype), ctypes.c_uint(_CLOEXEC))
    _check(fs, f"fsopen {fstype}")
    try:
        def config(cmd: int, key: str | None, value: str | None, what: str) -> None:
            _check(_libc.syscall(_SYS["fsconfig"], ctypes.c_int(fs), ctypes.c_uint(cmd),
                                 _b(key), _b(value), ctypes.c_int(0)), what)
        config(FSCONFIG_SET_STRING, "source", source, f"fsconfig source={source}")
        for option in filter(None, options.split(",")):
            key, sep, value = option.partition("=")
            config(FSCONFIG_SET_STRING if sep else FSCONFIG_SET_FLAG, key,
                   value if sep else None, f"fsconfig {option}")
        config(FSCONFIG_CMD_CREATE, None, None, f"mount {fstype} from {source}")
        mfd = _libc.syscall(_SYS["fsmount"], ctypes.c_int(fs), ctypes.c_uint(_CLOEXEC),
                            ctypes.c_uint(0))
        _check(mfd, f"fsmount {source}")
        return mfd
    finally:
        os.close(fs)


def move_mount(mount_fd: int, target: str) -> None:
    """Attach the detached mount ``mount_fd`` (from :func:`fsmount`) on ``target``."""
    _check(_libc.syscall(_SYS["move_mount"], ctypes.c_int(mount_fd), b"",
                         ctypes.c_int(-100), _b(target),
                         ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), f"move_mount {target}")


OPENAT2_RETRIES = 32


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(dir_fd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): ``RESOLVE_IN_ROOT`` makes ``dir_fd`` act as ``/`` for ``..`` and every
    symlink on the way, atomically (no check-then-open race). Safe in threads. The
    kernel answers EAGAIN when a rename or mount anywhere raced a ``..`` step of a
    scoped lookup; like libpathrs and runc, try again a few times."""
    how = _OpenHow(flags, mode, resolve)
    for _attempt in range(OPENAT2_RETRIES):
        fd = _libc.syscall(_SYS["openat2"], ctypes.c_int(dir_fd), _b(path),
                           ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0 or ctypes.get_errno() != errno.EAGAIN:
            break
    _check(fd, f"openat2 {path}")
    return fd


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    result = _libc.prctl(option, arg2, arg3, arg4, arg5)
    _check(result, "prctl")
    return result


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_CAP_V3 = 0x20080522


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's capability sets (64-bit masks)."""
    header = _CapHeader(_CAP_V3, 0)
    data = (_CapData * 2)()
    for i, shift in enumerate((0, 32)):
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.syscall(_SYS["capset"], ctypes.byref(header), ctypes.byref(data)), "capset")


def seccomp_set_filter(flags: int, fprog_address: int) -> None:
    """seccomp(SECCOMP_SET_MODE_FILTER, flags, &sock_fprog): the filter holds for this
    thread and every process it forks or execs."""
    _check(_libc.syscall(_SYS["seccomp"], ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
                         ctypes.c_uint(flags), ctypes.c_void_p(fprog_address)), "seccomp")
