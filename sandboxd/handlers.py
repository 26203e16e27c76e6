"""The daemon's operations (``docs/operations.md``): params checked, service called,
results shaped. Every op reads its params with :class:`Params`, so a bad field is an
``invalid_argument`` naming it and nothing is created."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import platform
import tempfile
import time
from typing import Any, BinaryIO

from . import __version__
from . import config as cfg
from .containers import RUNNING, ContainerService
from .daemon import DaemonConfig, RequestContext, Server
from .errors import Conflict, InvalidArgument, NotFound
from .logs import read_entries, tail_lines
from .protocol import Params

UPLOAD_CAP = 8 << 30          # bytes of tar one import or cp may stream
ARCHIVE_CHUNK = 1 << 20       # bytes per data event of container.archive_get


def register(server: Server, config: DaemonConfig) -> ContainerService:
    service = ContainerService(config)
    ops = _Operations(service)
    server.on_startup(service.startup)
    server.on_shutdown(service.shutdown)
    server.register_cleanup("container", ops.session_cleanup)
    for name in ("create", "start", "wait", "kill", "stop", "restart", "remove", "inspect",
                 "list", "top", "stats_once", "pause", "unpause", "update", "rename", "prune",
                 "resize", "archive_stat"):
        server.register(f"container.{name}", getattr(ops, name))
    for name in ("run", "attach", "logs", "exec", "stats", "archive_get", "archive_put"):
        server.register(f"container.{name}", getattr(ops, name), streaming=True)
    server.register("image.import", ops.image_import, streaming=True)
    for name in ("list", "inspect", "remove"):
        server.register(f"image.{name}", getattr(ops, "image_" + name))
    server.register("system.info", ops.info)
    return service


class _Operations:
    def __init__(self, service: ContainerService):
        self.s = service

    # -- helpers
    def _config(self, p: Params) -> cfg.ContainerConfig:
        raw = p.get("config", dict)
        p.done()
        return cfg.ContainerConfig.from_dict(raw)

    def _track(self, ctx: RequestContext, record: cfg.ContainerRecord) -> None:
        if ctx.session is not None:
            ctx.session.track("container", record.id)

    async def session_cleanup(self, container_id: str) -> None:
        try:
            record = self.s._get(container_id)
        except NotFound:
            return
        await self.s.remove(record, force=True)

    # -- lifecycle
    async def create(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.create")
        name = p.get("name", (str, type(None)), None)
        config = self._config(p)
        record, warnings = self.s.create(config, name, ctx.session.id if ctx.session else "")
        self._track(ctx, record)
        return {"id": record.id, "warnings": warnings}

    async def start(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.start")
        ref = p.get("id", str)
        p.done()
        record = await self.s.start(self.s._get(ref))
        return {"id": record.id, "pid": record.state.pid}

    async def run(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.run")
        name = p.get("name", (str, type(None)), None)
        stdin = p.get("stdin", bool, False)
        detach = p.get("detach", bool, False)
        remove = p.get("remove", (bool, type(None)), None)
        config = self._config(p)
        if remove is not None and remove != config.host.auto_remove:
            config = dataclasses.replace(
                config, host=dataclasses.replace(config.host, auto_remove=remove))
        record, warnings = self.s.create(config, name, ctx.session.id if ctx.session else "")
        self._track(ctx, record)
        await ctx.send_event("created", {"id": record.id, "name": record.name,
                                         "warnings": warnings})
        try:
            record = await self.s.start(record, stdin=stdin)
        except BaseException:
            if config.host.auto_remove:
                await self.s.remove(self.s._get(record.id), force=True)
            raise
        queue, live = (None, None) if detach else self.s.subscribe(record)
        await ctx.send_event("started", {"id": record.id, "pid": record.state.pid})
        if detach:
            return {"id": record.id}
        try:
            if queue is not None:
                await self.s.forward(ctx, live, queue, stdin)
            final = await self.s.wait_exit(record, live)
        except asyncio.CancelledError:
            await self.s.remove(record, force=True) if config.host.auto_remove else \
                await self.s._kill_quietly(record.id)
            raise
        finally:
            self.s.unsubscribe(record, queue)
        return self.s._result(final)

    async def attach(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.attach")
        ref = p.get("id", str)
        stdin = p.get("stdin", bool, False)
        want = {1: p.get("stdout", bool, True), 2: p.get("stderr", bool, True)}
        logs = p.get("logs", bool, False)
        stream = p.get("stream", bool, True)
        start = p.get("start", bool, False)
        p.done()
        record = self.s._get(ref)
        if logs:
            for _ts, fd, data, _off in read_entries(record.log_path):
                if want.get(fd):
                    await ctx.send_event("stdout" if fd == 1 else "stderr", data)
        if not stream:
            return {"id": record.id}
        if start and record.state.status not in RUNNING:
            record = await self.s.start(record, stdin=stdin)
        queue, live = self.s.subscribe(record)
        if queue is None:
            raise Conflict("You cannot attach to a stopped container, start it first")
        try:
            await self.s.forward(ctx, live, queue, stdin)
        finally:
            self.s.unsubscribe(record, queue)
        return self.s._result(await self.s.wait_exit(record, live))

    async def wait(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.wait")
        ref = p.get("id", str)
        condition = p.get("condition", str, "not-running")
        p.done()
        if condition not in ("not-running", "next-exit", "removed"):
            raise InvalidArgument(f"container.wait: condition {condition!r} is not "
                                  f"not-running, next-exit or removed")
        record = self.s._get(ref)
        if condition == "removed":
            event = self.s.removed.setdefault(record.id, asyncio.Event())
            final = await self.s.wait_exit(record)
            await event.wait()
        else:
            final = await self.s.wait_exit(record)
        r = self.s._result(final)
        return {k: r[k] for k in ("exit_code", "oom_killed", "timed_out", "error")}

    async def kill(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.kill")
        ref = p.get("id", str)
        sig = p.get("signal", (str, int), "SIGKILL")
        p.done()
        await self.s.kill(self.s._get(ref), cfg.parse_signal(sig))
        return {}

    async def stop(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.stop")
        ref = p.get("id", str)
        timeout = p.get("timeout", (int, type(None)), None)
        p.done()
        await self.s.stop(self.s._get(ref), timeout)
        return {}

    async def restart(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.restart")
        ref = p.get("id", str)
        timeout = p.get("timeout", (int, type(None)), None)
        p.done()
        record = self.s._get(ref)
        await self.s.stop(record, timeout)
        record = await self.s.start(self.s._get(record.id))
        return {"id": record.id, "pid": record.state.pid}

    async def remove(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.remove")
        ref = p.get("id", str)
        force = p.get("force", bool, False)
        p.done()
        record = self.s._get(ref)
        await self.s.remove(record, force=force)
        if ctx.session is not None:
            ctx.session.untrack("container", record.id)
        return {}

    async def inspect(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.inspect")
        ref = p.get("id", str)
        p.done()
        return self.s._get(ref).to_dict()

    async def list(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.list")
        show_all = p.get("all", bool, False)
        filters = p.get("filters", dict, {})
        limit = p.get("limit", int, -1)
        p.done()
        records = [self.s.live[row["id"]].record if row["id"] in self.s.live
                   else self.s._record(row) for row in self.s.store.list_containers()]
        records.sort(key=lambda r: r.created, reverse=True)
        if not show_all and limit < 0:
            records = [r for r in records if r.state.status in RUNNING]
        records = cfg.filter_records(records, {k: list(v) for k, v in filters.items()})
        if limit >= 0:
            records = records[:limit]
        return {"containers": [r.to_dict() for r in records]}

    async def logs(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.logs")
        ref = p.get("id", str)
        follow = p.get("follow", bool, False)
        tail = p.get("tail", int, -1)
        timestamps = p.get("timestamps", bool, False)
        want = {1: p.get("stdout", bool, True), 2: p.get("stderr", bool, True)}
        since = p.get("since", (int, float), 0)
        until = p.get("until", (int, float), 0)
        p.done()
        record = self.s._get(ref)
        queue, _live = self.s.subscribe(record) if follow else (None, None)
        stamper = _Stamper() if timestamps else None
        try:
            entries = [e for e in read_entries(record.log_path)
                       if e[0] >= since and (not until or e[0] <= until)]
            for ts, fd, data, _off in tail_lines(entries, tail):
                if want.get(fd):
                    if stamper is not None:
                        data = stamper.stamp(fd, data, ts)
                    await ctx.send_event("stdout" if fd == 1 else "stderr", data)
            while queue is not None:
                item = await queue.get()
                if item is None:
                    break
                fd, data = item
                if want.get(fd):
                    if stamper is not None:
                        data = stamper.stamp(fd, data, time.time())
                    await ctx.send_event("stdout" if fd == 1 else "stderr", data)
        finally:
            self.s.unsubscribe(record, queue)
        return {}

    async def exec(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.exec")
        ref = p.get("id", str)
        cmd = p.get("cmd", list, items=str)
        env = p.get("env", list, [], items=str)
        workdir = p.get("workdir", str, "")
        user = p.get("user", str, "")
        tty = p.get("tty", bool, False)
        stdin = p.get("stdin", bool, False)
        detach = p.get("detach", bool, False)
        p.done()
        if not cmd:
            raise InvalidArgument("container.exec: cmd: no command given")
        return await self.s.exec(ctx, self.s._get(ref), cmd, env, workdir, user, tty, stdin,
                                 detach)

    async def resize(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.resize")
        ref = p.get("id", str)
        rows = p.get("rows", int)
        cols = p.get("cols", int)
        p.get("exec_id", str, "")
        p.done()
        live = self.s.live.get(self.s._get(ref).id)
        if live is None or live.terminal < 0:
            raise Conflict(f"container {ref} has no running terminal")
        from .containers import _resize
        _resize(live.terminal, rows, cols)
        return {}

    # -- inspection of a running container
    async def top(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.top")
        ref = p.get("id", str)
        p.done()
        record = self.s._get(ref)
        if record.state.status not in RUNNING:
            raise Conflict(f"Container {record.id[:12]} is not running")
        pids = await self.s.runner.pids(record.id)
        rows = []
        for pid in sorted(pids):
            rows.append(_ps_row(pid))
        return {"titles": ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
                "processes": [r for r in rows if r]}

    async def _sample(self, record: cfg.ContainerRecord) -> dict:
        stats = {}
        if record.state.status in RUNNING and record.id in self.s.live:
            stats = await self.s.runner.stats(record.id)
        h = record.config.host
        return {"read": time.time(), "cpu_ns": stats.get("cpu_usage_ns", 0),
                "system_ns": _system_ns(), "online_cpus": os.cpu_count() or 1,
                "memory_usage": stats.get("memory_current", 0),
                "memory_limit": h.memory or _mem_total(), "memory_cache": 0,
                "pids": stats.get("pids_current", 0), "pids_limit": max(h.pids_limit or 0, 0),
                "net_rx": 0, "net_tx": 0, "blk_read": 0, "blk_write": 0}

    async def stats_once(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.stats_once")
        ref = p.get("id", str)
        p.done()
        return await self._sample(self.s._get(ref))

    async def stats(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.stats")
        ref = p.get("id", str)
        stream = p.get("stream", bool, True)
        interval = p.get("interval", (int, float), 1.0)
        p.done()
        record = self.s._get(ref)
        count = 0
        while True:
            record = self.s._get(record.id)
            await ctx.send_event("stats", await self._sample(record))
            count += 1
            if record.state.status not in RUNNING or (not stream and count >= 2):
                return {}
            await asyncio.sleep(max(0.05, float(interval)))

    async def pause(self, ctx: RequestContext, params: dict) -> Any:
        return await self._freeze(params, "container.pause", True)

    async def unpause(self, ctx: RequestContext, params: dict) -> Any:
        return await self._freeze(params, "container.unpause", False)

    async def _freeze(self, params: dict, op: str, freeze: bool) -> Any:
        p = Params(params, op)
        ref = p.get("id", str)
        p.done()
        record = self.s._get(ref)
        want = "running" if freeze else "paused"
        if record.state.status != want:
            raise Conflict(f"Container {record.id[:12]} is {record.state.status}, not {want}")
        if freeze:
            await self.s.runner.pause(record.id)
        else:
            await self.s.runner.resume(record.id)
        self.s._set_state(record, status="paused" if freeze else "running")
        return {}

    async def update(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.update")
        ref = p.get("id", str)
        changes = {}
        for field in ("memory", "memory_swap", "nano_cpus", "cpu_quota", "cpu_period",
                      "cpu_shares", "pids_limit"):
            value = p.get(field, (int, type(None)), None)
            if value is not None:
                changes[field] = value
        p.done()
        record = self.s._get(ref)
        host = dataclasses.replace(record.config.host, **changes)
        if "nano_cpus" in changes:
            host = dataclasses.replace(host, cpu_quota=None)
        if "cpu_quota" in changes:
            host = dataclasses.replace(host, nano_cpus=None)
        config = dataclasses.replace(record.config, host=host).validate()
        if record.state.status in RUNNING:
            await self.s.runner.update(record.id, host.limits())
        self.s._save(dataclasses.replace(record, config=config))
        return {"warnings": []}

    async def rename(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.rename")
        ref = p.get("id", str)
        name = p.get("name", str)
        p.done()
        problems = cfg.check_name(name.lstrip("/"))
        if problems:
            raise InvalidArgument.of(problems)
        record = self.s._get(ref)
        self.s._save(dataclasses.replace(record, name=name.lstrip("/")))
        return {}

    async def prune(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.prune")
        p.get("filters", dict, {})
        p.done()
        removed = []
        for row in self.s.store.list_containers():
            record = self.s._record(row)
            if record.id not in self.s.live and record.state.status not in RUNNING:
                await self.s.remove(record)
                removed.append(record.id)
        return {"removed": removed, "space_reclaimed": 0}

    # -- files (sbx cp)
    async def archive_stat(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.archive_stat")
        ref = p.get("id", str)
        path = p.get("path", str)
        p.done()
        record = self.s._get(ref)
        return await asyncio.get_running_loop().run_in_executor(
            None, self.s.archive_stat, record, path)

    async def archive_get(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.archive_get")
        ref = p.get("id", str)
        path = p.get("path", str)
        p.done()
        record = self.s._get(ref)
        # Spooled to disk (by a thread: it is file I/O), then sent in 1 MiB chunks.
        with tempfile.TemporaryFile(dir=self.s.root) as spool:
            doc = await asyncio.get_running_loop().run_in_executor(
                None, self.s.archive_get, record, path, spool)
            spool.seek(0)
            while chunk := spool.read(ARCHIVE_CHUNK):
                await ctx.send_event("data", chunk)
        return {k: doc[k] for k in ("name", "size", "mode", "mtime", "link_target")}

    async def archive_put(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.archive_put")
        ref = p.get("id", str)
        path = p.get("path", str)
        p.done()
        if not path.startswith("/"):
            raise InvalidArgument(f"path: {path!r} must be absolute (start with /)")
        record = self.s._get(ref)
        os.close(self.s.open_root(record))    # not running: say so before taking the tar
        with await _spool_stdin(ctx, "container.archive_put", self.s.root) as spool:
            await asyncio.get_running_loop().run_in_executor(
                None, self.s.archive_put, self.s._get(record.id), path, spool)
        return {}

    # -- images
    async def image_import(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "image.import")
        name = p.get("name", str)
        path = p.get("path", (str, type(None)), None)
        message = p.get("message", str, "")
        p.done()
        loop = asyncio.get_running_loop()
        source = path if path is not None else \
            await _spool_stdin(ctx, "image.import", self.s.root)
        try:
            image_id = await loop.run_in_executor(
                None, lambda: self.s.images.import_rootfs(source, name, message=message))
        finally:
            if not isinstance(source, str):
                source.close()
        image = self.s.images.get(image_id)
        return {"id": image_id, "name": name, "size": image["size"],
                "warnings": image["doc"].get("warnings", [])}

    async def image_list(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "image.list")
        p.get("all", bool, False)
        p.get("filters", dict, {})
        p.done()
        return {"images": [self.s.images.record(i["id"]) for i in self.s.images.list()]}

    async def image_inspect(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "image.inspect")
        name = p.get("name", str)
        p.done()
        return self.s.images.record(name)

    async def image_remove(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "image.remove")
        name = p.get("name", str)
        force = p.get("force", bool, False)
        p.done()
        result = self.s.images.remove(name, force=force)
        return {"untagged": [r["Untagged"] for r in result if "Untagged" in r],
                "deleted": [r["Deleted"] for r in result if "Deleted" in r]}

    async def info(self, ctx: RequestContext, params: dict) -> Any:
        Params(params, "system.info").done()
        rows = [self.s._record(r) for r in self.s.store.list_containers()]
        status = [r.state.status for r in rows]
        uname = os.uname()
        return {"name": uname.nodename, "server_version": __version__,
                "containers": len(rows), "running": status.count("running"),
                "paused": status.count("paused"),
                "stopped": len(rows) - status.count("running") - status.count("paused"),
                "images": len(self.s.images.list()), "kernel_version": uname.release,
                "operating_system": _os_name(), "os_type": "linux",
                "architecture": platform.machine(), "ncpu": os.cpu_count() or 1,
                "mem_total": _mem_total(), "cgroup_driver": "cgroupfs",
                "cgroup_version": "1" if self.s.runner.cgroup_version == "v1" else "2",
                "root_dir": str(self.s.root), "default_runtime": "sandboxd-runner",
                "security_options": ["name=no-new-privileges", "name=cgroupns"],
                "warnings": []}


class _Stamper:
    """Docker's ``logs -t``: every line starts with its time. Output arrives in chunks
    that need not end at a newline, so remember per stream whether a line is open."""

    def __init__(self) -> None:
        self.open_line = {1: False, 2: False}

    def stamp(self, fd: int, data: bytes, ts: float) -> bytes:
        prefix = cfg.rfc3339(ts).encode() + b" "
        out = bytearray()
        for line in data.splitlines(keepends=True):
            if not self.open_line[fd]:
                out += prefix
            out += line
            self.open_line[fd] = not line.endswith((b"\n", b"\r"))
        return bytes(out)


async def _spool_stdin(ctx: RequestContext, op: str, directory: Any) -> BinaryIO:
    """The request's stdin frames until ``close_stdin``, in an unnamed temp file (at
    offset 0) under ``directory``: uploads stay off the heap."""
    spool = tempfile.TemporaryFile(dir=directory)
    try:
        size = 0
        while True:
            kind, data = await ctx.receive()
            if kind == "stdin":
                size += len(data)
                if size > UPLOAD_CAP:
                    raise InvalidArgument(f"{op}: more than {UPLOAD_CAP} bytes of input")
                spool.write(data)
            elif kind == "stdin_eof":
                spool.seek(0)
                return spool
    except BaseException:
        spool.close()
        raise


def _ps_row(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) // ticks
    started = _boot_time() + int(fields[19]) / ticks
    return [str(uid), str(pid), fields[1], "0", time.strftime("%H:%M", time.localtime(started)),
            "?", time.strftime("%H:%M:%S", time.gmtime(cpu)),
            cmd or stat.split("(", 1)[1].rsplit(")", 1)[0]]


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime"):
                return float(line.split()[1])
    return 0.0


def _system_ns() -> int:
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    return sum(int(x) for x in fields[:8]) * (10 ** 9 // os.sysconf("SC_CLK_TCK"))


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"
