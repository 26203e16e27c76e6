"""What a user asks for when creating a container, and what the daemon reports back.

The request (``ContainerConfig`` with its ``HostConfig``) mirrors Docker's ``Config`` +
``HostConfig`` as nested frozen dataclasses in kernel units (bytes, microseconds). It is
built from Pythonic keyword arguments or from ``sbx`` flags by :func:`build_config`,
checked by :meth:`ContainerConfig.validate` (every problem, each naming its field, in one
``InvalidArgument``) and sent as plain data (:func:`sandboxd.runner.spec.to_dict`).

The daemon stores one ``ContainerRecord`` per container (config + ``ContainerState`` +
what it resolved: image id, argv, network endpoints, published ports, log path) and
returns it from ``container.inspect`` and ``container.list``; :func:`inspect_document`
renders Docker's inspect JSON from it, :func:`ps_row` the fields ``ps --format`` sees,
and :func:`render_template` evaluates Docker's Go-template ``--format`` strings.

Docker semantics kept on purpose: ``--cpus`` conflicts with ``--cpu-quota`` and
``--cpu-period``; ``--memory-swap`` is memory plus swap, ``-1`` unlimited. One deliberate
difference: without ``--memory-swap`` a memory-limited container gets no swap (Docker
gives it as much swap as memory), so OOM kills are prompt and reproducible.
"""
from __future__ import annotations

import re
import shlex
import signal as _signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from .envfile import parse_env, parse_env_file, resolve_env
from .errors import InvalidArgument, NotFound
from .runner import spec
from .runner.spec import UNLIMITED, Mount, Ulimit
from .securityopt import (check_security_opt, no_new_privileges, read_security_opt,
                          seccomp_profile)

__all__ = [
    "PortBinding", "Link", "HostConfig", "ContainerConfig", "ContainerState", "Endpoint",
    "ContainerRecord", "ImageRecord", "NetworkRecord", "NetworkContainer", "build_config",
    "config_from_options", "parse_volume", "parse_tmpfs",
    "parse_publish", "parse_link", "parse_env", "parse_env_file", "parse_labels",
    "parse_signal", "check_name", "inspect_document", "ps_row", "image_row",
    "image_document", "network_document", "network_row", "filter_networks",
    "filter_records", "render_template", "format_table", "STATUSES",
]

LOG_DRIVERS = ("json-file", "local", "none")
LOG_OPTS = ("max-size", "max-file")
MIN_LOG_SIZE = 4 << 10
MIN_STORAGE_SIZE = 16 << 20            # runner.layers.MIN_SIZE: ext4 with a journal

# A container's life (Docker's names). ``removing`` is transient, never stored.
STATUSES = ("created", "running", "paused", "restarting", "removing", "exited", "dead")
PROTOCOLS = ("tcp", "udp", "sctp")
DEFAULT_STOP_TIMEOUT = 10               # seconds between stop_signal and SIGKILL
# What a container's ``entry`` may name: the daemon's allow-list (trusted code its
# runner's template imports once), never a client's choice.
TEMPLATE_ENTRIES = ("pytest_sandbox.worker:main",)

