"""User-facing options -> the model: ``sbx`` flags and ``Client`` keywords.

:func:`build_config` is the one place options become a validated ``ContainerConfig``
(every problem reported at once); the small parsers it uses read one flag each
(``-v``, ``--tmpfs``, ``-p``, ``--link``, ``--add-host``, ``--label``,
``--storage-opt``).
:func:`config_from_options` is the daemon's side of ``{"options": {...}}`` and
:func:`build_update` reads ``sbx update``'s flags.
"""
from __future__ import annotations

import shlex
import signal as _signal
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .envfile import resolve_env
from .errors import InvalidArgument
from .model import ContainerConfig, Healthcheck, HostConfig, Link, PortBinding
from .runner import spec
from .runner.spec import UNLIMITED, Mount, Ulimit
from .securityopt import read_security_opt
from .validate import PROTOCOLS, VOLUME_DRIVER, check_config, check_driver, check_host, \
    check_volume_name, exposed_ports, parse_signal

__all__ = [
    "build_config", "config_from_options", "build_update", "parse_volume", "parse_mount",
    "parse_tmpfs",
    "parse_publish", "parse_link", "parse_extra_host", "parse_labels", "parse_storage_opts",
    "split_command", "parse_restart", "parse_duration", "parse_device", "DEFAULT_DEVICES",
]

# What every container's /dev has (runner/plan.py); --device may only name these.
DEFAULT_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom",
                   "/dev/tty", "/dev/ptmx", "/dev/console")


def parse_restart(text: str) -> tuple[str, int]:
    """``--restart no|always|unless-stopped|on-failure[:N]`` -> (policy, retries)."""
    name, sep, count = str(text).partition(":")
    if not sep:
        return name or "no", 0
    try:
        return name, int(count)
    except ValueError:
        raise InvalidArgument(f"restart: invalid restart policy format: maximum retry "
                              f"count must be an integer, got {count!r}") from None


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                   "h": 3600.0}


def parse_duration(text: str | int | float, what: str) -> float:
    """Go's durations as Docker takes them (``30s``, ``1m30s``, ``500ms``; a bare number
    from the Python API is seconds) -> seconds."""
    import re
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    value = str(text).strip()
    parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)", value)
    if value == "0":
        return 0.0
    if not parts or "".join(n + u for n, u in parts) != value:
        raise InvalidArgument(f"{what}: invalid duration {value!r} (e.g. 30s, 1m30s, "
                              f"500ms)")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def parse_device(text: str) -> None:
    """``--device HOST[:CTR[:PERMS]]``: a device every container has already is
    accepted (nothing to do); any other is refused."""
    host, _, rest = str(text).partition(":")
    ctr = rest.partition(":")[0] or host
    if host == ctr and host in DEFAULT_DEVICES:
        return
    raise InvalidArgument(f"device: {text!r}: only the default devices ("
                          f"{', '.join(d[5:] for d in DEFAULT_DEVICES)}) are available: "
                          f"sandboxd grants no other device (its device cgroup allowlist "
                          f"is fixed and containers cannot mknod)")



def parse_volume(text: str) -> Mount:
    """``-v /host:/ctr[:opts]`` -> a bind mount; ``-v NAME:/ctr[:opts]`` -> the named
    volume (made on first use); ``-v /ctr`` -> a new anonymous volume. Options: ``ro``,
    ``rw``, ``nocopy`` (volumes), and the SELinux and propagation words Docker accepts
    that change nothing here (``z``, ``Z``, ``private``, ``rprivate``)."""
    parts = str(text).split(":")
    if len(parts) == 1:
        source, dest, mode = "", parts[0], ""
    elif len(parts) == 2:
        source, dest, mode = parts[0], parts[1], ""
    elif len(parts) == 3:
        source, dest, mode = parts
    else:
        raise InvalidArgument(f"volume: {text!r} is not [SOURCE:]/container/path[:ro] "
                              f"(SOURCE: a host path or a volume name)")
    options = [o for o in mode.split(",") if o]
    unknown = [o for o in options
               if o not in ("ro", "rw", "z", "Z", "private", "rprivate", "nocopy")]
    if unknown:
        raise InvalidArgument(f"volume {text!r}: unknown mode {','.join(unknown)!r} "
                              f"(use ro, rw or nocopy)")
    readonly = "ro" in options
    if source.startswith("/"):
        if "nocopy" in options:
            raise InvalidArgument(f"volume {text!r}: nocopy is for volumes, not for a "
                                  f"host path")
        return Mount(destination=dest, type="bind", source=source, readonly=readonly)
    problems = check_volume_name(source, f"volume {text!r}") if source else []
    if problems:
        raise InvalidArgument.of(problems)
    return Mount(destination=dest, type="volume", source=source, readonly=readonly,
                 options=("nocopy",) if "nocopy" in options else ())


