"""In a zygote (runner/zygote.py): fork one test into a fresh container.

This runs in the zygote's own interpreter (the project's Python), as root of the
zygote's user namespace. :func:`fork_test` clones a child into new pid, mount, network,
IPC and UTS namespaces (all owned by that user namespace, so none of this touches the
host) and the child, before any test code runs:

1. asks the fork server, over the zygote's channel, for its cgroup: the kernel stamps the
   request with the child's host pid (``SCM_CREDENTIALS``), the fork server makes a
   cgroup below the zygote's with the test's limits and hands back the files to join
   it through, opened for writing (v1: its ``tasks`` files; v2: its ``cgroup.procs``);
   the child joins by writing ``0`` to each and closes them. On v1 that moves the
   child's one thread alone: no threadgroup lock, so no RCU grace period to wait for;
2. makes its mounts private and mounts its own ``/tmp``, ``/dev/shm``, ``/dev/mqueue`` and
   ``/proc`` (its pid namespace's), masking and write-protecting the same /proc paths as
   any container;
3. sets its hostname and brings ``lo`` up;
4. applies the rlimits, cuts its capabilities (bounding set included) to the test's,
   sets no_new_privs and installs the container's seccomp filter (the fork server sends
   it with the cgroup's name), on top of the zygote's;
5. parks: it waits for :meth:`TestChild.release` (or exits quietly when the zygote
   discards it). So a zygote can make the *next* test's container while the current
   test runs: each child is still used for one test only.

The zygote follows each child through its :class:`TestChild`: the child's control
socket says its cgroup, a set-up failure, and that it has written its last output; its
pidfd says when it exited. What the child shares with the zygote and its siblings: the
memory pages of the zygote's interpreter and of the modules it imported, copy-on-write
(a write makes a private copy). Nothing else: every namespace, mount, tmpfs and the
cgroup are its own, and the zygote's private fds (``close_in_child``) are closed first.
"""
from __future__ import annotations

import array
import ctypes
import fcntl
import os
import signal
import socket
import struct
from collections.abc import Callable, Iterable
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
MAX_CGROUP_FDS = 16                  # join files one answer may carry
# Control messages, child -> zygote (one SEQPACKET message each), and zygote -> child.
CGROUP, FAILED, STARTED, FINISHED, RELEASE = b"c", b"f", b"s", b"d", b"g"


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


