"""A ``jupyter_client`` kernel provisioner: every kernel runs in its own sandboxd container.

A kernelspec opts in through its metadata (``sbx notebook kernelspec install`` writes
one)::

    {"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
     "display_name": "Python 3 (sandboxed)", "language": "python",
     "metadata": {"kernel_provisioner": {"provisioner_name": "sandboxd-provisioner",
                                         "config": {"memory": "1g", "cpus": 1}}}}

and every Jupyter tool that starts kernels through ``jupyter_client`` (nbclient,
papermill, nbconvert, JupyterLab, nbmake, nbval) then gets ``ipykernel`` in a fresh
container with those limits; ``network`` is ``none`` unless the config says otherwise.

How the pieces meet:

- **Transport.** The kernel's five ZMQ channels use the ``ipc`` transport: unix sockets
  in a private 0700 directory (``<jupyter runtime dir>/sbxk-*``) that is bind-mounted
  into the container at the same path, next to the connection file. Nothing listens on
  TCP, so a kernel with no network is reachable from the host side only, and only by
  whoever may enter that directory.
- **The environment.** With the ``host`` image the kernel runs this process's Python
  (``python`` in the kernelspec's argv means it) with its prefixes and ``sys.path``
  shown read-only at the same paths, as the pytest plugin shows its own (an
  :class:`~sandboxd.runner.interpreter.InterpreterView`); another image runs its own
  ``python3`` and needs ``ipykernel`` installed.
- **Life cycle.** The container is one ``container.run`` stream on this provisioner's
  daemon session (so the daemon removes it if this process dies); ``poll``/``wait``
  read the stream's end, signals go through ``container.kill`` (the container's init
  passes them to the kernel), shutdown kills and removes the container.
- **A dead kernel says why.** If the kernel dies during a cell (out of memory at its
  limit, a signal, a crash), the provisioner publishes, in the kernel's place on its
  iopub socket, an ``error`` output for that cell naming the reason ("out of memory
  (OOM) ... exit code 137") before the kernel is reported dead, so the notebook shows
  it where the cell stopped; nbclient then raises ``DeadKernelError`` as usual.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zmq
from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import KernelProvisionerBase
from jupyter_client.session import Session as JupyterSession

from sandboxd.envfile import parse_env
from sandboxd.errors import CommandNotFound, InvalidArgument, SandboxError
from sandboxd.flags import build_config
from sandboxd.protocol import resolve_host
from sandboxd.runner.spec import Mount

from .kernelpool import KernelStream
from .session import default_python, host_environment

__all__ = ["SandboxdProvisioner", "KernelSettings", "KernelStartError", "kernel_settings",
           "kernel_json", "PROVISIONER_NAME", "DISPLAY_NAME"]

PROVISIONER_NAME = "sandboxd-provisioner"
DISPLAY_NAME = "Python 3 (sandboxed)"
CHANNELS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
STDERR_KEPT = 64 * 1024          # bytes of the kernel's own output kept for error messages
UNIX_PATH_MAX = 107              # sun_path holds 108 bytes with the terminating NUL
SHUTDOWN_WAIT = 0.5              # seconds shutdown_requested and terminate wait for the exit
KILL_WAIT = 2.0                  # seconds kill waits for the killed kernel's container to end
# ipykernel (7.4 at least) can hang in its own shutdown: after the shutdown_reply its
# control thread flushes stdout through the iopub thread that the main thread is
# stopping, and waits 10 s for it (then, at times, for ever), while the main thread waits
# for the control thread. jupyter_client kills it after its shutdown_wait_time (5 s):
# 1 notebook run in ~12 here took 4.2 s instead of 0.7 s, sandboxed or not. A kernel that
# answered a shutdown and has not gone idle this long after is stuck so, and is killed.
STUCK_AFTER = 1.0                # seconds (a kernel goes idle ~20 ms after its reply)
REPORT_SUBSCRIBER_WAIT = 2.0     # seconds the death report waits for a client to (re)join
# Host environment variables the kernel also gets (everything else is the image's, the
# kernelspec's and the config's): locale, terminal, hashing and warnings, Jupyter's own.
PASSED_ENV = ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "LC_NUMERIC", "TZ",
              "TERM", "COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "CLICOLOR",
              "PYTHONHASHSEED", "PYTHONWARNINGS", "PYTHONIOENCODING", "PYTHONUTF8",
              "MPLBACKEND")


class KernelStartError(SandboxError):
    """The kernel's container could not start, or the kernel died before it was ready."""
    code = "kernel_start_failed"      # client-side only: never sent over the wire


