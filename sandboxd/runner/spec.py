"""What a container is, as frozen data: the runner's one input.

A ``ContainerSpec`` is built by the daemon (or a test), checked once by :func:`validate`
(every problem, each naming its field, in one ``InvalidArgument``), sent to the fork
server as a plain dict (:func:`to_dict` / :func:`from_dict`, no pickle), and turned into
setup steps by :mod:`sandboxd.runner.plan`.

Units are the kernel's: bytes for memory, microseconds for CPU quota and period.
``-1`` means unlimited wherever a limit can be unlimited.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar, Union

from ..errors import InvalidArgument

UNLIMITED = -1
MIN_MEMORY = 6 * 1024 * 1024          # Docker's floor: below this a container cannot start
DEFAULT_CPU_PERIOD = 100_000          # µs, the kernel's and Docker's default
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# containerd 2's default set; Docker keeps MKNOD NET_RAW SETFCAP SYS_CHROOT AUDIT_WRITE too.
DEFAULT_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "SETGID", "SETUID", "SETPCAP",
    "NET_BIND_SERVICE", "KILL",
)

# Docker's masked and read-only paths (moby oci/defaults.go).
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
    "/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# Docker's ulimit names -> the RLIMIT_* constant's suffix.
ULIMIT_NAMES = (
    "as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
    "nproc", "rss", "rtprio", "rttime", "sigpending", "stack",
)

NAMESPACES = ("pid", "net", "ipc", "uts")


@dataclass(frozen=True)
class Ulimit:
    """One rlimit by Docker's name; ``-1`` is unlimited."""
    name: str
    soft: int
    hard: int


@dataclass(frozen=True)
class Limits:
    """cgroup limits; ``None`` leaves the kernel's default (unlimited)."""
    memory: int | None = None           # bytes
    memory_swap: int | None = None      # memory + swap in bytes; None: no swap; -1: unlimited
    cpu_quota: int = UNLIMITED          # µs per period
    cpu_period: int = DEFAULT_CPU_PERIOD
    cpu_shares: int | None = None       # relative weight, 2..262144 (v2: mapped to cpu.weight)
    pids: int | None = None             # max tasks; None or -1: unlimited
    memory_reservation: int | None = None   # bytes: soft limit (v1 soft_limit, v2 low)
    oom_kill_disable: bool = False      # v1 memory.oom_control; no such knob on v2
    cpuset_cpus: str = ""               # "0-1,3": the CPUs it may run on ("": all)


@dataclass(frozen=True)
class Mount:
    """A bind, tmpfs or image mount inside the container.

    ``bind``: ``source`` is a host path (file or directory).
    ``tmpfs``: ``options`` such as ``("size=64m", "mode=1777")``.
    ``image``: ``source`` is an ext4 image file (a capped volume, made like a capped
    layer by :mod:`sandboxd.runner.layers`): the fork server mounts it detached and pid 1
    attaches it at ``destination`` in the container's own namespace.
    """
    destination: str
    type: str = "bind"
    source: str = ""
    readonly: bool = False
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class File:
    """A file written into the container's writable layer once its root is assembled,
    before anything is mounted (``path`` resolved inside the root). Cheaper than a bind
    mount of a host file, for what the container may as well own (the daemon's /etc
    files of a --rm container, which the daemon rewrites through /proc/<pid>/root)."""
    path: str
    content: str


@dataclass(frozen=True)
class RootFS:
    """The container's ``/``: an overlay of ``lowerdirs`` (top first).

    With ``upperdir``/``workdir`` the writable layer is kept there (the daemon's snapshot);
    with ``layer`` it is kept inside that filesystem image (a capped layer, see
    :mod:`sandboxd.runner.layers`: the runner loop-mounts it in the container's own mount
    namespace, upper and work directories inside it); with neither a fresh upper is made
    on a tmpfs that vanishes with the container. ``readonly`` mounts no upper at all.
    """
    lowerdirs: tuple[str, ...]
    upperdir: str | None = None
    workdir: str | None = None
    readonly: bool = False
    tmpfs_size: str = "1g"              # size= of the tmpfs upper when one is made
    layer: str | None = None            # an ext4 image file holding the writable layer