MAX_NAME = 255
_NAME = re.compile(r"^/?[A-Za-z0-9][A-Za-z0-9_.-]+\Z")   # Docker: at least two characters
_USER = re.compile(r"^[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?$")
_IMAGE = re.compile(r"^[^\s\x00]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---------------------------------------------------------------- the request

@dataclass(frozen=True)
class PortBinding:
    """``-p [ip:][host:]container[/proto]``; ``host_port`` 0 lets the daemon pick one."""
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""
    host_port: int = 0


@dataclass(frozen=True)
class Link:
    """``--link name[:alias]``: ``name`` is the target container, ``alias`` the name
    this container sees it by (the alias defaults to the name)."""
    name: str
    alias: str


@dataclass(frozen=True)
class HostConfig:
    """Docker's HostConfig: limits, namespaces, network, mounts, privileges."""
    memory: int | None = None             # bytes; None: unlimited
    memory_swap: int | None = None        # memory + swap in bytes; -1: unlimited swap
    nano_cpus: int | None = None          # --cpus 0.5 -> 500_000_000; excludes cpu_quota
    cpu_quota: int | None = None          # µs per cpu_period
    cpu_period: int | None = None         # µs; None: the kernel's 100000
    cpu_shares: int | None = None         # relative weight 2..262144
    pids_limit: int | None = None         # max tasks; None or -1: unlimited
    ulimits: tuple[Ulimit, ...] = ()
    uts_mode: str = ""                    # "" (private) or "host"
    ipc_mode: str = ""                    # "", "private", "shareable", "host", "container:X"
    pid_mode: str = ""                    # "", "host", "container:X"
    network_mode: str = "default"         # default|bridge|none|host|container:X|<network>
    ip_address: str = ""                  # --ip: a static address on a user network
    links: tuple[Link, ...] = ()
    port_bindings: tuple[PortBinding, ...] = ()
    publish_all: bool = False             # -P: every exposed port on a host port
    mounts: tuple[Mount, ...] = ()        # -v binds and --tmpfs, in the order given
    read_only: bool = False               # read-only root filesystem
    init: bool = False                    # a reaper as pid 1
    cap_add: tuple[str, ...] = ()         # names without CAP_, or "ALL"
    cap_drop: tuple[str, ...] = ()
    # Docker's --security-opt: seccomp=unconfined|builtin|<profile JSON>,
    # no-new-privileges[=true|false] (a profile file is read by the client).
    security_opt: tuple[str, ...] = ()
    # Every capability, no seccomp, no masked or read-only /proc and /sys paths.
    privileged: bool = False
    auto_remove: bool = False             # --rm: removed by the daemon once it exits
    timeout: float | None = None          # seconds; SIGKILL and state.timed_out after it
    # --storage-opt size=N: the writable layer's cap in bytes (None: the daemon's default,
    # which the daemon writes here at create; 0: no cap)
    storage_size: int | None = None
    log_driver: str = ""                  # json-file | local | none ("": the daemon's)
    log_opts: tuple[str, ...] = ()        # "max-size=20m", "max-file=5" (daemon fills gaps)

    def log_limits(self) -> tuple[int, int]:
        """(max-size in bytes, -1 unlimited; max-file) of a record's filled log_opts."""
        opts = dict(o.partition("=")[::2] for o in self.log_opts)
        size = opts.get("max-size", "-1")
        return (-1 if size == "-1" else spec.parse_size(size, "max-size"),
                int(opts.get("max-file", "1")))

    def limits(self) -> spec.Limits:
        """The runner's cgroup limits (``--cpus`` becomes a quota over the period)."""
        period = self.cpu_period or spec.DEFAULT_CPU_PERIOD
        if self.nano_cpus:
            quota = spec.cpus_to_quota(self.nano_cpus / 1e9, period)
        else:
            quota = self.cpu_quota if self.cpu_quota else UNLIMITED
        return spec.Limits(memory=self.memory, memory_swap=self.memory_swap,
                           cpu_quota=quota, cpu_period=period, cpu_shares=self.cpu_shares,
                           pids=self.pids_limit)

    def capabilities(self, defaults: Sequence[str] = spec.DEFAULT_CAPABILITIES
                     ) -> tuple[str, ...]:
        """The default set with ``cap_add`` then ``cap_drop`` applied (``ALL`` allowed);
        every capability when privileged (cap_drop ignored, as in Docker)."""
        if self.privileged:
            return spec.CAPABILITY_NAMES
        caps = list(defaults)
        adds = [_cap(c) for c in self.cap_add]
        drops = [_cap(c) for c in self.cap_drop]
        if "ALL" in adds:
            caps = sorted(spec._KNOWN_CAPS)
        else:
            caps += [c for c in adds if c not in caps]
        if "ALL" in drops:
            caps = [c for c in adds if c != "ALL"]
        else:
            caps = [c for c in caps if c not in drops]
        return tuple(caps)

    def seccomp(self) -> str:
        """The runner's profile: default, unconfined or a profile's JSON."""
        return seccomp_profile(self.security_opt, self.privileged)

    def no_new_privileges(self) -> bool:
        return no_new_privileges(self.security_opt)


@dataclass(frozen=True)
class ContainerConfig:
    """Docker's Config plus ``host`` (its HostConfig). ``entrypoint``/``cmd``/``env``/
    ``workdir``/``user`` left empty are taken from the image by the daemon."""
    image: str
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None   # None: the image's; (): none at all
    env: tuple[str, ...] = ()                   # "KEY=value"
    workdir: str = ""
    user: str = ""                              # "uid[:gid]" or "name[:group]"
    hostname: str = ""                          # "": the first 12 characters of the id
    tty: bool = False
    open_stdin: bool = False
    labels: tuple[str, ...] = ()                # "key=value"
    exposed_ports: tuple[str, ...] = ()         # "80/tcp"
    stop_signal: str = "SIGTERM"
    stop_timeout: int | None = None             # None: 10 s; -1: wait forever
    host: HostConfig = field(default_factory=HostConfig)
    # "module:function" of TEMPLATE_ENTRIES: the command (``<python> -m module``) runs as
    # a clone of the daemon's pre-imported template (host image only; runner/template.py)
    entry: str = ""
    # The workload runs in a user namespace of its own and forks tests into fresh
    # containers below this one (runner/zygote.py; pytest_sandbox's zygote).
    zygote: bool = False

    def validate(self) -> ContainerConfig:
        """Check every field; raise one ``InvalidArgument`` listing all problems."""
        problems = _check_config(self)
        if problems:
            raise InvalidArgument.of(problems)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The wire form, made once per config (shared: do not modify it). A record's
        config does not change while its state does, and the record is written on
        every state change."""
        wire = self.__dict__.get("_wire")
        if wire is None:
            wire = spec.to_dict(self)
            object.__setattr__(self, "_wire", wire)   # not a field: no eq, repr, replace
        return wire

    @classmethod
    def from_dict(cls, data: Any) -> ContainerConfig:
        """Rebuild from the wire (strict: unknown, missing, mistyped fields refused)."""
        return spec.from_dict(cls, data, "config")

    def labels_dict(self) -> dict[str, str]:
        return dict(entry.partition("=")[::2] for entry in self.labels)


# ---------------------------------------------------------------- what the daemon keeps

@dataclass(frozen=True)
class ContainerState:
    """Where a container is in its life. Times are Unix seconds (None: never)."""
    status: str = "created"              # one of STATUSES
    pid: int = 0                         # host pid of the container's pid 1 while running
    exit_code: int = 0                   # 128+N when killed by signal N
    oom_killed: bool = False
    timed_out: bool = False              # killed because host.timeout passed
    error: str = ""                      # why it failed to start or died unexpectedly
    started_at: float | None = None
    finished_at: float | None = None


@dataclass(frozen=True)
class Endpoint:
    """The container's attachment to one network."""
    network: str
    ip_address: str = ""
    prefix_len: int = 0
    gateway: str = ""
    mac_address: str = ""
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContainerRecord:
    """One container as the daemon stores it and sends it (``container.inspect``).

    ``config`` is the effective configuration: the image's defaults (env, cmd,
    entrypoint, workdir, user, exposed ports, labels) merged under the request's, as
    Docker's inspect shows it. ``path``/``args`` are the argv actually run.
    ``ports`` are the published ports with the host ports actually bound.
    """
    id: str                               # 64 lowercase hex digits
    name: str                             # without Docker's leading "/"
    created: float                        # Unix seconds
    config: ContainerConfig
    state: ContainerState = field(default_factory=ContainerState)
    image_id: str = ""                    # "sha256:<hex>"
    path: str = ""
    args: tuple[str, ...] = ()
    log_path: str = ""
    restart_count: int = 0
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[PortBinding, ...] = ()
    sandbox_key: str = ""                 # the network namespace's path, if any
    exec_ids: tuple[str, ...] = ()        # exec sessions still running
    session: str = ""                     # the client session that owns it ("" : none)

    def to_dict(self) -> dict[str, Any]:
        return {name: self.config.to_dict() if name == "config"
                else spec.to_dict(getattr(self, name)) for name in _RECORD_FIELDS}

    @classmethod
    def from_dict(cls, data: Any) -> ContainerRecord:
        return spec.from_dict(cls, data, "container")


_RECORD_FIELDS = tuple(f.name for f in fields(ContainerRecord))


@dataclass(frozen=True)
class ImageRecord:
    """One image as ``image.list``/``image.inspect`` return it (the fields ``sbx images``
    and ``sbx inspect`` need; the image store may keep more)."""
    id: str                               # "sha256:<hex>" of the image config
    repo_tags: tuple[str, ...] = ()       # "name:tag"
    created: float = 0.0                  # Unix seconds
    size: int = 0                         # bytes of all layers, unpacked
    architecture: str = "amd64"
    os: str = "linux"
    layers: tuple[str, ...] = ()          # diff ids, "sha256:<hex>", bottom first
    comment: str = ""
    env: tuple[str, ...] = ()             # the image config's defaults
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    repo_digests: tuple[str, ...] = ()    # "name@sha256:<hex>" of its manifest in a registry

    @classmethod
    def from_dict(cls, data: Any) -> ImageRecord:
        return spec.from_dict(cls, data, "image")


@dataclass(frozen=True)
class NetworkContainer:
    """A container attached to a network, as ``network.inspect`` reports it."""
    id: str
    name: str
    endpoint: Endpoint


@dataclass(frozen=True)
class NetworkRecord:
    """One network as ``network.list``/``network.inspect`` return it."""
    id: str                               # 64 lowercase hex digits
    name: str
    driver: str                           # bridge | host | null
    created: float                        # Unix seconds
    scope: str = "local"
    internal: bool = False
    subnet: str = ""                      # CIDR; "" for host and none
    gateway: str = ""
    ip_range: str = ""
    bridge: str = ""                      # the Linux bridge's name
    options: tuple[str, ...] = ()         # "key=value"
    labels: tuple[str, ...] = ()          # "key=value"
    containers: tuple[NetworkContainer, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return spec.to_dict(self)

    @classmethod
    def from_dict(cls, data: Any) -> NetworkRecord:
        return spec.from_dict(cls, data, "network")


# ---------------------------------------------------------------- parsing user input

def parse_volume(text: str) -> Mount:
    """``-v /host:/ctr[:ro|rw]`` -> a bind mount. Named volumes are not supported."""
    parts = str(text).split(":")
    if len(parts) == 2:
        source, dest, mode = parts[0], parts[1], ""
    elif len(parts) == 3:
        source, dest, mode = parts
    else:
        raise InvalidArgument(f"volume: {text!r} is not /host/path:/container/path[:ro]")
    options = [o for o in mode.split(",") if o]
    unknown = [o for o in options if o not in ("ro", "rw", "z", "Z", "private", "rprivate")]
    if unknown:
        raise InvalidArgument(f"volume {text!r}: unknown mode {','.join(unknown)!r} "
                              f"(use ro or rw)")
    if not source.startswith("/"):
        raise InvalidArgument(f"volume {text!r}: the source {source!r} must be an absolute "
                              f"host path (named volumes are not supported)")
    return Mount(destination=dest, type="bind", source=source, readonly="ro" in options)


def parse_storage_opts(opts: Sequence[str] | Mapping[str, str]) -> int | None:
    """``--storage-opt size=10G`` (Docker's flag; ``size`` is the one option) -> bytes,
    or None when not given."""
    items = [f"{k}={v}" for k, v in opts.items()] if isinstance(opts, Mapping) else opts
    size: int | None = None
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or key.strip().lower() != "size":
            raise InvalidArgument(f"storage-opt: {item!r} is not size=N (size is the only "
                                  f"storage option, e.g. size=10G)")
        size = spec.parse_size(value, "storage-opt size")
    return size


def check_log_config(driver: str, opts: Sequence[str], where: str = "host") -> list[str]:
    """Problems with a log driver and its ``--log-opt`` values (Docker's names)."""
    problems = []
    if driver not in ("", *LOG_DRIVERS):
        problems.append(f"{where}.log_driver: {driver!r} is not one of "
                        f"{', '.join(LOG_DRIVERS)} (all store our own log format)")
    seen = set()
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep or key not in LOG_OPTS:
            problems.append(f"{where}.log_opts: {opt!r} is not max-size=SIZE or "
                            f"max-file=N (the log options this daemon supports)")
            continue
        if key in seen:
            problems.append(f"{where}.log_opts: {key} given twice")
        seen.add(key)
        if driver == "none":
            problems.append(f"{where}.log_opts: the none log driver takes no options")
        elif key == "max-size" and value != "-1":
            try:
                if spec.parse_size(value, "max-size") < MIN_LOG_SIZE:
                    problems.append(f"{where}.log_opts: max-size {value} is below the "
                                    f"minimum of {MIN_LOG_SIZE >> 10}k")
            except InvalidArgument as e:
                problems.append(f"{where}.log_opts: {e.message}")
        elif key == "max-file" and (not value.isdigit() or int(value) < 1):
            problems.append(f"{where}.log_opts: max-file {value!r} must be a whole number "
                            f"of at least 1")
    return problems


def parse_tmpfs(text: str) -> Mount:
    """``--tmpfs /run[:rw,noexec,size=64m]`` -> a tmpfs mount with those options."""
    dest, _, opts = str(text).partition(":")
    options = tuple(o for o in opts.split(",") if o)
    readonly = "ro" in options
    return Mount(destination=dest, type="tmpfs",
                 options=tuple(o for o in options if o not in ("ro", "rw")),
                 readonly=readonly)


def _port_range(text: str, what: str, allow_zero: bool) -> list[int]:
    low, dash, high = text.partition("-")
    try:
        first = int(low)
        last = int(high) if dash else first
    except ValueError:
        raise InvalidArgument(f"publish: invalid {what} port {text!r}") from None
    lowest = 0 if allow_zero else 1
    if not (lowest <= first <= 65535 and lowest <= last <= 65535) or last < first:
        raise InvalidArgument(f"publish: {what} port {text!r} is outside "
                              f"{lowest}..65535")
    return list(range(first, last + 1))


def parse_publish(text: str) -> list[PortBinding]:
    """``-p [ip:][host[-end]:]container[-end][/proto]`` -> one binding per port."""
    rest, slash, proto = str(text).partition("/")
    proto = proto.lower() if slash else "tcp"
    if proto not in PROTOCOLS:
        raise InvalidArgument(f"publish {text!r}: protocol {proto!r} is not one of "
                              f"{', '.join(PROTOCOLS)}")
    if rest.startswith("["):                      # [::1]:8080:80, [::1]::80 (Docker's)
        ip, _, rest = rest[1:].partition("]")
        parts = [ip] + rest[1:].split(":") if rest.startswith(":") else []
        if len(parts) != 3:
            raise InvalidArgument(f"publish: {text!r} is not [ipv6]:[host]:container"
                                  f"[/proto]")
    else:
        parts = rest.split(":")
    if len(parts) == 1:
        ip, host, ctr = "", "", parts[0]
    elif len(parts) == 2:
        ip, host, ctr = "", parts[0], parts[1]
    elif len(parts) == 3:
        ip, host, ctr = parts
    else:
        raise InvalidArgument(f"publish: {text!r} is not [ip:][host:]container[/proto]")
    ctr_ports = _port_range(ctr, "container", allow_zero=False)
    host_ports = _port_range(host, "host", allow_zero=True) if host else [0] * len(ctr_ports)
    if len(host_ports) == 1 and len(ctr_ports) > 1 and host_ports[0] == 0:
        host_ports = [0] * len(ctr_ports)
    if len(host_ports) != len(ctr_ports):
        raise InvalidArgument(f"publish {text!r}: host and container port ranges differ "
                              f"in length")
    return [PortBinding(container_port=c, protocol=proto, host_ip=ip, host_port=h)
            for h, c in zip(host_ports, ctr_ports)]


def parse_link(text: str) -> Link:
    """``--link name[:alias]``."""
    name, _, alias = str(text).partition(":")
    name = name.lstrip("/")
    return Link(name=name, alias=alias or name)


def parse_labels(labels: Iterable[str] | Mapping[str, Any]) -> list[str]:
    """``--label k=v`` or ``k`` (empty value); a mapping from the Python API."""
    if isinstance(labels, Mapping):
        return [f"{k}={'' if v is None else v}" for k, v in labels.items()]
    return [entry if "=" in entry else f"{entry}=" for entry in labels]


def parse_signal(value: str | int) -> int:
    """``SIGKILL``, ``KILL``, ``kill`` or ``9`` -> 9."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        text = str(value).strip().upper()
        if text.isdigit():
            number = int(text)
        else:
            name = text if text.startswith("SIG") else "SIG" + text
            try:
                return int(_signal.Signals[name])
            except KeyError:
                raise InvalidArgument(f"signal: unknown signal {value!r}") from None
    if not 1 <= number <= 64:
        raise InvalidArgument(f"signal: {number} is not a signal number (1..64)")
    return number


def check_name(name: str, where: str = "name") -> list[str]:
    """Docker's container-name rule: ``[A-Za-z0-9][A-Za-z0-9_.-]+``, at most
    ``MAX_NAME`` characters (a name is a path component and a log field)."""
    if isinstance(name, str) and len(name) > MAX_NAME:
        return [f"{where}: the container name is {len(name)} characters long; at most "
                f"{MAX_NAME} are allowed"]
    if not isinstance(name, str) or not _NAME.match(name):
        return [f"{where}: invalid container name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] "
                f"are allowed, at least two characters"]
    return []


def _cap(name: str) -> str:
    name = str(name).upper()
    return name[4:] if name.startswith("CAP_") else name


def _argv(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """A command as a tuple; a string is split like a shell would (docker-py does so)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(shlex.split(value))
    return tuple(str(v) for v in value)


def _parse_limits(memory: int | str | None, memory_swap: int | str | None,
                  cpus: float | str | None, problems: list[str]) -> dict[str, int | None]:
    """Sizes and ``--cpus`` -> bytes and nano-CPUs, problems appended to ``problems``."""
    def size(value: int | str, what: str) -> int | None:
        try:
            return spec.parse_size(value, what)
        except InvalidArgument as e:
            problems.append(e.message)
            return None

    mem = size(memory, "memory") if memory is not None else None
    if memory_swap is None or memory_swap in (0, "0"):
        swap = None
    elif str(memory_swap).strip() == "-1":
        swap = UNLIMITED
    else:
        swap = size(memory_swap, "memory_swap")
    nano = None
    if cpus is not None:
        try:
            cpus_value = float(cpus)
        except (TypeError, ValueError):
            problems.append(f"cpus: {cpus!r} is not a number")
        else:
            if not 0 < cpus_value <= 1e6:
                problems.append(f"cpus: must be a positive number of CPUs, got {cpus!r}")
            else:
                nano = round(cpus_value * 1e9)
    return {"memory": mem, "memory_swap": swap, "nano_cpus": nano}


def build_config(image: str, cmd: str | Sequence[str] | None = None, *,
                 entrypoint: str | Sequence[str] | None = None,
                 env: Mapping[str, Any] | Sequence[str] | None = None,
                 env_files: Sequence[str] = (),
                 workdir: str = "", user: str = "", hostname: str = "",
                 tty: bool = False, open_stdin: bool = False,
                 labels: Mapping[str, Any] | Sequence[str] | None = None,
                 expose: Sequence[str | int] = (),
                 stop_signal: str | int = "SIGTERM", stop_timeout: int | None = None,
                 memory: int | str | None = None, memory_swap: int | str | None = None,
                 cpus: float | str | None = None, cpu_quota: int | None = None,
                 cpu_period: int | None = None, cpu_shares: int | None = None,
                 pids_limit: int | None = None,
                 ulimits: Sequence[str | Ulimit] | Mapping[str, Any] = (),
                 uts_mode: str = "", ipc_mode: str = "", pid_mode: str = "",
                 network_mode: str = "default", ip: str = "",
                 links: Sequence[str | Link] | Mapping[str, str] = (),
                 ports: Sequence[str | PortBinding] | Mapping[Any, Any] = (),
                 publish_all_ports: bool = False,
                 volumes: Sequence[str | Mount] = (),
                 tmpfs: Sequence[str] | Mapping[str, str] = (),
                 read_only: bool = False, init: bool = False,
                 cap_add: Sequence[str] = (), cap_drop: Sequence[str] = (),
                 security_opt: Sequence[str] = (), privileged: bool = False,
                 auto_remove: bool = False, timeout: float | None = None,
                 storage_opt: Sequence[str] | Mapping[str, str] = (),
                 log_driver: str = "", log_opts: Sequence[str] | Mapping[str, Any] = (),
                 entry: str = "", zygote: bool = False,
                 environ: Mapping[str, str] | None = None,
                 local_files: bool = True) -> ContainerConfig:
    """The one place user-facing options (``sbx`` flags, ``Client`` keywords) become a
    validated ``ContainerConfig``. Sizes take ``64m``-style strings or bytes; ``ports``
    takes ``-p`` strings or ``{container: host}``; ``ulimits`` ``name=soft[:hard]`` or
    ``{name: limit | (soft, hard)}``. Every problem is reported at once."""
    problems: list[str] = []

    def attempt(func, *args):
        try:
            return func(*args)
        except InvalidArgument as e:
            problems.extend(e.details.get("problems") or [e.message])
            return None

    env_list: list[str] = attempt(resolve_env, env_files, env, environ) or []
    if isinstance(security_opt, str):
        security_opt = [security_opt]
    # seccomp=FILE: read here, on the caller's machine (the daemon passes local_files
    # False, and then a file name is refused by the check).
    security_list = (attempt(read_security_opt, security_opt) if local_files
                     else list(security_opt)) or []

    limits = _parse_limits(memory, memory_swap, cpus, problems)

    ulimit_list: list[Ulimit] = []
    items = ulimits.items() if isinstance(ulimits, Mapping) else ulimits
    for item in items:
        if isinstance(item, Ulimit):
            ulimit_list.append(item)
        elif isinstance(item, tuple) and len(item) == 2:      # from a mapping
            name, limit = item
            soft, hard = limit if isinstance(limit, (tuple, list)) else (limit, limit)
            parsed = attempt(spec.parse_ulimit, f"{name}={soft}:{hard}")
            if parsed:
                ulimit_list.append(parsed)
        else:
            parsed = attempt(spec.parse_ulimit, item)
            if parsed:
                ulimit_list.append(parsed)

    link_items = ([f"{k}:{v}" for k, v in links.items()] if isinstance(links, Mapping)
                  else links)
    link_list = [l if isinstance(l, Link) else parse_link(l) for l in link_items]

    bindings: list[PortBinding] = []
    if isinstance(ports, Mapping):
        port_texts = []
        for ctr, host_side in ports.items():
            ctr_text = str(ctr)
            if isinstance(host_side, tuple):                 # (ip, port)
                port_texts.append(f"{host_side[0]}:{host_side[1] or ''}:{ctr_text}")
            else:
                port_texts.append(f"{host_side}:{ctr_text}" if host_side else ctr_text)
    else:
        port_texts = ports
    for p in port_texts:
        if isinstance(p, PortBinding):
            bindings.append(p)
        else:
            bindings += attempt(parse_publish, p) or []

    exposed = []
    for e in expose:
        number, slash, proto = str(e).partition("/")
        exposed.append(f"{number}/{proto.lower() if slash else 'tcp'}")
    for b in bindings:                        # a published port is an exposed port
        key = f"{b.container_port}/{b.protocol}"
        if key not in exposed:
            exposed.append(key)

    mounts: list[Mount] = []
    for v in volumes:
        if isinstance(v, Mount):
            mounts.append(v)
        else:
            parsed = attempt(parse_volume, v)
            if parsed:
                mounts.append(parsed)
    tmpfs_items = ([f"{k}:{v}" if v else k for k, v in tmpfs.items()]
                   if isinstance(tmpfs, Mapping) else tmpfs)
    mounts += [parse_tmpfs(t) for t in tmpfs_items]

    storage_size = attempt(parse_storage_opts, storage_opt)
    log_list = [f"{k}={v}" for k, v in log_opts.items()] if isinstance(log_opts, Mapping) \
        else [str(o) for o in log_opts]

    signal_name = str(stop_signal)
    parsed_signal = attempt(parse_signal, stop_signal)
    if parsed_signal is not None and isinstance(stop_signal, int):
        signal_name = _signal.Signals(parsed_signal).name

    host = HostConfig(
        memory=limits["memory"], memory_swap=limits["memory_swap"],
        nano_cpus=limits["nano_cpus"], cpu_quota=cpu_quota or None,
        cpu_period=cpu_period or None, cpu_shares=cpu_shares or None,
        pids_limit=pids_limit if pids_limit not in (None, 0) else None,
        ulimits=tuple(ulimit_list), uts_mode=uts_mode, ipc_mode=ipc_mode,
        pid_mode=pid_mode, network_mode=network_mode or "default", ip_address=ip or "",
        links=tuple(link_list),
        port_bindings=tuple(bindings), publish_all=bool(publish_all_ports),
        mounts=tuple(mounts), read_only=bool(read_only),
        init=bool(init), cap_add=tuple(cap_add), cap_drop=tuple(cap_drop),
        security_opt=tuple(security_list), privileged=bool(privileged),
        auto_remove=bool(auto_remove), timeout=timeout, storage_size=storage_size,
        log_driver=log_driver or "", log_opts=tuple(log_list))
    config = ContainerConfig(
        image=image, cmd=_argv(cmd),
        entrypoint=None if entrypoint is None else
        ((entrypoint,) if isinstance(entrypoint, str) and entrypoint else _argv(entrypoint)),
        env=tuple(env_list), workdir=workdir or "", user=user or "",
        hostname=hostname or "", tty=bool(tty), open_stdin=bool(open_stdin),
        labels=tuple(parse_labels(labels or ())), exposed_ports=tuple(exposed),
        stop_signal=signal_name, stop_timeout=stop_timeout, host=host, entry=entry or "",
        zygote=bool(zygote))
    problems += _check_config(config, skip_parsed=True)
    if problems:
        raise InvalidArgument.of(_unique(problems))
    return config


# What ``container.create``/``run`` accept as ``options``: build_config's keywords, less
# the two that read the caller's machine (files, environment), which the caller resolves.
_CLIENT_SIDE = frozenset({"env_files", "environ", "local_files"})


def config_from_options(options: Any) -> ContainerConfig:
    """The daemon's side of ``{"options": {...}}``: the caller's keyword options (``sbx``
    flags as given, ``-e``/``--env-file`` already resolved) built and validated here, so
    a client need not import the model. Wrong names or types are an InvalidArgument."""
    import inspect
    if not isinstance(options, Mapping):
        raise InvalidArgument(f"options: expected a map, got {type(options).__name__}")
    allowed = set(inspect.signature(build_config).parameters) - _CLIENT_SIDE
    unknown = sorted(str(k) for k in options if k not in allowed)
    if unknown:
        raise InvalidArgument(f"options: unknown option(s) {', '.join(unknown)}")
    if not isinstance(options.get("image"), str):
        raise InvalidArgument("options: 'image' (a string) is required")
    try:
        return build_config(**options, environ={}, local_files=False)
    except (TypeError, AttributeError, ValueError) as e:
        raise InvalidArgument(f"options: a value has the wrong type ({e})") from None


def build_update(*, memory: int | str | None = None, memory_swap: int | str | None = None,
                 cpus: float | str | None = None, cpu_quota: int | None = None,
                 cpu_period: int | None = None, cpu_shares: int | None = None,
                 pids_limit: int | None = None) -> dict[str, int]:
    """``sbx update`` flags / ``Container.update()`` keywords -> ``container.update``
    params: only what changes, in kernel units. Each value is checked here; how they
    combine with the stored ones (swap below memory ...) only the daemon can check."""
    problems: list[str] = []
    limits = _parse_limits(memory, memory_swap, cpus, problems)
    out = {k: v for k, v in dict(limits, cpu_quota=cpu_quota, cpu_period=cpu_period,
                                 cpu_shares=cpu_shares, pids_limit=pids_limit).items()
           if v is not None}
    if not out and not problems:
        raise InvalidArgument("update: nothing to change (give memory, memory_swap, cpus, "
                              "cpu_quota, cpu_period, cpu_shares or pids_limit)")
    mem = out.get("memory")
    swap = out.get("memory_swap") if mem is not None else None
    host = HostConfig(memory=mem, memory_swap=swap, nano_cpus=out.get("nano_cpus"),
                      cpu_quota=cpu_quota, cpu_period=cpu_period, cpu_shares=cpu_shares,
                      pids_limit=pids_limit)
    if not problems:
        problems += [p for p in _check_host(host)]
    if problems:
        raise InvalidArgument.of(_unique(problems))
    return out


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


# ---------------------------------------------------------------- validation

def _check_config(c: ContainerConfig, skip_parsed: bool = False) -> list[str]:
    problems: list[str] = []
    if not isinstance(c.image, str) or not _IMAGE.match(c.image):
        problems.append(f"image: {c.image!r} is not an image name (no spaces, not empty)")
    for name in ("cmd", "entrypoint"):
        for i, arg in enumerate(getattr(c, name) or ()):
            if "\x00" in arg:
                problems.append(f"{name}[{i}]: contains a NUL byte")
    problems += spec.check_env(c.env, "env")
    if c.entry and c.entry not in TEMPLATE_ENTRIES:
        problems.append(f"entry: {c.entry!r} is not one the daemon runs from its template "
                        f"({', '.join(TEMPLATE_ENTRIES)})")
    if c.workdir and (not c.workdir.startswith("/") or "\x00" in c.workdir):
        problems.append(f"workdir: {c.workdir!r} is not an absolute path")
    if c.user and not _USER.match(c.user):
        problems.append(f"user: {c.user!r} is not uid[:gid] or name[:group]")
    if c.hostname and (len(c.hostname) > 64 or not spec._HOSTNAME.match(c.hostname)):
        problems.append(f"hostname: {c.hostname!r} is not a valid host name "
                        f"(letters, digits, '-', '.', at most 64)")
    for i, entry in enumerate(c.labels):
        if not entry.partition("=")[0]:
            problems.append(f"labels[{i}]: {entry!r} has an empty key")
    for i, port in enumerate(c.exposed_ports):
        number, _, proto = port.partition("/")
        if not number.isdigit() or not 1 <= int(number) <= 65535 or proto not in PROTOCOLS:
            problems.append(f"exposed_ports[{i}]: {port!r} is not PORT/tcp|udp|sctp "
                            f"with PORT in 1..65535")
    if not skip_parsed:
        try:
            parse_signal(c.stop_signal)
        except InvalidArgument as e:
            problems.append(f"stop_signal: {e.message}")
    if c.stop_timeout is not None and c.stop_timeout < -1:
        problems.append(f"stop_timeout: must be -1 (wait forever) or more, "
                        f"got {c.stop_timeout}")
    problems += _check_host(c.host)
    return problems


def _check_host(h: HostConfig) -> list[str]:
    problems: list[str] = []
    if h.nano_cpus is not None and h.nano_cpus <= 0:
        problems.append(f"host.nano_cpus: must be positive, got {h.nano_cpus}")
    elif h.nano_cpus and (h.cpu_quota or h.cpu_period):
        # Docker refuses both ways of limiting CPU time at once.
        for name in ("cpu_quota", "cpu_period") if h.cpu_quota and h.cpu_period else \
                ("cpu_quota",) if h.cpu_quota else ("cpu_period",):
            flag = "--" + name.replace("_", "-")
            problems.append(f"host.nano_cpus: conflicting options: --cpus and {flag} "
                            f"cannot both be set (use one)")
    else:
        # check_limits names the runner's fields; say ours (pids_limit, not pids).
        problems += [p.replace("host.pids:", "host.pids_limit:")
                     for p in spec.check_limits(h.limits(), "host")]
    if h.memory is not None and h.memory < UNLIMITED:
        problems.append(f"host.memory: {h.memory} is negative")
    problems += spec.check_ulimits(h.ulimits, "host.ulimits")
    if h.uts_mode not in ("", "host"):
        problems.append(f"host.uts_mode: {h.uts_mode!r} is not '' or 'host'")
    if h.ipc_mode not in ("", "private", "shareable", "host", "none") and \
            not h.ipc_mode.startswith("container:"):
        problems.append(f"host.ipc_mode: {h.ipc_mode!r} is not private, shareable, host, "
                        f"none or container:NAME")
    if h.pid_mode not in ("", "host") and not h.pid_mode.startswith("container:"):
        problems.append(f"host.pid_mode: {h.pid_mode!r} is not '', host or container:NAME")
    mode = h.network_mode
    if not mode or (mode.startswith("container:") and not mode[len("container:"):]):
        problems.append(f"host.network_mode: {mode!r} names no network or container")
    elif not mode.startswith("container:") and not _NAME.match(mode) and mode not in (
            "default", "bridge", "none", "host"):
        problems.append(f"host.network_mode: {mode!r} is not a network name")
    if h.ip_address and (not _is_ip(h.ip_address) or ":" in h.ip_address):
        problems.append(f"host.ip_address: {h.ip_address!r} is not an IPv4 address")
    elif h.ip_address and (mode in ("default", "bridge", "none", "host")
                           or mode.startswith("container:")):
        problems.append("host.ip_address: user specified IP address is supported on user "
                        "defined networks only")
    if h.port_bindings and (mode in ("none", "host") or mode.startswith("container:")):
        problems.append(f"host.port_bindings: conflicting options: port publishing and "
                        f"the {mode} network mode")
    if h.links and (mode in ("none", "host") or mode.startswith("container:")):
        problems.append(f"host.links: conflicting options: links and the {mode} network "
                        f"mode")
    for i, link in enumerate(h.links):
        problems += check_name(link.name, f"host.links[{i}].name")
        if not _NAME.match(link.alias) and not re.match(r"^[A-Za-z0-9]$", link.alias):
            problems.append(f"host.links[{i}].alias: {link.alias!r} is not a valid alias")
    for i, b in enumerate(h.port_bindings):
        where = f"host.port_bindings[{i}]"
        if not 1 <= b.container_port <= 65535:
            problems.append(f"{where}.container_port: {b.container_port} is outside "
                            f"1..65535")
        if not 0 <= b.host_port <= 65535:
            problems.append(f"{where}.host_port: {b.host_port} is outside 0..65535")
        if b.protocol not in PROTOCOLS:
            problems.append(f"{where}.protocol: {b.protocol!r} is not tcp, udp or sctp")
        if b.host_ip and not _is_ip(b.host_ip):
            problems.append(f"{where}.host_ip: {b.host_ip!r} is not an IP address")
    # The runner's own mount checks, named by our field.
    problems += [p.replace("mounts[", "host.mounts[", 1)
                 for p in spec._check_mounts(h.mounts)]
    destinations = [m.destination.rstrip("/") for m in h.mounts]
    for d in sorted({d for d in destinations if destinations.count(d) > 1}):
        problems.append(f"host.mounts: {d} is mounted twice (duplicate mount point)")
    for name in ("cap_add", "cap_drop"):
        for cap in getattr(h, name):
            if _cap(cap) != "ALL" and _cap(cap) not in spec._KNOWN_CAPS:
                problems.append(f"host.{name}: unknown capability {cap!r}")
    problems += check_security_opt(h.security_opt)
    if h.storage_size is not None and h.storage_size != 0 and \
            h.storage_size < MIN_STORAGE_SIZE:
        problems.append(f"host.storage_size: {h.storage_size} bytes is below the minimum of "
                        f"{MIN_STORAGE_SIZE >> 20}m (or 0: no cap)")
    problems += check_log_config(h.log_driver, h.log_opts)
    if h.timeout is not None and not h.timeout > 0:
        problems.append(f"host.timeout: must be a positive number of seconds, "
                        f"got {h.timeout}")
    return problems


def size_text(n: int) -> str:
    """Bytes in Docker's unit form where exact (10G, 64m is 64M here), else bytes."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def _is_ip(text: str) -> bool:
    import ipaddress
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- Docker's inspect JSON

ZERO_TIME = "0001-01-01T00:00:00Z"      # Go's zero time, what Docker prints for "never"


def rfc3339(ts: float | None) -> str:
    """Unix seconds -> Go's RFC3339Nano (trailing zeros of the fraction trimmed)."""
    if ts is None:
        return ZERO_TIME
    seconds = int(ts // 1)
    nanos = int(round((ts - seconds) * 1e9))
    if nanos >= 1_000_000_000:
        seconds, nanos = seconds + 1, nanos - 1_000_000_000
    import datetime
    when = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    fraction = f".{nanos:09d}".rstrip("0").rstrip(".")
    return when.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


def _port_map(bindings: Iterable[PortBinding], exposed: Iterable[str]
              ) -> dict[str, list[dict[str, str]] | None]:
    out: dict[str, list[dict[str, str]] | None] = {key: None for key in exposed}
    for b in bindings:
        key = f"{b.container_port}/{b.protocol}"
        entry = {"HostIp": b.host_ip, "HostPort": str(b.host_port) if b.host_port else ""}
        out[key] = (out.get(key) or []) + [entry]
    return out


def _ulimits_doc(ulimits: Iterable[Ulimit]) -> list[dict[str, Any]] | None:
    items = [{"Name": u.name, "Soft": u.soft, "Hard": u.hard} for u in ulimits]
    return items or None


def _seccomp_name(profile: str) -> str:
    from .runner.seccomp import profile_name
    return profile_name(profile)


def inspect_document(record: ContainerRecord) -> dict[str, Any]:
    """Docker's ``docker inspect`` object for a container (same field names), plus two
    of ours: ``State.TimedOut`` and ``HostConfig.Timeout`` (seconds)."""
    c, h, s = record.config, record.config.host, record.state
    binds = [f"{m.source}:{m.destination}" + (":ro" if m.readonly else "")
             for m in h.mounts if m.type == "bind"]
    tmpfs = {m.destination: ",".join((("ro",) if m.readonly else ()) + m.options)
             for m in h.mounts if m.type == "tmpfs"}
    host_config = {
        "Binds": binds or None,
        "ContainerIDFile": "",
        "LogConfig": {"Type": h.log_driver or "json-file",
                      "Config": dict(o.partition("=")[::2] for o in h.log_opts)},
        "NetworkMode": h.network_mode,
        "PortBindings": {k: v for k, v in _port_map(h.port_bindings, ()).items()},
        "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
        "AutoRemove": h.auto_remove,
        "CapAdd": list(h.cap_add) or None,
        "CapDrop": list(h.cap_drop) or None,
        "IpcMode": h.ipc_mode or "private",
        "Links": [f"/{l.name}:/{record.name}/{l.alias}" for l in h.links] or None,
        "PidMode": h.pid_mode,
        "Privileged": h.privileged,
        "PublishAllPorts": h.publish_all,
        "ReadonlyRootfs": h.read_only,
        "UTSMode": h.uts_mode,
        "Tmpfs": tmpfs or None,
        "Init": h.init,
        "Memory": h.memory or 0,
        "MemorySwap": h.memory_swap or 0,
        "NanoCpus": h.nano_cpus or 0,
        "CpuPeriod": h.cpu_period or 0,
        "CpuQuota": h.cpu_quota or 0,
        "CpuShares": h.cpu_shares or 0,
        "PidsLimit": h.pids_limit,
        "Ulimits": _ulimits_doc(h.ulimits),
        "MaskedPaths": [] if h.privileged else list(spec.MASKED_PATHS),
        "ReadonlyPaths": [] if h.privileged else list(spec.READONLY_PATHS),
        "SecurityOpt": list(h.security_opt) or None,
        # Ours: which seccomp profile is in force (builtin, unconfined, custom sha256:…).
        "SeccompProfile": _seccomp_name(h.seccomp()),
        "Timeout": h.timeout,
        "StorageOpt": {"size": size_text(h.storage_size)} if h.storage_size else None,
    }
    config = {
        "Hostname": c.hostname or record.id[:12],
        "Domainname": "",
        "User": c.user,
        "AttachStdin": c.open_stdin,
        "AttachStdout": True,
        "AttachStderr": True,
        "ExposedPorts": {p: {} for p in c.exposed_ports} or None,
        "Tty": c.tty,
        "OpenStdin": c.open_stdin,
        "StdinOnce": c.open_stdin,
        "Env": list(c.env),
        "Cmd": list(c.cmd) or None,
        "Image": c.image,
        "Volumes": None,
        "WorkingDir": c.workdir,
        "Entrypoint": list(c.entrypoint) if c.entrypoint else None,
        "OnBuild": None,
        "Labels": c.labels_dict(),
        "StopSignal": c.stop_signal,
    }
    if c.stop_timeout is not None:
        config["StopTimeout"] = c.stop_timeout
    networks = {
        e.network: {
            "IPAMConfig": {"IPv4Address": h.ip_address}
            if h.ip_address and e.network == h.network_mode else None,
            "Links": None, "Aliases": list(e.aliases) or None,
            "NetworkID": "", "EndpointID": "", "Gateway": e.gateway,
            "IPAddress": e.ip_address, "IPPrefixLen": e.prefix_len, "IPv6Gateway": "",
            "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
            "MacAddress": e.mac_address,
        } for e in record.endpoints}
    primary = next((e for e in record.endpoints if e.network == "bridge"), None)
    network_settings = {
        "Bridge": "", "SandboxID": "", "HairpinMode": False, "LinkLocalIPv6Address": "",
        "LinkLocalIPv6PrefixLen": 0,
        "Ports": _port_map(record.ports, c.exposed_ports),
        "SandboxKey": record.sandbox_key,
        "Gateway": primary.gateway if primary else "",
        "IPAddress": primary.ip_address if primary else "",
        "IPPrefixLen": primary.prefix_len if primary else 0,
        "MacAddress": primary.mac_address if primary else "",
        "Networks": networks,
    }
    status = s.status
    return {
        "Id": record.id,
        "Created": rfc3339(record.created),
        "Path": record.path,
        "Args": list(record.args),
        "State": {
            "Status": status,
            "Running": status in ("running", "paused"),
            "Paused": status == "paused",
            "Restarting": status == "restarting",
            "OOMKilled": s.oom_killed,
            "Dead": status == "dead",
            "Pid": s.pid,
            "ExitCode": s.exit_code,
            "Error": s.error,
            "StartedAt": rfc3339(s.started_at),
            "FinishedAt": rfc3339(s.finished_at),
            "TimedOut": s.timed_out,
        },
        "Image": record.image_id,
        "ResolvConfPath": "",
        "HostnamePath": "",
        "HostsPath": "",
        "LogPath": record.log_path,
        "Name": "/" + record.name,
        "RestartCount": record.restart_count,
        "Driver": "overlay",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": list(record.exec_ids) or None,
        "HostConfig": host_config,
        "Mounts": [{"Type": "bind", "Source": m.source, "Destination": m.destination,
                    "Mode": "ro" if m.readonly else "", "RW": not m.readonly,
                    "Propagation": "rprivate"} for m in h.mounts if m.type == "bind"],
        "Config": config,
        "NetworkSettings": network_settings,
    }


def image_document(image: ImageRecord) -> dict[str, Any]:
    """Docker's ``docker image inspect`` object for an image."""
    return {
        "Id": image.id,
        "RepoTags": list(image.repo_tags),
        "RepoDigests": list(image.repo_digests),
        "Parent": "",
        "Comment": image.comment,
        "Created": rfc3339(image.created),
        "Config": {
            "Env": list(image.env) or None, "Cmd": list(image.cmd) or None,
            "Entrypoint": list(image.entrypoint) or None, "WorkingDir": image.workdir,
            "User": image.user, "ExposedPorts": {p: {} for p in image.exposed_ports} or None,
            "Labels": dict(e.partition("=")[::2] for e in image.labels) or None,
        },
        "Architecture": image.architecture,
        "Os": image.os,
        "Size": image.size,
        "RootFS": {"Type": "layers", "Layers": list(image.layers)},
    }


# ---------------------------------------------------------------- ps / images rows

def human_duration(seconds: float) -> str:
    """Docker's units.HumanDuration: "3 seconds", "About a minute", "2 hours" ..."""
    s = int(seconds)
    if seconds < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600 / 24 / 365)} years"


def human_size(size: float, precision: int = 3) -> str:
    """Docker's units.HumanSizeWithPrecision: decimal units, "4.86MB"."""
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
    i = 0
    while size >= 1000 and i < len(units) - 1:
        size /= 1000.0
        i += 1
    return f"{size:.{precision}g}{units[i]}"


def bytes_size(size: float) -> str:
    """Docker's units.BytesSize: binary units, "1.5MiB"."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    i = 0
    while size >= 1024 and i < len(units) - 1:
        size /= 1024.0
        i += 1
    return f"{size:.4g}{units[i]}"


def status_text(state: ContainerState, now: float) -> str:
    """``ps``'s STATUS column: "Up 3 seconds", "Exited (0) 2 seconds ago" ..."""
    st = state.status

    def since(when: float | None) -> str:
        return human_duration(now - (now if when is None else when))

    if st in ("running", "paused"):
        text = "Up " + since(state.started_at)
        return text + " (Paused)" if st == "paused" else text
    if st == "restarting":
        return f"Restarting ({state.exit_code}) {since(state.finished_at)} ago"
    if st == "exited":
        return f"Exited ({state.exit_code}) {since(state.finished_at)} ago"
    if st == "removing":
        return "Removal In Progress"
    if st == "dead":
        return "Dead"
    return "Created"


def ports_text(bindings: Iterable[PortBinding], exposed: Iterable[str] = ()) -> str:
    """``ps``'s PORTS column: "0.0.0.0:8080->80/tcp, 443/tcp"."""
    published = []
    seen = set()
    for b in bindings:
        ip = b.host_ip or "0.0.0.0"
        published.append(f"{ip}:{b.host_port}->{b.container_port}/{b.protocol}")
        seen.add(f"{b.container_port}/{b.protocol}")
    return ", ".join(published + [p for p in exposed if p not in seen])


def _local_time(ts: float) -> str:
    """Docker's CreatedAt: "2024-01-02 15:04:05 +0100 CET"."""
    import datetime
    return datetime.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %z %Z")


def _quoted_command(record: ContainerRecord) -> str:
    argv = ([record.path] if record.path else []) + list(record.args)
    return " ".join(shlex.quote(a) if a else "''" for a in argv)


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def ps_row(record: ContainerRecord, now: float, trunc: bool = True) -> dict[str, Any]:
    """The fields ``ps --format`` sees (Docker's names: ``.ID``, ``.Names`` ...)."""
    command = _quoted_command(record)
    labels = record.config.labels_dict()
    return {
        "ID": record.id[:12] if trunc else record.id,
        "Image": record.config.image,
        "Command": '"' + (_truncate(command, 20) if trunc else command) + '"',
        "CreatedAt": _local_time(record.created),
        "RunningFor": human_duration(now - record.created) + " ago",
        "Ports": ports_text(record.ports, record.config.exposed_ports),
        "State": record.state.status,
        "Status": status_text(record.state, now),
        "Size": "0B",
        "Names": record.name,
        "Labels": ",".join(f"{k}={v}" for k, v in labels.items()),
        "Label": _LabelLookup(labels),
        "Mounts": ",".join(m.source if m.type == "bind" else m.destination
                           for m in record.config.host.mounts),
        "Networks": ",".join(e.network for e in record.endpoints),
    }


class _LabelLookup:
    """``{{.Label "key"}}`` in ps templates: called with the key."""

    def __init__(self, labels: dict[str, str]):
        self.labels = labels

    def __call__(self, key: str) -> str:
        return self.labels.get(key, "")


PS_HEADERS = {
    "ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND", "CreatedAt": "CREATED AT",
    "RunningFor": "CREATED", "Ports": "PORTS", "State": "STATE", "Status": "STATUS",
    "Size": "SIZE", "Names": "NAMES", "Labels": "LABELS", "Label": "LABEL",
    "Mounts": "MOUNTS", "Networks": "NETWORKS",
}
PS_TABLE = ("table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t"
            "{{.Ports}}\t{{.Names}}")


def image_row(image: ImageRecord, now: float, trunc: bool = True) -> list[dict[str, Any]]:
    """``images`` rows: one per tag (``<none>`` when untagged)."""
    hex_id = image.id.split(":", 1)[-1]
    tags = image.repo_tags or ("<none>:<none>",)
    rows = []
    for tag in tags:
        repo, _, name = tag.rpartition(":")
        if not repo or "/" in name:                   # "host:5000/x" without a tag
            repo, name = tag, "latest"
        digest = next((d.partition("@")[2] for d in image.repo_digests
                       if d.partition("@")[0] == repo), "<none>")
        rows.append({
            "ID": hex_id[:12] if trunc else image.id,
            "Repository": repo, "Tag": name, "Digest": digest,
            "CreatedSince": human_duration(now - image.created) + " ago",
            "CreatedAt": _local_time(image.created),
            "Size": human_size(image.size),
        })
    return rows


IMAGE_HEADERS = {
    "ID": "IMAGE ID", "Repository": "REPOSITORY", "Tag": "TAG", "Digest": "DIGEST",
    "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "Size": "SIZE",
}
IMAGES_TABLE = ("table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}")
IMAGES_DIGESTS_TABLE = ("table {{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t"
                        "{{.CreatedSince}}\t{{.Size}}")


# ---------------------------------------------------------------- networks

def _pairs(entries: Iterable[str]) -> dict[str, str]:
    return dict(e.partition("=")[::2] for e in entries)


def network_document(network: NetworkRecord) -> dict[str, Any]:
    """Docker's ``network inspect`` object for a network."""
    config = []
    if network.subnet:
        entry = {"Subnet": network.subnet, "Gateway": network.gateway}
        if network.ip_range:
            entry["IPRange"] = network.ip_range
        config.append(entry)
    return {
        "Name": network.name,
        "Id": network.id,
        "Created": rfc3339(network.created),
        "Scope": network.scope,
        "Driver": network.driver,
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": {}, "Config": config},
        "Internal": network.internal,
        "Attachable": False,
        "Ingress": False,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": {
            c.id: {"Name": c.name, "MacAddress": c.endpoint.mac_address,
                   "IPv4Address": f"{c.endpoint.ip_address}/{c.endpoint.prefix_len}"
                   if c.endpoint.ip_address else "",
                   "IPv6Address": ""}
            for c in network.containers},
        "Options": _pairs(network.options),
        "Labels": _pairs(network.labels),
    }