_MOUNT_KEYS = {
    "type": "", "source": "", "src": "", "target": "", "dst": "", "destination": "",
    "readonly": "", "ro": "", "consistency": "", "bind-propagation": "bind",
    "bind-recursive": "bind", "bind-nonrecursive": "bind", "volume-nocopy": "volume",
    "volume-label": "volume", "volume-driver": "volume", "volume-opt": "volume",
    "volume-subpath": "volume", "tmpfs-size": "tmpfs", "tmpfs-mode": "tmpfs",
}


def parse_mount(text: str) -> Mount:
    """Docker's ``--mount type=bind|volume|tmpfs,source=…,target=…[,readonly]`` and its
    keys (``src``, ``dst``/``destination``, ``ro``, ``volume-nocopy``, ``volume-label``,
    ``volume-driver``, ``volume-opt=size=SIZE``, ``tmpfs-size``, ``tmpfs-mode``,
    ``consistency``);
    ``bind-propagation`` other than ``rprivate``/``private`` is refused (a container's
    mounts never propagate here). Every problem names the field."""
    import csv
    where = f"mount {text!r}"
    try:
        fields = next(csv.reader([str(text)]), [])
    except csv.Error as e:
        raise InvalidArgument(f"{where}: {e}") from None
    values: dict[str, str] = {}
    labels: list[str] = []
    driver_opts: list[str] = []
    problems: list[str] = []
    for item in fields:
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if key not in _MOUNT_KEYS:
            problems.append(f"{where}: unexpected key {key!r} in {item!r}")
            continue
        if not sep and key not in ("readonly", "ro", "volume-nocopy", "bind-nonrecursive"):
            problems.append(f"{where}: {key}: a value is required ({key}=...)")
            continue
        if key == "volume-label":
            labels.append(value)
        elif key == "volume-opt":
            opt_key, _, opt_value = value.partition("=")
            problems += check_driver(VOLUME_DRIVER, {opt_key: opt_value}, where)
            driver_opts.append(value)
        else:
            values[key] = value if sep else "true"
    kind = values.get("type", "volume")
    if kind not in ("bind", "volume", "tmpfs"):
        problems.append(f"{where}: type: {kind!r} is not bind, volume or tmpfs")
        raise InvalidArgument.of(problems)
    mixed = sorted({k for k in values if _MOUNT_KEYS[k] not in ("", kind)}
                   | ({"volume-label"} if labels and kind != "volume" else set())
                   | ({"volume-opt"} if driver_opts and kind != "volume" else set()))
    if mixed:
        problems.append(f"{where}: cannot mix {', '.join(mixed)} with mount type {kind!r}")
    source = values.get("source", values.get("src", ""))
    target = values.get("target", values.get("dst", values.get("destination", "")))
    if not target:
        problems.append(f"{where}: target: required (target=/path/in/container)")
    elif not target.startswith("/"):
        problems.append(f"{where}: target: {target!r} must be an absolute path")

    def flag(key: str) -> bool:
        value = values.get(key, "false").lower()
        if value not in ("true", "1", "false", "0"):
            problems.append(f"{where}: {key}: {value!r} is not true or false")
        return value in ("true", "1")

    readonly = flag("readonly") if "readonly" in values else flag("ro")
    options: list[str] = []
    if kind == "bind":
        if not source:
            problems.append(f"{where}: source: required for type=bind (source=/host/path)")
        elif not source.startswith("/"):
            problems.append(f"{where}: source: {source!r} must be an absolute host path")
        propagation = values.get("bind-propagation", "rprivate")
        if propagation not in ("rprivate", "private"):
            problems.append(f"{where}: bind-propagation: {propagation!r} is not supported: "
                            f"a container's mounts are private here (rprivate)")
        if "bind-nonrecursive" in values and flag("bind-nonrecursive"):
            problems.append(f"{where}: bind-nonrecursive: not supported (binds are "
                            f"recursive)")
        if values.get("bind-recursive", "enabled") != "enabled":
            problems.append(f"{where}: bind-recursive: only 'enabled' is supported")
    elif kind == "volume":
        if source:
            problems += check_volume_name(source, f"{where}: source")
        problems += check_driver(values.get("volume-driver", VOLUME_DRIVER), {}, where)
        if "volume-subpath" in values:
            problems.append(f"{where}: volume-subpath: not supported (mount the whole "
                            f"volume)")
        if "volume-nocopy" in values and flag("volume-nocopy"):
            options.append("nocopy")
        options += [f"label={label}" for label in labels]
        options += [f"opt={opt}" for opt in driver_opts]
    else:
        if source:
            problems.append(f"{where}: source: a tmpfs mount takes no source")
        if "tmpfs-size" in values:
            try:
                options.append(f"size={spec.parse_size(values['tmpfs-size'], 'tmpfs-size')}")
            except InvalidArgument as e:
                problems.append(f"{where}: {e.message}")
        if "tmpfs-mode" in values:
            try:
                mode = int(values["tmpfs-mode"], 8)
                if not 0 <= mode <= 0o7777:
                    raise ValueError
                options.append(f"mode={mode:o}")
            except ValueError:
                problems.append(f"{where}: tmpfs-mode: {values['tmpfs-mode']!r} is not an "
                                f"octal mode such as 1777")
    if problems:
        raise InvalidArgument.of(problems)
    return Mount(destination=target, type=kind, source=source, readonly=readonly,
                 options=tuple(options))


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


