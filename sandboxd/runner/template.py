"""The template: a pre-imported Python process that containers' pid 1 are forked from.

A fresh ``python -m pytest_sandbox.worker`` spends most of its start importing pytest.
The template is started by the fork server, on the first spawn that names an ``entry``
(``module:function``), from trusted code only: ``python -m sandboxd.runner.template``
with the fork server's allow-list of entries, whose modules it imports once. It never
imports anything a container names and never receives any container's data: its one
request is "fork", carrying a socket. For each, it clones (``CLONE_NEWPID |
CLONE_PARENT``: the child is pid 1 of a new pid namespace and a child of the fork server,
which reaps it as any pid 1), and only the clone reads its spec from that socket, after
the fork server has put it in the container's cgroup. Every clone is a copy of the
pristine template, never of another container's process.

The clone then does what any container's first process does (namespaces, mounts,
pivot_root, limits, the security profile, every fd above 2 closed but the start report),
and instead of execve resets what a fresh interpreter would have from its argv and env
(``os.environ``, ``sys.argv``, ``sys.path`` from ``PYTHONPATH``, ``sys.std*`` on fds
0-2, the random seed) and calls the entry. The template's own environment is only
``PATH`` and ``PYTHONPATH``: a clone's ``/proc/1/environ`` shows the template's.

The template is keyed by the interpreter it was started from: the fork server lets only
a spawn whose command is its own ``sys.executable`` use it, and the template refuses a
fork (and exits, so the next spawn starts a new one) once that interpreter's files
changed (:func:`interpreter_stamp`: a venv made again, a package installed).

Settings that only act at interpreter start (``PYTHONHASHSEED``, ``PYTHONWARNINGS``, …)
cannot be given to a clone: :func:`env_problems` names them, and a spawn with them is
refused (the caller runs the fresh interpreter instead).
"""
from __future__ import annotations

import importlib
import io
import os
import random
import signal
import socket
import sys
from typing import Any, Callable, NoReturn

ENTRY_FORK = "fork"
CLONE_PARENT = 0x00008000
# PYTHON* variables a clone can honour after the interpreter started.
APPLIED_AT_ENTRY = ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONBREAKPOINT")


def parse_entry(entry: str) -> tuple[str, str]:
    module, sep, function = entry.partition(":")
    if not sep or not module or not function:
        raise ValueError(f"entry {entry!r} is not module:function")
    return module, function


def env_problems(env: dict[str, str] | list[str] | tuple[str, ...]) -> list[str]:
    """Why a process with ``env`` cannot run from the template (empty: it can)."""
    if not isinstance(env, dict):
        env = dict(entry.partition("=")[::2] for entry in env)
    return [f"{name} takes effect only when an interpreter starts"
            for name in sorted(env) if name.startswith("PYTHON")
            and name not in APPLIED_AT_ENTRY]


def template_environment(pythonpath: str) -> dict[str, str]:
    from .spec import DEFAULT_PATH
    return {"PATH": DEFAULT_PATH, "PYTHONPATH": pythonpath}


def load_entries(entries: list[str]) -> dict[str, Callable[[], Any]]:
    loaded = {}
    for entry in entries:
        module, function = parse_entry(entry)
        loaded[entry] = getattr(importlib.import_module(module), function)
    return loaded


# ---------------------------------------------------------------- in the clone

def _fresh_interpreter_state(args: tuple[str, ...], env: dict[str, str], module: str,
                             base_path: list[str]) -> None:
    """What ``python -m <module> args...`` with ``env`` would have started with."""
    os.environ.clear()
    os.environ.update(env)
    main_file = getattr(sys.modules[module], "__file__", None) or module
    sys.argv = [main_file, *args[3:]]
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [os.getcwd(), *extra, *base_path]
    sys.path_importer_cache.clear()
    sys.dont_write_bytecode = bool(env.get("PYTHONDONTWRITEBYTECODE"))
    encoding = sys.stdout.encoding if sys.stdout else "utf-8"
    sys.stdin = sys.__stdin__ = open(0, "r", encoding=encoding, closefd=False)
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(
        open(1, "wb", closefd=False), encoding=encoding, line_buffering=os.isatty(1))
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        open(2, "wb", buffering=0, closefd=False), encoding=encoding,
        errors="backslashreplace", line_buffering=True, write_through=True)
    random.seed()                    # not the template's state: a fresh one per clone
    # What the interpreter sets at start (the setup reset them to the defaults for exec).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_IGN)


def run_entry(prepare: Callable[[], None], function: Callable[[], Any]) -> NoReturn:
    """Call the entry as ``python -m`` would run a module: its return value or
    SystemExit is the exit code, an exception is printed and exits 1."""
    code: Any = 0
    try:
        prepare()
        code = function()
    except SystemExit as e:
        code = e.code
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    try:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    except Exception:
        pass
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    os._exit(code & 0xFF)


