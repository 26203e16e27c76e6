"""The in-container execution worker: runs notebook cells sent by the host.

The host starts it as ``python -u -c BOOTSTRAP <this file, as source or compiled>`` (so
the image needs no copy of sandboxd, only a Python) and talks to it in msgpack frames:

- host -> worker on stdin: ``{"op": "execute", "code", "shell", "inputs", "outputs"}``
  (``inputs`` maps names to pickles: the container unpickles host data, never the
  reverse).
- worker -> host on the container's stdout: ``{"type": "ready"}`` once, then per cell
  ``stream`` / ``display`` / ``result`` / ``error`` messages and a final ``done`` that
  carries the ``--out`` values, encoded as plain msgpack data only.

Everything the cell writes to fd 1 and 2 (its prints, subprocesses, C extensions) goes to
pipes this worker reads and forwards as ``stream`` messages, so the protocol channel stays
clean. SIGINT interrupts a running cell (KeyboardInterrupt) and is ignored between cells.

Uses only the standard library (a small msgpack codec of its own; msgpack's C packer for
big ``--out`` values when the image has it). IPython is optional: without it the last
expression and ``display()`` are formatted from the object's ``_repr_*_`` methods; with it
``IPython.display.display`` is routed here too.

With ``--ipython`` after the worker's source (notebooks: ``sbx notebook run``, pytest's
notebook items) cells run through IPython's own ``InteractiveShell``, set up as ipykernel
sets up its shell: magics, ``!`` shell escapes, ``get_ipython()``, the display hook's
``execute_result``, ``display()`` through the shell's display publisher, matplotlib's
inline backend and IPython's tracebacks (``Cell In[1], line 2``), so a notebook's outputs
are the ones a Jupyter kernel gives. An image without IPython runs cells as plain Python
(the ``ready`` message says which).
"""
from __future__ import annotations

import ast
import base64
import builtins
import importlib.machinery
import importlib.util
import io
import os
import select
import signal
import struct
import sys
import threading
import time
import types

# typing costs ~4 ms at start-up and annotations here are strings anyway.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

# ---------------------------------------------------------------- codec
# The protocol's messages are small: a pure-Python msgpack subset writes and reads them,
# which starts faster than importing msgpack (~5 ms) and works in images without it.
# --out values use msgpack's C packer when the image has it (big values), else this one.

# ext codes for values brought back with --out (the host rebuilds only these)
EXT_TUPLE, EXT_SET, EXT_FROZENSET, EXT_COMPLEX = 1, 2, 3, 4


def _ext(code: int, data: bytes, out: bytearray) -> None:
    out += b"\xc9" + struct.pack(">Ib", len(data), code) + data


def pack(obj: Any, out: bytearray, values: bool = False) -> None:
    """msgpack for None, bool, int, float, str, bytes, list and dict; with ``values``
    also tuple, set, frozenset and complex (as ext types) and subclasses of the plain
    types (as their base), refusing everything else by name."""
    kind = type(obj)
    if obj is None:
        out += b"\xc0"
    elif kind is bool:
        out += b"\xc3" if obj else b"\xc2"
    elif kind is int:
        if 0 <= obj < 128:
            out.append(obj)
        elif -32 <= obj < 0:
            out += struct.pack("b", obj)
        elif 0 <= obj < 1 << 64:
            out += b"\xcf" + struct.pack(">Q", obj)
        elif -(1 << 63) <= obj < 0:
            out += b"\xd3" + struct.pack(">q", obj)
        else:
            raise OverflowError(f"integer {obj} does not fit in 64 bits")
    elif kind is float:
        out += b"\xcb" + struct.pack(">d", obj)
    elif kind is str:
        data = obj.encode("utf-8", "surrogatepass")
        out += b"\xdb" + struct.pack(">I", len(data)) + data
    elif kind is bytes or kind is bytearray or kind is memoryview:
        data = bytes(obj)
        out += b"\xc6" + struct.pack(">I", len(data)) + data
    elif kind is list or (kind is tuple and not values):
        out += b"\xdd" + struct.pack(">I", len(obj))
        for item in obj:
            pack(item, out, values)
    elif kind is dict:
        out += b"\xdf" + struct.pack(">I", len(obj))
        for key, value in obj.items():
            pack(key, out, values)
            pack(value, out, values)
    elif not values:
        raise TypeError(f"cannot encode {kind.__name__}")
    elif kind is tuple or kind is set or kind is frozenset:
        inner = bytearray()
        pack(list(obj), inner, values)
        _ext({tuple: EXT_TUPLE, set: EXT_SET, frozenset: EXT_FROZENSET}[kind], inner, out)
    elif kind is complex:
        _ext(EXT_COMPLEX, struct.pack(">dd", obj.real, obj.imag), out)
    else:
        pack(_plain_base(obj), out, values)