def parse_extra_host(text: str) -> str:
    """``--add-host name:ip`` (or Docker's ``name=ip``, an IPv6 address as ``[::1]``)
    -> ``name:ip``; ``host-gateway`` stays a name the daemon fills in. The name and the
    address are checked by :func:`sandboxd.validate.check_host`."""
    text = str(text)
    name, sep, ip = text.partition("=")
    if not sep:
        name, sep, ip = text.partition(":")
    if not sep or not name or ":" in name:
        raise InvalidArgument(f"add-host: bad format {text!r}: expected NAME:IP (e.g. "
                              f"db:10.0.0.5, or NAME:host-gateway)")
    if len(ip) > 2 and ip[0] == "[" and ip[-1] == "]":
        ip = ip[1:-1]
    return f"{name}:{ip}"


def _strings(value: str | Sequence[str]) -> tuple[str, ...]:
    """A repeatable option: one string or several."""
    return (value,) if isinstance(value, str) else tuple(str(v) for v in value)


def parse_labels(labels: Iterable[str] | Mapping[str, Any]) -> list[str]:
    """``--label k=v`` or ``k`` (empty value); a mapping from the Python API."""
    if isinstance(labels, Mapping):
        return [f"{k}={'' if v is None else v}" for k, v in labels.items()]
    return [entry if "=" in entry else f"{entry}=" for entry in labels]