BUILTIN_NETWORKS = ("bridge", "host", "none")
NETWORK_FILTER_KEYS = ("driver", "id", "label", "name", "scope", "type")


def network_row(network: NetworkRecord, trunc: bool = True) -> dict[str, Any]:
    """The fields ``network ls --format`` sees."""
    labels = _pairs(network.labels)
    return {"ID": network.id[:12] if trunc else network.id, "Name": network.name,
            "Driver": network.driver, "Scope": network.scope, "IPv6": "false",
            "Internal": "true" if network.internal else "false",
            "Labels": ",".join(network.labels), "Label": lambda key: labels.get(key, ""),
            "CreatedAt": _local_time(network.created)}


NETWORK_HEADERS = {"ID": "NETWORK ID", "Name": "NAME", "Driver": "DRIVER", "Scope": "SCOPE",
                   "IPv6": "IPV6", "Internal": "INTERNAL", "Labels": "LABELS",
                   "CreatedAt": "CREATED AT"}
NETWORKS_TABLE = "table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}"


def filter_networks(networks: Sequence[NetworkRecord], filters: Mapping[str, Sequence[str]]
                    ) -> list[NetworkRecord]:
    """Docker's ``network ls --filter``: ``name`` and ``id`` match any part, ``label``
    ``k`` or ``k=v``, ``type`` builtin or custom; values of a key OR-ed, keys AND-ed."""
    unknown = [k for k in filters if k not in NETWORK_FILTER_KEYS]
    if unknown:
        raise InvalidArgument(f"filters: unknown key(s) {', '.join(unknown)} "
                              f"(known: {', '.join(NETWORK_FILTER_KEYS)})")
    for value in filters.get("type", ()):
        if value not in ("builtin", "custom"):
            raise InvalidArgument(f"filters.type: {value!r} is not builtin or custom")

    def match(n: NetworkRecord) -> bool:
        labels = _pairs(n.labels)
        checks = {
            "driver": lambda v: n.driver == v,
            "id": lambda v: v in n.id,
            "label": lambda v: (v.partition("=")[0] in labels and
                                ("=" not in v or labels[v.partition("=")[0]] ==
                                 v.partition("=")[2])),
            "name": lambda v: v in n.name,
            "scope": lambda v: n.scope == v,
            "type": lambda v: (n.name in BUILTIN_NETWORKS) == (v == "builtin"),
        }
        return all(any(checks[key](v) for v in values) for key, values in filters.items())

    return [n for n in networks if match(n)]


