"""A Python interpreter in a container, driven cell by cell from the host.

::

    from ipython_ext.session import Session

    with Session(image="host", memory="256m") as s:
        s.execute("x = 6 * 7")
        reply = s.execute("print(x); x", outputs=["x"])
        reply.outputs    # [{"output_type": "stream", "name": "stdout", "text": "42\\n"},
                         #  {"output_type": "execute_result", "data": {"text/plain": "42"}, ...}]
        reply.values     # {"x": 42}

The container runs :mod:`ipython_ext.worker` (its source is passed on the command line,
so the image needs only a Python) with stdin and stdout as a msgpack channel; one
``container.run`` stream carries the whole session, so the daemon removes the container
when it ends and, with ``Client(session=True)``, when this process's connection drops.

Nothing from the container is unpickled: messages are decoded by msgpack with no
extension types except the few plain containers :func:`decode_value` rebuilds.
"""
from __future__ import annotations

import base64
import codecs
import functools
import marshal
import os
import pickle
import queue
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from sandboxd.errors import SandboxError
from sandboxd.flags import build_config

__all__ = ["Session", "ExecuteReply", "SessionError", "decode_value", "run_script",
           "worker_command"]

OutputCallback = Callable[[dict[str, Any]], None]
INTERRUPT_GRACE = 3.0      # seconds a cell gets to stop after SIGINT before the kill
START_TIMEOUT = 120.0      # first start of an image may unpack or pull it
MAX_MESSAGE = 256 << 20    # the largest worker message accepted (a big image, say)
# ext codes of worker.encode_value
EXT_TUPLE, EXT_SET, EXT_FROZENSET, EXT_COMPLEX = 1, 2, 3, 4


class SessionError(SandboxError):
    """The session's container is not usable (never started, exited, or was killed)."""
    code = "session_error"          # client-side only: never sent over the wire


@dataclass
class ExecuteReply:
    """The outcome of one cell, its outputs in nbformat v4 form."""
    status: str                                   # "ok" | "error"
    execution_count: int
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None           # the error output, when status is error
    values: dict[str, Any] = field(default_factory=dict)   # the ``outputs=`` variables
    timed_out: bool = False
    oom_killed: bool = False
    duration: float = 0.0


def _ext_hook(code: int, data: bytes) -> Any:
    """The only ext types a value may carry; anything else is refused, not rebuilt."""
    if code == EXT_COMPLEX:
        real, imag = struct.unpack(">dd", data)
        return complex(real, imag)
    items = decode_value(data)
    if code == EXT_TUPLE:
        return tuple(items)
    if code == EXT_SET:
        return set(items)
    if code == EXT_FROZENSET:
        return frozenset(items)
    raise ValueError(f"the container sent a value of unknown ext type {code}")


def decode_value(data: bytes) -> Any:
    """A value the worker encoded: msgpack data, never pickle (the container's data is
    not trusted). Dicts and lists of other values come back as such."""
    return msgpack.unpackb(data, raw=False, ext_hook=_ext_hook, strict_map_key=False)


@functools.cache
def _worker_source() -> str:
    with open(os.path.join(os.path.dirname(__file__), "worker.py"), encoding="utf-8") as f:
        return f.read()


WORKER_FILENAME = "<sandboxd-worker>"     # its frames are left out of cells' tracebacks
# The worker travels as an argument (no file to copy in): its source for any Python, or,
# for this very interpreter (the host image), its code already compiled (marshal is
# specific to a Python version) to save the ~8 ms compile on every fresh container.
BOOTSTRAP_SOURCE = ("import sys; exec(compile(sys.argv.pop(1), %r, 'exec'))"
                    % WORKER_FILENAME)
BOOTSTRAP_CODE = ("import sys, marshal, binascii; "
                  "exec(marshal.loads(binascii.a2b_base64(sys.argv.pop(1))))")


@functools.cache
def _worker_code() -> str:
    code = compile(_worker_source(), WORKER_FILENAME, "exec")
    return base64.b64encode(marshal.dumps(code)).decode("ascii")


def worker_command(python: str, ipython: bool = False) -> list[str]:
    """The container's command: ``python -u -c BOOTSTRAP <worker> [--ipython]``."""
    mode = ["--ipython"] if ipython else []
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        return [python, "-u", "-c", BOOTSTRAP_CODE, _worker_code(), *mode]
    return [python, "-u", "-c", BOOTSTRAP_SOURCE, _worker_source(), *mode]


