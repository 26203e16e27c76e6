"""Run containers: the owner's side of the fork server.

``Runner`` (blocking; tests, benchmarks, scripts) and ``AsyncRunner`` (the daemon's
asyncio loop) both start one fork server with a plain exec and talk to it over a
SOCK_SEQPACKET socketpair (see :mod:`sandboxd.runner.forkserver` for the messages)::

    with Runner(state_dir="/run/sandboxd-x") as runner:
        result = runner.run(spec)              # RunResult(exit_code=0, stdout=b"...", ...)

Nothing here forks from the caller's process except that one exec, so the caller may
have threads (the daemon) without the usual fork-in-a-threaded-process hazards.
"""
from __future__ import annotations

import itertools
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import NotFound, SandboxError, Unavailable, from_wire
from .channel import recv_message, send_message, seqpacket_pair
from .park import take_message
from .spec import ContainerSpec, Limits, Process, to_dict

__all__ = ["Runner", "AsyncRunner", "RunResult", "ExitInfo"]


@dataclass(frozen=True)
class ExitInfo:
    exit_code: int
    signal: int | None = None
    oom_killed: bool = False
    stats: dict[str, int] | None = None       # cgroup counters read just before removal


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    duration: float
    signal: int | None = None
    oom_killed: bool = False
    timed_out: bool = False
    stats: dict[str, int] | None = None


def _exit_info(event: dict) -> ExitInfo:
    return ExitInfo(event["exit_code"], event.get("signal"), bool(event.get("oom_killed")),
                    event.get("stats"))


def _start_server(state_dir: str, cgroup_parent: str, template_entries: tuple[str, ...],
                  exit_stats: bool) -> tuple[socket.socket, subprocess.Popen]:
    os.makedirs(state_dir, 0o700, exist_ok=True)
    ours, theirs = seqpacket_pair()
    env = dict(os.environ)
    # The fork server must import this same package, also when it runs from a checkout.
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        # sys.executable, not its realpath: in a venv the symlink is what finds the venv.
        [sys.executable, "-m", "sandboxd.runner.forkserver",
         "--fd", str(theirs.fileno()), "--state-dir", state_dir,
         "--cgroup-parent", cgroup_parent,
         *[arg for entry in template_entries for arg in ("--template-entry", entry)],
         *([] if exit_stats else ["--no-exit-stats"])],
        pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env)
    theirs.close()
    return ours, proc


class _Protocol:
    """What both runners share: request ids, message shapes, the exit-event table."""

    def __init__(self, state_dir: str, cgroup_parent: str,
                 template_entries: tuple[str, ...] = (), exit_stats: bool = True):
        self.state_dir = state_dir
        self.cgroup_parent = cgroup_parent
        # An exit's cgroup counters (ExitInfo.stats). Off, an exit reads only the OOM
        # kill count: five files fewer between a container's exit and its report.
        self.exit_stats = exit_stats
        # module:function entries a spec may name (ContainerSpec.entry): the owner's
        # allow-list, never a client's (see runner/template.py)
        self.template_entries = tuple(template_entries)
        self.cgroup_version = ""
        self._rids = itertools.count(1)

    # A spec is checked where it is used: the fork server validates every spec it
    # receives, and its refusal is this call's InvalidArgument, word for word. Checking
    # it here too cost the daemon ~15 us of every cold start for the same answer.
    @staticmethod
    def _spawn_message(spec: ContainerSpec) -> dict:
        return {"op": "spawn", "spec": to_dict(spec)}

    @staticmethod
    def _prepare_message(spec: ContainerSpec, helper: str) -> dict:
        return {"op": "prepare", "spec": to_dict(spec), "helper": helper}

    @staticmethod
    def _take_message(container_id: str, process: Process) -> dict:
        return {"op": "take", "id": container_id, "process": to_dict(process)}

    @staticmethod
    def _result(reply: dict) -> Any:
        if "error" in reply:
            raise from_wire(reply["error"])
        return reply.get("ok")