def _plain_base(obj: Any) -> Any:
    """A subclass of a plain type as that type (an IntEnum as its int ...)."""
    for base in (bool, int, float, complex, str, bytes, tuple, frozenset, set, list,
                 dict):
        if isinstance(obj, base):
            return base(obj)
    raise TypeError(f"cannot send a {type(obj).__module__}.{type(obj).__qualname__} "
                    f"back safely (only None, bool, int, float, complex, str, bytes, "
                    f"list, tuple, set, dict are; convert it first)")


def _msgpack_default(obj: Any) -> Any:
    import msgpack
    if type(obj) in (tuple, set, frozenset, complex):
        out = bytearray()
        pack(obj, out, values=True)       # one ext, as the pure packer writes it
        code = out[5]
        return msgpack.ExtType(code, bytes(out[6:]))
    return _plain_base(obj)


def encode_value(value: Any) -> bytes:
    """A value as safe msgpack bytes (the host decodes them without pickle)."""
    try:
        import msgpack
    except ImportError:
        out = bytearray()
        pack(value, out, values=True)
        return bytes(out)
    return msgpack.packb(value, default=_msgpack_default, strict_types=True,
                         use_bin_type=True)


def _pack(message: dict) -> bytes:
    out = bytearray()
    pack(message, out)
    return bytes(out)


class Unpacker:
    """Incremental msgpack decoding of whole messages (the subset the host sends)."""

    FIXED = {0xcc: ">B", 0xcd: ">H", 0xce: ">I", 0xcf: ">Q", 0xd0: ">b", 0xd1: ">h",
             0xd2: ">i", 0xd3: ">q", 0xca: ">f", 0xcb: ">d"}
    LENGTHS = {0xd9: ">B", 0xda: ">H", 0xdb: ">I", 0xc4: ">B", 0xc5: ">H", 0xc6: ">I",
               0xdc: ">H", 0xdd: ">I", 0xde: ">H", 0xdf: ">I"}

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    def __iter__(self):
        while self.buf:
            try:
                obj, end = self._decode(0)
            except IndexError:            # incomplete: wait for more bytes
                return
            del self.buf[:end]
            yield obj

    def _take(self, pos: int, n: int) -> tuple[bytes, int]:
        if pos + n > len(self.buf):
            raise IndexError("incomplete")
        return bytes(self.buf[pos:pos + n]), pos + n

    def _number(self, fmt: str, pos: int) -> tuple[Any, int]:
        raw, pos = self._take(pos, struct.calcsize(fmt))
        return struct.unpack(fmt, raw)[0], pos

    def _decode(self, pos: int) -> tuple[Any, int]:
        b = self.buf[pos]
        pos += 1
        if b <= 0x7f:
            return b, pos
        if b >= 0xe0:
            return b - 0x100, pos
        if b in self.FIXED:
            return self._number(self.FIXED[b], pos)
        if b == 0xc0:
            return None, pos
        if b in (0xc2, 0xc3):
            return b == 0xc3, pos
        if 0xa0 <= b <= 0xbf or b in (0xd9, 0xda, 0xdb, 0xc4, 0xc5, 0xc6):
            n, pos = (b & 0x1f, pos) if b <= 0xbf else self._number(self.LENGTHS[b], pos)
            raw, pos = self._take(pos, n)
            return (raw if b in (0xc4, 0xc5, 0xc6) else raw.decode("utf-8")), pos
        if 0x90 <= b <= 0x9f or b in (0xdc, 0xdd):
            n, pos = (b & 0x0f, pos) if b <= 0x9f else self._number(self.LENGTHS[b], pos)
            items = []
            for _ in range(n):
                item, pos = self._decode(pos)
                items.append(item)
            return items, pos
        if 0x80 <= b <= 0x8f or b in (0xde, 0xdf):
            n, pos = (b & 0x0f, pos) if b <= 0x8f else self._number(self.LENGTHS[b], pos)
            result = {}
            for _ in range(n):
                key, pos = self._decode(pos)
                result[key], pos = self._decode(pos)
            return result, pos
        raise ValueError(f"unsupported msgpack byte 0x{b:02x} from the host")


