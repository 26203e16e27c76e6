"""The container service: lifecycle, output, exec, limits — the daemon's ``container.*``.

Its states and which operation may act in which are the table in ``lifecycle.py``: an
operation in the wrong state raises ``Conflict`` and changes nothing. Records live in
the store (sqlite) and are rewritten on every transition; output goes to a capped log
file per container and to attached clients. Kernel work goes through the runner's fork
server (``AsyncRunner``); this module only opens pipes and files.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import random
import secrets
import signal
import socket
import stat
import tarfile
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, AsyncIterator, BinaryIO, Iterable, Mapping, Sequence

from . import health as healthchecks
from . import detachkeys, lifecycle
from . import restart as policies
from .context import RequestContext
from .daemonconfig import DaemonConfig
from .errors import Conflict, InvalidArgument, NotFound, SandboxError
from .events import NOWHERE, EventBus
from .filters import prune_filter
from .images import tarentry
from .images.service import ImageService
from .images.unpack import WHITEOUT_PREFIX, apply_layer
from . import logs as logfiles
from .logs import LogWriter
from .model import (ContainerConfig, ContainerRecord, Health, HostConfig, Link, PortBinding,
                    evolve)
from .network import BUILTIN, NetworkService, link_env
from .ports import PortProxy
from .render import truncate
from . import resolvconf, trees
from .runner import syscalls
from .runner.api import AsyncRunner, ExitInfo, receive_terminal
from .runner.mounts import write_in_root
from .runner.spec import (ContainerSpec, File, Mount, Namespaces, Process, Ulimit, keep_wire,
                          merge_ulimits, validate)
from .store import Store
from .volumes import ANONYMOUS_LABEL, VolumeService
from .validate import (HOST_GATEWAY, TEMPLATE_ENTRIES, check_name, exposed_ports,
                       parse_signal, validate_config)

log = logging.getLogger("sandboxd.containers")

RUNNING = lifecycle.ACTIVE
RM_LAYER_SIZE = 1 << 30          # a --rm container's tmpfs upper (memory) unless it asks
READ_CHUNK = 65536
RUNNER_RESTART_SPACING = 1.0    # s between fork server starts, if one dies at once
SUBSCRIBER_QUEUE = 64
# Generated names, Docker-style: adjective_noun (1,024 of them; see _free_name).
_ADJECTIVES = ("agile", "bold", "brave", "bright", "calm", "clever", "cool", "eager",
               "fancy", "gentle", "happy", "jolly", "keen", "kind", "lively", "lucid",
               "merry", "modest", "neat", "nimble", "patient", "proud", "quiet", "sharp",
               "silly", "steady", "sunny", "swift", "tender", "vivid", "wise", "witty")
_NOUNS = ("babbage", "bardeen", "boole", "cerf", "curie", "darwin", "dijkstra", "euler",
          "feynman", "gauss", "hamming", "hopper", "kepler", "knuth", "lamport", "liskov",
          "lovelace", "meitner", "newton", "noether", "pascal", "perlman", "ritchie",
          "shannon", "sinoussi", "thompson", "torvalds", "turing", "wirth", "wozniak",
          "yalow", "zuse")
# Names need no secrecy (Docker's come from math/rand): secrets' draws would cost a
# getrandom call each on every run. Seeded from the OS at import.
_NAMES = random.Random()


class _Turn:
    """One start, kill or removal of a container at a time, as Docker's container lock:
    entered, the container's record once those under way have settled (``NotFound`` if
    one removed it). A kill during a start's set-up failed the start ("container setup
    died before exec"). A class, not a generator: it is on every start's path."""

    __slots__ = ("service", "record", "done")

    def __init__(self, service: ContainerService, record: ContainerRecord):
        self.service = service
        self.record = record
        self.done = asyncio.get_running_loop().create_future()

    async def __aenter__(self) -> ContainerRecord:
        if self.record.id in self.service.changing:
            self.record = await self.service._settled(self.record)
        self.service.changing[self.record.id] = self.done
        return self.record

    async def __aexit__(self, *exc_info: object) -> None:
        del self.service.changing[self.record.id]
        self.done.set_result(None)


@dataclasses.dataclass
class _Live:
    """What a running container has besides its record: pipes, log, listeners."""
    record: ContainerRecord
    log: LogWriter
    fds: dict[int, int]                       # fd -> stream (1 stdout, 2 stderr)
    stdin: int = -1
    terminal: int = -1                        # pty master, with a tty
    # A tty's master arrives after the exec: an exit reported before it (a fast command
    # whose exit is read in the same turn as its start) must wait for its output.
    awaiting_terminal: bool = False
    subscribers: set[asyncio.Queue] = dataclasses.field(default_factory=set)
    # Of those, the ones registered before the start (subscribe_next_start), until the
    # request that registered each subscribes: request -> queue.
    early: dict[object, asyncio.Queue] = dataclasses.field(default_factory=dict)
    exited: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    exit_info: ExitInfo | None = None
    drained: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None
    timed_out: bool = False
    paused_readers: set[int] = dataclasses.field(default_factory=set)