def default_python(image: str) -> str:
    """The ``host`` image runs this very interpreter; other images their ``python3``."""
    return sys.executable if image.split(":")[0] == "host" else "python3"


def client_view() -> Any:
    """This process's Python environment as a container shows it, without
    ``sys.path[0]``: the directory of the script that started the client, or its working
    directory (a home directory, say), is incidental to the environment."""
    from sandboxd.runner.interpreter import InterpreterView
    view = InterpreterView.current()
    first = os.path.abspath(sys.path[0] or os.getcwd()) if sys.path else ""
    return replace(view, path=tuple(p for p in view.path if p != first))


def host_environment(python: str) -> tuple[list[Any], dict[str, str]]:
    """What a ``host`` image container needs to run ``python`` (this interpreter) with
    this process's packages: read-only binds of its environment at the same paths (the
    host image shows the system directories, and the daemon's own Python, which may be
    another), and the ``PYTHONPATH`` and ``PATH`` that find them. Raises ``ViewError``
    for an environment no bind can show."""
    from sandboxd.runner.interpreter import view_mounts
    from sandboxd.runner.spec import DEFAULT_PATH
    view = client_view()
    mounts = view_mounts(view, host_image=True)
    path = ":".join(dict.fromkeys(d for d in [os.path.dirname(python),
                                              *DEFAULT_PATH.split(":")] if d))
    return mounts, {"PYTHONPATH": os.pathsep.join(view.pythonpath()), "PATH": path}


class _Decoder:
    """Stream text decoded incrementally, per stream: a UTF-8 character split between
    two chunks is held back until its last byte arrives."""

    def __init__(self) -> None:
        self.decoders: dict[str, codecs.IncrementalDecoder] = {}

    def decode(self, name: str, data: bytes, final: bool = False) -> str:
        decoder = self.decoders.get(name)
        if decoder is None:
            decoder = self.decoders[name] = codecs.getincrementaldecoder("utf-8")("replace")
        return decoder.decode(data, final)

    def flush(self) -> list[tuple[str, str]]:
        left = [(name, d.decode(b"", True)) for name, d in self.decoders.items()]
        self.decoders.clear()
        return [(name, text) for name, text in left if text]


def _clean_bundle(data: Any) -> dict[str, Any]:
    """A display bundle from the container as nbformat wants it: str keys; text as
    str; binary as base64 str; JSON mime types as their JSON value."""
    if not isinstance(data, dict):
        return {"text/plain": repr(data)}
    clean: dict[str, Any] = {}
    for mime, value in data.items():
        if not isinstance(mime, str):
            continue
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii") if mime.startswith("image/") \
                or mime == "application/pdf" else value.decode("utf-8", "replace")
        elif not (isinstance(value, str) or mime == "application/json"
                  or mime.endswith("+json")):
            value = str(value)
        clean[mime] = value
    return clean


def _clean_metadata(metadata: Any) -> dict[str, Any]:
    return {k: v for k, v in metadata.items() if isinstance(k, str)} \
        if isinstance(metadata, dict) else {}