def split_command(value: str | Sequence[str] | None) -> tuple[str, ...]:
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
                 dns: str | Sequence[str] = (), dns_search: str | Sequence[str] = (),
                 dns_opt: str | Sequence[str] = (),
                 extra_hosts: Sequence[str] | Mapping[str, str] = (),
                 network_aliases: str | Sequence[str] = (),
                 shm_size: int | str | None = None,
                 ports: Sequence[str | PortBinding] | Mapping[Any, Any] = (),
                 publish_all_ports: bool = False,
                 volumes: Sequence[str | Mount] | Mapping[str, Any] = (),
                 mounts: Sequence[str | Mount] = (),
                 volumes_from: str | Sequence[str] = (),
                 tmpfs: Sequence[str] | Mapping[str, str] = (),
                 read_only: bool = False, init: bool = False,
                 cap_add: Sequence[str] = (), cap_drop: Sequence[str] = (),
                 security_opt: Sequence[str] = (), privileged: bool = False,
                 auto_remove: bool = False, timeout: float | None = None,
                 storage_opt: Sequence[str] | Mapping[str, str] = (),
                 log_driver: str = "", log_opts: Sequence[str] | Mapping[str, Any] = (),
                 restart: str = "no", sysctls: Sequence[str] | Mapping[str, Any] = (),
                 group_add: str | Sequence[str | int] = (),
                 console_size: Sequence[int] = (),
                 memory_reservation: int | str | None = None,
                 oom_kill_disable: bool = False, cpuset_cpus: str = "",
                 devices: str | Sequence[str] = (),
                 health_cmd: str | Sequence[str] | None = None,
                 health_interval: str | float | None = None,
                 health_timeout: str | float | None = None,
                 health_retries: int | None = None,
                 health_start_period: str | float | None = None,
                 health_start_interval: str | float | None = None,
                 no_healthcheck: bool = False,
                 entry: str = "", zygote: bool = False,
                 environ: Mapping[str, str] | None = None,
                 local_files: bool = True) -> ContainerConfig:
    """The one place user-facing options (``sbx`` flags, ``Client`` keywords) become a
    validated ``ContainerConfig``. Sizes take ``64m``-style strings or bytes; ``ports``
    takes ``-p`` strings or ``{container: host}``; ``volumes`` ``-v`` strings or
    docker-py's ``{source: {"bind": path, "mode": "ro"}}`` (or ``{source: path}``);
    ``ulimits`` ``name=soft[:hard]`` or
    ``{name: limit | (soft, hard)}``; ``extra_hosts`` ``name:ip`` strings or ``{name:
    ip}`` (docker-py's); ``dns``/``dns_search``/``dns_opt`` a string or a list. Every
    problem is reported at once."""
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

    host_items = ([f"{k}:{v}" for k, v in extra_hosts.items()]
                  if isinstance(extra_hosts, Mapping) else _strings(extra_hosts))
    hosts_list = [h for h in (attempt(parse_extra_host, item) for item in host_items) if h]

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
    for e in expose:                          # a range: each port (Docker's --expose)
        number, slash, proto = str(e).partition("/")
        exposed += exposed_ports(str(e)) or \
            [f"{number}/{proto.lower() if slash else 'tcp'}"]     # the check names it
    for b in bindings:                        # a published port is an exposed port
        key = f"{b.container_port}/{b.protocol}"
        if key not in exposed:
            exposed.append(key)

    mount_list: list[Mount] = []
    if isinstance(volumes, Mapping):          # docker-py's {source: {"bind", "mode"}}
        volumes = [f"{k}:{v['bind']}:{v.get('mode', 'rw')}" if isinstance(v, Mapping)
                   and "bind" in v else f"{k}:{v}" for k, v in volumes.items()]
    for items, parse in ((volumes, parse_volume), (mounts, parse_mount)):
        for v in _strings(items) if isinstance(items, str) else items:
            parsed = v if isinstance(v, Mount) else attempt(parse, v)
            if parsed:
                mount_list.append(parsed)
    tmpfs_items = ([f"{k}:{v}" if v else k for k, v in tmpfs.items()]
                   if isinstance(tmpfs, Mapping) else tmpfs)
    mount_list += [parse_tmpfs(t) for t in tmpfs_items]

    storage_size = attempt(parse_storage_opts, storage_opt)
    shm_bytes = None if shm_size in (None, "", 0) else \
        attempt(spec.parse_size, shm_size, "shm-size")
    log_list = [f"{k}={v}" for k, v in log_opts.items()] if isinstance(log_opts, Mapping) \
        else [str(o) for o in log_opts]

    policy, retries = attempt(parse_restart, restart) or ("no", 0)
    sysctl_list = ([f"{k}={v}" for k, v in sysctls.items()] if isinstance(sysctls, Mapping)
                   else list(_strings(sysctls)))
    reservation = None if memory_reservation in (None, "", 0, "0") else \
        attempt(spec.parse_size, memory_reservation, "memory-reservation")
    for device in _strings(devices):
        attempt(parse_device, device)
    healthcheck = _healthcheck(attempt, problems, health_cmd, health_interval,
                               health_timeout, health_retries, health_start_period,
                               health_start_interval, no_healthcheck)

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
        links=tuple(link_list), dns=_strings(dns), dns_search=_strings(dns_search),
        dns_options=_strings(dns_opt), extra_hosts=tuple(hosts_list),
        network_aliases=_strings(network_aliases), shm_size=shm_bytes,
        port_bindings=tuple(bindings), publish_all=bool(publish_all_ports),
        mounts=tuple(mount_list), volumes_from=_strings(volumes_from),
        read_only=bool(read_only),
        init=bool(init), cap_add=tuple(cap_add), cap_drop=tuple(cap_drop),
        security_opt=tuple(security_list), privileged=bool(privileged),
        auto_remove=bool(auto_remove), timeout=timeout, storage_size=storage_size,
        log_driver=log_driver or "", log_opts=tuple(log_list), restart_policy=policy,
        restart_retries=retries, memory_reservation=reservation,
        oom_kill_disable=bool(oom_kill_disable), sysctls=tuple(sysctl_list),
        cpuset_cpus=str(cpuset_cpus or ""), console_size=tuple(console_size or ()),
        group_add=tuple(str(g) for g in ((group_add,) if isinstance(group_add, (str, int))
                                         else group_add)))
    config = ContainerConfig(
        image=image, cmd=split_command(cmd),
        entrypoint=None if entrypoint is None else
        ((entrypoint,) if isinstance(entrypoint, str) and entrypoint
         else split_command(entrypoint)),
        env=tuple(env_list), workdir=workdir or "", user=user or "",
        hostname=hostname or "", tty=bool(tty), open_stdin=bool(open_stdin),
        labels=tuple(parse_labels(labels or ())), exposed_ports=tuple(exposed),
        stop_signal=signal_name, stop_timeout=stop_timeout, host=host, entry=entry or "",
        zygote=bool(zygote), healthcheck=healthcheck)
    problems += check_config(config, skip_parsed=True)
    if problems:
        raise InvalidArgument.of(_unique(problems))
    return config


