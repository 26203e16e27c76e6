"""Pools of prepared containers: the start's work done before the request arrives.

A pooled container is a container with everything but its process: its record's id
(and so its host name) chosen, its network namespace attached, its root (an overlay of
the image with a fresh tmpfs upper, /etc/hostname, hosts and resolv.conf in it) mounted,
its cgroup made and limited, its pid 1 cloned into fresh namespaces and parked before
the exec (the runner's ``prepare``). A ``container.run`` or ``create`` whose config
matches a pool's key takes one: the record adopts the pooled id, and the start sends
only the process and its stdio (the runner's ``take``). A pooled container is used once
and never returned; a miss takes the cold path unchanged.

The key is what makes a start expensive and what the kernel got at prepare time: the
image (its id), limits, network mode, user, working directory, host name, capabilities,
seccomp, ulimits, init, DNS and hosts entries — the whole config except what only the
process or the daemon sees (command, entrypoint, env, tty, stdin, labels, timeout,
logging). The parked pid 1 has taken on its user, limits and working directory already
and waits in sbx-park (runner/park.py), a small static program.
Pooled: ``--rm`` containers (their layer is a tmpfs, their /etc files are written in
it) without a read-only root, published ports, links, a static IP, mounts, a user
network or another container's namespaces; anything else is never pooled.

Pools are *declared* (``sandboxd --pool``, the config file's ``pools``, the API's
``pool.set``: kept full) or *learned* (with ``--pool-memory``: a key asked for keeps
:data:`LEARNED_SIZE` containers ready until it goes unasked for :data:`IDLE_AFTER`
seconds, within the budget). One task refills, one container at a time. They are the
fork server's containers with no record: ``sbx ps`` never shows them, ``system
info``/``df`` count them, and a daemon that stops (or dies: the fork server sees its
socket close) takes them all with it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import subprocess
import time
from collections import deque
from typing import Any, Iterable

from .errors import InvalidArgument, NotFound, SandboxError
from .model import ContainerConfig
from .runner.park import MAX_TAKE, build_helper
from .runner.spec import parse_size

log = logging.getLogger("sandboxd.pools")

LEARNED_SIZE = 2             # containers a learned key keeps ready
IDLE_AFTER = 60.0            # seconds unasked after which a learned pool is emptied
RETRY_AFTER = 5.0            # seconds before a pool whose prepare failed tries again
# A prepare waits until no start is in flight and none ended this long ago: the fork
# server does one thing at a time, and a take queued behind a prepare would wait for it
# (the short-lived workload's exit is reaped in that time too).
QUIET = 0.01
# What one parked container costs the host, for the budget: its PSS measured (docs/
# bench.md), rounded up: waiting in sbx-park (runner/park.py), and waiting in a fork of
# the fork server's Python (an --init's reaper, or no C compiler to build sbx-park).
PARKED_MEMORY = 1 << 20
PYTHON_PARKED_MEMORY = 4 << 20
# The options a declaration takes: name -> flags.build_config keyword.
OPTIONS = {"memory": "memory", "memory-swap": "memory_swap", "cpus": "cpus",
           "pids-limit": "pids_limit", "network": "network_mode", "user": "user",
           "hostname": "hostname", "workdir": "workdir", "cap-add": "cap_add",
           "cap-drop": "cap_drop",
           "security-opt": "security_opt", "init": "init", "ulimit": "ulimits"}
_MULTI = {"cap_add", "cap_drop", "security_opt", "ulimits"}

Key = tuple[str, ContainerConfig]
# Fields only the process or the daemon sees: blanked in a key. (The working directory
# is made and entered at park, so it is part of the key.)
_PROCESS_ONLY = dict(image="", cmd=(), entrypoint=None, env=(), tty=False,
                     open_stdin=False, labels=(), exposed_ports=(), stop_signal="SIGTERM",
                     stop_timeout=None)


def pool_key(config: ContainerConfig, image_id: str) -> Key | None:
    """The pool a config's container can come from; None: never pooled (see above)."""
    h = config.host
    if (not h.auto_remove or h.read_only or h.links or h.port_bindings or h.publish_all
            or h.ip_address or h.mounts or config.entry or config.zygote
            or h.network_mode not in ("default", "bridge", "none", "host")
            or h.pid_mode.startswith("container:") or h.ipc_mode.startswith("container:")):
        return None
    host = dataclasses.replace(h, network_mode="bridge" if h.network_mode == "default"
                               else h.network_mode, timeout=None, log_driver="",
                               log_opts=(), console_size=())
    return image_id, dataclasses.replace(config, host=host, **_PROCESS_ONLY)


