"""Docker's JSON shapes ↔ ours: a create body (``Config`` + ``HostConfig`` +
``NetworkingConfig``) becomes ``flags.build_config``'s keywords, the one road every
client's options take; records become ``/containers/json`` rows.

Every field of Docker's create body is in exactly one of three places here: mapped
(``_CONFIG``/``_HOST`` and the code below), harmless when at its zero value
(``_ZERO_OK``: the CLI sends them all), or refused with a 400 naming it when it asks for
something sandboxd does not do. A field name Docker does not have is refused too.
"""
from __future__ import annotations

import csv
import io
import shlex
import time
from typing import Any

from ..model import ContainerRecord
from ..render import status_text
from .http import HttpError

# Config / HostConfig fields whose zero value (None, "", 0, False, [], {}) or a listed
# default asks for nothing; any other value is refused by name.
_ZERO_OK_CONFIG = {"Domainname", "NetworkDisabled", "MacAddress", "OnBuild", "Shell"}
_ZERO_OK_HOST = {
    "ContainerIDFile", "VolumeDriver", "CgroupnsMode",
    "Cgroup", "OomScoreAdj", "UsernsMode", "Runtime", "Isolation",
    "CgroupParent", "BlkioWeight", "BlkioWeightDevice", "BlkioDeviceReadBps",
    "BlkioDeviceWriteBps", "BlkioDeviceReadIOps", "BlkioDeviceWriteIOps",
    "CpuRealtimePeriod", "CpuRealtimeRuntime", "CpusetMems", "Devices",
    "DeviceCgroupRules", "DeviceRequests", "KernelMemory", "KernelMemoryTCP",
    "MemorySwappiness", "CpuCount", "CpuPercent",
    "IOMaximumIOps", "IOMaximumBandwidth", "MaskedPaths", "ReadonlyPaths",
    "Annotations", "VolumeDriver", "LogConfig",
}
# What a client sends by default for fields we do not implement (not a request).
_DEFAULTS = {
    "CgroupnsMode": ("private", "host"), "Runtime": ("runc",), "Isolation": ("default",),
    "MemorySwappiness": (-1,), "VolumeDriver": ("local",),
    "LogConfig": ({"Type": "", "Config": {}}, {"Type": "json-file", "Config": {}}),
}
_WHY = {
    "Devices": "devices beyond the default set are not given to containers",
    "DeviceRequests": "GPUs and other device requests are not supported",
    "UsernsMode": "user namespace remapping is not supported",
    "CgroupParent": "a per-container cgroup parent is set by the daemon (--cgroup-parent)",
}


def _is_zero(name: str, value: Any) -> bool:
    return value in (None, "", 0, False, [], {}) or value in _DEFAULTS.get(name, ())


def _refuse(section: str, name: str, value: Any) -> HttpError:
    why = _WHY.get(name, "not supported by sandboxd")
    return HttpError(400, f"{section}.{name}={value!r}: {why} (docs/docker-api.md)")


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise HttpError(400, f"{where}: expected a list of strings, got {value!r}")


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise HttpError(400, f"{where}: expected an object, got {value!r}")
    return value


def _string_map(value: Any, where: str) -> dict[str, str]:
    """An object of strings (Labels, Tmpfs, Sysctls...): Go's ``map[string]string``."""
    mapping = _mapping(value, where)
    bad = next((k for k, v in mapping.items() if not isinstance(v, str)), None)
    if bad is not None:
        raise HttpError(400, f"{where}.{bad}: expected a string, got {mapping[bad]!r}")
    return mapping


