"""Networks: the default bridge, host, none and user-defined bridges, with a pool of
prepared network namespaces so that a container never waits for a veth.

How the container service uses it (every call on the daemon's asyncio loop)::

    net = NetworkService(store, root, prefix="sbx", pool_size=2)
    await net.startup()              # daemon start: reconcile, bridges up, pools fill
    att = await net.attach(cid, "bridge", ip="", aliases=(), upstreams=())  # a start
    spec = ContainerSpec(..., namespaces=Namespaces(net=att.netns))
    record = replace(record, endpoints=(att.endpoint,), sandbox_key=att.sandbox_key)
    await net.connect(cid, "other", ip="", aliases=())    # a running container: one more
    await net.disconnect(cid, "other")
    net.release(cid)                 # container exited, failed to start, or removed
    await net.shutdown()             # daemon stop, after the containers were killed

``attach`` returns an :class:`Attachment`: ``netns`` is what ``Namespaces.net`` takes
(``"host"``, or the path of a prepared namespace file for the fork server's C1 to
``setns`` into) and ``endpoint`` a :class:`sandboxd.model.Endpoint` (address, prefix,
gateway, MAC). ``release`` returns at once and is idempotent: the veth, the namespace
and then the address go in the background. Networks: :meth:`create`, :meth:`remove`,
:meth:`get`, :meth:`list`, :meth:`endpoints`. :meth:`settle` waits until background
work (teardowns, refills) is done (tests, benchmarks).

The pieces:

- Kernel work (bridges, veths, namespaces, addresses, routes) happens in the network
  server, :mod:`sandboxd.runner.netserver`: one single-threaded process started by
  exec, which creates each namespace by stepping into it (unshare) and back (setns),
  without forking. The daemon never forks, unshares or calls setns (rule 1). The
  server does one request at a time; this side keeps the queue and sends the most
  urgent request next (a start that found its pool empty, network changes), then pool
  refills, then teardowns, so a start waits behind at most one request. Teardowns are
  not starved: one that ``MAX_PASSED_OVER`` requests went ahead of goes next, after
  which a start or refill goes again (a sweep is a fraction of a millisecond).
  Deleting a veth costs 10-50 ms (an RCU grace period); none of it is on a start's
  path.
- The pool: per bridge network (and for ``none``) ``pool_size`` namespaces are kept
  ready (``USER_POOL_SIZE`` at most for a user network), each bound on
  ``<root>/netns/<name>``, with ``lo`` up and, on a bridge, ``eth0`` (one end of a veth
  ``<prefix>v<hex>`` whose other end is a port of the bridge) with an address from IPAM,
  Docker's MAC for it and a default route via the gateway (none on an ``internal``
  network). A pooled namespace's address is owned by ``pool:<name>``; ``attach`` hands
  it to the container and wakes the refill. A pool down by ``REFILL_BATCH`` is refilled
  by that many in one request (``prepare_many``: one round trip and one wake-up of each
  side for the batch), and one down by less is topped up once ``TOPUP_AFTER`` passed
  without a take. A static ``ip`` is prepared on demand (~7 ms).
- Teardown: a sweep every ``DYING_POLL`` while there is work unbinds the namespace
  files of the containers that ended since the last one, all in one message (one per
  container cost the daemon and the server a round trip each, as much as a start's
  refill), and the kernel destroys each namespace with its veths once nothing uses it
  (in a worker of its own, 20-40 ms later): the server does not wait out the veth
  deletion, which would keep it from the next start's refill. Its addresses are freed
  once a sweep sees those veths gone, never while they may still answer on the
  bridge; a veth still there after ``DYING_PATIENCE`` (another container shares the
  namespace) is deleted then.
- Addresses: :class:`sandboxd.ipam.IPAM`, in memory (a start has none to keep).
  Subnets of new networks avoid the host's routes and every other network.
- Names on user networks: each namespace prepared for one comes with a UDP and a TCP
  socket the server bound to 127.0.0.11:53 inside it; :attr:`NetworkService.resolver`
  (:mod:`sandboxd.dns`) serves them from ``attach`` until the namespace is torn down,
  answering from :meth:`NetworkService._dns_scope` (docs/networking.md).
- Link names: the default bridge's link is ``<prefix>0``, a user network's
  ``<prefix>-<id prefix>``; start-up removes every ``<prefix>*`` link and every namespace
  file the database does not own, and frees every address (no container survives a
  daemon restart). The server removes what it made when its owner goes, so nothing
  outlives the daemon, whether it stopped or died.

More networks for a running container: :meth:`connect` plugs one more veth into its
namespace (``eth1``, ``eth2`` ...; no route beyond the subnet), :meth:`disconnect`
unplugs one (a first network's namespace stays until the container ends).

Traffic: containers on one bridge reach each other. Every bridge network is isolated
by the network server's netfilter chains (:mod:`sandboxd.runner.masq`), whatever the
host's ``ip_forward`` and whatever other daemons or bridges exist: nothing is forwarded
into or out of a bridge but, with ``ip_masq`` (the daemon's ``--ip-masq``, which turns
forwarding on), masqueraded traffic to the uplink and its replies; an ``--internal``
network has no way out. The rules are re-applied whole on every network change and at
start-up (stale rules of the prefix go) and removed when the server exits.
:func:`link_env` gives a legacy link's variables; the containers'
hosts files (names on user networks, link entries) are written by the container
service. Published ports are the daemon's userland proxy, :mod:`sandboxd.ports`.

Schema (created here, beside the store's tables)::

  networks                       one row per network, the built-in ones included
    id       TEXT PK             64 hex digits
    name     TEXT UNIQUE
    driver   TEXT                bridge | host | null
    created  REAL                unix time
    doc      TEXT                JSON: bridge, subnet, gateway, ip_range, internal,
                                 options, labels
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import json
import logging
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Mapping, Sequence

from .dns import Resolver, Scope
from .errors import Conflict, InvalidArgument, NotFound, SandboxError, Unavailable, from_wire
from .events import NOWHERE, EventBus
from .filters import prune_filter
from .ipam import (IPAM, Pool, choose_subnet, default_bridge_candidates, mac_for,
                   user_network_candidates)
from .model import Endpoint
from .runner.api import HelperConnection
from .runner.channel import send_message, seqpacket_pair
from .store import Store

__all__ = ["NetworkService", "Network", "Attachment", "BUILTIN", "link_env"]

log = logging.getLogger("sandboxd.network")

BUILTIN = ("bridge", "host", "none")
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS networks (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        driver TEXT NOT NULL,
        created REAL NOT NULL,
        doc TEXT NOT NULL)""",
)
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_PREFIX = re.compile(r"^[a-z][a-z0-9]{1,7}$")
_HEX = re.compile(r"^[0-9a-f]+$")
# Helper request priorities: lower goes first.
URGENT, REFILL, TEARDOWN = 0, 1, 2
# Teardowns go last, but not forever: a load that keeps the server busy with starts and
# refills (four clients running containers back to back) starved them, and every run
# left its namespace and its bridge port behind until the bridge was full (1024 ports:
# "create veth ...: Exchange full"). A teardown this many requests went ahead of goes
# next. (Counting waiting teardowns instead stopped working once one sweep carried a
# batch of them: eight clients filled the bridge again.)
MAX_PASSED_OVER = 2
BACKOFF = 5.0               # seconds before refilling a pool whose last prepare failed
# A refill prepares namespaces in batches (one message, one wake-up of the daemon and of
# the server for all): a pool is refilled once it is down by a batch, and topped up to
# full after TOPUP_AFTER without a take. One message per namespace was ~15 % of the
# daemon's CPU per cold run. A batch is at most REFILL_BATCH: a start that found its
# pool empty waits behind one batch's prepares (~1 ms each).
POOL_SIZE = 8               # prepared namespaces kept per network (the default)
# A user network's: its runs are rarer, and each of its namespaces holds the embedded
# resolver's two sockets in the daemon.
USER_POOL_SIZE = 2
REFILL_BATCH = 4
TOPUP_AFTER = 0.05          # seconds without a take before a pool is topped up
DYING_POLL = 0.05           # seconds between sweeps (releases, destroyed veths)
DYING_PATIENCE = 2.0        # seconds before a dying veth still held is deleted outright


