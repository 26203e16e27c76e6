"""Published ports: a userland proxy in the daemon, as Docker's ``docker-proxy``.

``-p [ip:]hostport:containerport[/tcp|udp]`` listens on the host's ``ip:hostport``
and splices every connection (TCP) or datagram flow (UDP) to the container's address
on its bridge. How the container service uses it (on the daemon's asyncio loop)::

    proxy = PortProxy()
    proxy.check(bindings)                         # create: a clear Conflict, nothing made
    bound = await proxy.publish(cid, "172.17.0.2", bindings)   # start, before the spawn
    proxy.retarget(cid, "10.216.0.5")             # it left the network of the first
    proxy.release(cid)                            # exit / failed start / remove
    await proxy.close()                           # daemon shutdown

Why a proxy and not DNAT: the host reaches the container through its bridge address,
so a socket in the daemon needs neither ``ip_forward`` nor netfilter rules (both are
off in tests and unwelcome on many hosts), works the same on every network, including
``--internal`` ones, and for connections to ``127.0.0.1`` (which DNAT only handles with
``route_localnet``). It costs a copy through the daemon per byte, which for tests and
notebooks is nothing next to the container's start; ``--ip-masq`` is the separate
question of containers reaching out (see :mod:`sandboxd.runner.masq`).

Addresses: a binding without a host address listens on all of them, IPv4 and IPv6, as
Docker does (its ``NetworkSettings.Ports`` lists ``0.0.0.0`` and ``::``): one dual-stack
socket on ``::`` (``IPV6_V6ONLY`` off), so both share one port and one conflict check;
IPv4 only on a host without IPv6. ``[::1]:8080:80`` listens on that IPv6 address only.

Host ports: a binding with ``host_port`` 0 gets one the kernel picks from its
ephemeral range, fresh at each start (Docker allocates a new one at each start too).
Every binding of a start is bound before any is kept: one that fails undoes the
others, so a conflict leaves nothing listening. A port one of our containers holds is
refused without asking the kernel. TCP sockets are bound with ``SO_REUSEADDR`` (a
restart must not wait out TIME_WAIT), which still refuses a port someone listens on.

TCP: each accepted connection opens one to the container; bytes flow both ways with
back-pressure (a slow side stops the reads of the other), half-closes are passed on,
and a refused backend is asked again every few milliseconds for :data:`BACKEND_WAIT`
seconds before the client's connection is closed: a client behind DNAT would see the
refusal and retry, but one behind a proxy has been accepted already and cannot tell
(testcontainers connects to its Ryuk right after the start, once, and a service that
needs a few ms more to listen would lose it for good). UDP: each
client address gets its own socket connected to the container (so replies find their
way back), dropped after :data:`UDP_IDLE` seconds without traffic, at most
:data:`UDP_FLOWS` per port. ``release`` closes the listeners and every connection
through them at once.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Sequence

from . import streams
from .model import PortBinding
from .errors import Conflict, InvalidArgument, SetupFailed

__all__ = ["PortProxy", "UDP_IDLE", "UDP_FLOWS"]

log = logging.getLogger("sandboxd.ports")

CHUNK = 1 << 16
BACKEND_WAIT = 1.0           # seconds a refused backend is retried (a service starting)
UDP_IDLE = 90.0              # seconds; docker-proxy's UDP connection timeout
UDP_FLOWS = 1024             # client addresses per UDP port
ANY = "0.0.0.0"
ANY6 = "::"
_ipv6: list[bool] = []          # whether this host has IPv6 sockets, asked once


def _key(protocol: str, host_ip: str, port: int) -> tuple[str, str, int]:
    return protocol, host_ip or ANY, port


@dataclass
class _Published:
    binding: PortBinding                  # with the host port actually bound
    sock: socket.socket
    target: str = ""                      # the container's address new flows go to
    also: tuple[PortBinding, ...] = ()    # the same socket's IPv6 side (``::``), if any
    server: streams.Listener | None = None
    transport: asyncio.DatagramTransport | None = None
    tasks: set[asyncio.Task] = field(default_factory=set)
    flows: dict = field(default_factory=dict)
    sweeper: asyncio.TimerHandle | None = None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.transport is not None:
            self.transport.close()
        if self.sweeper is not None:
            self.sweeper.cancel()
        for flow in list(self.flows.values()):
            flow.close()
        self.flows.clear()
        for task in list(self.tasks):
            task.cancel()
        self.sock.close()


class PortProxy:
    def __init__(self) -> None:
        self._by_container: dict[str, list[_Published]] = {}

    # ------------------------------------------------------------ queries

    def published(self, container_id: str) -> tuple[PortBinding, ...]:
        return tuple(b for p in self._by_container.get(container_id, ())
                     for b in (p.binding, *p.also))

    def _holder(self, key: tuple[str, str, int]) -> str | None:
        """Which of our containers holds ``key`` (an address of 0.0.0.0 overlaps all)."""
        proto, ip, port = key
        for cid, items in self._by_container.items():
            for p in items:
                held = _key(p.binding.protocol, p.binding.host_ip, p.binding.host_port)
                if held[0] == proto and held[2] == port and ANY in (ip, held[1]) \
                        or held == key:
                    return cid
        return None

    def check(self, bindings: Sequence[PortBinding], container_id: str = "") -> None:
        """Refuse bindings that cannot be bound now: twice in the list, held by another
        of our containers, or in use on the host (a trial bind, closed at once). Called
        at create so a conflict creates nothing; the start binds for real."""
        seen: set[tuple[str, str, int]] = set()
        for b in bindings:
            if not b.host_port:
                continue
            key = _key(b.protocol, b.host_ip, b.host_port)
            if key in seen or any(k[0] == key[0] and k[2] == key[2] and ANY in (k[1], key[1])
                                  for k in seen):
                raise Conflict(f"Bind for {key[1]}:{key[2]} failed: port is published "
                               f"twice in this container's -p options")
            seen.add(key)
            holder = self._holder(key)
            if holder is not None and holder != container_id:
                raise _allocated(key, f"container {holder[:12]} publishes it")
            if holder is None:
                _bind(b, listen=False).close()

    # ------------------------------------------------------------ publish / release

    async def publish(self, container_id: str, address: str,
                      bindings: Sequence[PortBinding]) -> tuple[PortBinding, ...]:
        """Listen on every binding and forward to ``address`` (the container's IP);
        all or nothing. Returns the bindings with their host ports filled in."""
        if container_id in self._by_container:
            raise Conflict(f"container {container_id[:12]} already has published ports")
        if not bindings:
            return ()
        if not address:
            raise InvalidArgument("publish: the container has no address to forward to "
                                  "(ports need a bridge network)")
        self.check(bindings, container_id)
        made: list[_Published] = []
        try:
            for b in bindings:
                sock = _bind(b)
                # Docker's NetworkSettings.Ports names the address: 0.0.0.0 (and ::)
                # for all.
                bound = replace(b, host_ip=b.host_ip or ANY,
                                host_port=sock.getsockname()[1])
                dual = not b.host_ip and sock.family == socket.AF_INET6
                published = _Published(bound, sock, address,
                                       (replace(bound, host_ip=ANY6),) if dual else ())
                made.append(published)
                if b.protocol == "tcp":
                    await self._serve_tcp(published)
                else:
                    await self._serve_udp(published)
        except BaseException:
            for p in made:
                p.close()
            raise
        self._by_container[container_id] = made
        return self.published(container_id)

    def retarget(self, container_id: str, address: str) -> None:
        """Send new connections and flows to ``address`` (the container left the
        network whose address they went to; ones already open stay as they are)."""
        for published in self._by_container.get(container_id, ()):
            published.target = address

    def target(self, container_id: str) -> str:
        items = self._by_container.get(container_id)
        return items[0].target if items else ""

    def release(self, container_id: str) -> None:
        """Stop listening for a container and cut its connections (idempotent)."""
        for published in self._by_container.pop(container_id, ()):
            published.close()

    async def close(self) -> None:
        for container_id in list(self._by_container):
            self.release(container_id)
        await asyncio.sleep(0)                 # let the cancelled splices unwind

    # ------------------------------------------------------------ TCP

    async def _serve_tcp(self, published: _Published) -> None:
        port = published.binding.container_port

        async def on_client(reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            published.tasks.add(task)
            try:
                await _splice_tcp(reader, writer, published.target, port)
            finally:
                published.tasks.discard(task)

        published.server = streams.serve(on_client, published.sock, limit=CHUNK)

    # ------------------------------------------------------------ UDP

    async def _serve_udp(self, published: _Published) -> None:
        loop = asyncio.get_running_loop()
        listener = _UdpListener(published)
        transport, _ = await loop.create_datagram_endpoint(lambda: listener,
                                                           sock=published.sock)
        published.transport = transport        # type: ignore[assignment]
        listener.sweep()


def _bind(b: PortBinding, listen: bool = True) -> socket.socket:
    """A socket bound to the binding's host side (listening, for TCP, unless only
    trying: a bind already fails where someone listens)."""
    kind = socket.SOCK_STREAM if b.protocol == "tcp" else socket.SOCK_DGRAM
    if b.protocol not in ("tcp", "udp"):
        raise InvalidArgument(f"publish {b.container_port}/{b.protocol}: only tcp and "
                              f"udp ports can be published")
    dual = not b.host_ip and _has_ipv6()
    host = ANY6 if dual else b.host_ip or ANY
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:          # for UDP it would allow a second bind
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual:                                # IPv4 too, whatever net.ipv6.bindv6only says
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, b.host_port))
        if kind == socket.SOCK_STREAM and listen:
            sock.listen(128)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        key = _key(b.protocol, b.host_ip, b.host_port)
        if e.errno == errno.EADDRINUSE:
            raise _allocated(key, "something on the host listens on it") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise InvalidArgument(f"publish: host address {b.host_ip} is not an address "
                                  f"of this machine; give one of its addresses or none "
                                  f"(all of them)") from None
        if e.errno == errno.EACCES:
            raise Conflict(f"Bind for {key[1]}:{key[2]} failed: permission denied") \
                from None
        raise SetupFailed(f"publish {key[1]}:{key[2]}/{b.protocol}: {e.strerror}") from None
    return sock


def _has_ipv6() -> bool:
    """IPv6 sockets work here (not a kernel booted with ``ipv6.disable=1``)."""
    if not _ipv6:
        try:
            socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
            _ipv6.append(True)
        except OSError:
            _ipv6.append(False)
    return _ipv6[0]


def _allocated(key: tuple[str, str, int], why: str) -> Conflict:
    proto, ip, port = key
    return Conflict(f"Bind for {ip}:{port} failed: port is already allocated ({proto}: "
                    f"{why}); choose another host port, or give only the container port "
                    f"and one is picked")


async def _splice_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      address: str, port: int) -> None:
    try:
        deadline = time.monotonic() + BACKEND_WAIT
        while True:
            try:
                up_reader, up_writer = await asyncio.open_connection(address, port,
                                                                     limit=CHUNK)
                break
            except ConnectionRefusedError:     # nothing listens yet: it may soon
                if time.monotonic() >= deadline:
                    return
                await asyncio.sleep(0.01)
            except OSError:
                return
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            up_writer.close()
    except (asyncio.CancelledError, ConnectionError):
        pass
    finally:
        writer.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close the other side (so a request-then-EOF client
    still gets its answer)."""
    try:
        while data := await reader.read(CHUNK):
            streams.write(writer, data)
            await writer.drain()
        streams.write_eof(writer)
    except ConnectionError:
        writer.close()


