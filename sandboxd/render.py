"""The daemon's records as Docker shows them: inspect documents, table rows, units.

:func:`inspect_document`, :func:`image_document` and :func:`network_document` are
``docker inspect``'s JSON (same field names); :func:`ps_row`, :func:`image_row` and
:func:`network_row` the fields ``--format`` sees, with the default tables and their
headers; :func:`format_table` lays rows out as Docker's tabwriter does. The human units
(``3 seconds``, ``4.86MB``, ``1.5MiB``) are Docker's ``go-units``.
"""
from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import InvalidArgument
from .gotemplate import render_template
from .model import (ContainerRecord, ContainerState, ImageRecord, NetworkRecord, PortBinding,
                    pairs)
from .runner import spec
from .runner.spec import Ulimit


def size_text(n: int) -> str:
    """Bytes in Docker's unit form where exact (10G, 64m is 64M here), else bytes."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


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


def _anonymous(volume: str) -> bool:
    """A volume the daemon named (64 hex digits): Docker's anonymous volumes."""
    return len(volume) == 64 and all(c in "0123456789abcdef" for c in volume)


def _mount_doc(record: ContainerRecord, m: spec.Mount) -> dict[str, Any]:
    """One entry of inspect's ``Mounts``, as Docker shows a bind and a volume."""
    if m.type == "bind":
        return {"Type": "bind", "Source": m.source, "Destination": m.destination,
                "Mode": "ro" if m.readonly else "", "RW": not m.readonly,
                "Propagation": "rprivate"}
    return {"Type": "volume", "Name": m.source,
            "Source": f"{record.volume_dir}/{m.source}/_data", "Destination": m.destination,
            "Driver": "local", "Mode": "ro" if m.readonly else "z", "RW": not m.readonly,
            "Propagation": ""}


