"""The daemon's operations (``docs/operations.md``): params checked, service called,
results shaped. Every op reads its params with :class:`Params`, so a bad field is an
``invalid_argument`` naming it and nothing is created."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import platform
import re
import shutil
import stat
import tempfile
import time
from typing import Any, BinaryIO, Callable

from . import __version__
from .containers import RUNNING, ContainerService
from .daemon import DaemonConfig, RequestContext, Server
from .errors import Conflict, InvalidArgument, NotFound
from .filters import filter_networks, filter_records
from .flags import config_from_options
from .images.oci import parse_time
from .images.reference import parse as parse_ref
from . import logs as logfiles
from .model import (BUILTIN_NETWORKS, ContainerConfig, ContainerRecord, NetworkContainer,
                    NetworkRecord)
from .protocol import Params
from .render import rfc3339
from .validate import check_name, parse_signal

log = logging.getLogger(__name__)
UPLOAD_CAP = 8 << 30          # bytes of tar one import, load or cp may stream
ARCHIVE_CHUNK = 1 << 20       # bytes per data event of container.archive_get, image.save
PROGRESS_INTERVAL = 0.1       # seconds between byte-count progress events of one layer


def register(server: Server, config: DaemonConfig) -> ContainerService:
    service = ContainerService(config)
    ops = _Operations(service)
    server.on_startup(service.startup)
    server.on_shutdown(service.shutdown)
    server.register_cleanup("container", ops.session_cleanup)
    server.register_cleanup("network", ops.session_network_cleanup)
    for name in ("create", "start", "wait", "kill", "stop", "restart", "remove", "inspect",
                 "list", "top", "stats_once", "pause", "unpause", "update", "rename", "prune",
                 "resize", "archive_stat", "commit"):
        server.register(f"container.{name}", getattr(ops, name))
    for name in ("run", "attach", "logs", "exec", "stats", "archive_get", "archive_put"):
        server.register(f"container.{name}", getattr(ops, name), streaming=True)
    server.register("container.export", ops.export, streaming=True)
    for name in ("import", "pull", "push", "load", "save", "build"):
        server.register(f"image.{name}", getattr(ops, "image_" + name), streaming=True)
    for name in ("list", "inspect", "remove", "tag", "history", "prune"):
        server.register(f"image.{name}", getattr(ops, "image_" + name))
    server.register("system.df", ops.df)
    for name in ("create", "list", "inspect", "remove", "prune", "connect", "disconnect"):
        server.register(f"network.{name}", getattr(ops, "network_" + name))
    server.register("system.info", ops.info)
    server.register("system.login", ops.login)
    server.register("system.logout", ops.logout)
    return service


class _Operations:
    def __init__(self, service: ContainerService):
        self.s = service

    # -- helpers
    def _config(self, p: Params) -> ContainerConfig:
        """A full ``config`` (the Python client builds one) or the caller's ``options``
        (``sbx``, which sends its flags as given and lets the daemon build)."""
        options = p.get("options", (dict, type(None)), None)
        raw = p.get("config", dict) if options is None else None
        p.done()
        if options is not None:
            return config_from_options(options)
        return ContainerConfig.from_dict(raw)

    def _track(self, ctx: RequestContext, record: ContainerRecord) -> None:
        if ctx.session is not None:
            ctx.session.track("container", record.id)

    async def _create(self, ctx: RequestContext, config: ContainerConfig,
                      name: str | None, events: bool = False, check_spec: bool = True
                      ) -> tuple[ContainerRecord, list[str]]:
        """Docker's run/create: an image that is not here is pulled first, when its
        name says which registry has it (there is no default registry); tried after a
        create that found something missing, so the image is looked up once when it is
        here. ``events``: send the pull's progress on this request's stream."""
        session = ctx.session.id if ctx.session else ""
        try:
            return self.s.create(config, name, session, check_spec=check_spec)
        except NotFound:
            if not await self._pull_missing(ctx if events else None, config.image):
                raise
        return self.s.create(config, name, session, check_spec=check_spec)

    async def _pull_missing(self, ctx: RequestContext | None, image: str) -> bool:
        """Pull ``image`` when it is missing and its name has a registry; True if it
        was pulled."""
        try:
            self.s.images.get(image)
            return False
        except NotFound:
            pass
        try:
            remote = parse_ref(image).domain
        except InvalidArgument:
            return False              # create reports the bad name
        if remote:
            await _in_thread(ctx, self.s.images.pull, image)
        return bool(remote)

    async def session_cleanup(self, container_id: str) -> None:
        try:
            record = self.s._get(container_id)
        except NotFound:
            return
        await self.s.remove(record, force=True)

    async def session_network_cleanup(self, network_id: str) -> None:
        """A session's network goes after its containers (cleanups run last-made first);
        one still used by another client's containers stays, and the log says so."""
        try:
            await self.s.networks.remove(network_id)
        except NotFound:
            pass
        except Conflict as e:
            log.warning("session network %s kept: %s", network_id[:12], e.message)

    # -- lifecycle
    async def create(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.create")
        name = p.get("name", (str, type(None)), None)
        config = self._config(p)
        record, warnings = await self._create(ctx, config, name)
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
        # The start builds the spec next: no separate check of it at create.
        record, warnings = await self._create(ctx, config, name, events=True,
                                              check_spec=False)
        self._track(ctx, record)
        await ctx.send_event("created", {"id": record.id, "name": record.name,
                                         "warnings": warnings})
        try:
            record = await self.s.start(record, stdin=stdin)
        except InvalidArgument:
            # What create's spec check refuses: a bad request leaves nothing behind.
            await self.s.remove(self.s._get(record.id), force=True)
            raise
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
            with logfiles.Snapshot(record.log_path) as snapshot:
                for e in snapshot.entries():
                    if want.get(e.stream):
                        await ctx.send_event("stdout" if e.stream == 1 else "stderr", e.data)
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
        number = parse_signal(sig)        # a bad signal is refused before the lookup
        await self.s.kill(self.s._get(ref), number)
        return {}

    async def stop(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.stop")
        ref = p.get("id", str)
        timeout = _timeout(p.get("timeout", (int, type(None)), None), "container.stop")
        p.done()
        await self.s.stop(self.s._get(ref), timeout)
        return {}

    async def restart(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.restart")
        ref = p.get("id", str)
        timeout = _timeout(p.get("timeout", (int, type(None)), None), "container.restart")
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
        filters = _filters(p)
        limit = p.get("limit", int, -1)
        p.done()
        records = [self.s.live[row["id"]].record if row["id"] in self.s.live
                   else self.s._record(row) for row in self.s.store.list_containers()]
        records.sort(key=lambda r: r.created, reverse=True)
        if not show_all and limit < 0:
            records = [r for r in records if r.state.status in RUNNING]
        records = filter_records(records, filters)
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
        if record.config.host.log_driver == "none":
            raise Conflict(f"configured logging driver does not support reading: container "
                           f"{record.name} was created with --log-driver none")
        # Subscribed before the files are opened: what comes after their sizes now
        # arrives through the queue, once.
        queue, _live = self.s.subscribe(record) if follow else (None, None)
        stamper = _Stamper() if timestamps else None
        try:
            with logfiles.Snapshot(record.log_path) as snapshot:
                if tail >= 0:
                    entries, short = snapshot.tail(tail, since, until) if tail else ([], False)
                else:
                    entries, short = snapshot.entries(since, until), True
                note = logfiles.dropped_note(snapshot, since, short)
                if note:
                    await ctx.send_event("notice", note)
                for e in entries:
                    if want.get(e.stream):
                        data = e.data
                        if stamper is not None:
                            data = stamper.stamp(e.stream, data, e.time)
                        await ctx.send_event("stdout" if e.stream == 1 else "stderr", data)
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
        if not (0 < rows <= 0xFFFF and 0 < cols <= 0xFFFF):
            raise InvalidArgument(f"container.resize: rows and cols must be from 1 to "
                                  f"65535, got {rows}x{cols}")
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

    async def _sample(self, record: ContainerRecord) -> dict:
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
        if not 0 < interval <= MAX_TIMEOUT:
            raise InvalidArgument(f"container.stats: interval must be above 0 and at most "
                                  f"{MAX_TIMEOUT} seconds, got {interval}")
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
        problems = check_name(name.lstrip("/"))
        if problems:
            raise InvalidArgument.of(problems)
        record = self.s._get(ref)
        self.s._save(dataclasses.replace(record, name=name.lstrip("/")))
        return {}

    async def prune(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.prune")
        _filters(p)
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
        async with self.s.files_root(record) as root:
            return await asyncio.get_running_loop().run_in_executor(
                None, self.s.archive_stat, root, record, path)

    async def archive_get(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.archive_get")
        ref = p.get("id", str)
        path = p.get("path", str)
        p.done()
        record = self.s._get(ref)
        # Spooled to disk (by a thread: it is file I/O), then sent in 1 MiB chunks.
        with tempfile.TemporaryFile(dir=self.s.root) as spool:
            async with self.s.files_root(record) as root:
                doc = await asyncio.get_running_loop().run_in_executor(
                    None, self.s.archive_get, root, record, path, spool)
            await _send_spool(ctx, spool)
        return {k: doc[k] for k in ("name", "size", "mode", "mtime", "link_target")}

    async def archive_put(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.archive_put")
        ref = p.get("id", str)
        path = p.get("path", str)
        p.done()
        if not path.startswith("/"):
            raise InvalidArgument(f"path: {path!r} must be absolute (start with /)")
        record = self.s._get(ref)
        with await _spool_stdin(ctx, "container.archive_put", self.s.root) as spool:
            record = self.s._get(record.id)
            async with self.s.files_root(record, write=True) as root:
                await asyncio.get_running_loop().run_in_executor(
                    None, self.s.archive_put, root, record, path, spool)
        return {}

    # -- images
    async def commit(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "container.commit")
        ref = p.get("id", str)
        name = p.get("name", (str, type(None)), None)
        message = p.get("message", str, "")
        p.done()
        record = self.s._get(ref)
        if record.config.host.auto_remove:
            raise Conflict(f"container {record.name} was started with --rm: its writable "
                           f"layer is a tmpfs inside the container, which cannot be "
                           f"committed; run it without --rm to commit it")
        created_by = " ".join([record.path, *record.args])
        async with self.s.upper(record):
            image_id = await asyncio.get_running_loop().run_in_executor(
                None, lambda: self.s.images.commit(record.id, record.image_id, name,
                                                   message=message, created_by=created_by))
        return {"id": image_id}

    async def export(self, ctx: RequestContext, params: dict) -> Any:
        from .images.view import write_tar
        p = Params(params, "container.export")
        ref = p.get("id", str)
        p.done()
        record = self.s._get(ref)
        if record.config.host.auto_remove and record.state.status in RUNNING:
            raise Conflict(f"container {record.name} was started with --rm: its writable "
                           f"layer is a tmpfs inside the container and cannot be exported; "
                           f"run it without --rm")
        # Spooled by a thread (it reads every file), then sent in 1 MiB chunks.
        with tempfile.TemporaryFile(dir=self.s.root) as spool:
            async with self.s.upper(record):
                view = self.s.images.view(record.image_id, record.id)
                await asyncio.get_running_loop().run_in_executor(None, write_tar, view, spool)
            return {"size": await _send_spool(ctx, spool)}

    async def image_import(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "image.import")
        name = p.get("name", str)
        path = p.get("path", (str, type(None)), None)
        message = p.get("message", str, "")
        p.done()
        loop = asyncio.get_running_loop()
        source = await _open_source(path, "image.import") if path is not None else \
            await _spool_stdin(ctx, "image.import", self.s.root)
        try:
            image_id = await loop.run_in_executor(
                None, lambda: self.s.images.import_rootfs(source, name, message=message))
        finally:
            source.close()
        image = self.s.images.get(image_id)
        return {"id": image_id, "name": name, "size": image["size"],
                "warnings": image["doc"].get("warnings", [])}

    async def image_list(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "image.list")
        show_all = p.get("all", bool, False)
        _filters(p)
        p.done()
        images = self.s.images.list()
        if not show_all:              # Docker hides a build's intermediate images
            images = [i for i in images if i["tags"] or not self.s.images.children(i["id"])]
        return {"images": [self._image_record(i["id"]) for i in images]}

    async def image_prune(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "image.prune")
        all_unused = p.get("all", bool, False)
        filters = _filters(p)
        p.done()
        if filters:
            raise InvalidArgument(f"image.prune: filters are not supported (got "
                                  f"{', '.join(sorted(filters))})")
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.s.images.prune(all_unused))

    async def image_build(self, ctx: RequestContext, params: dict) -> Any:
        from .images.build import Builder, BuildOptions, unpack_context
        p = Params(params, "image.build")
        options = BuildOptions(
            dockerfile=p.get("dockerfile", str),
            dockerfile_name=p.get("dockerfile_name", str, "Dockerfile"),
            tags=p.get("tags", list, [], items=str),
            build_args=_string_map(p.get("build_args", dict, {}), "build_args"),
            no_cache=p.get("no_cache", bool, False),
            network=p.get("network", str, "none"),
            target=p.get("target", str, ""),
            labels=_string_map(p.get("labels", dict, {}), "labels"),
            memory=p.get("memory", (str, int, type(None)), None),
            cpus=p.get("cpus", (str, int, float, type(None)), None),
            pids_limit=p.get("pids_limit", (int, type(None)), None))
        p.done()
        for tag in options.tags:
            parse_ref(tag)            # a bad name fails before any work
        loop = asyncio.get_running_loop()
        with await _spool_stdin(ctx, "image.build", self.s.root) as spool:
            context = await loop.run_in_executor(None, unpack_context, spool,
                                                 self.s.images.builds_root)
        try:
            builder = Builder(self.s, context, options,
                              lambda text: ctx.send_event("progress", {"stream": text}))
            image_id = await builder.run()
        finally:
            await loop.run_in_executor(None, lambda: shutil.rmtree(context,
                                                                   ignore_errors=True))
        return {"id": image_id, "tags": list(self.s.images.get(image_id)["tags"])}

    async def image_inspect(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "image.inspect")
        name = p.get("name", str)
        p.done()
        return self._image_record(name)

    async def image_remove(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "image.remove")
        name = p.get("name", str)
        force = p.get("force", bool, False)
        p.done()
        # In a thread: removal deletes files and may wait for an unpack (the image lock).
        result = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.s.images.remove(name, force=force))
        return {"untagged": [r["Untagged"] for r in result if "Untagged" in r],
                "deleted": [r["Deleted"] for r in result if "Deleted" in r]}

    def _image_record(self, ref: str) -> dict[str, Any]:
        image = self.s.images.get(ref)
        return {**self.s.images.record(image["id"]),
                "repo_digests": list(image["doc"].get("repo_digests", []))}

    async def image_tag(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "image.tag")
        source = p.get("source", str)
        target = p.get("target", str)
        p.done()
        if "@" in target:
            raise InvalidArgument(f"tag {target!r}: refusing to create a tag with a digest "
                                  f"reference")
        return {"name": self.s.images.tag(source, target)}

    async def image_history(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "image.history")
        name = p.get("name", str)
        p.done()
        image = self.s.images.get(name)
        config = image["doc"]["config"]
        sizes = iter(self._layer_sizes(image))
        rows = []
        for entry in config.get("history") or []:
            empty = bool(entry.get("empty_layer"))
            rows.append({"id": "", "created": parse_time(entry.get("created", "")) or 0.0,
                         "created_by": entry.get("created_by", ""),
                         "comment": entry.get("comment", ""), "tags": [],
                         "size": 0 if empty else next(sizes, 0)})
        # the images a build made on the way (and its base) own the entries up to theirs
        current: dict[str, Any] | None = image
        while current is not None and rows:
            count = len(current["doc"]["config"].get("history") or [])
            if 0 < count <= len(rows):
                rows[count - 1].update(id=current["id"], tags=list(current["tags"]))
            parent = (current["doc"].get("build") or {}).get("parent")
            current = self.s.images.store.get_image(parent) if parent else None
        rows.reverse()                    # newest first, as Docker lists them
        if rows:
            rows[0].update(id=image["id"], tags=list(image["tags"]))
        return {"history": rows}

    def _layer_sizes(self, image: dict[str, Any]) -> list[int]:
        """Each layer's unpacked size (kept on its snapshot), bottom first."""
        from .images.service import SIZE_LABEL
        sizes = []
        for chain, layer in zip(image["doc"].get("chain_ids", []),
                                image["doc"].get("layers", [])):
            try:
                labels = self.s.images.snapshotter.stat(chain).labels
                sizes.append(int(labels.get(SIZE_LABEL, layer["size"])))
            except NotFound:
                sizes.append(int(layer["size"]))
        return sizes

    async def image_pull(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "image.pull")
        name = p.get("name", str)
        p.done()
        image_id = await _in_thread(ctx, self.s.images.pull, name)
        return {"id": image_id, "name": str(parse_ref(name))}

    async def image_push(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "image.push")
        name = p.get("name", str)
        p.done()
        return await _in_thread(ctx, self.s.images.push, name)

    async def image_load(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "image.load")
        path = p.get("path", (str, type(None)), None)
        p.done()
        source = await _open_source(path, "image.load") if path is not None else \
            await _spool_stdin(ctx, "image.load", self.s.root)
        try:
            loaded = await _in_thread(ctx, self.s.images.load, source)
        finally:
            source.close()
        return {"images": [{"id": i["id"], "tags": list(i["tags"])} for i in loaded]}

    async def image_save(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "image.save")
        names = p.get("names", list, items=str)
        p.done()
        # Spooled (by a thread: it reads and writes files) so the image lock is not
        # held while a slow client reads; then sent in 1 MiB chunks.
        with tempfile.TemporaryFile(dir=self.s.root) as spool:
            await asyncio.get_running_loop().run_in_executor(
                None, self.s.images.save, names, spool)
            return {"size": await _send_spool(ctx, spool)}

    async def login(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "system.login")
        registry = p.get("registry", str)
        username = p.get("username", str)
        password = p.get("password", str)
        p.done()
        status = await asyncio.get_running_loop().run_in_executor(
            None, self.s.images.login, registry, username, password)
        return {"status": status}

    async def logout(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "system.logout")
        registry = p.get("registry", str)
        p.done()
        return {"removed": self.s.images.logout(registry)}

    # -- networks
    def _network_record(self, network: Any) -> NetworkRecord:
        containers = []
        for cid, endpoint in self.s.networks.endpoints(network.id).items():
            try:
                name = self.s._get(cid).name
            except NotFound:          # removed while its namespace goes
                continue
            containers.append(NetworkContainer(cid, name, endpoint))
        return NetworkRecord(
            id=network.id, name=network.name, driver=network.driver,
            created=network.created, internal=network.internal, subnet=network.subnet,
            gateway=network.gateway, ip_range=network.ip_range, bridge=network.bridge,
            options=tuple(f"{k}={v}" for k, v in sorted(network.options.items())),
            labels=tuple(f"{k}={v}" for k, v in sorted(network.labels.items())),
            containers=tuple(containers))

    async def network_create(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "network.create")
        name = p.get("name", str)
        driver = p.get("driver", str, "bridge")
        subnet = p.get("subnet", str, "")
        gateway = p.get("gateway", str, "")
        ip_range = p.get("ip_range", str, "")
        internal = p.get("internal", bool, False)
        labels = _string_map(p.get("labels", dict, {}), "labels")
        options = _string_map(p.get("options", dict, {}), "options")
        p.done()
        network = await self.s.networks.create(
            name, driver=driver, subnet=subnet, gateway=gateway, ip_range=ip_range,
            internal=internal, labels=labels, options=options)
        if ctx.session is not None:       # a session's networks go with it, as containers do
            ctx.session.track("network", network.id)
        return {"id": network.id, "warnings": []}

    async def network_list(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "network.list")
        filters = _filters(p)
        p.done()
        records = [self._network_record(n) for n in self.s.networks.list()]
        records = filter_networks(records, filters)
        return {"networks": [r.to_dict() for r in records]}

    async def network_inspect(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "network.inspect")
        ref = p.get("id", str)
        p.done()
        return self._network_record(self.s.networks.get(ref)).to_dict()

    async def network_remove(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "network.remove")
        ref = p.get("id", str)
        p.done()
        await self.s.networks.remove(ref)
        return {}

    async def network_connect(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "network.connect")
        ref = p.get("id", str)
        container = p.get("container", str)
        ip = p.get("ip", str, "")
        aliases = p.get("aliases", list, [])
        p.done()
        if not all(isinstance(a, str) and a for a in aliases):
            raise InvalidArgument("network.connect: aliases must be non-empty strings")
        record = await self.s.connect(self.s._get(container), ref, ip, aliases)
        name = self.s.networks.get(ref).name
        return {"ip_address": next(e.ip_address for e in record.endpoints
                                   if e.network == name)}

    async def network_disconnect(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "network.disconnect")
        ref = p.get("id", str)
        container = p.get("container", str)
        force = p.get("force", bool, False)
        p.done()
        await self.s.disconnect(self.s._get(container), ref, force)
        return {}

    async def network_prune(self, ctx: RequestContext, params: dict) -> Any:
        p = Params(params, "network.prune")
        _filters(p)
        p.done()
        removed = []
        for network in self.s.networks.list():
            if network.name in BUILTIN_NETWORKS or self.s.networks.endpoints(network.id):
                continue
            try:
                await self.s.networks.remove(network.id)
            except (Conflict, NotFound):       # a container attached meanwhile, or gone
                continue
            removed.append(network.name)
        return {"removed": removed}

    async def df(self, ctx: RequestContext, params: dict) -> Any:
        Params(params, "system.df").done()
        loop = asyncio.get_running_loop()
        images = await loop.run_in_executor(None, self.s.images.disk_usage)
        containers = []
        for row in self.s.store.list_containers():
            record = self.s._record(row)
            size = 0
            try:
                size = (await loop.run_in_executor(
                    None, self.s.images.snapshotter.usage, record.id))[0]
            except NotFound:          # no writable layer kept (--rm, not started)
                pass
            containers.append({"id": record.id, "name": record.name,
                               "image": record.config.image, "size": size,
                               "status": record.state.status,
                               "running": record.state.status in RUNNING})
        return {"images": images, "containers": containers}

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
                "security_options": ["name=seccomp,profile=builtin", "name=no-new-privileges",
                                     "name=cgroupns"],
                "warnings": [w for w in (self.s.networks.masq_problem,) if w]}


class _Stamper:
    """Docker's ``logs -t``: every line starts with its time. Output arrives in chunks
    that need not end at a newline, so remember per stream whether a line is open."""

    def __init__(self) -> None:
        self.open_line = {1: False, 2: False}

    def stamp(self, fd: int, data: bytes, ts: float) -> bytes:
        prefix = rfc3339(ts).encode() + b" "
        out = bytearray()
        for line in data.splitlines(keepends=True):
            if not self.open_line[fd]:
                out += prefix
            out += line
            self.open_line[fd] = not line.endswith((b"\n", b"\r"))
        return bytes(out)


MAX_TIMEOUT = 365 * 86400    # seconds: beyond this, a wait is a mistake (or an overflow)
MAX_FILTER_VALUE = 1024      # characters of one filter value (a name filter is a regex)


def _timeout(value: int | None, op: str) -> int | None:
    """A stop timeout in seconds: -1 waits for ever (Docker's meaning), None is the
    container's own."""
    if value is not None and not -1 <= value <= MAX_TIMEOUT:
        raise InvalidArgument(f"{op}: timeout must be -1 (wait for ever) or 0 to "
                              f"{MAX_TIMEOUT} seconds, got {value}")
    return value


def _filters(p: Params) -> dict[str, list[str]]:
    """``filters``: a map of key -> list of strings (a lone string is one value), as
    ``sbx``'s ``--filter key=value`` flags and the Python API send them. The keys are
    checked by the filter itself; a ``name`` value must compile as a regular
    expression."""
    raw = p.get("filters", (dict, type(None)), None) or {}
    out: dict[str, list[str]] = {}
    for key, values in raw.items():
        values = [values] if isinstance(values, str) else values
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            p.problems.append(f"{p.where}: filters.{key:.60}: expected a list of strings, "
                              f"got {type(values).__name__}")
            continue
        if any(len(v) > MAX_FILTER_VALUE for v in values):
            p.problems.append(f"{p.where}: filters.{key:.60}: a value is longer than "
                              f"{MAX_FILTER_VALUE} characters")
            continue
        if key == "name":
            for value in values:
                try:
                    re.compile(value)
                except re.error as exc:
                    p.problems.append(f"{p.where}: filters.name: {value!r:.80} is not a "
                                      f"regular expression: {exc}")
        out[key] = values
    return out


def _string_map(value: dict, field: str) -> dict[str, str]:
    bad = [k for k, v in value.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise InvalidArgument(f"{field}: keys and values must be strings ({bad[0]!r} is not)")
    return dict(value)


class _Throttle:
    """Byte-count progress comes on every read; pass on at most one such event per
    layer every ``PROGRESS_INTERVAL`` (status changes always)."""

    def __init__(self) -> None:
        self.last: dict[Any, tuple[str, float]] = {}

    def keep(self, event: dict[str, Any]) -> bool:
        key, status = event.get("id"), event.get("status", "")
        now = time.monotonic()
        previous = self.last.get(key)
        done = event.get("total") is not None and event.get("current") == event.get("total")
        if previous is not None and previous[0] == status and not done and \
                now - previous[1] < PROGRESS_INTERVAL:
            return False
        self.last[key] = (status, now)
        return True


async def _in_thread(ctx: RequestContext | None, func: Callable[..., Any], *args: Any) -> Any:
    """``func(*args, progress=...)`` (a blocking image service call) in a worker thread;
    its progress events are marshalled back to the loop and sent on ``ctx``'s stream as
    ``progress`` events, in order, before the result. A cancelled request stops waiting;
    the thread finishes its call (registry transfers cannot be interrupted midway)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    throttle = _Throttle()
    done = object()

    def progress(event: dict[str, Any]) -> None:
        if ctx is not None and throttle.keep(event):
            try:
                loop.call_soon_threadsafe(queue.put_nowait, dict(event))
            except RuntimeError:          # the loop is closed: the daemon is going
                pass

    future = loop.run_in_executor(None, lambda: func(*args, progress=progress))
    # Done callbacks run on the loop after every progress put the thread made before it
    # returned, so ``done`` is queued last.
    future.add_done_callback(lambda f: queue.put_nowait(done))
    while (event := await queue.get()) is not done:
        await ctx.send_event("progress", event)   # type: ignore[union-attr]
    return future.result()


async def _send_spool(ctx: RequestContext, spool: BinaryIO) -> int:
    """Send what was spooled, from its start, as ``data`` events of ARCHIVE_CHUNK bytes;
    returns its size."""
    size = spool.tell()
    spool.seek(0)
    while chunk := spool.read(ARCHIVE_CHUNK):
        await ctx.send_event("data", chunk)
    return size


async def _open_source(path: str, op: str) -> BinaryIO:
    """A tar named by a path on the daemon's host: an absolute path to a regular file
    (not a directory, device or FIFO, which would never end), opened by a thread."""
    if not path.startswith("/") or "\0" in path:
        raise InvalidArgument(f"{op}: path {path!r:.200} must be an absolute path on the "
                              f"daemon's host")

    def open_regular() -> BinaryIO:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError as exc:
            raise InvalidArgument(f"{op}: {path!r:.200}: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InvalidArgument(f"{op}: {path!r:.200} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    return await asyncio.get_running_loop().run_in_executor(None, open_regular)


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