class Runner(_Protocol):
    """A blocking handle on one fork server."""

    def __init__(self, state_dir: str = "/run/sandboxd/runner",
                 cgroup_parent: str = "sandboxd", template_entries: tuple[str, ...] = (),
                 exit_stats: bool = True):
        super().__init__(state_dir, cgroup_parent, template_entries, exit_stats)
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self._replies: dict[int, dict] = {}
        self._exits: dict[tuple[str, str | None], ExitInfo] = {}

    def __enter__(self) -> "Runner":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self._sock, self._proc = _start_server(self.state_dir, self.cgroup_parent,
                                                 self.template_entries, self.exit_stats)
        ready = self._next_message()
        self.cgroup_version = ready.get("cgroup_version", "")

    def close(self) -> None:
        """Stop the fork server; it kills and cleans every container it still runs."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    # -- low level
    def _next_message(self, timeout: float | None = None) -> dict:
        if self._sock is None:
            raise Unavailable("runner: not started")
        self._sock.settimeout(timeout)
        try:
            msg, fds = recv_message(self._sock)
        except socket.timeout:
            raise TimeoutError from None
        for fd in fds:
            os.close(fd)
        if msg is None:
            raise Unavailable("runner: the fork server exited")
        if msg.get("event") == "exit":
            self._exits[(msg["id"], msg.get("exec"))] = _exit_info(msg)
        elif "rid" in msg:
            self._replies[msg["rid"]] = msg
        return msg

    def _call(self, message: dict, fds: list[int] = ()) -> Any:
        rid = next(self._rids)
        send_message(self._sock, {**message, "rid": rid}, list(fds))
        while rid not in self._replies:
            self._next_message()
        return self._result(self._replies.pop(rid))

    # -- operations
    def spawn(self, spec: ContainerSpec, stdio: tuple[int, ...]) -> int:
        """Start ``spec`` with ``stdio`` (3 fds, or 1 terminal fd); returns pid 1's host
        pid once the workload has exec'd. Setup failures raise typed errors."""
        return self._call(self._spawn_message(spec), list(stdio))["pid"]

    def ping(self) -> dict[str, Any]:
        """The fork server's pid, its container count, and how it sets containers up
        (``setup``: "sbx-setup", or "python" until sbx-setup is built or without it)."""
        return self._call({"op": "ping"})

    def prepare(self, spec: ContainerSpec, helper: str = "") -> int:
        """Make ``spec``'s container (namespaces, cgroup, mounts, root) and park its
        pid 1 before the exec, in ``helper`` (sbx-park's path, runner/park.py; "": in
        Python); returns that pid. ``spec.process`` sets all of the process but its
        args, env and terminal: its user, groups, working directory, ulimits,
        capabilities and no_new_privileges are applied at park."""
        return self._call(self._prepare_message(spec, helper))["pid"]

    def take(self, container_id: str, process: Process, stdio: tuple[int, ...]) -> int:
        """Run ``process`` in a prepared container; returns once it has exec'd (as
        :meth:`spawn`). Only its args, env and terminal may differ from the prepared
        process. Used once: the container's exit ends it as any other's."""
        return self._call(self._take_message(container_id, process), list(stdio))["pid"]

    def spawn_terminal(self, spec: ContainerSpec) -> tuple[int, int]:
        """Start ``spec`` (``process.terminal``) on a pty made inside the container;
        returns (pid, pty master fd)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with ours:
            with theirs:
                pid = self.spawn(spec, (theirs.fileno(),))
            return pid, receive_terminal(ours)

    def exec(self, container_id: str, exec_id: str, process: Process,
             stdio: tuple[int, ...]) -> int:
        return self._call({"op": "exec", "id": container_id, "exec_id": exec_id,
                           "process": to_dict(process)}, list(stdio))["pid"]

    def wait(self, container_id: str, exec_id: str | None = None,
             timeout: float | None = None) -> ExitInfo:
        deadline = None if timeout is None else time.monotonic() + timeout
        key = (container_id, exec_id)
        while key not in self._exits:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._next_message(left)
        return self._exits.pop(key)

    def kill(self, container_id: str, sig: int = signal.SIGKILL, *, all: bool = False,
             exec_id: str | None = None) -> None:
        self._call({"op": "kill", "id": container_id, "signal": int(sig), "all": all,
                    "exec_id": exec_id})

    def update(self, container_id: str, limits: Limits) -> None:
        self._call({"op": "update", "id": container_id, "limits": to_dict(limits)})

    def stats(self, container_id: str) -> dict[str, int]:
        return self._call({"op": "stats", "id": container_id})

    def pids(self, container_id: str) -> list[int]:
        return self._call({"op": "pids", "id": container_id})

    def pause(self, container_id: str) -> None:
        self._call({"op": "pause", "id": container_id})

    def resume(self, container_id: str) -> None:
        self._call({"op": "resume", "id": container_id})

    def run(self, spec: ContainerSpec, input: bytes | None = None,
            timeout: float | None = None) -> RunResult:
        """Start ``spec``, feed ``input``, collect its output, wait for its exit."""
        began = time.monotonic()
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            self.spawn(spec, (in_r, out_w, err_w))
        except BaseException:
            for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
                os.close(fd)
            raise
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        output = _Collector(in_w, input or b"", out_r, err_r, self._sock)
        timed_out = False
        deadline = None if timeout is None else began + timeout
        while (spec.id, None) not in self._exits or output.open:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0 and not timed_out:
                timed_out = True
                if (spec.id, None) not in self._exits:
                    self.kill(spec.id, all=True)
                deadline = None
                continue
            if output.poll(left):
                self._next_message()
        info = self._exits.pop((spec.id, None))
        return RunResult(info.exit_code, bytes(output.out), bytes(output.err),
                         time.monotonic() - began, info.signal, info.oom_killed, timed_out,
                         info.stats)


def receive_terminal(console: socket.socket) -> int:
    """The pty master a container sent back over its console socket."""
    _msg, fds, _flags, _addr = socket.recv_fds(console, 16, 1)
    if not fds:
        raise Unavailable("runner: the container sent no terminal")
    os.set_inheritable(fds[0], False)     # recv_fds ignores MSG_CMSG_CLOEXEC on 3.11
    return fds[0]


class _Collector:
    """Pumps a container's stdin/stdout/stderr pipes; tells when the control socket has
    something to read."""

    def __init__(self, in_w: int, data: bytes, out_r: int, err_r: int,
                 control: socket.socket):
        self.out, self.err = bytearray(), bytearray()
        self.selector = selectors.DefaultSelector()
        self.selector.register(control, selectors.EVENT_READ, "control")
        self.selector.register(out_r, selectors.EVENT_READ, self.out)
        self.selector.register(err_r, selectors.EVENT_READ, self.err)
        self.data = memoryview(data)
        self.open = 2
        if data:
            os.set_blocking(in_w, False)
            self.selector.register(in_w, selectors.EVENT_WRITE, "stdin")
        else:
            os.close(in_w)

    def poll(self, timeout: float | None) -> bool:
        """Move bytes; True when the control socket is readable."""
        control = False
        for key, _ in self.selector.select(timeout):
            if key.data == "control":
                control = True
            elif key.data == "stdin":
                try:
                    sent = os.write(key.fd, self.data[:65536])
                except (BrokenPipeError, BlockingIOError) as e:
                    sent = len(self.data) if isinstance(e, BrokenPipeError) else 0
                self.data = self.data[sent:]
                if not self.data:
                    self.selector.unregister(key.fd)
                    os.close(key.fd)
            else:
                chunk = os.read(key.fd, 65536)
                if chunk:
                    key.data.extend(chunk)
                else:
                    self.selector.unregister(key.fd)
                    os.close(key.fd)
                    self.open -= 1
        return control


class HelperConnection:
    """The asyncio side of a single-threaded helper process (the fork server, the
    network server) over a SEQPACKET socket: it answers ``ready`` first, then replies and
    events. A subclass handles its messages and fails what is pending when the helper is
    gone; ``close`` makes the helper clean up what it made and exit."""

    lost_message = "the helper exited"

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self._ready: Any = None
        self._closing = False

    async def _attach(self, sock: socket.socket, proc: subprocess.Popen) -> dict:
        """Serve ``sock`` on the running loop; returns the helper's ``ready`` message."""
        import asyncio
        loop = asyncio.get_running_loop()
        self._sock, self._proc = sock, proc
        sock.setblocking(False)
        self._ready = loop.create_future()
        loop.add_reader(sock.fileno(), self._on_readable)
        return await asyncio.wait_for(self._ready, 30)

    async def close(self) -> None:
        import asyncio
        self._closing = True
        self._lost()
        if self._proc is not None:
            proc, self._proc = self._proc, None
            await asyncio.get_running_loop().run_in_executor(None, proc.wait)

    def _on_readable(self) -> None:
        # One message a call: the loop calls again while more wait (level-triggered),
        # so no call ends in a recvmsg that finds nothing (a syscall and an exception).
        if self._sock is None:
            return
        try:
            msg, fds = recv_message(self._sock)
        except BlockingIOError:
            return
        except OSError:
            msg, fds = None, []
        if fds and msg is not None and "rid" in msg:
            msg["fds"] = fds                      # a reply's fds go to its caller
        else:
            for fd in fds:
                os.close(fd)
        if msg is None:
            self._lost()
            return
        if msg.get("event") == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(msg)
        else:
            self._on_message(msg)

    def _lost(self) -> None:
        import asyncio
        connected = self._sock is not None
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        err = Unavailable(self.lost_message)
        self._fail_pending(err)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(err)
        elif connected and not self._closing:
            self._died()

    def _died(self) -> None:
        """The helper ended on its own after its start (killed, crashed)."""

    def _on_message(self, msg: dict) -> None:
        raise NotImplementedError

    def _fail_pending(self, err: Exception) -> None:
        raise NotImplementedError


