"""The rules a container request must follow, as a flat list of checks.

Each check takes a value of the model (:mod:`sandboxd.model`) and returns its problems,
each naming the field it is about (``host.memory: ...``), so one ``InvalidArgument`` can
list all of them (runc's ``configs/validate`` is the model). :func:`check_config` is what
:func:`validate_config` and :func:`sandboxd.flags.build_config` run; the daemon runs
:func:`check_log_config` on its own defaults. The limits' arithmetic (memory below swap,
quota against period ...) is the runner's :func:`sandboxd.runner.spec.check_limits`,
named here by our field names.
"""
from __future__ import annotations

import dataclasses
import os
import re
import signal as _signal
from collections.abc import Mapping, Sequence

from .errors import InvalidArgument
from .model import RESTART_POLICIES, ContainerConfig, Healthcheck, HostConfig, cap_name
from .runner import spec
from .runner.spec import UNLIMITED
from .securityopt import check_security_opt

LOG_DRIVERS = ("json-file", "local", "none")
LOG_OPTS = ("max-size", "max-file")
MIN_LOG_SIZE = 4 << 10
MIN_STORAGE_SIZE = 16 << 20            # runner.layers.MIN_SIZE: ext4 with a journal
PROTOCOLS = ("tcp", "udp", "sctp")


def exposed_ports(text: str) -> list[str] | None:
    """``PORT[-END][/proto]`` as an image's ``ExposedPorts`` keys (``80/tcp``), a range
    one key per port as Docker's EXPOSE stores it; None when it is not one (ports
    1..65535, END not below PORT, tcp, udp or sctp)."""
    number, _, proto = text.partition("/")
    proto = proto.lower() or "tcp"
    low, dash, high = number.partition("-")
    if proto not in PROTOCOLS or not (low.isdigit() and len(low) <= 5) or \
            (dash and not (high.isdigit() and len(high) <= 5)):
        return None
    first = int(low)
    last = int(high) if dash else first
    if not 1 <= first <= last <= 65535:
        return None
    return [f"{port}/{proto}" for port in range(first, last + 1)]
# What a container's ``entry`` may name: the daemon's allow-list (trusted code its
# runner's template imports once), never a client's choice.
TEMPLATE_ENTRIES = ("pytest_sandbox.worker:main",)

MAX_NAME = 255
_NAME = re.compile(r"^/?[A-Za-z0-9][A-Za-z0-9_.-]+\Z")   # Docker: at least two characters
_USER = re.compile(r"^[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?$")
_IMAGE = re.compile(r"^[^\s\x00]+$")
# Docker's search-domain rule (opts.validateDomain): labels of letters, digits and
# inner '-', dot-separated, an optional final dot.
_LABEL = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?\Z")
_ALIAS = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\Z")
_WORD = re.compile(r"^[^\s\x00#;]+\Z")           # one word of resolv.conf or /etc/hosts
HOST_GATEWAY = "host-gateway"            # --add-host NAME:host-gateway (Docker's value)
# Docker's namespaced sysctls (the others would change the whole host): IPC ones ...
SYSCTL_IPC = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
              "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced")
# ... and the network and POSIX message queue prefixes.
SYSCTL_PREFIXES = ("net.", "fs.mqueue.")
_SYSCTL_KEY = re.compile(r"^[a-z0-9_]+(?:\.[A-Za-z0-9_-]+)+\Z")
MIN_HEALTH_DURATION = 0.001              # Docker: 1 ms, or 0 for the default


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


