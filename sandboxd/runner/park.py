"""The parked pid 1 of a pooled container, and the take message it waits for.

A prepared container (the fork server's ``prepare``) is set up by the forked Python pid 1
up to everything its future process shares with the pool: namespaces, mounts, root,
rlimits, working directory, user, capabilities (and the seccomp filter when
no_new_privileges is off). What waits for the ``take`` is then ``sbx-park`` (park.c), a
small static program, not the fork of the fork server's interpreter: a parked container
costs a few hundred KiB of PSS instead of megabytes, and the take's exec tears down no
Python address space. Containers with an init (its reaper is the Python loop of
runner/init.py) and hosts without a C compiler wait in Python instead
(forkserver._wait_in_python), for the same message.

The helper is built from park.c with the host's C compiler the first time pools are
used (:func:`build_command`: against musl when Debian's musl-tools is there, else
``cc -static``), into ``$SANDBOXD_CACHE_DIR`` (``/var/cache/sandboxd``) under the hash of
its source and toolchain, and loaded by the fork server into a sealed memfd that each
parked pid 1 execs (so nothing in a container can reach the file: CVE-2019-5736's lesson,
as runc's cloned binary).
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import operator
import os
import shutil
import struct
import subprocess
import sysconfig
from dataclasses import fields
from pathlib import Path

from ..errors import (CommandNotExecutable, CommandNotFound, InvalidArgument, SandboxError,
                      SetupFailed)
from .spec import Process, check_process

log = logging.getLogger("sandboxd.park")

SOURCE = Path(__file__).with_name("park.c")
HEADER = Path(__file__).with_name("helper.h")       # shared with setup.c, included by both
MAGIC = 0x6B726170                   # "park", park.c's PARK_MAGIC
MAX_TAKE = 1 << 17                   # park.c's MAX_MESSAGE
# magic, terminal, argc, envc, seccomp flags, filter bytes, the pty's rows and cols
_HEADER = struct.Struct("=8I")
_FAILURE = struct.Struct("=ci")      # after "X": kind, errno


def cache_dir() -> Path:
    return Path(os.environ.get("SANDBOXD_CACHE_DIR", "/var/cache/sandboxd"))


# The kernel's headers Debian's musl-gcc lacks (it searches musl's own only), linked
# beside nothing else of glibc's in this directory under the cache dir.
_KERNEL_HEADERS = ("linux", "asm-generic", "asm")
_MUSL_INCLUDE = "musl-include"

Toolchain = tuple[str, list[str]]


def toolchain() -> Toolchain | None:
    """The compiler the helpers are built with, as (its name, the command's start):
    ``musl-gcc`` when it, the gcc it wraps and the kernel's headers are there, else
    ``cc``; None without either. A static glibc program's start-up probes the CPU's
    features and caches (68 CPUID instructions, each a VM exit under virtualisation):
    0.56 ms before main on this VM, against 0.05 ms for the same program on musl,
    and each cold start execs sbx-setup (docs/bench.md, twelfth pass)."""
    triplet = sysconfig.get_config_var("MULTIARCH") or ""
    musl = shutil.which("musl-gcc")
    if musl and triplet and shutil.which(f"{triplet}-gcc") \
            and all(path.is_dir() for path in _kernel_headers(triplet).values()):
        return "musl", [musl, "-isystem", str(cache_dir() / _MUSL_INCLUDE)]
    compiler = shutil.which("cc") or shutil.which("gcc")
    return ("cc", [compiler]) if compiler else None


def _kernel_headers(triplet: str) -> dict[str, Path]:
    return {name: Path("/usr/include", triplet if name == "asm" else "", name)
            for name in _KERNEL_HEADERS}


def _link_kernel_headers() -> None:
    include = cache_dir() / _MUSL_INCLUDE
    include.mkdir(parents=True, exist_ok=True)
    for name, path in _kernel_headers(sysconfig.get_config_var("MULTIARCH")).items():
        try:
            (include / name).symlink_to(path)
        except FileExistsError:
            pass


def helper_path(source: Path = SOURCE, name: str = "sbx-park",
                chosen: Toolchain | None = None) -> Path:
    """Where the program built from ``source`` is kept: one file per hash of the source,
    the header it includes and the toolchain (``chosen``, else :func:`toolchain`'s: a
    machine that gains musl builds anew)."""
    chosen = chosen or toolchain()
    digest = hashlib.sha256(source.read_bytes() + HEADER.read_bytes()
                            + (chosen[0] if chosen else "").encode()).hexdigest()[:16]
    return cache_dir() / f"{name}-{digest}"


def build_command(source: Path = SOURCE, name: str = "sbx-park",
                  chosen: Toolchain | None = None) -> tuple[list[str], Path]:
    """The compiler's command line (``chosen``'s, else :func:`toolchain`'s) and the path
    it writes (beside ``helper_path``, to be renamed there: a concurrent build wins or
    loses whole); raises SetupFailed when there is no compiler."""
    chosen = chosen or toolchain()
    if chosen is None:
        raise SetupFailed(f"no C compiler (cc) to build {name} from {source}: apt-get "
                          f"install gcc libc6-dev musl-tools",
                          {"step": "park-helper", "errno": 0})
    target = helper_path(source, name, chosen)
    target.parent.mkdir(parents=True, exist_ok=True)
    if chosen[0] == "musl":
        _link_kernel_headers()
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    return [*chosen[1], "-static", "-Os", "-s", "-o", str(tmp), str(source)], tmp


def build_helper(source: Path = SOURCE, name: str = "sbx-park") -> str:
    """The path of the program built from ``source`` (sbx-park's park.c by default),
    built once per source; raises SetupFailed (with the compiler's words) when it
    cannot be built."""
    chosen = toolchain()
    target = helper_path(source, name, chosen)
    if target.exists():
        return str(target)
    command, tmp = build_command(source, name, chosen)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise SetupFailed(f"build {source.name} with {command[0]}: "
                              f"{done.stderr.strip()[-500:]}",
                              {"step": "park-helper", "errno": 0})
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return str(target)


def load_helper(path: str, name: str = "sbx-park") -> int:
    """A sealed, close-on-exec memfd holding the helper, for fexecve."""
    data = Path(path).read_bytes()
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK
                    | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def take_message(prepared: Process, process: Process, stdio: int, bpf: bytes = b"",
                 flags: int = 0) -> bytes:
    """The take of a prepared process, checked: ``process`` may differ from it only in
    its command, environment and terminal (the rest was applied at prepare), with
    ``stdio`` fds (3, or 1 terminal). Whoever sends it (the fork server, or its owner
    holding the channel) checks the same."""
    if _applied_at_prepare(process) != _applied_at_prepare(prepared):
        raise InvalidArgument("take: only the command, environment and terminal may "
                              "differ from the prepared process (its working "
                              "directory, user, groups, ulimits, capabilities and "
                              "no_new_privileges were applied at prepare)")
    if process.__dict__.get(_CHECKED) is not True:     # see keep_wire: shared, immutable
        problems = check_process(process)
        if problems:
            raise InvalidArgument.of(problems)
        object.__setattr__(process, _CHECKED, True)
    if stdio != (1 if process.terminal else 3):
        raise InvalidArgument("take: pass 3 stdio fds, or 1 terminal fd")
    message = encode_take(process, bpf, flags)
    if len(message) > MAX_TAKE:
        raise InvalidArgument(f"take: the command, environment and seccomp filter "
                              f"take {len(message)} bytes, more than {MAX_TAKE}")
    return message


# What a prepared process applied already (all but what a take may change), as one
# tuple: a take compares it field by field with one C call, where dataclasses.replace
# and == were ~30 Python calls of every pool hit.
_applied_at_prepare = operator.attrgetter(*(
    f.name for f in fields(Process)
    if f.name not in ("args", "env", "terminal", "console_size")))
_CHECKED = "_checked"           # a process take_message checked (a derived one repeats)


def encode_take(process: Process, bpf: bytes = b"", flags: int = 0) -> bytes:
    """The take message: the process's terminal, args and env, and the seccomp filter
    the parked pid 1 loads just before its exec (empty: none, or loaded at park)."""
    strings = b"".join(s.encode() + b"\0" for s in (*process.args, *process.env))
    rows, cols = process.console_size or (0, 0)
    return _HEADER.pack(MAGIC, int(process.terminal), len(process.args), len(process.env),
                        flags, len(bpf), rows, cols) + bpf + strings


def decode_take(data: bytes
                ) -> tuple[bool, tuple[int, ...], list[str], list[str], int, bytes]:
    """(terminal, console size, args, env, seccomp flags, filter) of a take message."""
    magic, terminal, argc, envc, flags, size, rows, cols = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("not a take message")
    start = _HEADER.size + size
    strings = data[start:].split(b"\0")[: argc + envc]
    text = [s.decode("utf-8", "surrogateescape") for s in strings]
    return (bool(terminal), (rows, cols) if rows and cols else (), text[:argc],
            text[argc:], flags, data[_HEADER.size:start])


def decode_failure(raw: bytes) -> SandboxError:
    """The error of park.c's ``X`` report, worded as the Python path words it."""
    kind, err = _FAILURE.unpack_from(raw, 1)
    text = raw[1 + _FAILURE.size:].decode("utf-8", "replace")
    if kind == b"p":
        return CommandNotFound(f"executable file not found in $PATH: {text}",
                               {"exit_code": 127, "command": text})
    if kind == b"n":
        return CommandNotFound(f"exec {text}: no such file or directory",
                               {"exit_code": 127, "command": text})
    if kind == b"x":
        return CommandNotExecutable(f"exec {text}: {os.strerror(err)}",
                                    {"exit_code": 126, "command": text})
    if text == "seccomp":
        return SetupFailed(f"install the seccomp filter: {os.strerror(err)}",
                           {"step": "seccomp", "errno": err})
    return SetupFailed(f"{text}: {os.strerror(err)}", {"step": text, "errno": err})
