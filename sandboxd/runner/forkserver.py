"""The fork server: a single-threaded, pre-imported process that forks every container.

Started once by exec (``python -m sandboxd.runner.forkserver --fd N``), it talks to its
owner over a SOCK_SEQPACKET socket: msgpack messages, stdio fds passed with SCM_RIGHTS.
It is a child subreaper, so each container's pid 1 becomes its child and it sees every
exit first-hand; then it reads the cgroup's counters (the OOM kills alone with
``--no-exit-stats``, the daemon's choice) and reports, and removes the cgroup once
nothing else is waiting.

One container start::

    fork server ── clone(CLONE_NEWPID) ──► pid 1: join cgroup, setns/unshare the other
                                           namespaces, mounts, pivot_root, limits,
                                           profile, close fds, exec

One fork per container: clone makes the child pid 1 of its new pid namespace directly
(unshare(CLONE_NEWPID) would only apply to the caller's children). Joining another pid
namespace by path still takes two: setns(CLONE_NEWPID) also applies to children only, so
the cloned child is a helper ("C1") that forks pid 1 and exits; an exec into a running
container goes the same way.

pid 1 reports over a close-on-exec pipe: ``P<pid>`` from a C1 (a cloned pid 1 sends
none: clone gave the server its pid), ``W`` when a prepared one is parked (``prepare``;
it waits for its process from ``take``), ``R`` just before execve, ``E<msgpack error>``
on failure. EOF after ``R`` means the exec succeeded.

Requests ``{"op", "rid", ...}`` get ``{"rid", "ok"}`` or ``{"rid", "error"}``; exits
arrive as ``{"event": "exit", "id", "exec", "exit_code", "signal", "oom_killed",
"stats"}``, and the exec of a take the owner sent to a parked pid 1 itself as
``{"event": "started", "id", "pid"}`` (its failure: an exit with its ``error``). When the
owner's socket closes, every container is killed and cleaned.
"""
from __future__ import annotations

import array
import errno
import fcntl
import gc
import os
import selectors
import shlex
import signal
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NoReturn

import msgpack

from ..errors import (CommandNotExecutable, CommandNotFound, Conflict, InvalidArgument,
                      NotFound, SandboxError, SetupFailed, from_wire)
from . import cgroups, child, layers, mounts, native, park, rlimits, seccomp, zygote
from . import syscalls as sc
from .channel import recv_message, send_message, seqpacket_pair
from .init import run_init
from .park import MAX_TAKE, decode_failure, decode_take, load_helper, take_message
from .plan import Step, build_plan
from .spec import (DEFAULT_CAPABILITIES, DEFAULT_PATH, ContainerSpec, Limits, Process,
                   check_process, from_dict, to_dict, validate)

PF_EXITING = 0x4               # <linux/sched.h>: a task in do_exit (/proc/PID/stat's flags)
# A process reaped before its C1's "P" named it is claimed within milliseconds; an
# entry older than this belonged to a start that ended without naming it.
EARLY_EXIT_WINDOW = 10.0

# ---------------------------------------------------------------- the container side

def _exec(executable: str, process: Process, env: dict, errw: int,
          program: seccomp.Program | None, keep: int = 2) -> NoReturn:
    child.close_fds_except(errw, first=keep + 1)      # no host fd reaches the workload
    if process.no_new_privileges:
        try:
            child.install_filter(program)
        except SandboxError as e:
            child.fail(errw, e)
    child.report(errw, b"R")
    try:
        os.execve(executable, list(process.args), env)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            child.fail(errw, CommandNotFound(
                f"exec {executable}: no such file or directory",
                {"exit_code": 127, "command": executable}), 127)
        child.fail(errw, CommandNotExecutable(
            f"exec {executable}: {e.strerror}",
            {"exit_code": 126, "command": executable}), 126)
    os._exit(1)


def _hold(errw: int) -> NoReturn:
    """pid 1 of a held root: nothing from the root runs; the owner works in it through
    /proc/<pid>/root until it closes our stdin."""
    child.close_fds_except(errw)
    child.report(errw, b"R")
    os.close(errw)                      # EOF after R: started, as an exec would say
    try:
        while os.read(0, 4096):
            pass
    finally:
        os._exit(0)


def _container_pid1(spec: ContainerSpec, plan: list[Step], stdio: list[int],
                    errw: int, program: seccomp.Program | None,
                    channel: int = -1, park: int | None = None) -> NoReturn:
    process = spec.process
    try:
        mounts.run_steps(plan)
        if park is not None:
            _park(spec, errw, channel, program, park)
        child.install_stdio(stdio, process.terminal, process.console_size)
        if spec.hold:
            _hold(errw)
        if spec.zygote:
            _zygote_pid1(spec, errw, channel, program)
        executable, env = child.prepare_process(process, spec.hostname, errw, program)
    except SandboxError as e:
        child.fail(errw, e, getattr(e, "exit_code", 1))
    except Exception as e:                                   # a bug: still report it
        child.fail(errw, SetupFailed(f"container setup: {type(e).__name__}: {e}"))
    if spec.init:
        run_init(lambda: _exec(executable, process, env, errw, program), args=process.args)
    _exec(executable, process, env, errw, program)


def _park(spec: ContainerSpec, errw: int, channel: int, program: seccomp.Program | None,
          helper: int) -> NoReturn:
    """A pooled container's pid 1 (``prepare``), its namespaces, cgroup, mounts and root
    made: take on all of its process's config but the command, environment and stdio,
    report ``W`` and wait for those (``take``) in ``sbx-park`` (runner/park.py; ``helper``
    is its memfd, -1: none), or in Python for an init's reaper or without the helper.
    Nothing of the fork server's stays open meanwhile (a copy of another start's stdio
    pipe would keep that container's output open for as long as this one waits)."""
    child.enter_process(spec.process, program)
    hostname = spec.hostname or socket.gethostname()
    home = child.home_of(os.getuid())
    child.close_fds_except(errw, channel, helper)
    if _filter_at_park(spec, program, helper):
        child.install_filter(program)
    child.report(errw, b"W")
    if helper < 0 or spec.init:
        _wait_in_python(spec, errw, channel, hostname, home)
    os.set_inheritable(errw, True)
    os.set_inheritable(channel, True)
    try:
        os.execve(helper, ["sbx-park", str(channel), str(errw), hostname, home], {})
    except OSError as e:
        raise SetupFailed(f"exec the parked pid 1 (sbx-park): {e.strerror}",
                          {"step": "park", "errno": e.errno or 0}) from None


def _filter_at_park(spec: ContainerSpec, program: seccomp.Program | None,
                    helper: int) -> bool:
    """Whether a parked pid 1 loads its seccomp filter before it waits, not at the take
    just before the exec (~0.25 ms here, mostly the kernel's JIT of the program): when
    sbx-park will wait and the filter lets all of sbx-park's own calls through."""
    return (helper >= 0 and not spec.init and spec.process.no_new_privileges
            and program is not None and program.allows_park)