@dataclass(frozen=True)
class Network:
    id: str
    name: str
    driver: str                           # bridge | host | null
    created: float
    bridge: str = ""                      # the Linux bridge's name
    subnet: str = ""
    gateway: str = ""
    ip_range: str = ""
    internal: bool = False
    options: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def pool(self) -> Pool:
        return _pool(self.subnet, self.gateway, self.ip_range)


@functools.lru_cache(maxsize=256)
def _pool(subnet: str, gateway: str, ip_range: str) -> Pool:
    """A stored network's parsed address space: asked for twice per container start,
    the same few strings every time (a Pool is immutable, so one is shared)."""
    return Pool.parse(subnet, gateway, ip_range)


@dataclass(frozen=True)
class Attachment:
    """What a container start needs from its network."""
    netns: str                            # for Namespaces(net=...): "host" or a path
    endpoint: Endpoint

    @property
    def sandbox_key(self) -> str:
        return "" if self.netns == "host" else self.netns


@dataclass
class _Prepared:
    name: str
    path: str
    veth: str = ""
    address: IPv4Address | None = None
    mac: str = ""
    # A user network's namespace: its resolver sockets (UDP, TCP) until a container
    # takes it and they are served (sandboxd/dns.py).
    dns: tuple[socket.socket, socket.socket] | None = None