class ContainerService:
    """Built by the daemon's composition root from the metadata store and the image and
    network services it shares with the other operations; it owns the runner (whose
    exits it settles) and the published-port proxy."""

    def __init__(self, config: DaemonConfig, store: Store, images: ImageService,
                 networks: NetworkService, volumes: VolumeService):
        self.config = config
        self.volumes = volumes
        self.root = Path(config.root)
        self._containers_dir = str(self.root / "containers")
        self.store = store
        self.images = images
        self.runner = AsyncRunner(self._on_exit, state_dir=str(self.root / "runtime"),
                                  cgroup_parent=config.cgroup_parent,
                                  template_entries=TEMPLATE_ENTRIES,
                                  exit_stats=False,     # no client reads them
                                  on_lost=self._runner_lost)
        self._runner_started = 0.0              # monotonic; restarts are spaced
        self.networks = networks
        self.ports = PortProxy()
        self.link_hosts: dict[str, str] = {}   # running containers' --link hosts lines
        self.live: dict[str, _Live] = {}
        self.exec_waiters: dict[tuple[str, str], asyncio.Future] = {}
        self.removed: dict[str, asyncio.Event] = {}
        # Exited --rm containers whose removal runs after their waiters (_settle): their
        # final records, which lookups find meanwhile, and the removals.
        self.exiting: dict[str, ContainerRecord] = {}
        self.removals: set[asyncio.Task] = set()
        self.starts: dict[str, asyncio.Event] = {}    # set when the container goes live
        # Output subscribers waiting for a container's next start (Docker's clients
        # attach, then start): container id -> request -> queue.
        self.next_subscribers: dict[str, dict[object, asyncio.Queue]] = {}
        self.changing: dict[str, asyncio.Future] = {}  # a start, kill or rm under way: its end
        self.held: dict[str, asyncio.Future] = {}   # stopped containers' roots held for cp
        self.pools: Any = None                  # pools.PoolService, when the root wires one
        self.events: EventBus = NOWHERE         # the daemon's bus, when the root wires one
        self.claimed: dict[str, Any] = {}       # created from a pool, not started: id -> Pooled
        # Starts in flight and when the last one ended: the pools refill when it is quiet.
        self.starting = 0
        self.last_start = 0.0
        self.health = healthchecks.HealthMonitor(self)
        # Restart policies (restart.py): pending restarts and each container's last delay.
        self.restarts: dict[str, asyncio.TimerHandle] = {}
        self.backoff: dict[str, float] = {}
        self.closing = False                    # shutting down: no policy restarts
        self._token = secrets.token_hex(8)      # names this service's derived values

    # ------------------------------------------------------------ start-up / shutdown

    async def startup(self) -> None:
        await self.runner.start()
        self._runner_started = time.monotonic()
        await self.networks.startup()
        for row in self.store.list_containers():
            record = self._record(row)
            if record.config.host.auto_remove or record.session:
                self._forget(record)
            elif record.state.status in lifecycle.RULES["exit"].allowed:
                self._save(dataclasses.replace(record, state=dataclasses.replace(
                    record.state, status=lifecycle.after("exit"), pid=0, exit_code=137,
                    finished_at=time.time(),
                    error="the daemon stopped while the container was running")))
        self._sweep_directories()
        self.images.cleanup()
        self.volumes.cleanup()
        back = [r.id for r in self.records() if policies.restores(r)
                and r.state.status not in RUNNING]
        if back:
            asyncio.ensure_future(self._restore(back))

    async def _restore(self, ids: list[str]) -> None:
        """The restart policies' containers the daemon brings back when it starts."""
        for container_id in ids:
            try:
                await self.start(self.get(container_id), by_policy=True)
            except SandboxError as e:
                log.warning("restart policy: %s did not start: %s", container_id[:12],
                            e.message)

    def _runner_lost(self) -> None:
        """The fork server died under the daemon (killed, the OOM killer). Its
        containers are out of reach: no exit of theirs will be reported, and they run on
        as orphans. Each ends now as killed (137), with the reason in its record; the
        pools forget their parked ones; and a new fork server starts, whose first act
        kills and removes the orphans (runner/cgroups.py, ``claim``)."""
        if self.closing:
            return
        log.error("the fork server (pid %d) exited unexpectedly: its %d containers are "
                  "ended, and a new one starts", self.runner.pid, len(self.live))
        info = ExitInfo(128 + signal.SIGKILL, signal.SIGKILL)
        for key in list(self.exec_waiters):
            self._on_exit(key[0], key[1], info)
        for container_id, held in list(self.held.items()):
            if not held.done():
                held.set_result(info)
        if self.pools is not None:
            for container_id in list(self.pools.owned):
                self.pools.lost(container_id)
        for container_id, live in list(self.live.items()):
            live.record = evolve(live.record, state=evolve(
                live.record.state, error="the daemon's fork server died; the container "
                                         "was killed"))
            self._on_exit(container_id, None, info)
            self._force_close(live)    # its orphans may hold the pipes until they are killed
        asyncio.ensure_future(self._restart_runner())

    async def _restart_runner(self) -> None:
        wait = RUNNER_RESTART_SPACING - (time.monotonic() - self._runner_started)
        if wait > 0:                   # one that dies at once is not restarted in a loop
            await asyncio.sleep(wait)
        if self.closing:
            return
        try:
            await self.runner.start()
        except SandboxError as e:
            log.error("the fork server did not start again: %s", e.message)
            return
        self._runner_started = time.monotonic()
        log.info("a new fork server (pid %d) runs", self.runner.pid)

    def _sweep_directories(self) -> None:
        """Remove container directories without a record: left by a daemon that died
        between a removal and its deferred directory removal (see :meth:`_forget`)."""
        try:
            entries = list((self.root / "containers").iterdir())
        except FileNotFoundError:
            return
        known = {row["id"] for row in self.store.list_containers()}
        for entry in entries:
            if entry.name not in known:
                trees.remove(entry)

    async def shutdown(self) -> None:
        self.closing = True
        self.health.close()
        for handle in self.restarts.values():
            handle.cancel()
        for live in list(self.live.values()):
            try:
                await self.runner.kill(live.record.id, signal.SIGKILL, all=True)
            except SandboxError:
                pass
        for live in list(self.live.values()):
            try:
                await asyncio.wait_for(live.drained.wait(), 10)
            except asyncio.TimeoutError:
                log.warning("container %s did not exit at shutdown", live.record.id[:12])
        await asyncio.gather(*self.removals, return_exceptions=True)
        await self.ports.close()
        await self.networks.shutdown()
        await self.runner.close()
        self.store.close()

    # ------------------------------------------------------------ records

    def _record(self, row: dict) -> ContainerRecord:
        doc = row["doc"]                     # a volatile row's is the record (_doc)
        return doc if type(doc) is ContainerRecord else ContainerRecord.from_dict(doc)

    def get(self, ref: Any) -> ContainerRecord:
        if not isinstance(ref, str) or not ref:
            raise InvalidArgument("id: a container id or name is required")
        if ref in self.live:
            return self.live[ref].record
        row = self.store.get_container(ref.lstrip("/"))
        if row is None:
            raise NotFound(f"No such container: {ref}")
        live = self.live.get(row["id"])
        return live.record if live else self.exiting.get(row["id"]) or self._record(row)

    def _save(self, record: ContainerRecord) -> ContainerRecord:
        self.store.save_container(record.id, record.name, record.state.status,
                                  _doc(record))
        if record.id in self.live:
            self.live[record.id].record = record
        return record

    def _set_state(self, record: ContainerRecord, persist: bool = True,
                   **changes: Any) -> ContainerRecord:
        """``persist=False``: the live record only (see ``start``)."""
        record = evolve(record, state=evolve(record.state, **changes))
        if persist:
            return self._save(record)
        if record.id in self.live:
            self.live[record.id].record = record
        return record

    def _dir_name(self, container_id: str) -> str:
        """The container's directory; a string where every run asks (a Path is ~4 us
        to make), ``_dir`` where its files are written."""
        return f"{self._containers_dir}/{container_id}"

    def _dir(self, container_id: str) -> Path:
        return Path(self._dir_name(container_id))

    def records(self) -> list[ContainerRecord]:
        """Every container's record (a running one's as the daemon holds it)."""
        return [self.live[row["id"]].record if row["id"] in self.live
                else self.exiting.get(row["id"]) or self._record(row)
                for row in self.store.list_containers()]

    async def container_setup(self) -> str:
        """How the runner sets containers up: "sbx-setup" (C), or "python" (until
        sbx-setup is built, or on a host without a C compiler; docs/runner.md)."""
        return str((await self.runner.ping()).get("setup", "python"))

    def cgroup_version(self) -> str:
        """"1" or "2": which cgroup hierarchy holds the containers' limits."""
        return "1" if self.runner.cgroup_version == "v1" else "2"

    # ------------------------------------------------------------ changes of a record

    async def pause(self, record: ContainerRecord) -> None:
        lifecycle.check("pause", record)
        await self.runner.pause(record.id)
        self.events.container(self._set_state(record, status=lifecycle.after("pause")), "pause")

    async def unpause(self, record: ContainerRecord) -> None:
        lifecycle.check("unpause", record)
        await self.runner.resume(record.id)
        self.events.container(self._set_state(record, status=lifecycle.after("unpause")),
                              "unpause")

    async def update(self, record: ContainerRecord, changes: dict[str, int | str]) -> None:
        """New limits and restart policy (``HostConfig`` field -> value); limits are
        applied live when it runs, the policy at its next exit. A CPU limit given one way
        replaces the other way's."""
        if "restart_policy" in changes:
            changes = {"restart_retries": 0, **changes}     # a new policy, its own count
        host = dataclasses.replace(record.config.host, **changes)
        if "nano_cpus" in changes:
            host = dataclasses.replace(host, cpu_quota=None)
        if "cpu_quota" in changes:
            host = dataclasses.replace(host, nano_cpus=None)
        if host.restart_policy != "no" and host.auto_remove:
            raise InvalidArgument("Restart policy cannot be updated because AutoRemove is "
                                  "enabled for the container")
        config = validate_config(dataclasses.replace(record.config, host=host))
        if record.state.status in RUNNING and host.limits() != record.config.host.limits():
            await self.runner.update(record.id, host.limits())
        self.events.container(self._save(dataclasses.replace(record, config=config)),
                              "update")

    def rename(self, record: ContainerRecord, name: str) -> None:
        renamed = self._save(dataclasses.replace(record, name=name.lstrip("/")))
        self.events.container(renamed, "rename", oldName=f"/{record.name}")

    async def prune(self, filters: Mapping[str, Sequence[str]]) -> list[str]:
        """Remove every stopped container the prune ``filters`` take; their ids."""
        pruned = prune_filter(filters, time.time())
        removed = []
        for record in self.records():
            if record.id not in self.live and record.state.status not in RUNNING and \
                    pruned(record.config.labels_dict(), record.created):
                await self.remove(record)
                removed.append(record.id)
        return removed

    async def restart(self, record: ContainerRecord,
                      timeout: int | None) -> ContainerRecord:
        await self.stop(record, timeout)
        record = await self.start(self.get(record.id))
        self.events.container(record, "restart")
        return record

    def resize(self, record: ContainerRecord, rows: int, cols: int) -> None:
        live = self.live.get(record.id)
        if live is None or live.terminal < 0:
            raise Conflict(f"container {record.name} has no running terminal")
        _resize(live.terminal, rows, cols)

    async def pids(self, record: ContainerRecord) -> list[int]:
        """The host pids of the container's processes (``top``)."""
        lifecycle.check("top", record)
        return sorted(await self.runner.pids(record.id))

    async def usage(self, record: ContainerRecord) -> dict[str, int]:
        """The runner's cgroup figures of a running container ({} when it is not)."""
        if record.state.status in RUNNING and record.id in self.live:
            return await self.runner.stats(record.id)
        return {}

    async def wait(self, record: ContainerRecord, condition: str) -> ContainerRecord:
        """The final record once ``condition`` holds (``removed``: after its exit, once
        it is removed too). ``next-exit`` and ``removed`` of a container that is not
        running wait for its next start first: Docker's clients wait, then start."""
        removed = self.removed.setdefault(record.id, asyncio.Event()) \
            if condition == "removed" else None
        if condition != "not-running" and record.id not in self.live:
            await self.next_start(record)
            if removed is not None and removed.is_set():     # removed, never started
                return record
        final = await self.wait_exit(record)
        if removed is not None:
            await removed.wait()
        return final

    async def next_start(self, record: ContainerRecord) -> bool:
        """Until the container is running (its output subscribable), its next start has
        failed, or it is removed; whether it is running."""
        if record.id in self.live:
            return True
        started = self.starts.setdefault(record.id, asyncio.Event())
        removed = self.removed.setdefault(record.id, asyncio.Event())
        waiters = [asyncio.ensure_future(started.wait()),
                   asyncio.ensure_future(removed.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return record.id in self.live

    # ------------------------------------------------------------ create

    def create(self, config: ContainerConfig, name: str | None, session: str = "",
               check_spec: bool = True) -> tuple[ContainerRecord, list[str]]:
        """``check_spec``: build the runner's spec once without running it, so that no
        problem waits for the start. ``container.run`` starts at once and builds the
        real one: it passes False and removes the record when that spec is refused."""
        validate_config(config)
        if name is not None:
            problems = check_name(name.lstrip("/"))
            if problems:
                raise InvalidArgument.of(problems)
            name = name.lstrip("/")
        image_id = self.images.image_id(config.image)
        # A pooled container's id is adopted: its host name was set with it (pools.py).
        pooled = self.pools.claim(config, image_id) if self.pools is not None else None
        try:
            record, warnings = self._build_record(config, image_id, name, session,
                                                  pooled.id if pooled else "")
            record, anonymous = self._resolve_volumes(record)
            self.ports.check(_port_bindings(record))   # a taken host port creates nothing
            if check_spec:                             # every problem before anything exists
                self._spec(record, dry_run=True)
            directory = self._dir_name(record.id)
            inline = _etc_inline(record)
            if not inline:                  # else made at its first output, if any
                os.makedirs(directory)
            try:
                self._make_volumes(record, anonymous)
                if not inline:
                    self._etc_files(Path(directory), record, fresh=True)
                self.store.put_container(record.id, record.name, "created",
                                         record.image_id, session or None,
                                         _doc(record), volatile=_volatile(record))
            except BaseException:
                trees.remove(directory)
                self.volumes.remove_anonymous(sorted(anonymous))
                raise
        except BaseException:
            if pooled is not None:
                asyncio.ensure_future(self.kill_quietly(pooled.id))
                self.release_pooled(pooled.id)
            raise
        if pooled is not None:
            self.claimed[record.id] = pooled
        self.events.container(record, "create")
        return record, warnings

    def _build_record(self, config: ContainerConfig, image_id: str, name: str | None,
                      session: str, container_id: str = ""
                      ) -> tuple[ContainerRecord, list[str]]:
        effective = config.derived(f"_effective {self._token} {image_id}",
                                   lambda: self._effective(config, image_id))
        argv = (effective.entrypoint or ()) + effective.cmd
        container_id = container_id or secrets.token_hex(32)
        record = ContainerRecord(
            id=container_id, name=name or self._free_name(container_id), created=time.time(),
            config=effective, image_id=image_id, path=argv[0], args=argv[1:],
            log_path=f"{self._dir_name(container_id)}/output.log", session=session)
        warnings: list[str] = []
        if not config.host.network_mode.startswith("container:"):
            network = self.networks.get(_network_name(config.host.network_mode))  # NotFound
            ip = config.host.ip_address          # config checked it is IPv4, user net
            if ip and network.subnet and IPv4Address(ip) not in IPv4Network(network.subnet):
                raise InvalidArgument(f"no configured subnet or ip-range contain the IP "
                                      f"address {ip}: network {network.name} has "
                                      f"{network.subnet}")
            if config.host.links and network.name != "bridge":
                raise InvalidArgument(
                    f"Conflicting options: --net=<NETWORK> can't be used with links: links "
                    f"are only supported for containers on the default bridge network; on "
                    f"network {network.name} containers reach each other by name")
        for link in config.host.links:
            self._link_target(link)
        return record, warnings

    def _effective(self, config: ContainerConfig, image_id: str) -> ContainerConfig:
        """The config a container of ``config`` runs: the image's defaults under it
        (env, labels, health check, command, working directory, user, ports) and the
        daemon's (``_host_defaults``). Both are fixed for an image id and this daemon,
        so it is made once per config (``ContainerConfig.derived``)."""
        defaults = self.images.config(image_id)
        env = {e.partition("=")[0]: e for e in defaults.get("Env") or []}
        env.update({e.partition("=")[0]: e for e in config.env})
        # Docker's merge: the image's labels under the container's own.
        labels = {k: f"{k}={v}" for k, v in (defaults.get("Labels") or {}).items() if k}
        labels.update({e.partition("=")[0]: e for e in config.labels})
        healthcheck = healthchecks.effective(config.healthcheck,
                                             healthchecks.from_image(defaults.get("Healthcheck")))
        entrypoint = (tuple(defaults.get("Entrypoint") or ()) if config.entrypoint is None
                      else config.entrypoint)
        cmd = config.cmd or (() if config.entrypoint is not None
                             else tuple(defaults.get("Cmd") or ()))
        if not entrypoint + cmd:
            raise InvalidArgument(f"no command given and image {config.image} has no "
                                  f"default command")
        image_ports = set()
        for port in defaults.get("ExposedPorts") or {}:
            keys = exposed_ports(str(port))
            if keys is None:          # an image is input: from a registry, a load
                raise InvalidArgument(f"image {config.image}: ExposedPorts {port!r:.40} is "
                                      f"not PORT[-END]/tcp|udp|sctp with ports in 1..65535")
            image_ports.update(keys)
        return dataclasses.replace(
            config, host=self._host_defaults(config.host),
            env=tuple(env.values()), labels=tuple(labels.values()), cmd=cmd,
            entrypoint=entrypoint, healthcheck=healthcheck,
            workdir=config.workdir or defaults.get("WorkingDir") or "",
            user=config.user or defaults.get("User") or "",
            exposed_ports=tuple(sorted(set(config.exposed_ports) | image_ports)))

    def _resolve_volumes(self, record: ContainerRecord) -> tuple[ContainerRecord, set[str]]:
        """The record's mounts with Docker's additions: ``--volumes-from`` (the other
        container's binds and volumes, its mode unless ``:ro``/``:rw``), then a new
        anonymous volume for each ``VOLUME`` of the image not mounted otherwise; every
        anonymous volume named (nothing is made yet). Also the names it made up. A bind
        source must exist (Docker's -v would make it: the daemon makes no host path)."""
        h = record.config.host
        mounts = list(h.mounts)
        for m in mounts:
            if m.type == "bind" and not os.path.lexists(m.source):
                raise InvalidArgument(f"invalid mount config for type \"bind\": bind "
                                      f"source path does not exist: {m.source}")
        taken = {m.destination.rstrip("/") or "/" for m in mounts}
        for entry in h.volumes_from:
            ref, _, mode = entry.partition(":")
            try:
                source = self.get(ref)
            except NotFound:
                raise InvalidArgument(f"volumes-from: no such container: {ref}") from None
            for m in source.config.host.mounts:
                if m.type in ("bind", "volume") and m.destination.rstrip("/") not in taken:
                    taken.add(m.destination.rstrip("/"))
                    mounts.append(m if not mode else dataclasses.replace(
                        m, readonly=mode == "ro"))
        for path in self.images.volumes(record.image_id):
            if path.startswith("/") and (path.rstrip("/") or "/") not in taken:
                taken.add(path.rstrip("/"))
                mounts.append(Mount(path, "volume"))
        anonymous = set()
        for i, m in enumerate(mounts):
            if m.type == "volume" and not m.source:
                name = secrets.token_hex(32)
                anonymous.add(name)
                mounts[i] = dataclasses.replace(m, source=name)
        if mounts == list(h.mounts) and not any(m.type == "volume" for m in mounts):
            return record, anonymous
        return dataclasses.replace(
            record, volume_dir=str(self.volumes.dir),
            config=dataclasses.replace(record.config, host=dataclasses.replace(
                h, mounts=tuple(mounts)))), anonymous

    def _make_volumes(self, record: ContainerRecord, anonymous: set[str]) -> None:
        """Make the volumes a new container mounts that do not exist yet (Docker makes
        a named one on first use) and fill each empty one from the image's content at
        its mount point, unless ``nocopy``."""
        for m in record.config.host.mounts:
            if m.type != "volume":
                continue
            labels = dict(o[len("label="):].partition("=")[::2] for o in m.options
                          if o.startswith("label="))
            opts = dict(o[len("opt="):].partition("=")[::2] for o in m.options
                        if o.startswith("opt="))
            if m.source in anonymous:
                labels[ANONYMOUS_LABEL] = ""
            self.volumes.create(m.source, labels=labels, options=opts)
            # Not into a volume another container mounts: it could race the copy.
            if "nocopy" not in m.options and not self.volumes.users().get(m.source):
                self.volumes.populate(m.source, self.images.layer_dirs(record.image_id),
                                      m.destination)

    def _host_defaults(self, h: HostConfig) -> HostConfig:
        """The daemon's defaults written into the record at create, so that a container
        keeps its caps whatever the daemon is started with later: the writable layer's
        size (a --rm container's layer is a tmpfs, in memory: 1 GiB unless it asks), the
        log driver and the log options it did not give."""
        size = h.storage_size
        if size is None and not h.read_only:
            size = RM_LAYER_SIZE if h.auto_remove else self.config.default_storage_size
        driver = h.log_driver or self.config.log_driver
        given = {o.partition("=")[0] for o in h.log_opts}
        opts = h.log_opts if driver == "none" else h.log_opts + tuple(
            o for o in self.config.log_opts if o.partition("=")[0] not in given)
        return dataclasses.replace(h, storage_size=size, log_driver=driver, log_opts=opts)

    def _link_target(self, link: Link) -> ContainerRecord:
        """The container a ``--link`` names, or the one whose network it shares."""
        try:
            target = self.get(link.name)
        except NotFound:
            raise InvalidArgument(f"could not get container for {link.name}") from None
        seen = {target.id}
        while target.config.host.network_mode.startswith("container:"):
            target = self.get(target.config.host.network_mode.partition(":")[2])
            if target.id in seen:
                raise InvalidArgument(f"cannot link to {link.name}: its network mode "
                                      f"refers back to itself")
            seen.add(target.id)
        if target.config.host.network_mode == "host":
            raise InvalidArgument(f"conflicting options: host type networking can't be used "
                                  f"with links: container {link.name} uses the host network")
        return target

    def _resolve_links(self, record: ContainerRecord) -> tuple[list[str], list[str]]:
        """A starting container's link variables and hosts lines: every target must run
        on the default bridge now (its address is what the link records)."""
        env: list[str] = []
        hosts: list[str] = []
        for link in record.config.host.links:
            target = self._link_target(link)          # whose namespace the server uses
            server = self.get(link.name)
            link_name = f"/{record.name}/{link.alias}"
            if server.state.status not in RUNNING or target.state.status not in RUNNING:
                raise Conflict(f"Cannot link to a non running container: /{server.name} AS "
                               f"{link_name}; start {server.name} first")
            ip = next((e.ip_address for e in target.endpoints
                       if e.network == "bridge" and e.ip_address), "")
            if not ip:
                raise Conflict(f"cannot link to container {server.name}: it is not on the "
                               f"default bridge network")
            env += link_env(link.alias, link_name, ip, server.config.exposed_ports,
                            server.config.env)
            # Docker's entry: the alias, the server's hostname and its name.
            names = dict.fromkeys((link.alias, server.hostname(),
                                   server.name))
            hosts.append(f"{ip}\t{' '.join(names)}\n")
        return env, hosts

    def _free_name(self, container_id: str) -> str:
        """A generated name as Docker's (daemon/names.go): adjective_noun, with a digit
        after it once one clashed, the short id after six clashes, so that however many
        containers hold generated names a create never loops on them."""
        for attempt in range(6):
            # One draw for both words (random.choice is two Python calls a word).
            pick = _NAMES.getrandbits(32)
            name = f"{_ADJECTIVES[pick % len(_ADJECTIVES)]}_" \
                   f"{_NOUNS[pick // len(_ADJECTIVES) % len(_NOUNS)]}"
            if attempt:
                name += str((pick >> 10) % 10)
            if not self.store.name_taken(name):
                return name
        return container_id[:12]

    # ------------------------------------------------------------ spec

    def _spec(self, record: ContainerRecord, dry_run: bool = False,
              netns: str = "private", link_vars: Sequence[str] = ()) -> ContainerSpec:
        """``netns``: the network service's namespace for this container (a path, or
        "host"); ``container:X`` modes join that container's instead. ``link_vars``
        come first: the container's own environment overrides them (as in Docker)."""
        c, h = record.config, record.config.host
        if h.oom_kill_disable and self.runner.cgroup_version != "v1":
            raise InvalidArgument("host.oom_kill_disable: this host's cgroup v2 has no way to "
                                  "disable the OOM killer (Docker ignores the flag there)")
        net = self._ns_mode(h.network_mode, "net") \
            if h.network_mode.startswith("container:") else netns
        namespaces = Namespaces(
            pid=self._ns_mode(h.pid_mode, "pid"), ipc=self._ns_mode(h.ipc_mode, "ipc"),
            uts="host" if h.uts_mode == "host" else "private", net=net)
        hostname = record.hostname()
        inline = not dry_run and _etc_inline(record)
        etc = () if dry_run or inline else self._etc_files(self._dir(record.id), record)
        files = tuple(File(f"/etc/{name}", text) for name, text in
                      self._etc_texts(record, self._hosts_text(record)).items()) \
            if inline else ()
        mounts = self.images.image_mounts(record.image_id) + etc + tuple(
            self.volumes.mount(m.source, m.destination, m.readonly)
            if m.type == "volume" else m for m in h.mounts)
        if h.shm_size and not any(m.destination == "/dev/shm" for m in h.mounts):
            # Over the runner's 64 MB one, with Docker's flags (a /dev/shm mount wins).
            mounts += (Mount("/dev/shm", "tmpfs", options=(
                "mode=1777", f"size={h.shm_size}", "noexec")),)
        if dry_run:
            from .runner.spec import RootFS
            root = RootFS(lowerdirs=("/",))
        else:
            root = self.images.prepare_rootfs(record.image_id, record.id,
                                              readonly=h.read_only,
                                              tmpfs_upper=h.auto_remove,
                                              size=h.storage_size or None)
        spec = ContainerSpec(
            id=record.id, hostname=hostname if namespaces.uts == "private" else "",
            process=self._process(record, link_vars),
            root=root, mounts=mounts, files=files, namespaces=namespaces,
            limits=c.derived("_limits", lambda: keep_wire(h.limits())),
            init=h.init, entry=self._entry(record), zygote=c.zygote, seccomp=h.seccomp(),
            sysctls=h.sysctls,
            **({"masked_paths": (), "readonly_paths": ()} if h.privileged else {}))
        # The create's check (dry run) says what is wrong before anything exists; a
        # start's spec is checked once, where the fork server takes it.
        return validate(spec) if dry_run else spec

    def _process(self, record: ContainerRecord, link_vars: Sequence[str] = ()) -> Process:
        if not link_vars:       # then it follows from the config (and argv from that)
            return record.config.derived(
                f"_process {self._token} {record.path} {record.args}",
                lambda: keep_wire(self._make_process(record, ())))
        return self._make_process(record, link_vars)

    def _make_process(self, record: ContainerRecord, link_vars: Sequence[str]) -> Process:
        c, h = record.config, record.config.host
        return Process(args=(record.path, *record.args), env=_merge_env(link_vars, c.env),
                       cwd=c.workdir or "/", user=c.user, terminal=c.tty,
                       ulimits=self._ulimits(record), capabilities=h.capabilities(),
                       no_new_privileges=h.no_new_privileges(), groups=h.group_add,
                       console_size=h.console_size if c.tty else ())

    def _entry(self, record: ContainerRecord) -> str:
        """The template runs the host's own Python: only the host image may use it."""
        entry = record.config.entry
        if entry and record.image_id != self.images.host_id:
            raise InvalidArgument(f"entry {entry!r}: only the host image runs from the "
                                  f"template, not {record.config.image!r}; drop the entry")
        return entry

    def _ulimits(self, record: ContainerRecord) -> tuple[Ulimit, ...]:
        """The container's ulimits over the daemon's defaults; nofile is always set (the
        daemon's own limit is no default for containers). Execs get the same."""
        ulimits = merge_ulimits(self.config.default_ulimits, record.config.host.ulimits)
        if not any(u.name == "nofile" for u in ulimits):
            import resource
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            ulimits += (Ulimit("nofile", min(1024, hard), min(hard, 1 << 19)),)
        return ulimits

    def _ns_mode(self, mode: str, kind: str) -> str:
        if mode in ("", "private", "shareable"):
            return "private"
        if mode == "host":
            return "host"
        if mode.startswith("container:"):
            target = self.get(mode.partition(":")[2])
            if target.state.status != "running":
                raise Conflict(f"cannot join the {kind} namespace of container "
                               f"{target.name}: it is not running")
            return f"/proc/{target.state.pid}/ns/{kind}"
        raise InvalidArgument(f"{kind} mode {mode!r} is not supported")

    def _etc_texts(self, record: ContainerRecord, hosts: str) -> dict[str, str]:
        """The container's /etc/hostname, hosts and resolv.conf."""
        hostname = record.hostname()
        return {"hostname": hostname + "\n", "hosts": hosts,
                "resolv.conf": self._resolv_text(record)}

    def _resolv_text(self, record: ContainerRecord, embedded: bool = False) -> str:
        """Docker's resolv.conf for the container's network (sandboxd/resolvconf.py):
        its --dns* over the host's file; no --dns: the daemon's --dns (not on
        ``none``, which has no server to reach), else the host's servers, filtered on
        bridges. A container:X container gets X's (as Docker
        shares X's file; joining needs X running, so X is there). ``embedded``: the
        file of a user network (the embedded resolver), whatever the network mode."""
        h = record.config.host
        if h.network_mode.startswith("container:"):
            with contextlib.suppress(NotFound):
                h = self.get(h.network_mode.partition(":")[2]).config.host
        network = _network_name(h.network_mode)
        with contextlib.suppress(NotFound):
            network = self.networks.get(network).name      # an id given as --network
        mode = h.network_mode if h.network_mode in ("host", "none") else \
            "bridge" if network in BUILTIN and not embedded else "user"
        return resolvconf.container_text(
            self._host_resolv(mode == "host"), mode,
            h.dns or (self.config.dns if mode != "none" else ()), h.dns_search,
            h.dns_options)

    def _resolv_to_embedded(self, record: ContainerRecord) -> None:
        """A default bridge container joined its first user network: its resolv.conf
        names the embedded resolver now (as Docker rewrites it), unless the container
        edited the file. A later start on the default bridge writes the bridge's again."""
        text = self._resolv_text(record, embedded=True)
        if _etc_inline(record):
            self._write_inline(record, "/etc/resolv.conf", text)
            return
        path = self._dir(record.id) / "resolv.conf"
        try:
            if _unmodified(path):
                _write_in_place(path, text)
                _hash_path(path).write_text(_digest(text))
        except FileNotFoundError:                 # its directory is being removed
            pass

    def _host_resolv(self, host_network: bool = False) -> str:
        """The host's resolv.conf text containers' are made from (systemd-resolved's
        upstream file behind its stub, except for ``--network host``)."""
        etc = _read_host_file(resolvconf.ETC) or ""
        if host_network or resolvconf.host_path(etc, True) == resolvconf.ETC:
            return etc
        systemd = _read_host_file(resolvconf.SYSTEMD, None)
        return etc if systemd is None else systemd

    def _own_hosts(self, record: ContainerRecord) -> str:
        """A container's own /etc/hosts lines: localhost, its host name, its --add-host
        entries (``host-gateway``: the default bridge's gateway, Docker's default
        host-gateway-ip)."""
        extra = ""
        for entry in record.config.host.extra_hosts:
            name, _, ip = entry.partition(":")
            if ip == HOST_GATEWAY:
                ip = self.networks.get("bridge").gateway
            extra += f"{ip}\t{name}\n"
        return _base_hosts(record) + extra

    def _etc_files(self, directory: Path, record: ContainerRecord, fresh: bool = False
                   ) -> tuple[Mount, ...]:
        """Bind mounts of the container's /etc/hostname, hosts and resolv.conf (a
        container with a persistent layer; a --rm one gets them as spec files, see
        :func:`_etc_inline`). They are written at create (``fresh``: a new directory); a
        start rewrites a missing file, and resolv.conf when the host's has changed
        since and the container left its copy as written (Docker's rule: a hash of
        what was written, kept beside it)."""
        files = self._etc_texts(record, self._own_hosts(record))
        mounts = []
        for name, text in files.items():
            path = directory / name
            written = fresh or not path.exists() or (
                name == "resolv.conf" and _unmodified(path) and _read(str(path)) != text)
            if fresh:
                path.write_text(text)
            elif written:
                tmp = path.with_name(name + ".tmp")
                tmp.write_text(text)
                os.replace(tmp, path)
            if written and name == "resolv.conf":
                _hash_path(path).write_text(_digest(text))
            mounts.append(Mount(f"/etc/{name}", "bind", str(path)))
        return tuple(mounts)

    # ------------------------------------------------------------ names on networks
    #
    # As Docker's: a container's /etc/hosts holds its own names (localhost, its host
    # name, --add-host) and its links' entries on the default bridge, nothing of the
    # other containers of a user network: those are the embedded resolver's
    # (sandboxd/dns.py), so no container's file is rewritten when another joins or
    # leaves.

    def _hosts_text(self, record: ContainerRecord) -> str:
        """A container's /etc/hosts: its own names and its links'."""
        return self._own_hosts(record) + self.link_hosts.get(record.id, "")

    def _write_inline(self, record: ContainerRecord, path: str, text: str) -> None:
        """Rewrite an /etc file a --rm container has in its own layer, through its
        root: resolved inside it, on its root filesystem alone (no symlink or mount
        leads elsewhere; one the container mounted over /etc is left alone). A
        container still starting is skipped: its spec has the text, and :meth:`start`
        refreshes it once it runs."""
        if record.state.status not in RUNNING or record.id not in self.live:
            return
        try:
            root = self._proc_root(record, record.state.pid)
        except Conflict:                          # exited meanwhile
            return
        try:
            write_in_root(root, path, text, syscalls.RESOLVE_NO_XDEV)
        except OSError as e:
            log.info("container %s: %s not updated: %s", record.id[:12], path, e)
        finally:
            os.close(root)

    def _release_network(self, container_id: str) -> None:
        """Give back a container's network and published ports; the others on a user
        network forget it."""
        self.ports.release(container_id)
        self.link_hosts.pop(container_id, None)
        self.networks.release(container_id)

    async def connect(self, record: ContainerRecord, network: str, ip: str = "",
                      aliases: Sequence[str] = ()) -> ContainerRecord:
        """``network connect``: a running container joins one more network live."""
        lifecycle.check("connect", record, record.id in self.live)
        had_resolver = self.networks.has_resolver(record.id)
        endpoint = await self.networks.connect(record.id, network, ip=ip,
                                               aliases=(record.name, *aliases))
        if not had_resolver and self.networks.has_resolver(record.id):
            self._resolv_to_embedded(record)
        record = self.get(record.id)
        return self._save(dataclasses.replace(record,
                                              endpoints=record.endpoints + (endpoint,)))

    async def disconnect(self, record: ContainerRecord, network: str,
                         force: bool = False) -> ContainerRecord:
        """``network disconnect``: its interface on that network goes; with ``force``
        a container that is not attached (or not running) is no error."""
        try:
            net = await self.networks.disconnect(record.id, network)
        except NotFound:
            if force:
                return record
            raise
        record = self.get(record.id)
        left = [e for e in record.endpoints if e.network == net.name]
        record = self._save(dataclasses.replace(record, endpoints=tuple(
            e for e in record.endpoints if e.network != net.name)))
        if left and left[0].ip_address == self.ports.target(record.id):
            # Published ports follow the container to an address it still has.
            other = next((e.ip_address for e in record.endpoints if e.ip_address), "")
            if other:
                self.ports.retarget(record.id, other)
        return record

    # ------------------------------------------------------------ start / exit

    async def start(self, record: ContainerRecord, stdin: bool = False,
                    by_policy: bool = False) -> ContainerRecord:
        """``by_policy``: a restart policy's start (else a user's: it zeroes the restart
        count and the backoff, and cancels a pending restart).

        A second start waits for one under way and then finds the container running
        (a no-op, as Docker's second start): two restarts at once both passed the state
        check, and the second failed in the middle ("already attached to network
        bridge")."""
        async with _Turn(self, record) as record:
            return await self._start(record, stdin, by_policy)

    async def _settled(self, record: ContainerRecord) -> ContainerRecord:
        """The record once no start, kill or removal of it is under way."""
        while (under_way := self.changing.get(record.id)) is not None:
            await asyncio.shield(under_way)
            record = self.get(record.id)
        return record

    async def _start(self, record: ContainerRecord, stdin: bool,
                     by_policy: bool) -> ContainerRecord:
        self._check_not_held(record)
        if not by_policy:
            self._cancel_restart(record.id)
        if not lifecycle.check("start", record):
            return record                         # running already
        mode = record.config.host.network_mode
        pooled = self.claimed.pop(record.id, None)
        spec = None
        if pooled is not None:           # all but the process is made (pools.py)
            record = dataclasses.replace(
                record, endpoints=(pooled.attachment.endpoint,)
                if pooled.attachment.netns != "host" else (),
                sandbox_key=pooled.attachment.sandbox_key)
        elif mode.startswith("container:"):
            spec = self._spec(record)
        else:
            link_vars, link_hosts = self._resolve_links(record)
            h = record.config.host
            attachment = await self.networks.attach(
                record.id, _network_name(mode), ip=h.ip_address,
                aliases=(record.name, *h.network_aliases),
                upstreams=resolvconf.upstreams(self._host_resolv(), h.dns,
                                               self.config.dns))
            try:
                self.link_hosts[record.id] = "".join(link_hosts)
                spec = self._spec(record, netns=attachment.netns, link_vars=link_vars)
                if not _etc_inline(record):           # else in the spec
                    _write_in_place(self._dir(record.id) / "hosts", self._hosts_text(record))
                # Listening before the process runs: a taken port fails the start.
                ports = await self.ports.publish(record.id, attachment.endpoint.ip_address,
                                                 _port_bindings(record))
            except BaseException:
                self._release_network(record.id)
                raise
            # Saved with the state change below: one write for the whole start.
            record = evolve(
                record, endpoints=(attachment.endpoint,) if attachment.netns != "host" else (),
                sandbox_key=attachment.sandbox_key, ports=ports)
        host = record.config.host
        if host.log_driver:
            limits = record.config.derived("_log_limits", host.log_limits)
        else:                            # a record from before log options: today's defaults
            host = self._host_defaults(dataclasses.replace(host, storage_size=0))
            limits = host.log_limits()
        writer = LogWriter(record.log_path, *limits, keep=host.log_driver != "none")
        live = _Live(record, writer, {})
        # Subscribed before any output can be read: a Docker client's attach waits for
        # the start, and the output of a fast command could come before it subscribed.
        early = self.next_subscribers.pop(record.id, None)
        if early:
            live.early = early
            live.subscribers.update(early.values())
        stdio: tuple[int, ...]
        theirs: list[int] = []
        console = None
        try:
            if record.config.tty:
                live.awaiting_terminal = True
                console, console_theirs = socket.socketpair()
                stdio = (console_theirs.fileno(),)
                theirs.append(console_theirs.detach())
            else:
                stdio, live.stdin, live.fds = _stdio_pipes(stdin and record.config.open_stdin)
                theirs += stdio
            self.live[record.id] = live
            started = self.starts.pop(record.id, None)
            if started is not None:
                started.set()
            self.starting += 1
            try:
                pid = await (self.runner.spawn(spec, stdio) if spec is not None else
                             self.runner.take(record.id, self._process(record), stdio))
            finally:
                self.starting -= 1
                self.last_start = time.monotonic()
                _close(*theirs)
                theirs.clear()
            if console is not None:
                live.terminal = receive_terminal(console)
                os.set_blocking(live.terminal, False)
                live.fds = {live.terminal: 1}
                live.awaiting_terminal = False
                if stdin and record.config.open_stdin:
                    live.stdin = live.terminal
                if live.exited.is_set():
                    self._bound_terminal(live)
        except BaseException as exc:
            self.live.pop(record.id, None)
            self._release_network(record.id)
            _close(*live.fds, live.stdin, *theirs)
            writer.close()
            if pooled is not None and isinstance(exc, NotFound):
                # Its parked process is gone (killed meanwhile): a cold start instead.
                if live.early:
                    self.next_subscribers[record.id] = live.early
                self._release_rootfs(record.id)
                return await self._start(record, stdin, by_policy)
            if pooled is not None:
                # The take was refused: its parked process must not outlive the record.
                asyncio.ensure_future(self.kill_quietly(record.id))
            if isinstance(exc, SandboxError):
                code = getattr(exc, "exit_code", None)
                live.record = self._set_state(record, error=exc.message,
                                              exit_code=code if code is not None else 128)
            # Waiters and attachers woken by ``started`` above hold ``live``: end them
            # (else a Docker client's wait and attach of a start that failed hang). A
            # start that failed before that (a published port taken, out of fds) wakes
            # those still waiting.
            started = self.starts.pop(record.id, None)
            if started is not None:
                started.set()
            for queue in live.subscribers:
                queue.put_nowait(None)
            live.drained.set()
            raise
        finally:
            if console is not None:
                console.close()
        loop = asyncio.get_running_loop()
        for fd in live.fds:
            loop.add_reader(fd, self._on_output, live, fd)
        hc = record.config.healthcheck
        if not by_policy and record.restart_count:
            record = dataclasses.replace(record, restart_count=0)
        # A --rm container's row stays as the create wrote it until the exit deletes it:
        # while it runs, every lookup finds the live record first (get, records), and a
        # daemon that dies meanwhile forgets --rm rows whatever their state (startup),
        # so the running state need not reach the disk: one write fewer per run.
        record = self._set_state(record, not record.config.host.auto_remove,
                                 status=lifecycle.after("start"), pid=pid, exit_code=0,
                                 oom_killed=False, timed_out=False, error="",
                                 started_at=time.time(), finished_at=None,
                                 manually_stopped=False, health=Health(
                                     "starting" if healthchecks.active(hc) else ""))
        self.events.mounts(record, "mount")
        self.events.container(record, "start")
        if healthchecks.active(hc):
            self.health.watch(record.id, hc)
        if record.config.host.timeout:
            live.timer = loop.call_later(record.config.host.timeout, self._time_out, live)
        return record

    def _time_out(self, live: _Live) -> None:
        live.timed_out = True
        asyncio.ensure_future(self.kill_quietly(live.record.id))

    async def kill_quietly(self, container_id: str) -> None:
        try:
            await self.runner.kill(container_id, signal.SIGKILL, all=True)
        except SandboxError:
            pass

    def _on_output(self, live: _Live, fd: int) -> None:
        data = _read_ready(fd)
        if data is None:
            return
        stream = live.fds.get(fd, 1)
        if not data:
            self._close_output(live, fd)
            return
        live.log.write(stream, data)
        for queue in list(live.subscribers):
            if queue.full():
                # A slow reader: stop reading this pipe until it catches up, so the
                # container blocks instead of the daemon buffering without bound.
                asyncio.get_running_loop().remove_reader(fd)
                live.paused_readers.add(fd)
                asyncio.ensure_future(self._resume_after(live, fd, queue, stream, data))
                return
            queue.put_nowait((stream, data))

    async def _resume_after(self, live: _Live, fd: int, queue: asyncio.Queue, stream: int,
                            data: bytes) -> None:
        await queue.put((stream, data))
        for other in list(live.subscribers):
            if other is not queue and not other.full():
                other.put_nowait((stream, data))
        if fd in live.paused_readers:
            live.paused_readers.discard(fd)
            asyncio.get_running_loop().add_reader(fd, self._on_output, live, fd)

    def _close_output(self, live: _Live, fd: int) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(fd)
        live.fds.pop(fd, None)
        if fd == live.stdin:
            live.stdin = -1
        if fd == live.terminal:
            live.terminal = -1     # its number may be reused: no late resize may reach it
        os.close(fd)
        if not live.fds and live.exited.is_set():
            self._settle(live)        # else _on_exit settles it, finding no output open

    def _on_exit(self, container_id: str, exec_id: str | None, info: ExitInfo) -> None:
        if exec_id is not None:
            waiter = self.exec_waiters.pop((container_id, exec_id), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(info)
            live = self.live.get(container_id)
            if live is not None:
                self.events.container(live.record, "exec_die", execID=exec_id,
                                      exitCode=info.exit_code)
            return
        held = self.held.get(container_id)
        if held is not None and not held.done():
            held.set_result(info)
            return
        live = self.live.get(container_id)
        if live is None:
            if self.pools is not None:
                self.pools.lost(container_id)     # a parked container, if it was one
            return
        live.exit_info = info
        live.exited.set()
        if live.terminal >= 0 and live.terminal in live.fds:
            self._bound_terminal(live)
        if not live.fds and not live.awaiting_terminal:
            self._settle(live)

    def _bound_terminal(self, live: _Live) -> None:
        """The pty master reads until EIO, which a background process still holding the
        slave delays forever: after the exit, it is read for half a second at most."""
        asyncio.get_running_loop().call_later(0.5, self._force_close, live)

    def _force_close(self, live: _Live) -> None:
        for fd in list(live.fds):
            self._close_output(live, fd)

    def _settle(self, live: _Live) -> None:
        """Output closed and the exit known: the final record, for the waiters (woken
        once this returns). A --rm container is removed after them, in a task of its own,
        so that a --rm run's reply goes first; lookups meanwhile find its final record
        (``exiting``), and the removal runs before any request that comes after."""
        if live.drained.is_set():
            return
        live.drained.set()
        self.health.stop(live.record.id)
        if live.timer is not None:
            live.timer.cancel()
        _close(live.stdin)
        live.log.close()
        info = live.exit_info
        record = live.record
        self.live.pop(record.id, None)
        if not record.config.host.auto_remove:        # else with the removal
            self._release_network(record.id)
        for queue in live.subscribers:
            queue.put_nowait(None)
        live.record = evolve(
            record, endpoints=(), ports=(), sandbox_key="", state=evolve(
                record.state, status=lifecycle.after("exit"), pid=0, exit_code=info.exit_code,
                oom_killed=info.oom_killed, timed_out=live.timed_out,
                finished_at=time.time()))
        self.events.exited(live.record)
        self.events.mounts(record, "unmount")
        if record.config.host.auto_remove:
            self.exiting[record.id] = live.record
            task = asyncio.ensure_future(self._remove_exited(live.record))
            self.removals.add(task)
            task.add_done_callback(self.removals.discard)
        elif not self.closing and policies.should_restart(live.record):
            self._schedule_restart(live.record)
        else:
            self._save(live.record)

    async def _remove_exited(self, record: ContainerRecord) -> None:
        try:
            await self.remove(record, force=True, files_later=True)
        except NotFound:
            pass                                       # a user's rm -f was first
        except BaseException:
            # Kept as it is when the removal failed before its row went; after that
            # there is nothing to keep, and the removal's own error is the one to tell.
            with contextlib.suppress(NotFound):
                self._save(record)
            raise
        finally:
            self.exiting.pop(record.id, None)
            self._release_network(record.id)       # done by the removal, unless it failed

    def _schedule_restart(self, record: ContainerRecord) -> None:
        """``restarting`` until the policy's delay has passed, then a start."""
        s = record.state
        ran = (s.finished_at or 0) - (s.started_at or 0)
        delay = self.backoff[record.id] = policies.next_delay(
            self.backoff.get(record.id, 0.0), ran)
        self._save(dataclasses.replace(record, restart_count=record.restart_count + 1,
                                       state=dataclasses.replace(s, status="restarting")))
        self.restarts[record.id] = asyncio.get_running_loop().call_later(
            delay, lambda: asyncio.ensure_future(self._restart_now(record.id)))

    async def _restart_now(self, container_id: str) -> None:
        self.restarts.pop(container_id, None)
        try:
            record = self.get(container_id)
        except NotFound:
            return
        if record.state.status != "restarting" or container_id in self.live:
            return
        try:
            await self.start(record, by_policy=True)
        except SandboxError as e:                 # its error is in the record already
            log.warning("restart policy: %s did not start: %s", container_id[:12],
                        e.message)
            self._set_state(self.get(container_id), status="exited")

    def _cancel_restart(self, container_id: str) -> bool:
        """A pending policy restart cancelled (a user's start, stop, kill or rm):
        whether there was one. The next quick exit starts the delay over."""
        self.backoff.pop(container_id, None)
        handle = self.restarts.pop(container_id, None)
        if handle is None:
            return False
        handle.cancel()
        return True

    def live_record(self, container_id: str) -> ContainerRecord | None:
        live = self.live.get(container_id)
        return live.record if live is not None else None

    def set_health(self, container_id: str, health: Health) -> None:
        """A health check's result (health.py), while the container runs."""
        live = self.live.get(container_id)
        if live is not None and not live.drained.is_set():
            before = live.record.state.health.status
            record = self._set_state(live.record, health=health)
            if health.status != before:                  # Docker's event on a change
                self.events.container(record, f"health_status: {health.status}")

    async def probe(self, record: ContainerRecord, args: Sequence[str], timeout: float,
                    limit: int) -> tuple[int, str]:
        """``args`` as an exec of the running container that no one attaches to (a
        health check): its exit code and the first ``limit`` bytes of its output
        (stdout and stderr); -1 when it ran past ``timeout`` seconds (then killed)."""
        process = dataclasses.replace(self._spec_process(record), args=tuple(args),
                                      terminal=False, console_size=())
        exec_id = secrets.token_hex(16)
        # Docker's probes are execs, with an exec's events (exec_die from _on_exit).
        self.events.container(record, f"exec_create: {' '.join(args)}", execID=exec_id)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        out_r = out_w = nul = -1
        try:
            out_r, out_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            os.set_blocking(out_w, True)
            nul = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            self.exec_waiters[(record.id, exec_id)] = waiter
            await self.runner.exec(record.id, exec_id, process, (nul, out_w, out_w))
        except BaseException:
            self.exec_waiters.pop((record.id, exec_id), None)
            _close(out_r)
            raise
        finally:
            _close(nul, out_w)
        self.events.container(record, f"exec_start: {' '.join(args)}", execID=exec_id)
        output = bytearray()
        eof = loop.create_future()

        def readable() -> None:
            try:
                data = os.read(out_r, READ_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(out_r)
                if not eof.done():
                    eof.set_result(None)
            output.extend(data[:max(0, limit - len(output))])

        loop.add_reader(out_r, readable)
        try:
            try:
                info = await asyncio.wait_for(asyncio.shield(waiter), timeout)
            except asyncio.TimeoutError:
                await self.kill_quietly_exec(record.id, exec_id)
                return -1, ""
            # What it left in the pipe (a child it left behind may hold it open).
            await asyncio.wait([eof], timeout=0.5)
            return info.exit_code, output.decode(errors="replace")
        finally:
            loop.remove_reader(out_r)
            _close(out_r)
            self.exec_waiters.pop((record.id, exec_id), None)

    async def kill_quietly_exec(self, container_id: str, exec_id: str) -> None:
        try:
            await self.runner.kill(container_id, signal.SIGKILL, exec_id=exec_id)
        except SandboxError:
            pass

    def result(self, record: ContainerRecord) -> dict:
        s = record.state
        return {"id": record.id, "exit_code": s.exit_code, "oom_killed": s.oom_killed,
                "timed_out": s.timed_out, "error": s.error, "started_at": s.started_at,
                "finished_at": s.finished_at}

    async def wait_exit(self, record: ContainerRecord,
                        live: _Live | None = None) -> ContainerRecord:
        """The record once the container has exited (its final one, even when --rm
        removed it meanwhile: pass the ``live`` taken while it ran)."""
        live = live or self.live.get(record.id)
        if live is not None:
            await live.drained.wait()
            return live.record
        return self.get(record.id)

    # ------------------------------------------------------------ stop / kill / remove

    async def kill(self, record: ContainerRecord, sig: int) -> None:
        async with _Turn(self, record) as record:
            if self._cancel_restart(record.id):       # restarting: nothing runs to signal
                self._set_state(record, status="exited", manually_stopped=True)
                return
            lifecycle.check("kill", record, record.id in self.live)
            self._set_state(record, manually_stopped=True)     # Docker's: no policy restart
            await self.runner.kill(record.id, sig, all=sig == signal.SIGKILL)
            self.events.container(record, "kill", signal=sig)

    async def stop(self, record: ContainerRecord, timeout: int | None) -> None:
        """Its signals take their turns with starts, kills and removals, and go only to
        the run that was current when the stop began: a stop's SIGKILL sent after that
        run ended killed the set-up of the next start (a restart racing a stop)."""
        async with _Turn(self, record) as record:
            if self._cancel_restart(record.id):
                self._set_state(record, status="exited", manually_stopped=True)
                return
            live = self.live.get(record.id)
            if live is None:
                return
            record = self._set_state(live.record, manually_stopped=True)
            if timeout is None:
                timeout = record.config.stop_timeout \
                    if record.config.stop_timeout is not None else 10
            if record.state.status == "paused":
                with contextlib.suppress(Conflict):   # it ended meanwhile (killed, unpaused)
                    await self.runner.resume(record.id)
            # Docker's events for a stop: kill (the stop signal), kill (9) if that was
            # not enough, die, stop.
            sig = parse_signal(record.config.stop_signal)
            self.events.container(record, "kill", signal=sig)    # before its die
            try:
                await self.runner.kill(record.id, sig)
            except Conflict:
                pass                                  # it ended meanwhile
            except SandboxError:
                timeout = 0                           # no stop signal: SIGKILL at once
        try:
            await asyncio.wait_for(asyncio.shield(live.drained.wait()),
                                   None if timeout < 0 else timeout)
        except asyncio.TimeoutError:
            await self._kill_run(live)
        await live.drained.wait()
        self.events.container(record, "stop")

    async def _kill_run(self, live: _Live) -> None:
        """SIGKILL, in a turn, to the run that ``live`` holds; nothing once it has ended."""
        try:
            async with _Turn(self, live.record) as record:
                if self.live.get(record.id) is live and not live.exited.is_set():
                    self.events.container(record, "kill", signal=int(signal.SIGKILL))
                    await self.kill_quietly(record.id)
        except NotFound:
            pass                                      # removed meanwhile

    async def remove(self, record: ContainerRecord, force: bool = False,
                     files_later: bool = False, volumes: bool = False) -> None:
        """``files_later``: see :meth:`_forget`; ``volumes`` (``rm -v``): its anonymous
        volumes go too (a ``--rm`` container's always do). It takes its turn with starts
        and kills: an ``rm -f`` during a start killed the process before the fork server
        knew it, and then waited for it to end on its own (a ``sleep 60``: 60 s)."""
        async with _Turn(self, record) as record:
            self._check_not_held(record)
            self._cancel_restart(record.id)
            live = self.live.get(record.id)
            if live is not None:
                if not force:              # its process counts, whatever the record says
                    raise lifecycle.refusal("remove", record, "running")
                if live.record.state.status in RUNNING:       # not an --rm's own exit
                    self.events.container(record, "kill", signal=int(signal.SIGKILL))
                await self.kill_quietly(record.id)
                await live.drained.wait()
                self._cancel_restart(record.id)       # the exit may have scheduled one
            if not self._forget(record, files_later=files_later, volumes=volumes):
                return                                 # removed meanwhile
            self.events.container(record, "destroy")
            self.starts.pop(record.id, None)
            event = self.removed.pop(record.id, None)
            if event is not None:
                event.set()

    def _forget(self, record: ContainerRecord, files_later: bool = False,
                volumes: bool = False) -> bool:
        """Drop a stopped container's record, then its files (metadata first).

        ``files_later``: its directory goes in a worker thread, off the path of what
        the caller sends next (a --rm run's result): no one finds the container once its
        record is gone, and a daemon killed before the directory goes sweeps it at
        start-up. False when its record was gone already (removed meanwhile): nothing
        is done then."""
        try:
            self.store.delete_container(record.id)
        except NotFound:
            return False
        self._discard_claimed(record.id)
        self._release_network(record.id)
        if (volumes or record.config.host.auto_remove) and any(
                m.type == "volume" for m in record.config.host.mounts):
            self.volumes.remove_anonymous([m.source for m in record.config.host.mounts
                                           if m.type == "volume"])
        self._release_rootfs(record.id)
        directory = self._dir_name(record.id)
        if not os.path.exists(directory):       # a --rm container that printed nothing
            return True
        if files_later:
            asyncio.get_running_loop().run_in_executor(None, trees.remove, directory)
        else:
            trees.remove(directory)
        return True

    def _release_rootfs(self, container_id: str) -> None:
        try:
            self.images.release_rootfs(container_id)
        except (NotFound, SandboxError):
            pass

    # ------------------------------------------------------------ pooled (pools.py)

    async def prepare_pooled(self, config: ContainerConfig, helper: str = "") -> Any:
        """A container of ``config`` for a pool: a record's id (never stored; the
        request that takes it adopts it), its network attached, its root prepared, its
        pid 1 parked before the exec by the runner, in ``helper`` (sbx-park's path;
        "": in Python). A ``pools.Pooled``."""
        from .pools import Pooled
        config = dataclasses.replace(config, entrypoint=(), cmd=("sandboxd-pooled",))
        record, _ = self._build_record(config, self.images.image_id(config.image),
                                        "pooled", "")
        attachment = await self.networks.attach(
            record.id, _network_name(config.host.network_mode))
        try:
            pid = await self.runner.prepare(self._spec(record, netns=attachment.netns),
                                            helper, direct=True)
        except BaseException:
            self.release_pooled(record.id)
            raise
        return Pooled(record.id, pid, attachment, time.time())

    def release_pooled(self, container_id: str) -> None:
        """A pooled container's network and root, after its pid 1 is gone."""
        self._release_network(container_id)
        self._release_rootfs(container_id)

    def _discard_claimed(self, container_id: str) -> None:
        """A container created from a pool and removed unstarted: its parked pid 1
        goes (its network and root go with the record)."""
        if self.claimed.pop(container_id, None) is not None:
            asyncio.ensure_future(self.kill_quietly(container_id))

    # ------------------------------------------------------------ exec

    async def exec(self, ctx: RequestContext, record: ContainerRecord, cmd: list[str],
                   env: list[str], workdir: str, user: str, tty: bool, stdin: bool,
                   detach: bool, detach_keys: bytes = b"",
                   console_size: Sequence[int] = ()) -> dict:
        """An exec; ``detach_keys`` typed on its terminal (with stdin) end the client's
        part with a ``detached`` event while the process goes on (see docs/operations)."""
        lifecycle.check("exec", record, record.id in self.live)
        base = self._spec_process(record)
        merged = {e.partition("=")[0]: e for e in base.env}
        merged.update({e.partition("=")[0]: e for e in env})
        process = dataclasses.replace(base, args=tuple(cmd), env=tuple(merged.values()),
                                      cwd=workdir or base.cwd, user=user or base.user,
                                      terminal=tty,
                                      console_size=tuple(console_size) if tty else ())
        exec_id = secrets.token_hex(16)
        self.events.container(record, f"exec_create: {' '.join(cmd)}", execID=exec_id)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self.exec_waiters[(record.id, exec_id)] = waiter
        fds: dict[int, int] = {}
        stdin_fd = -1
        console = None
        try:
            if tty:
                console, console_theirs = socket.socketpair()
                with console_theirs:
                    pid = await self.runner.exec(record.id, exec_id, process,
                                                 (console_theirs.fileno(),))
                master = receive_terminal(console)
                os.set_blocking(master, False)
                fds = {master: 1}
                stdin_fd = master if stdin else -1
            else:
                # Ours before the exec is asked for: a refused one closes them below (a
                # daemon leaked two pipes per exec refused, ~1400 in 8 s under a race
                # of execs and kills, until it ran out of fds).
                theirs, stdin_fd, fds = _stdio_pipes(stdin)
                try:
                    pid = await self.runner.exec(record.id, exec_id, process, theirs)
                finally:
                    _close(*theirs)
        except BaseException:
            self.exec_waiters.pop((record.id, exec_id), None)
            _close(*fds, stdin_fd if stdin_fd not in fds else -1)
            raise
        finally:
            if console is not None:
                console.close()
        self.events.container(record, f"exec_start: {' '.join(cmd)}", execID=exec_id)
        await ctx.send_event("started", {"exec_id": exec_id, "pid": pid})
        if detach:
            if stdin_fd not in fds:
                _close(stdin_fd)
            _discard_until_exit(fds, waiter)
            return {"exec_id": exec_id}
        detached = False
        try:
            detached = await _pump(ctx, fds, stdin_fd, waiter,
                                   detach_keys if tty and stdin else b"")
            if detached:
                # The client may go now (Docker's clients end the stream); one that stays
                # gets the exit code. A cancel from here on leaves the process running.
                await ctx.send_event("detached", {"exec_id": exec_id})
                info = await asyncio.shield(waiter)
            else:
                info = await waiter
        except asyncio.CancelledError:
            if not detached:
                try:
                    await self.runner.kill(record.id, signal.SIGKILL, exec_id=exec_id)
                except SandboxError:
                    pass
            raise
        return {"exec_id": exec_id, "exit_code": info.exit_code}

    def _spec_process(self, record: ContainerRecord) -> Process:
        c = record.config
        return Process(args=(record.path, *record.args), env=c.env, cwd=c.workdir or "/",
                       user=c.user, ulimits=self._ulimits(record),
                       capabilities=c.host.capabilities(),
                       no_new_privileges=c.host.no_new_privileges(), groups=c.host.group_add)

    # ------------------------------------------------------------ files (sbx cp)
    #
    # Through /proc/<pid>/root: the container's own view of its root, mounts included,
    # with nothing mounted by the daemon. Paths resolve with openat2(RESOLVE_IN_ROOT) and
    # trees are walked through directory fds with O_NOFOLLOW, so no symlink a container
    # plants (or swaps in meanwhile) leads out of its root. A stopped container's root is
    # *held* for the copy: its pid 1 sets up the same mounts and writable layer, then runs
    # nothing (spec.hold) until the copy ends (Docker mounts a stopped container's
    # filesystem for cp in the same way).

    @contextlib.asynccontextmanager
    async def files_root(self, record: ContainerRecord,
                         write: bool = False) -> AsyncIterator[int]:
        """An O_PATH fd of the container's root for the block (closed after it)."""
        if record.state.status in RUNNING:
            if record.id not in self.live:
                raise Conflict(f"container {record.name} is {record.state.status}")
            fd = self._proc_root(record, record.state.pid)
            try:
                yield fd
            finally:
                os.close(fd)
            return
        if write and record.config.host.auto_remove:
            raise Conflict(f"container {record.name} was created with --rm: its writable "
                           f"layer exists only while it runs; copy into it once started")
        self._check_not_held(record)
        exited = asyncio.get_running_loop().create_future()
        self.held[record.id] = exited
        try:
            async with self._held_root(record, exited) as pid:
                fd = self._proc_root(record, pid)
                try:
                    yield fd
                finally:
                    os.close(fd)
        finally:
            self.held.pop(record.id, None)

    @contextlib.asynccontextmanager
    async def _held_root(self, record: ContainerRecord,
                         exited: asyncio.Future) -> AsyncIterator[int]:
        """A holder for a stopped container's root: its mounts and layer, no network
        (the host's namespace, unused: nothing runs), its cgroup name. Yields its pid."""
        spec = dataclasses.replace(
            self._spec(record, netns="host"), hold=True, init=False,
            process=dataclasses.replace(self._spec_process(record), terminal=False,
                                        console_size=()),
            namespaces=Namespaces(net="host"))
        stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
        null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            pid = await self.runner.spawn(spec, (stdin_r, null, null))
        except BaseException:
            os.close(stdin_w)
            raise
        finally:
            os.close(stdin_r), os.close(null)
        try:
            yield pid
        finally:
            os.close(stdin_w)                 # EOF: the holder exits
            try:
                await asyncio.wait_for(asyncio.shield(exited), 10)
            except asyncio.TimeoutError:
                await self.runner.kill(record.id, signal.SIGKILL, all=True)
                await exited

    @contextlib.asynccontextmanager
    async def upper(self, record: ContainerRecord) -> AsyncIterator[None]:
        """While the block runs, the image service can read the container's writable
        layer (``snapshotter.path``): a capped layer is opened by the runner (a mount in
        no namespace of ours, pinned by an fd); an uncapped one is a directory already."""
        sn = self.images.snapshotter
        try:
            image = sn.layer_image(record.id)
        except NotFound:                 # not started yet, or --rm: no layer kept
            image = None
        if image is None:
            yield
            return
        fd = await self.runner.open_layer(image)
        try:
            with sn.opened(record.id, f"/proc/self/fd/{fd}"):
                yield
        finally:
            os.close(fd)

    def _check_not_held(self, record: ContainerRecord) -> None:
        if record.id in self.held:
            raise Conflict(f"container {record.name} is busy: sbx cp is copying files "
                           f"from or to it; try again when it ends")

    def _proc_root(self, record: ContainerRecord, pid: int) -> int:
        """An O_PATH fd of ``pid``'s root, once its cgroup proves it is this container's
        (not a reused pid)."""
        try:
            proc = os.open(f"/proc/{pid}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise Conflict(f"container {record.name} is not running") from None
        try:
            with open(os.open("cgroup", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)) as f:
                if f"/{record.id}" not in f.read():
                    raise Conflict(f"container {record.name} is not running")
            return os.open("root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=proc)
        except (FileNotFoundError, ProcessLookupError):
            raise Conflict(f"container {record.name} is not running") from None
        finally:
            os.close(proc)

    @staticmethod
    def archive_stat(root: int, record: ContainerRecord, path: str) -> dict:
        parent, name = _open_parent(root, record, path)
        try:
            return _stat_doc(parent, name, path)
        finally:
            os.close(parent)

    @staticmethod
    def archive_get(root: int, record: ContainerRecord, path: str,
                    out: BinaryIO) -> dict:
        """Write a tar of ``path`` (not following a final symlink) to ``out``; its stat."""
        parent, name = _open_parent(root, record, path)
        try:
            doc = _stat_doc(parent, name, path)
            with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                _tar_tree(tar, parent, name, doc["name"] or ".")
            return doc
        finally:
            os.close(parent)

    @staticmethod
    def archive_put(root: int, record: ContainerRecord, path: str,
                    src: BinaryIO) -> None:
        """Unpack the tar ``src`` under the directory ``path`` (same rules as layers)."""
        _check_put_entries(src)
        src.seek(0)
        try:
            target = syscalls.openat2(root, path.lstrip("/") or ".",
                                      os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                                      syscalls.RESOLVE_IN_ROOT |
                                      syscalls.RESOLVE_NO_MAGICLINKS)
        except FileNotFoundError:
            raise NotFound(f"Could not find the file {path} in container "
                           f"{record.name}") from None
        except NotADirectoryError:
            raise InvalidArgument(f"path: {path} is not a directory in container "
                                  f"{record.name}") from None
        try:
            # "<fd>/." opens that very directory: apply_layer's O_NOFOLLOW applies to
            # the ".", the magic link before it is ours. (A str: Path drops the ".".)
            stats = apply_layer(src, f"/proc/self/fd/{target}/.",  # type: ignore[arg-type]
                                same_owner=True)
        except OSError as e:
            if e.errno == errno.EROFS:
                raise Conflict(f"container {record.name}: its root filesystem is "
                               f"read-only") from None
            raise
        finally:
            os.close(target)
        if stats.skipped:
            # a deep or wide hostile tree skips many long names: name a few
            problems = [f"{truncate(name, 120)}: {why}" for name, why in stats.skipped]
            more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
            raise InvalidArgument(f"{'; '.join(problems[:3])}{more} (not copied; the "
                                  f"other entries were)", {"problems": problems})

    # ------------------------------------------------------------ output for clients

    async def run(self, ctx: RequestContext, record: ContainerRecord, stdin: bool,
                  detach: bool, detach_keys: bytes = b"", quiet: bool = False) -> dict:
        """``container.run`` after the create: start, then (unless ``detach``) stream
        the output until the exit; its result. A start that fails removes what a bad
        request made (and an --rm container); a cancelled run kills the container (and
        removes it with --rm). ``quiet``: no ``started`` event."""
        auto_remove = record.config.host.auto_remove
        try:
            record = await self.start(record, stdin=stdin)
        except InvalidArgument:
            # What create's spec check refuses: a bad request leaves nothing behind.
            await self.remove(self.get(record.id), force=True)
            raise
        except BaseException:
            if auto_remove:
                await self.remove(self.get(record.id), force=True)
            raise
        queue, live = (None, None) if detach else self.subscribe(record)
        if not quiet:
            await ctx.send_event("started", {"id": record.id, "pid": record.state.pid})
        if detach:
            return {"id": record.id}
        try:
            if queue is not None and await self.forward(ctx, live, queue, stdin,
                                                        detach_keys):
                return {"id": record.id}              # detached: it goes on running
            final = await self.wait_exit(record, live)
        except asyncio.CancelledError:
            # Unsubscribed first: a queue left full (its client gone) keeps the pipe's
            # reader paused, and the removal waits for the output's end (the removal
            # then waited for ever, and every later one of this container with it).
            self.unsubscribe(record, queue)
            queue = None
            await self.remove(record, force=True) if auto_remove else \
                await self.kill_quietly(record.id)
            raise
        finally:
            self.unsubscribe(record, queue)
        return self.result(final)

    async def attach(self, ctx: RequestContext, record: ContainerRecord, *,
                     stdin: bool, stdout: bool, stderr: bool, logs: bool, stream: bool,
                     start: bool, detach_keys: bytes = b"") -> dict:
        """``container.attach``: the stored output first (``logs``), then the live
        output until the exit (``stream``; ``start`` starts it once attached)."""
        want = {1: stdout, 2: stderr}
        if logs:
            with logfiles.Snapshot(record.log_path) as snapshot:
                for e in snapshot.entries():
                    if want.get(e.stream):
                        await ctx.send_event("stdout" if e.stream == 1 else "stderr", e.data)
        if not stream:
            return {"id": record.id}
        self.events.container(record, "attach")
        if start and record.state.status not in RUNNING:
            record = await self.start(record, stdin=stdin)
        queue, live = self.subscribe(record, ctx)
        if queue is None:
            raise lifecycle.refusal("attach", record, "exited")
        try:
            if await self.forward(ctx, live, queue, stdin, detach_keys):
                return {"id": record.id}              # detached: it goes on running
        finally:
            self.unsubscribe(record, queue)
        return self.result(await self.wait_exit(record, live))

    async def logs(self, ctx: RequestContext, record: ContainerRecord, *,
                   follow: bool, tail: int, timestamps: bool, stdout: bool, stderr: bool,
                   since: float, until: float) -> None:
        """``container.logs``: the stored output as events (the last ``tail`` entries
        when not negative, between ``since`` and ``until``), then with ``follow`` the
        live output until the exit."""
        if record.config.host.log_driver == "none":
            raise Conflict(f"configured logging driver does not support reading: container "
                           f"{record.name} was created with --log-driver none")
        want = {1: stdout, 2: stderr}
        # Subscribed before the files are opened: what comes after their sizes now
        # arrives through the queue, once.
        queue, _live = self.subscribe(record) if follow else (None, None)
        stamper = logfiles.Stamper() if timestamps else None
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
            self.unsubscribe(record, queue)

    def subscribe(self, record: ContainerRecord, request: object = None
                  ) -> tuple[asyncio.Queue | None, _Live | None]:
        """A queue of the running container's output; ``request``'s own if it
        subscribed before the start (:meth:`subscribe_next_start`)."""
        live = self.live.get(record.id)
        if live is None:
            return None, None
        queue = live.early.pop(request, None) if request is not None else None
        if queue is None:
            queue = asyncio.Queue(SUBSCRIBER_QUEUE)
            live.subscribers.add(queue)
        return queue, live

    def subscribe_next_start(self, record: ContainerRecord, request: object) -> None:
        """Subscribe ``request`` to the output of the container's next start, from its
        first byte: its attach then finds the queue (:meth:`subscribe`). Every such
        request ends with :meth:`forget_next_start`."""
        if record.id in self.live:
            return                            # running: its attach subscribes at once
        self.next_subscribers.setdefault(record.id, {})[request] = \
            asyncio.Queue(SUBSCRIBER_QUEUE)

    def forget_next_start(self, record: ContainerRecord, request: object) -> None:
        """``request``'s early queue, if it never subscribed with it (its start failed,
        or the client left): unread, it would pause the container's output."""
        waiting = self.next_subscribers.get(record.id)
        if waiting is not None:
            waiting.pop(request, None)
            if not waiting:
                del self.next_subscribers[record.id]
        live = self.live.get(record.id)
        if live is not None and request in live.early:
            self.unsubscribe(record, live.early.pop(request))

    def unsubscribe(self, record: ContainerRecord, queue: asyncio.Queue | None) -> None:
        live = self.live.get(record.id)
        if live is not None and queue is not None:
            live.subscribers.discard(queue)
        # A reader that stopped reading paused the container's pipe until its queue has
        # room (_resume_after waits in queue.put): emptying it lets that put finish and
        # the pipe be read again, else the container's output (and its exit) would wait
        # for a client that is gone.
        while queue is not None and not queue.empty():
            queue.get_nowait()

    async def forward(self, ctx: RequestContext, live: _Live, queue: asyncio.Queue,
                      stdin: bool, detach_keys: bytes = b"") -> bool:
        """Send a subscriber's output as events until the container's output ends,
        feeding the client's stdin and resize frames to the container meanwhile. True
        when the client typed its ``detach_keys`` on the container's terminal (then
        the container goes on running)."""
        keys = detach_keys if live.terminal >= 0 else b""
        inbox = asyncio.ensure_future(self._feed(ctx, live, keys)) if stdin else None
        try:
            while True:
                if keys and inbox is not None:
                    getter = asyncio.ensure_future(queue.get())
                    await asyncio.wait((getter, inbox), return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():
                        getter.cancel()
                        if not inbox.cancelled() and inbox.exception() is None:
                            return True                 # the detach keys
                        inbox = None                    # the client's input ended
                        continue
                    item = getter.result()
                else:
                    item = await queue.get()
                if item is None:
                    return False
                stream, data = item
                await ctx.send_event("stdout" if stream == 1 else "stderr", data)
        finally:
            if inbox is not None:
                inbox.cancel()

    async def _feed(self, ctx: RequestContext, live: _Live, detach_keys: bytes = b"") -> None:
        """Until the client detaches (returns) or goes (raises)."""
        escape = detachkeys.Escape(detach_keys)
        while True:
            kind, data = await ctx.receive()
            if kind == "stdin" and live.stdin >= 0:
                data, detached = escape.feed(data)
                if data:
                    await _write_all(live.stdin, data)
                if detached:
                    return
            elif kind == "stdin_eof" and live.stdin >= 0 and live.terminal < 0:
                os.close(live.stdin)
                live.stdin = -1
            elif kind == "resize" and live.terminal >= 0:
                _resize(live.terminal, *data)


# ---------------------------------------------------------------- helpers

def _doc(record: ContainerRecord) -> Any:
    """What the store keeps of a record: a volatile row keeps the record itself, as it is
    (never serialized, and read back without ``from_dict``): its ``to_dict`` was ~5 % of
    the daemon's CPU per cold ``--rm`` run."""
    return record if _volatile(record) else record.to_dict()


def _volatile(record: ContainerRecord) -> bool:
    """A row the store may keep in memory only: the next daemon start forgets a --rm
    container's row whatever its state (``startup``), and a row without volumes holds
    nothing for that start to clean up (anonymous volumes go with their --rm container)."""
    h = record.config.host
    return h.auto_remove and not any(m.type == "volume" for m in h.mounts)


def _etc_inline(record: ContainerRecord) -> bool:
    """Whether the container's /etc files are written into its own writable layer
    (spec files) instead of bind-mounted from its directory: a --rm container's layer is
    a tmpfs that never outlives it, so nothing of them is kept or committed anyway, and
    it saves three files and three mounts per start. A read-only root could not be
    rewritten by ``network connect``: it keeps the binds."""
    return record.config.host.auto_remove and not record.config.host.read_only


def _base_hosts(record: ContainerRecord) -> str:
    hostname = record.hostname()
    return (f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"127.0.1.1\t{hostname}\n")


def _write_in_place(path: Path, text: str) -> None:
    """Replace a file's content keeping its inode (it may be bind-mounted)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _merge_env(first: Sequence[str], then: Sequence[str]) -> tuple[str, ...]:
    """``then`` over ``first``, by variable name, in first-seen order."""
    merged = {item.partition("=")[0]: item for item in first}
    merged.update({item.partition("=")[0]: item for item in then})
    return tuple(merged.values())


def _port_bindings(record: ContainerRecord) -> tuple[PortBinding, ...]:
    """The ports a start publishes: ``-p``'s, then with ``-P`` every exposed tcp/udp
    port not published already, on a host port the system picks."""
    h = record.config.host
    if h.network_mode in ("host", "none") or h.network_mode.startswith("container:"):
        return ()
    bindings = list(h.port_bindings)
    if h.publish_all:
        taken = {f"{b.container_port}/{b.protocol}" for b in bindings}
        for port in record.config.exposed_ports:
            number, _, proto = port.partition("/")
            if port not in taken and proto in ("tcp", "udp"):
                bindings.append(PortBinding(int(number), proto))
    return tuple(bindings)


def _network_name(mode: str) -> str:
    """A HostConfig network mode as the network service names it."""
    return "bridge" if mode in ("", "default") else mode


def _stdio_pipes(stdin: bool) -> tuple[tuple[int, int, int], int, dict[int, int]]:
    """A process's stdio without a terminal: (its stdin, stdout and stderr ends; our
    end of its stdin, or -1; our ends of its output -> 1 or 2). No stdin: /dev/null.
    All or nothing: out of fds (EMFILE) midway, what was made is closed (a daemon at its
    limit kept a /dev/null and a pipe per refused start)."""
    made: list[int] = []
    try:
        if stdin:
            in_r, in_w = os.pipe2(os.O_CLOEXEC)
            made += (in_r, in_w)
            # Ours does not block: a container that does not read its stdin fills the
            # pipe, and a blocking write would stop the daemon's loop (_write_all waits).
            os.set_blocking(in_w, False)
        else:
            in_r, in_w = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC), -1
            made.append(in_r)
        out_r, out_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        made += (out_r, out_w)
        err_r, err_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        made += (err_r, err_w)
    except BaseException:
        _close(*made)
        raise
    os.set_blocking(out_w, True)
    os.set_blocking(err_w, True)
    return (in_r, out_w, err_w), in_w, {out_r: 1, err_r: 2}


async def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
            view = view[n:]
        except BlockingIOError:
            await asyncio.sleep(0.005)
        except OSError as e:
            if e.errno in (errno.EPIPE, errno.EBADF, errno.EIO):
                return
            raise


def _resize(fd: int, rows: int, cols: int) -> None:
    import fcntl
    import struct
    import termios
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", int(rows), int(cols), 0, 0))


async def _pump(ctx: RequestContext, fds: dict[int, int], stdin_fd: int,
                done: asyncio.Future, detach_keys: bytes = b"") -> bool:
    """An exec's output to the client, its stdin from the client, until output ends or
    the client typed ``detach_keys`` (True: then its output is discarded from now on,
    its fds kept open until it exits)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(SUBSCRIBER_QUEUE)
    open_fds = set(fds)
    detached = False

    def readable(fd: int) -> None:
        data = _read_ready(fd)
        if data is None:
            return
        if not data:
            loop.remove_reader(fd)
            open_fds.discard(fd)
            queue.put_nowait(None)
            return
        if queue.full():
            loop.remove_reader(fd)
            asyncio.ensure_future(queue.put((fd, data))).add_done_callback(
                lambda _f, fd=fd: loop.add_reader(fd, readable, fd) if fd in open_fds
                else None)
            return
        queue.put_nowait((fd, data))

    for fd in fds:
        loop.add_reader(fd, readable, fd)

    async def feed() -> None:
        nonlocal stdin_fd
        escape = detachkeys.Escape(detach_keys)
        while True:
            kind, data = await ctx.receive()
            if kind == "stdin" and stdin_fd >= 0:
                data, typed = escape.feed(data)
                if data:
                    await _write_all(stdin_fd, data)
                if typed:
                    await queue.put("detach")
                    return
            elif kind == "stdin_eof" and stdin_fd >= 0 and stdin_fd not in fds:
                os.close(stdin_fd)
                stdin_fd = -1
            elif kind == "resize" and stdin_fd in fds:
                _resize(stdin_fd, *data)

    feeder = asyncio.ensure_future(feed()) if ctx.streaming else None
    closer = None
    if len(fds) == 1:
        # A pty master may never report EOF while a background process holds the
        # slave: stop reading shortly after the process exits.
        closer = asyncio.ensure_future(_close_after_exit(done, queue))
    try:
        ends = 0
        while ends < len(fds):
            item = await queue.get()
            if item is None:
                ends += 1
                continue
            if item == "exit":
                break
            if item == "detach":
                detached = True
                break
            fd, data = item
            await ctx.send_event("stdout" if fds.get(fd, 1) == 1 else "stderr", data)
    finally:
        for fd in open_fds:
            loop.remove_reader(fd)
        if feeder is not None:
            feeder.cancel()
        if closer is not None:
            closer.cancel()
        if stdin_fd not in fds:
            _close(stdin_fd)
        if detached:
            _discard_until_exit(open_fds, done)
            _close(*(set(fds) - open_fds))
        else:
            _close(*fds)
    return detached


def _discard_until_exit(fds: Iterable[int], done: asyncio.Future) -> None:
    """Read and drop an exec's output (nobody reads it: a detached exec) until EOF, or
    shortly after its exit (a pty master may never report EOF), then close the fds.
    Closing a pty master at once would hang up the exec's terminal."""
    loop = asyncio.get_running_loop()
    remaining = set(fds)

    def close(fd: int) -> None:
        if fd in remaining:
            remaining.discard(fd)
            loop.remove_reader(fd)
            _close(fd)

    def readable(fd: int) -> None:
        if _read_ready(fd) == b"":
            close(fd)

    for fd in fds:
        loop.add_reader(fd, readable, fd)
    def close_rest() -> None:
        for fd in list(remaining):
            close(fd)

    done.add_done_callback(lambda _f: loop.call_later(0.5, close_rest))


def _read_ready(fd: int) -> bytes | None:
    """What a readable non-blocking fd holds: b"" at its end (also an error, such as a
    pty master's EIO once the last slave closed), None when nothing after all."""
    try:
        return os.read(fd, READ_CHUNK)
    except BlockingIOError:
        return None
    except OSError:
        return b""


async def _close_after_exit(done: asyncio.Future, queue: asyncio.Queue) -> None:
    await asyncio.shield(done)
    await asyncio.sleep(0.5)
    await queue.put("exit")


def _open_parent(root: int, record: ContainerRecord, path: str) -> tuple[int, str]:
    """An fd of ``path``'s parent directory inside the root, and ``path``'s last name
    ("" for the root itself)."""
    if not path.startswith("/"):
        raise InvalidArgument(f"path: {path!r} must be absolute (start with /)")
    parent, _, name = path.rstrip("/").rpartition("/")
    if name in (".", ".."):
        raise InvalidArgument(f"path: {path!r} must not end in . or ..")
    missing = NotFound(f"Could not find the file {path} in container {record.name}")
    try:
        fd = syscalls.openat2(root, parent.lstrip("/") or ".",
                              os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                              syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS)
    except (FileNotFoundError, NotADirectoryError):
        raise missing from None
    if name:
        try:
            os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            os.close(fd)
            raise missing from None
    return fd, name


def _stat_doc(parent: int, name: str, path: str) -> dict:
    st = os.stat(name or ".", dir_fd=parent, follow_symlinks=False)
    link = os.readlink(name, dir_fd=parent) if stat.S_ISLNK(st.st_mode) else ""
    return {"name": name, "size": st.st_size, "mode": st.st_mode, "mtime": st.st_mtime,
            "link_target": link, "is_dir": stat.S_ISDIR(st.st_mode)}


def _tar_tree(tar: tarfile.TarFile, parent: int, name: str, arcname: str) -> None:
    """Add ``name`` (in the directory ``parent``) and everything below it, never
    following a symlink: they are archived as symlinks."""
    stack = [(os.dup(parent), name or ".", arcname)]
    while stack:
        dir_fd, entry, arc = stack.pop()
        try:
            st = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
            info = tarentry.header(arc, st)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                sub = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW |
                              os.O_CLOEXEC, dir_fd=dir_fd)
                try:
                    children = sorted(os.listdir(sub), reverse=True)
                    stack += [(os.dup(sub), child, f"{arc}/{child}") for child in children]
                finally:
                    os.close(sub)
            elif stat.S_ISREG(st.st_mode):
                fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK |
                             os.O_CLOEXEC, dir_fd=dir_fd)
                with open(fd, "rb") as f:
                    info.size = os.fstat(fd).st_size
                    try:
                        tar.addfile(info, f)
                    except OSError as e:      # shrank while read: tar needs the size
                        raise Conflict(f"{arc} changed while it was copied: {e}") from None
            else:                                 # a socket is left out (no tar form)
                tarentry.add_special(tar, info, st,
                                     lambda: os.readlink(entry, dir_fd=dir_fd))
        except FileNotFoundError:
            pass                                  # removed while we walked
        finally:
            os.close(dir_fd)


def _check_put_entries(src: BinaryIO) -> None:
    """Refuse a tar for ``sbx cp`` before writing anything: ``..``, devices and overlay
    whiteout names (which would steer the container's overlay) are never copied."""
    problems = []
    try:
        with tarfile.open(fileobj=src, mode="r|*") as tar:
            for m in tar:
                parts = m.name.split("/")
                if ".." in parts:
                    problems.append(f"{m.name}: a '..' component")
                elif any(p.startswith(WHITEOUT_PREFIX) for p in parts):
                    problems.append(f"{m.name}: names starting with {WHITEOUT_PREFIX} are "
                                    f"reserved for image layers")
                elif m.ischr() or m.isblk():
                    problems.append(f"{m.name}: device nodes cannot be copied in")
    except (tarfile.TarError, EOFError) as e:
        raise InvalidArgument(f"the archive is not a valid tar: {e}") from None
    if problems:
        raise InvalidArgument.of(problems)


def _close(*fds: int) -> None:
    for fd in fds:
        if fd is not None and fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def _read(path: str) -> str:
    """A file's text; "" when it cannot be read (no host resolv.conf: Docker's
    defaults apply)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


_host_files: dict[str, tuple[tuple[int, int, int, int], str | None]] = {}


def _read_host_file(path: str, missing: str | None = "") -> str | None:
    """A host file read at every start (resolv.conf), read again only when its inode,
    size or modification time changed (resolvers replace it by a rename, a new inode;
    an edit in place within one mtime tick that keeps the size is the blind spot).
    ``missing``: the text when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        _host_files.pop(path, None)
        return missing
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    cached = _host_files.get(path)
    if cached is None or cached[0] != key:
        try:
            with open(path) as f:
                cached = (key, f.read())
        except OSError:
            return missing
        _host_files[path] = cached
    return cached[1]


def _hash_path(path: Path) -> Path:
    return path.with_name(path.name + ".hash")


def _digest(text: str) -> str:
    import hashlib
    return hashlib.sha256(text.encode()).hexdigest()


def _unmodified(path: Path) -> bool:
    """Whether a generated file still holds what was written (no hash: it does)."""
    try:
        return _hash_path(path).read_text() == _digest(_read(str(path)))
    except FileNotFoundError:
        return True