def _is_ip(text: str) -> bool:
    import ipaddress
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_dns(h: HostConfig) -> list[str]:
    """--dns, --dns-search, --dns-option and --add-host: each value alone, and none of
    them with another container's network (whose files it shares, as Docker refuses)."""
    problems = []
    for i, server in enumerate(h.dns):
        if not _is_ip(server):
            problems.append(f"host.dns[{i}]: {server!r} is not an IP address")
    for i, domain in enumerate(h.dns_search):
        if domain != "." and (len(domain) > 255 or not _DOMAIN.match(domain)):
            problems.append(f"host.dns_search[{i}]: {domain!r} is not a valid domain "
                            f"(or '.' for none)")
    for i, option in enumerate(h.dns_options):
        if not _WORD.match(option):
            problems.append(f"host.dns_options[{i}]: {option!r} is not one resolver "
                            f"option (e.g. ndots:2, no spaces)")
    for i, entry in enumerate(h.extra_hosts):
        name, sep, ip = entry.partition(":")
        if not sep or not _WORD.match(name):
            problems.append(f"host.extra_hosts[{i}]: {entry!r} is not NAME:IP")
        elif ip != HOST_GATEWAY and not _is_ip(ip):
            problems.append(f"host.extra_hosts[{i}]: invalid IP address {ip!r} for host "
                            f"{name!r} (an address, or {HOST_GATEWAY})")
    if h.network_mode.startswith("container:"):
        if h.dns or h.dns_search or h.dns_options:
            problems.append("host.dns: conflicting options: dns and the network mode "
                            f"{h.network_mode} (its resolver is that container's)")
        if h.extra_hosts:
            problems.append("host.extra_hosts: conflicting options: custom host-to-IP "
                            f"mapping and the network mode {h.network_mode}")
    return problems


def validate_config(config: ContainerConfig) -> ContainerConfig:
    """``config`` when every field is right; else one ``InvalidArgument`` listing all
    the problems. A config that passed is not checked again (it is immutable)."""
    def checked() -> bool:
        problems = check_config(config)
        if problems:
            raise InvalidArgument.of(problems)
        return True
    config.derived("_checked", checked)
    return config


def check_config(c: ContainerConfig, skip_parsed: bool = False) -> list[str]:
    """Every problem with a request; ``skip_parsed``: the stop signal was already
    parsed (by ``build_config``, which reported its problem)."""
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
    if c.hostname and (len(c.hostname) > 64 or not spec.HOSTNAME.match(c.hostname)):
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
    problems += check_host(c.host)
    problems += check_healthcheck(c.healthcheck)
    return problems


def check_healthcheck(hc: Healthcheck, where: str = "healthcheck") -> list[str]:
    """Docker's rules: a known test form, durations 0 or at least 1 ms, retries >= 0."""
    problems: list[str] = []
    if hc.test and (hc.test[0] not in ("CMD", "CMD-SHELL", "NONE")
                    or (hc.test[0] == "NONE") != (len(hc.test) == 1)
                    or (hc.test[0] == "CMD-SHELL" and len(hc.test) != 2)):
        problems.append(f"{where}.test: {list(hc.test)!r} is not [\"CMD\", ...], "
                        f"[\"CMD-SHELL\", LINE] or [\"NONE\"]")
    for name in ("interval", "timeout", "start_period", "start_interval"):
        value = getattr(hc, name)
        if value != 0 and not value >= MIN_HEALTH_DURATION:
            problems.append(f"{where}.{name}: {name.replace('_', ' ')} in Healthcheck "
                            f"cannot be less than 1ms, got {value}s")
    if hc.retries < 0:
        problems.append(f"{where}.retries: --health-retries cannot be negative")
    return problems


_CPU_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*\Z")


def parse_cpu_list(text: str) -> set[int]:
    """``0-2,4`` -> {0, 1, 2, 4} (the kernel's list format); ValueError when it is not
    one."""
    if not _CPU_LIST.match(text):
        raise ValueError(text)
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        if high and int(high) < int(low):
            raise ValueError(text)
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def check_cpuset(text: str, where: str = "host.cpuset_cpus") -> list[str]:
    """Docker's: the list format, and only CPUs this machine lets the daemon use."""
    try:
        wanted = parse_cpu_list(text)
    except ValueError:
        return [f"{where}: invalid value {text!r} for cpuset cpus (e.g. 0-1,3)"]
    available = os.sched_getaffinity(0)
    if not wanted <= available:
        have = ",".join(str(c) for c in sorted(available))
        return [f"{where}: Requested CPUs are not available - requested {text}, "
                f"available: {have}"]
    return []