def _take_size(config: ContainerConfig) -> int:
    """About what the take's message carries of this config (its command and env); one
    that may not fit a take (runner/park.py's MAX_TAKE, with half left for the seccomp
    filter and the image's entries) starts cold, as it would without pools."""
    return sum(len(s.encode()) + 1 for s in (*(config.entrypoint or ()), *config.cmd,
                                             *config.env))


def parse_declaration(text: str) -> tuple[ContainerConfig, int]:
    """``IMAGE[,OPTION=VALUE...]=N`` (``busybox,memory=64m,network=none=4``): the
    config of a --rm container of IMAGE with those options, and N."""
    from .flags import build_config
    spec, sep, count_text = str(text).rpartition("=")
    if not sep or not spec or not count_text.isdigit():
        raise InvalidArgument(f"pool {text!r}: expected IMAGE[,OPTION=VALUE...]=N, "
                              f"e.g. busybox,memory=64m=4")
    image, *options = spec.split(",")
    kwargs: dict[str, Any] = {}
    for option in options:
        name, eq, value = option.partition("=")
        keyword = OPTIONS.get(name)
        if not eq or keyword is None:
            raise InvalidArgument(f"pool {text!r}: {option!r} is not OPTION=VALUE with "
                                  f"an option of {', '.join(OPTIONS)}")
        if keyword in _MULTI:
            kwargs.setdefault(keyword, []).append(value)
        elif keyword == "init":
            kwargs[keyword] = value.lower() in ("1", "true", "yes")
        elif keyword == "pids_limit":
            try:
                kwargs[keyword] = int(value)
            except ValueError:
                raise InvalidArgument(f"pool {text!r}: pids-limit: expected a whole "
                                      f"number, got {value!r}") from None
        else:
            kwargs[keyword] = value
    config = build_config(image, auto_remove=True, local_files=False, **kwargs)
    return config, int(count_text)


def parse_budget(value: str | int) -> int:
    budget = parse_size(value, "pool-memory")
    if budget < 0 or 0 < budget < PARKED_MEMORY:
        raise InvalidArgument(f"pool-memory: {budget} bytes is less than one parked "
                              f"container ({PARKED_MEMORY >> 20}m); 0 turns learning off")
    return budget


@dataclasses.dataclass
class Pooled:
    """One prepared container, as the container service made it."""
    id: str
    pid: int
    attachment: Any                     # network.Attachment
    prepared_at: float


@dataclasses.dataclass
class _Pool:
    key: Key
    config: ContainerConfig             # a config of the key, to prepare from
    declared: int = 0                   # kept full; 0: learned
    ready: deque[Pooled] = dataclasses.field(default_factory=deque)
    preparing: int = 0
    asked: float = 0.0                  # monotonic time of the last request
    hits: int = 0
    misses: int = 0
    error: str = ""                     # the last prepare's failure
    retry_at: float = 0.0