def _clone_main(chan_fd: int, entries: dict[str, Callable[[], Any]],
                base_path: list[str]) -> NoReturn:
    from . import child
    from . import syscalls as sc
    from ..errors import SandboxError, SetupFailed
    from .channel import recv_message
    from .init import run_init
    from .mounts import run_steps
    from .plan import build_plan
    from .seccomp import Program
    from .spec import ContainerSpec, from_dict, validate
    child.not_dumpable()                  # the template's memory and fds: not theirs
    chan = socket.socket(fileno=chan_fd)
    msg, fds = recv_message(chan)          # arrives once the server put us in the cgroup
    chan.close()
    if msg is None or len(fds) < 2:
        os._exit(1)
    errw, stdio = fds[-1], fds[:-1]
    try:
        spec = validate(from_dict(ContainerSpec, msg["spec"]))
        program = Program.from_wire(msg["seccomp"]) if msg.get("seccomp") else None
        layer_fd = -1
        # Its detached mounts came after the stdio: the layer's, then its image mounts'.
        count = sum(1 for m in spec.mounts if m.type == "image")
        image_fds = stdio[len(stdio) - count:]
        stdio = stdio[:len(stdio) - count]
        if spec.root.layer:
            layer_fd, stdio = stdio[-1], stdio[:-1]
        function = entries[spec.entry]
        child.reset_signals()
        try:
            child.enter_namespaces(spec)
        except OSError as e:
            raise SetupFailed(f"create namespaces: {e.strerror}",
                              {"step": "namespaces", "errno": e.errno or 0}) from None
        cgroupfs = tuple(tuple(m) for m in msg["cgroupfs"])
        run_steps(build_plan(spec, msg["mnt"], cgroupfs, layer_fd, image_fds))
        child.install_stdio(stdio, False)
        _executable, env = child.prepare_process(spec.process, spec.hostname, errw, program)
    except SandboxError as e:
        child.fail(errw, e, getattr(e, "exit_code", 1))
    except Exception as e:                                   # a bug: still report it
        child.fail(errw, SetupFailed(f"container setup: {type(e).__name__}: {e}"))
    module = parse_entry(spec.entry)[0]

    def workload() -> NoReturn:
        child.close_fds_except(errw)        # no fd of the template reaches the workload
        # What an execve does: the workload is dumpable again (its /proc/self is its own
        # user's); the template's memory stays readable, as any exec'd program's is.
        sc.prctl(sc.PR_SET_DUMPABLE, 1)
        if spec.process.no_new_privileges:
            try:
                child.install_filter(program)     # last, as before an exec
            except SandboxError as e:
                child.fail(errw, e)
        child.report(errw, b"R")
        os.close(errw)                      # EOF after R: started, as an exec would say
        run_entry(lambda: _fresh_interpreter_state(spec.process.args, env, module,
                                                   base_path), function)

    if spec.init:
        run_init(workload, args=spec.process.args)
    workload()


# ---------------------------------------------------------------- the template's loop

def interpreter_stamp(base_path: list[str]) -> tuple[tuple[str, int, int], ...]:
    """What the template's modules came from, as it is now: the executable as called
    and its real file, the venv's ``pyvenv.cfg`` and each ``sys.path`` directory (a
    package installed, upgraded or removed changes its site-packages' mtime; a venv
    made again at the same path changes the inodes). A clone of a template whose stamp
    changed would mix modules it holds with files from another install."""
    paths = [sys.executable, os.path.realpath(sys.executable),
             os.path.join(os.path.dirname(os.path.dirname(sys.executable)), "pyvenv.cfg"),
             *base_path]
    stamp = []
    for path in dict.fromkeys(paths):
        try:
            st = os.stat(path)
        except OSError:
            stamp.append((path, 0, 0))
        else:
            stamp.append((path, st.st_ino, st.st_mtime_ns))
    return tuple(stamp)


def serve(sock: socket.socket, entries: dict[str, Callable[[], Any]]) -> None:
    from . import syscalls as sc
    from .channel import recv_message, send_message
    # A fresh interpreter's sys.path without its script dir and PYTHONPATH: what each
    # clone's PYTHONPATH is put in front of.
    ours = {p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    base_path = [p for p in sys.path[1:] if p not in ours]
    stamp = interpreter_stamp(base_path)
    send_message(sock, {"event": "ready", "pid": os.getpid(), "entries": list(entries)})
    while True:
        msg, fds = recv_message(sock)
        if msg is None:
            return                            # the fork server is gone
        if msg.get("op") != ENTRY_FORK or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            send_message(sock, {"error": f"template: bad request {msg.get('op')!r}"})
            continue
        if interpreter_stamp(base_path) != stamp:
            # Keyed by the interpreter it was started from: refuse (the caller runs a
            # fresh interpreter) and exit; the next spawn with an entry starts anew.
            os.close(fds[0])
            send_message(sock, {"error": f"template: its interpreter {sys.executable} "
                                         f"changed since it started; starting anew"})
            return
        try:
            pid = sc.clone(sc.CLONE_NEWPID | CLONE_PARENT)
        except OSError as e:
            os.close(fds[0])
            send_message(sock, {"error": f"clone: {e.strerror}"})
            continue
        if pid == 0:
            try:
                sock.close()
                _clone_main(fds[0], entries, base_path)
            finally:
                os._exit(1)
        os.close(fds[0])
        send_message(sock, {"pid": pid})


def main(argv: list[str] | None = None) -> None:
    import argparse
    parser = argparse.ArgumentParser(prog="sandboxd-template")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--entry", action="append", default=[])
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    os.set_inheritable(sock.fileno(), False)
    serve(sock, load_entries(args.entry))


if __name__ == "__main__":
    main()