def check_sysctl(entry: str, h: HostConfig, where: str) -> list[str]:
    """One ``key=value``: namespaced (Docker's list) and not in a namespace the
    container shares with the host."""
    key, sep, value = entry.partition("=")
    if not sep or not _SYSCTL_KEY.match(key) or "\n" in value or "\x00" in value:
        return [f"{where}: {entry!r} is not KEY=VALUE (e.g. net.ipv4.ip_forward=1)"]
    if key.startswith("net."):
        if h.network_mode == "host" or h.network_mode.startswith("container:"):
            return [f"{where}: sysctl {key!r} is not allowed: the container shares the "
                    f"{h.network_mode} network namespace"]
        return []
    if key in SYSCTL_IPC or key.startswith("fs.mqueue."):
        if h.ipc_mode == "host" or h.ipc_mode.startswith("container:"):
            return [f"{where}: sysctl {key!r} is not allowed: the container shares the "
                    f"{h.ipc_mode} IPC namespace"]
        return []
    return [f"{where}: sysctl {key!r} is not allowed: it is not namespaced and would change "
            f"the whole host (allowed: net.*, fs.mqueue.*, {', '.join(SYSCTL_IPC)})"]


# ------------------------------------------------------------------ volumes
# Here, not in volumes.py (the daemon's volume service), so that the clients' flag
# parsing checks a volume's name and options without importing the service.

VOLUME_DRIVER = "local"
MAX_VOLUME_NAME = 255
_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]+\Z")   # Docker's local volume names
MIN_VOLUME_SIZE = 16 << 20        # runner.layers.MIN_SIZE: ext4 with a journal
MAX_VOLUME_SIZE = 16 << 40        # ext4's largest file system with 4 KiB blocks


def check_volume_name(name: str, where: str = "volume name") -> list[str]:
    """Docker's rule for a local volume's name, as problems naming ``where``."""
    if len(name) < 2:
        return [f"{where}: {name!r} is too short, names should be at least two "
                f"alphanumeric characters"]
    if len(name) > MAX_VOLUME_NAME:
        return [f"{where}: {name[:40]!r}... is longer than {MAX_VOLUME_NAME} characters"]
    if not _VOLUME_NAME.match(name):
        return [f"{where}: {name!r} includes invalid characters for a local volume name, "
                f"only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass "
                f"a host directory, use absolute path"]
    return []


def check_driver(driver: str, options: Mapping[str, str], where: str = "volume") -> list[str]:
    """The ``local`` driver only, with the one option ``size`` (volumes.py's docs)."""
    problems = []
    if driver not in ("", VOLUME_DRIVER):
        problems.append(f"{where}: driver: {driver!r} is not supported; sandboxd has only "
                        f"the local driver (volumes are directories the daemon owns)")
    for key, value in options.items():
        if key == "size":
            try:
                size = spec.parse_size(value, f"{where}: driver option size")
                if not MIN_VOLUME_SIZE <= size < MAX_VOLUME_SIZE:
                    problems.append(f"{where}: driver option size: {value!r} is outside "
                                    f"{MIN_VOLUME_SIZE >> 20}m to 16t")
            except InvalidArgument as e:
                problems.append(e.message)
            continue
        why = ("mounting a device or another filesystem (type, device, o) as a volume "
               "is not supported; use a bind mount or --tmpfs" if key in ("type", "device", "o")
               else "the local driver knows no such option (size=SIZE is the one)")
        problems.append(f"{where}: driver option {key!r}: {why}")
    return problems


def _check_volume_mounts(h: HostConfig) -> list[str]:
    """Volume mounts (a valid name, or "" for a new anonymous one; known options) and
    ``--volumes-from CONTAINER[:ro|rw]``."""
    problems = []
    for i, m in enumerate(h.mounts):
        if m.type != "volume":
            continue
        where = f"host.mounts[{i}]"
        if m.source:
            problems += check_volume_name(m.source, f"{where}.source")
        for option in m.options:
            if option != "nocopy" and not option.startswith(("label=", "opt=")):
                problems.append(f"{where}.options: {option!r} is not nocopy, label=K=V or "
                                f"opt=K=V")
        opts = dict(o[4:].partition("=")[::2] for o in m.options if o.startswith("opt="))
        problems += check_driver(VOLUME_DRIVER, opts, f"{where}.options")
    for i, entry in enumerate(h.volumes_from):
        name, _, mode = entry.partition(":")
        if check_name(name) or mode not in ("", "ro", "rw"):
            problems.append(f"host.volumes_from[{i}]: {entry!r} is not CONTAINER[:ro|rw]")
    return problems


