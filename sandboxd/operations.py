"""The operation table: every protocol operation is one :class:`Operation` — its name,
a frozen params dataclass, its result type, and the :class:`sandboxd.handlers.Handlers`
method that does it (a few lines calling the services).

The daemon decodes a frame, builds the params with :func:`build` (every field checked
here, once: wrong types, missing and unknown fields and bad values are one
``InvalidArgument`` listing each problem with the field's name), then awaits the method
with them. Nothing is looked up or created before the params are whole.

A params field is declared with :func:`param`: the wire types it accepts (as
``sandboxd.protocol.Params`` spells them: ``int`` refuses bools, ``float`` takes ints,
``type(None)`` makes it nullable), its default (none: required), the type of a list's
items, and ``convert(value, where, problems)`` for what a type cannot say (a range, a
regular expression, a signal name); checks that involve two fields are the class's
``problems()``. Lists arrive as tuples. Results are typed dicts (what goes on the wire).

Where to add an operation: a params class and a result type here, a line in
:data:`TABLE`, the method in ``handlers.py``, its section in ``docs/operations.md``; the
list in ``docs/protocol.md`` is checked against the table by
``tests/unit/test_operations_unit.py``, and the fuzzer reads the table.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, TypedDict

import msgpack

from .errors import InvalidArgument
from .flags import config_from_options
from .model import ContainerConfig
from .protocol import REQUIRED, Params
from .reference import parse as parse_ref
from .runner.spec import valid_console_size
from .validate import check_name, parse_signal

Convert = Callable[[Any, str, list], Any]      # (value, where, problems) -> value

MAX_TIMEOUT = 365 * 86400    # seconds: beyond this, a wait is a mistake (or an overflow)
MAX_FILTER_VALUE = 1024      # characters of one filter value (a name filter is a regex)
MAX_POOL = 64               # containers one declared pool keeps (pool.set)


def param(kind: type | tuple[type, ...], default: Any = REQUIRED, *,
          items: type | tuple[type, ...] | None = None,
          convert: Convert | None = None) -> Any:
    """A params field: its wire type(s), default (none: required), list item type and
    converter. A mutable default is given as its type (``dict``) and made per request."""
    meta = {"kind": kind, "items": items, "convert": convert}
    if default is REQUIRED:
        return field(metadata=meta)
    if default is dict:
        return field(default_factory=dict, metadata=meta | {"fresh": True})
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class NoParams:
    """Base of every params class; an operation without params uses it as is."""
    # Fields an older client sent, and what to send instead.
    RETIRED: ClassVar[dict[str, str]] = {}
    # Whether a client sends the same request again and again (a loop of runs): the
    # daemon then keeps the built params by the request's bytes and shares them between
    # requests, so such a class's fields must all be immutable.
    REPEATS: ClassVar[bool] = False

    def problems(self) -> list[str]:
        """Checks across fields (after each field passed its own)."""
        return []


_FRESH = object()       # a default made per request ({})


@functools.cache
def _fields(cls: type) -> tuple[tuple[str, Any, Any, Any, Convert | None], ...]:
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        default = _FRESH if meta.get("fresh") else REQUIRED \
            if f.default is dataclasses.MISSING else f.default
        out.append((f.name, meta["kind"], default, meta["items"], meta["convert"]))
    return tuple(out)


def build(cls: type, raw: Any, op: str) -> Any:
    """``cls`` from a request's ``params`` (a map; the protocol layer saw to that), or
    ``InvalidArgument`` listing every problem."""
    p = Params(raw, op)
    values = {}
    for name, kind, default, items, convert in _fields(cls):
        before = len(p.problems)
        value = p.get(name, kind, {} if default is _FRESH else default, items=items)
        if len(p.problems) > before:
            continue
        if convert is not None:
            value = convert(value, op, p.problems)
        values[name] = tuple(value) if type(value) is list else value
    for name, instead in cls.RETIRED.items():
        p.get(name, object, None)                # known, so not "unknown" as well
        if name in raw:
            p.problems.append(f"{op}: field {name!r} is no longer accepted; {instead}")
    p.done()
    params = cls(**values)
    problems = params.problems()
    if problems:
        raise InvalidArgument.of(problems)
    return params


# ---------------------------------------------------------------- field converters

def _timeout(value: int | None, where: str, problems: list) -> int | None:
    """A stop timeout in seconds: -1 waits for ever (Docker's meaning), None is the
    container's own."""
    if value is not None and not -1 <= value <= MAX_TIMEOUT:
        problems.append(f"{where}: timeout must be -1 (wait for ever) or 0 to "
                        f"{MAX_TIMEOUT} seconds, got {value}")
    return value


def _filters(raw: dict | None, where: str, problems: list) -> dict[str, list[str]]:
    """``filters``: a map of key -> list of strings (a lone string is one value), as
    ``sbx``'s ``--filter key=value`` flags and the Python API send them. The keys are
    checked by the filter itself; a ``name`` value must compile as a regular
    expression."""
    out: dict[str, list[str]] = {}
    for key, values in (raw or {}).items():
        values = [values] if isinstance(values, str) else values
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            problems.append(f"{where}: filters.{key:.60}: expected a list of strings, "
                            f"got {type(values).__name__}")
            continue
        if any(len(v) > MAX_FILTER_VALUE for v in values):
            problems.append(f"{where}: filters.{key:.60}: a value is longer than "
                            f"{MAX_FILTER_VALUE} characters")
            continue
        if key == "name":
            for value in values:
                try:
                    re.compile(value)
                except re.error as exc:
                    problems.append(f"{where}: filters.name: {value!r:.80} is not a "
                                    f"regular expression: {exc}")
        out[key] = values
    return out


def _string_map(name: str) -> Convert:
    def convert(value: dict, where: str, problems: list) -> dict[str, str]:
        bad = [k for k, v in value.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            problems.append(f"{name}: keys and values must be strings ({bad[0]!r} is not)")
        return value
    return convert


def _collect(make: Callable[[Any], Any], value: Any, problems: list) -> Any:
    """``make(value)``, or None with the problems of the InvalidArgument it raised."""
    try:
        return make(value)
    except InvalidArgument as e:
        problems.extend(e.details.get("problems") or [e.message])
        return None


def _signal(value: str | int, where: str, problems: list) -> int | None:
    return _collect(parse_signal, value, problems)


CONFIGS_KEPT = 64
_configs: dict[bytes, ContainerConfig] = {}      # wire bytes -> config, oldest first


def _container_config(value: dict, where: str, problems: list) -> ContainerConfig | None:
    """The config of a request. A client repeats one config (a test runner's, a
    pool's), and its decode is ~0.1 ms of a start: the last CONFIGS_KEPT decoded are
    kept by their msgpack bytes (a config is immutable; only a good one is kept)."""
    try:
        wire = msgpack.packb(value)
    except (TypeError, ValueError, OverflowError):
        return _collect(ContainerConfig.from_dict, value, problems)
    config = _configs.get(wire)
    if config is None:
        config = _collect(ContainerConfig.from_dict, value, problems)
        if config is not None:
            if len(_configs) >= CONFIGS_KEPT:
                _configs.pop(next(iter(_configs)), None)
            _configs[wire] = config
    return config


def _options(value: dict, where: str, problems: list) -> ContainerConfig | None:
    return _collect(config_from_options, value, problems)


def _absolute(value: str, where: str, problems: list) -> str:
    if not value.startswith("/"):
        problems.append(f"path: {value!r} must be absolute (start with /)")
    return value


def _nonempty(value: list, where: str, problems: list) -> list:
    if not value:
        problems.append(f"{where}: cmd: no command given")
    return value


def _aliases(value: list, where: str, problems: list) -> list:
    if not all(isinstance(a, str) and a for a in value):
        problems.append(f"{where}: aliases must be non-empty strings")
    return value


def _container_name(value: str, where: str, problems: list) -> str:
    problems.extend(check_name(value.lstrip("/")))
    return value


def _image_refs(value: list, where: str, problems: list) -> list:
    for tag in value:
        _collect(parse_ref, tag, problems)     # a bad name fails before any work
    return value


def _platform(value: str | None, where: str, problems: list) -> str | None:
    if value is not None:
        from .images.oci import parse_platform     # light, but only servers need it
        _collect(parse_platform, value, problems)
    return value


def _tag_target(value: str, where: str, problems: list) -> str:
    if "@" in value:
        problems.append(f"tag {value!r}: refusing to create a tag with a digest reference")
    return value


def _console_size(value: list, where: str, problems: list) -> list:
    if value and not valid_console_size(value):
        problems.append(f"{where}: console_size {value} is not [rows, cols], each from 1 "
                        f"to 65535")
    return value


def _detach_keys(value: str, where: str, problems: list) -> bytes:
    """``ctrl-p,ctrl-q`` -> the bytes the daemon watches the input for."""
    from .detachkeys import parse
    return _collect(parse, value, problems) or b""


def _condition(value: str, where: str, problems: list) -> str:
    if value not in ("not-running", "next-exit", "removed"):
        problems.append(f"{where}: condition {value!r} is not not-running, next-exit or "
                        f"removed")
    return value


def _interval(value: float, where: str, problems: list) -> float:
    if not 0 < value <= MAX_TIMEOUT:
        problems.append(f"{where}: interval must be above 0 and at most {MAX_TIMEOUT} "
                        f"seconds, got {value}")
    return value


OPTIONAL_STR = (str, type(None))
OPTIONAL_INT = (int, type(None))
NUMBER = (int, float)
FILTERS = param((dict, type(None)), None, convert=_filters)
_NEW_SHAPE = ("send 'config', a whole ContainerConfig as data "
              "(sandboxd.flags.build_config(...).to_dict(), or what container.config "
              "makes of these options)")

# ---------------------------------------------------------------- params


@dataclass(frozen=True, kw_only=True)
class ById(NoParams):
    id: str = param(str)


@dataclass(frozen=True, kw_only=True)
class Create(NoParams):
    RETIRED = {"options": _NEW_SHAPE}
    REPEATS = True
    name: str | None = param(OPTIONAL_STR, None)
    config: ContainerConfig = param(dict, convert=_container_config)
    # os[/arch[/variant]] of the image pulled when it is missing (or another one's)
    platform: str | None = param(OPTIONAL_STR, None, convert=_platform)


@dataclass(frozen=True, kw_only=True)
class SetPool(NoParams):
    config: ContainerConfig = param(dict, convert=_container_config)
    count: int = param(int)

    def problems(self) -> list[str]:
        return [] if 0 <= self.count <= MAX_POOL else \
            [f"count: 0 to {MAX_POOL} containers, got {self.count}"]


@dataclass(frozen=True, kw_only=True)
class Options(NoParams):
    options: ContainerConfig = param(dict, convert=_options)   # build_config's keywords


@dataclass(frozen=True, kw_only=True)
class Run(Create):
    stdin: bool = param(bool, False)
    detach: bool = param(bool, False)
    # Docker's --detach-keys: typed on the container's terminal, the client detaches
    detach_keys: bytes = param(str, "ctrl-p,ctrl-q", convert=_detach_keys)
    remove: bool | None = param((bool, type(None)), None)
    # No `created`/`started` events (feature "quiet-run"): a client that only collects
    # the output and the result saves the daemon two frames per run.
    quiet: bool = param(bool, False)


@dataclass(frozen=True, kw_only=True)
class Attach(ById):
    stdin: bool = param(bool, False)
    stdout: bool = param(bool, True)
    stderr: bool = param(bool, True)
    logs: bool = param(bool, False)
    stream: bool = param(bool, True)
    start: bool = param(bool, False)
    detach_keys: bytes = param(str, "ctrl-p,ctrl-q", convert=_detach_keys)


@dataclass(frozen=True, kw_only=True)
class Wait(ById):
    condition: str = param(str, "not-running", convert=_condition)


@dataclass(frozen=True, kw_only=True)
class Kill(ById):
    signal: int = param((str, int), "SIGKILL", convert=_signal)


@dataclass(frozen=True, kw_only=True)
class Stop(ById):
    timeout: int | None = param(OPTIONAL_INT, None, convert=_timeout)


@dataclass(frozen=True, kw_only=True)
class Remove(ById):
    force: bool = param(bool, False)
    volumes: bool = param(bool, False)      # rm -v: its anonymous volumes too


@dataclass(frozen=True, kw_only=True)
class ListContainers(NoParams):
    all: bool = param(bool, False)
    filters: dict = FILTERS
    limit: int = param(int, -1)


@dataclass(frozen=True, kw_only=True)
class Logs(ById):
    follow: bool = param(bool, False)
    tail: int = param(int, -1)
    timestamps: bool = param(bool, False)
    stdout: bool = param(bool, True)
    stderr: bool = param(bool, True)
    since: float = param(NUMBER, 0)
    until: float = param(NUMBER, 0)


@dataclass(frozen=True, kw_only=True)
class Exec(ById):
    cmd: tuple[str, ...] = param(list, items=str, convert=_nonempty)
    env: tuple[str, ...] = param(list, (), items=str)
    workdir: str = param(str, "")
    user: str = param(str, "")
    tty: bool = param(bool, False)
    stdin: bool = param(bool, False)
    detach: bool = param(bool, False)
    # Docker's exec --detach-keys: typed on the exec's terminal, the client detaches and
    # the process goes on (its output discarded)
    detach_keys: bytes = param(str, "ctrl-p,ctrl-q", convert=_detach_keys)
    # [rows, cols] of the exec's pty before its command runs (with tty; [] none)
    console_size: tuple[int, ...] = param(list, (), items=int, convert=_console_size)


@dataclass(frozen=True, kw_only=True)
class Resize(ById):
    rows: int = param(int)
    cols: int = param(int)
    exec_id: str = param(str, "")

    def problems(self) -> list[str]:
        if 0 < self.rows <= 0xFFFF and 0 < self.cols <= 0xFFFF:
            return []
        return [f"container.resize: rows and cols must be from 1 to 65535, got "
                f"{self.rows}x{self.cols}"]


@dataclass(frozen=True, kw_only=True)
class Stats(ById):
    stream: bool = param(bool, True)
    interval: float = param(NUMBER, 1.0, convert=_interval)


@dataclass(frozen=True, kw_only=True)
class Update(ById):
    memory: int | None = param(OPTIONAL_INT, None)
    memory_swap: int | None = param(OPTIONAL_INT, None)
    nano_cpus: int | None = param(OPTIONAL_INT, None)
    cpu_quota: int | None = param(OPTIONAL_INT, None)
    cpu_period: int | None = param(OPTIONAL_INT, None)
    cpu_shares: int | None = param(OPTIONAL_INT, None)
    pids_limit: int | None = param(OPTIONAL_INT, None)
    restart_policy: str | None = param(OPTIONAL_STR, None)
    restart_retries: int | None = param(OPTIONAL_INT, None)

    def changes(self) -> dict[str, int | str]:
        """The ``HostConfig`` fields given (a None is not given)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "id" and getattr(self, f.name) is not None}


@dataclass(frozen=True, kw_only=True)
class Rename(ById):
    name: str = param(str, convert=_container_name)


@dataclass(frozen=True, kw_only=True)
class Filters(NoParams):
    filters: dict = FILTERS


@dataclass(frozen=True, kw_only=True)
class FilePath(ById):
    path: str = param(str)


@dataclass(frozen=True, kw_only=True)
class PutArchive(ById):
    path: str = param(str, convert=_absolute)


@dataclass(frozen=True, kw_only=True)
class Commit(ById):
    name: str | None = param(OPTIONAL_STR, None)
    message: str = param(str, "")
    changes: tuple[str, ...] = param(list, (), items=str)     # --change: CMD, ENV ...


@dataclass(frozen=True, kw_only=True)
class ImportImage(NoParams):
    name: str = param(str)
    path: str | None = param(OPTIONAL_STR, None)
    message: str = param(str, "")
    cmd: list | None = param((list, type(None)), None, items=str)   # the image's CMD
    changes: tuple[str, ...] = param(list, (), items=str)     # --change: CMD, ENV ...


@dataclass(frozen=True, kw_only=True)
class ListImages(NoParams):
    all: bool = param(bool, False)
    filters: dict = FILTERS


@dataclass(frozen=True, kw_only=True)
class PruneImages(NoParams):
    all: bool = param(bool, False)
    filters: dict = param((dict, type(None)), None, convert=_filters)    # label, until


@dataclass(frozen=True, kw_only=True)
class Build(NoParams):
    dockerfile: str = param(str)
    dockerfile_name: str = param(str, "Dockerfile")
    tags: tuple[str, ...] = param(list, (), items=str, convert=_image_refs)
    build_args: dict = param(dict, dict, convert=_string_map("build_args"))
    no_cache: bool = param(bool, False)
    network: str = param(str, "default")
    target: str = param(str, "")
    labels: dict = param(dict, dict, convert=_string_map("labels"))
    memory: str | int | None = param((str, int, type(None)), None)
    cpus: str | int | float | None = param((str, int, float, type(None)), None)
    pids_limit: int | None = param(OPTIONAL_INT, None)
    add_hosts: tuple[str, ...] = param(list, (), items=str)
    ulimits: tuple[str, ...] = param(list, (), items=str)
    shm_size: str | int | None = param((str, int, type(None)), None)
    pull: bool = param(bool, False)
    cache_from: tuple[str, ...] = param(list, (), items=str)


@dataclass(frozen=True, kw_only=True)
class ByName(NoParams):
    name: str = param(str)


@dataclass(frozen=True, kw_only=True)
class Pull(ByName):
    platform: str | None = param(OPTIONAL_STR, None, convert=_platform)


@dataclass(frozen=True, kw_only=True)
class RemoveImage(ByName):
    force: bool = param(bool, False)


@dataclass(frozen=True, kw_only=True)
class Tag(NoParams):
    source: str = param(str)
    target: str = param(str, convert=_tag_target)


@dataclass(frozen=True, kw_only=True)
class Load(NoParams):
    path: str | None = param(OPTIONAL_STR, None)


@dataclass(frozen=True, kw_only=True)
class Save(NoParams):
    names: tuple[str, ...] = param(list, items=str)


@dataclass(frozen=True, kw_only=True)
class Login(NoParams):
    registry: str = param(str)
    username: str = param(str)
    password: str = param(str)


@dataclass(frozen=True, kw_only=True)
class Logout(NoParams):
    registry: str = param(str)


@dataclass(frozen=True, kw_only=True)
class CreateNetwork(NoParams):
    name: str = param(str)
    driver: str = param(str, "bridge")
    subnet: str = param(str, "")
    gateway: str = param(str, "")
    ip_range: str = param(str, "")
    internal: bool = param(bool, False)
    labels: dict = param(dict, dict, convert=_string_map("labels"))
    options: dict = param(dict, dict, convert=_string_map("options"))


@dataclass(frozen=True, kw_only=True)
class Connect(ById):
    container: str = param(str)
    ip: str = param(str, "")
    aliases: tuple[str, ...] = param(list, (), convert=_aliases)


@dataclass(frozen=True, kw_only=True)
class Disconnect(ById):
    container: str = param(str)
    force: bool = param(bool, False)


@dataclass(frozen=True, kw_only=True)
class CreateVolume(NoParams):
    name: str = param(str, "")                 # "": a random 64-hex name
    driver: str = param(str, "local")
    driver_opts: dict = param(dict, dict, convert=_string_map("driver_opts"))
    labels: dict = param(dict, dict, convert=_string_map("labels"))


@dataclass(frozen=True, kw_only=True)
class RemoveVolume(ByName):
    force: bool = param(bool, False)


@dataclass(frozen=True, kw_only=True)
class PruneVolumes(NoParams):
    all: bool = param(bool, False)
    filters: dict = FILTERS


def _unix_time(value: float | None, where: str, problems: list) -> float | None:
    if value is not None and not 0 <= value < 1 << 40:
        problems.append(f"{where}: a time must be Unix seconds (0 or more), got {value}")
    return value


@dataclass(frozen=True, kw_only=True)
class Events(NoParams):
    since: float | None = param((int, float, type(None)), None, convert=_unix_time)
    until: float | None = param((int, float, type(None)), None, convert=_unix_time)
    filters: dict = FILTERS

    def problems(self) -> list[str]:
        if self.since is not None and self.until is not None and self.since > self.until:
            return [f"system.events: since ({self.since}) is after until ({self.until})"]
        return []


@dataclass(frozen=True, kw_only=True)
class OpenSession(NoParams):
    label: str = param(str, "")


# ---------------------------------------------------------------- results
# What the ``ok`` frame carries (docs/operations.md says what each field means).

Empty = TypedDict("Empty", {})
Id = TypedDict("Id", {"id": str})
IdPid = TypedDict("IdPid", {"id": str, "pid": int})
Created = TypedDict("Created", {"id": str, "warnings": list})
Config = TypedDict("Config", {"config": dict})     # ContainerConfig.to_dict()
Exit = TypedDict("Exit", {"exit_code": int, "oom_killed": bool, "timed_out": bool,
                          "error": str})
RunResult = TypedDict("RunResult", {"id": str, "exit_code": int, "oom_killed": bool,
                                    "timed_out": bool, "error": str,
                                    "started_at": "float | None",
                                    "finished_at": "float | None"}, total=False)
ContainerDoc = dict          # ContainerRecord.to_dict()
Containers = TypedDict("Containers", {"containers": list})
Processes = TypedDict("Processes", {"titles": list, "processes": list})
StatsSample = TypedDict("StatsSample", {
    "read": float, "cpu_ns": int, "cpu_user_ns": int, "cpu_system_ns": int,
    "cpu_periods": int, "cpu_throttled_periods": int, "cpu_throttled_ns": int,
    "system_ns": int, "online_cpus": int, "memory_usage": int, "memory_limit": int,
    "memory_cache": int, "memory_inactive_file": int, "pids": int, "pids_limit": int,
    "networks": dict, "net_rx": int, "net_tx": int, "blkio": "list | None",
    "blk_read": int, "blk_write": int})
ExecResult = TypedDict("ExecResult", {"exec_id": str, "exit_code": int}, total=False)
Warnings = TypedDict("Warnings", {"warnings": list})
Pruned = TypedDict("Pruned", {"removed": list, "space_reclaimed": int})
FileStat = TypedDict("FileStat", {"name": str, "size": int, "mode": int, "mtime": float,
                                  "link_target": str, "is_dir": bool}, total=False)
Size = TypedDict("Size", {"size": int})
Changes = TypedDict("Changes", {"changes": list})      # [{"path", "kind": 0 C, 1 A, 2 D}]
Imported = TypedDict("Imported", {"id": str, "name": str, "size": int, "warnings": list})
Images = TypedDict("Images", {"images": list})
ImageDoc = dict              # ImageRecord.to_dict() plus repo_digests
ImagePruned = TypedDict("ImagePruned", {"deleted": list, "space_reclaimed": int})
Built = TypedDict("Built", {"id": str, "tags": list})
Untagged = TypedDict("Untagged", {"untagged": list, "deleted": list})
Named = TypedDict("Named", {"name": str})
History = TypedDict("History", {"history": list})
Pulled = TypedDict("Pulled", {"id": str, "name": str})
Pushed = dict                # the registry's digest and size per pushed tag
DiskUsage = TypedDict("DiskUsage", {"images": list, "containers": list, "volumes": list})
VolumeDoc = dict             # Docker's Volume object (volumes.Volume.to_dict)
Volumes = TypedDict("Volumes", {"volumes": list, "warnings": list})
VolumesPruned = TypedDict("VolumesPruned", {"deleted": list, "space_reclaimed": int})
Networks = TypedDict("Networks", {"networks": list})
NetworkDoc = dict            # NetworkRecord.to_dict()
Removed = TypedDict("Removed", {"removed": list})
Addresses = TypedDict("Addresses", {"addresses": list})
Attached = TypedDict("Attached", {"ip_address": str})
Status = TypedDict("Status", {"status": str})
Info = dict                  # Docker's `info` fields, see Handlers.system_info
Version = TypedDict("Version", {"version": str, "server": str, "protocol": int,
                                "features": list, "python": str, "kernel": str, "pid": int,
                                "host": str, "root": str})
SessionId = TypedDict("SessionId", {"session": str})
PoolDoc = dict               # PoolService._describe
Pools = TypedDict("Pools", {"pools": list, "parked": int, "parked_memory": int,
                           "memory_budget": int, "waits_in": "str | None"})


# ---------------------------------------------------------------- the table

@dataclass(frozen=True)
class Operation:
    name: str
    params: type              # a frozen dataclass built by :func:`build`
    result: Any               # the type of the ``ok`` value
    method: str               # the Handlers method (the daemon's own for built-ins)
    streaming: bool = False   # sends events and may read stdin/resize frames

    def build(self, raw: Any) -> Any:
        return build(self.params, raw, self.name)


S = True                      # streaming, for the table's readability

TABLE: tuple[Operation, ...] = (
    # built into the server (hello is the handshake, not an operation)
    Operation("ping", NoParams, str, "ping"),
    Operation("system.version", NoParams, Version, "version"),
    Operation("session.open", OpenSession, SessionId, "session_open"),
    # containers
    Operation("container.config", Options, Config, "container_config"),
    Operation("container.create", Create, Created, "container_create"),
    Operation("container.run", Run, RunResult, "container_run", S),
    Operation("container.start", ById, IdPid, "container_start"),
    Operation("container.attach", Attach, RunResult, "container_attach", S),
    Operation("container.wait", Wait, Exit, "container_wait"),
    Operation("container.kill", Kill, Empty, "container_kill"),
    Operation("container.stop", Stop, Empty, "container_stop"),
    Operation("container.restart", Stop, IdPid, "container_restart"),
    Operation("container.remove", Remove, Empty, "container_remove"),
    Operation("container.inspect", ById, ContainerDoc, "container_inspect"),
    Operation("container.list", ListContainers, Containers, "container_list"),
    Operation("container.logs", Logs, Empty, "container_logs", S),
    Operation("container.exec", Exec, ExecResult, "container_exec", S),
    Operation("container.resize", Resize, Empty, "container_resize"),
    Operation("container.top", ById, Processes, "container_top"),
    Operation("container.stats", Stats, Empty, "container_stats", S),
    Operation("container.stats_once", ById, StatsSample, "container_stats_once"),
    Operation("container.pause", ById, Empty, "container_pause"),
    Operation("container.unpause", ById, Empty, "container_unpause"),
    Operation("container.update", Update, Warnings, "container_update"),
    Operation("container.rename", Rename, Empty, "container_rename"),
    Operation("container.prune", Filters, Pruned, "container_prune"),
    Operation("container.archive_stat", FilePath, FileStat, "container_archive_stat"),
    Operation("container.archive_get", FilePath, FileStat, "container_archive_get", S),
    Operation("container.archive_put", PutArchive, Empty, "container_archive_put", S),
    Operation("container.commit", Commit, Id, "container_commit"),
    Operation("container.export", ById, Size, "container_export", S),
    Operation("container.changes", ById, Changes, "container_changes"),
    # images
    Operation("image.import", ImportImage, Imported, "image_import", S),
    Operation("image.list", ListImages, Images, "image_list"),
    Operation("image.inspect", ByName, ImageDoc, "image_inspect"),
    Operation("image.remove", RemoveImage, Untagged, "image_remove"),
    Operation("image.prune", PruneImages, ImagePruned, "image_prune"),
    Operation("image.build", Build, Built, "image_build", S),
    Operation("image.tag", Tag, Named, "image_tag"),
    Operation("image.history", ByName, History, "image_history"),
    Operation("image.pull", Pull, Pulled, "image_pull", S),
    Operation("image.push", ByName, Pushed, "image_push", S),
    Operation("image.load", Load, Images, "image_load", S),
    Operation("image.save", Save, Size, "image_save", S),
    # networks
    Operation("network.create", CreateNetwork, Created, "network_create"),
    Operation("network.list", Filters, Networks, "network_list"),
    Operation("network.inspect", ById, NetworkDoc, "network_inspect"),
    Operation("network.remove", ById, Empty, "network_remove"),
    Operation("network.prune", Filters, Removed, "network_prune"),
    Operation("network.connect", Connect, Attached, "network_connect"),
    Operation("network.disconnect", Disconnect, Empty, "network_disconnect"),
    Operation("network.addresses", NoParams, Addresses, "network_addresses"),
    # volumes
    Operation("volume.create", CreateVolume, VolumeDoc, "volume_create"),
    Operation("volume.list", Filters, Volumes, "volume_list"),
    Operation("volume.inspect", ByName, VolumeDoc, "volume_inspect"),
    Operation("volume.remove", RemoveVolume, Empty, "volume_remove"),
    Operation("volume.prune", PruneVolumes, VolumesPruned, "volume_prune"),
    # system
    Operation("system.info", NoParams, Info, "system_info"),
    Operation("system.df", NoParams, DiskUsage, "system_df"),
    Operation("system.events", Events, Empty, "system_events", S),
    Operation("system.login", Login, Status, "system_login"),
    Operation("system.logout", Logout, Removed, "system_logout"),
    # pools of prepared containers
    Operation("pool.set", SetPool, PoolDoc, "pool_set"),
    Operation("pool.list", NoParams, Pools, "pool_list"),
)

BY_NAME: dict[str, Operation] = {op.name: op for op in TABLE}
BUILT_IN = ("ping", "system.version", "session.open")     # served by the Server itself


def markdown() -> str:
    """The table as docs/protocol.md lists it."""
    rows = ["| op | params | streams |", "|---|---|---|"]
    for op in TABLE:
        names = [f"`{name}`" if default is REQUIRED else f"`{name}?`"
                 for name, _kind, default, _items, _convert in _fields(op.params)]
        names += [f"~~`{n}`~~" for n in op.params.RETIRED]
        rows.append(f"| `{op.name}` | {', '.join(names) or '—'} | "
                    f"{'yes' if op.streaming else ''} |")
    return "\n".join(rows) + "\n"