class PoolService:
    """Built by the composition root beside the container service, which it prepares
    and discards containers with (``prepare_pooled``, ``release_pooled``); the
    container service calls :meth:`claim` when it creates a container."""

    def __init__(self, containers: Any, declarations: Iterable[str] = (),
                 memory: int = 0):
        self.containers = containers
        self.declarations = [parse_declaration(d) for d in declarations]
        self.memory = memory
        self.pools: dict[Key, _Pool] = {}
        self.owned: dict[str, _Pool] = {}           # pooled id -> its pool
        # sbx-park's path; "": wait in Python; None: not looked for yet (no pool so far)
        self.helper: str | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    # ------------------------------------------------------------ start-up / shutdown

    async def startup(self) -> None:
        """Check the declarations against the images and the budget (a bad one stops
        the start with its reason), then fill in the background."""
        if self.declarations or self.memory:             # the budget counts on it
            self.helper = await asyncio.to_thread(_park_helper)
        for config, count in self.declarations:
            self.declare(config, count)
        self._task = asyncio.create_task(self._refill())
        self._wake.set()

    async def shutdown(self) -> None:
        """Stop refilling. The parked containers go with the fork server."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    # ------------------------------------------------------------ the request's side

    def claim(self, config: ContainerConfig, image_id: str) -> Pooled | None:
        """A parked container for this config, now its request's; None: a cold start.
        No await: nothing else takes it meanwhile."""
        key = config.derived(f"_pool_key {image_id}", lambda: pool_key(config, image_id))
        if key is None or config.derived("_take_size", lambda: _take_size(config)) \
                > MAX_TAKE // 2:
            return None
        pool = self.pools.get(key)
        now = time.monotonic()
        if pool is None:
            if self.memory < self.parked_memory() + self.cost(config):
                return None                         # no room to learn it
            pool = self.pools[key] = _Pool(key, config)
        pool.asked = now
        pooled = pool.ready.popleft() if pool.ready else None
        if pooled is None:
            pool.misses += 1
        else:
            pool.hits += 1
            del self.owned[pooled.id]
        self._wake.set()
        return pooled

    def lost(self, container_id: str) -> None:
        """A parked container ended before a take (discarded or killed): give back
        its network and root."""
        pool = self.owned.pop(container_id, None)
        if pool is None:
            return
        pool.ready = deque(p for p in pool.ready if p.id != container_id)
        self.containers.release_pooled(container_id)
        self._wake.set()

    # ------------------------------------------------------------ declarations

    def declare(self, config: ContainerConfig, count: int) -> dict[str, Any]:
        """Keep ``count`` containers of ``config``'s key ready (0: the pool becomes a
        learned one). The image must be here; declared pools must fit the budget."""
        from .validate import validate_config
        validate_config(config)
        if count < 0:
            raise InvalidArgument(f"pool {config.image}: count must be 0 or more")
        image_id = self.containers.images.image_id(config.image)    # NotFound
        key = pool_key(config, image_id)
        if key is None:
            raise InvalidArgument(
                f"pool {config.image}: this config is never pooled (pools hold --rm "
                f"containers without a read-only root, ports, links, a static IP, "
                f"mounts, a user network or another container's namespaces)")
        pool = self.pools.get(key) or _Pool(key, config)
        others = [p for p in self.pools.values() if p is not pool]
        need = sum(p.declared * self.cost(p.config) for p in others) + \
            count * self.cost(config)
        if self.memory and need > self.memory:
            raise InvalidArgument(
                f"pool {config.image}: {sum(p.declared for p in others) + count} declared "
                f"containers need {need >> 20}m, more than pool-memory "
                f"({self.memory >> 20}m)")
        pool.declared = count
        self.pools[key] = pool
        self._wake.set()
        return self._describe(pool)

    def list(self) -> list[dict[str, Any]]:
        return [self._describe(p) for p in self.pools.values()]

    def parked(self) -> int:
        return sum(len(p.ready) + p.preparing for p in self.pools.values())

    def cost(self, config: ContainerConfig) -> int:
        """What one parked container of ``config`` counts against the budget."""
        return PARKED_MEMORY if self.helper and not config.host.init \
            else PYTHON_PARKED_MEMORY

    def waits_in(self) -> str | None:
        """Where parked containers wait: None until the first pool looked."""
        return None if self.helper is None else "sbx-park" if self.helper else "python"

    def parked_memory(self) -> int:
        return sum((len(p.ready) + p.preparing) * self.cost(p.config)
                   for p in self.pools.values())

    def usage(self) -> dict[str, Any]:
        """For ``system info`` and ``df``."""
        return {"pools": len(self.pools), "parked": self.parked(),
                "pids": [c.pid for p in self.pools.values() for c in p.ready],
                "memory_budget": self.memory}

    @staticmethod
    def _describe(pool: _Pool) -> dict[str, Any]:
        h = pool.key[1].host
        return {"image": pool.config.image, "image_id": pool.key[0],
                "memory": h.memory, "network": h.network_mode, "user": pool.key[1].user,
                "declared": pool.declared, "ready": len(pool.ready),
                "pids": [c.pid for c in pool.ready], "hits": pool.hits,
                "misses": pool.misses, "error": pool.error}

    # ------------------------------------------------------------ refill / shrink

    def _target(self, pool: _Pool, now: float) -> int:
        if pool.declared:
            return pool.declared
        return LEARNED_SIZE if self.memory and now - pool.asked < IDLE_AFTER else 0

    def _room(self, pool: _Pool) -> bool:
        declared_left = sum(max(0, p.declared - len(p.ready) - p.preparing)
                            * self.cost(p.config) for p in self.pools.values())
        return not self.memory or self.parked_memory() + declared_left + \
            self.cost(pool.config) <= self.memory

    async def _refill(self) -> None:
        while True:
            try:
                # Not wait_for: on 3.11 it swallows a cancel that comes as the event
                # fires, and the shutdown's cancel of this loop was lost (a hang).
                async with asyncio.timeout(RETRY_AFTER):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            now = time.monotonic()
            for key, pool in list(self.pools.items()):
                target = self._target(pool, now)
                while len(pool.ready) > target:                  # shrink an idle one
                    await self._discard(pool, pool.ready.pop())
                if not target and not pool.preparing:
                    del self.pools[key]
            if self.pools and self.helper is None:
                self.helper = await asyncio.to_thread(_park_helper)
            for pool in list(self.pools.values()):
                while (len(pool.ready) < self._target(pool, time.monotonic())
                       and time.monotonic() >= pool.retry_at
                       and (pool.declared or self._room(pool))):
                    await self._quiet()
                    if not await self._prepare(pool):
                        break

    async def _quiet(self) -> None:
        while True:
            idle = time.monotonic() - self.containers.last_start
            if not self.containers.starting and idle >= QUIET:
                return
            # A start in flight ends QUIET before a prepare may go: no need to look
            # again sooner (a 1 ms poll woke the daemon several times per pool hit).
            await asyncio.sleep(QUIET if self.containers.starting
                                else max(QUIET - idle, 0.001))

    async def _prepare(self, pool: _Pool) -> bool:
        pool.preparing += 1
        try:
            pooled = await self.containers.prepare_pooled(pool.config, self.helper or "")
        except SandboxError as e:
            pool.error = e.message
            pool.retry_at = time.monotonic() + RETRY_AFTER
            log.warning("pool %s: prepare failed: %s", pool.config.image, e.message)
            return False
        finally:
            pool.preparing -= 1
        pool.error = ""
        if self.pools.get(pool.key) is not pool:            # dropped meanwhile
            await self._discard(pool, pooled)
            return False
        pool.ready.append(pooled)
        self.owned[pooled.id] = pool
        return True

    async def _discard(self, pool: _Pool, pooled: Pooled) -> None:
        """Kill a parked container; :meth:`lost` gives its resources back on its exit."""
        self.owned[pooled.id] = pool
        try:
            await self.containers.runner.kill(pooled.id, all=True)
        except (NotFound, SandboxError):
            self.lost(pooled.id)


def _park_helper() -> str:
    """sbx-park's path, built on first use; "" (parked containers wait in Python, and
    count 4 MiB each) when it cannot be built, with the reason in the log."""
    try:
        return build_helper()
    except (SandboxError, OSError, subprocess.SubprocessError) as e:
        log.warning("pools: parked containers wait in Python (about 4 MiB each): %s",
                    getattr(e, "message", None) or e)
        return ""