# ---------------------------------------------------------------- settings

@dataclass(frozen=True)
class KernelSettings:
    """``metadata.kernel_provisioner.config`` of a kernelspec, checked."""
    image: str = "host"
    python: str = ""                  # the interpreter in the image ("": the image's own)
    memory: int | str | None = None
    cpus: float | str | None = None
    pids_limit: int | None = None
    network: str = "none"
    env: tuple[str, ...] = ()         # KEY=VALUE
    volumes: tuple[str, ...] = ()     # /host:/container[:ro]
    workdir: str = ""
    notebook_dir: str = "none"        # the launch's working directory shown: none, ro, rw
    host: str = ""                    # the daemon's address ("": $SANDBOXD_HOST or default)
    start_timeout: float = 60.0       # seconds until the kernel's sockets are bound
    pool: int = 0                     # started kernels kept ready (ipython_ext.kernelpool)

    def options(self) -> dict[str, Any]:
        """The limit keywords of :func:`sandboxd.config.build_config`."""
        return dict(memory=self.memory, cpus=self.cpus, pids_limit=self.pids_limit,
                    network_mode=self.network)


# key -> (accepted types, what they are called, build_config's keyword that checks the
# value, or "" for none)
_KEYS: dict[str, tuple[tuple[type, ...], str, str]] = {
    "image": ((str,), "a string", ""),
    "python": ((str,), "a string", ""),
    "memory": ((str, int), "a size ('512m') or a number of bytes", "memory"),
    "cpus": ((int, float, str), "a number", "cpus"),
    "pids_limit": ((int,), "an integer", "pids_limit"),
    "network": ((str,), "a string", "network_mode"),
    "env": ((dict, list), "a mapping or a list of KEY=VALUE", "env"),
    "volumes": ((list,), "a list of /host:/container[:ro]", "volumes"),
    "workdir": ((str,), "a string", "workdir"),
    "notebook_dir": ((str,), "none, ro or rw", ""),
    "host": ((str,), "a string", ""),
    "start_timeout": ((int, float), "a number of seconds", ""),
    "pool": ((int,), "a number of kernels (0 to 16)", ""),
}
MAX_POOL = 16                    # started kernels per configuration: each holds ~60 MiB
NOTEBOOK_DIR = ("none", "ro", "rw")


def kernel_settings(config: Mapping[str, Any], where: str = "kernel_provisioner.config"
                    ) -> KernelSettings:
    """Check a provisioner config; every problem names its key (``where`` says where
    the keys come from). Raises :class:`~sandboxd.errors.InvalidArgument`."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, value in config.items():
        if key not in _KEYS:
            problems.append(f"{key!r} is not a setting (known: {', '.join(_KEYS)})")
            continue
        types, wanted, keyword = _KEYS[key]
        if isinstance(value, bool) or not isinstance(value, types):
            problems.append(f"{key}: expected {wanted}, got {value!r}")
            continue
        if keyword:
            try:
                build_config("host", ["python"], **{keyword: value})
            except InvalidArgument as exc:
                problems += [f"{key}: {_without_name(p, keyword)}"
                             for p in exc.details.get("problems") or [exc.message]]
                continue
        if key == "env":
            value = tuple(parse_env(value))
        elif key == "volumes":
            value = tuple(str(v) for v in value)
        elif key == "start_timeout" and value <= 0:
            problems.append(f"start_timeout: must be positive, got {value!r}")
            continue
        elif key == "pool" and not 0 <= value <= MAX_POOL:
            problems.append(f"pool: must be 0 to {MAX_POOL} kernels, got {value!r}")
            continue
        elif key == "notebook_dir" and value not in NOTEBOOK_DIR:
            problems.append(f"notebook_dir: expected one of {', '.join(NOTEBOOK_DIR)}, "
                            f"got {value!r}")
            continue
        elif key in ("image", "network") and not value:
            problems.append(f"{key}: must not be empty")
            continue
        values[key] = value
    if problems:
        raise InvalidArgument(f"{where}: {'; '.join(problems)}", {"problems": problems})
    return KernelSettings(**values)


def kernel_json(config: Mapping[str, Any], display_name: str = DISPLAY_NAME
                ) -> dict[str, Any]:
    """A kernelspec (``kernel.json``) whose kernels run in sandboxd containers with the
    provisioner ``config`` (checked first: a bad value is refused here, naming its key).
    ``python`` in its argv stands for the image's interpreter."""
    kernel_settings(config)
    return {"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": display_name, "language": "python", "interrupt_mode": "signal",
            "metadata": {"kernel_provisioner": {"provisioner_name": PROVISIONER_NAME,
                                                "config": dict(config)}}}