class AsyncRunner(_Protocol, HelperConnection):
    """The daemon's handle: awaitable calls, exits delivered to ``on_exit``."""

    lost_message = "runner: the fork server exited"

    def __init__(self, on_exit: Callable[[str, str | None, ExitInfo], None],
                 state_dir: str = "/run/sandboxd/runner", cgroup_parent: str = "sandboxd",
                 template_entries: tuple[str, ...] = (), exit_stats: bool = True,
                 on_lost: Callable[[], None] | None = None):
        _Protocol.__init__(self, state_dir, cgroup_parent, template_entries, exit_stats)
        HelperConnection.__init__(self)
        self.on_exit = on_exit
        # Called when the fork server dies under us: its containers are out of reach
        # (their exits will never be reported), and start() makes a new one.
        self.on_lost = on_lost
        self._waiters: dict[int, Any] = {}
        # Prepared containers whose take we send to the parked pid 1 ourselves: its
        # channel and the prepared process (prepare(direct=True)); and those taken so,
        # until the fork server reports the exec.
        self._channels: dict[str, tuple[socket.socket, Process]] = {}
        self._taking: dict[str, Any] = {}
        self.pid = 0

    async def start(self) -> None:
        """Start the fork server; again after it died (its first act kills and removes
        the containers the dead one left: cgroups.claim)."""
        import asyncio
        if self._proc is not None:                  # the dead one: reaped, not a zombie
            proc, self._proc = self._proc, None
            await asyncio.get_running_loop().run_in_executor(None, proc.wait)
        sock, proc = _start_server(self.state_dir, self.cgroup_parent, self.template_entries,
                                   self.exit_stats)
        ready = await self._attach(sock, proc)
        self.cgroup_version = ready.get("cgroup_version", "")
        self.pid = proc.pid

    def _on_message(self, msg: dict) -> None:
        event = msg.get("event")
        if event == "exit":
            taking = self._taking.pop(msg["id"], None) if msg.get("exec") is None else None
            if taking is not None:          # a take we sent that did not exec
                taking.set_result({"error": msg.get("error") or NotFound(
                    f"container {msg['id']}: its prepared process is gone").to_wire()})
                return
            if msg.get("exec") is None:
                self._drop_channel(msg["id"])           # a prepared one, discarded
            self.on_exit(msg["id"], msg.get("exec"), _exit_info(msg))
        elif event == "started":
            taking = self._taking.pop(msg["id"], None)
            if taking is not None:
                taking.set_result({"ok": {"pid": msg["pid"]}})
        elif "rid" in msg:
            waiter = self._waiters.pop(msg["rid"], None)
            if waiter is not None and not waiter.done():
                waiter.set_result(msg)
            else:
                for fd in msg.get("fds", ()):
                    os.close(fd)

    def _died(self) -> None:
        if self.on_lost is not None:
            self.on_lost()

    def _fail_pending(self, err: Exception) -> None:
        for waiter in (*self._waiters.values(), *self._taking.values()):
            if not waiter.done():
                waiter.set_exception(err)
        self._waiters.clear()
        self._taking.clear()
        for container_id in list(self._channels):
            self._drop_channel(container_id)

    def _drop_channel(self, container_id: str) -> None:
        channel = self._channels.pop(container_id, None)
        if channel is not None:
            channel[0].close()

    def _send(self, message: dict, fds: list[int] = ()) -> Any:
        """Send a request now; the future its reply completes."""
        import asyncio
        if self._sock is None:
            raise Unavailable("runner: the fork server is not running")
        rid = next(self._rids)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[rid] = waiter
        send_message(self._sock, {**message, "rid": rid}, list(fds))
        return waiter

    async def _call(self, message: dict, fds: list[int] = ()) -> Any:
        return self._result(await self._send(message, fds))

    async def _start(self, container_id: str, waiter: Any) -> int:
        """A spawn's or a take's reply (``waiter``). The process starts whatever becomes
        of this call: if its caller is cancelled meanwhile (the client went away mid-run),
        the process, once started, is killed, or it would run on with no record."""
        import asyncio
        try:
            reply = await asyncio.shield(waiter)
        except asyncio.CancelledError:
            waiter.add_done_callback(
                lambda done: self._kill_abandoned(container_id, done))
            raise
        return self._result(reply)["pid"]

    def _kill_abandoned(self, container_id: str, done: Any) -> None:
        import asyncio
        if done.cancelled() or done.exception() is not None or "error" in done.result():
            return                              # it did not start
        asyncio.ensure_future(self._kill_quietly(container_id))

    async def _kill_quietly(self, container_id: str) -> None:
        try:
            await self.kill(container_id, all=True)
        except SandboxError:
            pass                                # gone already, or the fork server with it

    async def spawn(self, spec: ContainerSpec, stdio: tuple[int, ...]) -> int:
        return await self._start(spec.id, self._send(self._spawn_message(spec), list(stdio)))

    async def ping(self) -> dict[str, Any]:
        return await self._call({"op": "ping"})

    async def prepare(self, spec: ContainerSpec, helper: str = "",
                      direct: bool = False) -> int:
        """``direct``: its take is sent to the parked pid 1 by us, not by the fork
        server, when the server allows it (no filter to load at the take): one hop
        fewer between a pool hit's request and its exec."""
        reply = await self._send({**self._prepare_message(spec, helper), "direct": direct})
        fds = reply.get("fds") or []
        try:
            result = self._result(reply)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        if result.get("channel") and len(fds) == 1:
            self._channels[spec.id] = (socket.socket(fileno=fds.pop()), spec.process)
        for fd in fds:
            os.close(fd)
        return result["pid"]

    async def take(self, container_id: str, process: Process,
                   stdio: tuple[int, ...]) -> int:
        waiter = self._take_directly(container_id, process, stdio) \
            if container_id in self._channels \
            else self._send(self._take_message(container_id, process), list(stdio))
        return await self._start(container_id, waiter)

    def _take_directly(self, container_id: str, process: Process,
                       stdio: tuple[int, ...]) -> Any:
        """The take, sent to the parked pid 1 over its channel (prepare(direct=True)),
        checked as the fork server checks one; a future of the fork server's report of
        its exec (_on_message)."""
        import asyncio
        channel, prepared = self._channels.pop(container_id)
        try:
            message = take_message(prepared, process, len(stdio))
            waiter = asyncio.get_running_loop().create_future()
            try:
                socket.send_fds(channel, [message], list(stdio))
            except OSError:
                raise NotFound(f"container {container_id}: its prepared process is gone"
                               ) from None
            self._taking[container_id] = waiter
            return waiter
        finally:
            channel.close()

    async def exec(self, container_id: str, exec_id: str, process: Process,
                   stdio: tuple[int, ...]) -> int:
        return (await self._call({"op": "exec", "id": container_id, "exec_id": exec_id,
                                  "process": to_dict(process)}, list(stdio)))["pid"]

    async def open_layer(self, image: str) -> int:
        """An O_PATH fd of a layer image's filesystem (``fs``: the upper, ``work``),
        mounted in no namespace of ours; close it when done (see runner/layers.py)."""
        import asyncio
        if self._sock is None:
            raise Unavailable("runner: the fork server is not running")
        rid = next(self._rids)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[rid] = waiter
        send_message(self._sock, {"op": "open_layer", "image": image, "rid": rid})
        reply = await waiter
        fds = reply.get("fds") or []
        if "error" in reply or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            self._result(reply)
            raise Unavailable("runner: open_layer came back without its fd")
        return fds[0]

    async def kill(self, container_id: str, sig: int = signal.SIGKILL, *, all: bool = False,
                   exec_id: str | None = None) -> None:
        await self._call({"op": "kill", "id": container_id, "signal": int(sig), "all": all,
                          "exec_id": exec_id})

    async def update(self, container_id: str, limits: Limits) -> None:
        await self._call({"op": "update", "id": container_id, "limits": to_dict(limits)})

    async def stats(self, container_id: str) -> dict[str, int]:
        return await self._call({"op": "stats", "id": container_id})

    async def pids(self, container_id: str) -> list[int]:
        return await self._call({"op": "pids", "id": container_id})

    async def pause(self, container_id: str) -> None:
        await self._call({"op": "pause", "id": container_id})

    async def resume(self, container_id: str) -> None:
        await self._call({"op": "resume", "id": container_id})
