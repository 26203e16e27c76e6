"""What each operation of the table (``operations.py``) does: a method per operation,
named in the table, that gets its params whole and checked and calls the services it was
given (the composition root, ``daemon.build_services``, builds them). Shaping a result
for the wire happens here; the work happens in the services."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import platform
import shutil
import stat
import tempfile
import time
from typing import Any, BinaryIO, Callable

from . import operations as ops, stats
from .containers import RUNNING, ContainerService
from .context import RequestContext
from .daemonconfig import DaemonConfig
from .errors import Conflict, InvalidArgument, NotFound
from .events import NOWHERE, EventBus, check_filters, matches
from .filters import filter_images, filter_networks, filter_records, prune_filter
from .images.configsteps import apply_changes, container_runtime
from .images.service import ImageService
from .model import (ContainerConfig, ContainerRecord, ImageRecord, NetworkContainer,
                    NetworkRecord)
from .network import NetworkService
from .reference import parse as parse_ref
from .runner.spec import DEFAULT_PATH
from .version import __version__
from .volumes import VolumeService

log = logging.getLogger(__name__)
UPLOAD_CAP = 8 << 30          # bytes of tar one import, load or cp may stream
ARCHIVE_CHUNK = 1 << 20       # bytes per data event of container.archive_get, image.save
PROGRESS_INTERVAL = 0.1       # seconds between byte-count progress events of one layer


class Handlers:
    def __init__(self, config: DaemonConfig, containers: ContainerService,
                 images: ImageService, networks: NetworkService, volumes: VolumeService):
        self.config = config
        self.volumes = volumes
        self.containers = containers
        self.images = images
        self.networks = networks
        self.spool_dir = config.root        # uploads and downloads wait on disk there
        # The daemon's bus (the root wires the services' and this one): image events are
        # emitted here, where each image operation's outcome is whole.
        self.events: EventBus = NOWHERE

    # -- session cleanups
    async def session_cleanup(self, container_id: str) -> None:
        try:
            record = self.containers.get(container_id)
        except NotFound:
            return
        # A session's objects all go: its containers' anonymous volumes too.
        await self.containers.remove(record, force=True, volumes=True)

    async def session_network_cleanup(self, network_id: str) -> None:
        """A session's network goes after its containers (cleanups run last-made first);
        one still used by another client's containers stays, and the log says so."""
        try:
            await self.networks.remove(network_id)
        except NotFound:
            pass
        except Conflict as e:
            log.warning("session network %s kept: %s", network_id[:12], e.message)

    # -- helpers
    def _track(self, ctx: RequestContext, record: ContainerRecord) -> None:
        if ctx.session is not None:
            ctx.session.track("container", record.id)

    async def _create(self, ctx: RequestContext, config: ContainerConfig,
                      name: str | None, events: bool = False, check_spec: bool = True,
                      platform: str | None = None) -> tuple[ContainerRecord, list[str]]:
        """Docker's run/create: an image that is not here (or, with ``platform``, is
        here for another platform) is pulled first, from Docker Hub when its name has
        no registry; tried after a create that found something missing, so the image is
        looked up once when it is here. ``events``: send the pull's progress on this
        request's stream."""
        session = ctx.session.id if ctx.session else ""
        if platform is not None and not self.images.has_platform(config.image, platform):
            await _in_thread(ctx if events else None, self.images.pull, config.image,
                             platform)
        try:
            return self.containers.create(config, name, session, check_spec=check_spec)
        except NotFound:
            if not await self._pull_missing(ctx if events else None, config.image):
                raise
        return self.containers.create(config, name, session, check_spec=check_spec)

    async def _pull_missing(self, ctx: RequestContext | None, image: str) -> bool:
        """Pull ``image`` when it is missing and is a name (not an id); True if it was
        pulled."""
        try:
            self.images.get(image)
            return False
        except NotFound:
            pass
        try:
            parse_ref(image)
        except InvalidArgument:
            return False              # create reports the bad name
        await _in_thread(ctx, self.images.pull, image)
        return True

    # -- lifecycle
    async def container_config(self, ctx: RequestContext, params: ops.Options) -> Any:
        return {"config": params.options.to_dict()}

    async def container_create(self, ctx: RequestContext, params: ops.Create) -> Any:
        record, warnings = await self._create(ctx, params.config, params.name,
                                              platform=params.platform)
        self._track(ctx, record)
        return {"id": record.id, "warnings": warnings}

    async def container_start(self, ctx: RequestContext, params: ops.ById) -> Any:
        record = await self.containers.start(self.containers.get(params.id))
        return {"id": record.id, "pid": record.state.pid}

    async def container_run(self, ctx: RequestContext, params: ops.Run) -> Any:
        config = params.config
        if params.remove is not None and params.remove != config.host.auto_remove:
            config = dataclasses.replace(
                config, host=dataclasses.replace(config.host, auto_remove=params.remove))
        # The start builds the spec next: no separate check of it at create.
        record, warnings = await self._create(ctx, config, params.name, events=True,
                                              check_spec=False, platform=params.platform)
        self._track(ctx, record)
        if not params.quiet:
            await ctx.send_event("created", {"id": record.id, "name": record.name,
                                             "warnings": warnings})
        return await self.containers.run(ctx, record, stdin=params.stdin,
                                         detach=params.detach,
                                         detach_keys=params.detach_keys,
                                         quiet=params.quiet)

    async def container_attach(self, ctx: RequestContext, params: ops.Attach) -> Any:
        p = params
        return await self.containers.attach(
            ctx, self.containers.get(p.id), stdin=p.stdin, stdout=p.stdout,
            stderr=p.stderr, logs=p.logs, stream=p.stream, start=p.start,
            detach_keys=p.detach_keys)

    async def container_wait(self, ctx: RequestContext, params: ops.Wait) -> Any:
        final = await self.containers.wait(self.containers.get(params.id), params.condition)
        r = self.containers.result(final)
        return {k: r[k] for k in ("exit_code", "oom_killed", "timed_out", "error")}

    async def container_kill(self, ctx: RequestContext, params: ops.Kill) -> Any:
        await self.containers.kill(self.containers.get(params.id), params.signal)
        return {}

    async def container_stop(self, ctx: RequestContext, params: ops.Stop) -> Any:
        await self.containers.stop(self.containers.get(params.id), params.timeout)
        return {}

    async def container_restart(self, ctx: RequestContext, params: ops.Stop) -> Any:
        record = await self.containers.restart(self.containers.get(params.id),
                                               params.timeout)
        return {"id": record.id, "pid": record.state.pid}

    async def container_remove(self, ctx: RequestContext, params: ops.Remove) -> Any:
        record = self.containers.get(params.id)
        await self.containers.remove(record, force=params.force, volumes=params.volumes)
        if ctx.session is not None:
            ctx.session.untrack("container", record.id)
        return {}

    async def container_inspect(self, ctx: RequestContext, params: ops.ById) -> Any:
        return self.containers.get(params.id).to_dict()

    async def container_list(self, ctx: RequestContext, params: ops.ListContainers) -> Any:
        records = self.containers.records()
        records.sort(key=lambda r: r.created, reverse=True)
        if not params.all and params.limit < 0:
            records = [r for r in records if r.state.status in RUNNING]
        records = filter_records(records, params.filters)
        if params.limit >= 0:
            records = records[:params.limit]
        return {"containers": [r.to_dict() for r in records]}

    async def container_logs(self, ctx: RequestContext, params: ops.Logs) -> Any:
        p = params
        await self.containers.logs(ctx, self.containers.get(p.id), follow=p.follow,
                                   tail=p.tail, timestamps=p.timestamps, stdout=p.stdout,
                                   stderr=p.stderr, since=p.since, until=p.until)
        return {}

    async def container_exec(self, ctx: RequestContext, params: ops.Exec) -> Any:
        p = params
        return await self.containers.exec(ctx, self.containers.get(p.id), list(p.cmd),
                                          list(p.env), p.workdir, p.user, p.tty, p.stdin,
                                          p.detach, p.detach_keys, p.console_size)

    async def container_resize(self, ctx: RequestContext, params: ops.Resize) -> Any:
        self.containers.resize(self.containers.get(params.id), params.rows, params.cols)
        return {}

    # -- inspection of a running container
    async def container_top(self, ctx: RequestContext, params: ops.ById) -> Any:
        pids = await self.containers.pids(self.containers.get(params.id))
        rows = [_ps_row(pid) for pid in pids]
        return {"titles": ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
                "processes": [r for r in rows if r]}

    async def _sample(self, record: ContainerRecord) -> dict:
        return stats.sample(record, await self.containers.usage(record))

    async def container_stats_once(self, ctx: RequestContext, params: ops.ById) -> Any:
        return await self._sample(self.containers.get(params.id))

    async def container_stats(self, ctx: RequestContext, params: ops.Stats) -> Any:
        record = self.containers.get(params.id)
        count = 0
        while True:
            try:
                record = self.containers.get(record.id)
                sample = await self._sample(record)
            except (NotFound, Conflict):
                # Removed, or ended, meanwhile (also during the sample): its stream
                # ends, as dockerd's.
                return {}
            await ctx.send_event("stats", sample)
            count += 1
            if record.state.status not in RUNNING or (not params.stream and count >= 2):
                return {}
            await asyncio.sleep(max(0.05, float(params.interval)))

    async def container_pause(self, ctx: RequestContext, params: ops.ById) -> Any:
        await self.containers.pause(self.containers.get(params.id))
        return {}

    async def container_unpause(self, ctx: RequestContext, params: ops.ById) -> Any:
        await self.containers.unpause(self.containers.get(params.id))
        return {}

    async def container_update(self, ctx: RequestContext, params: ops.Update) -> Any:
        await self.containers.update(self.containers.get(params.id), params.changes())
        return {"warnings": []}

    async def container_rename(self, ctx: RequestContext, params: ops.Rename) -> Any:
        self.containers.rename(self.containers.get(params.id), params.name)
        return {}

    async def container_prune(self, ctx: RequestContext, params: ops.Filters) -> Any:
        return {"removed": await self.containers.prune(params.filters), "space_reclaimed": 0}

    # -- files (sbx cp)
    async def container_archive_stat(self, ctx: RequestContext, params: ops.FilePath) -> Any:
        record = self.containers.get(params.id)
        async with self.containers.files_root(record) as root:
            return await asyncio.get_running_loop().run_in_executor(
                None, self.containers.archive_stat, root, record, params.path)

    async def container_archive_get(self, ctx: RequestContext, params: ops.FilePath) -> Any:
        record = self.containers.get(params.id)
        # Spooled to disk (by a thread: it is file I/O), then sent in 1 MiB chunks.
        with tempfile.TemporaryFile(dir=self.spool_dir) as spool:
            async with self.containers.files_root(record) as root:
                doc = await asyncio.get_running_loop().run_in_executor(
                    None, self.containers.archive_get, root, record, params.path, spool)
            await _send_spool(ctx, spool)
        return {k: doc[k] for k in ("name", "size", "mode", "mtime", "link_target")}

    async def container_archive_put(self, ctx: RequestContext,
                                    params: ops.PutArchive) -> Any:
        record = self.containers.get(params.id)
        with await _spool_stdin(ctx, "container.archive_put", self.spool_dir) as spool:
            record = self.containers.get(record.id)
            async with self.containers.files_root(record, write=True) as root:
                await asyncio.get_running_loop().run_in_executor(
                    None, self.containers.archive_put, root, record, params.path, spool)
        return {}

    # -- images
    async def container_commit(self, ctx: RequestContext, params: ops.Commit) -> Any:
        record = self.containers.get(params.id)
        if record.config.host.auto_remove:
            raise Conflict(f"container {record.name} was started with --rm: its writable "
                           f"layer is a tmpfs inside the container, which cannot be "
                           f"committed; run it without --rm to commit it")
        created_by = " ".join([record.path, *record.args])
        # Docker's: the image's config with what the container ran with, then --change
        runtime = apply_changes(container_runtime(self.images.config(record.image_id),
                                                  record.config), params.changes)
        async with self.containers.upper(record):
            image_id = await asyncio.get_running_loop().run_in_executor(
                None, lambda: self.images.commit(record.id, record.image_id, params.name,
                                                 message=params.message,
                                                 created_by=created_by, runtime=runtime))
        return {"id": image_id}

    async def container_changes(self, ctx: RequestContext, params: ops.ById) -> Any:
        record = _layer_readable(self.containers.get(params.id), "list its changes")
        async with self.containers.upper(record):
            found = await asyncio.get_running_loop().run_in_executor(
                None, self.images.changes, record.image_id, record.id)
        return {"changes": [{"path": path, "kind": kind} for path, kind in found]}

    async def container_export(self, ctx: RequestContext, params: ops.ById) -> Any:
        from .images.view import write_tar
        record = _layer_readable(self.containers.get(params.id), "export it")
        # Spooled by a thread (it reads every file), then sent in 1 MiB chunks.
        with tempfile.TemporaryFile(dir=self.spool_dir) as spool:
            async with self.containers.upper(record):
                view = self.images.view(record.image_id, record.id)
                await asyncio.get_running_loop().run_in_executor(None, write_tar, view, spool)
            return {"size": await _send_spool(ctx, spool)}

    async def image_import(self, ctx: RequestContext, params: ops.ImportImage) -> Any:
        loop = asyncio.get_running_loop()
        runtime = apply_changes({"Env": [f"PATH={DEFAULT_PATH}"], "Cmd": params.cmd},
                                params.changes)       # before the upload: a bad change
        source = await _open_source(params.path, "image.import") \
            if params.path is not None else \
            await _spool_stdin(ctx, "image.import", self.spool_dir)
        try:
            image_id = await loop.run_in_executor(
                None, lambda: self.images.import_rootfs(source, params.name,
                                                        message=params.message,
                                                        runtime=runtime))
        finally:
            source.close()
        image = self.images.get(image_id)
        self.events.image("import", image_id, params.name)
        return {"id": image_id, "name": params.name, "size": image["size"],
                "warnings": image["doc"].get("warnings", [])}

    async def image_list(self, ctx: RequestContext, params: ops.ListImages) -> Any:
        images = self.images.list()
        if not params.all:            # Docker hides a build's intermediate images
            images = [i for i in images if i["tags"] or not self.images.children(i["id"])]
        records = [self._image_record(i["id"]) for i in images]
        if params.filters:
            kept = {r.id: r.repo_tags for r in filter_images(
                [ImageRecord.from_dict(r) for r in records], params.filters,
                lambda ref: ImageRecord.from_dict(self._image_record(ref)))}
            records = [{**r, "repo_tags": list(kept[r["id"]])} for r in records
                       if r["id"] in kept]
        return {"images": records}

    async def image_prune(self, ctx: RequestContext, params: ops.PruneImages) -> Any:
        pruned = prune_filter(params.filters or {}, time.time())
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.images.prune(params.all, pruned))

    async def image_build(self, ctx: RequestContext, params: ops.Build) -> Any:
        from .images.build import Builder, BuildOptions, unpack_context
        p = params
        options = BuildOptions(
            dockerfile=p.dockerfile, dockerfile_name=p.dockerfile_name, tags=list(p.tags),
            build_args=p.build_args, no_cache=p.no_cache, network=p.network,
            target=p.target, labels=p.labels, memory=p.memory, cpus=p.cpus,
            pids_limit=p.pids_limit, add_hosts=list(p.add_hosts), ulimits=list(p.ulimits),
            shm_size=p.shm_size, pull=p.pull, cache_from=list(p.cache_from))
        loop = asyncio.get_running_loop()
        with await _spool_stdin(ctx, "image.build", self.spool_dir) as spool:
            context = await loop.run_in_executor(None, unpack_context, spool,
                                                 self.images.builds_root)
        try:
            builder = Builder(self.containers, context, options,
                              lambda text: ctx.send_event("progress", {"stream": text}))
            image_id = await builder.run()
        finally:
            await loop.run_in_executor(None, lambda: shutil.rmtree(context,
                                                                   ignore_errors=True))
        return {"id": image_id, "tags": list(self.images.get(image_id)["tags"])}

    async def image_inspect(self, ctx: RequestContext, params: ops.ByName) -> Any:
        return self._image_record(params.name)

    async def image_remove(self, ctx: RequestContext, params: ops.RemoveImage) -> Any:
        # In a thread: removal deletes files and may wait for an unpack (the image lock).
        result = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.images.remove(params.name, force=params.force))
        for r in result:
            self.events.image(*(("untag", _familiar(r["Untagged"])) if "Untagged" in r
                                else ("delete", r["Deleted"])))
        return {"untagged": [r["Untagged"] for r in result if "Untagged" in r],
                "deleted": [r["Deleted"] for r in result if "Deleted" in r]}

    def _image_record(self, ref: str) -> dict[str, Any]:
        image = self.images.get(ref)
        return {**self.images.record(image["id"]),
                "repo_digests": list(image["doc"].get("repo_digests", []))}

    async def image_tag(self, ctx: RequestContext, params: ops.Tag) -> Any:
        name = self.images.tag(params.source, params.target)
        self.events.image("tag", self.images.get(name)["id"], _familiar(name))
        return {"name": name}

    async def image_history(self, ctx: RequestContext, params: ops.ByName) -> Any:
        return {"history": self.images.history(params.name)}

    async def image_pull(self, ctx: RequestContext, params: ops.Pull) -> Any:
        image_id = await _in_thread(ctx, self.images.pull, params.name, params.platform)
        self.events.image("pull", _familiar(params.name), parse_ref(params.name).familiar)
        return {"id": image_id, "name": str(parse_ref(params.name))}

    async def image_push(self, ctx: RequestContext, params: ops.ByName) -> Any:
        pushed = await _in_thread(ctx, self.images.push, params.name)
        self.events.image("push", _familiar(params.name))
        return pushed

    async def image_load(self, ctx: RequestContext, params: ops.Load) -> Any:
        source = await _open_source(params.path, "image.load") \
            if params.path is not None else \
            await _spool_stdin(ctx, "image.load", self.spool_dir)
        try:
            loaded = await _in_thread(ctx, self.images.load, source)
        finally:
            source.close()
        for i in loaded:
            self.events.image("load", i["id"], (list(i["tags"]) or [i["id"]])[0])
        return {"images": [{"id": i["id"], "tags": list(i["tags"])} for i in loaded]}

    async def image_save(self, ctx: RequestContext, params: ops.Save) -> Any:
        # Spooled (by a thread: it reads and writes files) so the image lock is not
        # held while a slow client reads; then sent in 1 MiB chunks.
        with tempfile.TemporaryFile(dir=self.spool_dir) as spool:
            await asyncio.get_running_loop().run_in_executor(
                None, self.images.save, list(params.names), spool)
            for name in params.names:
                self.events.image("save", name)
            return {"size": await _send_spool(ctx, spool)}

    async def system_login(self, ctx: RequestContext, params: ops.Login) -> Any:
        status = await asyncio.get_running_loop().run_in_executor(
            None, self.images.login, params.registry, params.username, params.password)
        return {"status": status}

    async def system_logout(self, ctx: RequestContext, params: ops.Logout) -> Any:
        return {"removed": self.images.logout(params.registry)}

    # -- networks
    def _network_record(self, network: Any) -> NetworkRecord:
        containers = []
        for cid, endpoint in self.networks.endpoints(network.id).items():
            try:
                name = self.containers.get(cid).name
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

    async def network_create(self, ctx: RequestContext, params: ops.CreateNetwork) -> Any:
        p = params
        network = await self.networks.create(
            p.name, driver=p.driver, subnet=p.subnet, gateway=p.gateway,
            ip_range=p.ip_range, internal=p.internal, labels=p.labels, options=p.options)
        if ctx.session is not None:       # a session's networks go with it, as containers do
            ctx.session.track("network", network.id)
        return {"id": network.id, "warnings": []}

    async def network_list(self, ctx: RequestContext, params: ops.Filters) -> Any:
        records = [self._network_record(n) for n in self.networks.list()]
        records = filter_networks(records, params.filters)
        return {"networks": [r.to_dict() for r in records]}

    async def network_inspect(self, ctx: RequestContext, params: ops.ById) -> Any:
        return self._network_record(self.networks.get(params.id)).to_dict()

    async def network_remove(self, ctx: RequestContext, params: ops.ById) -> Any:
        await self.networks.remove(params.id)
        return {}

    async def network_connect(self, ctx: RequestContext, params: ops.Connect) -> Any:
        record = await self.containers.connect(self.containers.get(params.container),
                                               params.id, params.ip, params.aliases)
        name = self.networks.get(params.id).name
        return {"ip_address": next(e.ip_address for e in record.endpoints
                                   if e.network == name)}

    async def network_disconnect(self, ctx: RequestContext, params: ops.Disconnect) -> Any:
        await self.containers.disconnect(self.containers.get(params.container), params.id,
                                         params.force)
        return {}

    async def network_prune(self, ctx: RequestContext, params: ops.Filters) -> Any:
        return {"removed": await self.networks.prune(params.filters)}

    async def network_addresses(self, ctx: RequestContext, params: ops.NoParams) -> Any:
        return {"addresses": [{"network": network, "address": address, "owner": owner}
                              for (network, address), owner
                              in sorted(self.networks.ipam.allocations().items())]}

    # -- volumes
    async def volume_create(self, ctx: RequestContext, params: ops.CreateVolume) -> Any:
        # In a worker thread: a capped volume's first image of a size runs mkfs.ext4.
        volume = await asyncio.get_running_loop().run_in_executor(
            None, self.volumes.create, params.name, params.driver, params.labels,
            params.driver_opts)
        return volume.to_dict()

    async def volume_list(self, ctx: RequestContext, params: ops.Filters) -> Any:
        return {"volumes": [v.to_dict() for v in self.volumes.list(params.filters)],
                "warnings": []}

    async def volume_inspect(self, ctx: RequestContext, params: ops.ByName) -> Any:
        return self.volumes.get(params.name).to_dict()

    async def volume_remove(self, ctx: RequestContext, params: ops.RemoveVolume) -> Any:
        doomed = self.volumes.remove(params.name, params.force)   # checked and gone now
        await asyncio.get_running_loop().run_in_executor(None, self.volumes.purge, doomed)
        return {}

    async def volume_prune(self, ctx: RequestContext, params: ops.PruneVolumes) -> Any:
        deleted, doomed = self.volumes.prune(params.filters, params.all)
        reclaimed = await asyncio.get_running_loop().run_in_executor(
            None, self.volumes.purge, doomed)
        return {"deleted": deleted, "space_reclaimed": reclaimed}

    async def system_df(self, ctx: RequestContext, params: ops.NoParams) -> Any:
        loop = asyncio.get_running_loop()
        images = await loop.run_in_executor(None, self.images.disk_usage)
        containers = []
        for record in self.containers.records():
            size = 0
            try:
                size = (await loop.run_in_executor(
                    None, self.images.snapshotter.usage, record.id))[0]
            except NotFound:          # no writable layer kept (--rm, not started)
                pass
            containers.append({"id": record.id, "name": record.name,
                               "image": record.config.image, "size": size,
                               "status": record.state.status,
                               "running": record.state.status in RUNNING})
        volumes = await loop.run_in_executor(None, self.volumes.usage)
        return {"images": images, "containers": containers, "volumes": volumes,
                "pooled": self.containers.pools.usage()}

    async def system_events(self, ctx: RequestContext, params: ops.Events) -> Any:
        """The kept events from ``since`` (when ``since`` or ``until`` is given), then
        the new ones as they come, until ``until`` or the client goes; each an
        ``event`` event in Docker's shape (``sandboxd.events``)."""
        check_filters(params.filters)
        past, subscription = self.events.subscribe(params.since, params.until)
        until = params.until
        try:
            for event in past:
                if matches(event, params.filters):
                    await ctx.send_event("event", event)
            while until is None or time.time() < until:
                event = await subscription.next(
                    None if until is None else max(0.0, until - time.time()))
                if event is None or (until is not None and event["timeNano"] > until * 1e9):
                    break
                if matches(event, params.filters):
                    await ctx.send_event("event", event)
        finally:
            subscription.close()
        return {}

    async def pool_set(self, ctx: RequestContext, params: ops.SetPool) -> Any:
        return self.containers.pools.declare(params.config, params.count)

    async def pool_list(self, ctx: RequestContext, params: ops.NoParams) -> Any:
        pools = self.containers.pools
        return {"pools": pools.list(), "parked": pools.parked(),
                "parked_memory": pools.parked_memory(), "memory_budget": pools.memory,
                "waits_in": pools.waits_in()}

    async def system_info(self, ctx: RequestContext, params: ops.NoParams) -> Any:
        status = [r.state.status for r in self.containers.records()]
        uname = os.uname()
        return {"name": uname.nodename, "server_version": __version__,
                "pooled": self.containers.pools.parked(),
                "events_listeners": self.events.listeners,
                "containers": len(status), "running": status.count("running"),
                "paused": status.count("paused"),
                "stopped": len(status) - status.count("running") - status.count("paused"),
                "images": len(self.images.list()), "kernel_version": uname.release,
                "operating_system": _os_name(), "os_type": "linux",
                "architecture": platform.machine(), "ncpu": os.cpu_count() or 1,
                "mem_total": stats.mem_total(), "cgroup_driver": "cgroupfs",
                "cgroup_version": self.containers.cgroup_version(),
                "container_setup": await self.containers.container_setup(),
                "root_dir": self.config.root, "default_runtime": "sandboxd-runner",
                "security_options": ["name=seccomp,profile=builtin", "name=no-new-privileges",
                                     "name=cgroupns"],
                "warnings": [w for w in (self.networks.masq_problem,) if w]}


def _familiar(ref: str) -> str:
    """An image reference as Docker's events name it: ``busybox:latest``."""
    r = parse_ref(ref)
    return f"{r.familiar}:{r.tag}" if r.tag else f"{r.familiar}@{r.digest}"


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


def _layer_readable(record: ContainerRecord, to: str) -> ContainerRecord:
    """``record``, unless it runs with --rm: its writable layer is then a tmpfs inside the
    container, out of the daemon's reach (before its start or after its end there is
    no layer at all, and so nothing to read)."""
    if record.config.host.auto_remove and record.state.status in RUNNING:
        raise Conflict(f"container {record.name} was started with --rm: its writable "
                       f"layer is a tmpfs inside the container, which sandboxd cannot "
                       f"read; run it without --rm to {to}")
    return record


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


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"