def inspect_document(record: ContainerRecord) -> dict[str, Any]:
    """Docker's ``docker inspect`` object for a container (same field names), plus two
    of ours: ``State.TimedOut`` and ``HostConfig.Timeout`` (seconds)."""
    c, h, s = record.config, record.config.host, record.state
    binds = [f"{m.source}:{m.destination}" + (":ro" if m.readonly else "")
             for m in h.mounts if m.type == "bind" or (m.type == "volume" and not
                                                        _anonymous(m.source))]
    tmpfs = {m.destination: ",".join((("ro",) if m.readonly else ()) + m.options)
             for m in h.mounts if m.type == "tmpfs"}
    host_config = {
        "Binds": binds or None,
        "VolumesFrom": list(h.volumes_from) or None,
        "ContainerIDFile": "",
        "LogConfig": {"Type": h.log_driver or "json-file",
                      "Config": dict(o.partition("=")[::2] for o in h.log_opts)},
        "NetworkMode": h.network_mode,
        "PortBindings": {k: v for k, v in _port_map(h.port_bindings, ()).items()},
        "RestartPolicy": {"Name": h.restart_policy, "MaximumRetryCount": h.restart_retries},
        "AutoRemove": h.auto_remove,
        "ConsoleSize": list(h.console_size) or [0, 0],
        "CapAdd": list(h.cap_add) or None,
        "CapDrop": list(h.cap_drop) or None,
        "IpcMode": h.ipc_mode or "private",
        "Links": [f"/{l.name}:/{record.name}/{l.alias}" for l in h.links] or None,
        "Dns": list(h.dns),
        "DnsOptions": list(h.dns_options),
        "DnsSearch": list(h.dns_search),
        "ExtraHosts": list(h.extra_hosts) or None,
        "ShmSize": h.shm_size or 64 << 20,
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
        "MemoryReservation": h.memory_reservation or 0,
        "OomKillDisable": h.oom_kill_disable,
        "CpusetCpus": h.cpuset_cpus,
        "Sysctls": dict(e.partition("=")[::2] for e in h.sysctls) or None,
        "GroupAdd": list(h.group_add) or None,
        "Devices": [],
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
        "Hostname": record.hostname(),
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
        "Volumes": {m.destination: {} for m in h.mounts
                    if m.type == "volume" and _anonymous(m.source)} or None,
        "WorkingDir": c.workdir,
        "Entrypoint": list(c.entrypoint) if c.entrypoint else None,
        "OnBuild": None,
        "Labels": c.labels_dict(),
        "StopSignal": c.stop_signal,
    }
    if c.healthcheck.test:
        from .health import to_image
        config["Healthcheck"] = to_image(c.healthcheck)
    if c.stop_timeout is not None:
        config["StopTimeout"] = c.stop_timeout
    networks = {
        e.network: {
            "IPAMConfig": {"IPv4Address": h.ip_address}
            if h.ip_address and e.network == h.network_mode else None,
            "Links": None, "Aliases": list(e.aliases) or None,
            # what the embedded resolver answers with this address (user networks only)
            "DNSNames": None if e.network in ("bridge", "host", "none") else
            list(dict.fromkeys((*e.aliases, record.id[:12]))),
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
            **({"Health": {"Status": s.health.status,
                           "FailingStreak": s.health.failing_streak,
                           "Log": [{"Start": rfc3339(p.start), "End": rfc3339(p.end),
                                    "ExitCode": p.exit_code, "Output": p.output}
                                   for p in s.health.log]}}
               if s.health.status else {}),
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
        "Mounts": [_mount_doc(record, m) for m in h.mounts if m.type != "tmpfs"],
        "Config": config,
        "NetworkSettings": network_settings,
    }


def image_document(image: ImageRecord) -> dict[str, Any]:
    """Docker's ``docker image inspect`` object for an image."""
    from .health import to_image
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
            **({"Healthcheck": to_image(image.healthcheck)} if image.healthcheck.test
               else {}),
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
        if st == "paused":
            return text + " (Paused)"
        health = state.health.status
        if health:
            return f"{text} (health: starting)" if health == "starting" \
                else f"{text} ({health})"
        return text
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


def truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def ps_row(record: ContainerRecord, now: float, trunc: bool = True) -> dict[str, Any]:
    """The fields ``ps --format`` sees (Docker's names: ``.ID``, ``.Names`` ...)."""
    command = _quoted_command(record)
    labels = record.config.labels_dict()
    return {
        "ID": record.id[:12] if trunc else record.id,
        "Image": record.config.image,
        "Command": '"' + (truncate(command, 20) if trunc else command) + '"',
        "CreatedAt": _local_time(record.created),
        "RunningFor": human_duration(now - record.created) + " ago",
        "Ports": ports_text(record.ports, record.config.exposed_ports),
        "State": record.state.status,
        "Status": status_text(record.state, now),
        "Size": "0B",
        "Names": record.name,
        "Labels": ",".join(f"{k}={v}" for k, v in labels.items()),
        "Label": _LabelLookup(labels),
        "Mounts": ",".join(m.source if m.type in ("bind", "volume") else m.destination
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
        "Options": pairs(network.options),
        "Labels": pairs(network.labels),
    }


def network_row(network: NetworkRecord, trunc: bool = True) -> dict[str, Any]:
    """The fields ``network ls --format`` sees."""
    labels = pairs(network.labels)
    return {"ID": network.id[:12] if trunc else network.id, "Name": network.name,
            "Driver": network.driver, "Scope": network.scope, "IPv6": "false",
            "Internal": "true" if network.internal else "false",
            "Labels": ",".join(network.labels), "Label": lambda key: labels.get(key, ""),
            "CreatedAt": _local_time(network.created)}


NETWORK_HEADERS = {"ID": "NETWORK ID", "Name": "NAME", "Driver": "DRIVER", "Scope": "SCOPE",
                   "IPv6": "IPV6", "Internal": "INTERNAL", "Labels": "LABELS",
                   "CreatedAt": "CREATED AT"}
NETWORKS_TABLE = "table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}"


# ---------------------------------------------------------------- tables

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