# ---------------------------------------------------------------- rich output

# IPython's order: the first of these an object offers is shown by a front end that
# understands it; text/plain is always added.
REPR_METHODS = (("_repr_html_", "text/html"), ("_repr_markdown_", "text/markdown"),
                ("_repr_svg_", "image/svg+xml"), ("_repr_png_", "image/png"),
                ("_repr_jpeg_", "image/jpeg"), ("_repr_latex_", "text/latex"),
                ("_repr_json_", "application/json"),
                ("_repr_javascript_", "application/javascript"),
                ("_repr_pdf_", "application/pdf"))
BINARY_MIMES = ("image/png", "image/jpeg", "application/pdf")


def _method(obj: Any, name: str) -> Callable | None:
    if isinstance(obj, type):        # a class: its _repr_*_ are unbound, not for it
        return None
    try:
        method = getattr(obj, name, None)
    except Exception:
        return None
    return method if callable(method) else None


def _plain(obj: Any) -> str:
    if "IPython" in sys.modules:      # already paid for: format exactly as IPython does
        try:
            from IPython.lib.pretty import pretty
            return pretty(obj)
        except Exception:
            pass
    import pprint
    return pprint.pformat(obj, sort_dicts=False)


def _jsonable_data(mime: str, value: Any) -> Any:
    """Binary formats travel base64-encoded, as in a notebook file."""
    if isinstance(value, (bytes, bytearray)):
        if mime in BINARY_MIMES or mime.startswith("image/"):
            return base64.b64encode(bytes(value)).decode("ascii")
        return bytes(value).decode("utf-8", "replace")
    return value