class TestChild:
    """One forked test. In the zygote: ``pid``, ``pidfd`` (readable once it exited) and
    the ``control`` socket (readable when it says something: :meth:`on_control`). In
    the child itself (``pid == 0``), once released: :meth:`finished`."""

    def __init__(self, pid: int, pidfd: int, control: socket.socket):
        self.pid = pid
        self.pidfd = pidfd
        self.control = control
        self.cgroup = ""            # its cgroup's name, once it has one
        self.error = ""             # why it could not become a container
        self.started = False        # released, it runs
        self.done = False           # it has written its last output
        self.note = ""              # what it said with that (the zygote's business)
        self.released = False
        self.exit_code: int | None = None
        self.oom_killed = False

    # -- in the zygote

    def release(self) -> None:
        """Let the parked child run its test (it may still be setting up: then it runs
        as soon as it is ready)."""
        self.released = True
        try:
            self.control.send(RELEASE)
        except OSError:
            pass                    # it is gone already: its pidfd says so

    def discard(self) -> None:
        """A child that will not be used: parked, it exits at EOF; released, killed."""
        if self.released:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            try:
                self.control.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass                # it is gone already

    def on_control(self) -> bool:
        """Read one message from the child; False at EOF (it exited, or closed it)."""
        try:
            data = self.control.recv(4096)
        except OSError:
            data = b""
        self._note(data)
        return bool(data)

    def drain(self) -> None:
        """Read what it said before it exited (once its pidfd is readable: nothing of
        it is left to write, so this never waits)."""
        while True:
            try:
                data = self.control.recv(4096, socket.MSG_DONTWAIT)
            except OSError:
                return
            if not data:
                return
            self._note(data)

    def _note(self, data: bytes) -> None:
        kind, text = data[:1], data[1:].decode("utf-8", "replace")
        if kind == CGROUP:
            self.cgroup = text
        elif kind == FAILED:
            self.error = text
        elif kind == STARTED:
            self.started = True
        elif kind == FINISHED:
            self.done = True
            self.note = text

    def reap(self, channel: int = ZYGOTE_FD) -> int:
        """Once its pidfd is readable: its exit code (``128 + signal`` when killed);
        its cgroup is handed back to the fork server (which says whether the kernel's
        OOM killer struck). Closes the child's fds."""
        _, status = os.waitpid(self.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        self.exit_code = 128 - code if code < 0 else code
        if self.cgroup:
            try:
                # A test that finished needs no answer: its reports are all in.
                ended = end_test(self.cgroup, channel, wait=not self.done)
                self.oom_killed = bool(ended.get("oom_killed"))
            except (TestSetupFailed, OSError):
                pass                # the fork server removes it with the zygote's
        os.close(self.pidfd)
        self.control.close()
        return self.exit_code

    def wait(self, channel: int = ZYGOTE_FD) -> int:
        """Block until the child exits, then :meth:`reap` it (for a zygote that runs one
        test at a time)."""
        while self.on_control():
            pass
        return self.reap(channel)

    # -- in the child

    def finished(self, note: str = "") -> None:
        """The child has written its last output: the zygote may let the next test
        write to the channel they share. ``note`` goes with it (a few bytes)."""
        self.control.send(FINISHED + note.encode()[:1024])


def fork_test(test: TestContainer, channel: int = ZYGOTE_FD,
              close_in_child: Iterable[int] = (),
              prepare: Callable[[], None] | None = None) -> TestChild:
    """Fork a child that becomes ``test``'s container, then parks until released.

    In the zygote: the child's :class:`TestChild` at once (the set-up goes on in the
    child). In the child: a :class:`TestChild` with ``pid == 0`` once released, a
    never-used container; ``close_in_child`` (the zygote's private fds) are closed
    first, and ``prepare`` (the caller's own set-up, no test code) runs once it is a
    container, before it parks. A child that cannot become a container says why on its
    control socket and exits with :data:`SETUP_FAILED`, before any test code."""
    _binds_below_tmp()                   # read here, once: every child needs it
    ours, theirs = socket.socketpair(socket.AF_UNIX,
                                     socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    try:
        pid = sc.clone(TEST_NAMESPACES)
    except OSError:
        api.PyOS_AfterFork_Parent()
        ours.close()
        theirs.close()
        raise
    if pid == 0:
        api.PyOS_AfterFork_Child()       # what os.fork does: threads, locks, random seed
        ours.close()
        for fd in close_in_child:
            try:
                os.close(fd)
            except OSError:
                pass
        _become_parked_child(test, channel, theirs, prepare)
        return TestChild(0, -1, theirs)
    api.PyOS_AfterFork_Parent()
    theirs.close()
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        ours.close()
        raise
    return TestChild(pid, pidfd, ours)


def _become_parked_child(test: TestContainer, channel: int, control: socket.socket,
                         prepare: Callable[[], None] | None) -> None:
    """In the child: become the container, then wait to be released (never returns
    otherwise)."""
    try:
        program = _join_cgroup(channel, test.limits, control)
        _become_container(test, program)
        if prepare is not None:
            prepare()
    except BaseException as e:                   # a bug too: say so, never run on
        what = str(e) if isinstance(e, TestSetupFailed) else f"{type(e).__name__}: {e}"
        try:
            control.send(FAILED + f"sandboxd: the test's container: {what}".encode())
        except OSError:
            pass
        os._exit(SETUP_FAILED)
    try:
        go = control.recv(1)
    except OSError:
        go = b""
    if go != RELEASE:                            # discarded: never ran anything
        os._exit(0)
    control.send(STARTED)


def end_test(cgroup: str, channel: int = ZYGOTE_FD, wait: bool = True) -> dict[str, Any]:
    """In the zygote, once the test's process was reaped: the fork server removes its
    cgroup (killing what is left) and says whether the kernel's OOM killer struck
    (``{}`` without ``wait``: the request is sent, the answer not awaited)."""
    return _ask(channel, {"op": "ended", "cgroup": cgroup}, wait)[0]


def _ask(channel: int, request: dict[str, Any], wait: bool = True
         ) -> tuple[Any, list[int]]:
    """The fork server's answer to ``request``, and the fds it came with."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    fds = array.array("i")
    try:
        chan = socket.socket(fileno=os.dup(channel))
        try:
            chan.sendmsg([msgpack.packb(request)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                     array.array("i", [theirs.fileno()]))])
        finally:
            chan.close()
        theirs.close()
        if not wait:
            return {}, []
        data, anc, _flags, _addr = ours.recvmsg(
            65536, socket.CMSG_SPACE(MAX_CGROUP_FDS * fds.itemsize), socket.MSG_CMSG_CLOEXEC)
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        reply = msgpack.unpackb(data or b"\xc0", raw=False)
    finally:
        ours.close()
    if not isinstance(reply, dict) or "ok" not in reply:
        for fd in fds:
            os.close(fd)
        error = reply.get("error") if isinstance(reply, dict) else None
        message = error.get("message") if isinstance(error, dict) else "no answer"
        raise TestSetupFailed(f"the fork server refused: {message}")
    return reply["ok"], list(fds)


def _join_cgroup(channel: int, limits: dict[str, Any], control: socket.socket
                 ) -> seccomp.Program | None:
    """Join the test's cgroup (its name goes to the zygote first, which hands it back
    at the end however the join went); the container's seccomp filter (None:
    unconfined)."""
    try:
        answer, joins = _ask(channel, {"op": "cgroup", "limits": limits})
    except OSError as e:
        raise TestSetupFailed(f"ask for the test's cgroup: {e.strerror}") from None
    try:
        control.send(CGROUP + str(answer["cgroup"]).encode())
        if not joins:
            raise TestSetupFailed("the fork server sent no files to join the cgroup by")
        for fd in joins:
            os.write(fd, b"0")
    except OSError as e:
        raise TestSetupFailed(f"join the test's cgroup: {e.strerror}") from None
    finally:
        for fd in joins:
            os.close(fd)
    wire = answer.get("seccomp")
    return seccomp.Program.from_wire(wire) if wire else None


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