# ---------------------------------------------------------------- ps --filter

FILTER_KEYS = ("id", "name", "label", "status", "exited", "ancestor", "before", "since",
               "network", "volume", "expose", "publish")


def parse_filters(items: Iterable[str]) -> dict[str, list[str]]:
    """``--filter key=value`` flags -> ``{key: [values]}``."""
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in FILTER_KEYS:
            raise InvalidArgument(f"filter: {item!r} is not KEY=VALUE with KEY one of "
                                  f"{', '.join(FILTER_KEYS)}")
        out.setdefault(key, []).append(value)
    return out


def filter_records(records: Sequence[ContainerRecord], filters: Mapping[str, Sequence[str]]
                   ) -> list[ContainerRecord]:
    """Docker's ``ps --filter`` semantics: values of one key are OR-ed, keys AND-ed.
    Pure, so the daemon and the client agree on what a filter means."""
    unknown = [k for k in filters if k not in FILTER_KEYS]
    if unknown:
        raise InvalidArgument(f"filters: unknown key(s) {', '.join(unknown)} "
                              f"(known: {', '.join(FILTER_KEYS)})")
    for value in filters.get("status", ()):
        if value not in STATUSES:
            raise InvalidArgument(f"filters.status: {value!r} is not one of "
                                  f"{', '.join(STATUSES)}")
    by_ref = {r.id: r for r in records}
    by_ref.update({r.name: r for r in records})

    def anchor(key: str) -> float | None:
        values = filters.get(key)
        if not values:
            return None
        ref = by_ref.get(values[0]) or next(
            (r for r in records if r.id.startswith(values[0])), None)
        if ref is None:
            raise NotFound(f"filters.{key}: no such container: {values[0]}")
        return ref.created

    before, since = anchor("before"), anchor("since")

    def match(r: ContainerRecord) -> bool:
        labels = r.config.labels_dict()
        checks = {
            "id": lambda v: r.id.startswith(v),
            "name": lambda v: re.search(v, r.name) is not None,
            "label": lambda v: (v.partition("=")[0] in labels and
                                ("=" not in v or labels[v.partition("=")[0]] ==
                                 v.partition("=")[2])),
            "status": lambda v: r.state.status == v,
            "exited": lambda v: r.state.status == "exited" and str(r.state.exit_code) == v,
            "ancestor": lambda v: v in (r.config.image, r.image_id) or
            r.image_id.split(":", 1)[-1].startswith(v),
            "network": lambda v: any(e.network == v for e in r.endpoints) or
            r.config.host.network_mode == v,
            "volume": lambda v: any(v in (m.source, m.destination)
                                    for m in r.config.host.mounts),
            "expose": lambda v: v in r.config.exposed_ports or f"{v}/tcp" in
            r.config.exposed_ports,
            "publish": lambda v: any(f"{b.host_port}" == v.partition("/")[0]
                                     for b in r.ports),
        }
        for key, values in filters.items():
            if key in ("before", "since"):
                continue
            if not any(checks[key](v) for v in values):
                return False
        if before is not None and not r.created < before:
            return False
        if since is not None and not r.created > since:
            return False
        return True

    return [r for r in records if match(r)]