def _healthcheck(attempt: Any, problems: list[str], cmd: str | Sequence[str] | None,
                 interval: Any, timeout: Any, retries: int | None, start_period: Any,
                 start_interval: Any, disabled: bool) -> Healthcheck:
    """The ``--health-*`` flags (unset ones 0: the image's, else Docker's default)."""
    durations = {}
    for name, value in (("interval", interval), ("timeout", timeout),
                        ("start_period", start_period), ("start_interval", start_interval)):
        if value not in (None, ""):
            durations[name] = attempt(parse_duration, value,
                                      "health-" + name.replace("_", "-"))
    if disabled:
        if cmd or durations or retries:
            problems.append("no-healthcheck: --no-healthcheck conflicts with --health-* "
                            "options")
        return Healthcheck(test=("NONE",))
    # a string runs in the image's shell (--health-cmd); a list is exec'd as given
    # (Docker's ["CMD", ...], from the Engine API)
    test = (("CMD-SHELL", cmd) if isinstance(cmd, str) else ("CMD", *map(str, cmd))) \
        if cmd else ()
    return Healthcheck(test=test, retries=int(retries or 0),
                       **{k: v or 0.0 for k, v in durations.items()})


# What ``container.create``/``run`` accept as ``options``: build_config's keywords, less
# the two that read the caller's machine (files, environment), which the caller resolves.
CLIENT_SIDE = frozenset({"env_files", "environ", "local_files"})


def config_from_options(options: Any) -> ContainerConfig:
    """The daemon's side of ``{"options": {...}}``: the caller's keyword options (``sbx``
    flags as given, ``-e``/``--env-file`` already resolved) built and validated here, so
    a client need not import the model. Wrong names or types are an InvalidArgument."""
    import inspect
    if not isinstance(options, Mapping):
        raise InvalidArgument(f"options: expected a map, got {type(options).__name__}")
    allowed = set(inspect.signature(build_config).parameters) - CLIENT_SIDE
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
                 pids_limit: int | None = None, restart: str | None = None
                 ) -> dict[str, int | str]:
    """``sbx update`` flags / ``Container.update()`` keywords -> ``container.update``
    params: only what changes, in kernel units. Each value is checked here; how they
    combine with the stored ones (swap below memory, a policy with ``--rm`` ...) only the
    daemon can check."""
    problems: list[str] = []
    limits = _parse_limits(memory, memory_swap, cpus, problems)
    out: dict[str, int | str] = {
        k: v for k, v in dict(limits, cpu_quota=cpu_quota, cpu_period=cpu_period,
                              cpu_shares=cpu_shares, pids_limit=pids_limit).items()
        if v is not None}
    policy, retries = "no", 0
    if restart is not None:
        try:
            policy, retries = parse_restart(restart)
        except InvalidArgument as e:
            problems.append(e.message)
        out.update(restart_policy=policy, restart_retries=retries)
    if not out and not problems:
        raise InvalidArgument("update: nothing to change (give memory, memory_swap, cpus, "
                              "cpu_quota, cpu_period, cpu_shares, pids_limit or restart)")
    mem = out.get("memory")
    swap = out.get("memory_swap") if mem is not None else None
    host = HostConfig(memory=mem, memory_swap=swap, nano_cpus=out.get("nano_cpus"),
                      cpu_quota=cpu_quota, cpu_period=cpu_period, cpu_shares=cpu_shares,
                      pids_limit=pids_limit, restart_policy=policy, restart_retries=retries)
    if not problems:
        problems += [p for p in check_host(host)]
    if problems:
        raise InvalidArgument.of(_unique(problems))
    return out


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