def _flag(value: Any, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise HttpError(400, f"{where}: expected true or false, got {value!r}")
    return value


def _int(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise HttpError(400, f"{where}: expected an integer, got {value!r}")
    return value


# What the client will attach (it says so again in its attach request) and Windows'
# command-line quoting: nothing for the container's config.
_ANY_OK_CONFIG = {"AttachStdin", "AttachStdout", "AttachStderr", "StdinOnce", "ArgsEscaped"}
_CONFIG_KNOWN = _ANY_OK_CONFIG | {"Hostname", "User", "ExposedPorts", "Tty", "OpenStdin", "Env", "Cmd",
                 "Image", "Volumes", "WorkingDir", "Entrypoint", "Labels", "StopSignal", "StopTimeout",
                 "HostConfig", "NetworkingConfig", "Healthcheck"} | _ZERO_OK_CONFIG
_HOST_KNOWN = {"ConsoleSize", "Binds", "NetworkMode", "PortBindings", "AutoRemove", "CapAdd",
               "CapDrop", "Dns", "DnsOptions", "DnsSearch", "ExtraHosts", "IpcMode", "Links",
               "PidMode", "Privileged", "PublishAllPorts", "ReadonlyRootfs", "SecurityOpt",
               "StorageOpt", "Tmpfs", "UTSMode", "CpuShares", "Memory", "NanoCpus",
               "CpuPeriod", "CpuQuota", "MemorySwap", "Init", "PidsLimit", "Ulimits",
               "RestartPolicy", "Sysctls", "CpusetCpus", "MemoryReservation",
               "OomKillDisable", "Mounts", "VolumesFrom", "GroupAdd", "ShmSize",
               } | _ZERO_OK_HOST


def console_size(value: Any, where: str) -> list[int]:
    """Docker's ConsoleSize, the client's terminal ``[height, width]`` (absent or
    ``[0, 0]``: none), as the pty's ``[rows, cols]`` at start, or []."""
    size = value or [0, 0]
    if not isinstance(size, list) or len(size) != 2:
        raise HttpError(400, f"{where}: expected [height, width], got {size!r}")
    size = [_int(n, where) for n in size]
    return size if any(size) else []


def create_options(body: dict) -> tuple[str, dict[str, Any]]:
    """(image, ``build_config`` keywords) of a create body; a 400 naming the field for
    what is unknown, mistyped or unsupported."""
    for name, value in body.items():
        if name not in _CONFIG_KNOWN:
            raise HttpError(400, f"Config.{name}: unknown field")
        if name in _ZERO_OK_CONFIG and not _is_zero(name, value):
            raise _refuse("Config", name, value)
    host = _mapping(body.get("HostConfig"), "HostConfig")
    for name, value in host.items():
        if name not in _HOST_KNOWN:
            raise HttpError(400, f"HostConfig.{name}: unknown field")
        if name in _ZERO_OK_HOST and not _is_zero(name, value) and name != "LogConfig":
            raise _refuse("HostConfig", name, value)
    image = body.get("Image")
    if not isinstance(image, str) or not image:
        raise HttpError(400, "Config.Image: an image name is required")
    cmd = body.get("Cmd")
    entrypoint = body.get("Entrypoint")
    opts: dict[str, Any] = {
        "cmd": shlex.split(cmd) if isinstance(cmd, str) else _strings(cmd, "Config.Cmd"),
        "env": _strings(body.get("Env"), "Config.Env"),
        "workdir": _string(body.get("WorkingDir"), "Config.WorkingDir"),
        "user": _string(body.get("User"), "Config.User"),
        "hostname": _string(body.get("Hostname"), "Config.Hostname"),
        "tty": _flag(body.get("Tty"), "Config.Tty"),
        "open_stdin": _flag(body.get("OpenStdin"), "Config.OpenStdin"),
        "labels": _string_map(body.get("Labels"), "Config.Labels"),
        "expose": list(_mapping(body.get("ExposedPorts"), "Config.ExposedPorts")),
        "local_files": False,
    }
    if entrypoint is not None:
        opts["entrypoint"] = ([entrypoint] if isinstance(entrypoint, str)
                              else _strings(entrypoint, "Config.Entrypoint"))
    if body.get("StopSignal"):
        opts["stop_signal"] = _string(body["StopSignal"], "Config.StopSignal")
    if body.get("StopTimeout") is not None:
        opts["stop_timeout"] = _int(body["StopTimeout"], "Config.StopTimeout")
    opts.update(_host_options(host))
    opts.update(_healthcheck(body.get("Healthcheck")))
    # Config.Volumes: anonymous volumes (`docker run -v /path`); docker-py lists each
    # bind's destination there too, which that bind serves.
    bound = {b.split(":")[1] for b in opts["volumes"] if ":" in b}
    opts["volumes"] += [path for path in _mapping(body.get("Volumes"), "Config.Volumes")
                        if path not in bound]
    opts.update(_networking(body.get("NetworkingConfig"), opts.get("network_mode", "default")))
    return image, opts


def _host_options(h: dict) -> dict[str, Any]:
    o: dict[str, Any] = {}
    for key, name in (("Memory", "memory"), ("MemorySwap", "memory_swap"),
                      ("CpuQuota", "cpu_quota"), ("CpuPeriod", "cpu_period"),
                      ("CpuShares", "cpu_shares")):
        value = _int(h.get(key), f"HostConfig.{key}")
        if value:
            o[name] = value
    nano = _int(h.get("NanoCpus"), "HostConfig.NanoCpus")
    if nano:
        o["cpus"] = nano / 1e9
    pids = _int(h.get("PidsLimit"), "HostConfig.PidsLimit")
    if pids and pids > 0:
        o["pids_limit"] = pids
    ulimits = []
    for u in h.get("Ulimits") or ():
        if not isinstance(u, dict) or not isinstance(u.get("Name"), str):
            raise HttpError(400, f"HostConfig.Ulimits: expected {{Name, Soft, Hard}}, got {u!r}")
        ulimits.append(f"{u['Name']}={_int(u.get('Soft'), 'Ulimits.Soft')}:"
                       f"{_int(u.get('Hard'), 'Ulimits.Hard')}")
    o["ulimits"] = ulimits
    o["network_mode"] = _string(h.get("NetworkMode"), "HostConfig.NetworkMode") or "default"
    o["uts_mode"] = _string(h.get("UTSMode"), "HostConfig.UTSMode")
    o["ipc_mode"] = _string(h.get("IpcMode"), "HostConfig.IpcMode")
    o["pid_mode"] = _string(h.get("PidMode"), "HostConfig.PidMode")
    o["links"] = [_link(l) for l in _strings(h.get("Links"), "HostConfig.Links")]
    o["dns"] = _strings(h.get("Dns"), "HostConfig.Dns")
    o["dns_search"] = _strings(h.get("DnsSearch"), "HostConfig.DnsSearch")
    o["dns_opt"] = _strings(h.get("DnsOptions"), "HostConfig.DnsOptions")
    o["extra_hosts"] = _strings(h.get("ExtraHosts"), "HostConfig.ExtraHosts")
    o["ports"] = _port_bindings(_mapping(h.get("PortBindings"), "HostConfig.PortBindings"))
    o["publish_all_ports"] = _flag(h.get("PublishAllPorts"), "HostConfig.PublishAllPorts")
    o["volumes"] = _strings(h.get("Binds"), "HostConfig.Binds")
    o["tmpfs"] = _string_map(h.get("Tmpfs"), "HostConfig.Tmpfs")
    o["read_only"] = _flag(h.get("ReadonlyRootfs"), "HostConfig.ReadonlyRootfs")
    o["init"] = _flag(h.get("Init"), "HostConfig.Init")
    o["cap_add"] = _strings(h.get("CapAdd"), "HostConfig.CapAdd")
    o["cap_drop"] = _strings(h.get("CapDrop"), "HostConfig.CapDrop")
    o["security_opt"] = _strings(h.get("SecurityOpt"), "HostConfig.SecurityOpt")
    o["privileged"] = _flag(h.get("Privileged"), "HostConfig.Privileged")
    o["auto_remove"] = _flag(h.get("AutoRemove"), "HostConfig.AutoRemove")
    o["storage_opt"] = _string_map(h.get("StorageOpt"), "HostConfig.StorageOpt")
    o["restart"] = _restart(_mapping(h.get("RestartPolicy"), "HostConfig.RestartPolicy"))
    o["sysctls"] = _string_map(h.get("Sysctls"), "HostConfig.Sysctls")
    o["cpuset_cpus"] = _string(h.get("CpusetCpus"), "HostConfig.CpusetCpus")
    o["memory_reservation"] = _int(h.get("MemoryReservation"), "HostConfig.MemoryReservation")
    o["console_size"] = console_size(h.get("ConsoleSize"), "HostConfig.ConsoleSize")
    o["oom_kill_disable"] = _flag(h.get("OomKillDisable"), "HostConfig.OomKillDisable")
    o["group_add"] = _strings(h.get("GroupAdd"), "HostConfig.GroupAdd")
    o["volumes_from"] = _strings(h.get("VolumesFrom"), "HostConfig.VolumesFrom")
    # 0 is "the default" to the clients (64 MiB), as to build_config.
    o["shm_size"] = _int(h.get("ShmSize"), "HostConfig.ShmSize") or None
    mounts = h.get("Mounts") or []
    if not isinstance(mounts, list):
        raise HttpError(400, f"HostConfig.Mounts: expected a list, got {mounts!r}")
    o["mounts"] = [mount_text(m, f"HostConfig.Mounts[{i}]") for i, m in enumerate(mounts)]
    log = _mapping(h.get("LogConfig"), "HostConfig.LogConfig")
    if log.get("Type"):
        o["log_driver"] = _string(log["Type"], "HostConfig.LogConfig.Type")
    if log.get("Config"):
        o["log_opts"] = _string_map(log["Config"], "HostConfig.LogConfig.Config")
    return o


def _string(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise HttpError(400, f"{where}: expected a string, got {value!r}")
    return value


def _restart(policy: dict) -> str:
    """``RestartPolicy {Name, MaximumRetryCount}`` -> ``--restart``'s ``name[:N]``."""
    name = _string(policy.get("Name"), "HostConfig.RestartPolicy.Name") or "no"
    count = _int(policy.get("MaximumRetryCount"), "HostConfig.RestartPolicy.MaximumRetryCount")
    unknown = sorted(set(policy) - {"Name", "MaximumRetryCount"})
    if unknown:
        raise HttpError(400, f"HostConfig.RestartPolicy.{unknown[0]}: unknown field")
    if count and name != "on-failure":
        raise HttpError(400, f"HostConfig.RestartPolicy.MaximumRetryCount={count}: only "
                             f"\"on-failure\" takes a retry count, not {name!r}")
    return f"{name}:{count}" if count else name


def update_restart(policy: Any) -> dict[str, Any]:
    """``/containers/{id}/update``'s ``RestartPolicy`` -> ``container.update`` params
    ({} for the empty policy the CLI sends when ``--restart`` is not given)."""
    policy = _mapping(policy, "RestartPolicy")
    if not policy.get("Name"):
        return {}
    name, _, count = _restart(policy).partition(":")
    return {"restart_policy": name, "restart_retries": int(count or 0)}


# Docker's Healthcheck durations are nanoseconds; build_config's health_* take seconds.
_HEALTH_DURATIONS = {"Interval": "health_interval", "Timeout": "health_timeout",
                     "StartPeriod": "health_start_period",
                     "StartInterval": "health_start_interval"}


def _healthcheck(value: Any) -> dict[str, Any]:
    """``Config.Healthcheck`` -> ``build_config``'s ``health_*`` keywords. ``Test``:
    ``[]`` (the image's), ``["NONE"]``, ``["CMD", arg, ...]``, ``["CMD-SHELL", line]``."""
    doc = _mapping(value, "Config.Healthcheck")
    unknown = sorted(set(doc) - {"Test", "Retries", *_HEALTH_DURATIONS})
    if unknown:
        raise HttpError(400, f"Config.Healthcheck.{unknown[0]}: unknown field")
    out: dict[str, Any] = {}
    test = _strings(doc.get("Test"), "Config.Healthcheck.Test")
    if test == ["NONE"]:
        out["no_healthcheck"] = True
    elif test and test[0] == "CMD-SHELL" and len(test) == 2:
        out["health_cmd"] = test[1]
    elif test and test[0] == "CMD" and len(test) > 1:
        out["health_cmd"] = test[1:]
    elif test:
        raise HttpError(400, f"Config.Healthcheck.Test={test!r}: expected [\"NONE\"], "
                             f"[\"CMD\", arg, ...] or [\"CMD-SHELL\", command]")
    for key, name in _HEALTH_DURATIONS.items():
        ns = _int(doc.get(key), f"Config.Healthcheck.{key}")
        if ns is not None and ns < 0:
            raise HttpError(400, f"Config.Healthcheck.{key}={ns}: must not be negative")
        if ns:
            out[name] = ns / 1e9
    retries = _int(doc.get("Retries"), "Config.Healthcheck.Retries")
    if retries is not None and retries < 0:
        raise HttpError(400, f"Config.Healthcheck.Retries={retries}: must not be negative")
    if retries:
        out["health_retries"] = retries
    return out


# A Mounts entry's fields -> ``--mount`` keys (one parser, flags.parse_mount, checks
# both); a field not listed is refused by name.
_MOUNT_FIELDS = {"Type": "type", "Source": "source", "Target": "target",
                 "ReadOnly": "readonly", "Consistency": "consistency"}
_MOUNT_OPTIONS = {
    "BindOptions": {"Propagation": "bind-propagation", "NonRecursive": "bind-nonrecursive"},
    "VolumeOptions": {"NoCopy": "volume-nocopy", "Subpath": "volume-subpath"},
    "TmpfsOptions": {"SizeBytes": "tmpfs-size", "Mode": "tmpfs-mode"},
}


def mount_text(mount: Any, where: str) -> str:
    """One ``HostConfig.Mounts`` entry as the ``--mount`` text ``flags.parse_mount``
    takes (CSV-quoted, as the CLI's flag is)."""
    if not isinstance(mount, dict):
        raise HttpError(400, f"{where}: expected {{Type, Source, Target, ...}}, got {mount!r}")
    items: list[str] = []

    def add(key: str, value: Any, field: str) -> None:
        if value in (None, "", False, 0):
            return
        if isinstance(value, bool):
            items.append(key)
        elif key == "tmpfs-mode" and isinstance(value, int):
            items.append(f"{key}={value:o}")      # a number in JSON, octal to the flag
        elif isinstance(value, (str, int)) and key != "tmpfs-mode":
            items.append(f"{key}={value}")
        else:
            raise HttpError(400, f"{field}: expected a string, number or boolean, "
                                 f"got {value!r}")

    for field, value in mount.items():
        if field in _MOUNT_FIELDS:
            add(_MOUNT_FIELDS[field], value, f"{where}.{field}")
        elif field in _MOUNT_OPTIONS:
            known = _MOUNT_OPTIONS[field]
            for sub, sub_value in _mapping(value, f"{where}.{field}").items():
                if field == "VolumeOptions" and sub == "Labels":
                    items += [f"volume-label={k}={v}" for k, v in
                              _mapping(sub_value, f"{where}.VolumeOptions.Labels").items()]
                elif field == "VolumeOptions" and sub == "DriverConfig":
                    driver = _mapping(sub_value, f"{where}.VolumeOptions.DriverConfig")
                    extra = sorted(set(driver) - {"Name", "Options"})
                    if extra:
                        raise HttpError(400, f"{where}.VolumeOptions.DriverConfig.{extra[0]}"
                                             f": unknown field")
                    add("volume-driver", driver.get("Name"),
                        f"{where}.VolumeOptions.DriverConfig.Name")
                    items += [f"volume-opt={k}={v}" for k, v in _mapping(
                        driver.get("Options"),
                        f"{where}.VolumeOptions.DriverConfig.Options").items()]
                elif sub in known:
                    add(known[sub], sub_value, f"{where}.{field}.{sub}")
                else:
                    raise HttpError(400, f"{where}.{field}.{sub}: unknown or unsupported "
                                         f"field")
        else:
            raise HttpError(400, f"{where}.{field}: unknown or unsupported field")
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(items)
    return out.getvalue()


def _link(text: str) -> str:
    """Docker's ``name:alias`` or, from the API, ``/name:/me/alias``."""
    name, _, alias = text.partition(":")
    return f"{name.lstrip('/')}:{alias.rpartition('/')[2] or name.lstrip('/')}"


def _port_bindings(bindings: dict) -> list[str]:
    out = []
    for port, hosts in bindings.items():
        for b in hosts or [{}]:
            if not isinstance(b, dict):
                raise HttpError(400, f"HostConfig.PortBindings[{port}]: expected "
                                     f"[{{HostIp, HostPort}}], got {hosts!r}")
            ip, host_port = b.get("HostIp") or "", str(b.get("HostPort") or "")
            out.append(f"{ip}:{host_port}:{port}" if ip else
                       f"{host_port}:{port}" if host_port else port)
    return out


def _networking(value: Any, mode: str) -> dict[str, Any]:
    endpoints = _mapping(_mapping(value, "NetworkingConfig").get("EndpointsConfig"),
                         "NetworkingConfig.EndpointsConfig")
    out: dict[str, Any] = {}
    if len(endpoints) > 1:
        raise HttpError(400, "NetworkingConfig.EndpointsConfig: a container is created on "
                             "one network; connect it to more after the create")
    for name, ep in endpoints.items():
        if mode in ("default", "bridge", "") and name not in ("bridge", mode):
            out["network_mode"] = name
        ep = _mapping(ep, f"EndpointsConfig.{name}")
        ipam = _mapping(ep.get("IPAMConfig"), f"EndpointsConfig.{name}.IPAMConfig")
        if ipam.get("IPv4Address"):
            out["ip"] = ipam["IPv4Address"]
        aliases = _strings(ep.get("Aliases"), f"EndpointsConfig.{name}.Aliases")
        if aliases:
            out["network_aliases"] = aliases
    return out


def list_row(record: ContainerRecord) -> dict[str, Any]:
    """A row of ``GET /containers/json``."""
    c = record.config
    command = " ".join(shlex.quote(a) for a in (record.path, *record.args) if a)
    return {
        "Id": record.id, "Names": [f"/{record.name}"], "Image": c.image,
        "ImageID": record.image_id, "Command": command, "Created": int(record.created),
        "Ports": [{"IP": p.host_ip or "0.0.0.0", "PrivatePort": p.container_port,
                   "PublicPort": p.host_port, "Type": p.protocol} for p in record.ports],
        "Labels": c.labels_dict(), "State": record.state.status,
        "Status": status_text(record.state, time.time()),
        "HostConfig": {"NetworkMode": c.host.network_mode},
        "NetworkSettings": {"Networks": {e.network: {
            "IPAddress": e.ip_address, "IPPrefixLen": e.prefix_len, "Gateway": e.gateway,
            "MacAddress": e.mac_address, "Aliases": list(e.aliases) or None}
            for e in record.endpoints}},
        "Mounts": [{"Type": m.type, "Source": m.source, "Destination": m.destination,
                    "RW": not m.readonly} for m in c.host.mounts],
    }
