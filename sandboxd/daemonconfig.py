"""The daemon's settings: :class:`DaemonConfig` and :func:`load_config` (defaults < the
JSON config file < flags). Kept apart from the server so that services can be given
their settings without importing the daemon (which imports them)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from . import protocol
from .errors import InvalidArgument
from .protocol import DEFAULT_ROOT, DEFAULT_SOCKET, Params
from .runner.spec import Ulimit, check_ulimits, parse_size, parse_ulimit

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class DaemonConfig:
    host: str = DEFAULT_SOCKET              # unix socket path
    root: str = DEFAULT_ROOT                # state directory
    default_ulimits: tuple[Ulimit, ...] = ()
    log_level: str = "info"
    ip_masq: bool = True                    # for the network service: masquerade bridges
    max_frame: int = protocol.MAX_FRAME     # bytes per frame, both directions
    frame_timeout: float = 30.0             # seconds for a started frame to complete
    max_connections: int = 256
    max_inflight: int = 64                  # requests in flight per connection
    stdin_buffer: int = 1 << 20             # queued stdin bytes per streaming request
    cgroup_parent: str = "sandboxd"         # containers' cgroups live under this name
    network_prefix: str = "sbx"             # names of our bridges and veths start with it
    group: str = "sandboxd"                 # the socket's group (members are root's equals)
    # A container's writable layer when it asks for no --storage-opt size (bytes; 0: no
    # cap). Sparse: a cap costs the host only what is written.
    default_storage_size: int = 10 << 30
    log_driver: str = "json-file"           # containers' default --log-driver
    log_opts: tuple[str, ...] = ("max-size=20m", "max-file=5")   # Docker local's 100 MB
    # Containers' nameservers when they give no --dns (dockerd's --dns; empty: the
    # host's, filtered as sandboxd/resolvconf.py says).
    dns: tuple[str, ...] = ()
    # Docker Hub (docker.io) through these first (http(s)://host[:port]), then hub_endpoint;
    # registries without checked TLS (host[:port] or CIDR); where docker.io is served.
    registry_mirrors: tuple[str, ...] = ()
    insecure_registries: tuple[str, ...] = ()
    hub_endpoint: str = "https://registry-1.docker.io"
    # The Docker Engine API's socket (sandboxd/dockerapi/); None: docker.sock beside
    # ``host`` (/run/sandboxd/docker.sock by default); "": not served.
    docker_host: str | None = None

    def docker_socket(self) -> str:
        if self.docker_host is None:
            return os.path.join(os.path.dirname(self.host), "docker.sock")
        return self.docker_host
    # Declared pools of prepared containers, "IMAGE[,OPTION=VALUE...]=N" (pools.py), and
    # the memory parked containers may use in all (bytes; 0: no learned pools).
    pools: tuple[str, ...] = ()
    pool_memory: int = 0


# Config-file keys: the flag names (``default-ulimit``) or their field spelling.
_CONFIG_KEYS = {"host": "host", "root": "root", "default-ulimit": "default_ulimits",
                "default-ulimits": "default_ulimits", "log-level": "log_level",
                "ip-masq": "ip_masq", "max-frame": "max_frame",
                "frame-timeout": "frame_timeout", "max-connections": "max_connections",
                "max-inflight": "max_inflight", "stdin-buffer": "stdin_buffer",
                "cgroup-parent": "cgroup_parent", "network-prefix": "network_prefix",
                "group": "group",
                "default-storage-size": "default_storage_size", "log-driver": "log_driver",
                "log-opts": "log_opts", "log-opt": "log_opts", "dns": "dns",
                "docker-host": "docker_host",
                "registry-mirrors": "registry_mirrors",
                "insecure-registries": "insecure_registries",
                "hub-endpoint": "hub_endpoint",
                "pools": "pools", "pool": "pools", "pool-memory": "pool_memory"}


def load_config(config_file: str | None = None, **flags: Any) -> DaemonConfig:
    """Defaults < the JSON config file < flags (``None`` means not given)."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(_read_config_file(config_file))
    values.update({k: v for k, v in flags.items() if v is not None and v != ()})
    problems: list[str] = []
    if "host" in values:
        values["host"] = protocol.parse_host(values["host"])
    if values.get("docker_host"):
        values["docker_host"] = protocol.parse_host(values["docker_host"])
        if values["docker_host"] == values.get("host", DEFAULT_SOCKET):
            problems.append("docker-host: must differ from host (two protocols, two sockets)")
    if "root" in values:
        if not str(values["root"]).startswith("/"):
            problems.append(f"root: must be an absolute path, got {values['root']!r}")
        values["root"] = os.path.normpath(str(values["root"]))
    if "default_ulimits" in values:
        ulimits = tuple(parse_ulimit(u) for u in values["default_ulimits"])
        problems += check_ulimits(ulimits, "default-ulimit")
        values["default_ulimits"] = ulimits
    if "log_level" in values:
        values["log_level"] = str(values["log_level"]).lower()
        if values["log_level"] not in LOG_LEVELS:
            problems.append(f"log-level: expected one of {', '.join(LOG_LEVELS)}, "
                            f"got {values['log_level']!r}")
    for key in ("max_frame", "frame_timeout", "max_connections", "max_inflight",
                "stdin_buffer"):
        if key in values and not values[key] > 0:
            problems.append(f"{key.replace('_', '-')}: must be positive, got {values[key]}")
    if "default_storage_size" in values:
        from .validate import MIN_STORAGE_SIZE
        try:
            size = parse_size(values["default_storage_size"], "default-storage-size")
        except InvalidArgument as e:
            problems.append(e.message)
        else:
            values["default_storage_size"] = size
            if 0 < size < MIN_STORAGE_SIZE or size < 0:
                problems.append(f"default-storage-size: {size} bytes is below the minimum "
                                f"of {MIN_STORAGE_SIZE >> 20}m (0: no cap)")
    if "log_opts" in values or "log_driver" in values:
        from .validate import check_log_config
        driver = str(values.get("log_driver", DaemonConfig.log_driver))
        opts = values.get("log_opts", () if driver == "none" else DaemonConfig.log_opts)
        if isinstance(opts, dict):                     # the config file's {"max-size": ..}
            opts = [f"{k}={v}" for k, v in opts.items()]
        opts = tuple(str(o) for o in opts)
        if driver != "none":            # a key not given keeps the built-in default
            given = {o.partition("=")[0] for o in opts}
            opts += tuple(o for o in DaemonConfig.log_opts if o.partition("=")[0] not in given)
        values["log_opts"] = opts
        problems += [p.replace("daemon.log_driver", "log-driver")
                     .replace("daemon.log_opts", "log-opt")
                     for p in check_log_config(driver, values["log_opts"], "daemon")]
        if not driver:
            problems.append("log-driver: name one of json-file, local, none")
    if "dns" in values:
        import ipaddress
        values["dns"] = tuple(str(ip) for ip in values["dns"])
        for ip in values["dns"]:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                problems.append(f"dns: {ip!r} is not an IP address")
    if {"registry_mirrors", "insecure_registries", "hub_endpoint"} & values.keys():
        from .images.registry import check_insecure, check_mirror
        for key, check in (("registry_mirrors", check_mirror),
                           ("insecure_registries", check_insecure)):
            checked = []
            for entry in values.get(key, ()):
                try:
                    checked.append(check(entry))
                except InvalidArgument as e:
                    problems.append(e.message)
            values[key] = tuple(checked)
        if "hub_endpoint" in values:
            try:
                values["hub_endpoint"] = check_mirror(values["hub_endpoint"])
            except InvalidArgument:
                problems.append(f"hub-endpoint: {values['hub_endpoint']!r} is not "
                                f"http(s)://host[:port]")
    if "pools" in values or "pool_memory" in values:
        from .pools import parse_budget, parse_declaration
        values["pools"] = tuple(str(d) for d in values.get("pools", ()))
        for declaration in values["pools"]:
            try:
                parse_declaration(declaration)
            except InvalidArgument as e:
                problems += e.details.get("problems") or [e.message]
        if "pool_memory" in values:
            try:
                values["pool_memory"] = parse_budget(values["pool_memory"])
            except InvalidArgument as e:
                problems.append(e.message)
    if values.get("max_frame", 0) > protocol.MAX_FRAME:
        problems.append(f"max-frame: at most {protocol.MAX_FRAME}, got {values['max_frame']}")
    if problems:
        raise InvalidArgument.of(problems)
    return DaemonConfig(**values)


