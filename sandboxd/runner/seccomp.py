"""Seccomp profiles in Docker's JSON format, compiled to BPF once, installed last.

A profile (``seccomp_default.json`` beside this file is ours, equivalent to Docker's
default) is checked by :func:`check_profile`, narrowed to this machine and one
container's capabilities by :func:`resolve` (Docker's rules: ``archMap`` gives the
native architecture and its sub-architectures; a rule's ``includes``/``excludes`` name
``caps``, ``arches`` and a ``minKernel``), turned into classic BPF by libseccomp
(:func:`compile_filter`, through pyseccomp: ctypes over Debian's libseccomp.so.2, which
knows every architecture's syscall numbers, x32 and 32-bit argument checks included),
and cached by the fork server per (profile, capabilities) in a :class:`FilterCache`. A
container's process only makes one ``seccomp(2)`` call with the cached program
(:func:`install`), after the capabilities are cut and before exec (a parked pid 1: at
park when the program :func:`allows` its remaining ``PARK_CALLS``).

Syscall names libseccomp does not know are skipped, as runc does (they get the default
action). The check, resolve and wire parts are pure; only compiling needs libseccomp.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import platform
from dataclasses import dataclass
from typing import Any

from .. import untrusted_json

DEFAULT = "default"                   # the profile a container gets unless told otherwise
UNCONFINED = "unconfined"             # no filter at all

ACTIONS = ("SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
           "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG")
OPERATORS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
             "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
# libseccomp's architecture tokens (AUDIT_ARCH_*), by the OCI name.
ARCHES = {
    "SCMP_ARCH_X86": 0x40000003, "SCMP_ARCH_X86_64": 0xC000003E, "SCMP_ARCH_X32": 0x4000003E,
    "SCMP_ARCH_ARM": 0x40000028, "SCMP_ARCH_AARCH64": 0xC00000B7,
    "SCMP_ARCH_MIPS": 0x8, "SCMP_ARCH_MIPS64": 0x80000008,
    "SCMP_ARCH_MIPS64N32": 0xA0000008, "SCMP_ARCH_MIPSEL": 0x40000008,
    "SCMP_ARCH_MIPSEL64": 0xC0000008, "SCMP_ARCH_MIPSEL64N32": 0xE0000008,
    "SCMP_ARCH_PPC": 0x14, "SCMP_ARCH_PPC64": 0x80000015, "SCMP_ARCH_PPC64LE": 0xC0000015,
    "SCMP_ARCH_S390": 0x16, "SCMP_ARCH_S390X": 0x80000016,
    "SCMP_ARCH_RISCV64": 0xC00000F3,
}
# Go's / libseccomp's short names (what ``arches`` in includes and excludes say), by
# ``uname -m``; and the OCI name of each.
_NATIVE = {"x86_64": "amd64", "aarch64": "arm64", "i686": "x86", "i386": "x86",
           "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
           "mips64": "mips64"}
_OCI_NAME = {"amd64": "SCMP_ARCH_X86_64", "arm64": "SCMP_ARCH_AARCH64", "x86": "SCMP_ARCH_X86",
             "arm": "SCMP_ARCH_ARM", "ppc64le": "SCMP_ARCH_PPC64LE", "s390x": "SCMP_ARCH_S390X",
             "riscv64": "SCMP_ARCH_RISCV64", "mips64": "SCMP_ARCH_MIPS64"}
FLAGS = {"SECCOMP_FILTER_FLAG_TSYNC": 1, "SECCOMP_FILTER_FLAG_LOG": 2,
         "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4}
EPERM, ENOSYS, MAX_ERRNO = 1, 38, 4095
_PROFILE_KEYS = {"defaultAction", "defaultErrnoRet", "architectures", "archMap", "syscalls",
                 "flags", "listenerPath", "listenerMetadata"}
_RULE_KEYS = {"names", "name", "action", "errnoRet", "args", "comment", "includes",
              "excludes"}
_FILTER_KEYS = {"caps", "arches", "minKernel"}
_ARG_KEYS = {"index", "value", "valueTwo", "op"}
# What a parked pid 1 calls from the load of its filter on (forkserver._park: the
# report, the exec of sbx-park, a static binary's start, then park.c's take up to the
# workload's exec): a filter that allows them all is loaded at park, off the take's path.
PARK_CALLS = ("write", "execveat", "execve", "brk", "arch_prctl", "set_tid_address",
              "set_robust_list", "rseq", "prlimit64", "mprotect", "mmap", "munmap",
              "readlink", "readlinkat", "getrandom", "prctl", "fcntl", "recvmsg", "close",
              "setsid", "dup2", "dup3", "open", "openat", "ioctl", "sendmsg", "stat",
              "newfstatat", "close_range", "exit", "exit_group", "restart_syscall")


def native_arch() -> str:
    return _NATIVE.get(platform.machine(), platform.machine())


def kernel_version() -> tuple[int, int]:
    parts = os.uname().release.split(".")
    return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)


@functools.cache
def kernel_runs_x32() -> bool:
    """Whether this kernel runs x32 calls (most run them only with syscall.x32=y). Without
    it the x32 part of a filter is dead weight: it would cost ~40% more instructions,
    which the kernel copies, checks and JIT-compiles at every container start."""
    if platform.machine() != "x86_64":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(0x40000000 | 39))      # x32 getpid
    return not (result == -1 and ctypes.get_errno() == ENOSYS)


@functools.cache
def default_profile_text() -> str:
    with open(os.path.join(os.path.dirname(__file__), "seccomp_default.json")) as f:
        return f.read()


def profile_name(value: str) -> str:
    """How inspect names a container's profile: builtin, unconfined or custom (digest)."""
    if value == DEFAULT:
        return "builtin"
    if value == UNCONFINED:
        return UNCONFINED
    return "custom sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]