# ---------------------------------------------------------------- --format templates
#
# A subset of Go's text/template, enough for what people pass to ``docker --format``:
# ``{{.A.B}}`` paths, ``{{json .X}}``, pipes (``{{.X | json}}``), string and number
# literals, the functions Docker adds (json, join, split, lower, upper, title, pad,
# truncate, index, len, println), ``{{range}}``/``{{if}}``/``{{with}}`` with ``{{else}}``,
# and ``{{-`` / ``-}}`` whitespace trimming. Values print like Go's ``%v``.

# Patterns, compiled (and cached by ``re``) on first use: most ``sbx`` runs never format.
_ACTION = r"(?s)\{\{(-\s)?(.*?)(\s-)?\}\}"
_DECLARE = r"(?s)^(\$\w+)\s*(?:,\s*(\$\w+)\s*)?:=\s*(.*)$"
_TOKEN = (r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)|(?P<pipe>\|)|'
          r'(?P<lp>\()|(?P<rp>\))|(?P<num>-?\d+(?:\.\d+)?)|'
          r'(?P<field>(?:\$\w*)?(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.|\$\w*)|'
          r'(?P<ident>[A-Za-z_][A-Za-z0-9_]*))')


class _Missing:
    """A map key that is not there: Go prints ``<no value>``."""

    def __repr__(self) -> str:
        return "<no value>"


