"""The embedded resolver of user networks: Docker's 127.0.0.11, served by the daemon.

A container on a user-defined network gets ``nameserver 127.0.0.11`` (see
:mod:`sandboxd.resolvconf`). The answers come from here: the names, ``--network-alias``
and ``network connect --alias`` values and short ids of the containers on the networks
the asking container is on (A records, PTR for their addresses; NOERROR with no answer
for the other types of those names, AAAA included: there is no IPv6 here), and for everything else the reply of the
container's upstream servers (its ``--dns``, else the daemon's ``--dns``, else the
host's resolv.conf), over UDP or TCP as the question came.

How a question gets here without a process per container and without the daemon
entering a namespace (rule 1): the network server makes, inside each namespace it
prepares for a user network, a UDP socket and a listening TCP socket bound to
127.0.0.11:53, and hands them over with SCM_RIGHTS (:mod:`sandboxd.runner.netserver`).
A socket stays in the namespace it was made in, so this module serves them on the
daemon's asyncio loop like any other socket: no thread, no fork, no DNAT rule, nothing
to set up at start (the namespaces come from the pool, sockets ready). Docker instead
runs a goroutine listener per container namespace plus iptables DNAT from port 53 to
it; a socket made in place needs neither. Upstream questions leave from the host's
namespace, so a loopback upstream (systemd-resolved's 127.0.0.53) works too, as with
Docker. A container on ``--internal`` networks only gets no forwarding (SERVFAIL), as
Docker's.

Each :meth:`Resolver.serve` key (the namespace's path) maps to a :class:`Scope` through
the ``lookup`` callback, asked per question, so names follow containers joining and
leaving without bookkeeping here. Packets are parsed by dnslib (wire format with name
compression, malformed input refused), imported at the first question so the daemon's
start does not pay its ~20 ms. Forwarded questions are relayed byte for byte (the
container's id, flags and EDNS options reach the upstream); a reply is accepted only
from the server asked and with the question's id. A namespace has at most
:data:`MAX_INFLIGHT` questions in progress; more are dropped (UDP) or refused (TCP).
"""
from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import streams

__all__ = ["Resolver", "Scope", "ADDRESS", "TTL"]

log = logging.getLogger("sandboxd.dns")

ADDRESS = "127.0.0.11"
TTL = 600                      # Docker's for container names
UPSTREAM_TIMEOUT = 2.0         # seconds per upstream server before the next is tried
TCP_IDLE = 10.0                # seconds a TCP client may stay silent between questions
MAX_INFLIGHT = 64              # questions in progress per namespace
MAX_UDP = 65535


@dataclass(frozen=True)
class Scope:
    """What one namespace's resolver knows: ``names`` (lowercase, no trailing dot) to
    addresses, ``reverse`` addresses to the name a PTR gives, the ``upstreams`` to
    forward the rest to (empty: answer SERVFAIL, an internal network)."""
    names: dict[str, list[str]] = field(default_factory=dict)
    reverse: dict[str, str] = field(default_factory=dict)
    upstreams: tuple[str, ...] = ()


class _Served:
    def __init__(self, key: str) -> None:
        self.key = key
        self.udp: asyncio.DatagramTransport | None = None
        self.tcp: streams.Listener | None = None
        self.clients: set[asyncio.StreamWriter] = set()   # TCP connections
        self.inflight = 0