# ---------------------------------------------------------------- checking a profile

@functools.lru_cache(maxsize=32)
def check_text(text: str, where: str = "seccomp") -> tuple[str, ...]:
    """Problems with a profile's JSON text (cached: specs are validated several times)."""
    try:
        profile = untrusted_json.loads(text)
    except ValueError as e:
        return (f"{where}: the profile is not valid JSON ({e})",)
    return tuple(check_profile(profile, where))


def check_profile(profile: Any, where: str = "seccomp") -> list[str]:
    """Every problem in a profile in Docker's format, each naming its place."""
    if not isinstance(profile, dict):
        return [f"{where}: a profile is a JSON object, got {type(profile).__name__}"]
    problems = [f"{where}.{key}: unknown field" for key in profile if key not in _PROFILE_KEYS]
    problems += _check_action(profile.get("defaultAction"), f"{where}.defaultAction",
                              required=True)
    problems += _check_errno(profile, "defaultErrnoRet", where)
    if profile.get("listenerPath"):
        problems.append(f"{where}.listenerPath: seccomp notify listeners are not supported")
    if profile.get("architectures") and profile.get("archMap"):
        problems.append(f"{where}: give either architectures or archMap, not both")
    archs = profile.get("architectures") or []
    if not isinstance(archs, list) or any(a not in ARCHES for a in archs):
        problems.append(f"{where}.architectures: {archs!r} must list names of "
                        f"{', '.join(ARCHES)}")
    arch_map = profile.get("archMap") or []
    if not isinstance(arch_map, list):
        problems.append(f"{where}.archMap: expected a list")
        arch_map = []
    for i, entry in enumerate(arch_map):
        names = [entry.get("architecture"), *(entry.get("subArchitectures") or [])] \
            if isinstance(entry, dict) else [None]
        if any(n not in ARCHES for n in names):
            problems.append(f"{where}.archMap[{i}]: {entry!r} must name architectures "
                            f"among {', '.join(ARCHES)}")
    flags = profile.get("flags") or []
    if not isinstance(flags, list) or any(f not in FLAGS for f in flags):
        problems.append(f"{where}.flags: {flags!r} must list flags among {', '.join(FLAGS)}")
    rules = profile.get("syscalls")
    if rules is None:
        rules = []
    if not isinstance(rules, list):
        return problems + [f"{where}.syscalls: expected a list of rules"]
    for i, rule in enumerate(rules):
        problems += _check_rule(rule, f"{where}.syscalls[{i}]")
    return problems