def format_object(obj: Any, include: Any = None, exclude: Any = None
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(data, metadata) mime bundles for ``obj``, as IPython's DisplayFormatter builds
    them from ``_repr_mimebundle_`` and the ``_repr_*_`` methods, plus text/plain."""
    data: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    bundle = _method(obj, "_repr_mimebundle_")
    if bundle is not None:
        try:
            result = bundle(include=include, exclude=exclude)
        except Exception:
            _warn_repr(obj, "_repr_mimebundle_")
            result = None
        if isinstance(result, tuple) and len(result) == 2:
            result, md = result
            metadata.update(md or {})
        if isinstance(result, dict):
            data.update({k: _jsonable_data(k, v) for k, v in result.items()})
    figure = _figure_png(obj)
    if figure is not None:
        data.setdefault("image/png", figure)
    for name, mime in REPR_METHODS:
        if mime in data:
            continue
        method = _method(obj, name)
        if method is None:
            continue
        try:
            value = method()
        except Exception:
            _warn_repr(obj, name)
            continue
        if isinstance(value, tuple) and len(value) == 2:
            value, md = value
            if md:
                metadata[mime] = md
        if value is not None:
            data[mime] = _jsonable_data(mime, value)
    if "text/plain" not in data:
        data["text/plain"] = _plain(obj)
    if include:
        data = {k: v for k, v in data.items() if k in include}
    if exclude:
        data = {k: v for k, v in data.items() if k not in exclude}
    return data, metadata


def _warn_repr(obj: Any, name: str) -> None:
    import traceback
    print(f"{type(obj).__name__}.{name} raised:\n{traceback.format_exc()}",
          file=sys.stderr)


def _figure_png(obj: Any) -> str | None:
    """A matplotlib figure as base64 PNG (matplotlib only when the cell imported it)."""
    if "matplotlib.figure" not in sys.modules:
        return None
    figure_type = sys.modules["matplotlib.figure"].Figure
    if not isinstance(obj, figure_type):
        return None
    buf = io.BytesIO()
    obj.savefig(buf, format="png", bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------- the worker

# This file's name as Python knows it (``<sandboxd-worker>`` when run by a session):
# its frames are left out of the tracebacks of cells.
WORKER_FILE = sys._getframe().f_code.co_filename


CO_COROUTINE = 0x80
KERNEL_FLUSH_INTERVAL = 0.2  # ipykernel's OutStream.flush_interval          # inspect.CO_COROUTINE, without importing inspect (~8 ms)


class InputError(Exception):
    """An ``--in`` value the container cannot unpickle."""


class ShellError(Exception):
    """A ``--shell`` cell's script exited non-zero."""

    def __init__(self, status: int, script: str):
        super().__init__(f"the cell's shell script exited with status {status}")
        self.status = status
        self.script = script


class Worker:
    """Serves cells on a protocol channel; the cell's fd 1/2 are pipes it forwards."""

    def __init__(self, proto_in: int, proto_out: int, out_pipe: int, err_pipe: int):
        self.proto_in = proto_in
        self.proto_out = proto_out
        self.pipes = {out_pipe: "stdout", err_pipe: "stderr"}
        self.write_lock = threading.Lock()
        self.sync_r, self.sync_w = os.pipe()
        self.synced = threading.Event()
        self.running = False                   # a cell is executing (SIGINT acts)
        self.sending = False                   # the main thread is writing a frame
        self.deferred = False                  # a SIGINT came while it was
        # The cells' namespace is a fresh __main__ module (so classes defined in a cell
        # pickle, as in IPython); the worker keeps its own globals.
        main_module = types.ModuleType("__main__")
        main_module.__dict__["__builtins__"] = builtins
        sys.modules["__main__"] = main_module
        self.ns: dict[str, Any] = main_module.__dict__
        self.count = 0
        self.sources: dict[str, str] = {}       # cell file name -> its code
        self.shell: Any = None                  # IPython's shell, in --ipython mode
        self.flush_interval = 0.0               # seconds output is held (IPython mode)

    def use_ipython(self) -> bool:
        """Run cells through IPython's InteractiveShell from now on; False when the
        image has no IPython."""
        self.shell = _ipython_shell(self)
        if self.shell is None:
            return False
        self.ns = self.shell.user_ns
        self.flush_interval = KERNEL_FLUSH_INTERVAL
        return True

    def run_ipython(self, code: str) -> bool:
        """One cell through the shell, as ipykernel runs it; True when it succeeded."""
        result = self.shell.run_cell(code, store_history=True)
        return result.error_before_exec is None and result.error_in_exec is None

    # -- channel
    def send(self, message: dict) -> None:
        data = _pack(message)
        main = threading.current_thread() is threading.main_thread()
        if main:
            self.sending = True          # a SIGINT now must not cut a frame in half
        try:
            with self.write_lock:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.proto_out, view):]
        finally:
            if main:
                self.sending = False
        if main and self.deferred:
            self.deferred = False
            if self.running:
                raise KeyboardInterrupt

    def forward(self) -> None:
        """Thread: the cell's output pipes -> stream messages; on a sync request, drain
        what is buffered so everything a finished cell wrote precedes its ``done``.

        In IPython mode output is held for ``flush_interval`` after it first arrives and
        then forwarded stdout first, as ipykernel's streams flush (so a cell that writes
        to stderr, then stdout, shows them in the order a kernel does)."""
        for fd in self.pipes:
            os.set_blocking(fd, False)
        watched = [*self.pipes, self.sync_r]
        due: float | None = None                    # when held output goes out
        while True:
            wait = None if due is None else max(0.0, due - time.monotonic())
            ready, _, _ = select.select(watched if due is None else [self.sync_r], [],
                                        [], wait)
            if self.sync_r in ready:
                os.read(self.sync_r, 64)
                for pipe in self.pipes:
                    self._drain(pipe)
                due = None
                self.synced.set()
            elif due is not None:                    # the interval is over
                for pipe in self.pipes:
                    self._drain(pipe)
                due = None
            elif self.flush_interval:
                due = time.monotonic() + self.flush_interval
            else:
                for fd in ready:
                    self._drain(fd)

    def _drain(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            if not data:
                return
            self.send({"type": "stream", "name": self.pipes[fd], "data": data})

    def sync_output(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        self.synced.clear()
        os.write(self.sync_w, b"s")
        self.synced.wait()

    # -- SIGINT: a KeyboardInterrupt in the cell, nothing between cells
    def on_sigint(self, signum: int, frame: Any) -> None:
        if self.running:
            if self.sending:
                self.deferred = True         # raised once the frame is out
            else:
                raise KeyboardInterrupt

    # -- display
    def display(self, *objs: Any, include: Any = None, exclude: Any = None,
                metadata: dict | None = None, raw: bool = False, **_: Any) -> None:
        """``display()`` inside a cell: one display_data per object (``raw``: the
        objects are mime bundles already)."""
        self.sync_output()                 # prints before the display stay before it
        for obj in objs:
            if raw:
                data, md = {k: _jsonable_data(k, v) for k, v in dict(obj).items()}, {}
            else:
                data, md = format_object(obj, include, exclude)
            self.send({"type": "display", "data": data, "metadata": {**md,
                                                                    **(metadata or {})}})

    def publish(self, data: dict, metadata: dict | None = None, **_: Any) -> None:
        self.sync_output()
        self.send({"type": "display", "data": {k: _jsonable_data(k, v)
                                               for k, v in data.items()},
                   "metadata": metadata or {}})

    def clear_output(self, wait: bool = False) -> None:
        self.sync_output()
        self.send({"type": "clear_output", "wait": bool(wait)})

    # -- cells
    def execute(self, request: dict) -> None:
        self.count += 1
        status, values = "ok", {}
        try:
            self.running = True
            try:
                for name, blob in (request.get("inputs") or {}).items():
                    self.ns[name] = self.unpickle(name, blob)
                if request.get("shell"):
                    self.run_shell(request["code"])
                elif self.shell is not None:
                    if not self.run_ipython(request["code"]):
                        status = "error"         # the shell has shown its traceback
                else:
                    self.run_python(request["code"])
                    self.show_figures()
            finally:
                self.running = False
        except BaseException as exc:        # noqa: B036 -- the cell's failure is its result
            self.running = False
            status = "error"
            self.sync_output()
            self.send({"type": "error", **self.describe(exc)})
        self.sync_output()
        for name in request.get("outputs") or ():
            values[name] = self.encode_out(name)
        self.send({"type": "done", "status": status, "values": values})

    def unpickle(self, name: str, blob: bytes) -> Any:
        import pickle                          # host data, sent in by the host
        try:
            return pickle.loads(blob)
        except Exception as exc:
            raise InputError(f"--in {name}: cannot be rebuilt in the container "
                             f"({type(exc).__name__}: {exc}); a class or function "
                             f"defined in the notebook does not exist here: send plain "
                             f"data, or define it in the cell") from None

    def encode_out(self, name: str) -> dict:
        if name not in self.ns:
            return {"error": f"name {name!r} is not defined in the cell"}
        try:
            return {"value": encode_value(self.ns[name])}
        except Exception as exc:
            return {"error": f"{name}: {exc}"}

    def run_python(self, code: str) -> None:
        filename = f"<cell-{self.count}>"
        self.sources[filename] = code           # for tracebacks (see describe)
        if "linecache" in sys.modules:          # the cell may print tracebacks itself
            sys.modules["linecache"].cache[filename] = (
                len(code), None, code.splitlines(True), filename)
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        tree = compile(code, filename, "exec", ast.PyCF_ONLY_AST | flags)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        self._run(compile(tree, filename, "exec", flags))
        if last is not None:
            value = self._run(compile(last, filename, "eval", flags))
            if value is not None and not code.rstrip().endswith(";"):
                self.ns["_"] = value
                self.sync_output()
                data, md = format_object(value)
                self.send({"type": "result", "data": data, "metadata": md})

    def _run(self, code: Any) -> Any:
        if code.co_flags & CO_COROUTINE:      # top-level await, as IPython allows
            import asyncio
            return asyncio.run(eval(code, self.ns))
        return eval(code, self.ns)

    def run_shell(self, script: str) -> None:
        import subprocess
        proc = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.DEVNULL)
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            proc.wait()
            raise
        if code != 0:
            raise ShellError(code, script)

    def show_figures(self) -> None:
        """Figures a cell left open in matplotlib's pyplot are displayed, then closed,
        as IPython's inline backend does."""
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return
        for number in plt.get_fignums():
            self.display(plt.figure(number))
        plt.close("all")

    def describe(self, exc: BaseException) -> dict:
        import linecache
        import traceback
        for filename, code in self.sources.items():
            linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        if isinstance(exc, (SyntaxError, ShellError, InputError)):
            lines = traceback.format_exception_only(type(exc), exc)
        else:
            # The user's frames only: not the worker's (its exec, its SIGINT handler).
            frames = traceback.StackSummary.from_list(
                [f for f in traceback.extract_tb(exc.__traceback__)
                 if f.filename != WORKER_FILE])
            lines = ["Traceback (most recent call last):\n", *frames.format(),
                     *traceback.format_exception_only(type(exc), exc)]
        return {"ename": type(exc).__name__, "evalue": str(exc),
                "traceback": [line.rstrip("\n") for line in lines]}

    def serve(self) -> None:
        signal.signal(signal.SIGINT, self.on_sigint)
        threading.Thread(target=self.forward, name="forward", daemon=True).start()
        ready = {"type": "ready", "python": sys.version.split()[0]}
        if self.shell is not None:
            ready["ipython"] = sys.modules["IPython"].__version__
        self.send(ready)
        unpacker = Unpacker()
        while True:
            try:
                data = os.read(self.proto_in, 1 << 16)
            except KeyboardInterrupt:         # a late interrupt, after its cell ended
                continue
            if not data:
                return                         # the host closed stdin: the session ends
            unpacker.feed(data)
            for request in unpacker:
                if request.get("op") == "execute":
                    self.execute(request)


class _DisplayHook:
    # A meta path finder by protocol (find_spec): importlib.abc costs ~10 ms to import.
    """Routes ``IPython.display.display`` (and friends) to the worker when the cell
    imports IPython: its own ``display`` would only print without a running shell."""

    def __init__(self, worker: Worker):
        self.worker = worker

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "IPython.core.display_functions":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module
        worker = self.worker

        def patched(module: Any) -> None:
            exec_module(module)
            module.display = worker.display
            module.publish_display_data = worker.publish
            module.clear_output = worker.clear_output
        spec.loader.exec_module = patched       # type: ignore[method-assign]
        return spec


def _ipython_shell(worker: Worker) -> Any:
    """IPython's InteractiveShell wired to ``worker`` the way ipykernel wires its
    ZMQInteractiveShell to a kernel: results, displays and tracebacks become protocol
    messages. None when IPython cannot be imported."""
    try:
        from IPython.core.compilerop import CachingCompiler
        from IPython.core.displayhook import DisplayHook
        from IPython.core.displaypub import DisplayPublisher
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config
    except ImportError:
        return None

    class ResultHook(DisplayHook):
        """``Out[n]``: the cell's value as an execute_result (no prompt is printed)."""
        bundle: Any = None

        def start_displayhook(self) -> None:
            self.bundle = None

        def write_output_prompt(self) -> None:
            pass

        def write_format_data(self, format_dict: dict, md_dict: Any = None) -> None:
            self.bundle = (format_dict, md_dict or {})

        def finish_displayhook(self) -> None:
            worker.sync_output()               # what the cell printed comes first
            if self.bundle is not None and self.bundle[0]:
                data, md = self.bundle
                worker.send({"type": "result", "metadata": md,
                             "data": {k: _jsonable_data(k, v) for k, v in data.items()}})
            self.bundle = None

    class Publisher(DisplayPublisher):
        """``display()``, ``update_display()`` and ``clear_output()``."""

        def publish(self, data: dict, metadata: Any = None, source: Any = None, *,
                    transient: Any = None, update: bool = False, **_: Any) -> None:
            worker.sync_output()
            message = {"type": "display", "metadata": metadata or {},
                       "data": {k: _jsonable_data(k, v) for k, v in data.items()}}
            if transient:
                message["transient"] = dict(transient)
            if update:
                message["update"] = True
            worker.send(message)

        def clear_output(self, wait: bool = False) -> None:
            worker.clear_output(wait)

    class CellCompiler(CachingCompiler):
        """Cells named as ipykernel names them (a .py path per cell's code, not
        ``<ipython-input-N>``): IPython's tracebacks are formatted differently for the
        two, and a kernel's are the reference."""

        def get_code_name(self, raw_code: str, code: Any, number: int) -> str:
            # The name shows in a SyntaxError's message: ipykernel's hash, ipykernel's name.
            return (f"{os.environ.get('TMPDIR') or '/tmp'}/ipykernel_{os.getpid()}/"
                    f"{_murmur2(raw_code.encode('utf-8'), 0xC70F6907)}.py")

    # Named as ipykernel's shell: libraries test ``get_ipython().__class__.__name__ ==
    # "ZMQInteractiveShell"`` to know they are in a notebook (tqdm, plotly, pandas).
    class ZMQInteractiveShell(InteractiveShell):
        displayhook_class = ResultHook
        display_pub_class = Publisher

        def init_environment(self) -> None:
            # ipykernel's: colour for tools that would otherwise see a pipe, no pager
            os.environ.update({"TERM": "xterm-color", "CLICOLOR": "1", "FORCE_COLOR": "1",
                               "CLICOLOR_FORCE": "1", "PAGER": "cat", "GIT_PAGER": "cat"})

        def _showtraceback(self, etype: Any, evalue: Any, stb: Any) -> None:
            worker.sync_output()
            worker.send({"type": "error", "ename": str(etype.__name__),
                         "evalue": str(evalue), "traceback": [str(line) for line in stb]})

    config = Config()
    config.HistoryManager.enabled = False      # no sqlite file: nothing reads it back
    shell = ZMQInteractiveShell.instance(config=config, compiler_class=CellCompiler)
    # ``obj?`` and ``%magic?``: a kernel sends the text to the front end's pager, never
    # into the notebook (nbclient drops it); so does this shell.
    shell.set_hook("show_in_pager", _no_pager, 99)
    shell.register_magic_function(_autosave, "line", "autosave")
    return shell


def _murmur2(data: bytes, seed: int) -> int:
    """MurmurHash2 (32-bit), as ipykernel.compiler names cells with it."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    h = seed ^ len(data)
    end = len(data) & ~3
    for i in range(0, end, 4):
        k = (int.from_bytes(data[i:i + 4], "little") * m) & mask
        k ^= k >> 24
        h = ((h * m) & mask) ^ ((k * m) & mask)
    tail = len(data) & 3
    if tail:
        h ^= int.from_bytes(data[end:], "little")
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    return h ^ (h >> 15)


def _no_pager(*args: Any, **kwargs: Any) -> None:
    pass


def _autosave(arg: str) -> None:
    """Set the autosave interval in the notebook (in seconds): ipykernel's magic, the
    same output."""
    from IPython.core.display import Javascript
    from IPython.core.error import UsageError
    from IPython.display import display
    try:
        interval = int(arg)
    except ValueError:
        raise UsageError(f"%autosave requires an integer, got {arg!r}") from None
    display(Javascript(f"IPython.notebook.set_autosave_interval({1000 * interval})"),
            include=["application/javascript"])
    print(f"Autosaving every {interval} seconds" if interval else "Autosave disabled")


def main() -> None:
    # The protocol keeps the container's stdin/stdout; the cell gets /dev/null and
    # pipes that the worker forwards.
    proto_in, proto_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.close(out_w)
    os.close(err_w)
    sys.stdin = open(0, "r", closefd=False)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", write_through=True)
    worker = Worker(proto_in, proto_out, out_r, err_r)
    if "--ipython" in sys.argv[1:] and worker.use_ipython():
        # ipykernel's default: figures shown by the inline backend after each cell
        if importlib.util.find_spec("matplotlib_inline") is not None:
            os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    else:
        builtins.display = worker.display           # type: ignore[attr-defined]
        sys.meta_path.insert(0, _DisplayHook(worker))
    os.environ.setdefault("MPLBACKEND", "Agg")      # figures render off-screen
    worker.serve()


if __name__ == "__main__":
    main()