MISSING = _Missing()


def _go_str(value: Any) -> str:
    if value is MISSING:
        return "<no value>"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{_go_str(k)}:{_go_str(value[k])}"
                                 for k in sorted(value, key=str)) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_go_str(v) for v in value) + "]"
    return str(value)


def _truthy(value: Any) -> bool:
    return value not in (None, MISSING) and bool(value)


def _json(value: Any) -> str:
    import json
    return json.dumps(None if value is MISSING else value, ensure_ascii=False,
                      separators=(",", ":"))


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            raise InvalidArgument(f"format: index of {key!r}: not found") from None
    return value


_FUNCS: dict[str, Any] = {
    "json": _json,
    "join": lambda items, sep: sep.join(_go_str(i) for i in items or ()),
    "split": lambda text, sep: text.split(sep),
    "lower": lambda text: _go_str(text).lower(),
    "upper": lambda text: _go_str(text).upper(),
    "title": lambda text: _go_str(text).title(),
    "pad": lambda text, left, right: " " * int(left) + _go_str(text) + " " * int(right),
    "truncate": lambda text, n: _go_str(text)[:int(n)],
    "index": _index,
    "len": lambda value: len(value),
    "println": lambda *values: " ".join(_go_str(v) for v in values) + "\n",
    "print": lambda *values: "".join(_go_str(v) for v in values),
    "not": lambda value: not _truthy(value),
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
}


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = re.compile(_TOKEN).match(text, pos)
        if not m or m.end() == pos:
            raise InvalidArgument(f"format: cannot parse {text[pos:]!r} in {{{{{text}}}}}")
        kind = m.lastgroup
        value = m.group(kind)
        # (pipeline).Field: a field of the parenthesised value, not a new operand.
        if kind == "field" and value.startswith(".") and tokens and tokens[-1][0] == "rp" \
                and m.start(kind) == pos:
            kind = "chain"
        tokens.append((kind, value))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return tokens