def _wait_in_python(spec: ContainerSpec, errw: int, channel: int, hostname: str,
                    home: str) -> NoReturn:
    """What sbx-park does, here: wait for the take, then stdio, environment, exec (or
    the init's reaper that runs it)."""
    sock = socket.socket(fileno=channel)
    data, anc, _flags, _addr = sock.recvmsg(MAX_TAKE, socket.CMSG_SPACE(3 * 4),
                                            socket.MSG_CMSG_CLOEXEC)
    sock.close()
    if not data:                         # the fork server let it go (discard, shutdown)
        os._exit(0)
    fds = array.array("i")
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    terminal, size, args, env_entries, flags, bpf = decode_take(data)
    process = replace(spec.process, args=tuple(args), env=tuple(env_entries),
                      terminal=terminal, console_size=size)
    program = seccomp.prepared(bpf, flags) if bpf else None
    child.install_stdio(list(fds), terminal, size)
    env = child.environment(process, hostname, home)
    executable = child.find_executable(process.args[0], env.get("PATH", DEFAULT_PATH))
    if spec.init:
        run_init(lambda: _exec(executable, process, env, errw, program), args=process.args)
    _exec(executable, process, env, errw, program)


def _zygote_pid1(spec: ContainerSpec, errw: int, channel: int,
                 program: seccomp.Program | None) -> NoReturn:
    """pid 1 of a zygote container (runner/zygote.py): the workload is exec'd in a user
    namespace of its own, with the fork server's channel as fd ``ZYGOTE_FD``."""
    process = spec.process
    try:
        rlimits.apply(process.ulimits)
        os.makedirs(process.cwd, 0o755, exist_ok=True)
        os.chdir(process.cwd)
    except OSError as e:
        raise SetupFailed(f"prepare workdir {process.cwd}: {e.strerror}",
                          {"step": "workdir", "errno": e.errno or 0}) from None
    env = child.environment(process, spec.hostname, "/root")
    env[zygote.ZYGOTE_FD_ENV] = str(zygote.ZYGOTE_FD)
    executable = child.find_executable(process.args[0], env.get("PATH", DEFAULT_PATH))

    def become() -> NoReturn:
        try:
            zygote.enter_user_namespace(process.capabilities)
            report = fcntl.fcntl(errw, fcntl.F_DUPFD_CLOEXEC, zygote.ZYGOTE_FD + 1)
            os.dup2(channel, zygote.ZYGOTE_FD)
        except OSError as e:
            child.fail(errw, SetupFailed(f"enter the zygote's user namespace: {e.strerror}",
                                         {"step": "userns", "errno": e.errno or 0}))
        os.closerange(zygote.ZYGOTE_FD + 1, report)
        try:
            child.install_filter(program)        # no_new_privs is set: last before the exec
        except SandboxError as e:
            child.fail(report, e)
        _exec(executable, process, env, report, None, keep=zygote.ZYGOTE_FD)

    def fail(e: Exception) -> NoReturn:
        child.fail(errw, SetupFailed(
            f"write the zygote's id maps: {e}",
            {"step": "userns", "errno": getattr(e, "errno", 0) or 0}))

    zygote.run_pid1(become, fail)


def _container_first(spec: ContainerSpec, plan: list[Step], cgroup: Any,
                     stdio: list[int], errw: int,
                     program: seccomp.Program | None, channel: int = -1,
                     park: int | None = None) -> NoReturn:
    """The container's first process: pid 1 itself, or a C1 when the pid namespace is
    joined by path."""
    gc.disable()      # no collection copies the server's heap into this process
    try:
        child.not_dumpable()
        child.reset_signals()
        cloned = child.pid_clone_flags(spec) is not None

        def unshare() -> None:
            try:
                child.enter_namespaces(spec, cloned)
            except OSError as e:
                raise SetupFailed(f"create namespaces: {e.strerror}",
                                  {"step": "namespaces", "errno": e.errno or 0}) from None

        # Joined before the cgroup namespace is made, so that its root is ours.
        cgroup.enter(unshare)
        if spec.sysctls:
            child.apply_sysctls(spec.sysctls)
        pid = 0 if cloned else os.fork()
    except SandboxError as e:
        child.fail(errw, e)
    except Exception as e:
        child.fail(errw, SetupFailed(f"container setup: {type(e).__name__}: {e}"))
    if pid == 0:
        _container_pid1(spec, plan, stdio, errw, program, channel, park)
    child.report(errw, b"P", struct.pack("<i", pid))
    os._exit(0)