class _UdpFlow(asyncio.DatagramProtocol):
    """One client address's socket towards the container."""

    def __init__(self, listener: _UdpListener, client: tuple[str, int]):
        self.listener = listener
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None
        self.last = time.monotonic()
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport              # type: ignore[assignment]
        for data in self.pending:
            self.transport.sendto(data)
        self.pending.clear()

    def send(self, data: bytes) -> None:
        self.last = time.monotonic()
        if self.transport is None:
            self.pending.append(data)
        else:
            self.transport.sendto(data)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.last = time.monotonic()
        out = self.listener.published.transport
        if out is not None:
            out.sendto(data, self.client)

    def error_received(self, exc: Exception) -> None:
        pass                                    # ICMP unreachable: nothing listens yet

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _UdpListener(asyncio.DatagramProtocol):
    def __init__(self, published: _Published):
        self.published = published

    @property
    def target(self) -> tuple[str, int]:
        return self.published.target, self.published.binding.container_port

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        flows = self.published.flows
        flow = flows.get(addr)
        if flow is None:
            if len(flows) >= UDP_FLOWS:
                return                          # full: drop, as a lossy path may
            flow = flows[addr] = _UdpFlow(self, addr)
            task = asyncio.get_running_loop().create_task(self._connect(flow))
            self.published.tasks.add(task)
            task.add_done_callback(self.published.tasks.discard)
        flow.send(data)

    async def _connect(self, flow: _UdpFlow) -> None:
        try:
            await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: flow, remote_addr=self.target)
        except OSError as e:
            log.debug("udp proxy to %s:%d: %s", *self.target, e)
            self.published.flows.pop(flow.client, None)

    def error_received(self, exc: Exception) -> None:
        pass

    def sweep(self) -> None:
        """Drop flows idle for UDP_IDLE seconds; runs every UDP_IDLE / 3."""
        now = time.monotonic()
        for addr, flow in list(self.published.flows.items()):
            if now - flow.last > UDP_IDLE:
                flow.close()
                del self.published.flows[addr]
        self.published.sweeper = asyncio.get_running_loop().call_later(
            UDP_IDLE / 3, self.sweep)