class Session:
    """A long-lived container running the cell worker. ``start()`` (or ``with``) starts
    it, ``execute()`` runs cells in it with state kept between them, ``close()`` removes
    it. ``ipython``: cells run through IPython's InteractiveShell in the container, as in
    a Jupyter kernel (magics, ``!``, IPython's tracebacks), when the image has IPython
    (``worker_info["ipython"]`` is its version then). ``client`` defaults to a ``Client(session=True)`` of its own (closed with the
    session), so the container also dies with this process. With the ``host`` image
    and this interpreter, the container shows this process's Python environment
    (:func:`host_environment`), whatever environment the daemon runs from;
    ``show_environment=False`` when the caller binds it itself."""

    def __init__(self, client: Any = None, image: str = "host", *,
                 memory: int | str | None = None, cpus: float | str | None = None,
                 cpu_quota: int | None = None, cpu_period: int | None = None,
                 pids: int | None = None, ulimits: Sequence[str] = (),
                 network: str = "none", links: Sequence[str] = (),
                 env: Mapping[str, Any] | Sequence[str] = (), volumes: Sequence[str] = (),
                 name: str | None = None, python: str | None = None,
                 workdir: str = "", interrupt_grace: float = INTERRUPT_GRACE,
                 ipython: bool = False, show_environment: bool = True):
        self.image = image
        self.name = name
        self.python = python or default_python(image)
        if show_environment and image.split(":")[0] == "host" and \
                os.path.realpath(self.python) == os.path.realpath(sys.executable):
            from sandboxd.envfile import parse_env
            from sandboxd.runner.interpreter import ViewError
            try:
                mounts, paths = host_environment(self.python)
            except ViewError as exc:
                raise SessionError(f"cannot show this Python environment in the "
                                   f"session's container: {exc}") from None
            volumes = [*mounts, *volumes]
            env = [f"{k}={v}" for k, v in paths.items()] + parse_env(env)  # env wins
        self.interrupt_grace = interrupt_grace
        self.memory = memory
        self.options: dict[str, Any] = dict(
            memory=memory, cpus=cpus, cpu_quota=cpu_quota, cpu_period=cpu_period,
            pids_limit=pids, ulimits=list(ulimits), network_mode=network,
            links=list(links), env=env, volumes=list(volumes), workdir=workdir)
        # Check the options now: a bad one is the caller's mistake, named before start.
        self.config = build_config(image, worker_command(self.python, ipython),
                                   auto_remove=True, open_stdin=True,
                                   **self.options)
        self._client = client
        self._own_client = client is None
        self._stream: Any = None
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._reader: threading.Thread | None = None
        self._pending: list[dict[str, Any]] = []     # worker messages between cells
        self._lock = threading.Lock()                # one execute at a time
        self.container_id = ""
        self.execution_count = 0
        self.exit: dict[str, Any] | None = None      # the container's end, once known
        self._exit_error: BaseException | None = None
        self.worker_stderr = bytearray()             # the worker's own stderr (diagnostics)
        self.worker_info: dict[str, Any] = {}

    # -- life cycle
    def __enter__(self) -> Session:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Session {self.name or self.container_id[:12]} image={self.image}>"

    @property
    def alive(self) -> bool:
        return self._stream is not None and self.exit is None and self._exit_error is None

    @property
    def client(self) -> Any:
        if self._client is None:
            from sandboxd.api import Client
            self._client = Client(session=True)
        return self._client

    def start(self, timeout: float = START_TIMEOUT) -> Session:
        """Create and start the container and wait for the worker's hello."""
        if self._stream is not None:
            raise SessionError(f"{self!r} was started already")
        params: dict[str, Any] = {"config": self.config.to_dict(), "stdin": True,
                                  "remove": True, "detach": False}
        if self.name:
            params["name"] = self.name
        self._stream = self.client.stream("container.run", params)
        self._reader = threading.Thread(target=self._read, args=(self._stream,),
                                        daemon=True, name="sandboxd-session-reader")
        self._reader.start()
        deadline = time.monotonic() + timeout
        while True:
            kind, data = self._next(deadline)
            if kind == "message" and data.get("type") == "ready":
                self.worker_info = data
                return self
            if kind == "message":
                self._pending.append(data)
            elif kind == "exit":
                self._raise_dead("the worker exited before it was ready")
            elif kind == "timeout":
                self.close()
                raise SessionError(f"the worker in image {self.image!r} did not start "
                                   f"within {timeout:g}s")

    def close(self, wait: bool = True) -> None:
        """Stop the worker and remove the container (idempotent). ``wait=False`` (a
        fresh cell's container, done with): kill it and return at once; the daemon
        removes it on its own (it was started with auto-remove)."""
        stream, self._stream = self._stream, None
        if stream is not None and self.exit is None and self._exit_error is None:
            if not wait and self.container_id:
                self._kill()
            else:
                try:
                    stream.close_stdin()             # the worker's loop ends at EOF
                except SandboxError:
                    pass
                if self._reader is not None:
                    self._reader.join(2.0)       # threads a cell left may hold it up
                if self._reader is not None and self._reader.is_alive():
                    self._kill()
                    self._reader.join(10.0)
        if self._own_client and self._client is not None:
            self._client.close()
            self._client = None

    def interrupt(self) -> None:
        """SIGINT to the worker: a running cell stops with KeyboardInterrupt."""
        if self.alive and self.container_id:
            try:
                self.client.call("container.kill", {"id": self.container_id,
                                                    "signal": "SIGINT"})
            except SandboxError:
                pass            # it ended meanwhile: the reader reports how

    def _kill(self) -> None:
        if self.container_id:
            try:
                self.client.call("container.kill", {"id": self.container_id,
                                                    "signal": "SIGKILL"})
            except SandboxError:
                pass

    # -- the reader thread: container stream -> events queue
    def _read(self, stream: Any) -> None:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_MESSAGE)
        try:
            for event, data in stream:
                if event == "created":
                    self.container_id = data["id"]
                elif event == "stdout":
                    unpacker.feed(data)
                    for message in unpacker:
                        if isinstance(message, dict):
                            self._events.put(("message", message))
                elif event == "stderr":
                    self.worker_stderr += data[-65536:]
            self.exit = dict(stream.result())
        except BaseException as exc:      # noqa: B036 -- handed to the waiting caller
            self._exit_error = exc
        self._events.put(("exit", None))

    def _next(self, deadline: float | None) -> tuple[str, Any]:
        """The next event; ``("timeout", None)`` at the deadline."""
        while True:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                return "timeout", None
            try:
                kind, data = self._events.get(timeout=wait)
            except queue.Empty:
                return "timeout", None
            return kind, data

    def _raise_dead(self, what: str) -> None:
        detail = self.worker_stderr.decode("utf-8", "replace").strip()[-2000:]
        if self._exit_error is not None:
            raise self._exit_error
        status = self.exit or {}
        raise SessionError(f"{what} (image {self.image!r}, exit code "
                           f"{status.get('exit_code')})" + (f": {detail}" if detail else ""))

    # -- cells
    def execute(self, code: str, on_output: OutputCallback | None = None,
                timeout: float | None = None, inputs: Mapping[str, Any] | None = None,
                outputs: Sequence[str] = (), *, shell: bool = False) -> ExecuteReply:
        """Run one cell; outputs arrive live through ``on_output`` as nbformat output
        dicts (streams in chunks; ``{"output_type": "clear_output", "wait"}`` when the
        cell clears its output). ``inputs`` are pickled into the cell's namespace,
        ``outputs`` names come back in ``values`` (msgpack-safe data only). ``shell``
        runs ``code`` with ``/bin/sh -c``. A KeyboardInterrupt while waiting (the
        notebook's interrupt) is passed on to the cell as SIGINT."""
        with self._lock:
            return self._execute(code, on_output, timeout, inputs, outputs, shell)

    def _execute(self, code: str, on_output: OutputCallback | None, timeout: float | None,
                 inputs: Mapping[str, Any] | None, outputs: Sequence[str], shell: bool
                 ) -> ExecuteReply:
        if not self.alive:
            self._raise_dead(f"{self!r} is not running")
        began = time.monotonic()
        blobs = {name: _pickled(name, value) for name, value in (inputs or {}).items()}
        self.execution_count += 1
        run = _Run(self.execution_count, on_output)
        request = {"op": "execute", "code": code, "shell": shell, "inputs": blobs,
                   "outputs": list(outputs)}
        self._stream.send(msgpack.packb(request, use_bin_type=True))
        for message in self._pending:
            run.handle(message)
        self._pending.clear()
        deadline = None if timeout is None else began + timeout
        stop_by: float | None = None         # after SIGINT: when to kill

        def interrupted() -> float:
            """The notebook's interrupt: SIGINT once, then the grace period runs."""
            if stop_by is None:
                self.interrupt()
                run.interrupted = True
                return time.monotonic() + self.interrupt_grace
            return stop_by
        while True:
            # The notebook's interrupt may land anywhere in here (in on_output, say,
            # writing to the kernel's stdout): it is passed on to the cell, and the
            # cell's end is never lost, or the next cell would read this one's.
            kind, data = "", None
            try:
                kind, data = self._next(stop_by if stop_by is not None else deadline)
                if kind == "timeout":
                    if stop_by is None:               # the cell's time is up: SIGINT
                        run.timed_out = True
                        self.interrupt()
                        stop_by = time.monotonic() + self.interrupt_grace
                    else:                             # it ignored SIGINT: kill it
                        self._kill()
                        stop_by = time.monotonic() + 30.0
                elif kind == "message" and run.handle(data):
                    break
                elif kind == "exit":
                    run.finish_dead(self, timeout)
                    break
            except KeyboardInterrupt:
                if kind == "exit" or (kind == "message" and data.get("type") == "done"):
                    break
                stop_by = interrupted()
        run.flush()
        if run.timed_out and run.error is not None and run.error["ename"] != "TimeoutError":
            run.replace_error("TimeoutError", f"the cell did not finish within {timeout:g}s "
                              f"and was interrupted")
        return ExecuteReply(run.status, run.count, run.outputs, run.error, run.values,
                            run.timed_out, run.oom_killed, time.monotonic() - began)