class Resolver:
    def __init__(self, lookup: Callable[[str], Scope | None]) -> None:
        self.lookup = lookup
        self._served: dict[str, _Served] = {}
        self._tasks: set[asyncio.Task] = set()

    async def serve(self, key: str, udp: socket.socket, tcp: socket.socket) -> None:
        """Answer the questions arriving on these sockets (made and bound in the
        namespace ``key``; both are owned from now on, also if this fails)."""
        if key in self._served:
            self.stop(key)
        loop = asyncio.get_running_loop()
        served = _Served(key)
        self._served[key] = served
        try:
            udp.setblocking(False)
            tcp.setblocking(False)
            served.udp, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self, served), sock=udp)
            served.tcp = streams.serve(lambda r, w: self._tcp_client(served, r, w), tcp)
        except BaseException:
            self.stop(key)
            udp.close()
            tcp.close()
            raise

    def stop(self, key: str) -> None:
        """Stop answering in namespace ``key`` and close its sockets (idempotent); the
        namespace can then go."""
        served = self._served.pop(key, None)
        if served is None:
            return
        if served.udp is not None:
            served.udp.close()
        if served.tcp is not None:
            served.tcp.close()
        for writer in served.clients:           # an open connection holds the namespace
            writer.close()

    def close(self) -> None:
        for key in list(self._served):
            self.stop(key)
        for task in self._tasks:
            task.cancel()

    # ------------------------------------------------------------ transports

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _udp_question(self, served: _Served, data: bytes, peer: Any) -> None:
        try:
            reply = await self.answer(served.key, data, tcp=False)
        finally:
            served.inflight -= 1
        if reply is not None and served.udp is not None and not served.udp.is_closing():
            served.udp.sendto(reply, peer)

    async def _tcp_client(self, served: _Served, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        served.clients.add(writer)
        try:
            while self._served.get(served.key) is served:
                try:
                    size = struct.unpack("!H", await asyncio.wait_for(
                        reader.readexactly(2), TCP_IDLE))[0]
                    data = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, OSError):
                    return
                if served.inflight >= MAX_INFLIGHT:
                    reply = _refused(data)
                else:
                    served.inflight += 1
                    try:
                        reply = await self.answer(served.key, data, tcp=True)
                    finally:
                        served.inflight -= 1
                if reply is None:
                    return
                streams.write(writer, struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            served.clients.discard(writer)
            writer.close()

    # ------------------------------------------------------------ answers

    async def answer(self, key: str, data: bytes, tcp: bool) -> bytes | None:
        """The reply to one DNS message from namespace ``key`` (None: not a question we
        answer, or the namespace is no longer served: no reply)."""
        from dnslib import DNSRecord
        try:
            query = DNSRecord.parse(data)
        except Exception:               # dnslib raises several kinds on garbage: drop it
            return None
        if query.header.qr or query.header.opcode != 0 or len(query.questions) != 1:
            return None if query.header.qr else _rcode(query, "NOTIMP")
        scope = self.lookup(key)
        if scope is None:
            return None
        local = _local(query, scope)
        if local is not None:
            return local
        if not scope.upstreams:
            return _rcode(query, "SERVFAIL")
        for server in scope.upstreams:
            try:
                reply = await (_forward_tcp(server, data) if tcp else
                               _forward_udp(server, data))
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
                log.debug("dns: upstream %s: %s", server, e)
                continue
            if reply[:2] == data[:2]:
                return reply
        return _rcode(query, "SERVFAIL")


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver, served: _Served) -> None:
        self.resolver, self.served = resolver, served

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.served.inflight >= MAX_INFLIGHT:
            return                                     # the client will retry
        self.served.inflight += 1
        self.resolver._spawn(self.resolver._udp_question(self.served, data, addr))

    def error_received(self, exc: Exception) -> None:
        pass                                           # an ICMP error for a past reply


def _local(query: Any, scope: Scope) -> bytes | None:
    """The reply from the network's own names, or None when they do not know it."""
    from dnslib import PTR, QTYPE, RR, A
    question = query.q
    if question.qclass != 1:                           # IN only
        return None
    name = str(question.qname).rstrip(".").lower()
    if question.qtype == QTYPE.PTR:
        address = _ptr_address(name)
        target = scope.reverse.get(address) if address else None
        if target is None:
            return None
        reply = query.reply()
        reply.add_answer(RR(question.qname, QTYPE.PTR, rdata=PTR(target + "."), ttl=TTL))
        return reply.pack()
    addresses = scope.names.get(name)
    if addresses is None:
        return None
    reply = query.reply()
    # The name is ours: other types (AAAA: no IPv6 here) get NOERROR and no answer.
    if question.qtype in (QTYPE.A, QTYPE.ANY):
        for address in random.sample(addresses, len(addresses)):   # round robin
            reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(address), ttl=TTL))
    return reply.pack()


def _ptr_address(name: str) -> str | None:
    suffix = ".in-addr.arpa"
    if not name.endswith(suffix):
        return None
    parts = name[:-len(suffix)].split(".")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        return None
    return ".".join(reversed(parts))


def _rcode(query: Any, rcode: str) -> bytes:
    from dnslib import RCODE
    reply = query.reply()
    reply.header.aa = 0
    reply.header.rcode = getattr(RCODE, rcode)
    return reply.pack()


def _refused(data: bytes) -> bytes | None:
    from dnslib import DNSRecord
    try:
        return _rcode(DNSRecord.parse(data), "REFUSED")
    except Exception:
        return None


async def _forward_udp(server: str, data: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((server, 53))                     # replies from elsewhere are refused
        await loop.sock_sendall(sock, data)
        return await asyncio.wait_for(loop.sock_recv(sock, MAX_UDP), UPSTREAM_TIMEOUT)


async def _forward_tcp(server: str, data: bytes) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(server, 53),
                                            UPSTREAM_TIMEOUT)
    try:
        writer.write(struct.pack("!H", len(data)) + data)
        await writer.drain()
        size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2),
                                                          UPSTREAM_TIMEOUT))[0]
        return await asyncio.wait_for(reader.readexactly(size), UPSTREAM_TIMEOUT)
    finally:
        writer.close()