def _check_action(action: Any, where: str, required: bool = False) -> list[str]:
    if action is None and not required:
        return []
    if action not in ACTIONS:
        extra = " (SCMP_ACT_NOTIFY needs a listener: not supported)" \
            if action == "SCMP_ACT_NOTIFY" else ""
        return [f"{where}: {action!r} is not one of {', '.join(ACTIONS)}{extra}"]
    return []


def _check_errno(obj: dict, key: str, where: str) -> list[str]:
    value = obj.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                              or not 0 <= value <= MAX_ERRNO):
        return [f"{where}.{key}: {value!r} is not an errno number (0..{MAX_ERRNO})"]
    return []


def _check_rule(rule: Any, where: str) -> list[str]:
    if not isinstance(rule, dict):
        return [f"{where}: a rule is a JSON object, got {type(rule).__name__}"]
    problems = [f"{where}.{key}: unknown field" for key in rule if key not in _RULE_KEYS]
    names, name = rule.get("names"), rule.get("name")
    if name and names:
        problems.append(f"{where}: give either name or names, not both")
    listed = [name] if name else names
    if not isinstance(listed, list) or not listed or \
            any(not isinstance(n, str) or not n for n in listed):
        problems.append(f"{where}.names: a non-empty list of syscall names is needed")
    problems += _check_action(rule.get("action"), f"{where}.action", required=True)
    problems += _check_errno(rule, "errnoRet", where)
    args = rule.get("args") or []
    if not isinstance(args, list):
        problems.append(f"{where}.args: expected a list")
        args = []
    for j, arg in enumerate(args):
        at = f"{where}.args[{j}]"
        if not isinstance(arg, dict):
            problems.append(f"{at}: expected an object with index, value, valueTwo, op")
            continue
        problems += [f"{at}.{key}: unknown field" for key in arg if key not in _ARG_KEYS]
        if not isinstance(arg.get("index"), int) or not 0 <= arg["index"] <= 5:
            problems.append(f"{at}.index: {arg.get('index')!r} must be 0..5")
        for key in ("value", "valueTwo"):
            value = arg.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or \
                    not 0 <= value < 1 << 64:
                problems.append(f"{at}.{key}: {value!r} must be an unsigned 64-bit integer")
        if arg.get("op") not in OPERATORS:
            problems.append(f"{at}.op: {arg.get('op')!r} is not one of "
                            f"{', '.join(OPERATORS)}")
    for key in ("includes", "excludes"):
        cond = rule.get(key)
        if cond is None:
            continue
        if not isinstance(cond, dict):
            problems.append(f"{where}.{key}: expected an object")
            continue
        problems += [f"{where}.{key}.{k}: unknown field" for k in cond if k not in _FILTER_KEYS]
        for k in ("caps", "arches"):
            if not isinstance(cond.get(k) or [], list):
                problems.append(f"{where}.{key}.{k}: expected a list of names")
        kernel = cond.get("minKernel")
        if kernel is not None and _parse_kernel(kernel) is None:
            problems.append(f"{where}.{key}.minKernel: {kernel!r} is not "
                            f"\"<kernel>.<major>\" (such as \"4.8\")")
    return problems


def _parse_kernel(text: Any) -> tuple[int, int] | None:
    if not isinstance(text, str):
        return None
    parts = text.split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or parts == ["0", "0"]:
        return None
    return int(parts[0]), int(parts[1])


# ---------------------------------------------------------------- resolving