def _launch_cwd(launch: Mapping[str, Any]) -> str:
    """The directory a kernel is launched in: the launch's ``cwd``, else this process's
    own (where a local kernel would start: nbconvert gives none for a notebook in it)."""
    if launch.get("cwd"):
        return os.path.abspath(os.fspath(launch["cwd"]))
    try:
        return os.getcwd()
    except FileNotFoundError:                 # this process's directory was removed
        return ""


def _signal(client: Any, container_id: str, signum: int) -> None:
    try:
        client.call("container.kill", {"id": container_id, "signal": int(signum)})
    except SandboxError:
        pass                # it ended meanwhile: the reader records how


def _runs_ipykernel(cmd: Sequence[str]) -> bool:
    """``cmd`` starts ipykernel (``python -m ipykernel_launcher`` or ``-m ipykernel``)."""
    return any(a == "-m" and b in ("ipykernel_launcher", "ipykernel")
               for a, b in zip(cmd, cmd[1:]))


def _without_name(problem: str, keyword: str) -> str:
    """``build_config``'s problem text minus its own field name (the key says it)."""
    return re.sub(rf"^(host\.)?{keyword}: ", "", problem)


# ---------------------------------------------------------------- the provisioner

TEMPLATES_KEPT = 32                       # pool keys remembered (_pool_template)
_TEMPLATES: dict[str, str] = {}

