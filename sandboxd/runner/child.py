"""What a container's first process does before its workload runs, whichever way it was
started: forked by the fork server (:mod:`.forkserver`) or cloned from the pre-imported
template (:mod:`.template`).

Signals back to their defaults, not dumpable until exec, the namespaces unshared or
joined, stdio (or a pty made in the container's devpts) installed, limits, workdir and
security profile applied, the seccomp filter loaded. Progress and failure go to the
owner over a close-on-exec pipe: ``report(fd, b"R")`` just before the workload starts,
``fail(fd, error)`` with the error as msgpack, then exit.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import socket
import struct
import termios
from typing import Callable, NoReturn

import msgpack

from ..errors import CommandNotFound, SandboxError, SetupFailed
from . import rlimits, seccomp, security
from . import syscalls as sc
from .spec import DEFAULT_PATH, ContainerSpec, Process

TIOCSPTLCK, TIOCGPTN = 0x40045431, 0x80045430      # <asm-generic/ioctls.h>; not in termios
# Unshared (or joined) by the container's first process itself, off the server's path;
# the pid namespace is the fork server's clone flag (see pid_clone_flags).
NS_FLAGS = {"net": sc.CLONE_NEWNET, "ipc": sc.CLONE_NEWIPC, "uts": sc.CLONE_NEWUTS}


# Python ignores SIGPIPE and SIGXFSZ; a workload must start with the defaults.
RESET_SIGNALS = (signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM)


def reset_signals() -> None:
    for sig in RESET_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def not_dumpable() -> None:
    """Until execve (which makes the workload dumpable again), this process is the fork
    server's interpreter with the server's fds: non-dumpable, the container's processes
    (no CAP_SYS_PTRACE) cannot open its /proc/<pid>/exe, fd/, cwd, root, mem or environ
    (CVE-2019-5736, CVE-2024-21626), as runc's setup process does."""
    sc.prctl(sc.PR_SET_DUMPABLE, 0)


def set_title(name: str, args: tuple[str, ...] = ()) -> Callable[[], None]:
    """Show ``name`` (and ``args``) as this process's command, for a container's pid 1
    that runs on without an exec (an init's reaper): it was forked with the fork
    server's argv, which names the daemon's state directory and flags, and
    ``/proc/1/cmdline`` is readable by everyone inside. (A template's workload keeps
    the template's argv, ``-m sandboxd.runner.template --fd N``: nothing of the host's.)
    As setproctitle(3) does: the argv strings overwritten in place (the range
    /proc/self/stat gives), their last byte left non-NUL so the kernel reads the title
    up to its NUL; ``comm`` too. (Written directly, and ``comm`` by prctl: a
    non-dumpable process of another user than root may not open its own /proc/self/mem
    or comm.) Best effort. Returns what puts the previous title back, for a process
    forked after it was set (an init's workload, shown as itself until it execs)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])     # arg_start, arg_end (48, 49)
        before = ctypes.string_at(start, end - start) if end > start else b""
        comm_before = ctypes.create_string_buffer(16)
        sc.prctl(sc.PR_GET_NAME, ctypes.addressof(comm_before))
        if end - start >= 2:
            title = " ".join((name, *args)).encode()[:end - start - 2] + b"\0"
            area = title + b"\0" * (end - start - 1 - len(title)) + b" "
            ctypes.memmove(start, area, len(area))
        comm = ctypes.create_string_buffer(os.path.basename(name).encode()[:15])
        sc.prctl(sc.PR_SET_NAME, ctypes.addressof(comm))
    except (OSError, ValueError, IndexError):
        return lambda: None

    def put_back() -> None:
        ctypes.memmove(start, before, len(before))
        sc.prctl(sc.PR_SET_NAME, ctypes.addressof(comm_before))
    return put_back


def close_fds_except(*keep: int, first: int = 3) -> None:
    """Close every fd from ``first`` up but ``keep`` (negative ones ignored): nothing of
    the server's reaches what runs next (CVE-2024-21626)."""
    for fd in sorted(k for k in keep if k >= first):
        if first < fd:                   # closerange's end below its start closes all
            os.closerange(first, fd)
        first = fd + 1
    os.closerange(first, 1 << 20)


def report(fd: int, tag: bytes, payload: bytes = b"") -> None:
    os.write(fd, tag + payload)


def fail(errw: int, err: SandboxError, code: int = 1) -> NoReturn:
    try:
        report(errw, b"E", msgpack.packb(err.to_wire(), use_bin_type=True))
    finally:
        os._exit(code)


def install_stdio(stdio: list[int], terminal: bool, size: tuple[int, ...] = ()) -> None:
    """Make ``stdio`` fds 0-2; with a terminal, ``stdio[0]`` is a console socket: the
    pty is made in the container's own devpts (so ``tty`` names it inside), sized
    ``size`` (rows, cols) when given, and its master goes back to the owner over that
    socket."""
    os.setsid()
    if terminal:
        master = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
        slave = os.open(f"/dev/pts/{number}", os.O_RDWR | os.O_NOCTTY)
        if size:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
        console = socket.socket(fileno=stdio[0])
        socket.send_fds(console, [b"pty"], [master])
        console.close()
        os.close(master)
        for target in (0, 1, 2):
            os.dup2(slave, target)
        os.close(slave)
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    else:
        for target, fd in enumerate(stdio[:3]):
            os.dup2(fd, target)