@dataclass(frozen=True)
class Rule:
    names: tuple[str, ...]
    action: str
    errno: int | None
    args: tuple[tuple[int, str, int, int], ...]     # (index, op, value, valueTwo)


@dataclass(frozen=True)
class Resolved:
    """A profile narrowed to one machine and one capability set: what gets compiled."""
    default_action: str
    default_errno: int | None
    architectures: tuple[str, ...]
    rules: tuple[Rule, ...]
    flags: tuple[str, ...]


def resolve(profile: dict, capabilities: tuple[str, ...] | list[str],
            arch: str | None = None, kernel: tuple[int, int] | None = None) -> Resolved:
    """Docker's setupSeccomp: keep the rules whose conditions hold for ``capabilities``
    (names without ``CAP_``), ``arch`` (Go's name: amd64, arm64 ...) and ``kernel``."""
    arch = arch or native_arch()
    kernel = kernel or kernel_version()
    caps = {"CAP_" + c for c in capabilities}
    architectures = list(profile.get("architectures") or [])
    for entry in profile.get("archMap") or []:
        if entry["architecture"] == _OCI_NAME.get(arch):
            architectures += [entry["architecture"], *(entry.get("subArchitectures") or [])]
            break
    rules = []
    for rule in profile.get("syscalls") or []:
        exc, inc = rule.get("excludes") or {}, rule.get("includes") or {}
        if arch in (exc.get("arches") or ()) or caps & set(exc.get("caps") or ()):
            continue
        if exc.get("minKernel") and kernel >= _parse_kernel(exc["minKernel"]):
            continue
        if inc.get("arches") and arch not in inc["arches"]:
            continue
        if not set(inc.get("caps") or ()) <= caps:
            continue
        if inc.get("minKernel") and kernel < _parse_kernel(inc["minKernel"]):
            continue
        names = [rule["name"]] if rule.get("name") else rule["names"]
        rules.append(Rule(tuple(names), rule["action"], rule.get("errnoRet"),
                          tuple((a["index"], a["op"], a.get("value", 0), a.get("valueTwo", 0))
                                for a in rule.get("args") or ())))
    return Resolved(profile["defaultAction"], profile.get("defaultErrnoRet"),
                    tuple(dict.fromkeys(architectures)), tuple(rules),
                    tuple(profile.get("flags") or ()))


def allows(resolved: Resolved, names: tuple[str, ...]) -> bool:
    """Whether ``resolved`` lets every call in ``names`` through whatever its arguments:
    each is allowed by the default action or by a rule without conditions, and no
    rule for it says anything else."""
    actions: dict[str, set[tuple[str, bool]]] = {}
    for rule in resolved.rules:
        for name in rule.names:
            actions.setdefault(name, set()).add((rule.action, bool(rule.args)))
    allow = {("SCMP_ACT_ALLOW", False)}
    return all(actions.get(name, {(resolved.default_action, False)}) == allow
               for name in names)


# ---------------------------------------------------------------- compiling

def _action_value(action: str, errno: int | None) -> int:
    import pyseccomp as sc
    if action == "SCMP_ACT_ERRNO":
        return sc.ERRNO(EPERM if errno is None else errno)
    if action == "SCMP_ACT_TRACE":
        return sc.TRACE(EPERM if errno is None else errno)
    return {"SCMP_ACT_KILL": sc.KILL_THREAD, "SCMP_ACT_KILL_THREAD": sc.KILL_THREAD,
            "SCMP_ACT_KILL_PROCESS": sc.KILL_PROCESS, "SCMP_ACT_TRAP": sc.TRAP,
            "SCMP_ACT_ALLOW": sc.ALLOW, "SCMP_ACT_LOG": sc.LOG}[action]


