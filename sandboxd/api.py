"""The Python API: ``Client`` (blocking) and ``AsyncClient`` (asyncio), docker-py shaped.

::

    from sandboxd import Client

    with Client() as client:
        r = client.run("busybox", ["sh", "-c", "echo hi"], memory="64m", timeout=10)
        r.exit_code, r.stdout, r.oom_killed, r.timed_out       # 0, b"hi\\n", False, False

        c = client.containers.create("busybox", "sleep 60", name="napper", cpus=0.5)
        c.start()
        c.exec(["cat", "/proc/self/limits"]).stdout
        c.kill()
        c.wait().exit_code                                       # 137
        c.remove()

Keyword options are those of :func:`sandboxd.flags.build_config` (one model: the CLI's
flags go through the same function). ``client.run`` is a single ``container.run`` request
(create, attach, start, wait and remove in one round trip); see ``docs/operations.md``.

Errors are :mod:`sandboxd.errors` classes; ``run(..., check=True)`` raises
:class:`ContainerError` (exit status, stderr and the whole ``Result``) on a non-zero exit.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from .client import AsyncStream as AsyncAttachment
from .client import Stream as Attachment
from .client import connect, connect_async
from .envfile import parse_env
from .errors import Conflict, InvalidArgument, SandboxError
from .flags import build_config, build_update, split_command
from .model import ContainerConfig, ContainerRecord, ImageRecord, NetworkRecord
from .render import image_document, inspect_document, network_document
from .runner.spec import check_env
from .validate import check_name, parse_signal

__all__ = ["Client", "AsyncClient", "Result", "ExecResult", "ExitStatus", "ContainerError",
           "Container", "Image", "Network", "Attachment", "AsyncContainer", "AsyncImage",
           "AsyncNetwork", "AsyncAttachment"]

CHUNK = 1 << 20          # read size for uploads; the stream frames stdin smaller
# Pulls, pushes and loads report progress as Docker's JSON messages:
# {"status", "id"?, "current"?, "total"?} ("id" a short layer digest).
Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Result:
    """What ``client.run`` returns: the exit and everything the container wrote."""
    exit_code: int
    stdout: bytes
    stderr: bytes
    oom_killed: bool = False
    timed_out: bool = False
    duration: float = 0.0          # seconds, as seen by the client (request to result)
    id: str = ""                   # the container's id (gone already when removed)


@dataclass(frozen=True)
class ExecResult:
    exit_code: int | None          # None when detached
    stdout: bytes
    stderr: bytes
    id: str = ""                   # the exec session's id


@dataclass(frozen=True)
class ExitStatus:
    """``container.wait()``: how it ended."""
    exit_code: int
    oom_killed: bool = False
    timed_out: bool = False
    error: str = ""


class ContainerError(SandboxError):
    """``run(..., check=True)`` and the command exited non-zero (docker-py's name)."""
    code = "container_error"       # client-side only: never sent over the wire

    def __init__(self, result: Result, image: str, command: Sequence[str]):
        detail = result.stderr.decode("utf-8", "replace").strip()[-2000:]
        reason = ("timed out" if result.timed_out else "was killed for exceeding its memory "
                  "limit" if result.oom_killed else f"returned non-zero exit status "
                  f"{result.exit_code}")
        super().__init__(f"Command {list(command)!r} in image {image!r} {reason}"
                         + (f": {detail}" if detail else ""),
                         {"exit_code": result.exit_code, "id": result.id})
        self.result = result
        self.exit_status = result.exit_code
        self.stderr = result.stderr
        self.image = image
        self.command = list(command)


def _as_bytes(data: bytes | str | None) -> bytes:
    if data is None:
        return b""
    return data.encode() if isinstance(data, str) else bytes(data)


# Options whose config is built from what the caller's machine holds (files, the
# environment): a run that names one builds its config afresh every time.
_READS_CALLER = frozenset({"env_files", "environ", "security_opt", "local_files"})
_CONFIGS: dict[Any, ContainerConfig] = {}      # _config_key -> its config, newest last
CONFIG_CACHE = 64


_SCALARS = frozenset({str, bytes, int, float, bool, type(None)})


def _frozen(value: Any) -> Any:
    """``value`` as a hashable key of what it says; TypeError when it has no such form.
    (Scalars in a list are keyed in line: a call each was most of a run's key.)"""
    kind = type(value)
    if kind in _SCALARS:
        return (kind, value)                # 1 and True build different configs
    if kind is list or kind is tuple:
        return (tuple, tuple([(type(v), v) if type(v) in _SCALARS else _frozen(v)
                              for v in value]))
    if isinstance(value, Mapping):
        return (dict, tuple((_frozen(k), _frozen(v)) for k, v in value.items()))
    hash(value)                             # a frozen model object (Mount, Ulimit ...)
    return (kind, value)


def _config_key(image: str, cmd: Any, remove: bool, options: dict[str, Any]) -> Any:
    """What build_config's result depends on, or None when that includes the caller's
    machine: files it names, or its environment (``-e NAME`` without ``=``)."""
    if not _READS_CALLER.isdisjoint(options):
        return None
    env = options.get("env") or ()
    if not isinstance(env, Mapping) and any("=" not in str(e) for e in env):
        return None
    try:
        return _frozen((image, cmd, remove, sorted(options.items())))
    except TypeError:
        return None


def _build_config(image: str, cmd: Any, remove: bool, options: dict[str, Any]
                  ) -> ContainerConfig:
    """build_config, once per distinct set of arguments: a test suite or a notebook
    runs the same request again and again, and building one is ~60 us of Python (four
    times that when the caller was idle a few ms)."""
    key = _config_key(image, cmd, remove, options)
    cfg = _CONFIGS.pop(key, None) if key is not None else None
    if cfg is None:
        cfg = build_config(image, cmd, auto_remove=remove, **options)
        if key is not None and len(_CONFIGS) >= CONFIG_CACHE:
            del _CONFIGS[next(iter(_CONFIGS))]
    if key is not None:
        _CONFIGS[key] = cfg
    return cfg


def _run_params(image: str, cmd: Any, name: str | None, stdin: bool, remove: bool,
                detach: bool, options: dict[str, Any], server_info: Mapping[str, Any]
                ) -> tuple[dict[str, Any], ContainerConfig]:
    options.setdefault("open_stdin", stdin)
    cfg = _build_config(image, cmd, remove, options)
    params: dict[str, Any] = {"config": cfg.to_dict(), "stdin": stdin, "remove": remove,
                              "detach": detach}
    if name is not None:
        params["name"] = name
    # These callers read only the output and the result (which has the id): without
    # the created/started events a run costs the daemon two frames fewer. An older
    # daemon does not know the param: asked only of one that says it does.
    if "quiet-run" in server_info.get("features", ()):
        params["quiet"] = True
    return params, cfg


def _exit_status(data: Mapping[str, Any]) -> ExitStatus:
    return ExitStatus(int(data.get("exit_code", 0)), bool(data.get("oom_killed")),
                      bool(data.get("timed_out")), str(data.get("error") or ""))


def _connect(host: str | None, session: bool, autostart: bool | None) -> Any:
    return connect(host, autostart=autostart, session=session)


async def _aconnect(host: str | None, session: bool, autostart: bool | None) -> Any:
    return await connect_async(host, autostart=autostart, session=session)


# ---------------------------------------------------------------- blocking API

class Container:
    """A handle on one container. ``record`` is the daemon's view when last fetched;
    ``reload()`` refreshes it; ``attrs`` is Docker's inspect JSON of that record."""

    def __init__(self, client: Client, record: ContainerRecord):
        self.client = client
        self.record = record

    def __repr__(self) -> str:
        return f"<Container {self.short_id} {self.name}>"

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def short_id(self) -> str:
        return self.record.id[:12]

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def status(self) -> str:
        return self.record.state.status

    @property
    def attrs(self) -> dict[str, Any]:
        return inspect_document(self.record)

    @property
    def ports(self) -> dict[str, list[dict[str, str]] | None]:
        """Docker's ``NetworkSettings.Ports`` when last fetched: ``{"80/tcp":
        [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}`` (None: exposed, not published)."""
        return self.attrs["NetworkSettings"]["Ports"]

    def _call(self, op: str, **params: Any) -> Any:
        return self.client.call(op, {"id": self.record.id, **params})

    def reload(self) -> Container:
        self.record = ContainerRecord.from_dict(self._call("container.inspect"))
        return self

    def inspect(self) -> dict[str, Any]:
        return self.reload().attrs

    def start(self) -> None:
        self._call("container.start")

    def stop(self, timeout: int | None = None) -> None:
        self._call("container.stop", timeout=timeout)

    def restart(self, timeout: int | None = None) -> None:
        self._call("container.restart", timeout=timeout)

    def kill(self, signal: str | int = "SIGKILL") -> None:
        self._call("container.kill", signal=parse_signal(signal))

    def remove(self, force: bool = False, v: bool = False) -> None:
        """``v``: its anonymous volumes too (docker-py's name, ``sbx rm -v``)."""
        self._call("container.remove", force=force, volumes=v)

    def wait(self, condition: str = "not-running") -> ExitStatus:
        return _exit_status(self._call("container.wait", condition=condition))

    def pause(self) -> None:
        self._call("container.pause")

    def unpause(self) -> None:
        self._call("container.unpause")

    def rename(self, name: str) -> None:
        self._call("container.rename", name=name)
        self.reload()

    def commit(self, repository: str | None = None, tag: str | None = None,
               message: str = "", changes: Sequence[str] = ()) -> Image:
        """Docker's ``commit``: the container's changes as a new layer on its image
        (not for a container run with ``remove=True``: its changes live in a tmpfs),
        its config what the container ran with, then ``changes`` (Dockerfile
        instructions: ``["CMD [\"app\"]", "ENV A=1"]``)."""
        name = _target(repository, tag) if repository else None
        result = self._call("container.commit", name=name, message=message,
                            changes=list(changes))
        return self.client.images.get(result["id"])

    def update(self, **limits: Any) -> list[str]:
        """``memory``, ``memory_swap``, ``cpus``, ``cpu_quota``, ``cpu_period``,
        ``cpu_shares``, ``pids_limit`` (live when it runs) and ``restart`` (a policy,
        ``on-failure:3``); returns warnings."""
        result = self._call("container.update", **build_update(**limits))
        return list(result.get("warnings") or ())

    def top(self) -> dict[str, Any]:
        return self._call("container.top")

    def diff(self) -> list[dict[str, Any]]:
        """What the container changed in its filesystem, as ``docker diff`` lists it:
        ``{"path", "kind"}`` with kind 0 changed, 1 added, 2 deleted."""
        return list(self._call("container.changes")["changes"])

    def logs(self, *, stdout: bool = True, stderr: bool = True, timestamps: bool = False,
             tail: int = -1, since: float = 0, follow: bool = False) -> bytes:
        """Everything logged so far (``follow``: until the container stops)."""
        return self.logs_stream(stdout=stdout, stderr=stderr, timestamps=timestamps,
                                tail=tail, since=since, follow=follow).merged()

    def logs_stream(self, *, stdout: bool = True, stderr: bool = True,
                    timestamps: bool = False, tail: int = -1, since: float = 0,
                    follow: bool = False) -> Attachment:
        return self.client.stream("container.logs", {
            "id": self.id, "stdout": stdout, "stderr": stderr, "timestamps": timestamps,
            "tail": tail, "since": since, "follow": follow})

    def attach(self, *, stdin: bool = False, logs: bool = False, stream: bool = True,
               start: bool = False, detach_keys: str | None = None) -> Attachment:
        """``detach_keys``: Docker's (default ``ctrl-p,ctrl-q``), with a terminal."""
        params: dict[str, Any] = {"id": self.id, "stdin": stdin, "stdout": True,
                                  "stderr": True, "logs": logs, "stream": stream,
                                  "start": start}
        if detach_keys is not None:
            params["detach_keys"] = detach_keys
        return self.client.stream("container.attach", params)

    def exec(self, cmd: str | Sequence[str], *, env: Mapping[str, Any] | Sequence[str] = (),
             workdir: str = "", user: str = "", tty: bool = False,
             input: bytes | str | None = None, detach: bool = False) -> ExecResult:
        """Run ``cmd`` inside the running container and collect its output."""
        attachment = self.exec_stream(cmd, env=env, workdir=workdir, user=user, tty=tty,
                                      stdin=input is not None, detach=detach)
        if input is not None:
            attachment.send(_as_bytes(input))
            attachment.close_stdin()
        out, err, result = attachment.collect()
        return ExecResult(result.get("exit_code"), out, err, result.get("exec_id", ""))

    def exec_stream(self, cmd: str | Sequence[str], *,
                    env: Mapping[str, Any] | Sequence[str] = (), workdir: str = "",
                    user: str = "", tty: bool = False, stdin: bool = False,
                    detach: bool = False) -> Attachment:
        return self.client.stream("container.exec", exec_params(
            self.id, cmd, env, workdir, user, tty, stdin, detach))

    def stats(self) -> dict[str, Any]:
        """One sample pair's worth: the second of two samples ``interval`` apart, with
        ``cpu_percent`` computed as Docker does."""
        samples = [data for event, data in self.stats_stream(stream=False)
                   if event == "stats"]
        if not samples:              # it stopped before its first sample
            raise Conflict(f"container {self.name} is not running")
        return with_cpu_percent(samples[-1], samples[0] if len(samples) > 1 else None)

    def stats_stream(self, *, stream: bool = True, interval: float = 1.0) -> Attachment:
        return self.client.stream("container.stats", {"id": self.id, "stream": stream,
                                                       "interval": interval})

    def get_archive(self, path: str) -> tuple[bytes, dict[str, Any]]:
        """A tar of ``path`` inside the container, and its stat."""
        attachment = self.client.stream("container.archive_get",
                                         {"id": self.id, "path": path})
        data = bytearray()
        for event, chunk in attachment:
            if event == "data":
                data += chunk
        return bytes(data), attachment.result()

    def put_archive(self, path: str, data: bytes) -> None:
        """Unpack the tar ``data`` into the directory ``path`` inside the container."""
        attachment = self.client.stream("container.archive_put",
                                         {"id": self.id, "path": path})
        attachment.send(data)
        attachment.close_stdin()
        attachment.collect()


def exec_params(container_id: str, cmd: Any, env: Any, workdir: str, user: str, tty: bool,
                stdin: bool, detach: bool, detach_keys: str | None = None,
                console_size: Sequence[int] = ()) -> dict[str, Any]:
    argv = list(split_command(cmd))
    env_list = parse_env(env)
    problems = check_env(env_list, "env")
    if not argv:
        problems.append("cmd: no command given")
    if workdir and not workdir.startswith("/"):
        problems.append(f"workdir: {workdir!r} is not an absolute path")
    if problems:
        raise InvalidArgument.of(problems)
    params = {"id": container_id, "cmd": argv, "env": env_list, "workdir": workdir,
              "user": user, "tty": tty, "stdin": stdin, "detach": detach}
    if detach_keys is not None:
        params["detach_keys"] = detach_keys
    if console_size and tty:
        params["console_size"] = list(console_size)
    return params


def with_cpu_percent(sample: dict[str, Any], previous: dict[str, Any] | None
                     ) -> dict[str, Any]:
    """Docker's CPU %: Δcontainer CPU / Δhost CPU × online CPUs × 100."""
    percent = 0.0
    if previous:
        cpu = sample.get("cpu_ns", 0) - previous.get("cpu_ns", 0)
        system = sample.get("system_ns", 0) - previous.get("system_ns", 0)
        if cpu > 0 and system > 0:
            percent = cpu / system * (sample.get("online_cpus") or 1) * 100.0
    return {**sample, "cpu_percent": percent}


class Image:
    def __init__(self, client: Client, record: ImageRecord):
        self.client = client
        self.record = record

    def __repr__(self) -> str:
        return f"<Image {self.short_id} {' '.join(self.tags)}>"

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def short_id(self) -> str:
        return self.record.id.split(":", 1)[-1][:12]

    @property
    def tags(self) -> list[str]:
        return list(self.record.repo_tags)

    @property
    def attrs(self) -> dict[str, Any]:
        return image_document(self.record)

    def remove(self, force: bool = False) -> dict[str, Any]:
        return self.client.call("image.remove", {"name": self.id, "force": force})

    def tag(self, repository: str, tag: str | None = None) -> str:
        """Point ``repository[:tag]`` at this image; returns the full new name."""
        return self.client.images.tag(self.id, _target(repository, tag))

    def history(self) -> list[dict[str, Any]]:
        return self.client.images.history(self.id)


def _target(repository: str, tag: str | None) -> str:
    return f"{repository}:{tag}" if tag else repository


def _with_progress(attachment: Any, progress: Progress | None) -> Any:
    """Read a pull/push/load stream to its end, handing progress events on."""
    for event, data in attachment:
        if event == "progress" and progress is not None:
            progress(data)
    return attachment.result()


def _send_file(attachment: Any, data: bytes | BinaryIO) -> None:
    if isinstance(data, (bytes, bytearray, memoryview)):
        attachment.send(bytes(data))
    else:
        while chunk := data.read(CHUNK):
            attachment.send(chunk)
    attachment.close_stdin()


class Network:
    """A handle on one network; ``attrs`` is Docker's ``network inspect`` JSON."""

    def __init__(self, client: Client, record: NetworkRecord):
        self.client = client
        self.record = record

    def __repr__(self) -> str:
        return f"<Network {self.short_id} {self.name}>"

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def short_id(self) -> str:
        return self.record.id[:12]

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def containers(self) -> list[str]:
        """Ids of the containers attached when last fetched."""
        return [c.id for c in self.record.containers]

    @property
    def attrs(self) -> dict[str, Any]:
        return network_document(self.record)

    def reload(self) -> Network:
        self.record = NetworkRecord.from_dict(
            self.client.call("network.inspect", {"id": self.id}))
        return self

    def remove(self) -> None:
        self.client.call("network.remove", {"id": self.id})

    def connect(self, container: Container | str, ipv4_address: str = "",
                aliases: Sequence[str] = ()) -> None:
        """Plug a running container into this network (a new interface, live)."""
        self.client.call("network.connect", _connect_params(self.id, container,
                                                            ipv4_address, aliases))

    def disconnect(self, container: Container | str, force: bool = False) -> None:
        self.client.call("network.disconnect", {"id": self.id,
                                                "container": _container_id(container),
                                                "force": force})


def _container_id(container: Any) -> str:
    return container if isinstance(container, str) else container.id


def _connect_params(network: str, container: Any, ip: str, aliases: Sequence[str]
                    ) -> dict[str, Any]:
    return {"id": network, "container": _container_id(container), "ip": ip or "",
            "aliases": list(aliases or ())}


def network_params(name: str, driver: str, subnet: str, gateway: str, ip_range: str,
                   internal: bool, labels: Mapping[str, str] | Sequence[str] | None,
                   options: Mapping[str, str] | Sequence[str] | None) -> dict[str, Any]:
    def pairs(value: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
        if isinstance(value, Mapping):
            return {str(k): str(v) for k, v in value.items()}
        return dict(str(e).partition("=")[::2] for e in value or ())
    return {"name": name, "driver": driver, "subnet": subnet, "gateway": gateway,
            "ip_range": ip_range, "internal": internal, "labels": pairs(labels),
            "options": pairs(options)}


class NetworkCollection:
    def __init__(self, client: Client):
        self.client = client

    def create(self, name: str, driver: str = "bridge", *, subnet: str = "",
               gateway: str = "", ip_range: str = "", internal: bool = False,
               labels: Mapping[str, str] | Sequence[str] | None = None,
               options: Mapping[str, str] | Sequence[str] | None = None) -> Network:
        """A user-defined bridge; without ``subnet`` the daemon picks a free one."""
        created = self.client.call("network.create", network_params(
            name, driver, subnet, gateway, ip_range, internal, labels, options))
        return self.get(created["id"])

    def get(self, network_id: str) -> Network:
        return Network(self.client, NetworkRecord.from_dict(
            self.client.call("network.inspect", {"id": network_id})))

    def list(self, filters: Mapping[str, Sequence[str] | str] | None = None) -> list[Network]:
        result = self.client.call("network.list", {"filters": _filters(filters)})
        return [Network(self.client, NetworkRecord.from_dict(n)) for n in result["networks"]]

    def prune(self, filters: Mapping[str, Sequence[str] | str] | None = None
              ) -> dict[str, Any]:
        """Remove user-defined networks no container is attached to: ``{removed}``."""
        return self.client.call("network.prune", {"filters": _filters(filters)})


class Volume:
    """A handle on one volume; ``attrs`` is Docker's ``volume inspect`` JSON."""

    def __init__(self, client: Client, attrs: dict[str, Any]):
        self.client = client
        self.attrs = attrs

    def __repr__(self) -> str:
        return f"<Volume {self.name}>"

    @property
    def name(self) -> str:
        return self.attrs["Name"]

    id = name

    def reload(self) -> Volume:
        self.attrs = self.client.call("volume.inspect", {"name": self.name})
        return self

    def remove(self, force: bool = False) -> None:
        self.client.call("volume.remove", {"name": self.name, "force": force})


class VolumeCollection:
    """docker-py's ``client.volumes``."""

    def __init__(self, client: Client):
        self.client = client

    def create(self, name: str | None = None, driver: str | None = None,
               driver_opts: Mapping[str, str] | None = None,
               labels: Mapping[str, str] | None = None) -> Volume:
        """A named volume (no name: a random one); an existing name is returned as is."""
        return Volume(self.client, self.client.call("volume.create", {
            "name": name or "", "driver": driver or "local",
            "driver_opts": dict(driver_opts or {}), "labels": dict(labels or {})}))

    def get(self, name: str) -> Volume:
        return Volume(self.client, self.client.call("volume.inspect", {"name": name}))

    def list(self, filters: Mapping[str, Sequence[str] | str] | None = None) -> list[Volume]:
        result = self.client.call("volume.list", {"filters": _filters(filters)})
        return [Volume(self.client, doc) for doc in result["volumes"]]

    def prune(self, filters: Mapping[str, Sequence[str] | str] | None = None,
              all: bool = False) -> dict[str, Any]:
        """Unused anonymous volumes (``all``: every unused one):
        ``{deleted, space_reclaimed}``."""
        return self.client.call("volume.prune", {"filters": _filters(filters), "all": all})


class ContainerCollection:
    def __init__(self, client: Client):
        self.client = client

    def create(self, image: str, cmd: str | Sequence[str] | None = None, *,
               name: str | None = None, **options: Any) -> Container:
        """A new container, not started (``options``: :func:`flags.build_config`)."""
        if name is not None:
            _check_name(name)
        cfg = build_config(image, cmd, **options)
        params: dict[str, Any] = {"config": cfg.to_dict()}
        if name is not None:
            params["name"] = name
        created = self.client.call("container.create", params)
        return self.get(created["id"])

    def run(self, image: str, cmd: str | Sequence[str] | None = None, *,
            name: str | None = None, remove: bool = False, **options: Any) -> Container:
        """Create and start in one request; returns the running container."""
        if name is not None:
            _check_name(name)
        params, _ = _run_params(image, cmd, name, False, remove, True, options,
                                self.client._conn.server_info)
        attachment = self.client.stream("container.run", params)
        _, _, result = attachment.collect()
        return self.get(result["id"])

    def get(self, container_id: str) -> Container:
        record = self.client.call("container.inspect", {"id": container_id})
        return Container(self.client, ContainerRecord.from_dict(record))

    def list(self, all: bool = False, filters: Mapping[str, Sequence[str] | str] | None = None,
             limit: int = -1) -> list[Container]:
        result = self.client.call("container.list", {
            "all": all, "filters": _filters(filters), "limit": limit})
        return [Container(self.client, ContainerRecord.from_dict(r))
                for r in result["containers"]]

    def prune(self, filters: Mapping[str, Sequence[str] | str] | None = None
              ) -> dict[str, Any]:
        return self.client.call("container.prune", {"filters": _filters(filters)})


def _filters(filters: Mapping[str, Sequence[str] | str] | None) -> dict[str, list[str]]:
    return {k: [v] if isinstance(v, str) else list(v) for k, v in (filters or {}).items()}


def _check_name(name: str) -> None:
    problems = check_name(name)
    if problems:
        raise InvalidArgument.of(problems)


class ImageCollection:
    def __init__(self, client: Client):
        self.client = client

    def import_(self, path: str | os.PathLike[str], name: str) -> Image:
        """A plain rootfs tarball (``tar`` or ``tar.gz``) as a one-layer image ``name``.
        The file is streamed to the daemon, which need not see the client's files."""
        with open(path, "rb") as f:
            attachment = self.client.stream("image.import", {"name": name})
            while chunk := f.read(CHUNK):
                attachment.send(chunk)
            attachment.close_stdin()
            _, _, result = attachment.collect()
        return self.get(result["id"])

    def get(self, name: str) -> Image:
        return Image(self.client, ImageRecord.from_dict(
            self.client.call("image.inspect", {"name": name})))

    def list(self, all: bool = False) -> list[Image]:
        result = self.client.call("image.list", {"all": all})
        return [Image(self.client, ImageRecord.from_dict(r)) for r in result["images"]]

    def remove(self, name: str, force: bool = False) -> dict[str, Any]:
        return self.client.call("image.remove", {"name": name, "force": force})

    def pull(self, name: str, progress: Progress | None = None,
             platform: str | None = None) -> Image:
        """Fetch ``name`` from the registry it names (``localhost:5000/app:1``), Docker
        Hub for a short name (``busybox``); from an index, the image for ``platform``
        (``linux/arm64``; default this machine's)."""
        params = {"name": name, **({"platform": platform} if platform else {})}
        result = _with_progress(self.client.stream("image.pull", params), progress)
        return self.get(result["id"])

    def push(self, name: str, progress: Progress | None = None) -> dict[str, Any]:
        """Send the image tagged ``name`` to the registry it names: ``{digest, size}``
        of the manifest."""
        return _with_progress(self.client.stream("image.push", {"name": name}), progress)

    def load(self, data: bytes | BinaryIO, progress: Progress | None = None) -> list[Image]:
        """Every image of an OCI layout or ``docker save`` tar (bytes or a binary file),
        streamed to the daemon."""
        attachment = self.client.stream("image.load", {})
        _send_file(attachment, data)
        result = _with_progress(attachment, progress)
        return [self.get(i["id"]) for i in result["images"]]

    def save(self, names: str | Sequence[str], out: BinaryIO) -> None:
        """Write the images (tags or ids) to ``out`` as one tar (an OCI layout that is
        also a ``docker save`` archive)."""
        attachment = self.client.stream("image.save", {
            "names": [names] if isinstance(names, str) else list(names)})
        for event, chunk in attachment:
            if event == "data":
                out.write(chunk)
        attachment.result()

    def tag(self, source: str, target: str) -> str:
        return self.client.call("image.tag", {"source": source, "target": target})["name"]

    def history(self, name: str) -> list[dict[str, Any]]:
        """Docker's ``image history``: ``[{id, created, created_by, size, comment,
        tags}]``, newest first."""
        return list(self.client.call("image.history", {"name": name})["history"])

    def build(self, path: str | os.PathLike[str], tag: str | Sequence[str] | None = None,
              *, dockerfile: str | None = None, buildargs: Mapping[str, str] | None = None,
              nocache: bool = False, network_mode: str = "default", target: str = "",
              labels: Mapping[str, str] | None = None, pull: bool = False,
              cache_from: Sequence[str] = (), extra_hosts: Mapping[str, str] | None = None,
              shmsize: int | None = None,
              progress: Callable[[str], None] | None = None) -> Image:
        """``docker build``: the Dockerfile (``dockerfile``, default ``path/Dockerfile``
        or ``path/Sandboxfile``) built with the directory ``path`` as its context (sent
        as a tar, ``.dockerignore`` applied). RUN steps get network ``network_mode``
        (the default bridge unless ``none``, ``host`` or a network's name), the
        ``extra_hosts`` ``{name: ip}`` and a /dev/shm of ``shmsize`` bytes.
        ``progress`` gets each output line (``Step 1/3 : FROM ...``). A failing step
        raises ``InvalidArgument`` with its message."""
        from .buildcontext import prepare
        text, name, spool = prepare(path, dockerfile)
        with spool:
            attachment = self.client.stream("image.build", {
                "dockerfile": text, "dockerfile_name": name,
                "tags": [tag] if isinstance(tag, str) else list(tag or ()),
                "build_args": dict(buildargs or {}), "no_cache": nocache,
                "network": network_mode, "target": target, "labels": dict(labels or {}),
                "pull": pull, "cache_from": list(cache_from),
                "add_hosts": [f"{k}:{v}" for k, v in (extra_hosts or {}).items()],
                **({"shm_size": shmsize} if shmsize else {})})
            _send_file(attachment, spool)
        for event, data in attachment:
            if event == "progress" and progress is not None and isinstance(data, dict):
                progress(str(data.get("stream", "")))
        return self.get(attachment.result()["id"])

    def prune(self, all: bool = False,
              filters: Mapping[str, Sequence[str] | str] | None = None) -> dict[str, Any]:
        """``docker image prune``: dangling images (with ``all``: every image no
        container uses) the prune ``filters`` take (``label``, ``label!``, ``until``);
        ``{deleted, untagged, space_reclaimed}``."""
        return self.client.call("image.prune", {"all": all, "filters": _filters(filters)})


class Client:
    """A connection to the daemon (started on demand when local and not running).

    ``host``: ``unix:///path`` (default ``$SANDBOXD_HOST`` or the system socket).
    ``session``: everything this client creates is removed when it disconnects.
    ``autostart``: start a local daemon when none answers (default: only for the
    system socket; see :func:`sandboxd.client.connect`).
    """

    def __init__(self, host: str | None = None, *, session: bool = False,
                 autostart: bool | None = None):
        self._conn = _connect(host, session, autostart)
        self.containers = ContainerCollection(self)
        self.images = ImageCollection(self)
        self.networks = NetworkCollection(self)
        self.volumes = VolumeCollection(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def call(self, op: str, params: dict[str, Any]) -> Any:
        """One daemon operation by name (``docs/operations.md``): the escape hatch
        under the methods above."""
        return self._conn.call(op, params)

    def stream(self, op: str, params: dict[str, Any]) -> Attachment:
        """One streaming daemon operation by name."""
        return self._conn.stream(op, params)

    def run(self, image: str, cmd: str | Sequence[str] | None = None, *,
            input: bytes | str | None = None, name: str | None = None,
            remove: bool = True, check: bool = False, **options: Any) -> Result:
        """Run ``cmd`` in a fresh container and wait for it (one request).

        ``input`` is fed to its stdin (then closed); without it stdin is empty.
        ``timeout`` (seconds) kills it and sets ``timed_out``. ``check`` raises
        :class:`ContainerError` on a non-zero exit. Setup errors raise their typed error
        (``CommandNotFound`` for a missing command ...).
        """
        if name is not None:
            _check_name(name)
        began = time.monotonic()
        params, cfg = _run_params(image, cmd, name, input is not None, remove, False,
                                  options, self._conn.server_info)
        attachment = self.stream("container.run", params)
        if input is not None:
            attachment.send(_as_bytes(input))
            attachment.close_stdin()
        out, err, final = attachment.collect()
        result = Result(int(final.get("exit_code", 0)), out, err,
                        bool(final.get("oom_killed")), bool(final.get("timed_out")),
                        time.monotonic() - began, str(final.get("id", "")))
        if check and (result.exit_code != 0 or result.timed_out):
            raise ContainerError(result, image, list(cfg.entrypoint or ()) + list(cfg.cmd))
        return result

    def info(self) -> dict[str, Any]:
        return self.call("system.info", {})

    def events(self, *, since: float | None = None, until: float | None = None,
               filters: Mapping[str, Sequence[str]] | None = None
               ) -> Iterator[dict[str, Any]]:
        """What happens to containers, images, networks and volumes, as Docker's event
        objects (docs/operations.md, ``system.events``): the daemon's kept events from
        ``since`` first (Unix seconds), then each as it happens, until ``until`` or until
        the iterator is closed. ``filters`` as ``sbx events --filter``'s."""
        stream = self.stream("system.events", {
            "since": since, "until": until,
            "filters": {k: [v] if isinstance(v, str) else list(v)
                        for k, v in (filters or {}).items()}})
        try:
            for name, data in stream:
                if name == "event":
                    yield data
            stream.result()
        finally:
            stream.cancel()

    def set_pool(self, image: str, count: int, **options: Any) -> dict[str, Any]:
        """Keep ``count`` prepared ``--rm`` containers of ``image`` with these
        :meth:`run` options ready (0: stop keeping them); a ``run`` with the same image
        and options takes one (docs/operations.md, "Pools")."""
        cfg = build_config(image, auto_remove=True, **options)
        return self.call("pool.set", {"config": cfg.to_dict(), "count": count})

    def pools(self) -> dict[str, Any]:
        """``{pools: [...], parked, memory_budget}``: every pool, declared or learned."""
        return self.call("pool.list", {})

    def version(self) -> dict[str, Any]:
        return self.call("system.version", {})

    def login(self, username: str, password: str, registry: str) -> dict[str, Any]:
        """Check the credentials against ``registry`` (``host:port``); the daemon keeps
        them for its pulls and pushes there. ``{status: "Login Succeeded"}``."""
        return self.call("system.login", {"registry": registry, "username": username,
                                          "password": password})

    def logout(self, registry: str) -> bool:
        """Forget the login for ``registry``; False when there was none."""
        return bool(self.call("system.logout", {"registry": registry})["removed"])


# ---------------------------------------------------------------- asyncio API

class AsyncContainer:
    """The asyncio twin of :class:`Container` (same methods, awaitable)."""

    def __init__(self, client: AsyncClient, record: ContainerRecord):
        self.client = client
        self.record = record

    def __repr__(self) -> str:
        return f"<AsyncContainer {self.short_id} {self.name}>"

    id = Container.id
    short_id = Container.short_id
    name = Container.name
    status = Container.status
    attrs = Container.attrs
    ports = Container.ports

    async def _call(self, op: str, **params: Any) -> Any:
        return await self.client.call(op, {"id": self.record.id, **params})

    async def reload(self) -> AsyncContainer:
        self.record = ContainerRecord.from_dict(await self._call("container.inspect"))
        return self

    async def inspect(self) -> dict[str, Any]:
        return (await self.reload()).attrs

    async def start(self) -> None:
        await self._call("container.start")

    async def stop(self, timeout: int | None = None) -> None:
        await self._call("container.stop", timeout=timeout)

    async def restart(self, timeout: int | None = None) -> None:
        await self._call("container.restart", timeout=timeout)

    async def kill(self, signal: str | int = "SIGKILL") -> None:
        await self._call("container.kill", signal=parse_signal(signal))

    async def remove(self, force: bool = False) -> None:
        await self._call("container.remove", force=force)

    async def wait(self, condition: str = "not-running") -> ExitStatus:
        return _exit_status(await self._call("container.wait", condition=condition))

    async def pause(self) -> None:
        await self._call("container.pause")

    async def unpause(self) -> None:
        await self._call("container.unpause")

    async def rename(self, name: str) -> None:
        await self._call("container.rename", name=name)
        await self.reload()

    async def commit(self, repository: str | None = None, tag: str | None = None,
                     message: str = "", changes: Sequence[str] = ()) -> AsyncImage:
        name = _target(repository, tag) if repository else None
        result = await self._call("container.commit", name=name, message=message,
                                  changes=list(changes))
        return await self.client.images.get(result["id"])

    async def update(self, **limits: Any) -> list[str]:
        result = await self._call("container.update", **build_update(**limits))
        return list(result.get("warnings") or ())

    async def top(self) -> dict[str, Any]:
        return await self._call("container.top")

    async def diff(self) -> list[dict[str, Any]]:
        return list((await self._call("container.changes"))["changes"])

    async def logs(self, *, stdout: bool = True, stderr: bool = True,
                   timestamps: bool = False, tail: int = -1, since: float = 0,
                   follow: bool = False) -> bytes:
        attachment = await self.client.stream("container.logs", {
            "id": self.id, "stdout": stdout, "stderr": stderr, "timestamps": timestamps,
            "tail": tail, "since": since, "follow": follow})
        return await attachment.merged()

    async def attach(self, *, stdin: bool = False, logs: bool = False, stream: bool = True,
                     start: bool = False) -> AsyncAttachment:
        return await self.client.stream("container.attach", {
            "id": self.id, "stdin": stdin, "stdout": True, "stderr": True, "logs": logs,
            "stream": stream, "start": start})

    async def exec(self, cmd: str | Sequence[str], *,
                   env: Mapping[str, Any] | Sequence[str] = (), workdir: str = "",
                   user: str = "", tty: bool = False, input: bytes | str | None = None,
                   detach: bool = False) -> ExecResult:
        attachment = await self.client.stream("container.exec", exec_params(
            self.id, cmd, env, workdir, user, tty, input is not None, detach))
        if input is not None:
            await attachment.send(_as_bytes(input))
            await attachment.close_stdin()
        out, err, result = await attachment.collect()
        return ExecResult(result.get("exit_code"), out, err, result.get("exec_id", ""))

    async def stats(self) -> dict[str, Any]:
        attachment = await self.client.stream("container.stats", {
            "id": self.id, "stream": False, "interval": 1.0})
        samples = [data async for event, data in attachment if event == "stats"]
        return with_cpu_percent(samples[-1], samples[0] if len(samples) > 1 else None)


class AsyncImage:
    def __init__(self, client: AsyncClient, record: ImageRecord):
        self.client = client
        self.record = record

    id = Image.id
    short_id = Image.short_id
    tags = Image.tags
    attrs = Image.attrs

    async def remove(self, force: bool = False) -> dict[str, Any]:
        return await self.client.call("image.remove", {"name": self.id, "force": force})


class AsyncContainerCollection:
    def __init__(self, client: AsyncClient):
        self.client = client

    async def create(self, image: str, cmd: str | Sequence[str] | None = None, *,
                     name: str | None = None, **options: Any) -> AsyncContainer:
        if name is not None:
            _check_name(name)
        params: dict[str, Any] = {"config": build_config(image, cmd,
                                                         **options).to_dict()}
        if name is not None:
            params["name"] = name
        created = await self.client.call("container.create", params)
        return await self.get(created["id"])

    async def run(self, image: str, cmd: str | Sequence[str] | None = None, *,
                  name: str | None = None, remove: bool = False,
                  **options: Any) -> AsyncContainer:
        if name is not None:
            _check_name(name)
        await self.client.open()
        params, _ = _run_params(image, cmd, name, False, remove, True, options,
                                self.client._conn.server_info)
        attachment = await self.client.stream("container.run", params)
        _, _, result = await attachment.collect()
        return await self.get(result["id"])

    async def get(self, container_id: str) -> AsyncContainer:
        record = await self.client.call("container.inspect", {"id": container_id})
        return AsyncContainer(self.client, ContainerRecord.from_dict(record))

    async def list(self, all: bool = False,
                   filters: Mapping[str, Sequence[str] | str] | None = None,
                   limit: int = -1) -> list[AsyncContainer]:
        result = await self.client.call("container.list", {
            "all": all, "filters": _filters(filters), "limit": limit})
        return [AsyncContainer(self.client, ContainerRecord.from_dict(r))
                for r in result["containers"]]

    async def prune(self, filters: Mapping[str, Sequence[str] | str] | None = None
                    ) -> dict[str, Any]:
        return await self.client.call("container.prune", {"filters": _filters(filters)})


class AsyncImageCollection:
    def __init__(self, client: AsyncClient):
        self.client = client

    async def import_(self, path: str | os.PathLike[str], name: str) -> AsyncImage:
        attachment = await self.client.stream("image.import", {"name": name})
        with open(path, "rb") as f:        # local file reads: short, not worth a thread
            while chunk := f.read(CHUNK):
                await attachment.send(chunk)
        await attachment.close_stdin()
        _, _, result = await attachment.collect()
        return await self.get(result["id"])

    async def get(self, name: str) -> AsyncImage:
        return AsyncImage(self.client, ImageRecord.from_dict(
            await self.client.call("image.inspect", {"name": name})))

    async def list(self, all: bool = False) -> list[AsyncImage]:
        result = await self.client.call("image.list", {"all": all})
        return [AsyncImage(self.client, ImageRecord.from_dict(r)) for r in result["images"]]

    async def remove(self, name: str, force: bool = False) -> dict[str, Any]:
        return await self.client.call("image.remove", {"name": name, "force": force})

    async def _with_progress(self, attachment: AsyncAttachment,
                             progress: Progress | None) -> Any:
        async for event, data in attachment:
            if event == "progress" and progress is not None:
                progress(data)
        return await attachment.result()

    async def pull(self, name: str, progress: Progress | None = None,
                   platform: str | None = None) -> AsyncImage:
        params = {"name": name, **({"platform": platform} if platform else {})}
        result = await self._with_progress(
            await self.client.stream("image.pull", params), progress)
        return await self.get(result["id"])

    async def push(self, name: str, progress: Progress | None = None) -> dict[str, Any]:
        return await self._with_progress(
            await self.client.stream("image.push", {"name": name}), progress)

    async def load(self, data: bytes, progress: Progress | None = None) -> list[AsyncImage]:
        attachment = await self.client.stream("image.load", {})
        await attachment.send(data)
        await attachment.close_stdin()
        result = await self._with_progress(attachment, progress)
        return [await self.get(i["id"]) for i in result["images"]]

    async def save(self, names: str | Sequence[str]) -> bytes:
        attachment = await self.client.stream("image.save", {
            "names": [names] if isinstance(names, str) else list(names)})
        data = bytearray()
        async for event, chunk in attachment:
            if event == "data":
                data += chunk
        await attachment.result()
        return bytes(data)

    async def tag(self, source: str, target: str) -> str:
        return (await self.client.call("image.tag", {"source": source,
                                                     "target": target}))["name"]

    async def history(self, name: str) -> list[dict[str, Any]]:
        return list((await self.client.call("image.history", {"name": name}))["history"])


class AsyncNetwork:
    def __init__(self, client: AsyncClient, record: NetworkRecord):
        self.client = client
        self.record = record

    id = Network.id
    short_id = Network.short_id
    name = Network.name
    containers = Network.containers
    attrs = Network.attrs

    async def reload(self) -> AsyncNetwork:
        self.record = NetworkRecord.from_dict(
            await self.client.call("network.inspect", {"id": self.id}))
        return self

    async def remove(self) -> None:
        await self.client.call("network.remove", {"id": self.id})

    async def connect(self, container: AsyncContainer | str, ipv4_address: str = "",
                      aliases: Sequence[str] = ()) -> None:
        await self.client.call("network.connect", _connect_params(
            self.id, container, ipv4_address, aliases))

    async def disconnect(self, container: AsyncContainer | str, force: bool = False
                         ) -> None:
        await self.client.call("network.disconnect", {
            "id": self.id, "container": _container_id(container), "force": force})


class AsyncNetworkCollection:
    def __init__(self, client: AsyncClient):
        self.client = client

    async def create(self, name: str, driver: str = "bridge", *, subnet: str = "",
                     gateway: str = "", ip_range: str = "", internal: bool = False,
                     labels: Mapping[str, str] | Sequence[str] | None = None,
                     options: Mapping[str, str] | Sequence[str] | None = None
                     ) -> AsyncNetwork:
        created = await self.client.call("network.create", network_params(
            name, driver, subnet, gateway, ip_range, internal, labels, options))
        return await self.get(created["id"])

    async def get(self, network_id: str) -> AsyncNetwork:
        return AsyncNetwork(self.client, NetworkRecord.from_dict(
            await self.client.call("network.inspect", {"id": network_id})))

    async def list(self, filters: Mapping[str, Sequence[str] | str] | None = None
                   ) -> list[AsyncNetwork]:
        result = await self.client.call("network.list", {"filters": _filters(filters)})
        return [AsyncNetwork(self.client, NetworkRecord.from_dict(n))
                for n in result["networks"]]

    async def prune(self, filters: Mapping[str, Sequence[str] | str] | None = None
                    ) -> dict[str, Any]:
        return await self.client.call("network.prune", {"filters": _filters(filters)})


class AsyncClient:
    """The asyncio twin of :class:`Client`: ``client = await AsyncClient.connect()`` or
    ``async with AsyncClient() as client``."""

    def __init__(self, host: str | None = None, *, session: bool = False,
                 autostart: bool | None = None):
        self._args = (host, session, autostart)
        self._conn: Any = None
        self.containers = AsyncContainerCollection(self)
        self.images = AsyncImageCollection(self)
        self.networks = AsyncNetworkCollection(self)

    @classmethod
    async def connect(cls, host: str | None = None, *, session: bool = False,
                      autostart: bool | None = None) -> AsyncClient:
        client = cls(host, session=session, autostart=autostart)
        await client.open()
        return client

    async def open(self) -> None:
        if self._conn is None:
            self._conn = await _aconnect(*self._args)

    async def __aenter__(self) -> AsyncClient:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def call(self, op: str, params: dict[str, Any]) -> Any:
        await self.open()
        return await self._conn.call(op, params)

    async def stream(self, op: str, params: dict[str, Any]) -> AsyncAttachment:
        await self.open()
        return await self._conn.stream(op, params)

    async def run(self, image: str, cmd: str | Sequence[str] | None = None, *,
                  input: bytes | str | None = None, name: str | None = None,
                  remove: bool = True, check: bool = False, **options: Any) -> Result:
        """See :meth:`Client.run`."""
        if name is not None:
            _check_name(name)
        began = time.monotonic()
        await self.open()
        params, cfg = _run_params(image, cmd, name, input is not None, remove, False,
                                  options, self._conn.server_info)
        attachment = await self.stream("container.run", params)
        if input is not None:
            await attachment.send(_as_bytes(input))
            await attachment.close_stdin()
        out, err, final = await attachment.collect()
        result = Result(int(final.get("exit_code", 0)), out, err,
                        bool(final.get("oom_killed")), bool(final.get("timed_out")),
                        time.monotonic() - began, str(final.get("id", "")))
        if check and (result.exit_code != 0 or result.timed_out):
            raise ContainerError(result, image, list(cfg.entrypoint or ()) + list(cfg.cmd))
        return result

    async def info(self) -> dict[str, Any]:
        return await self.call("system.info", {})

    async def set_pool(self, image: str, count: int, **options: Any) -> dict[str, Any]:
        cfg = build_config(image, auto_remove=True, **options)
        return await self.call("pool.set", {"config": cfg.to_dict(), "count": count})

    async def pools(self) -> dict[str, Any]:
        return await self.call("pool.list", {})

    async def version(self) -> dict[str, Any]:
        return await self.call("system.version", {})

    async def login(self, username: str, password: str, registry: str) -> dict[str, Any]:
        """See :meth:`Client.login`."""
        return await self.call("system.login", {"registry": registry, "username": username,
                                                "password": password})

    async def logout(self, registry: str) -> bool:
        return bool((await self.call("system.logout", {"registry": registry}))["removed"])