def _parse_pipeline(tokens: list[tuple[str, str]], source: str) -> list[list[Any]]:
    """``a b | c`` -> [[a, b], [c]]; each operand is a token or a nested pipeline."""
    commands: list[list[Any]] = [[]]
    stack = [commands]
    for kind, value in tokens:
        if kind == "pipe":
            stack[-1].append([])
        elif kind == "lp":
            nested: list[list[Any]] = [[]]
            stack[-1][-1].append(("pipeline", nested))
            stack.append(nested)
        elif kind == "rp":
            if len(stack) == 1:
                raise InvalidArgument(f"format: unbalanced ')' in {{{{{source}}}}}")
            stack.pop()
        elif kind == "chain":
            stack[-1][-1][-1] = ("chained", (stack[-1][-1][-1], value))
        else:
            stack[-1][-1].append((kind, value))
    if len(stack) != 1 or any(not c for c in commands):
        raise InvalidArgument(f"format: incomplete expression {{{{{source}}}}}")
    return commands


def _parse(template: str) -> list[Any]:
    """Template text -> a tree of ("text", s) / ("out", pipeline) / (block ...)."""
    root: list[Any] = []
    stack: list[tuple[str, Any, list[Any], list[Any] | None]] = []
    current = root
    pos = 0
    pieces: list[Any] = []
    for m in re.finditer(_ACTION, template):
        pieces.append(("text", template[pos:m.start()]))
        pieces.append(("action", m.group(2).strip(), bool(m.group(1)), bool(m.group(3))))
        pos = m.end()
    pieces.append(("text", template[pos:]))
    if "{{" in template[pos:]:
        raise InvalidArgument(f"format: unclosed action in {template!r}")
    # Apply {{- and -}} trimming to the neighbouring text.
    for i, piece in enumerate(pieces):
        if piece[0] == "action":
            if piece[2] and i > 0:
                pieces[i - 1] = ("text", pieces[i - 1][1].rstrip())
            if piece[3] and i + 1 < len(pieces):
                pieces[i + 1] = ("text", pieces[i + 1][1].lstrip())
    for piece in pieces:
        if piece[0] == "text":
            if piece[1]:
                current.append(piece)
            continue
        body = piece[1]
        word = body.split(None, 1)[0] if body else ""
        rest = body[len(word):].strip()
        if word.startswith("/*"):
            continue
        if word in ("range", "if", "with"):
            block: list[Any] = []
            names: tuple[str, ...] = ()
            declared = re.match(_DECLARE, rest) if word == "range" else None
            if declared:                 # {{range $k, $v := .Map}}
                names = tuple(n for n in declared.group(1, 2) if n)
                rest = declared.group(3)
            node = [word, _parse_pipeline(_tokenize(rest), body), block, None, names]
            current.append(node)
            stack.append((word, node, current, None))
            current = block
        elif word == "else":
            if not stack or stack[-1][1][3] is not None:
                raise InvalidArgument(f"format: unexpected {{{{else}}}} in {template!r}")
            node = stack[-1][1]
            node[3] = []
            current = node[3]
        elif word == "end":
            if not stack:
                raise InvalidArgument(f"format: unexpected {{{{end}}}} in {template!r}")
            _, _, parent, _ = stack.pop()
            current = parent
        elif not body:
            raise InvalidArgument(f"format: empty action {{{{}}}} in {template!r}")
        else:
            current.append(("out", _parse_pipeline(_tokenize(body), body)))
    if stack:
        raise InvalidArgument(f"format: missing {{{{end}}}} for {{{{{stack[-1][0]}}}}} "
                              f"in {template!r}")
    return root


