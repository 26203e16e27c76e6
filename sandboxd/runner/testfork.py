"""In a zygote (runner/zygote.py): fork one test into a fresh container.

This runs in the zygote's own interpreter (the project's Python), as root of the
zygote's user namespace. :func:`fork_test` clones a child into new pid, mount, network,
IPC and UTS namespaces (all owned by that user namespace, so none of this touches the
host) and the child, before any test code runs:

1. asks the fork server, over the zygote's channel, for its cgroup: the kernel stamps the
   request with the child's host pid (``SCM_CREDENTIALS``), the fork server makes a
   cgroup below the zygote's with the test's limits and moves the child into it;
2. makes its mounts private and mounts its own ``/tmp``, ``/dev/shm``, ``/dev/mqueue`` and
   ``/proc`` (its pid namespace's), masking and write-protecting the same /proc paths as
   any container;
3. sets its hostname and brings ``lo`` up;
4. applies the rlimits, cuts its capabilities (bounding set included) to the test's,
   sets no_new_privs and installs the container's seccomp filter (the fork server sends
   it with the cgroup's name), on top of the zygote's.

What the child shares with the zygote and its siblings: the memory pages of the
zygote's interpreter and of the modules it imported, copy-on-write (a write makes a
private copy). Nothing else: every namespace, mount, tmpfs and the cgroup are its own.
"""
from __future__ import annotations

import array
import ctypes
import fcntl
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack

from . import rlimits, seccomp, security
from . import syscalls as sc
from .spec import DEFAULT_CAPABILITIES, MASKED_PATHS, READONLY_PATHS, Ulimit
from .zygote import ZYGOTE_FD

TEST_NAMESPACES = (sc.CLONE_NEWPID | sc.CLONE_NEWNS | sc.CLONE_NEWNET | sc.CLONE_NEWIPC
                   | sc.CLONE_NEWUTS)
NOSUID_NODEV_NOEXEC = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
SETUP_FAILED = 125                   # the child's exit status when it could not set up
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


class TestSetupFailed(Exception):
    """The child could not become a container; the message names the step."""


@dataclass(frozen=True)
class TestContainer:
    """What one test's container gets. ``limits`` is the wire form of
    :class:`~sandboxd.runner.spec.Limits`."""
    hostname: str
    limits: dict[str, Any] = field(default_factory=dict)
    ulimits: tuple[Ulimit, ...] = ()
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES


def fork_test(test: TestContainer, channel: int = ZYGOTE_FD) -> tuple[int, str]:
    """In the zygote: ``(pid, cgroup)`` of the new test's process (the cgroup's name for
    :func:`end_test`; ``""`` if the child failed before it had one). In the child:
    ``(0, "")`` once it is a container; if it cannot become one, it says why on its
    stderr and exits with :data:`SETUP_FAILED`, before any test code."""
    _binds_below_tmp()                   # read here, once: every child needs it
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    try:
        pid = sc.clone(TEST_NAMESPACES)
    except OSError:
        api.PyOS_AfterFork_Parent()
        os.close(ready_r)
        os.close(ready_w)
        raise
    if pid == 0:
        api.PyOS_AfterFork_Child()       # what os.fork does: threads, locks, random seed
        os.close(ready_r)
        try:
            cgroup, program = _join_cgroup(channel, test.limits)
            os.write(ready_w, cgroup.encode())
            os.close(ready_w)
            _become_container(test, program)
        except TestSetupFailed as e:
            os.write(2, f"sandboxd: the test's container: {e}\n".encode())
            os._exit(SETUP_FAILED)
        except BaseException as e:                      # a bug: still say so, never run on
            os.write(2, f"sandboxd: the test's container: {type(e).__name__}: {e}\n"
                     .encode())
            os._exit(SETUP_FAILED)
        return 0, ""
    api.PyOS_AfterFork_Parent()
    os.close(ready_w)
    try:
        cgroup = os.read(ready_r, 256).decode()
    finally:
        os.close(ready_r)
    return pid, cgroup


def end_test(cgroup: str, channel: int = ZYGOTE_FD) -> dict[str, Any]:
    """In the zygote, once the test's process was reaped: the fork server removes its
    cgroup (killing what is left) and says whether the kernel's OOM killer struck."""
    return _ask(channel, {"op": "ended", "cgroup": cgroup})