def _read_config_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise InvalidArgument(f"config file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise InvalidArgument(f"config file {path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"config file {path}: expected a JSON object")
    data = {k.replace("_", "-"): v for k, v in data.items()}
    p = Params(data, f"config file {path}")
    values = {}
    types: dict[str, Any] = {"host": str, "root": str, "log-level": str, "ip-masq": bool,
                             "group": str, "cgroup-parent": str, "network-prefix": str,
                             "max-frame": int, "frame-timeout": float,
                             "max-connections": int, "max-inflight": int,
                             "stdin-buffer": int, "log-driver": str,
                             "default-storage-size": (str, int), "hub-endpoint": str,
                             "docker-host": str,
                             "default-storage-size": (str, int),
                             "pool-memory": (str, int)}
    for key, kind in types.items():
        value = p.get(key, kind, None)
        if value is not None:
            values[_CONFIG_KEYS[key]] = value
    # dockerd's daemon.json spelling: {"max-size": "10m", "max-file": "3"}; or a list.
    log_opts = p.get("log-opts", (dict, list), None, items=str)
    if log_opts is not None:
        values["log_opts"] = log_opts
    dns = p.get("dns", list, None, items=str)          # dockerd's daemon.json key
    if dns is not None:
        values["dns"] = tuple(dns)
    for key in ("registry-mirrors", "insecure-registries"):      # dockerd's keys
        value = p.get(key, list, None, items=str)
        if value is not None:
            values[_CONFIG_KEYS[key]] = tuple(value)
    for key in ("pool", "pools"):          # ["busybox,memory=64m=4", ...]
        value = p.get(key, list, None, items=str)
        if value is not None:
            values["pools"] = tuple(value)
    for key in ("default-ulimit", "default-ulimits"):
        value = p.get(key, list, None, items=str)
        if value is not None:
            values["default_ulimits"] = tuple(value)
    p.done()
    return values