class SandboxdProvisioner(KernelProvisionerBase):  # type: ignore[misc]
    """Starts the kernelspec's kernel in a sandboxd container (see the module's doc)."""

    def __init__(self, **kwargs: Any):
        # jupyter_client passes the kernelspec's provisioner config as keyword arguments,
        # beside the traits (kernel_id, kernel_spec, parent).
        own = type(self).class_trait_names()
        config = {k: kwargs.pop(k) for k in list(kwargs) if k not in own}
        name = getattr(kwargs.get("parent"), "kernel_name", "") or \
            getattr(kwargs.get("kernel_spec"), "display_name", "")
        self.settings = kernel_settings(
            config, f"kernelspec {name!r}: metadata.kernel_provisioner.config")
        super().__init__(**kwargs)
        self.death_reason = ""          # why the kernel ended, when it was not asked to
        self._client: Any = None
        self._own_client = True         # False: a pool's session (not closed with the kernel)
        self._dir = ""                  # the private directory of sockets and connection file
        self._pooled_dir = ""           # a pooled kernel's own directory (its sockets)
        self._session_name = ""         # JPY_SESSION_NAME, for the connection file
        self._taken_from: Any = None    # a pooled configuration's pool (released as it ends)
        self._stream: Any = None        # the container.run stream while there is a kernel
        self._reader: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._watch_stop: tuple[int, int] | None = None
        self._container_id = ""
        self._end: dict[str, Any] | None = None    # the stream's result once it ended
        self._end_error: BaseException | None = None
        self._exit_code: int | None = None   # set once the end is fully handled
        self._ready = False             # the kernel has bound its sockets
        self._stopping = False          # a shutdown, terminate or kill was asked for
        self._detached = False          # a pooled kernel shutting down in the background
        self._busy: dict[str, Any] | None = None   # the execute_request a cell runs for
        self._output = bytearray()      # the tail of the kernel's own stdout/stderr
        # When iopub showed the kernel's shutdown_reply, and whether it went idle after.
        self._replied_at: float | None = None
        self._idle_after_reply = False

    # -- where the kernel's sockets live
    def _kernel_dir(self) -> str:
        if not self._dir:
            from jupyter_core.paths import jupyter_runtime_dir
            runtime = jupyter_runtime_dir()
            # The socket paths must fit a unix address: a deep runtime dir falls back.
            parent = runtime if len(runtime) < UNIX_PATH_MAX - 24 else tempfile.gettempdir()
            os.makedirs(parent, mode=0o700, exist_ok=True)
            self._dir = tempfile.mkdtemp(prefix="sbxk-", dir=parent)     # mode 0700
        return self._dir

    @property
    def has_process(self) -> bool:
        return self._stream is not None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Point the kernel manager at ipc sockets in the kernel's private directory
        and build the kernel's command (the connection file is written by the launch)."""
        km = self.parent
        directory = self._kernel_dir()
        if os.path.dirname(km.connection_file or "") != directory:
            if km._connection_file_written:     # written elsewhere: the container cannot see it
                km.cleanup_connection_file()
            km.connection_file = os.path.join(
                directory, os.path.basename(km.connection_file or "")
                or f"kernel-{self.kernel_id}.json")
        km.transport = "ipc"
        km.ip = os.path.join(directory, "k")
        extra_arguments = kwargs.pop("extra_arguments", [])
        self._session_name = kwargs.get("env", {}).get("JPY_SESSION_NAME", "")
        cmd = km.format_kernel_cmd(extra_arguments=extra_arguments)
        if self.kernel_spec.argv and re.fullmatch(r"python[\d.]*", self.kernel_spec.argv[0]):
            cmd[0] = self._python()
        if _runs_ipykernel(cmd) and not any(a.startswith("--HistoryManager.") for a in cmd):
            # The history file would live in the container's writable layer and go with
            # it: an in-memory database keeps %history, In and _i without a disk write
            # (and its saving thread) after every cell.
            cmd.append("--HistoryManager.hist_file=:memory:")
        return await super().pre_launch(cmd=cmd, **kwargs)

    def _write_connection_file(self) -> None:
        """The file a kernel started cold reads. A kernel taken from a pool has its own
        connection, which jupyter_client writes after the launch: written before (in
        pre_launch), the file was read back, found different and written again, ~0.7 ms
        of a 250 ms notebook run."""
        self.parent.write_connection_file(jupyter_session=self._session_name)
        self.connection_info = self.parent.get_connection_info()

    def _python(self) -> str:
        return self.settings.python or default_python(self.settings.image)

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Start the container and wait until the kernel has bound its sockets (or has
        died: then say why, e.g. the image has no ipykernel)."""
        self._reset()
        try:
            pool = await self._pool(cmd, kwargs) if self.settings.pool else None
            if pool is None or not self._adopt(pool):     # no blocking call: in the loop
                await self._start(cmd, kwargs)
        except BaseException:
            await self.cleanup()      # jupyter_client does not clean up a failed start
            raise
        if pool is not None:
            # A taken kernel is never returned: start the next one, once this kernel has
            # ended if the pool still has one ready (see kernelpool.REFILL_DEFER).
            self._taken_from = pool
            pool.refill(defer=True)
        self._ready = True
        self._watch()
        return self.connection_info

    async def _pool(self, cmd: list[str], launch: Mapping[str, Any]) -> Any:
        """This configuration's pool of started kernels (``pool`` in the config). The key
        is the container configuration the cold path would use, with the connection
        file and the kernel's directory left as placeholders: a launch with another env
        or working directory gets another pool (see ipython_ext.kernelpool)."""
        from jupyter_core.paths import jupyter_runtime_dir

        from . import kernelpool
        template = self._pool_template(cmd, launch)
        session = {"signature_scheme": self.parent.session.signature_scheme,
                   "kernel_name": getattr(self.parent, "kernel_name", "") or ""}
        host = self.settings.host or os.environ.get("SANDBOXD_HOST", "")

        def connect() -> Any:
            from sandboxd.api import Client
            return Client(self.settings.host or None, session=True)
        args = (host, template, self.settings.pool, connect,
                os.path.dirname(self._dir) or jupyter_runtime_dir(), session,
                self.settings.start_timeout)
        if kernelpool.connected(host):           # a dict lookup: no thread hop needed
            return kernelpool.pool_for(*args)
        return await asyncio.to_thread(kernelpool.pool_for, *args)

    def _pool_template(self, cmd: list[str], launch: Mapping[str, Any]) -> str:
        """The pool's key: the container configuration as JSON, the connection file and
        the kernel's directory as placeholders. Made once per set of what goes into it
        (~1 ms: the client's view, the flags); launches differ in those two paths only."""
        connection_file = self.parent.connection_file
        inputs = json.dumps([
            [arg.replace(connection_file, "{connection_file}") for arg in cmd],
            sorted((launch.get("env") or {}).items()), _launch_cwd(launch),
            repr(self.settings), sorted(self.kernel_spec.env),
            getattr(self.parent, "kernel_name", "") or "", sys.path, os.getuid()],
            default=str)
        template = _TEMPLATES.pop(inputs, None)
        if template is None:
            config = self._container_config(cmd, launch).to_dict()
            # A pooled container starts before its kernel has an id: its label is empty.
            config["labels"] = [label if not label.startswith("jupyter.kernel_id=")
                                else "jupyter.kernel_id=" for label in config.get("labels", [])]
            template = json.dumps(config, sort_keys=True).replace(
                connection_file, "{connection_file}").replace(self._dir, "{kernel_dir}")
        _TEMPLATES[inputs] = template                   # the most recent last
        while len(_TEMPLATES) > TEMPLATES_KEPT:
            del _TEMPLATES[next(iter(_TEMPLATES))]
        return template

    def _adopt(self, pool: Any) -> bool:
        """Take a started kernel from ``pool``: its stream's events come here from now
        on, and its connection info is what launch_kernel returns. False: none ready."""
        while True:
            kernel = pool.take()
            if kernel is None:
                return False
            self._container_id, self._output = kernel.container_id, kernel.output
            if kernel.stream.hand_to(self):
                break
            self._container_id, self._output = "", bytearray()     # it died parked
        self._client, self._own_client = pool.client, False
        self._pooled_dir = kernel.directory
        self._stream, self._reader = kernel.stream.stream, kernel.stream.thread
        self.connection_info = kernel.info
        return True

    async def _start(self, cmd: list[str], launch: Mapping[str, Any]) -> None:
        self._write_connection_file()
        for name in CHANNELS:                  # a previous kernel's sockets (restart)
            try:
                os.unlink(self._socket_path(name))
            except FileNotFoundError:
                pass
        params = {"config": self._container_config(cmd, launch).to_dict(), "stdin": False,
                  "remove": True, "detach": False}
        if self._client is None:
            from sandboxd.api import Client
            self._client = await asyncio.to_thread(Client, self.settings.host or None,
                                                   session=True)
            self._own_client = True
        self._stream = await asyncio.to_thread(self._client.stream, "container.run", params)
        self._reader = KernelStream(self._stream, self,
                                    f"sandboxd-kernel-{self.kernel_id}").thread
        deadline = time.monotonic() + self.settings.start_timeout
        while not all(os.path.exists(self._socket_path(n)) for n in CHANNELS):
            if self._end is not None or self._end_error is not None:
                await self.wait()
                raise self._start_error()
            if time.monotonic() > deadline:
                self._stopping = True
                raise KernelStartError(
                    f"the kernel in image {self.settings.image!r} did not bind its sockets "
                    f"within {self.settings.start_timeout:g}s (start_timeout)"
                    + self._output_tail())
            await asyncio.sleep(0.005)

    def _socket_path(self, channel: str) -> str:
        return f"{self.connection_info['ip']}-{self.connection_info[channel]}"

    def _container_config(self, cmd: list[str], launch: Mapping[str, Any]) -> Any:
        """The container: the kernel's command under an init, the kernel's directory
        bound read-write at its own path, a fresh /tmp, the client's Python environment
        (host image), the limits."""
        from sandboxd.runner.interpreter import ViewError
        settings = self.settings
        launch_env: Mapping[str, str] = launch.get("env") or {}
        env = {k: launch_env[k] for k in PASSED_ENV if k in launch_env}
        env.update({k: v for k, v in launch_env.items() if k.startswith("JPY_")})
        env.update({k: launch_env[k] for k in self.kernel_spec.env if k in launch_env})
        # The kernel's parent is the container's init (pid 1): ipykernel then watches
        # no parent and prints no "Ctrl-C will not work" banner.
        env.update({"HOME": "/root" if os.getuid() == 0 else "/tmp",
                    "PYTHONDONTWRITEBYTECODE": "1", "JPY_PARENT_PID": "1"})
        volumes: list[Any] = [Mount("/tmp", "tmpfs", options=("mode=1777",))]
        if settings.image.split(":")[0] == "host":
            try:
                mounts, paths = host_environment(cmd[0])
            except ViewError as exc:
                raise KernelStartError(f"cannot show this Python environment in the "
                                       f"kernel's container: {exc}") from None
            volumes += mounts
            env.update(paths)
        volumes.append(Mount(self._dir, source=self._dir))
        cwd = _launch_cwd(launch)
        shown = self._notebook_dir(cwd)
        if shown:
            volumes.append(Mount(shown, source=shown, readonly=settings.notebook_dir == "ro"))
        volumes += list(settings.volumes)
        env.update(dict(item.split("=", 1) for item in settings.env))
        user = "" if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}"
        return build_config(
            settings.image, cmd, env=env, workdir=self._workdir(cwd, volumes),
            user=user, volumes=volumes, init=True, auto_remove=True,
            labels={"jupyter.kernel_id": self.kernel_id or "",
                    "jupyter.kernel_name": getattr(self.parent, "kernel_name", "") or ""},
            **settings.options())

    def _notebook_dir(self, cwd: str) -> str:
        """The directory the kernel is launched in, to show (``notebook_dir``): Jupyter
        launches a notebook's kernel in the notebook's directory, and notebooks read the
        files beside them. Not ``/`` (it would hide the container's root); never one
        that holds the daemon's socket (a unix socket on a read-only mount still
        connects: the notebook would drive the daemon)."""
        if self.settings.notebook_dir == "none" or not cwd:
            return ""
        path = os.path.realpath(cwd)
        if path == "/" or not os.path.isdir(path):
            return ""
        daemon = os.path.realpath(resolve_host(self.settings.host or None))
        if daemon.startswith(path.rstrip("/") + "/"):
            raise KernelStartError(
                f"notebook_dir: the kernel's directory {path} holds sandboxd's socket "
                f"{daemon}: shown to the kernel, it would let the notebook drive the "
                f"daemon; run the notebook from another directory")
        return path

    def _workdir(self, cwd: str, volumes: Sequence[Any]) -> str:
        """The config's workdir; else the launcher's cwd (the notebook's directory) when
        the container shows it; else /tmp."""
        if self.settings.workdir:
            return self.settings.workdir
        if cwd:
            shown = [v.destination if isinstance(v, Mount) else str(v).split(":")[1]
                     for v in volumes[1:]]
            # As given, or resolved (the notebook_dir mount is at the resolved path).
            for path in dict.fromkeys((os.path.abspath(cwd), os.path.realpath(cwd))):
                if any(path == d or path.startswith(d.rstrip("/") + "/") for d in shown):
                    return path
        return "/tmp"

    def _reset(self) -> None:
        self._end = self._end_error = self._exit_code = None
        self._container_id = ""
        self._ready = self._stopping = False
        self._busy = None
        self._replied_at, self._idle_after_reply = None, False
        self.death_reason = ""
        self._output.clear()

    # -- the reader thread (a KernelStream): the container's events, then how it ended
    def on_event(self, event: str, data: Any) -> None:
        if event == "created":
            self._container_id = data["id"]
        elif event in ("stdout", "stderr"):
            # The kernel's own output goes where a local kernel's would: this process's
            # stdout and stderr (if they are still open).
            try:
                os.write(1 if event == "stdout" else 2, data)
            except OSError:
                pass
            self._output += data
            del self._output[:-STDERR_KEPT]

    def on_end(self, end: dict[str, Any] | None, error: BaseException | None) -> None:
        self._end, self._end_error = end, error
        self._stop_watching()
        code = int((self._end or {}).get("exit_code", 1))
        if self._ready and not self._stopping:
            self.death_reason = self._describe_end(code)
            self.log.error("Kernel %s: %s", self.kernel_id, self.death_reason)
            if self._busy is not None and code != 0:
                self._report_death(self._busy)
        self._exit_code = code

    def _describe_end(self, code: int) -> str:
        end = self._end or {}
        if self._end_error is not None:
            return (f"sandboxd lost the kernel's container: "
                    f"{getattr(self._end_error, 'message', None) or self._end_error!r}")
        if end.get("oom_killed"):
            limit = f" of {self.settings.memory}" if self.settings.memory else ""
            return (f"the kernel ran out of memory (OOM): its container reached its memory "
                    f"limit{limit} and the kernel was killed (exit code {code})")
        if code > 128 and code - 128 in signal.valid_signals():
            return (f"the kernel was killed by {signal.Signals(code - 128).name} "
                    f"(exit code {code})")
        return f"the kernel exited with code {code}" + self._output_tail()

    def _output_tail(self) -> str:
        text = self._output.decode("utf-8", "replace").strip()
        return f": {text[-1000:]}" if text else ""

    def _start_error(self) -> KernelStartError:
        """Why the kernel died before it was ready, in the user's terms."""
        image, python = self.settings.image, self._python()
        if isinstance(self._end_error, CommandNotFound):
            return KernelStartError(f"cannot start the kernel: image {image!r} has no "
                                    f"{python} ({self._end_error.message}); set the "
                                    f"provisioner's python to the image's interpreter")
        if self._end_error is not None:
            message = getattr(self._end_error, "message", None) or str(self._end_error)
            return KernelStartError(f"cannot start the kernel in image {image!r} "
                                    f"({python}): {message}")
        missing = re.search(r"No module named '?([\w.]+)'?",
                            self._output.decode("utf-8", "replace"))
        if missing:
            return KernelStartError(
                f"cannot start the kernel: image {image!r} has no Python module "
                f"{missing.group(1)!r} for {python} (the kernel needs ipykernel: install "
                f"it in the image, or use the host image)")
        return KernelStartError(f"the kernel in image {image!r} died before it was ready: "
                                f"{self._describe_end(self._exit_code or 0)}")

    # -- which cell is running: the kernel's busy/idle on iopub
    def _watch(self) -> None:
        self._watch_stop = os.pipe()
        # The client and container of this kernel: a pooled kernel's detached shutdown
        # goes on (and may need _kill_stuck) after cleanup has let go of them.
        self._watcher = threading.Thread(target=self._watch_iopub,
                                         args=(self._url("iopub_port"), self._watch_stop[0],
                                               self._client, self._container_id),
                                         daemon=True, name=f"sandboxd-iopub-{self.kernel_id}")
        self._watcher.start()

    def _url(self, channel: str) -> str:
        return f"ipc://{self._socket_path(channel)}"

    def _watch_iopub(self, url: str, stop: int, client: Any, container_id: str) -> None:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.linger = 0
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(url)
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(stop, zmq.POLLIN)
        try:
            while True:
                due = self._stuck_in()
                ready = dict(poller.poll(due))
                if stop in ready:
                    return
                if sub in ready:
                    self._track(sub.recv_multipart())
                elif due is not None:
                    self._kill_stuck(client, container_id)
        finally:
            sub.close()
            os.close(stop)

    def _track(self, frames: list[bytes]) -> None:
        """Remember the execute_request a busy kernel works on; forget it at idle. Note
        the kernel's shutdown_reply, and its idle after it (see STUCK_AFTER)."""
        try:
            at = frames.index(b"<IDS|MSG>")
            kind = json.loads(frames[at + 2]).get("msg_type")
            if kind == "shutdown_reply":
                self._replied_at = time.monotonic()
                return
            if kind != "status":
                return
            parent = json.loads(frames[at + 3])
            state = json.loads(frames[at + 5]).get("execution_state")
        except (ValueError, IndexError, AttributeError):
            return
        if state == "busy" and parent.get("msg_type") == "execute_request":
            self._busy = parent
        elif state == "idle" and self._busy is not None and \
                parent.get("msg_id") == self._busy.get("msg_id"):
            self._busy = None
        elif state == "idle" and parent.get("msg_type") == "shutdown_request":
            self._idle_after_reply = True

    def _stuck_in(self) -> int | None:
        """Milliseconds until a kernel that answered a shutdown without going idle
        counts as stuck in ipykernel's shutdown (None: it has not answered one, went
        idle after, or was killed for it)."""
        if self._replied_at is None or self._idle_after_reply:
            return None
        return max(0, round((self._replied_at + STUCK_AFTER - time.monotonic()) * 1000))

    def _kill_stuck(self, client: Any, container_id: str) -> None:
        self._idle_after_reply = True                # once
        self.log.warning("Kernel %s: stuck in ipykernel's shutdown %.1f s after its reply "
                         "(its control thread waits on the stopped iopub thread); killed",
                         self.kernel_id, STUCK_AFTER)
        try:
            _signal(client, container_id, signal.SIGKILL)
        except OSError:
            pass                # its client closed meanwhile: its container goes with it

    def _stop_watching(self) -> None:
        if self._watch_stop is not None:
            try:
                os.write(self._watch_stop[1], b"x")
            except BrokenPipeError:
                pass                                 # the watcher has ended already
            os.close(self._watch_stop[1])
            self._watch_stop = None
        if self._watcher is not None:
            self._watcher.join(5.0)
            self._watcher = None

    def _report_death(self, parent: dict[str, Any]) -> None:
        """Publish, where the dead kernel's iopub was, an error output for the cell it
        was running (and the end of its busy state), signed with the kernel's key, once a
        client's subscription has reconnected."""
        km = self.parent
        session = JupyterSession(key=km.session.key, signature_scheme=km.session.signature_scheme,
                                 username="kernel")
        pub = zmq.Context.instance().socket(zmq.XPUB)
        pub.linger = 500
        try:
            pub.bind(self._url("iopub_port"))      # replaces the dead kernel's socket file
            if not pub.poll(int(REPORT_SUBSCRIBER_WAIT * 1000)):
                return                             # nobody listens: the log has it
            time.sleep(0.05)                       # let the other subscribers rejoin too
            error = {"ename": "DeadKernelError", "evalue": self.death_reason,
                     "traceback": [f"\x1b[0;31mDeadKernelError\x1b[0m: {self.death_reason}"]}
            ident = f"kernel.{self.kernel_id}".encode()
            session.send(pub, "error", error, parent=parent, ident=[ident + b".error"])
            session.send(pub, "status", {"execution_state": "idle"}, parent=parent,
                         ident=[ident + b".status"])
            time.sleep(0.1)                        # delivered before the death is seen
        except zmq.ZMQError as exc:
            self.log.warning("Kernel %s: could not report its death on iopub: %s",
                             self.kernel_id, exc)
        finally:
            pub.close()

    # -- what jupyter_client asks
    async def poll(self) -> int | None:
        if self._detached:
            return 0                    # shutting down on its own (shutdown_requested)
        if self._stream is None:
            return self._exit_code if self._exit_code is not None else 0
        return self._exit_code

    async def wait(self) -> int | None:
        if self._detached:
            return 0
        while self._stream is not None and self._exit_code is None:
            await asyncio.sleep(0.01)
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join)
            self._reader = None
        self._stream = None
        return self._exit_code

    async def send_signal(self, signum: int) -> None:
        """The signal to the kernel (SIGINT interrupts its cell): the container's init
        passes it on."""
        if self._stream is None or self._exit_code is not None or not self._container_id:
            return
        pending = asyncio.get_running_loop().run_in_executor(
            None, _signal, self._client, self._container_id, signum)
        if not (self._own_client is False and getattr(self.parent, "shutting_down", False)):
            await pending
        # else: the SIGINT a manager sends before a shutdown request, to a pooled kernel
        # whose shutdown is detached (shutdown_requested): nobody waits for it.


    async def kill(self, restart: bool = False) -> None:
        """SIGKILL, then wait (briefly) for the container's end, so the manager's first
        poll finds the kernel gone instead of sleeping its 0.1 s poll interval. (Not
        detached even for a pooled kernel: jupyter_client's restart with ``now`` kills
        without saying it restarts, and a restart stays synchronous.)"""
        self._stopping = True
        await self.send_signal(signal.SIGKILL)
        await self._await_end(KILL_WAIT)

    async def terminate(self, restart: bool = False) -> None:
        self._stopping = True
        await self.send_signal(signal.SIGTERM)
        await self._await_end(SHUTDOWN_WAIT)

    async def shutdown_requested(self, restart: bool = False) -> None:
        """The kernel was asked to shut down. A pooled kernel's final shutdown is
        detached: the manager is told it is over at once, while the kernel exits
        gracefully in the background (its container rides the pool's daemon session;
        see :func:`ipython_ext.kernelpool.reap`), which saves ipykernel's ~0.15 s exit on
        every notebook. Otherwise wait (briefly) for it to exit, so the manager's first
        poll finds it gone instead of sleeping its 0.1 s poll interval; a kernel that has
        answered is on its way out, and is waited for until it has ended (killed if
        stuck in ipykernel's shutdown: STUCK_AFTER)."""
        self._stopping = True
        if not restart and not self._own_client and self._stream is not None:
            self._detached = True
            return
        await self._await_end(SHUTDOWN_WAIT)
        if self._replied_at is not None:
            await self._await_end(STUCK_AFTER + KILL_WAIT)

    async def _await_end(self, timeout: float) -> None:
        """Until the container's end is handled (poll() then reports the exit code), at
        most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self._stream is not None and self._exit_code is None and \
                time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    async def cleanup(self, restart: bool = False) -> None:
        """The container is gone when this returns (killed if still there: the daemon
        removes it as it ends); without ``restart`` the kernel's directory and daemon
        session go too."""
        if self._detached:           # a final shutdown: the launch's directory goes too
            from .kernelpool import reap
            reap(self._client, self._container_id, self._reader,
                 (self._pooled_dir, self._dir), self._taken_from)
            self._stream = self._reader = self._taken_from = None
            self._pooled_dir = self._dir = ""
            self._detached = False
        if self._stream is not None:
            if self._exit_code is None:
                await self.kill()
            await self.wait()
        if self._taken_from is not None:
            self._taken_from.release()     # the kernel is gone: a deferred refill starts
            self._taken_from = None
        if self._pooled_dir:
            shutil.rmtree(self._pooled_dir, ignore_errors=True)
            self._pooled_dir = ""
        if not restart:
            if self._client is not None:
                client, self._client = self._client, None
                if self._own_client:
                    await asyncio.to_thread(client.close)
            if self._dir:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = ""