def _exec_c1(target_pid: int, process: Process, cgroup: Any, stdio: list[int], errw: int,
             hostname: str, program: seccomp.Program | None) -> NoReturn:
    try:
        child.not_dumpable()
        child.reset_signals()
        fds = {}
        for ns in native.EXEC_NAMESPACES:
            fds[ns] = os.open(f"/proc/{target_pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
        cgroup.join(0)
        for ns in native.EXEC_NAMESPACES:
            sc.setns(fds[ns])
            os.close(fds[ns])
        pid = os.fork()
    except OSError as e:
        child.fail(errw, SetupFailed(f"enter the container's namespaces: {e.strerror}",
                                     {"step": "setns", "errno": e.errno or 0}))
    except Exception as e:
        child.fail(errw, SetupFailed(f"exec setup: {type(e).__name__}: {e}"))
    if pid == 0:
        try:
            child.install_stdio(stdio, process.terminal, process.console_size)
            executable, env = child.prepare_process(process, hostname, errw, program)
        except SandboxError as e:
            child.fail(errw, e, getattr(e, "exit_code", 1))
        except Exception as e:
            child.fail(errw, SetupFailed(f"exec setup: {type(e).__name__}: {e}"))
        _exec(executable, process, env, errw, program)
    child.report(errw, b"P", struct.pack("<i", pid))
    os._exit(0)


# ---------------------------------------------------------------- the server side

@dataclass
class _Container:
    id: str
    spec: ContainerSpec
    cgroup: Any
    # The container's seccomp filter (None: unconfined); its execs get the same one,
    # as Docker's do.
    program: seccomp.Program | None = None
    pid: int = 0
    execs: dict[str, int] = field(default_factory=dict)       # exec id -> pid
    # The detached mount of its layer image (runner/layers.py), held until the start
    # settles: pid 1 has attached it in its own namespace by then, or failed.
    layer_hold: int = -1
    image_holds: tuple[int, ...] = ()      # the same for its capped volumes (image mounts)
    zygote: Any = None                                         # _Zygote
    # A prepared container's end of the channel its parked pid 1 waits on, until taken.
    park: socket.socket | None = None
    # Its mount namespace, made by the clone and held from then on: pid 1's exit then
    # skips the teardown of the mounts (two expedited RCU grace periods, ~0.5 ms here),
    # which this server pays when it lets go, after the exit is reported.
    mounts_hold: int = -1
    filter_parked: bool = False         # its parked pid 1 loaded the filter (_filter_at_park)
    # The owner asked for the channel, to send the take itself (_parked).
    direct_take: bool = False
    killed: bool = False                # a SIGKILL went to all of it (_op_kill)


@dataclass
class _Zygote:
    """The fork server's side of a zygote container: its channel and its tests' cgroups,
    made below its own."""
    sock: socket.socket
    manager: Any
    tests: dict[str, Any] = field(default_factory=dict)
    counter: int = 0


@dataclass
class _Start:
    """A spawn or exec waiting for its pid 1 to exec or fail."""
    rid: int
    container: _Container
    exec_id: str | None
    buf: bytearray = field(default_factory=bytearray)
    pid: int = 0
    ready: bool = False
    status: int | None = None          # set when the process was reaped before EOF
    parked: bool = False               # a prepared pid 1 reported W: the reply is due
    # Set up by sbx-setup: what each of its steps' failures means (native.encode).
    failures: list[native.Failure] | None = None


class ForkServer:
    def __init__(self, sock: socket.socket, state_dir: str, cgroup_parent: str,
                 template_entries: tuple[str, ...] = (), exit_stats: bool = True):
        self.sock = sock
        self.exit_stats = exit_stats         # else an exit reports the OOM kills alone
        # The owner's allow-list of entries a spawn may name (see runner/template.py);
        # the template that preloads them starts with the first such spawn.
        self.template_entries = tuple(template_entries)
        self.template: socket.socket | None = None
        self.template_pid = 0
        self.mnt = os.path.join(state_dir, "mnt")
        os.makedirs(self.mnt, 0o700, exist_ok=True)
        self.cgroups = cgroups.CgroupManager(cgroup_parent,
                                             ledger=os.path.join(state_dir, "cgroups"))
        self.filters = seccomp.FilterCache()
        self.park_helpers: dict[str, int] = {}                 # sbx-park path -> memfd
        self.setup = -1                  # sbx-setup's memfd (runner/native.py), once built
        self.setup_builder = 0           # the pid of its build, while it runs
        self.containers: dict[str, _Container] = {}
        self.starts: dict[int, _Start] = {}                    # pipe fd -> start
        self.pids: dict[int, tuple[_Container, str | None]] = {}
        self.early_exits: dict[int, tuple[int, float]] = {}     # reaped before claimed
        self.helpers: set[int] = set()                           # C1 processes
        self.failing: dict[int, _Start] = {}                     # failed, awaiting reap
        self.retiring: dict[str, Any] = {}      # exited, cgroup not yet removed: id -> cgroup
        self.selector = selectors.DefaultSelector()
        self.running = True

    # -- main loop
    def serve(self) -> None:
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: None)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.selector.register(self.sock, selectors.EVENT_READ, "control")
        self.selector.register(wake_r, selectors.EVENT_READ, "signal")
        self._claim_cgroups()
        send_message(self.sock, {"event": "ready", "pid": os.getpid(),
                                 "cgroup_version": self.cgroups.version})
        # The default filter for the default capabilities, compiled while the owner
        # finishes its own start: the first container finds it ready.
        try:
            self._filter(seccomp.DEFAULT, DEFAULT_CAPABILITIES)
        except SandboxError as e:
            print(f"fork server: {e.message}", file=sys.stderr)
        if os.environ.get("SANDBOXD_NATIVE_SETUP", "1") != "0":
            self._load_setup()
        # What is imported and built so far is never freed: out of the collector's
        # reach, a collection in a forked container does not write to its pages.
        gc.freeze()
        while self.running:
            events = self.selector.select(0 if self.retiring else None)
            if not events and self.retiring:
                self._retire_one()            # one at a time: requests come first
                continue
            for key, _ in events:
                if key.data == "control":
                    self._on_control()
                elif isinstance(key.data, tuple):
                    self._on_zygote(key.data[1])
                elif key.data == "signal":
                    try:
                        os.read(wake_r, 4096)
                    except BlockingIOError:
                        pass
                    self._reap()
                else:
                    self._on_pipe(key.fd)
            self._reap()
        self._shutdown()

    def _claim_cgroups(self) -> None:
        """Before the first container: hold the cgroup parent, and kill and remove
        what a fork server of this state directory, killed with its daemon, left under
        it (cgroups.claim). No container outlives its daemon; this makes it so for one
        that was killed."""
        try:
            claim = self.cgroups.claim()
        except (SandboxError, OSError) as e:
            print(f"fork server: cannot hold the cgroup parent: "
                  f"{getattr(e, 'message', None) or e}", file=sys.stderr)
            return
        if claim.shared:
            print(f"fork server: another daemon uses the cgroup parent "
                  f"{self.cgroups.parent} too (give each daemon its own --cgroup-parent)",
                  file=sys.stderr)
        if claim.removed:
            print(f"fork server: removed {len(claim.removed)} containers left by a fork "
                  f"server that was killed: {', '.join(n[:12] for n in claim.removed)}",
                  file=sys.stderr)
        for problem in claim.problems:
            print(f"fork server: a container left by a killed fork server: {problem}",
                  file=sys.stderr)

    def _on_control(self) -> None:
        try:
            msg, fds = recv_message(self.sock)
        except (ConnectionError, OSError):
            msg, fds = None, []
        if msg is None:
            self.running = False                    # owner gone: clean up and exit
            return
        rid = msg.get("rid", 0)
        try:
            handler = getattr(self, "_op_" + str(msg.get("op")), None)
            if handler is None:
                raise InvalidArgument(f"fork server: unknown op {msg.get('op')!r}")
            result = handler(msg, fds)
            if isinstance(result, _WithFds):
                try:
                    self._send({"rid": rid, "ok": result.value}, result.fds)
                finally:
                    for fd in result.fds:
                        os.close(fd)
            elif result is not _DEFERRED:
                self._reply(rid, result)
        except SandboxError as e:
            for fd in fds:
                os.close(fd)
            self._reply_error(rid, e)
        except Exception as e:
            for fd in fds:
                _close_quietly(fd)
            self._reply_error(rid, SetupFailed(f"fork server: {type(e).__name__}: {e}"))

    def _reply(self, rid: int, result: Any) -> None:
        self._send({"rid": rid, "ok": result})

    def _reply_error(self, rid: int, err: SandboxError) -> None:
        self._send({"rid": rid, "error": err.to_wire()})

    # -- operations
    def _op_ping(self, msg: dict, fds: list[int]) -> Any:
        return {"pid": os.getpid(), "containers": len(self.containers),
                "setup": "sbx-setup" if self.setup >= 0 else "python"}

    def _op_spawn(self, msg: dict, fds: list[int]) -> Any:
        return self._spawn(msg, fds, park=None)

    def _op_prepare(self, msg: dict, fds: list[int]) -> Any:
        """A pooled container: everything of a spawn but the process, parked before
        its exec until a ``take`` gives it its process and stdio (the reply: its pid).
        ``helper``: the path of sbx-park to wait in (runner/park.py); "": Python.
        ``direct``: the reply may carry the channel the pid 1 waits on (_parked)."""
        result = self._spawn(msg, fds, park=self._helper(str(msg.get("helper") or "")))
        self.containers[msg["spec"]["id"]].direct_take = bool(msg.get("direct"))
        return result

    def _helper(self, path: str) -> int:
        """sbx-park's sealed memfd (loaded once per path), or -1 for none."""
        if not path:
            return -1
        fd = self.park_helpers.get(path)
        if fd is None:
            try:
                fd = self.park_helpers[path] = load_helper(path)
            except OSError as e:
                raise SetupFailed(f"load the parked pid 1 {path}: {e.strerror}",
                                  {"step": "park", "errno": e.errno or 0}) from None
        return fd

    def _load_setup(self, build: bool = True) -> None:
        """sbx-setup's memfd if it is built; else (``build``) its build starts in the
        background: cold starts are set up in Python until it is there (see _reap)."""
        try:
            chosen = park.toolchain()
            path = park.helper_path(native.SOURCE, "sbx-setup", chosen)
            if path.exists():
                self.setup = load_helper(str(path), "sbx-setup")
                return
            if not build:
                raise SetupFailed(f"the build of {path} failed (see above)")
            command, tmp = park.build_command(native.SOURCE, "sbx-setup", chosen)
        except (OSError, SandboxError) as e:
            print(f"fork server: cold starts are set up in Python: {e}", file=sys.stderr)
            return
        built, target = shlex.quote(str(tmp)), shlex.quote(str(path))
        script = f"{shlex.join(command)} && mv -f {built} {target}; rm -f {built}"
        self.setup_builder = os.posix_spawn("/bin/sh", ["sh", "-c", script], dict(os.environ))
        self.helpers.add(self.setup_builder)

    def _op_take(self, msg: dict, fds: list[int]) -> Any:
        """Start a prepared container's workload: ``process``, whose args, env and
        terminal are its own and the rest (cwd, user, groups, ulimits, capabilities,
        no_new_privs) the prepared one's, with these stdio fds. The reply comes when it
        has exec'd, as a spawn's."""
        container = self.containers.get(str(msg.get("id")))
        if container is None or container.park is None:
            raise NotFound(f"container {msg.get('id')} is not a prepared container")
        process = from_dict(Process, msg.get("process"), "process")
        # The filter goes just before the exec, unless it was loaded at park.
        program = None if container.filter_parked or not process.no_new_privileges \
            else container.program
        message = take_message(container.spec.process, process, len(fds), *_bpf(program))
        start = next((s for s in self.starts.values() if s.container is container), None)
        if start is None:                                    # it died, not yet reaped
            raise NotFound(f"container {container.id}: its prepared process is gone")
        park, container.park = container.park, None
        try:
            socket.send_fds(park, [message], fds)
        except OSError:
            raise NotFound(f"container {container.id}: its prepared process is gone"
                           ) from None
        finally:
            park.close()
        for fd in fds:
            os.close(fd)
        start.rid = msg["rid"]
        container.spec = replace(container.spec, process=process)
        return _DEFERRED

    def _spawn(self, msg: dict, fds: list[int], park: int | None) -> Any:
        """``park``: None for a spawn; for a prepare, sbx-park's fd (-1: none)."""
        spec = validate(from_dict(ContainerSpec, msg.get("spec")))
        if spec.id in self.containers:
            raise InvalidArgument(f"container {spec.id} is already running")
        if park is not None:
            if fds or spec.hold or spec.entry or spec.zygote or spec.root.layer:
                raise InvalidArgument("prepare: no stdio, hold, entry, zygote or layer "
                                      "image (they are given at the start)")
        elif len(fds) != (1 if spec.process.terminal else 3):
            raise InvalidArgument("spawn: pass 3 stdio fds, or 1 terminal fd")
        problems = rlimits.check_raisable(spec.process.ulimits)
        if problems:
            raise InvalidArgument.of(problems)
        if spec.entry:
            self._check_entry(spec)
        self._retire(spec.id)            # a previous run of this id may still hold its name
        program = self._filter(spec.seccomp, spec.process.capabilities)
        problem = self.cgroups.nesting_problem() if spec.zygote else ""
        if problem:
            raise InvalidArgument(f"zygote: its tests join their cgroups through fds the "
                                  f"fork server opens, and {problem}")
        # A zygote's own filter lets it make its tests' namespaces and mounts (in its user
        # namespace); each test then adds the container's filter (runner/testfork.py).
        first = self._filter(spec.seccomp, spec.process.capabilities
                             + zygote.ZYGOTE_CAPABILITIES) if spec.zygote else program
        hold = layers.mount_layer(spec.root.layer) if spec.root.layer else -1
        images: list[int] = []
        try:
            for m in spec.mounts:
                if m.type == "image":
                    images.append(layers.mount_layer(m.source))
            if spec.entry:
                return self._spawn_from_template(msg["rid"], spec, fds, program, hold,
                                                 tuple(images))
            # Built here, where its cached parts stay warm.
            plan = build_plan(spec, self.mnt, self.cgroups.cgroupfs, hold, images)
            # A zygote's tests' cgroups nest below its own (on v2 beside its leaf).
            cgroup = self.cgroups.create(spec.id, spec.limits, nest=spec.zygote)
        except BaseException:
            for fd in (hold, *images):
                _close_quietly(fd)
            raise
        container = _Container(spec.id, spec, cgroup, program, layer_hold=hold,
                               image_holds=tuple(images))
        ours = theirs = None
        if spec.zygote or park is not None:
            ours, theirs = seqpacket_pair(cloexec=True)
            if spec.zygote:
                ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        channel = theirs.fileno() if theirs is not None else -1
        clone_flags = child.pid_clone_flags(spec)
        try:
            if self.setup >= 0 and park != -1 and clone_flags is not None \
                    and native.eligible(spec, clone_flags, cgroup.entry_files()):
                self._start_native(msg["rid"], container, plan, fds, clone_flags, park,
                                   channel)
            else:
                self._fork(msg["rid"], container, None, fds,
                           lambda errw: _container_first(spec, plan, cgroup, fds, errw,
                                                         first, channel, park),
                           clone_flags)
        except BaseException:
            for fd in (hold, *images):
                _close_quietly(fd)
            if ours is not None:
                ours.close()
            cgroup.remove()
            raise
        finally:
            if theirs is not None:
                theirs.close()
        if park is not None:
            container.park = ours
            container.filter_parked = _filter_at_park(spec, program, park)
        elif ours is not None:
            container.zygote = _Zygote(ours, cgroups.CgroupManager(
                f"{self.cgroups.parent}/{spec.id}", self.cgroups.mount_root,
                self.cgroups.version, controllers=self.cgroups.controllers))
            self.selector.register(ours, selectors.EVENT_READ, ("zygote", container))
        self.containers[spec.id] = container
        return _DEFERRED

    def _start_native(self, rid: int, container: _Container, plan: list[Step],
                      fds: list[int], clone_flags: int, park: int | None,
                      channel: int) -> None:
        """A spawn's pid 1 or (``park``: sbx-park's memfd) a prepared one's, through
        sbx-setup."""
        spec, program = container.spec, container.program
        parked = None if park is None else \
            native.Park(park, channel, _filter_at_park(spec, program, park))
        steps, failures = native.encode(spec, plan, container.cgroup.entry_files(),
                                        clone_flags, *_bpf(program), stdio=fds, park=parked)
        more_fds = (container.layer_hold, *container.image_holds,
                    *((park, channel) if parked else ()))
        self._spawn_native(rid, container, None, steps, failures, fds, more_fds)

    def _spawn_native(self, rid: int, container: _Container, exec_id: str | None,
                      steps: bytes, failures: list[native.Failure], stdio: list[int],
                      more_fds: tuple[int, ...] = ()) -> None:
        """Start a container's pid 1 or an exec (``exec_id``) through sbx-setup
        (runner/native.py), given its encoded ``steps``: spawned without a copy of this
        process, its C1 joins the cgroup, makes pid 1 (or the exec's process) and reports
        its pid (``P``), and that sets itself up. ``stdio`` and ``more_fds`` (a layer's
        and volumes' mounts, a prepared one's sbx-park and channel) reach it."""
        plan_fd = os.memfd_create("sbx-plan", os.MFD_CLOEXEC)
        errr, errw = os.pipe2(os.O_CLOEXEC)
        try:
            view = memoryview(steps)
            while view:
                view = view[os.write(plan_fd, view):]
            # A dup2 of an fd onto itself clears its close-on-exec: these reach sbx-setup.
            keep = (plan_fd, errw, *stdio, *more_fds)
            pid = os.posix_spawn(f"/proc/self/fd/{self.setup}",
                                 ["sbx-setup", str(plan_fd), str(errw)], {},
                                 file_actions=[(os.POSIX_SPAWN_DUP2, fd, fd)
                                               for fd in keep if fd >= 0],
                                 setsigmask=(), setsigdef=child.RESET_SIGNALS)
        except OSError as e:
            os.close(errr)
            raise SetupFailed(f"spawn sbx-setup: {e.strerror}",
                              {"step": "namespaces", "errno": e.errno or 0}) from None
        finally:
            os.close(plan_fd)
            os.close(errw)
        for fd in stdio:
            os.close(fd)
        self.helpers.add(pid)
        self.starts[errr] = _Start(rid, container, exec_id, failures=failures)
        os.set_blocking(errr, False)
        self.selector.register(errr, selectors.EVENT_READ, "pipe")

    def _filter(self, profile: str, capabilities: tuple[str, ...]) -> seccomp.Program | None:
        try:
            return self.filters.get(profile, capabilities)
        except (ImportError, RuntimeError) as e:    # no pyseccomp, or no libseccomp.so.2
            raise SetupFailed(f"seccomp: libseccomp is not available ({e}); install "
                              f"libseccomp2 and pyseccomp, or run with "
                              f"--security-opt seccomp=unconfined",
                              {"step": "seccomp", "errno": 0}) from None
        except OSError as e:                  # libseccomp refused a rule of the profile
            raise InvalidArgument(f"seccomp: the profile does not compile: {e.strerror}"
                                  ) from None

    # -- a zygote's tests (runner/zygote.py)
    def _on_zygote(self, container: _Container) -> None:
        z = container.zygote
        fd_space = socket.CMSG_SPACE(array.array("i").itemsize)
        cred_space = socket.CMSG_SPACE(struct.calcsize("3i"))
        try:
            data, anc, _flags, _addr = z.sock.recvmsg(
                65536, fd_space + cred_space, socket.MSG_CMSG_CLOEXEC)
        except OSError:
            data, anc = b"", []
        pid, reply_fd = 0, -1
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", payload[:struct.calcsize("3i")])[0]
            elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                for extra in fds[1:]:
                    os.close(extra)
                reply_fd = fds[0] if fds else -1
        if not data:
            if reply_fd >= 0:
                os.close(reply_fd)
            self.selector.unregister(z.sock)
            z.sock.close()
            container.zygote = None
            self._drop_tests(z)
            return
        if reply_fd < 0:
            return                  # nowhere to answer: a confused zygote, not our problem
        reply = socket.socket(fileno=reply_fd)
        fds: list[int] = []
        try:
            try:
                result, fds = self._zygote_request(container, z, pid, msgpack.unpackb(data))
                answer = {"ok": result}
            except SandboxError as e:
                answer = {"error": e.to_wire()}
            except (ValueError, TypeError, msgpack.UnpackException) as e:
                answer = {"error": InvalidArgument(f"zygote: bad request: {e}").to_wire()}
            reply.setblocking(False)
            reply.sendmsg([msgpack.packb(answer, use_bin_type=True)],
                          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                          if fds else [])
        except OSError:
            pass                                 # the asker is gone
        finally:
            reply.close()
            for fd in fds:
                os.close(fd)

    def _zygote_request(self, container: _Container, z: "_Zygote", pid: int,
                        msg: Any) -> tuple[Any, list[int]]:
        """The answer to one of a zygote's requests, and the fds that go with it."""
        if not isinstance(msg, dict):
            raise InvalidArgument("zygote: a request is a map")
        op = msg.get("op")
        if op == "cgroup":
            # The kernel vouches for the pid; it must be the zygote's own (in its cgroup:
            # on v2, its leaf), and not its trusted pid 1.
            if pid <= 0 or pid == container.pid or pid not in container.cgroup.pids():
                raise InvalidArgument(f"zygote: process {pid} is not one of the zygote's")
            if len(z.tests) >= zygote.MAX_TEST_CGROUPS:
                raise InvalidArgument(f"zygote: {len(z.tests)} test cgroups are still "
                                      f"open; end some first")
            limits = from_dict(Limits, msg.get("limits") or {}, "limits")
            z.counter += 1
            name = f"t{z.counter}"
            cgroup = z.manager.create(name, limits)
            try:
                # The test's process joins by itself through these: a join by pid here
                # can wait for an RCU grace period (v1 tasks: not even the test does),
                # and the fork server would wait with it.
                joins = cgroup.open_join()
            except BaseException:
                cgroup.remove()
                raise
            z.tests[name] = cgroup
            # The test's own filter, for the container's capabilities (the zygote's
            # also allows what only its extra capabilities need).
            return {"cgroup": name,
                    "seccomp": container.program and container.program.to_wire()}, joins
        if op == "ended":
            cgroup = z.tests.pop(str(msg.get("cgroup")), None)
            if cgroup is None:
                raise NotFound(f"zygote: no test cgroup {msg.get('cgroup')!r}")
            try:
                stats = asdict(cgroup.stats())
            finally:
                # Removed (what is left killed first) once nothing waits, as an exited
                # container's: the zygote's next test need not wait for the rmdirs.
                self.retiring[f"{container.id}/{msg.get('cgroup')}"] = cgroup
            return {"oom_killed": stats["oom_kills"] > 0, "stats": stats}, []
        raise InvalidArgument(f"zygote: unknown op {op!r}")

    @staticmethod
    def _drop_tests(z: "_Zygote") -> None:
        while z.tests:
            _name, cgroup = z.tests.popitem()
            try:
                cgroup.remove()
            except SandboxError as e:
                print(f"fork server: cleanup of a zygote's test cgroup: {e}",
                      file=sys.stderr)

    # -- the template (runner/template.py)
    def _check_entry(self, spec: ContainerSpec) -> None:
        from .template import env_problems, parse_entry
        if spec.entry not in self.template_entries:
            raise InvalidArgument(
                f"entry {spec.entry!r} is not one this runner allows "
                f"({', '.join(self.template_entries) or 'none'}); run the command instead")
        module = parse_entry(spec.entry)[0]
        args = spec.process.args
        # The same path, not only the same binary: a venv's python links to its base,
        # and only its own path gives it the venv's site-packages.
        if len(args) < 3 or args[1:3] != ("-m", module) or args[0] != sys.executable:
            raise InvalidArgument(
                f"entry {spec.entry!r}: the command must be '{sys.executable} -m {module} "
                f"...' (what the entry stands for), not {' '.join(args[:3])!r}")
        problems = [f"entry {spec.entry!r}: {p}" for p in env_problems(spec.process.env)]
        if problems:
            raise InvalidArgument.of(problems)

    def _start_template(self) -> socket.socket:
        """The template, started on first use: exec'd from this package with a clean
        environment, so nothing of ours is in its memory."""
        from .template import template_environment
        ours, theirs = seqpacket_pair()
        argv = [sys.executable, "-m", "sandboxd.runner.template", "--fd", str(theirs.fileno())]
        for entry in self.template_entries:
            argv += ["--entry", entry]
        env = template_environment(os.environ.get("PYTHONPATH", ""))
        pid = os.fork()
        if pid == 0:
            try:
                child.reset_signals()
                ours.close()
                os.set_inheritable(theirs.fileno(), True)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                child.close_fds_except(theirs.fileno())
                os.execve(sys.executable, argv, env)
            finally:
                os._exit(127)
        theirs.close()
        ours.settimeout(60)
        try:
            ready, _ = recv_message(ours)
        except OSError as e:
            ready = None
            reason = str(e)
        else:
            reason = "it exited"
        if not ready or ready.get("event") != "ready":
            ours.close()
            raise SetupFailed(f"the runner's template did not start ({reason}): see the "
                              f"daemon's log", {"step": "template", "errno": 0})
        ours.settimeout(10)
        self.template, self.template_pid = ours, pid
        return ours

    def _template_fork(self, chan: socket.socket) -> int:
        template = self.template or self._start_template()
        try:
            send_message(template, {"op": "fork"}, [chan.fileno()])
            reply, _ = recv_message(template)
        except OSError as e:
            reply = {"error": f"the template is gone ({e})"}
        if reply is None or "error" in reply:
            template.close()
            self.template = None
            raise SetupFailed(f"template: {reply and reply['error'] or 'it exited'}",
                              {"step": "template", "errno": 0})
        return int(reply["pid"])

    def _spawn_from_template(self, rid: int, spec: ContainerSpec, fds: list[int],
                             program: seccomp.Program | None, hold: int,
                             images: tuple[int, ...] = ()) -> Any:
        """Pid 1 is a clone of the template (our child, by CLONE_PARENT); it gets its
        spec and fds only once it is in its cgroup."""
        cgroup = self.cgroups.create(spec.id, spec.limits)
        container = _Container(spec.id, spec, cgroup, program, layer_hold=hold,
                               image_holds=images)
        errr, errw = os.pipe2(os.O_CLOEXEC)
        ours, theirs = seqpacket_pair(cloexec=True)
        pid = 0
        try:
            try:
                pid = self._template_fork(theirs)
            finally:
                theirs.close()
            cgroup.join(pid)
            send_message(ours, {"spec": to_dict(spec), "mnt": self.mnt,
                                "seccomp": program and program.to_wire(),
                                "cgroupfs": self.cgroups.cgroupfs},
                         [*fds, *([hold] if hold >= 0 else []), *images, errw])
        except BaseException:
            if pid:
                _kill_quietly(pid)
            for fd in (errr, *fds):
                _close_quietly(fd)
            cgroup.remove()
            raise
        finally:
            ours.close()
            os.close(errw)
        for fd in fds:
            os.close(fd)
        self.containers[spec.id] = container
        start = _Start(rid, container, None, pid=pid)
        self._claim(start)
        os.set_blocking(errr, False)
        self.starts[errr] = start
        self.selector.register(errr, selectors.EVENT_READ, "pipe")
        return _DEFERRED

    def _op_exec(self, msg: dict, fds: list[int]) -> Any:
        container = self._container(msg)
        process = validate_process(from_dict(Process, msg.get("process"), "process"))
        exec_id = str(msg.get("exec_id") or "")
        if not exec_id or exec_id in container.execs:
            raise InvalidArgument(f"exec: exec_id {exec_id!r} is missing or in use")
        if len(fds) != (1 if process.terminal else 3):
            raise InvalidArgument("exec: pass 3 stdio fds, or 1 terminal fd")
        problems = rlimits.check_raisable(process.ulimits)
        if problems:
            raise InvalidArgument.of(problems)
        target = container.pid
        entry_files = container.cgroup.entry_files()
        if self.setup >= 0 and native.eligible_process(process, entry_files):
            self._spawn_native(msg["rid"], container, exec_id, *native.encode_exec(
                target, process, container.spec.hostname, entry_files,
                *_bpf(container.program), stdio=fds), fds)
        else:
            self._fork(msg["rid"], container, exec_id, fds,
                       lambda errw: _exec_c1(target, process, container.cgroup, fds, errw,
                                             container.spec.hostname, container.program))
        container.execs[exec_id] = 0
        return _DEFERRED

    def _op_kill(self, msg: dict, fds: list[int]) -> Any:
        container = self._container(msg)
        sig = int(msg.get("signal", signal.SIGKILL))
        exec_id = msg.get("exec_id")
        if exec_id:
            pid = container.execs.get(exec_id)
            if not pid:
                raise Conflict(f"exec {exec_id} is not running in container {container.id}")
            os.kill(pid, sig)
        elif msg.get("all"):
            container.killed = container.killed or sig == signal.SIGKILL
            container.cgroup.kill_all(sig)
        else:
            os.kill(container.pid, sig)
        return None

    def _op_update(self, msg: dict, fds: list[int]) -> Any:
        container = self._container(msg)
        container.cgroup.update(from_dict(Limits, msg.get("limits"), "limits"))
        return None

    def _op_stats(self, msg: dict, fds: list[int]) -> Any:
        cgroup = self._container(msg).cgroup
        return asdict(cgroup.stats()) | asdict(cgroup.usage())

    def _op_pids(self, msg: dict, fds: list[int]) -> Any:
        return self._container(msg).cgroup.pids()

    def _op_pause(self, msg: dict, fds: list[int]) -> Any:
        self._container(msg).cgroup.freeze()
        return None

    def _op_resume(self, msg: dict, fds: list[int]) -> Any:
        self._container(msg).cgroup.thaw()
        return None

    def _op_open_layer(self, msg: dict, fds: list[int]) -> Any:
        """An O_PATH fd of a layer image's mounted filesystem, for the owner (see
        layers.open_layer); sent with the reply."""
        image = msg.get("image")
        if not isinstance(image, str) or not image.startswith("/"):
            raise InvalidArgument("open_layer: image must be an absolute path")
        return _WithFds({}, [layers.open_layer(image)])

    def _op_shutdown(self, msg: dict, fds: list[int]) -> Any:
        self.running = False
        return None

    def _container(self, msg: dict) -> _Container:
        container = self.containers.get(str(msg.get("id")))
        if container is None or not container.pid:
            # A state, as Docker's 409: the daemon asks for containers it saw running
            # (one that just ended, or one whose exit it has not yet read, lands here).
            raise Conflict(f"container {msg.get('id')} is not running")
        return container

    # -- process bookkeeping
    def _fork(self, rid: int, container: _Container, exec_id: str | None, fds: list[int],
              child: Any, clone_flags: int | None = None) -> None:
        """Start ``child(errw)``: with ``clone_flags`` in a clone that is the started
        process itself, else in a forked helper that reports the pid (``P``)."""
        errr, errw = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.fork() if clone_flags is None else sc.clone(clone_flags)
        except OSError as e:
            os.close(errr)
            os.close(errw)
            if clone_flags is None:
                raise
            raise SetupFailed(f"create namespaces: {e.strerror}",
                              {"step": "namespaces", "errno": e.errno or 0}) from None
        if pid == 0:
            try:
                os.close(errr)
                child(errw)
            finally:
                os._exit(1)         # never back into the server loop, whatever escaped
        os.close(errw)
        for fd in fds:
            os.close(fd)
        start = _Start(rid, container, exec_id)
        if clone_flags is None:
            self.helpers.add(pid)
        else:
            start.pid = pid
            self._claim(start)
            if clone_flags & sc.CLONE_NEWNS:
                container.mounts_hold = _open_quietly(f"/proc/{pid}/ns/mnt")
        os.set_blocking(errr, False)
        self.starts[errr] = start
        self.selector.register(errr, selectors.EVENT_READ, "pipe")

    def _on_pipe(self, fd: int) -> None:
        start = self.starts[fd]
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if chunk:
            start.buf += chunk
            self._parse_reports(start)
            return
        self.selector.unregister(fd)
        os.close(fd)
        del self.starts[fd]
        self._parse_reports(start)
        if not start.pid:
            self._late_pid(start)
        if start.ready and not start.buf and start.pid:
            self._started(start)
        elif start.status is not None or not start.pid:
            # Not named (no "P"): its C1 died first, killed with the container whose
            # cgroup it had joined, even if the process reported "R" and exec'd. With
            # no pid its exit can never be reported: a start of pid 0 left its exec
            # waiting for ever (one exec in ~700 racing a kill).
            self._start_failed(start)
        else:
            self.failing[start.pid] = start      # failed: finish once it is reaped

    def _parse_reports(self, start: _Start) -> None:
        while start.buf:
            tag = start.buf[:1]
            if tag == b"P" and len(start.buf) >= 5:
                start.pid = struct.unpack("<i", bytes(start.buf[1:5]))[0]
                del start.buf[:5]
                self._claim(start)
            elif tag == b"R":
                start.ready = True
                del start.buf[:1]
            elif tag == b"W":                    # prepared: the reply; the take has its own
                start.parked = True
                del start.buf[:1]
            else:
                break                            # "E..." waits for EOF, or a partial "P"
        # sbx-setup's pid 1 may report before its C1 has named it: the reply waits for both.
        if start.parked and start.pid:
            self._parked(start)
            start.rid, start.parked = 0, False

    def _parked(self, start: _Start) -> None:
        """A prepared pid 1 waits: the prepare's reply. Asked for, and when no filter
        goes with the take, it carries a copy of the channel the pid 1 waits on: the
        owner then sends the take (its process and stdio) to the pid 1 itself, and a
        pool hit skips this server; its exec, or its failure, is reported as an event
        (_started, _start_failed). The other copy stays here, for a take through us."""
        container = start.container
        filter_at_take = not container.filter_parked and container.program is not None \
            and container.spec.process.no_new_privileges
        if not container.direct_take or container.park is None or filter_at_take:
            self._reply(start.rid, {"pid": start.pid})
            return
        channel = os.dup(container.park.fileno())
        try:
            self._send({"rid": start.rid, "ok": {"pid": start.pid, "channel": True}},
                       [channel])
        finally:
            os.close(channel)

    def _late_pid(self, start: _Start) -> None:
        """At EOF: C1's "P" report after pid 1's failure report. Both write the same
        pipe, and a pid 1 that fails at once can report before C1 has named it."""
        at = _failure_report_end(bytes(start.buf))
        if at is not None and len(start.buf) - at == 5 and start.buf[at:at + 1] == b"P":
            start.pid = struct.unpack("<i", bytes(start.buf[at + 1:at + 5]))[0]
            del start.buf[at:]
            self._claim(start)

    def _claim(self, start: _Start) -> None:
        self.pids[start.pid] = (start.container, start.exec_id)
        if start.exec_id is None:
            start.container.pid = start.pid
        else:
            start.container.execs[start.exec_id] = start.pid
        early = self.early_exits.pop(start.pid, None)
        if early is not None and time.monotonic() - early[1] < EARLY_EXIT_WINDOW:
            start.status = early[0]
        elif start.failures is not None and start.exec_id is None:
            # sbx-setup's clone made the mount namespace: held as _fork holds a clone's.
            start.container.mounts_hold = _open_quietly(f"/proc/{start.pid}/ns/mnt")

    def _started(self, start: _Start) -> None:
        self._release_layer(start.container)
        if start.rid:
            self._reply(start.rid, {"pid": start.pid})
        else:                                   # a take its owner sent (_parked)
            self._send({"event": "started", "id": start.container.id, "pid": start.pid})
        if start.status is not None:             # it already exited: report that too
            self._exited(start.pid, start.status)

    def _start_failed(self, start: _Start) -> None:
        err = _decode_failure(start)
        container = start.container
        if start.exec_id is not None and self._ending(container):
            # Killed with it, or its namespaces or cgroup gone under the set-up: that the
            # container ended is the cause (Docker's 409), not which step noticed first.
            err = Conflict(f"container {container.id} is not running: it ended during "
                           f"the set-up of exec {start.exec_id}")
        self._release_layer(container)
        if start.exec_id is None:
            self._remove(container)
        else:
            container.execs.pop(start.exec_id, None)
        self.pids.pop(start.pid, None)
        if start.rid:
            self._reply_error(start.rid, err)
        else:
            # A prepared container that ended before a take (discarded), or whose take
            # its owner sent failed (_parked): then its report says why.
            code = os.waitstatus_to_exitcode(start.status) if start.status is not None \
                else 1
            event = {"event": "exit", "id": container.id, "exec": None,
                     "exit_code": 128 - code if code < 0 else code,
                     "signal": -code if code < 0 else None, "oom_killed": False,
                     "stats": None}
            if start.buf:
                event["error"] = err.to_wire()
            self._send(event)

    def _ending(self, container: _Container) -> bool:
        """Its pid 1 is gone or on its way out: killed by us, reaped, or exiting."""
        if container.killed or self.containers.get(container.id) is not container:
            return True
        try:
            with open(f"/proc/{container.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            return True
        return fields[0] in (b"Z", b"X") or bool(int(fields[6]) & PF_EXITING)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.helpers:
                self.helpers.discard(pid)
                if pid == self.setup_builder:
                    self.setup_builder = 0
                    self._load_setup(build=False)
                continue
            if pid == self.template_pid:
                print(f"fork server: the template exited (status {status}); the next "
                      f"spawn with an entry starts a new one", file=sys.stderr)
                if self.template is not None:
                    self.template.close()
                self.template, self.template_pid = None, 0
                continue
            pending = self.failing.pop(pid, None)
            if pending is not None:
                pending.status = status
                self._start_failed(pending)
                continue
            start = next((s for s in self.starts.values() if s.pid == pid), None)
            if start is not None:
                start.status = status            # EOF on its pipe settles it
            elif pid in self.pids:
                self._exited(pid, status)
            else:
                self._early_exit(pid, status)   # reaped before its C1 named it

    def _early_exit(self, pid: int, status: int) -> None:
        """Kept for the claim that follows at once; one that never comes (its C1 was
        killed before naming it) must not be taken, after pid reuse (pid_max is 32768
        here), by a later start's process of the same pid."""
        now = time.monotonic()
        self.early_exits[pid] = (status, now)
        for old in [p for p, (_, at) in self.early_exits.items()
                    if now - at >= EARLY_EXIT_WINDOW]:
            del self.early_exits[old]

    def _exited(self, pid: int, status: int) -> None:
        container, exec_id = self.pids.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        event = {"event": "exit", "id": container.id, "exec": exec_id,
                 "exit_code": 128 - code if code < 0 else code,
                 "signal": -code if code < 0 else None, "oom_killed": False, "stats": None}
        if exec_id is not None:
            container.execs.pop(exec_id, None)
            self._send(event)
            return
        mounts_hold, container.mounts_hold = container.mounts_hold, -1
        self._forget(container)
        try:
            if self.exit_stats:
                stats = asdict(container.cgroup.stats())
                event["oom_killed"], event["stats"] = stats["oom_kills"] > 0, stats
            else:
                event["oom_killed"] = container.cgroup.oom_kills() > 0
            self._send(event)
        finally:
            # Killing what is left (nothing, with a private pid namespace: pid 1's exit
            # emptied it) and removing the cgroup wait until the event is out and no
            # request is waiting; a new start of the same id does it first.
            self.retiring[container.id] = container.cgroup
            _close_quietly(mounts_hold)             # its mounts go now, after the event

    def _send(self, message: dict, fds: list[int] = ()) -> None:
        """To the owner; if it is gone, stop serving: the loop's end cleans up."""
        try:
            send_message(self.sock, message, fds)
        except OSError:
            self.running = False

    @staticmethod
    def _release_layer(container: _Container) -> None:
        """The start settled: its mount (if any) holds the loop device from now on."""
        if container.layer_hold >= 0:
            _close_quietly(container.layer_hold)
            container.layer_hold = -1
        for fd in container.image_holds:
            _close_quietly(fd)
        container.image_holds = ()

    def _forget(self, container: _Container) -> None:
        self._release_layer(container)
        self.containers.pop(container.id, None)
        for key in [k for k in self.retiring if k.startswith(container.id + "/")]:
            self._retire(key)                   # its tests' cgroups go before its own
        if container.park is not None:
            container.park.close()               # EOF: a parked pid 1 exits
            container.park = None
        _close_quietly(container.mounts_hold)
        container.mounts_hold = -1
        z = container.zygote
        if z is not None:
            container.zygote = None
            self.selector.unregister(z.sock)
            z.sock.close()
            self._drop_tests(z)
        # Its execs stay in self.pids: each one's exit is still reported when it is
        # reaped. Dropped here, an exec still starting when pid 1 exited (a stop during
        # an exec) met a missing pid in _started (KeyError: the server died), and one
        # reaped later was filed as an early exit, for a new clone with its pid to take.

    def _remove(self, container: _Container) -> None:
        """Kill what is in the cgroup and delete it, now."""
        self._forget(container)
        container.cgroup.remove()

    def _retire(self, container_id: str) -> None:
        """Remove the cgroup of an exited container, if it still awaits removal."""
        cgroup = self.retiring.pop(container_id, None)
        if cgroup is not None:
            cgroup.remove()

    def _retire_one(self) -> None:
        container_id = next(iter(self.retiring))
        try:
            self._retire(container_id)
        except SandboxError as e:
            print(f"fork server: cleanup of {container_id}: {e}", file=sys.stderr)

    def _shutdown(self) -> None:
        if self.template is not None:
            self.template.close()           # EOF: the template exits
            self.template = None
        for container in list(self.containers.values()):
            try:
                self._remove(container)
            except SandboxError as e:
                print(f"fork server: cleanup of {container.id}: {e}", file=sys.stderr)
        while self.retiring:
            self._retire_one()
        self.cgroups.release()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    time.sleep(0.01)
            except ChildProcessError:
                break


_DEFERRED = object()


@dataclass
class _WithFds:
    """A reply that carries fds (sent, then closed on our side)."""
    value: Any
    fds: list[int]


def validate_process(process: Process) -> Process:
    """An exec'd process is checked by the same rules as a container's."""
    problems = check_process(process)
    if problems:
        raise InvalidArgument.of(problems)
    return process


def _bpf(program: seccomp.Program | None) -> tuple[bytes, int]:
    """A filter's instructions and flags for a C helper (none: empty)."""
    return (program.bpf, program.flags) if program else (b"", 0)


def _failure_report_end(raw: bytes) -> int | None:
    """Where the failure report at the start of ``raw`` ends, if another report (C1's
    "P" + pid, 5 bytes) follows it; None if not. An "E" report is one msgpack object. An
    "X" report's text has no NUL byte while a pid's top byte is always 0 (pid_max is
    at most 2**22), and no header ends like a "P" report: so a trailing "P" ... NUL is
    one."""
    if raw.startswith(b"E"):
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(raw[1:])
        try:
            unpacker.unpack()
        except Exception:                       # noqa: BLE001 -- not one object
            return None
        return 1 + unpacker.tell()
    if raw.startswith(b"X") and len(raw) >= 6 + 5 and raw[-5:-4] == b"P" and raw[-1] == 0:
        return len(raw) - 5
    return None


def _decode_failure(start: _Start) -> SandboxError:
    raw = bytes(start.buf)
    if raw.startswith(b"X") and start.failures is not None:       # from sbx-setup
        return native.decode_failure(raw, start.failures)
    if raw.startswith(b"X"):                     # from sbx-park
        return decode_failure(raw)
    if raw.startswith(b"E"):
        try:
            return from_wire(msgpack.unpackb(raw[1:], raw=False))
        except Exception:
            pass
    code = os.waitstatus_to_exitcode(start.status) if start.status is not None else None
    what = "exec" if start.exec_id else "container"
    if start.ready:                 # it exec'd, but its C1 died before naming it ("P")
        return SetupFailed(f"{what} setup died after the exec, before naming the "
                           f"process: its exit cannot be followed", {"step": "setup",
                                                                    "errno": 0})
    return SetupFailed(f"{what} setup died before exec (status {code})",
                       {"step": "setup", "errno": 0})


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _open_quietly(path: str) -> int:
    """``path`` opened for holding, or -1 if it is already gone."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> None:
    import argparse
    parser = argparse.ArgumentParser(prog="sandboxd-forkserver")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--cgroup-parent", default="sandboxd")
    parser.add_argument("--template-entry", action="append", default=[])
    parser.add_argument("--no-exit-stats", dest="exit_stats", action="store_false")
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    os.set_inheritable(sock.fileno(), False)
    ForkServer(sock, args.state_dir, args.cgroup_parent, tuple(args.template_entry),
               args.exit_stats).serve()


if __name__ == "__main__":
    main()