def _field(value: Any, path: str) -> Any:
    for name in [p for p in path.split(".") if p]:
        if isinstance(value, Mapping):
            value = value.get(name, MISSING)
        elif value is None or value is MISSING:
            raise InvalidArgument(f"format: nil pointer evaluating .{name}")
        else:
            raise InvalidArgument(f"format: can't evaluate field {name} in "
                                  f"{type(value).__name__} {_go_str(value)!r}")
    return value


def _operand(token: tuple[str, Any], dot: Any, names: Mapping[str, Any]) -> Any:
    kind, value = token
    if kind == "pipeline":
        return _eval_pipeline(value, dot, names)
    if kind == "chained":
        inner, path = value
        return _field(_operand(inner, dot, names), path)
    if kind == "str":
        if value.startswith("`"):
            return value[1:-1]
        import json
        return json.loads(value)
    if kind == "num":
        return float(value) if "." in value else int(value)
    if kind == "field":
        if value.startswith("$"):
            var, dotted, path = value.partition(".")
            if var not in names:
                raise InvalidArgument(f"format: undefined variable {var}")
            return _field(names[var], path) if dotted else names[var]
        return _field(dot, value)
    if kind == "ident":
        if value in ("true", "false"):
            return value == "true"
        if value == "nil":
            return None
        raise InvalidArgument(f"format: function {value!r} used as a value")
    raise InvalidArgument(f"format: unexpected {value!r}")


def _eval_command(command: list[Any], dot: Any, names: Mapping[str, Any],
                  piped: list[Any]) -> Any:
    head = command[0]
    if head[0] == "ident" and head[1] not in ("true", "false", "nil"):
        func = _FUNCS.get(head[1])
        if func is None:
            raise InvalidArgument(f"format: function {head[1]!r} not defined "
                                  f"(known: {', '.join(sorted(_FUNCS))})")
        args = [_operand(t, dot, names) for t in command[1:]] + piped
        try:
            return func(*args)
        except TypeError:
            raise InvalidArgument(f"format: wrong arguments for {head[1]}") from None
    value = _operand(head, dot, names)
    if callable(value):              # a method-like field such as ps's .Label "key"
        return value(*([_operand(t, dot, names) for t in command[1:]] + piped))
    if len(command) > 1 or piped:
        raise InvalidArgument("format: only functions take arguments")
    return value


def _eval_pipeline(pipeline: list[list[Any]], dot: Any, names: Mapping[str, Any]) -> Any:
    value: Any = None
    for i, command in enumerate(pipeline):
        value = _eval_command(command, dot, names, [value] if i else [])
    return value


def _execute(nodes: list[Any], dot: Any, names: dict[str, Any], out: list[str]) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "out":
            out.append(_go_str(_eval_pipeline(node[1], dot, names)))
        else:
            kind, pipeline, body, otherwise, declared = node
            value = _eval_pipeline(pipeline, dot, names)
            if kind == "range":
                if isinstance(value, Mapping):   # Go ranges over maps in key order
                    pairs = [(k, value[k]) for k in sorted(value, key=str)]
                elif value is MISSING or value is None:
                    pairs = []
                else:
                    pairs = list(enumerate(value))
                for key, item in pairs:
                    scope = dict(names)
                    if len(declared) == 1:
                        scope[declared[0]] = item
                    elif len(declared) == 2:
                        scope[declared[0]], scope[declared[1]] = key, item
                    _execute(body, item, scope, out)
                if not pairs and otherwise:
                    _execute(otherwise, dot, names, out)
            elif _truthy(value):
                _execute(body, value if kind == "with" else dot, names, out)
            elif otherwise:
                _execute(otherwise, dot, names, out)


def render_template(template: str, value: Any) -> str:
    """Evaluate a Go-template ``--format`` string against a JSON-like value.
    ``json`` alone (Docker's shorthand) prints the value as JSON."""
    if template.strip() == "json":
        return _json(value)
    out: list[str] = []
    _execute(_parse(template), value, {"$": value}, out)
    return "".join(out)


def format_table(template: str, rows: Sequence[Any], headers: Mapping[str, str]) -> str:
    """``table {{.A}}\\t{{.B}}``: a header line (each field's header name) and the rows,
    tab-separated cells aligned into columns like Go's tabwriter (padding 3). Without
    the ``table`` prefix: one rendered line per row, no header."""
    if not template.startswith("table"):
        return "".join(render_template(template, row) + "\n" for row in rows)
    body = template[len("table"):].strip().replace("\\t", "\t")
    if not body:
        raise InvalidArgument("format: 'table' needs fields, e.g. 'table {{.ID}}\\t{{.Names}}'")
    header_row = {key: name for key, name in headers.items()}
    header_row["Label"] = lambda key: key.upper()
    lines = [render_template(body, header_row)] + [render_template(body, r) for r in rows]
    return align([line.split("\t") for line in lines])


def align(cells: Sequence[Sequence[str]]) -> str:
    """Rows of cells as columns padded to the widest cell plus 3 (Go's tabwriter as
    Docker configures it); the last column is not padded."""
    widths: dict[int, int] = {}
    for row in cells:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths.get(i, 0), len(cell))
    return "".join("".join(cell.ljust(widths[i] + 3) if i < len(row) - 1 else cell
                           for i, cell in enumerate(row)).rstrip() + "\n"
                   for row in cells)