def _pickled(name: str, value: Any) -> bytes:
    try:
        return pickle.dumps(value)
    except Exception as exc:
        raise TypeError(f"--in {name}: a {type(value).__name__} cannot be pickled to send "
                        f"it into the container ({exc})") from None


class _Run:
    """One cell's outputs as they arrive."""

    def __init__(self, count: int, on_output: OutputCallback | None):
        self.count = count
        self.on_output = on_output
        self.outputs: list[dict[str, Any]] = []
        self.error: dict[str, Any] | None = None
        self.values: dict[str, Any] = {}
        self.status = "ok"
        self.decoder = _Decoder()
        self.displays: dict[str, list[dict[str, Any]]] = {}    # display id -> its outputs
        self.timed_out = self.oom_killed = self.interrupted = False

    def emit(self, output: dict[str, Any]) -> None:
        last = self.outputs[-1] if self.outputs else None
        if (output["output_type"] == "stream" and last is not None
                and last["output_type"] == "stream" and last["name"] == output["name"]):
            last["text"] += output["text"]              # one output per run of a stream
        elif output["output_type"] == "clear_output":
            self.outputs.clear()
        else:
            self.outputs.append(dict(output))
        if self.on_output is not None:
            self.on_output(output)

    def stream(self, name: str, text: str) -> None:
        if text:
            self.emit({"output_type": "stream", "name": name, "text": text})

    def flush(self) -> None:
        for name, text in self.decoder.flush():
            self.stream(name, text)

    def handle(self, message: dict[str, Any]) -> bool:
        """Take one worker message; True when the cell is done."""
        kind = message.get("type")
        if kind == "stream":
            name = "stderr" if message.get("name") == "stderr" else "stdout"
            data = message.get("data")
            if isinstance(data, bytes):
                self.stream(name, self.decoder.decode(name, data))
        elif kind == "display" and message.get("update"):
            self.flush()
            self.update(message)
        elif kind in ("display", "result"):
            self.flush()
            output: dict[str, Any] = {"output_type": "display_data" if kind == "display"
                                      else "execute_result",
                                      "data": _clean_bundle(message.get("data")),
                                      "metadata": _clean_metadata(message.get("metadata"))}
            if kind == "result":
                output["execution_count"] = self.count
            self.emit(output)
            display_id = (message.get("transient") or {}).get("display_id")
            if display_id is not None:
                self.displays.setdefault(str(display_id), []).append(self.outputs[-1])
        elif kind == "clear_output":
            self.flush()
            self.emit({"output_type": "clear_output", "wait": bool(message.get("wait"))})
        elif kind == "error":
            self.flush()
            self.set_error(str(message.get("ename", "Error")),
                           str(message.get("evalue", "")),
                           [str(line) for line in message.get("traceback") or ()])
        elif kind == "done":
            self.flush()
            if message.get("status") != "ok":
                self.status = "error"
            for name, value in (message.get("values") or {}).items():
                if isinstance(value, dict) and isinstance(value.get("value"), bytes):
                    self.values[str(name)] = decode_value(value["value"])
                else:
                    self.set_error("NameError" if "not defined" in str(value.get("error"))
                                   else "TypeError", str(value.get("error")),
                                   [f"--out {name}: {value.get('error')}"])
            return True
        return False

    def update(self, message: dict[str, Any]) -> None:
        """``update_display()``: the cell's earlier outputs of that display id get the
        new bundle in place (as nbclient does; an id this cell did not show is
        ignored)."""
        display_id = str((message.get("transient") or {}).get("display_id"))
        for output in self.displays.get(display_id, ()):
            output["data"] = _clean_bundle(message.get("data"))
            output["metadata"] = _clean_metadata(message.get("metadata"))

    def set_error(self, ename: str, evalue: str, traceback: list[str]) -> None:
        self.status = "error"
        self.error = {"output_type": "error", "ename": ename, "evalue": evalue,
                      "traceback": traceback}
        self.emit(self.error)

    def replace_error(self, ename: str, evalue: str) -> None:
        assert self.error is not None
        index = self.outputs.index(self.error)
        self.error = {"output_type": "error", "ename": ename, "evalue": evalue,
                      "traceback": [*self.error["traceback"], f"{ename}: {evalue}"]}
        self.outputs[index] = self.error

    def finish_dead(self, session: Session, timeout: float | None) -> None:
        """The container ended during the cell: say why, plainly."""
        self.flush()
        status = session.exit or {}
        self.oom_killed = bool(status.get("oom_killed"))
        limit = f" of {session.memory}" if session.memory else ""
        if self.oom_killed:
            ename, evalue = "MemoryError", (f"the container ran out of memory (limit{limit})"
                                            f" and was killed; the session's state is lost")
        elif self.timed_out:
            ename, evalue = "TimeoutError", (f"the cell did not finish within {timeout:g}s "
                                             f"and did not stop on SIGINT, so its container "
                                             f"was killed")
        elif self.interrupted:
            ename, evalue = "KeyboardInterrupt", ("the cell did not stop on SIGINT, so its "
                                                  "container was killed")
        elif session._exit_error is not None:
            ename, evalue = type(session._exit_error).__name__, str(session._exit_error)
        else:
            detail = session.worker_stderr.decode("utf-8", "replace").strip()[-2000:]
            ename, evalue = "SessionError", (f"the container exited (code "
                                             f"{status.get('exit_code')}) during the cell"
                                             + (f": {detail}" if detail else ""))
        self.set_error(ename, evalue, [f"{ename}: {evalue}"])