def _ask(channel: int, request: dict[str, Any]) -> Any:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        chan = socket.socket(fileno=os.dup(channel))
        try:
            chan.sendmsg([msgpack.packb(request)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                     array.array("i", [theirs.fileno()]))])
        finally:
            chan.close()
        theirs.close()
        reply = msgpack.unpackb(ours.recv(65536) or b"\xc0", raw=False)
    finally:
        ours.close()
    if not isinstance(reply, dict) or "ok" not in reply:
        error = reply.get("error") if isinstance(reply, dict) else None
        message = error.get("message") if isinstance(error, dict) else "no answer"
        raise TestSetupFailed(f"the fork server refused: {message}")
    return reply["ok"]


def _join_cgroup(channel: int, limits: dict[str, Any]
                 ) -> tuple[str, seccomp.Program | None]:
    """The test's cgroup, and the container's seccomp filter (None: unconfined)."""
    try:
        answer = _ask(channel, {"op": "cgroup", "limits": limits})
    except OSError as e:
        raise TestSetupFailed(f"ask for the test's cgroup: {e.strerror}") from None
    wire = answer.get("seccomp")
    return str(answer["cgroup"]), seccomp.Program.from_wire(wire) if wire else None


def _become_container(test: TestContainer, program: seccomp.Program | None) -> None:
    step = "mounts"
    try:
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        _fresh_tmp()
        sc.mount("shm", "/dev/shm", "tmpfs", NOSUID_NODEV_NOEXEC, "mode=1777,size=65536k")
        sc.mount("mqueue", "/dev/mqueue", "mqueue", NOSUID_NODEV_NOEXEC)
        step = "mount /proc"
        sc.mount("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC)
        step = "protect /proc"
        _protect_proc()
        step = "hostname"
        socket.sethostname(test.hostname)
        step = "lo up"
        _loopback_up()
        step = "rlimits"
        rlimits.apply(test.ulimits)
        step = "capabilities"
        security.apply_profile(test.capabilities, "", True)
        # Last, after everything above that it forbids; it stacks on the zygote's own.
        step = "seccomp"
        if program is not None:
            seccomp.install(program)
    except OSError as e:
        raise TestSetupFailed(f"{step}: {e.strerror or e}") from None


def _fresh_tmp() -> None:
    """A new, empty /tmp that still shows what the zygote's container bound below /tmp
    (a project or a venv under /tmp): it is assembled on /dev/shm (replaced next) with
    those binds, then moved onto /tmp. The binds keep their locked read-only flag."""
    below = _binds_below_tmp()
    if not below:
        sc.mount("tmpfs", "/tmp", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=1777")
        return
    staging = "/dev/shm"
    sc.mount("tmpfs", staging, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=1777")
    for path in below:
        target = staging + path[len("/tmp"):]
        if os.path.isdir(path):
            os.makedirs(target, 0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
            open(target, "a").close()
        sc.mount(path, target, None, sc.MS_BIND | sc.MS_REC)
    sc.mount(staging, "/tmp", None, sc.MS_MOVE)


_BELOW_TMP: list[tuple[str, ...]] = []


def _binds_below_tmp() -> tuple[str, ...]:
    """Mount points strictly below /tmp, outermost only (read once per zygote: its
    mounts do not change)."""
    if not _BELOW_TMP:
        points = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = line.split()[4].encode().decode("unicode_escape")
                if point.startswith("/tmp/"):
                    points.append(point)
        kept: list[str] = []
        for p in sorted(set(points), key=len):
            if not any(p.startswith(k + "/") for k in kept):
                kept.append(p)
        _BELOW_TMP.append(tuple(kept))
    return _BELOW_TMP[0]


def _protect_proc() -> None:
    for path in MASKED_PATHS:
        if not path.startswith("/proc/") or not os.path.lexists(path):
            continue
        if os.path.isdir(path):
            sc.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY | NOSUID_NODEV_NOEXEC,
                     "size=0,mode=555")
        else:
            sc.mount("/dev/null", path, None, sc.MS_BIND)
    for path in READONLY_PATHS:
        if not os.path.lexists(path):
            continue
        sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
        sc.mount(None, path, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY
                 | NOSUID_NODEV_NOEXEC)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | IFF_UP))