@dataclass(frozen=True)
class Namespaces:
    """Each: ``"private"`` (a new one), ``"host"`` or an absolute path to join
    (``/proc/<pid>/ns/net`` of another container, a bind-mounted netns)."""
    pid: str = "private"
    net: str = "private"
    ipc: str = "private"
    uts: str = "private"


@dataclass(frozen=True)
class Process:
    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    user: str = ""                      # "uid[:gid]" or "name[:group]"; "" is root
    terminal: bool = False
    ulimits: tuple[Ulimit, ...] = ()
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    no_new_privileges: bool = True
    groups: tuple[str, ...] = ()        # --group-add: more gids or group names
    # (rows, cols) of the terminal's pty before the exec, as Docker's ConsoleSize (a
    # program that reads its size at start, `stty size`, sees it); (): 0x0 until resized.
    console_size: tuple[int, ...] = ()


@dataclass(frozen=True)
class ContainerSpec:
    id: str
    process: Process
    root: RootFS
    hostname: str = ""
    mounts: tuple[Mount, ...] = ()
    files: tuple[File, ...] = ()
    namespaces: Namespaces = field(default_factory=Namespaces)
    limits: Limits = field(default_factory=Limits)
    init: bool = False                  # a reaper as pid 1 that runs the workload
    # No workload: pid 1 keeps the root and its mounts alive, reachable through
    # /proc/<pid>/root, until its stdin reaches EOF (sbx cp on a stopped container).
    hold: bool = False
    # "module:function" of the runner's template (see runner/template.py): pid 1 is a
    # clone of that pre-imported interpreter and calls it instead of exec'ing args.
    entry: str = ""
    # A zygote (runner/zygote.py): the workload runs in a user namespace of its own and
    # forks each test into a fresh container below this one.
    zygote: bool = False
    masked_paths: tuple[str, ...] = MASKED_PATHS
    readonly_paths: tuple[str, ...] = READONLY_PATHS
    # "default" (our Docker-equivalent profile, runner/seccomp_default.json),
    # "unconfined" (no filter) or a profile's JSON text in Docker's format.
    seccomp: str = "default"
    # --sysctl "key=value" of the container's own namespaces (net.*, kernel.shm* ...),
    # written once its namespaces exist, before anything of it runs.
    sysctls: tuple[str, ...] = ()


