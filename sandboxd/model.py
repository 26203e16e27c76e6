"""What a user asks for when creating a container, and what the daemon reports back.

The request (``ContainerConfig`` with its ``HostConfig``) mirrors Docker's ``Config`` +
``HostConfig`` as nested frozen dataclasses in kernel units (bytes, microseconds). It is
built from Pythonic keyword arguments or from ``sbx`` flags by
:func:`sandboxd.flags.build_config`, checked by :func:`sandboxd.validate.validate_config`
(every problem, each naming its field, in one ``InvalidArgument``) and sent as plain data (:func:`sandboxd.runner.spec.to_dict`).

The daemon stores one ``ContainerRecord`` per container (config + ``ContainerState`` +
what it resolved: image id, argv, network endpoints, published ports, log path) and
returns it from ``container.inspect`` and ``container.list``; :mod:`sandboxd.render`
turns records into Docker's documents and table rows, :mod:`sandboxd.filters` selects
them.

Docker semantics kept on purpose: ``--cpus`` conflicts with ``--cpu-quota`` and
``--cpu-period``; ``--memory-swap`` is memory plus swap, ``-1`` unlimited. One deliberate
difference: without ``--memory-swap`` a memory-limited container gets no swap (Docker
gives it as much swap as memory), so OOM kills are prompt and reproducible.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from .runner import spec
from .runner.spec import UNLIMITED, Mount, Ulimit
from .securityopt import no_new_privileges, seccomp_profile

_T = TypeVar("_T")

__all__ = [
    "PortBinding", "Link", "HostConfig", "ContainerConfig", "ContainerState", "Endpoint",
    "ContainerRecord", "ImageRecord", "NetworkRecord", "NetworkContainer", "STATUSES",
    "BUILTIN_NETWORKS", "pairs", "cap_name", "Healthcheck", "Health", "HealthProbe",
    "RESTART_POLICIES", "evolve",
]

# A container's life (Docker's names). ``removing`` is transient, never stored.
STATUSES = ("created", "running", "paused", "restarting", "removing", "exited", "dead")
DEFAULT_STOP_TIMEOUT = 10               # seconds between stop_signal and SIGKILL
BUILTIN_NETWORKS = ("bridge", "host", "none")
RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")


def pairs(entries: Iterable[str]) -> dict[str, str]:
    """``key=value`` entries (labels, options) -> a dict."""
    return dict(e.partition("=")[::2] for e in entries)


def cap_name(name: str) -> str:
    """``cap_net_admin`` or ``CAP_NET_ADMIN`` -> ``NET_ADMIN``."""
    name = str(name).upper()
    return name[4:] if name.startswith("CAP_") else name


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
    # The container's resolver: --dns servers (IP addresses; empty: the daemon's --dns,
    # else the host's, filtered), --dns-search domains ("." for none), --dns-option.
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    # --add-host "name:ip" lines of /etc/hosts; ip "host-gateway": the default bridge's
    # gateway address, filled in when the file is written.
    extra_hosts: tuple[str, ...] = ()
    # --network-alias: more names of the container on its user network's resolver
    network_aliases: tuple[str, ...] = ()
    port_bindings: tuple[PortBinding, ...] = ()
    publish_all: bool = False             # -P: every exposed port on a host port
    # -v, --mount and --tmpfs, in the order given. Besides the runner's bind and tmpfs,
    # type "volume": source is the volume's name ("" at create: a new anonymous one,
    # named in the record), options "nocopy", "label=K=V", "opt=K=V" (the labels and
    # driver options of a volume it makes).
    mounts: tuple[Mount, ...] = ()
    volumes_from: tuple[str, ...] = ()    # --volumes-from CONTAINER[:ro|rw]
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
    shm_size: int | None = None           # --shm-size: /dev/shm's bytes (None: 64 MB)
    log_driver: str = ""                  # json-file | local | none ("": the daemon's)
    log_opts: tuple[str, ...] = ()        # "max-size=20m", "max-file=5" (daemon fills gaps)
    # --restart: one of RESTART_POLICIES; restart_retries is on-failure's :N (0: no cap)
    restart_policy: str = "no"
    restart_retries: int = 0
    memory_reservation: int | None = None  # bytes: the soft limit (v1 soft_limit, v2 low)
    cpuset_cpus: str = ""                 # --cpuset-cpus "0-1,3" ("": every CPU)
    oom_kill_disable: bool = False        # v1 only: memory.oom_control
    sysctls: tuple[str, ...] = ()         # "net.ipv4.ip_forward=1" (namespaced ones only)
    group_add: tuple[str, ...] = ()       # more groups of the process (gid or name)
    # Docker's ConsoleSize: (rows, cols) of a -t container's terminal from its start
    # (then resized); (): 0x0 until the first resize.
    console_size: tuple[int, ...] = ()

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
                           pids=self.pids_limit, cpuset_cpus=self.cpuset_cpus,
                           memory_reservation=self.memory_reservation,
                           oom_kill_disable=self.oom_kill_disable)

    def capabilities(self, defaults: Sequence[str] = spec.DEFAULT_CAPABILITIES
                     ) -> tuple[str, ...]:
        """The default set with ``cap_add`` then ``cap_drop`` applied (``ALL`` allowed);
        every capability when privileged (cap_drop ignored, as in Docker)."""
        if self.privileged:
            return spec.CAPABILITY_NAMES
        caps = list(defaults)
        adds = [cap_name(c) for c in self.cap_add]
        drops = [cap_name(c) for c in self.cap_drop]
        if "ALL" in adds:
            caps = sorted(spec.KNOWN_CAPS)
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
class Healthcheck:
    """Docker's Healthcheck. ``test``: ``("CMD", arg, ...)``, ``("CMD-SHELL", line)``,
    ``("NONE",)`` (none, not even the image's) or ``()`` (the image's). Durations in
    seconds; 0 takes the image's, else Docker's default (30 s, 30 s, 0, 5 s, 3)."""
    test: tuple[str, ...] = ()
    interval: float = 0.0
    timeout: float = 0.0
    start_period: float = 0.0
    start_interval: float = 0.0
    retries: int = 0


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
    healthcheck: Healthcheck = field(default_factory=Healthcheck)

    def to_dict(self) -> dict[str, Any]:
        """The wire form, made once per config (shared: do not modify it). A record's
        config does not change while its state does, and the record is written on
        every state change."""
        return self.derived(spec.WIRE, lambda: spec.to_dict(self))

    def derived(self, name: str, make: Callable[[], _T]) -> _T:
        """``make()``, computed once per config and kept on it (not a field: no eq,
        repr or replace). A config is immutable, and the requests that repeat one
        share the object (operations decodes a config once), so what a start derives
        from it (its wire form, its checks, its pool key) is made once."""
        try:
            return self.__dict__[name]
        except KeyError:
            value = make()
            object.__setattr__(self, name, value)
            return value

    @classmethod
    def from_dict(cls, data: Any) -> ContainerConfig:
        """Rebuild from the wire (strict: unknown, missing, mistyped fields refused)."""
        return spec.from_dict(cls, data, "config")

    def labels_dict(self) -> dict[str, str]:
        return pairs(self.labels)


# ---------------------------------------------------------------- what the daemon keeps

@dataclass(frozen=True)
class HealthProbe:
    """One health check run (Docker's State.Health.Log entry)."""
    start: float
    end: float
    exit_code: int                       # -1: it did not finish in time
    output: str = ""


@dataclass(frozen=True)
class Health:
    """Docker's State.Health: ``status`` "" (no health check), starting, healthy or
    unhealthy; the last five probes."""
    status: str = ""
    failing_streak: int = 0
    log: tuple[HealthProbe, ...] = ()


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
    health: Health = field(default_factory=Health)
    # Stopped or killed by a user (Docker's HasBeenManuallyStopped): no restart policy
    # brings it back, nor does a daemon start for unless-stopped.
    manually_stopped: bool = False


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
    volume_dir: str = ""                  # where its volumes' directories are (inspect)

    def to_dict(self) -> dict[str, Any]:
        return {name: self.config.to_dict() if name == "config"
                else spec.to_dict(getattr(self, name)) for name in _RECORD_FIELDS}

    @classmethod
    def from_dict(cls, data: Any) -> ContainerRecord:
        return spec.from_dict(cls, data, "container")

    def hostname(self) -> str:
        """``-h``; else, as Docker, the host's name with ``--network host`` (the
        container shares the host's network identity) and the id's first 12 otherwise."""
        if self.config.hostname:
            return self.config.hostname
        if self.config.host.network_mode == "host":
            import socket
            return socket.gethostname()
        return self.id[:12]


_RECORD_FIELDS = tuple(f.name for f in fields(ContainerRecord))
_EVOLVABLE = {cls: frozenset(f.name for f in fields(cls))
              for cls in (ContainerRecord, ContainerState)}
_Evolvable = TypeVar("_Evolvable", ContainerRecord, ContainerState)


def evolve(obj: _Evolvable, **changes: Any) -> _Evolvable:
    """``dataclasses.replace`` for the two records every start and exit rewrites (a
    container's record and its state; a cold run makes five): the fields are copied as
    they are, without calling ``__init__`` (these classes check nothing there), ~1 us
    instead of replace's ~3.5. Their ``__dict__`` holds their fields and nothing else
    (nothing is kept on them, as ``ContainerConfig.derived`` keeps on a config), so it
    is copied whole. An unknown field is refused as replace refuses it."""
    names = _EVOLVABLE[type(obj)]
    unknown = changes.keys() - names
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field(s) {', '.join(sorted(unknown))}")
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__, **changes)
    return new


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
    healthcheck: Healthcheck = field(default_factory=Healthcheck)   # its HEALTHCHECK

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