def run_script(client: Any, script: str, image: str = "host", *,
               on_output: OutputCallback | None = None, timeout: float | None = None,
               interrupt_grace: float = INTERRUPT_GRACE, **options: Any) -> ExecuteReply:
    """A ``--shell`` cell in a fresh container: ``/bin/sh -c script`` with no worker,
    so images without Python (busybox) run it too. Output streams live; ``options``
    are :class:`Session`'s limit keywords (``memory``, ``pids`` ...)."""
    began = time.monotonic()
    config = build_config(image, ["/bin/sh", "-c", script], auto_remove=True,
                          **_config_options(options))
    stream = client.stream("container.run", {"config": config.to_dict(), "stdin": False,
                                             "remove": True, "detach": False})
    events: queue.SimpleQueue = queue.SimpleQueue()

    def read() -> None:
        try:
            for event in stream:
                events.put(event)
            events.put(("exit", stream.result()))
        except BaseException as exc:      # noqa: B036 -- handed to the waiting caller
            events.put(("failed", exc))
    threading.Thread(target=read, daemon=True, name="sandboxd-script-reader").start()
    run = _Run(1, on_output)
    container_id = ""
    deadline = None if timeout is None else began + timeout
    stop_by: float | None = None

    def signal(name: str) -> None:
        if container_id:
            try:
                client.call("container.kill", {"id": container_id, "signal": name})
            except SandboxError:
                pass
    while True:
        wait = (stop_by or deadline or 0) - time.monotonic() if (stop_by or deadline) \
            else None
        kind, data = "", None
        try:                            # an interrupt anywhere here goes to the script
            kind, data = events.get(timeout=max(wait, 0) if wait is not None else None)
            if kind == "created":
                container_id = data["id"]
            elif kind in ("stdout", "stderr"):
                run.stream(kind, run.decoder.decode(kind, data))
            elif kind == "failed":
                raise data
            elif kind == "exit":
                break
        except KeyboardInterrupt:
            if kind == "exit":
                break
            run.interrupted = True
            if stop_by is None:
                signal("SIGINT")
                stop_by = time.monotonic() + interrupt_grace
        except queue.Empty:
            if stop_by is None:
                run.timed_out = True
                signal("SIGINT")
                stop_by = time.monotonic() + interrupt_grace
            else:                       # sh as pid 1 ignores SIGINT: kill it
                signal("SIGKILL")
                stop_by = time.monotonic() + 30.0
    run.flush()
    code = int(data.get("exit_code", 0))
    run.oom_killed = bool(data.get("oom_killed"))
    failure = None
    if run.oom_killed:
        failure = ("MemoryError", f"the container ran out of memory (limit of "
                                  f"{options.get('memory')}) and was killed")
    elif run.timed_out:
        failure = ("TimeoutError", f"the cell did not finish within {timeout:g}s and was "
                                   f"stopped")
    elif run.interrupted:
        failure = ("KeyboardInterrupt", "the cell was interrupted")
    elif code != 0:
        failure = ("ShellError", f"the cell's shell script exited with status {code}")
    if failure is not None:
        run.set_error(*failure, [": ".join(failure)])
    return ExecuteReply(run.status, 1, run.outputs, run.error, {}, run.timed_out,
                        run.oom_killed, time.monotonic() - began)


def _config_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Session's keyword names -> build_config's."""
    names = {"pids": "pids_limit", "network": "network_mode"}
    return {names.get(k, k): (list(v) if isinstance(v, tuple) else v)
            for k, v in options.items()}
