"""``/containers/...`` and ``/exec/...``: Docker's container endpoints, each a few lines
over the operation table (``calls.call``), with Docker's JSON and stream shapes."""
from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from .. import detachkeys
from ..errors import InvalidArgument, NotFound, SandboxError
from ..flags import build_config
from ..model import ContainerRecord
from ..render import inspect_document, rfc3339
from .calls import (MULTIPLEXED, RAW, STREAMS, ApiContext, Calls, frame, op_chunks,
                    pump_stdin, stream_response, tar_response)
from .http import (HttpError, Hijack, Request, Response, Route, empty, json_response,
                   route)
from .stats import docker_stats
from .translate import console_size, create_options, list_row, update_restart

ARCHIVE_BODY_CAP = 8 << 30
EXEC_KEEP = 600.0
STATS_GAP = 0.5          # seconds between the two samples of a stream=false stats


def docker_filters(raw: Any) -> dict[str, list[str]]:
    """Docker's ``filters`` query (``{"label": {"a=b": true}}`` or the old
    ``{"label": ["a=b"]}``) as the operation table's map of lists."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise HttpError(400, f"filters: expected a JSON object, got {raw!r}")
    out = {}
    for key, values in raw.items():
        if isinstance(values, dict):
            out[key] = [v for v, on in values.items() if on]
        elif isinstance(values, list):
            out[key] = values
        else:
            raise HttpError(400, f"filters.{key}: expected a list or a map, got {values!r}")
    return out



@dataclass
class _Exec:
    """An exec created but not necessarily started (Docker splits create and start)."""
    container: str
    cmd: list[str]
    env: list[str]
    workdir: str
    user: str
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool
    detach_keys: str = ""        # "" : Docker's default, ctrl-p,ctrl-q
    console_size: list[int] = field(default_factory=list)     # [h, w] or []
    ours: str = ""               # container.exec's exec id, once started
    ctx: ApiContext | None = None      # the running exec's: its stdin and resize frames
    pid: int = 0
    running: bool = False
    exit_code: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    created: float = field(default_factory=time.monotonic)


class ContainerRoutes:
    def __init__(self, calls: Calls):
        self.calls = calls
        self.execs: dict[str, _Exec] = {}

    def routes(self) -> list[Route]:
        c = "/containers/{id}"
        return [
            route("POST", "/containers/create", self.create),
            route("GET", "/containers/json", self.list),
            route("POST", "/containers/prune", self.prune),
            route("GET", c + "/json", self.inspect),
            route("POST", c + "/start", self.start),
            route("POST", c + "/stop", self.stop),
            route("POST", c + "/restart", self.restart),
            route("POST", c + "/kill", self.kill),
            route("POST", c + "/wait", self.wait),
            route("GET", c + "/logs", self.logs),
            route("POST", c + "/attach", self.attach),
            route("POST", c + "/resize", self.resize),
            route("GET", c + "/top", self.top),
            route("GET", c + "/changes", self.changes),
            route("GET", c + "/export", self.export),
            route("GET", c + "/stats", self.stats),
            route("POST", c + "/rename", self.rename),
            route("POST", c + "/pause", self.pause),
            route("POST", c + "/unpause", self.unpause),
            route("POST", c + "/update", self.update),
            route("DELETE", c, self.delete),
            route("HEAD", c + "/archive", self.archive_head),
            route("GET", c + "/archive", self.archive_get),
            route("PUT", c + "/archive", self.archive_put),
            route("POST", c + "/exec", self.exec_create),
            route("POST", "/exec/{id}/start", self.exec_start),
            route("POST", "/exec/{id}/resize", self.exec_resize),
            route("GET", "/exec/{id}/json", self.exec_inspect),
        ]

    async def _record(self, ref: str) -> ContainerRecord:
        return ContainerRecord.from_dict(await self.calls.call("container.inspect", {"id": ref}))

    # -- lifecycle
    async def create(self, req: Request) -> Response:
        image, opts = create_options(await req.json(required=True))
        try:
            config = build_config(image, **opts)
        except TypeError as e:             # a value of the wrong JSON type
            raise HttpError(400, f"invalid container config: {e}") from None
        try:        # no pull here: on a 404 the clients pull with their own progress
            self.calls.handlers.images.get(image)
        except NotFound:
            raise HttpError(404, f"No such image: {image}") from None
        name = req.arg("name") or None
        try:
            result = await self.calls.call("container.create",
                                           {"name": name, "config": config.to_dict()})
        except NotFound as e:
            # A network, a --link or --volumes-from container: not the image, which is
            # here. On a 404 the docker CLI would pull the image and create again.
            raise HttpError(400, e.message) from None
        return json_response({"Id": result["id"], "Warnings": result["warnings"]}, 201)

    async def list(self, req: Request) -> Response:
        result = await self.calls.call("container.list", {
            "all": req.flag("all"), "limit": req.integer("limit", -1),
            "filters": docker_filters(req.json_arg("filters"))})
        return json_response([list_row(ContainerRecord.from_dict(r))
                              for r in result["containers"]])

    async def inspect(self, req: Request) -> Response:
        return json_response(inspect_document(await self._record(req.params["id"])))

    async def start(self, req: Request) -> Response:
        record = await self._record(req.params["id"])
        if record.state.status in ("running", "paused"):
            return empty(304)
        # Docker's clients attach first: stdin is wired when the config asks for it.
        try:
            await self.calls.containers.start(record, stdin=record.config.open_stdin)
        except Exception:
            if record.config.host.auto_remove:     # dockerd's --rm: also when start fails
                await self.calls.call("container.remove", {"id": record.id, "force": True})
            raise
        return empty()

    async def stop(self, req: Request) -> Response:
        record = await self._record(req.params["id"])
        if record.state.status not in ("running", "paused", "restarting"):
            return empty(304)
        timeout = req.arg("t") or req.arg("timeout")
        await self.calls.call("container.stop", {
            "id": record.id, "timeout": req.integer("t" if req.arg("t") else "timeout", 0)
            if timeout else None})
        return empty()

    async def restart(self, req: Request) -> Response:
        timeout = req.arg("t") or req.arg("timeout")
        await self.calls.call("container.restart", {
            "id": req.params["id"],
            "timeout": req.integer("t" if req.arg("t") else "timeout", 0) if timeout else None})
        return empty()

    async def kill(self, req: Request) -> Response:
        raw = req.arg("signal", "SIGKILL")
        signal: str | int = int(raw) if raw.isdigit() else raw
        await self.calls.call("container.kill", {"id": req.params["id"], "signal": signal})
        return empty()

    async def wait(self, req: Request) -> Response:
        record = await self._record(req.params["id"])
        condition = req.arg("condition") or "not-running"
        task = asyncio.ensure_future(self.calls.call(
            "container.wait", {"id": record.id, "condition": condition}))
        # The head goes out once the wait is registered (its first step), as dockerd
        # does: the CLI starts the container when the head arrives.
        await asyncio.sleep(0)
        if task.done() and task.exception() is not None:
            raise task.exception()          # type: ignore[misc]

        async def body() -> AsyncIterator[bytes]:
            try:
                result = await task
            finally:
                task.cancel()
            # A start's failure was that request's error; dockerd's removed-waiters see
            # only a failed removal.
            error = {"Message": result["error"]} if result.get("error") and \
                condition != "removed" else None
            yield json_response({"StatusCode": result["exit_code"], "Error": error}).body
        return Response(200, chunks=body())

    async def delete(self, req: Request) -> Response:
        await self.calls.call("container.remove", {"id": req.params["id"],
                                                   "force": req.flag("force"),
                                                   "volumes": req.flag("v")})
        return empty()

    async def prune(self, req: Request) -> Response:
        result = await self.calls.call("container.prune", {
            "filters": docker_filters(req.json_arg("filters"))})
        return json_response({"ContainersDeleted": result["removed"] or None,
                              "SpaceReclaimed": result["space_reclaimed"]})

    async def rename(self, req: Request) -> Response:
        name = req.arg("name")
        if not name:
            raise HttpError(400, "rename: the name query parameter is required")
        await self.calls.call("container.rename", {"id": req.params["id"], "name": name})
        return empty()

    async def pause(self, req: Request) -> Response:
        await self.calls.call("container.pause", {"id": req.params["id"]})
        return empty()

    async def unpause(self, req: Request) -> Response:
        await self.calls.call("container.unpause", {"id": req.params["id"]})
        return empty()

    async def update(self, req: Request) -> Response:
        body = await req.json(required=True)
        mapping = {"Memory": "memory", "MemorySwap": "memory_swap", "NanoCpus": "nano_cpus",
                   "CpuQuota": "cpu_quota", "CpuPeriod": "cpu_period",
                   "CpuShares": "cpu_shares", "PidsLimit": "pids_limit"}
        changes: dict[str, Any] = {}
        for key, value in body.items():
            if key in mapping:
                if value:
                    changes[mapping[key]] = value
            elif key == "RestartPolicy":
                changes.update(update_restart(value))
            elif value not in (None, 0, "", [], {}, False):
                raise HttpError(400, f"update: {key} cannot be changed by sandboxd "
                                     f"(supported: {', '.join(mapping)}, RestartPolicy)")
        result = await self.calls.call("container.update", {"id": req.params["id"], **changes})
        return json_response({"Warnings": result["warnings"]})

    # -- output
    async def logs(self, req: Request) -> Response:
        record = await self._record(req.params["id"])
        stdout, stderr = req.flag("stdout"), req.flag("stderr")
        if not (stdout or stderr):
            raise HttpError(400, "logs: you must choose at least one stream (stdout=1 "
                                 "and/or stderr=1)")
        tail = req.arg("tail", "all")
        tty = record.config.tty
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(64)

        async def sink(name: str, data: Any) -> None:
            if name in STREAMS:
                await queue.put(data if tty else frame(STREAMS[name], data))

        ctx = ApiContext("container.logs", sink)
        params = {"id": record.id, "follow": req.flag("follow"),
                  "tail": -1 if tail in ("all", "") else req.integer("tail", -1),
                  "timestamps": req.flag("timestamps"), "stdout": stdout, "stderr": stderr,
                  "since": req.seconds("since") or 0, "until": req.seconds("until") or 0}
        return Response(200, content_type=RAW if tty else MULTIPLEXED,
                        chunks=op_chunks(self.calls.call("container.logs", params, ctx), queue))

    async def attach(self, req: Request) -> Hijack:
        record = await self._record(req.params["id"])
        tty = record.config.tty
        stdin = req.flag("stdin")
        params = {"id": record.id, "stdin": stdin, "stdout": req.flag("stdout"),
                  "stderr": req.flag("stderr"), "logs": req.flag("logs"),
                  "stream": req.flag("stream")}

        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async def sink(name: str, data: Any) -> None:
                if name in STREAMS:
                    writer.write(data if tty else frame(STREAMS[name], data))
                    await writer.drain()

            ctx = ApiContext("container.attach", sink)
            feeder = asyncio.ensure_future(pump_stdin(reader, ctx)) if stdin else None
            containers = self.calls.containers
            # Subscribed now, before the client's start: the output of a fast command
            # could come before this attach got its turn (5 docker runs of `echo hi` in
            # 2313, four at once, printed nothing).
            if params["stream"] and not params["logs"]:     # else the log has it
                containers.subscribe_next_start(record, ctx)
            try:
                if params["stream"] and not await containers.next_start(record):
                    return                  # its start failed, or it went: as dockerd's
                await self.calls.call("container.attach", params, ctx)
            except NotFound:
                pass                        # removed meanwhile: the stream just ends
            finally:
                containers.forget_next_start(record, ctx)
                if feeder is not None:
                    feeder.cancel()
        return Hijack(run, RAW if tty else MULTIPLEXED)

    async def resize(self, req: Request) -> Response:
        await self.calls.call("container.resize", {
            "id": req.params["id"], "rows": req.integer("h", 0), "cols": req.integer("w", 0)})
        return empty(200)

    async def top(self, req: Request) -> Response:
        result = await self.calls.call("container.top", {"id": req.params["id"]})
        return json_response({"Titles": result["titles"], "Processes": result["processes"]})

    async def changes(self, req: Request) -> Response:
        result = await self.calls.call("container.changes", {"id": req.params["id"]})
        return json_response([{"Path": c["path"], "Kind": c["kind"]}
                              for c in result["changes"]])

    async def export(self, req: Request) -> Response:
        return await tar_response(self.calls, "container.export", {"id": req.params["id"]})

    async def stats(self, req: Request) -> Response:
        record = await self._record(req.params["id"])
        if not req.flag("stream", True):
            sample = await self.calls.call("container.stats_once", {"id": record.id})
            if req.flag("one-shot"):
                return json_response(docker_stats(record, sample, None))
            # dockerd's single answer carries a previous sample (precpu) too: what the
            # CLI's --no-stream and docker-py compute the CPU percentage from.
            await asyncio.sleep(STATS_GAP)
            later = await self.calls.call("container.stats_once", {"id": record.id})
            return json_response(docker_stats(record, later, sample))
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(4)
        previous: list[dict] = []

        async def sink(name: str, data: Any) -> None:
            if name == "stats":
                await queue.put(json_response(docker_stats(
                    record, data, previous[0] if previous else None)).body)
                previous[:] = [data]

        ctx = ApiContext("container.stats", sink)
        return await stream_response(self.calls.call(
            "container.stats", {"id": record.id, "interval": 1.0}, ctx), queue, in_band=False)

    # -- files
    async def archive_head(self, req: Request) -> Response:
        stat = await self._stat(req)
        return Response(200, b"", content_type="application/x-tar",
                        headers=[("X-Docker-Container-Path-Stat", stat)])

    async def _stat(self, req: Request) -> str:
        path = req.arg("path")
        if not path:
            raise HttpError(400, "archive: the path query parameter is required")
        s = await self.calls.call("container.archive_stat",
                                  {"id": req.params["id"], "path": path})
        mode = s["mode"] | ((1 << 31) if s.get("is_dir") else 0) \
            | ((1 << 27) if s.get("link_target") else 0)
        doc = {"name": s["name"], "size": s["size"], "mode": mode,
               "mtime": rfc3339(s["mtime"]), "linkTarget": s.get("link_target", "")}
        return base64.b64encode(json.dumps(doc).encode()).decode()

    async def archive_get(self, req: Request) -> Response:
        stat = await self._stat(req)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(8)

        async def sink(name: str, data: Any) -> None:
            if name == "data":
                await queue.put(data)

        ctx = ApiContext("container.archive_get", sink)
        return Response(200, content_type="application/x-tar",
                        headers=[("X-Docker-Container-Path-Stat", stat)],
                        chunks=op_chunks(self.calls.call(
                            "container.archive_get",
                            {"id": req.params["id"], "path": req.arg("path")}, ctx), queue))

    async def archive_put(self, req: Request) -> Response:
        path = req.arg("path")
        if not path:
            raise HttpError(400, "archive: the path query parameter is required")
        ctx = ApiContext("container.archive_put")
        task = asyncio.ensure_future(self.calls.call(
            "container.archive_put", {"id": req.params["id"], "path": path}, ctx))
        try:
            async for chunk in req.chunks(ARCHIVE_BODY_CAP):
                if task.done():
                    break
                await ctx.push("stdin", chunk)
            ctx.feed("stdin_eof", True)
            await task
        finally:
            task.cancel()
        return empty(200)

    # -- exec
    async def exec_create(self, req: Request) -> Response:
        body = await req.json(required=True)
        record = await self._record(req.params["id"])
        if record.state.status == "paused":         # dockerd's messages
            raise HttpError(409, f"Container {record.id} is paused, unpause the container "
                                 f"before exec")
        if record.state.status != "running":
            raise HttpError(409, f"Container {record.id} is not running")
        cmd = body.get("Cmd")
        if not isinstance(cmd, list) or not cmd or not all(isinstance(a, str) for a in cmd):
            raise HttpError(400, "exec: Cmd must be a non-empty list of strings")
        if body.get("Privileged"):
            raise HttpError(400, "exec: Privileged is not supported: an exec has the "
                                 "container's own capabilities")
        env = body.get("Env") or []
        if not isinstance(env, list) or not all(isinstance(e, str) for e in env):
            raise HttpError(400, "exec: Env must be a list of KEY=value strings")
        # docker-py sends "detachKeys" (Go's JSON matches names case-insensitively)
        keys = body.get("DetachKeys") or body.get("detachKeys") or ""
        try:
            detachkeys.parse(keys)
        except InvalidArgument:
            raise HttpError(400, f"Invalid detach keys ({keys!r}) provided") from None
        # Inspected after their end (docker-py reads the exit code so), kept a while:
        # dockerd keeps them with the container, we keep EXEC_KEEP seconds' worth.
        now = time.monotonic()
        for key in [k for k, x in self.execs.items()
                    if not x.running and now - x.created > EXEC_KEEP]:
            del self.execs[key]
        exec_id = secrets.token_hex(32)
        self.execs[exec_id] = _Exec(
            record.id, cmd, env, body.get("WorkingDir") or "", body.get("User") or "",
            bool(body.get("Tty")), bool(body.get("AttachStdin")),
            bool(body.get("AttachStdout")), bool(body.get("AttachStderr")), keys,
            console_size(body.get("ConsoleSize"), "ConsoleSize"))
        return json_response({"Id": exec_id}, 201)

    def _exec(self, exec_id: str) -> _Exec:
        e = self.execs.get(exec_id)
        if e is None:
            raise HttpError(404, f"No such exec instance: {exec_id}")
        return e

    async def exec_start(self, req: Request) -> Response | Hijack:
        e = self._exec(req.params["id"])
        body = await req.json()
        if e.running or e.exit_code is not None:
            raise HttpError(409, f"exec {req.params['id']} has already been started")
        e.running = True
        params = {"id": e.container, "cmd": e.cmd, "env": e.env, "workdir": e.workdir,
                  "user": e.user, "tty": e.tty, "stdin": e.stdin,
                  "detach_keys": e.detach_keys or detachkeys.DEFAULT,
                  # the start's ConsoleSize, else the create's (the CLI sends both)
                  "console_size": (console_size(body.get("ConsoleSize"), "ConsoleSize")
                                   or e.console_size) if e.tty else []}
        if body.get("Detach"):
            ctx = e.ctx = ApiContext("container.exec", self._exec_events(e, None))
            asyncio.ensure_future(self._run_exec(e, params, ctx))
            return empty(200)

        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            ctx = e.ctx = ApiContext("container.exec", self._exec_events(e, writer))
            feeder = asyncio.ensure_future(pump_stdin(reader, ctx)) if e.stdin else None
            try:
                await self._run_exec(e, params, ctx)
            except SandboxError as exc:
                # As dockerd: a start that failed says why on the stream's stdout, which
                # the CLI prints before it exits with the exec's code (126).
                text = f"{exc.message}\r\n".encode()
                writer.write(text if e.tty else frame(STREAMS["stdout"], text))
                await writer.drain()
            finally:
                if feeder is not None:
                    feeder.cancel()
        return Hijack(run, RAW if e.tty else MULTIPLEXED)

    def _exec_events(self, e: _Exec, writer: asyncio.StreamWriter | None):
        wanted = {"stdout": e.stdout, "stderr": e.stderr}

        async def sink(name: str, data: Any) -> None:
            if name == "started":
                e.ours, e.pid = data["exec_id"], data["pid"]
            elif name == "detached" and writer is not None:
                writer.close()          # the client's stream ends; the exec goes on
            elif name in STREAMS and writer is not None and wanted[name]:
                writer.write(data if e.tty else frame(STREAMS[name], data))
                await writer.drain()
        return sink

    async def _run_exec(self, e: _Exec, params: dict, ctx: ApiContext) -> None:
        try:
            result = await self.calls.call("container.exec", params, ctx)
            e.exit_code = result.get("exit_code", 0)
        except Exception:
            e.exit_code = 126 if e.exit_code is None else e.exit_code
            raise
        finally:
            e.running = False
            e.ctx = None
            e.done.set()

    async def exec_resize(self, req: Request) -> Response:
        e = self._exec(req.params["id"])
        if e.ctx is None:
            raise HttpError(409, f"exec {req.params['id']} is not running")
        # Through the exec's own frames: the CLI resizes as soon as it has started it,
        # often before the process runs; the frame waits in the exec's inbox till then.
        e.ctx.feed("resize", (req.integer("h", 0), req.integer("w", 0)))
        return empty(200)

    async def exec_inspect(self, req: Request) -> Response:
        e = self._exec(req.params["id"])
        return json_response({
            "ID": req.params["id"], "ContainerID": e.container, "Running": e.running,
            "ExitCode": e.exit_code, "Pid": e.pid, "OpenStdin": e.stdin,
            "OpenStdout": e.stdout, "OpenStderr": e.stderr, "CanRemove": False,
            "DetachKeys": e.detach_keys,
            "ProcessConfig": {"entrypoint": e.cmd[0], "arguments": e.cmd[1:], "tty": e.tty,
                              "user": e.user, "privileged": False}})