class _Pool(deque):
    """A network's prepared namespaces: it keeps ``size``, refilled ``batch`` at a time
    once down to ``low`` (at once; above it, after TOPUP_AFTER without a take)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.batch = max(1, min(REFILL_BATCH, size // 2))
        self.low = size - self.batch


@dataclass
class _Dying:
    """A veth the kernel is destroying with its namespace: its address is freed once
    the veth is gone, or it is deleted outright after ``deadline``."""
    deadline: float
    network_id: str
    address: IPv4Address | None


@dataclass
class _Attached:
    """A container on one network. The first (``primary``) came with its namespace
    (``prepared.path``); one added by :meth:`NetworkService.connect` is a further veth
    into that namespace, ``prepared.veth`` and ``iface`` (eth1, eth2 ...) its own."""
    network: Network
    prepared: _Prepared
    aliases: tuple[str, ...] = ()
    primary: bool = True
    iface: str = "eth0"


class NetworkService:
    def __init__(self, store: Store, root: str | Path, *, prefix: str = "sbx",
                 pool_size: int = POOL_SIZE, ip_masq: bool = False):
        if not _PREFIX.match(prefix):
            raise InvalidArgument(f"network prefix {prefix!r}: 2-8 characters, a lowercase "
                                  f"letter then lowercase letters or digits")
        self.store = store
        # Networks by exact id and name: looked up several times per container start,
        # changed only by _insert and _delete (this service owns the table).
        self._known: dict[str, Network] = {}
        self.netns_dir = Path(root) / "netns"
        self._netns_dir = str(self.netns_dir)         # joined at every prepare
        self.lock_path = Path(root) / "network.lock"
        self.prefix = prefix
        self.pool_size = pool_size
        self.ip_masq = ip_masq
        self.masq_problem = ""                  # why --ip-masq could not apply, if so
        with store.transaction() as db:
            for statement in _SCHEMA:
                db.execute(statement)
        self.ipam = IPAM()
        self._helper = _Helper()
        self._pools: dict[str, _Pool] = {}
        # container id -> network id -> attachment, the primary first
        self._attached: dict[str, dict[str, _Attached]] = {}
        # containers whose primary network was disconnected: the namespace alone
        self._bare: dict[str, _Prepared] = {}
        self._background: set[asyncio.Task] = set()
        self._backoff: dict[str, float] = {}
        self._wake: asyncio.Event | None = None
        self._refiller: asyncio.Task | None = None
        self._topup: asyncio.TimerHandle | None = None      # see _took
        self._last_take = 0.0
        self._refilling = False
        self._releasing: list[tuple[Network, _Prepared]] = []   # for the next sweep
        self._dying: dict[str, _Dying] = {}                     # by veth
        self._sweeper: asyncio.Task | None = None
        # The embedded resolver: namespace path -> the container in it, and what each
        # container's questions are forwarded to.
        self.resolver = Resolver(self._dns_scope)
        self._dns_owner: dict[str, str] = {}
        self._upstreams: dict[str, tuple[str, ...]] = {}
        self.events: EventBus = NOWHERE         # the daemon's bus, when the root wires one

    # ------------------------------------------------------------ start-up / shutdown

    async def startup(self) -> None:
        """Start the network server, remove leftovers, make the built-in networks and
        bring every bridge up; the pools fill in the background."""
        self.netns_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self._helper.start(self.lock_path)
        await self._call({"op": "cleanup", "prefix": self.prefix,
                          "keep_links": [n.bridge for n in self.list() if n.bridge],
                          "netns_dir": str(self.netns_dir), "keep_netns": []})
        await self._builtin()
        for network in self.list():
            if network.driver == "bridge":
                await self._bridge_up(network)
            if network.driver != "host":
                self._pools[network.id] = _Pool(self._pool_size(network))
        await self._masquerade()
        self._wake = asyncio.Event()
        self._refiller = asyncio.create_task(self._refill())
        self._wake.set()

    async def shutdown(self) -> None:
        """Stop refilling, finish teardowns, stop the server (which removes every
        bridge, veth and namespace it made) and free every address."""
        if self._topup is not None:
            self._topup.cancel()
            self._topup = None
        if self._refiller is not None:
            self._refiller.cancel()
            await asyncio.gather(self._refiller, return_exceptions=True)
            self._refiller = None
        self.resolver.close()
        await self._drain_background()
        await self._helper.close()
        self.ipam.release_all()
        for pool in self._pools.values():
            for prepared in pool:
                for sock in prepared.dns or ():
                    sock.close()
        self._pools.clear()
        self._attached.clear()
        self._bare.clear()

    async def settle(self) -> None:
        """Wait until every teardown is done and every pool is full (or backing off)."""
        while True:
            await self._drain_background()
            refilling = self._refiller is not None and not self._refiller.done() and (
                self._refilling or self._short_pool() is not None)
            if not refilling:
                return
            await asyncio.sleep(0.002)

    async def _drain_background(self) -> None:
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def _builtin(self) -> None:
        if self._find("bridge") is None:
            taken = await self._routes() + [IPv4Network(n.subnet) for n in self.list()
                                            if n.subnet]
            subnet = choose_subnet(default_bridge_candidates(), taken)
            pool = Pool.parse(str(subnet))
            self._insert("bridge", "bridge", bridge=f"{self.prefix}0", subnet=str(subnet),
                         gateway=str(pool.gateway))
        if self._find("host") is None:
            self._insert("host", "host")
        if self._find("none") is None:
            self._insert("none", "null")

    # ------------------------------------------------------------ networks

    def list(self) -> list[Network]:
        return [_network(r) for r in self.store.query("SELECT * FROM networks ORDER BY "
                                                      "created, name")]

    def get(self, ref: str) -> Network:
        """By full id, name, or unique id prefix (``default`` is the bridge)."""
        network = self._find("bridge" if ref == "default" else ref)
        if network is None:
            raise NotFound(f"network {ref} not found")
        return network

    def _find(self, ref: str) -> Network | None:
        if not ref:
            raise InvalidArgument("network: an empty id or name was given")
        known = self._known.get(ref)
        if known is not None:
            return known
        rows = self.store.query("SELECT * FROM networks WHERE id = ? OR name = ?", (ref, ref))
        if rows:
            network = _network(rows[0])
            self._known[network.id] = self._known[network.name] = network
            return network
        if _HEX.match(ref):
            rows = self.store.query("SELECT * FROM networks WHERE substr(id, 1, ?) = ? "
                                    "LIMIT 2", (len(ref), ref))
            if len(rows) > 1:
                raise InvalidArgument(f"network {ref} is ambiguous: more than one network "
                                      f"id starts with it; give more digits or the name")
        return _network(rows[0]) if rows else None

    async def create(self, name: str, *, driver: str = "bridge", subnet: str = "",
                     gateway: str = "", ip_range: str = "", internal: bool = False,
                     options: dict[str, str] | None = None,
                     labels: dict[str, str] | None = None) -> Network:
        """A user-defined bridge network; without ``subnet`` one is chosen that overlaps
        no host route and no other network."""
        if not _NAME.match(name or ""):
            raise InvalidArgument(f"network name {name!r}: use letters, digits, '_', '.' "
                                  f"and '-', starting with a letter or digit")
        if driver != "bridge":
            raise InvalidArgument(f"network driver {driver!r} is not supported: only "
                                  f"\"bridge\" networks can be created")
        if name in BUILTIN or name == "default" or self._find(name) is not None:
            raise Conflict(f"network with name {name} already exists")
        ours = [IPv4Network(n.subnet) for n in self.list() if n.subnet]
        if subnet:
            pool = Pool.parse(subnet, gateway, ip_range)
            clash = next((n for n in ours if n.overlaps(pool.subnet)), None)
            if clash is not None:
                raise Conflict(f"Pool overlaps with other one on this address space: "
                               f"{subnet} overlaps {clash} of another network")
        else:
            if gateway or ip_range:
                raise InvalidArgument("gateway and ip-range need a subnet: give --subnet")
            chosen = choose_subnet(user_network_candidates(), await self._routes() + ours)
            pool = Pool.parse(str(chosen))
        network_id = secrets.token_hex(32)
        network = self._insert(
            name, "bridge", network_id=network_id,
            bridge=f"{self.prefix}-{network_id[:15 - len(self.prefix) - 1]}",
            subnet=str(pool.subnet), gateway=str(pool.gateway),
            ip_range=str(pool.ip_range or ""), internal=internal, options=options or {},
            labels=labels or {})
        try:
            await self._bridge_up(network)
        except BaseException:
            self._delete(network)
            raise
        self._pools[network.id] = _Pool(self._pool_size(network))
        self._wake_refill()
        await self._masquerade()
        self.events.network("create", network)
        return network

    async def remove(self, ref: str) -> None:
        """Remove a user-defined network without containers: its pooled namespaces, its
        bridge, its addresses and its record."""
        network = self.get(ref)
        if network.name in BUILTIN:
            raise Conflict(f"{network.name} is a pre-defined network and cannot be removed")
        users = [cid for cid, nets in self._attached.items() if network.id in nets]
        if users:
            raise Conflict(f"error while removing network: network {network.name} id "
                           f"{network.id} has active endpoints ({len(users)} containers); "
                           f"disconnect or remove them first")
        pool = self._pools.pop(network.id, deque())
        await asyncio.gather(*(self._teardown(network, p) for p in pool))
        await self._call({"op": "bridge_del", "name": network.bridge})
        self._delete(network)
        self.events.network("destroy", network)
        await self._masquerade()

    async def prune(self, filters: Mapping[str, Sequence[str]]) -> list[str]:
        """Remove every user-defined network no container is attached to that the prune
        ``filters`` take; their names."""
        pruned = prune_filter(filters, time.time())
        removed = []
        for network in self.list():
            if network.name in BUILTIN or self.endpoints(network.id) or \
                    not pruned(network.labels, network.created):
                continue
            try:
                await self.remove(network.id)
            except (Conflict, NotFound):       # a container attached meanwhile, or gone
                continue
            removed.append(network.name)
        return removed

    def endpoints(self, ref: str) -> dict[str, Endpoint]:
        """The containers attached to a network: ``{container id: endpoint}``."""
        network = self.get(ref)
        return {cid: _endpoint(nets[network.id]) for cid, nets in self._attached.items()
                if network.id in nets}

    def networks_of(self, container_id: str) -> list[Network]:
        """The networks a container is attached to, its first one first."""
        return [a.network for a in self._attached.get(container_id, {}).values()]

    def _insert(self, name: str, driver: str, network_id: str = "", **doc: Any) -> Network:
        network_id = network_id or secrets.token_hex(32)
        self._known.clear()
        with self.store.transaction() as db:
            db.execute("INSERT INTO networks (id, name, driver, created, doc) VALUES "
                       "(?, ?, ?, ?, ?)", (network_id, name, driver, time.time(),
                                           json.dumps(doc, sort_keys=True)))
        return self.get(network_id)

    def _delete(self, network: Network) -> None:
        self._known.clear()
        with self.store.transaction() as db:        # IPAM's part nests (a savepoint)
            self.ipam.release_network(network.id)
            db.execute("DELETE FROM networks WHERE id = ?", (network.id,))

    async def _bridge_up(self, network: Network) -> None:
        pool = network.pool
        await self._call({"op": "bridge", "name": network.bridge,
                          "address": str(pool.gateway), "prefixlen": pool.subnet.prefixlen,
                          "mac": mac_for(pool.gateway)})

    async def _routes(self) -> list[IPv4Network]:
        routes = await self._call({"op": "routes"})
        return [IPv4Network(cidr, strict=False) for cidr, _dev in routes]

    # ------------------------------------------------------------ containers

    async def attach(self, container_id: str, network: str = "bridge", *, ip: str = "",
                     aliases: tuple[str, ...] = (),
                     upstreams: tuple[str, ...] = ()) -> Attachment:
        """Give a starting container its network namespace: from the pool when one is
        ready (no kernel work on this path), else made now. ``ip`` asks for a static
        address (user-defined networks only, as in Docker). On a user network the
        embedded resolver answers in it: ``aliases`` are the names it gives the
        container's address (its name first), ``upstreams`` the servers it forwards
        the container's other questions to."""
        if container_id in self._attached:
            first = next(iter(self._attached[container_id].values()))
            raise Conflict(f"container {container_id[:12]} is already attached to network "
                           f"{first.network.name}")
        net = self.get(network or "bridge")
        if net.driver == "host":
            if ip:
                raise InvalidArgument("ip: the host network has no addresses to assign")
            return Attachment("host", Endpoint(network=net.name))
        if ip and net.name in BUILTIN:
            raise InvalidArgument("user specified IP address is supported on user defined "
                                  "networks only")
        prepared = None if ip else self._take(net, container_id)
        if prepared is None:
            prepared = await self._prepare(net, URGENT, owner=container_id, ip=ip)
        if container_id in self._attached:           # attached twice at once: keep one
            self._teardown_later(net, prepared)
            raise Conflict(f"container {container_id[:12]} is already attached")
        attached = _Attached(net, prepared, tuple(aliases))
        self._attached[container_id] = {net.id: attached}
        self.events.network("connect", net, container_id)
        self._took(net.id)
        self._upstreams[container_id] = tuple(upstreams)
        if prepared.dns is not None:
            sockets, prepared.dns = prepared.dns, None
            self._dns_owner[prepared.path] = container_id
            await self.resolver.serve(prepared.path, *sockets)
        return Attachment(prepared.path, _endpoint(attached))

    async def connect(self, container_id: str, network: str, *, ip: str = "",
                      aliases: tuple[str, ...] = ()) -> Endpoint:
        """Plug a running container into one more bridge network, live: a veth whose
        peer appears in its namespace as the next free ``ethN`` with an address from
        that network (``ip``: a static one, user-defined networks only). The default
        route stays with the container's first network. A namespace without the
        embedded resolver (the default bridge's) gets one when it joins a user network,
        as Docker's: see :meth:`has_resolver`."""
        net = self.get(network)
        nets = self._attached.get(container_id)
        if nets and any(a.network.driver == "null" for a in nets.values()):
            raise Conflict("container cannot be connected to multiple networks with one of "
                           "the networks in private (none) mode")
        path = next((a.prepared.path for a in (nets or {}).values() if a.primary), "") \
            or (self._bare[container_id].path if container_id in self._bare else "")
        if not path:
            raise Conflict(f"container {container_id[:12]} has no network namespace of its "
                           f"own (host network, or not running): it cannot be connected to "
                           f"other networks")
        if net.driver != "bridge":
            raise Conflict(f"container cannot be connected to network {net.name}: only "
                           f"bridge networks can be added to a running container")
        if nets and net.id in nets:
            raise Conflict(f"endpoint with name {container_id[:12]} already exists in "
                           f"network {net.name}")
        if ip and net.name in BUILTIN:
            raise InvalidArgument("user specified IP address is supported on user defined "
                                  "networks only")
        used = {a.iface for a in (nets or {}).values()}
        iface = next(f"eth{i}" for i in itertools.count() if f"eth{i}" not in used)
        pool = net.pool
        address = self.ipam.allocate(net.id, pool, container_id, ip)
        prepared = _Prepared(secrets.token_hex(8), path, address=address,
                             mac=mac_for(address), veth=self._veth_name())
        dns = net.name not in BUILTIN and path not in self._dns_owner
        try:
            _ok, fds = await self._helper.call(
                {"op": "plug", "path": path, "veth": prepared.veth, "bridge": net.bridge,
                 "ifname": iface, "address": str(address),
                 "prefixlen": pool.subnet.prefixlen, "mac": prepared.mac, "dns": dns},
                URGENT, with_fds=True)
        except SandboxError:
            self.ipam.release(net.id, address)
            raise
        except BaseException:                       # cancelled: it may still be made
            self._unplug_later(net, prepared)
            raise
        sockets = [socket.socket(fileno=fd) for fd in fds]
        nets = self._attached.get(container_id)
        if nets is None:                            # the container ended meanwhile
            for sock in sockets:
                sock.close()
            self._unplug_later(net, prepared)
            raise Conflict(f"container {container_id[:12]} stopped while being connected")
        attached = _Attached(net, prepared, tuple(aliases), primary=False, iface=iface)
        nets[net.id] = attached
        self.events.network("connect", net, container_id)
        if len(sockets) == 2:
            self._dns_owner[path] = container_id
            await self.resolver.serve(path, *sockets)
            return _endpoint(attached)
        for sock in sockets:
            sock.close()
        if dns:
            log.warning("container %s: no embedded resolver on network %s (127.0.0.11:53 "
                        "taken in its namespace, or lo down)", container_id[:12], net.name)
        return _endpoint(attached)

    def has_resolver(self, container_id: str) -> bool:
        """Whether the embedded resolver answers in the container's namespace."""
        return container_id in self._dns_owner.values()

    async def disconnect(self, container_id: str, network: str) -> Network:
        """Unplug a container from one network (its veth and address go at once); a
        first network's namespace stays until the container ends."""
        net = self.get(network)
        nets = self._attached.get(container_id) or {}
        attached = nets.get(net.id)
        if attached is None:
            raise NotFound(f"container {container_id[:12]} is not connected to network "
                           f"{net.name}")
        if net.driver == "host":
            raise Conflict("container cannot be disconnected from host network or "
                           "connected to host network")
        del nets[net.id]
        prepared = attached.prepared
        if attached.primary:                        # keep the namespace: it is in use
            self._bare[container_id] = _Prepared(prepared.name, prepared.path)
        if prepared.veth:
            await self._call({"op": "unplug", "veth": prepared.veth})
        if prepared.address is not None:
            self.ipam.release(net.id, prepared.address)
        self.events.network("disconnect", net, container_id)
        return net

    def release(self, container_id: str) -> list[Network]:
        """Give back a container's namespace and addresses (in the background); the
        networks it left (none when it was not attached)."""
        nets = self._attached.pop(container_id, {})
        bare = self._bare.pop(container_id, None)
        self._upstreams.pop(container_id, None)
        # The namespace goes (lazily): the veths of further networks go with it.
        namespace_goes = bare is not None or any(a.primary for a in nets.values())
        for attached in nets.values():
            self.events.network("disconnect", attached.network, container_id)
            if attached.primary:
                self._teardown_later(attached.network, attached.prepared)
            elif namespace_goes:
                self._free_when_gone(attached.network, attached.prepared)
            else:
                self._unplug_later(attached.network, attached.prepared)
        if bare is not None:
            self._teardown_later(self.get("none"), bare)
        return [a.network for a in nets.values()]

    def _take(self, net: Network, owner: str) -> _Prepared | None:
        pool = self._pools.get(net.id)
        while pool:
            prepared = pool.popleft()
            if prepared.address is None:
                return prepared
            try:
                self.ipam.reassign(net.id, prepared.address, owner)
                return prepared
            except Conflict:                         # its address was freed: not usable
                self._teardown_later(net, prepared)
        return None

    def _new_prepared(self, net: Network, owner: str = "", ip: str = ""
                      ) -> tuple[_Prepared, dict[str, Any]]:
        """A namespace to prepare (its address allocated) and the server's request."""
        name = os.urandom(8).hex()
        prepared = _Prepared(name, f"{self._netns_dir}/{name}")
        message: dict[str, Any] = {"op": "prepare", "path": prepared.path,
                                   "dns": net.driver == "bridge" and net.name not in BUILTIN}
        if net.driver == "bridge":
            pool = net.pool
            prepared.address = self.ipam.allocate(net.id, pool, owner or f"pool:{name}", ip)
            prepared.veth = self._veth_name()
            prepared.mac = mac_for(prepared.address)
            message.update(veth=prepared.veth, bridge=net.bridge,
                           address=str(prepared.address), prefixlen=pool.subnet.prefixlen,
                           gateway="" if net.internal else str(pool.gateway),
                           mac=prepared.mac)
        return prepared, message

    async def _prepare(self, net: Network, priority: int, owner: str = "",
                       ip: str = "") -> _Prepared:
        prepared, message = self._new_prepared(net, owner, ip)
        try:
            _ok, fds = await self._helper.call(message, priority, with_fds=True)
        except SandboxError:
            self._unmade(net, prepared)             # the server undid its part
            raise
        except BaseException:                        # cancelled: it may still be made
            self._teardown_later(net, prepared)
            raise
        _resolver_sockets(prepared, fds)
        return prepared

    async def _prepare_batch(self, net: Network, count: int
                             ) -> tuple[list[_Prepared], SandboxError | None]:
        """Up to ``count`` pool namespaces in one request: those made, and the error that
        stopped the rest (the server undid the one that failed; the later ones were not
        tried)."""
        batch = [self._new_prepared(net)]
        with contextlib.suppress(SandboxError):      # fewer when the subnet runs out
            while len(batch) < count:
                batch.append(self._new_prepared(net))
        try:
            result, fds = await self._helper.call(
                {"op": "prepare_many", "items": [m for _p, m in batch]}, REFILL,
                with_fds=True)
        except SandboxError:                         # refused whole: nothing was made
            for prepared, _m in batch:
                self._unmade(net, prepared)
            raise
        except BaseException:                        # cancelled: they may still be made
            for prepared, _m in batch:
                self._teardown_later(net, prepared)
            raise
        made = [p for p, _m in batch[:result["made"]]]
        for prepared, sent in zip(made, result["fd_counts"]):
            _resolver_sockets(prepared, fds[:sent])
            fds = fds[sent:]
        for prepared, _m in batch[len(made):]:
            self._unmade(net, prepared)
        error = result.get("error")
        return made, from_wire(error) if error else None

    def _unmade(self, net: Network, prepared: _Prepared) -> None:
        if prepared.address is not None:
            self.ipam.release(net.id, prepared.address)

    def _veth_name(self) -> str:
        """``<prefix>v<hex>``, as long as a link name may be."""
        return f"{self.prefix}v{os.urandom(8).hex()[:15 - len(self.prefix) - 1]}"

    def _teardown_later(self, net: Network, prepared: _Prepared) -> None:
        """The namespace goes with the next sweep; the kernel deletes its veth with it."""
        self._stop_resolver(prepared)
        self._releasing.append((net, prepared))
        self._sweep_soon()

    def _unplug_later(self, net: Network, prepared: _Prepared) -> None:
        self._later(self._unplug(net, prepared))

    def _later(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _unplug(self, net: Network, prepared: _Prepared) -> None:
        """Remove a connected veth, then free its address (teardown priority)."""
        try:
            await self._call({"op": "unplug", "veth": prepared.veth}, TEARDOWN)
        except SandboxError as e:
            log.warning("network %s: removing veth %s failed: %s", net.name,
                        prepared.veth, e)
            return
        if prepared.address is not None:
            self.ipam.release(net.id, prepared.address)

    async def _masquerade(self) -> None:
        """The isolation rules (and with ``ip_masq`` forwarding and masquerade) for
        every bridge network (see :mod:`sandboxd.runner.masq`), re-applied whole on
        each network change."""
        bridges = [[n.bridge, n.subnet, n.internal] for n in self.list()
                   if n.driver == "bridge"]
        try:
            await self._call({"op": "netfilter", "prefix": self.prefix, "bridges": bridges,
                              "masq": self.ip_masq})
        except SandboxError as e:
            # Containers still run; said in the log and in `sbx info`, not fatal (a
            # machine without iptables): with forwarding on, networks are not isolated.
            problem = (f"netfilter rules: {e.message}; bridge networks are not isolated "
                       f"if the host forwards (ip_forward=1)"
                       + ("" if not self.ip_masq else
                          ", and containers cannot reach beyond this machine"))
            if problem != self.masq_problem:
                log.warning("%s", problem)
            self.masq_problem = problem
        else:
            self.masq_problem = ""

    async def _teardown(self, net: Network, prepared: _Prepared) -> None:
        """Delete a namespace's veth and the namespace now, then free its address."""
        self._stop_resolver(prepared)
        try:
            await self._call({"op": "release", "path": prepared.path,
                              "veth": prepared.veth})
        except SandboxError as e:
            # The address stays allocated while its veth may exist; start-up frees it.
            log.warning("network %s: removing namespace %s failed: %s", net.name,
                        prepared.name, e)
            return
        if prepared.address is not None:
            self.ipam.release(net.id, prepared.address)

    def _stop_resolver(self, prepared: _Prepared) -> None:
        # The resolver's sockets hold the namespace: they go first.
        self.resolver.stop(prepared.path)
        self._dns_owner.pop(prepared.path, None)
        if prepared.dns is not None:
            for sock in prepared.dns:
                sock.close()
            prepared.dns = None

    def _free_when_gone(self, net: Network, prepared: _Prepared) -> None:
        """Free the address of a veth whose namespace is going, once the veth is gone."""
        self._dying[prepared.veth] = _Dying(time.monotonic() + DYING_PATIENCE, net.id,
                                            prepared.address)
        self._sweep_soon()

    def _sweep_soon(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
            self._background.add(self._sweeper)
            self._sweeper.add_done_callback(self._background.discard)

    async def _sweep(self) -> None:
        """Every DYING_POLL while there is work: one message releases the namespaces
        waiting to go and asks which dying veths are gone. A failure keeps the address
        (start-up frees it)."""
        while self._releasing or self._dying:
            await asyncio.sleep(DYING_POLL)
            releasing, self._releasing = self._releasing, []
            watched = list(self._dying)
            try:
                reply = await self._call({
                    "op": "sweep", "release": [[p.path, p.veth] for _net, p in releasing],
                    "veths": watched}, TEARDOWN)
            except SandboxError as e:                # the server is gone: so is the sweep
                log.warning("network: releasing namespaces failed: %s", e)
                self._releasing.clear()
                self._dying.clear()
                return
            failed = dict(reply["failed"])
            now = time.monotonic()
            for net, prepared in releasing:
                if prepared.path in failed:
                    log.warning("network %s: removing namespace %s failed: %s", net.name,
                                prepared.name, failed[prepared.path])
                elif prepared.veth:
                    self._dying[prepared.veth] = _Dying(now + DYING_PATIENCE, net.id,
                                                        prepared.address)
                elif prepared.address is not None:
                    self.ipam.release(net.id, prepared.address)
            for veth in reply["gone"]:
                self._free(self._dying.pop(veth, None))
            for veth in watched:
                dying = self._dying.get(veth)
                if dying is None or now <= dying.deadline:
                    continue
                del self._dying[veth]
                try:
                    await self._call({"op": "unplug", "veth": veth}, TEARDOWN)
                except SandboxError as e:
                    log.warning("network: removing veth %s failed: %s", veth, e)
                    continue
                self._free(dying)

    def _free(self, dying: _Dying | None) -> None:
        if dying is not None and dying.address is not None:
            self.ipam.release(dying.network_id, dying.address)

    # ------------------------------------------------------------ the pool

    def _pool_size(self, network: Network) -> int:
        return self.pool_size if network.name in BUILTIN else \
            min(self.pool_size, USER_POOL_SIZE)

    def _wake_refill(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _took(self, network_id: str) -> None:
        """A start took from (or found empty) this network's pool: at low water the
        refill goes now; above it, a top-up once TOPUP_AFTER passed without a take."""
        pool = self._pools.get(network_id)
        if pool is None or len(pool) <= pool.low:
            self._wake_refill()
            return
        self._last_take = time.monotonic()
        if self._topup is None:
            self._topup = asyncio.get_running_loop().call_later(TOPUP_AFTER, self._topup_due)

    def _topup_due(self) -> None:
        quiet = time.monotonic() - self._last_take
        if quiet < TOPUP_AFTER:                     # taken from since: later
            # Not sooner than 5 ms: uvloop's timers count whole milliseconds, so a
            # re-arm for the less than 1 ms left fired at once, again and again.
            self._topup = asyncio.get_running_loop().call_later(
                max(TOPUP_AFTER - quiet, 0.005), self._topup_due)
        else:
            self._topup = None
            self._wake_refill()

    def _short_pool(self) -> Network | None:
        now = time.monotonic()
        for network_id, pool in self._pools.items():
            if len(pool) < pool.size and self._backoff.get(network_id, 0) <= now:
                network = self._find(network_id)
                if network is not None:
                    return network
        return None

    async def _refill(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while (network := self._short_pool()) is not None:
                self._refilling = True
                try:
                    pool = self._pools[network.id]
                    made, error = await self._prepare_batch(
                        network, min(pool.batch, pool.size - len(pool)))
                except Exception as e:               # the loop must outlive any failure
                    made, error = [], e
                finally:
                    self._refilling = False
                pool = self._pools.get(network.id)
                for prepared in made:
                    if pool is None:                 # the network went meanwhile
                        self._teardown_later(network, prepared)
                    else:
                        pool.append(prepared)
                if error is not None:
                    log.warning("network %s: pool refill failed (retrying in %.0f s): %s",
                                network.name, BACKOFF, error, exc_info=(
                                    None if isinstance(error, SandboxError) else error))
                    self._backoff[network.id] = time.monotonic() + BACKOFF
                    asyncio.get_running_loop().call_later(BACKOFF, self._wake_refill)

    async def _call(self, message: dict, priority: int = URGENT) -> Any:
        return await self._helper.call(message, priority)

    def _dns_scope(self, path: str) -> Scope | None:
        """What the resolver in namespace ``path`` answers (sandboxd/dns.py): the
        names on each user network its container is on (name, aliases, short id; also
        as ``name.network``), forwarding unless every network is internal."""
        container_id = self._dns_owner.get(path, "")
        nets = self._attached.get(container_id)
        if nets is None:
            return None
        names: dict[str, list[str]] = {}
        reverse: dict[str, str] = {}
        for attached in nets.values():
            net = attached.network
            if net.name in BUILTIN:
                continue
            for member_id, member_nets in self._attached.items():
                member = member_nets.get(net.id)
                if member is None or member.prepared.address is None:
                    continue
                address = str(member.prepared.address)
                for name in (*member.aliases, member_id[:12]):
                    for key in (name.lower(), f"{name}.{net.name}".lower()):
                        found = names.setdefault(key, [])
                        if address not in found:
                            found.append(address)
                if member.aliases:
                    reverse.setdefault(address, f"{member.aliases[0]}.{net.name}")
        forward = any(not a.network.internal for a in nets.values())
        return Scope(names, reverse, self._upstreams.get(container_id, ()) if forward
                     else ())


def link_env(alias: str, link_name: str, ip: str, exposed_ports: Sequence[str],
             env: Sequence[str]) -> list[str]:
    """The variables a legacy link gives its client, as Docker's ``daemon/links`` writes
    them: ``link_name`` is ``/client/alias``, ``exposed_ports`` the server's ("80/tcp"),
    ``env`` its environment ("K=V"; HOME and PATH are left out, values keep any '=')."""
    prefix = alias.upper().replace("-", "_")
    ports = sorted({_port(p) for p in exposed_ports}, key=lambda p: (p[0], p[1] != "tcp"))
    out = []
    if ports:                               # the lowest port, tcp before others
        out.append(f"{prefix}_PORT={ports[0][1]}://{ip}:{ports[0][0]}")
    # A run of consecutive port numbers is also described as a range (counted as Docker
    # counts it: each further entry may be at most one above the previous count).
    i = 0
    while i < len(ports):
        j, value = i, ports[i][0]
        while j + 1 < len(ports) and ports[j + 1][0] <= value + 1:
            j, value = j + 1, value + 1
        if j > i:
            (first, proto), (last, last_proto) = ports[i], ports[j]
            key = f"{prefix}_PORT_{first}_{proto.upper()}"
            out += [f"{key}_START={proto}://{ip}:{first}", f"{key}_ADDR={ip}",
                    f"{key}_PROTO={proto}", f"{key}_PORT_START={first}"]
            key_end = f"{prefix}_PORT_{first}_{last_proto.upper()}"
            out += [f"{key_end}_END={last_proto}://{ip}:{last}",
                    f"{key_end}_PORT_END={last}"]
        i = j + 1
    for number, proto in ports:
        key = f"{prefix}_PORT_{number}_{proto.upper()}"
        out += [f"{key}={proto}://{ip}:{number}", f"{key}_ADDR={ip}",
                f"{key}_PORT={number}", f"{key}_PROTO={proto}"]
    out.append(f"{prefix}_NAME={link_name}")
    for item in env:
        key, eq, value = item.partition("=")
        if eq and key not in ("HOME", "PATH"):
            out.append(f"{prefix}_ENV_{key}={value}")
    return out


def _port(text: str) -> tuple[int, str]:
    number, _, proto = text.partition("/")
    return int(number), (proto or "tcp").lower()


def _network(row: Any) -> Network:
    doc = json.loads(row["doc"])
    return Network(id=row["id"], name=row["name"], driver=row["driver"],
                   created=row["created"], **doc)


def _resolver_sockets(prepared: _Prepared, fds: list[int]) -> None:
    """A prepared user-network namespace's resolver sockets (UDP, TCP) from the server's
    reply; any other fds are closed."""
    if len(fds) == 2:
        prepared.dns = (socket.socket(fileno=fds[0]), socket.socket(fileno=fds[1]))
    else:
        for fd in fds:
            os.close(fd)


def _endpoint(attached: _Attached) -> Endpoint:
    net, prepared = attached.network, attached.prepared
    if prepared.address is None:
        return Endpoint(network=net.name)
    pool = net.pool
    # Only the first network's gateway is the container's default route.
    return Endpoint(network=net.name, ip_address=str(prepared.address),
                    prefix_len=pool.subnet.prefixlen,
                    gateway="" if net.internal or not attached.primary else str(pool.gateway),
                    mac_address=prepared.mac, aliases=attached.aliases)


class _Helper(HelperConnection):
    """The daemon's handle on the network server: one request in flight, the rest
    queued by priority (see the module docstring)."""

    lost_message = "network server exited; restart the daemon"

    def __init__(self) -> None:
        super().__init__()
        # (priority, request id, requests sent when it was queued, message, future)
        self._queue: list[tuple[int, int, int, dict, asyncio.Future]] = []
        self._seq = itertools.count()
        self._inflight: tuple[int, asyncio.Future] | None = None
        self._sent = 0                      # requests sent so far
        self._teardowns = 0                 # of the queue's requests
        self._sent_teardown = False         # the last request sent was one

    async def start(self, lock: Path) -> None:
        """Start the server; it answers once it holds ``lock`` (a server of a daemon
        that died may still be removing its links: ours must not adopt them)."""
        ours, theirs = seqpacket_pair()
        env = dict(os.environ)
        # The server must import this same package, also when it runs from a checkout.
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root,
                                                          env.get("PYTHONPATH")]))
        proc = subprocess.Popen(
            [sys.executable, "-m", "sandboxd.runner.netserver", "--fd", str(theirs.fileno()),
             "--lock", str(lock)],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env)
        theirs.close()
        await self._attach(ours, proc)

    async def call(self, message: dict, priority: int, with_fds: bool = False) -> Any:
        """The server's answer; with ``with_fds`` ``(answer, fds)``, the fds the caller's."""
        if self._sock is None:
            raise Unavailable("network server is not running; restart the daemon")
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._queue, (priority, next(self._seq), self._sent, message, future))
        if priority == TEARDOWN:
            self._teardowns += 1
        self._pump()
        reply = await future
        fds = reply.pop("fds", [])
        if "error" in reply or not with_fds:
            for fd in fds:
                os.close(fd)
        if "error" in reply:
            raise from_wire(reply["error"])
        return (reply.get("ok"), fds) if with_fds else reply.get("ok")

    def _pump(self) -> None:
        while self._inflight is None and self._queue and self._sock is not None:
            priority, rid, _queued_at, message, future = self._next()
            if priority == TEARDOWN:
                self._teardowns -= 1
            if future.done():                       # its caller was cancelled
                continue
            send_message(self._sock, {**message, "rid": rid})
            self._inflight = (rid, future)
            self._sent += 1
            self._sent_teardown = priority == TEARDOWN

    def _next(self) -> tuple[int, int, int, dict, asyncio.Future]:
        """The most urgent request; or, unless the last one sent was a teardown, the
        oldest teardown once MAX_PASSED_OVER requests went ahead of it."""
        if self._teardowns and not self._sent_teardown and self._queue[0][0] != TEARDOWN:
            oldest = min(item for item in self._queue if item[0] == TEARDOWN)
            if self._sent - oldest[2] >= MAX_PASSED_OVER:
                self._queue.remove(oldest)
                heapq.heapify(self._queue)
                return oldest
        return heapq.heappop(self._queue)

    def _on_message(self, msg: dict) -> None:
        if self._inflight is not None and msg.get("rid") == self._inflight[0]:
            future = self._inflight[1]
            self._inflight = None
            if not future.done():
                future.set_result(msg)
            else:                                   # its caller was cancelled
                for fd in msg.get("fds", ()):
                    os.close(fd)
            self._pump()

    def _fail_pending(self, err: Exception) -> None:
        waiting = [f for *_rest, f in self._queue]
        if self._inflight is not None:
            waiting.append(self._inflight[1])
        self._queue.clear()
        self._teardowns = 0
        self._inflight = None
        for future in waiting:
            if not future.done():
                future.set_exception(err)