# ---------------------------------------------------------------- parsing user input

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(text: str | int, what: str = "size") -> int:
    """Docker's RAMInBytes: ``64m``, ``1g``, ``512k``, ``100b``, ``1.5GiB``; binary units."""
    if isinstance(text, bool):
        raise InvalidArgument(f"{what}: expected a size such as 64m, got {text!r}")
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m or (m.group(3) and m.group(3).lower() == "i"):
        raise InvalidArgument(f"{what}: invalid size {text!r} (use e.g. 64m, 1g, 512k, 100b)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def cpus_to_quota(cpus: float, period: int = DEFAULT_CPU_PERIOD) -> int:
    """``--cpus 0.5`` -> quota in µs for ``period`` (Docker: NanoCPUs * period / 1e9)."""
    if not isinstance(cpus, (int, float)) or isinstance(cpus, bool) or cpus <= 0:
        raise InvalidArgument(f"cpus: must be a positive number, got {cpus!r}")
    return max(1000, round(cpus * period))


def parse_ulimit(text: str) -> Ulimit:
    """``nofile=128:256`` or ``nofile=128`` (soft = hard); ``-1``/``unlimited`` allowed."""
    name, sep, values = str(text).partition("=")
    if not sep or not name:
        raise InvalidArgument(f"ulimit: expected name=soft[:hard], got {text!r}")
    soft_text, _, hard_text = values.partition(":")
    try:
        soft = _rlimit_value(soft_text)
        hard = _rlimit_value(hard_text) if hard_text else soft
    except ValueError:
        raise InvalidArgument(f"ulimit {name}: values must be integers, got {values!r}") from None
    return Ulimit(name.strip().lower(), soft, hard)


def _rlimit_value(text: str) -> int:
    text = text.strip()
    return UNLIMITED if text in ("unlimited", "-1") else int(text)


def merge_ulimits(defaults: tuple[Ulimit, ...] | list[Ulimit],
                  overrides: tuple[Ulimit, ...] | list[Ulimit]) -> tuple[Ulimit, ...]:
    """Per-container ulimits replace the daemon's defaults of the same name."""
    merged = {u.name: u for u in defaults}
    merged.update({u.name: u for u in overrides})
    return tuple(merged.values())


# ---------------------------------------------------------------- validation

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_ENV_KEY = re.compile(r"^[^=\x00]+$")
# Every capability, in kernel number order (CAP_CHOWN is 0).
CAPABILITY_NAMES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
    "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
    "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
    "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
    "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)
KNOWN_CAPS = frozenset(CAPABILITY_NAMES)


def _is_abs(path: str) -> bool:
    return isinstance(path, str) and path.startswith("/") and "\x00" not in path


def _under(path: str, top: str) -> bool:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    return bool(parts) and parts[0] == top.strip("/")


def _has_dotdot(path: str) -> bool:
    return ".." in path.split("/")


def check_env(env: tuple[str, ...] | list[str], where: str = "env") -> list[str]:
    problems = []
    for i, entry in enumerate(env):
        key, sep, _ = entry.partition("=") if isinstance(entry, str) else ("", "", "")
        if not isinstance(entry, str) or not sep or not _ENV_KEY.match(key) or "\x00" in entry:
            problems.append(f"{where}[{i}]: {entry!r} is not KEY=value with a non-empty KEY")
    return problems


def check_ulimits(ulimits: tuple[Ulimit, ...], where: str = "ulimits") -> list[str]:
    problems, seen = [], set()
    for u in ulimits:
        if u.name not in ULIMIT_NAMES:
            problems.append(f"{where}: unknown ulimit {u.name!r} "
                            f"(known: {', '.join(ULIMIT_NAMES)})")
        if u.name in seen:
            problems.append(f"{where}: {u.name} given twice")
        seen.add(u.name)
        for label, value in (("soft", u.soft), ("hard", u.hard)):
            if value < UNLIMITED:
                problems.append(f"{where}: {u.name} {label} limit {value} is negative")
        if u.hard != UNLIMITED and (u.soft == UNLIMITED or u.soft > u.hard):
            problems.append(f"{where}: {u.name} soft limit {u.soft} is above the hard limit "
                            f"{u.hard}")
    return problems


def check_limits(lim: Limits, where: str = "limits") -> list[str]:
    problems = []
    if lim.memory is not None and lim.memory != UNLIMITED and lim.memory < MIN_MEMORY:
        problems.append(f"{where}.memory: minimum is 6MiB ({MIN_MEMORY} bytes), "
                        f"got {lim.memory}")
    if lim.memory_swap is not None and lim.memory_swap != UNLIMITED:
        if lim.memory is None or lim.memory == UNLIMITED:
            problems.append(f"{where}.memory_swap: needs a memory limit too")
        elif lim.memory_swap < lim.memory:
            problems.append(f"{where}.memory_swap: {lim.memory_swap} is below memory "
                            f"{lim.memory} (memory-swap is memory plus swap)")
    if lim.cpu_quota != UNLIMITED and lim.cpu_quota < 1000:
        problems.append(f"{where}.cpu_quota: minimum is 1000µs, got {lim.cpu_quota}")
    if not 1000 <= lim.cpu_period <= 1_000_000:
        problems.append(f"{where}.cpu_period: must be within 1000..1000000µs, "
                        f"got {lim.cpu_period}")
    if lim.cpu_shares is not None and not 2 <= lim.cpu_shares <= 262144:
        problems.append(f"{where}.cpu_shares: must be within 2..262144, got {lim.cpu_shares}")
    if lim.pids is not None and lim.pids != UNLIMITED and lim.pids < 1:
        problems.append(f"{where}.pids: must be positive or -1 (unlimited), got {lim.pids}")
    return problems


def valid_console_size(size: tuple[int, ...] | list[int]) -> bool:
    """Whether ``size`` is a pty's (rows, cols), each from 1 to 65535 (TIOCSWINSZ's)."""
    return len(size) == 2 and all(type(n) is int and 1 <= n <= 0xFFFF for n in size)


def check_process(p: Process) -> list[str]:
    problems = []
    if not p.args:
        problems.append("process.args: no command given")
    for i, arg in enumerate(p.args):
        if "\x00" in arg:
            problems.append(f"process.args[{i}]: contains a NUL byte")
    if p.args and not p.args[0]:
        problems.append("process.args[0]: the command is empty")
    problems += check_env(p.env, "process.env")
    if not _is_abs(p.cwd):
        problems.append(f"process.cwd: {p.cwd!r} is not an absolute path")
    elif _under(p.cwd, "/proc") or _has_dotdot(p.cwd):
        problems.append(f"process.cwd: {p.cwd!r} is not allowed (no /proc paths or '..')")
    if p.user and not re.match(r"^[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?$", p.user):
        problems.append(f"process.user: {p.user!r} is not uid[:gid] or name[:group]")
    problems += check_ulimits(p.ulimits, "process.ulimits")
    for cap in p.capabilities:
        if cap not in KNOWN_CAPS:
            problems.append(f"process.capabilities: unknown capability {cap!r}")
    if p.console_size and not (p.terminal and valid_console_size(p.console_size)):
        problems.append(f"process.console_size: {list(p.console_size)} is not [rows, cols] "
                        f"of a terminal, each from 1 to 65535")
    return problems


def check_mounts(mounts: tuple[Mount, ...]) -> list[str]:
    problems = []
    for i, m in enumerate(mounts):
        where = f"mounts[{i}]"
        if m.type not in ("bind", "tmpfs", "image"):
            problems.append(f"{where}.type: {m.type!r} is not bind, tmpfs or image")
        if not _is_abs(m.destination) or _has_dotdot(m.destination):
            problems.append(f"{where}.destination: {m.destination!r} must be an absolute "
                            f"path without '..'")
        elif m.destination.rstrip("/") == "":
            problems.append(f"{where}.destination: cannot mount over /")
        elif _under(m.destination, "/proc") or _under(m.destination, "/sys"):
            problems.append(f"{where}.destination: {m.destination} is inside /proc or /sys")
        if m.type in ("bind", "image") and not _is_abs(m.source):
            problems.append(f"{where}.source: {m.source!r} must be an absolute host path")
        if m.type == "tmpfs" and m.source:
            problems.append(f"{where}.source: a tmpfs mount takes no source")
    return problems


def _check_root(r: RootFS) -> list[str]:
    problems = []
    if not r.lowerdirs:
        problems.append("root.lowerdirs: at least one directory is needed")
    for i, d in enumerate(r.lowerdirs):
        if not _is_abs(d) or "," in d or ":" in d:
            problems.append(f"root.lowerdirs[{i}]: {d!r} must be an absolute path without "
                            f"',' or ':'")
    if (r.upperdir is None) != (r.workdir is None):
        problems.append("root: upperdir and workdir go together")
    for name in ("upperdir", "workdir"):
        value = getattr(r, name)
        if value is not None and (not _is_abs(value) or "," in value or ":" in value):
            problems.append(f"root.{name}: {value!r} must be an absolute path without ',' "
                            f"or ':'")
    if r.readonly and r.upperdir is not None:
        problems.append("root: a read-only root takes no upperdir")
    if r.layer is not None:
        if not _is_abs(r.layer):
            problems.append(f"root.layer: {r.layer!r} must be an absolute path")
        if r.readonly or r.upperdir is not None:
            problems.append("root.layer: a layer image is the writable layer: no upperdir, "
                            "not read-only")
    return problems


def validate(spec: ContainerSpec) -> ContainerSpec:
    """Check every field; raise one ``InvalidArgument`` listing all problems."""
    problems = []
    if not isinstance(spec.id, str) or not _ID.match(spec.id):
        problems.append(f"id: {spec.id!r} must be 1-128 of [A-Za-z0-9_.-], not starting "
                        f"with '.', '_' or '-'")
    if spec.hostname and (len(spec.hostname) > 64 or not HOSTNAME.match(spec.hostname)):
        problems.append(f"hostname: {spec.hostname!r} is not a valid host name "
                        f"(letters, digits, '-', '.', at most 64)")
    problems += check_process(spec.process)
    if spec.hold and (spec.init or spec.process.terminal):
        problems.append("hold: a held root runs no workload (no init, no terminal)")
    if spec.entry and (spec.hold or spec.process.terminal or spec.namespaces.pid != "private"
                       or not re.match(r"^[\w.]+:\w+$", spec.entry)):
        problems.append(f"entry: {spec.entry!r} must be module:function, with a private "
                        f"pid namespace, no terminal and no hold")
    if spec.zygote and (spec.hold or spec.entry or spec.process.terminal
                        or spec.namespaces.pid != "private"
                        or spec.process.user not in ("", "0", "root", "0:0")):
        problems.append("zygote: needs a private pid namespace, the root user and no "
                        "terminal, hold or entry")
    problems += _check_root(spec.root)
    problems += check_mounts(spec.mounts)
    for i, f in enumerate(spec.files):
        if not _is_abs(f.path) or _has_dotdot(f.path) or f.path.endswith("/"):
            problems.append(f"files[{i}].path: {f.path!r} must be an absolute file path "
                            f"without '..'")
        elif _under(f.path, "/proc") or _under(f.path, "/sys") or _under(f.path, "/dev"):
            problems.append(f"files[{i}].path: {f.path} is inside /proc, /sys or /dev")
    problems += check_limits(spec.limits)
    for ns in NAMESPACES:
        mode = getattr(spec.namespaces, ns)
        if mode not in ("private", "host") and not _is_abs(mode):
            problems.append(f"namespaces.{ns}: {mode!r} is not private, host or a path")
    for name in ("masked_paths", "readonly_paths"):
        for path in getattr(spec, name):
            if not _is_abs(path) or _has_dotdot(path):
                problems.append(f"{name}: {path!r} must be an absolute path without '..'")
    problems += check_seccomp(spec.seccomp)
    if problems:
        raise InvalidArgument.of(problems)
    return spec


def check_seccomp(value: str, where: str = "seccomp") -> list[str]:
    if value in ("default", "unconfined"):
        return []
    from . import seccomp
    return list(seccomp.check_text(value, where))


# ---------------------------------------------------------------- wire form
#
# Every spec, record and request passes through these (several times per container
# start), so each type is inspected once: its field names and a converter are cached.

_PLAIN = frozenset({str, int, float, bool, bytes, type(None)})


def to_dict(obj: Any) -> Any:
    """A spec as plain msgpack-able data (tuples become lists). Plain values are passed
    as they are without a call each: a spec's env and capabilities are most of it. A
    part that :func:`keep_wire` marked gives its kept form (shared: not to be changed)."""
    names = _field_names(type(obj))
    if names is not None:
        kept = obj.__dict__.get(WIRE)
        if kept is not None:
            return kept
        return {name: value if type(value := getattr(obj, name)) in _PLAIN
                else to_dict(value) for name in names}
    if isinstance(obj, (list, tuple)):
        return [x if type(x) in _PLAIN else to_dict(x) for x in obj]
    return obj


WIRE = "_wire"      # where a kept wire form lives (a config keeps its own there too: model.py)
_D = TypeVar("_D")


def keep_wire(obj: _D) -> _D:
    """Keep ``obj``'s :func:`to_dict` on it (not a field: no eq, repr or replace), for a
    spec part that every start of one config shares (its process, its limits: made once
    per config, see ``ContainerConfig.derived``): ~40 % of a spawn message's making."""
    object.__setattr__(obj, WIRE, to_dict(obj))
    return obj


@functools.cache
def _field_names(cls: type) -> tuple[str, ...] | None:
    """A dataclass's field names; None for any other type."""
    if not dataclasses.is_dataclass(cls):
        return None
    return tuple(f.name for f in dataclasses.fields(cls))


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Rebuild a dataclass from :func:`to_dict` output, refusing unknown, missing and
    wrongly typed fields with ``InvalidArgument`` naming each."""
    problems: list[str] = []
    value = _converter(cls)(data, where or cls.__name__, problems)
    if problems:
        raise InvalidArgument.of(problems)
    return value


_Converter = Callable[[Any, str, list], Any]      # (data, where, problems) -> value


@functools.cache
def _converter(tp: Any) -> _Converter:
    """Check and convert wire data into ``tp``, appending each problem to ``problems``
    (``where`` names the place in them)."""
    if dataclasses.is_dataclass(tp):
        return _dataclass_converter(tp)
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        optional = type(None) in args
        inner = _converter(next(a for a in args if a is not type(None)))

        def convert_union(data: Any, where: str, problems: list) -> Any:
            if data is None and optional:
                return None
            return inner(data, where, problems)
        return convert_union
    if origin is tuple:
        item = _converter(typing.get_args(tp)[0])

        def convert_tuple(data: Any, where: str, problems: list) -> Any:
            if not isinstance(data, (list, tuple)):
                problems.append(f"{where}: expected a list, got {type(data).__name__}")
                return ()
            return tuple(item(x, f"{where}[{i}]", problems) for i, x in enumerate(data))
        return convert_tuple
    return functools.partial(_check_scalar, tp)


def _dataclass_converter(tp: type) -> _Converter:
    hints = typing.get_type_hints(tp)
    required = {f.name: f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING for f in dataclasses.fields(tp)}
    # The fields' converters, made at first use: a field's type may refer back here.
    made: dict[str, tuple[tuple[str, _Converter, bool], ...]] = {}

    def convert_dataclass(data: Any, where: str, problems: list) -> Any:
        fields = made.get("fields")
        if fields is None:
            fields = made["fields"] = tuple((name, _converter(hints[name]), req)
                                            for name, req in required.items())
        if not isinstance(data, dict):
            problems.append(f"{where}: expected a mapping, got {type(data).__name__}")
            return None
        for key in data:
            if key not in required:
                problems.append(f"{where}.{key}: unknown field")
        kwargs = {}
        for name, convert, req in fields:
            if name in data:
                kwargs[name] = convert(data[name], f"{where}.{name}", problems)
            elif req:
                problems.append(f"{where}.{name}: missing")
        if problems:
            return None
        return tp(**kwargs)
    return convert_dataclass


def _check_scalar(tp: Any, data: Any, where: str, problems: list) -> Any:
    if tp is int and (not isinstance(data, int) or isinstance(data, bool)):
        problems.append(f"{where}: expected an integer, got {type(data).__name__}")
    elif tp is int and not -(1 << 63) <= data < (1 << 63):
        problems.append(f"{where}: integer out of range")
    elif tp is bool and not isinstance(data, bool):
        problems.append(f"{where}: expected true or false, got {type(data).__name__}")
    elif tp is str and not isinstance(data, str):
        problems.append(f"{where}: expected a string, got {type(data).__name__}")
    elif tp is float and (not isinstance(data, (int, float)) or isinstance(data, bool)):
        problems.append(f"{where}: expected a number, got {type(data).__name__}")
    return data