def environment(process: Process, hostname: str, home: str) -> dict[str, str]:
    env = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname or socket.gethostname(), "HOME": home}
    if process.terminal:
        env["TERM"] = "xterm"
    for entry in process.env:
        key, _, value = entry.partition("=")
        env[key] = value
    return env


def find_executable(name: str, path: str) -> str:
    if "/" in name:
        return name
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate):
            return candidate
    raise CommandNotFound(f"executable file not found in $PATH: {name}",
                          {"exit_code": 127, "command": name})


def home_of(uid: int) -> str:
    try:
        with open("/etc/passwd") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) > 5 and fields[2] == str(uid):
                    return fields[5] or "/"
    except OSError:
        pass
    return "/root" if uid == 0 else "/"


def install_filter(program: seccomp.Program | None) -> None:
    if program is None:
        return
    try:
        seccomp.install(program)
    except OSError as e:
        raise SetupFailed(f"install the seccomp filter: {e.strerror}",
                          {"step": "seccomp", "errno": e.errno or 0}) from None


def prepare_process(process: Process, hostname: str, errw: int,
                     program: seccomp.Program | None) -> tuple[str, dict]:
    """Limits, workdir, security profile; returns (executable, environment)."""
    enter_process(process, program)
    env = environment(process, hostname, home_of(os.getuid()))
    return find_executable(process.args[0], env.get("PATH", DEFAULT_PATH)), env


def enter_process(process: Process, program: seccomp.Program | None) -> None:
    """Limits, workdir, security profile, chdir: all a process takes from its config
    but its command, environment and stdio (a parked pid 1 does this much before its
    take). The seccomp filter comes last, just before exec (the caller loads it),
    unless no_new_privs is off: then loading it needs CAP_SYS_ADMIN, so it comes before
    the capabilities are cut (as runc does), and what follows must be calls the filter
    allows."""
    try:
        rlimits.apply(process.ulimits)
        os.makedirs(process.cwd, 0o755, exist_ok=True)   # Docker creates a missing workdir
    except OSError as e:
        raise SetupFailed(f"prepare workdir {process.cwd}: {e.strerror}",
                          {"step": "workdir", "errno": e.errno or 0}) from None
    if not process.no_new_privileges:
        install_filter(program)
    try:
        security.apply_profile(process.capabilities, process.user, process.no_new_privileges,
                               process.groups)
    except OSError as e:
        raise SetupFailed(f"apply security profile (user {process.user or 'root'}): "
                          f"{e.strerror}", {"step": "security", "errno": e.errno or 0}) from None
    try:
        os.chdir(process.cwd)
    except OSError as e:
        raise SetupFailed(f"chdir to {process.cwd}: {e.strerror}",
                          {"step": "chdir", "errno": e.errno or 0}) from None


def pid_clone_flags(spec: ContainerSpec) -> int | None:
    """The fork server's clone flags for a container, or None when its pid namespace is
    joined by path: the start then needs a C1 and a plain fork. The clone makes the
    mount namespace too, so that the server can hold it (see forkserver._Container)."""
    mode = spec.namespaces.pid
    return sc.CLONE_NEWNS | (sc.CLONE_NEWPID if mode == "private" else 0) \
        if mode in ("private", "host") else None


def _setns_path(path: str, flag: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.setns(fd, flag)
    finally:
        os.close(fd)


def enter_namespaces(spec: ContainerSpec, cloned: bool = False) -> None:
    """``cloned``: this process is the fork server's clone (pid_clone_flags), whose
    mount namespace is already its own."""
    # The cgroup namespace after the join (the caller's), so that its root is our cgroup.
    flags = sc.CLONE_NEWCGROUP | (0 if cloned else sc.CLONE_NEWNS)
    for name, flag in NS_FLAGS.items():
        mode = getattr(spec.namespaces, name)
        if mode == "private":
            flags |= flag
        elif mode != "host":
            _setns_path(mode, flag)
    if pid_clone_flags(spec) is None:
        _setns_path(spec.namespaces.pid, sc.CLONE_NEWPID)      # for our children
    sc.unshare(flags)


def apply_sysctls(sysctls: tuple[str, ...]) -> None:
    """``key=value`` through /proc/sys once the namespaces are entered: net.* and the
    IPC keys resolve to the writer's own namespaces, whichever /proc it opens."""
    for entry in sysctls:
        key, _, value = entry.partition("=")
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as e:
            raise SetupFailed(f"sysctl {key}={value}: {e.strerror}",
                              {"step": "sysctl", "errno": e.errno or 0}) from None