def compile_filter(resolved: Resolved) -> bytes:
    """The BPF program (struct sock_filter[]) for ``resolved``, through libseccomp."""
    import pyseccomp as sc
    default = _action_value(resolved.default_action, resolved.default_errno)
    filt = sc.SyscallFilter(default)
    for name in resolved.architectures:
        token = ARCHES[name]
        if token == sc.system_arch() or name == "SCMP_ARCH_X32" and not kernel_runs_x32():
            continue
        filt.add_arch(token)
    # A call through an ABI the filter does not list (x32 on a kernel without it) gets
    # "no such syscall", as the kernel would say, not libseccomp's default kill.
    filt.set_attr(sc.Attr.ACT_BADARCH, sc.ERRNO(ENOSYS))
    # A binary tree of syscall numbers instead of a linear list: ~9 comparisons a
    # syscall instead of up to ~360 (libseccomp 2.5's optimizer).
    filt.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    for rule in resolved.rules:
        action = _action_value(rule.action, rule.errno)
        if action == default:
            continue                    # libseccomp refuses it; it changes nothing
        conditions = [sc.Arg(i, OPERATORS[op], value, two) for i, op, value, two in rule.args]
        # runc's rule: several conditions on one argument are alternatives (one rule
        # each); on different arguments they must all hold (one rule).
        indexes = [a[0] for a in rule.args]
        groups = [[c] for c in conditions] if len(set(indexes)) < len(indexes) \
            else [conditions]
        for name in rule.names:
            # A name missing here but known on a sub-architecture (chown32 on x86-64)
            # resolves to a negative pseudo-number that libseccomp maps per arch; -1 is
            # a name it does not know at all: skipped, as runc does.
            number = sc.resolve_syscall(sc.Arch.NATIVE, name)
            if number == -1:
                continue
            for group in groups:
                filt.add_rule(action, number, *group)
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    try:
        filt.export_bpf(_Fd(fd))
        size = os.lseek(fd, 0, os.SEEK_CUR)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


def flags_value(flags: tuple[str, ...]) -> int:
    value = 0
    for flag in flags:
        value |= FLAGS[flag]
    return value


# ---------------------------------------------------------------- the fork server's cache

@dataclass(frozen=True)
class Program:
    """A compiled filter, ready for :func:`install` in a forked child."""
    bpf: bytes
    flags: int
    fprog: Any = None                    # a sock_fprog built once; children inherit it
    allows_park: bool = False            # it lets PARK_CALLS through, whatever their args

    def to_wire(self) -> dict:
        return {"bpf": self.bpf, "flags": self.flags}

    @classmethod
    def from_wire(cls, data: dict) -> Program:
        return prepared(bytes(data["bpf"]), int(data["flags"]))


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def prepared(bpf: bytes, flags: int, allows_park: bool = False) -> Program:
    buffer = ctypes.create_string_buffer(bpf, len(bpf))
    fprog = _SockFprog(len(bpf) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    fprog._buffer = buffer               # keep the instructions alive with the struct
    return Program(bpf, flags, fprog, allows_park)


class FilterCache:
    """Compiled programs per (profile, capabilities): each is compiled once per fork
    server (a few ms), every container after that reuses it."""

    def __init__(self) -> None:
        self._programs: dict[tuple[str, frozenset[str]], Program] = {}

    def get(self, profile: str, capabilities: tuple[str, ...]) -> Program | None:
        if profile == UNCONFINED:
            return None
        key = (profile, frozenset(capabilities))
        program = self._programs.get(key)
        if program is None:
            text = default_profile_text() if profile == DEFAULT else profile
            resolved = resolve(json.loads(text), capabilities)
            program = prepared(compile_filter(resolved), flags_value(resolved.flags),
                               allows(resolved, PARK_CALLS))
            if len(self._programs) >= 64:           # custom profiles: keep it bounded
                self._programs.pop(next(iter(self._programs)))
            self._programs[key] = program
        return program


# ---------------------------------------------------------------- in the container

def install(program: Program) -> None:
    """Load ``program`` for this thread and everything it execs or forks (no_new_privs
    must be set, or the caller must still hold CAP_SYS_ADMIN)."""
    from . import syscalls
    syscalls.seccomp_set_filter(program.flags, ctypes.addressof(program.fprog))