def check_host(h: HostConfig) -> list[str]:
    """Every problem with a HostConfig (limits, namespaces, network, mounts ...)."""
    problems: list[str] = []
    cpus = len(os.sched_getaffinity(0))
    if h.nano_cpus is not None and h.nano_cpus <= 0:
        problems.append(f"host.nano_cpus: must be positive, got {h.nano_cpus}")
    elif h.nano_cpus and h.nano_cpus > cpus * 10**9:
        # Docker's words: a quota above every CPU there is would limit nothing.
        problems.append(f"host.nano_cpus: range of CPUs is from 0.01 to {cpus}.00, as "
                        f"there are only {cpus} CPUs available")
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
    if h.shm_size is not None and h.shm_size <= 0:
        problems.append(f"host.shm_size: {h.shm_size} must be a positive number of bytes")
    if h.network_aliases and (mode in ("default", "bridge", "none", "host")
                              or mode.startswith("container:")):
        problems.append("host.network_aliases: network-scoped alias is supported only for "
                        "containers in user defined networks")
    for i, alias in enumerate(h.network_aliases):
        if len(alias) > 255 or not _ALIAS.match(alias):
            problems.append(f"host.network_aliases[{i}]: {alias!r} is not a valid name "
                            f"(letters, digits, '_', '-' and '.')")
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
    problems += check_dns(h)
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
    # The runner's own mount checks, named by our field (a volume becomes a bind).
    problems += [p.replace("mounts[", "host.mounts[", 1) for p in spec.check_mounts(tuple(
        dataclasses.replace(m, type="bind", source="/") if m.type == "volume" else m
        for m in h.mounts))]
    problems += _check_volume_mounts(h)
    destinations = [m.destination.rstrip("/") for m in h.mounts]
    for d in sorted({d for d in destinations if destinations.count(d) > 1}):
        problems.append(f"host.mounts: {d} is mounted twice (duplicate mount point)")
    for name in ("cap_add", "cap_drop"):
        for cap in getattr(h, name):
            if cap_name(cap) != "ALL" and cap_name(cap) not in spec.KNOWN_CAPS:
                problems.append(f"host.{name}: unknown capability {cap!r}")
    problems += check_security_opt(h.security_opt)
    if h.storage_size is not None and h.storage_size != 0 and \
            h.storage_size < MIN_STORAGE_SIZE:
        problems.append(f"host.storage_size: {h.storage_size} bytes is below the minimum of "
                        f"{MIN_STORAGE_SIZE >> 20}m (or 0: no cap)")
    problems += check_log_config(h.log_driver, h.log_opts)
    if h.restart_policy not in RESTART_POLICIES:
        problems.append(f"host.restart_policy: invalid restart policy: unknown policy "
                        f"{h.restart_policy!r}; use one of 'no', 'always', 'on-failure', "
                        f"or 'unless-stopped'")
    elif h.restart_retries < 0:
        problems.append("host.restart_retries: invalid restart policy: maximum retry count "
                        "cannot be negative")
    elif h.restart_retries and h.restart_policy != "on-failure":
        problems.append(f"host.restart_retries: invalid restart policy: maximum retry count "
                        f"can only be used with 'on-failure' (not {h.restart_policy!r})")
    elif h.restart_policy != "no" and h.auto_remove:
        problems.append("host.auto_remove: can't create 'AutoRemove' container with restart "
                        "policy")
    if h.memory_reservation is not None and h.memory_reservation != UNLIMITED:
        if h.memory_reservation < spec.MIN_MEMORY:
            problems.append(f"host.memory_reservation: minimum memory reservation allowed "
                            f"is 6MB, got {h.memory_reservation}")
        elif h.memory not in (None, UNLIMITED) and h.memory < h.memory_reservation:
            problems.append("host.memory_reservation: Minimum memory limit can not be less "
                            "than memory reservation limit, see usage")
    if h.cpuset_cpus:
        problems += check_cpuset(h.cpuset_cpus)
    for i, entry in enumerate(h.sysctls):
        problems += check_sysctl(entry, h, f"host.sysctls[{i}]")
    for i, group in enumerate(h.group_add):
        if not _USER.match(group) or ":" in group:
            problems.append(f"host.group_add[{i}]: {group!r} is not a gid or group name")
    if h.timeout is not None and not h.timeout > 0:
        problems.append(f"host.timeout: must be a positive number of seconds, "
                        f"got {h.timeout}")
    if h.console_size and not spec.valid_console_size(h.console_size):
        problems.append(f"host.console_size: {list(h.console_size)} is not [rows, cols], "
                        f"each from 1 to 65535")
    return problems
