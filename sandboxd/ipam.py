"""Addresses for bridge networks: subnet choice, validation, and the allocator.

A bridge network's address space is a :class:`Pool` (Docker's ``IPAM.Config`` entry):
a subnet, a gateway in it, and optionally an ``ip_range`` inside the subnet that dynamic
addresses come from. :func:`choose_subnet` picks the first candidate that overlaps neither
the host's routes nor another network (pure; the caller reads the routes).

:class:`IPAM` hands out addresses and keeps who holds each one: an address is held from
the moment it is given until it is released, so it is never given twice. Dynamic
addresses go round the range from the last one given (as Docker's allocator does), so a
just-released address is not reused at once while peers may still hold it in their ARP
caches. The gateway, the subnet's network and broadcast addresses are never handed out.

The allocations live in memory only. A daemon start finds no container running and no
namespace left (the network server removes them), so there is nothing to carry across
a restart; keeping them in ``meta.db`` cost three sqlite transactions per container run
(about a tenth of the daemon's work for a cold start) and bought nothing.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from .errors import Conflict, InvalidArgument, LimitExceeded, Unavailable

__all__ = ["Pool", "IPAM", "choose_subnet", "default_bridge_candidates",
           "user_network_candidates", "mac_for"]


@dataclass(frozen=True)
class Pool:
    """One network's address space; build it with :meth:`parse`."""
    subnet: IPv4Network
    gateway: IPv4Address
    ip_range: IPv4Network | None = None

    @classmethod
    def parse(cls, subnet: str, gateway: str = "", ip_range: str = "") -> Pool:
        """Check a user's ``--subnet/--gateway/--ip-range``; the gateway defaults to the
        subnet's first host address. Every problem is listed at once."""
        problems: list[str] = []
        net = rng = gw = None
        try:
            net = IPv4Network(subnet, strict=True)
        except ValueError as e:
            problems.append(f"subnet: {subnet!r} is not an IPv4 network in CIDR form with "
                            f"its host bits zero (e.g. 10.213.5.0/24): {e}")
        if net is not None and net.prefixlen > 30:
            problems.append(f"subnet: {subnet} is too small: use a /30 or larger")
            net = None
        if ip_range:
            try:
                rng = IPv4Network(ip_range, strict=True)
            except ValueError as e:
                problems.append(f"ip-range: {ip_range!r} is not an IPv4 network in CIDR "
                                f"form: {e}")
            if rng is not None and net is not None and not rng.subnet_of(net):
                problems.append(f"ip-range: {ip_range} is not inside the subnet {subnet}")
        if net is not None:
            if gateway:
                try:
                    gw = IPv4Address(gateway)
                except ValueError as e:
                    problems.append(f"gateway: {gateway!r} is not an IPv4 address: {e}")
                if gw is not None and not _usable(net, gw):
                    problems.append(f"gateway: {gateway} is not a host address of the "
                                    f"subnet {subnet}")
            else:
                gw = net.network_address + 1
        if problems:
            raise InvalidArgument.of(problems)
        pool = cls(net, gw, rng)
        if pool.size() == 0:
            raise InvalidArgument(f"ip-range: {ip_range} leaves no address for containers "
                                  f"(the gateway is {gw}); give a larger range")
        return pool

    @functools.cached_property
    def span(self) -> tuple[int, int, int]:
        """The first and last candidate address for dynamic allocation and the gateway,
        as ints: asked at every allocation (a Pool is immutable and shared, see
        ``network._pool``)."""
        first, last = int(self.subnet.network_address) + 1, int(self.subnet.broadcast_address) - 1
        if self.ip_range is not None:
            first = max(first, int(self.ip_range.network_address))
            last = min(last, int(self.ip_range.broadcast_address))
        return first, last, int(self.gateway)

    def size(self) -> int:
        """How many addresses containers can get dynamically."""
        first, last, gw = self.span
        return max(0, last - first + 1 - (1 if first <= gw <= last else 0))

    def check_static(self, address: str) -> IPv4Address:
        try:
            ip = IPv4Address(address)
        except ValueError:
            raise InvalidArgument(f"ip: {address!r} is not an IPv4 address") from None
        if not _usable(self.subnet, ip):
            raise InvalidArgument(f"ip: {address} is not a host address of the network's "
                                  f"subnet {self.subnet}; pick one inside it")
        if ip == self.gateway:
            raise Conflict(f"ip: {address} is the network's gateway; pick another address")
        return ip


def _first_free(pool: Pool, after: int | None, used: dict[int, str]) -> int | None:
    """The first dynamic address not in ``used``, as an int (the allocator's key: no
    address objects), looking from just after ``after`` and wrapping round, never the
    gateway. A plain loop: one is asked for at every container start, and a /16 pool
    has 65k candidates."""
    first, last, gw = pool.span
    n = after + 1 if after is not None and first <= after < last else first
    for _ in range(last - first + 1):
        if n != gw and n not in used:
            return n
        n = n + 1 if n < last else first
    return None


def _number(address: IPv4Address | str) -> int:
    return int(address if isinstance(address, IPv4Address) else IPv4Address(address))


def _usable(net: IPv4Network, ip: IPv4Address) -> bool:
    return ip in net and ip not in (net.network_address, net.broadcast_address)


def default_bridge_candidates() -> Iterator[IPv4Network]:
    """For the default bridge: 172.30.0.0/16 down to 172.18.0.0/16 (172.17 is docker0's
    usual subnet), then 10.213-10.215/16."""
    for second in range(30, 17, -1):
        yield IPv4Network(f"172.{second}.0.0/16")
    for second in range(213, 216):
        yield IPv4Network(f"10.{second}.0.0/16")


def user_network_candidates() -> Iterator[IPv4Network]:
    """For user-defined bridges: 10.216.0.0/24, 10.216.1.0/24 ... 10.219.255.0/24
    (disjoint from the default bridge's candidates)."""
    for second in range(216, 220):
        for third in range(256):
            yield IPv4Network(f"10.{second}.{third}.0/24")


def choose_subnet(candidates: Iterable[IPv4Network],
                  taken: Iterable[IPv4Network]) -> IPv4Network:
    """The first candidate overlapping none of ``taken`` (the host's routes, other
    networks); ``Unavailable`` when all overlap. A default route (/0) is not "taken"."""
    busy = [t for t in taken if t.prefixlen > 0]
    for candidate in candidates:
        if not any(candidate.overlaps(t) for t in busy):
            return candidate
    raise Unavailable("no free subnet among the candidates: every one overlaps a host "
                      "route or another network; give one with --subnet")


def mac_for(address: IPv4Address | str) -> str:
    """Docker's MAC for an address: 02:42 and the four address bytes. Unique on a bridge
    because addresses are."""
    number = int(address) if isinstance(address, IPv4Address) else int(IPv4Address(address))
    return "02:42:%02x:%02x:%02x:%02x" % tuple(number.to_bytes(4, "big"))


class IPAM:
    """Every network's allocated addresses (see the module docstring)."""

    def __init__(self) -> None:
        # network id -> {address as an int: owner}; an owner is a container id, or
        # "pool:<netns name>" for a prepared namespace not yet handed to a container.
        self._owners: dict[str, dict[int, str]] = {}
        self._last: dict[str, int] = {}             # network id -> last address given

    def allocate(self, network: str, pool: Pool, owner: str,
                 address: str = "") -> IPv4Address:
        """Give ``owner`` an address of ``network``: ``address`` when given (``Conflict``
        when in use), else the next free one (``LimitExceeded`` when none is left)."""
        used = self._owners.setdefault(network, {})
        if address:
            ip = pool.check_static(address)
            n = int(ip)
            if n in used:
                raise Conflict(f"Address already in use: {ip} is taken on this network; "
                               f"pick another --ip or leave it out")
        else:
            found = _first_free(pool, self._last.get(network), used)
            if found is None:
                raise LimitExceeded(f"no free address left in {pool.ip_range or pool.subnet}"
                                    f" ({pool.size()} addresses, all in use); remove "
                                    f"containers or use a larger subnet")
            n = self._last[network] = found
            ip = IPv4Address(n)
        used[n] = owner
        return ip

    def reassign(self, network: str, address: IPv4Address | str, owner: str) -> None:
        """Hand an allocated address to a new owner (a prepared namespace to a container)."""
        used = self._owners.get(network, {})
        n = _number(address)
        if n not in used:
            raise Conflict(f"address {address} of network {network} is not allocated")
        used[n] = owner

    def release(self, network: str, address: IPv4Address | str) -> bool:
        """Free one address; False when it was not allocated."""
        return self._owners.get(network, {}).pop(_number(address), None) is not None

    def release_network(self, network: str) -> None:
        """Forget every address and the cursor of a network being removed."""
        self._owners.pop(network, None)
        self._last.pop(network, None)

    def release_all(self) -> int:
        """Free every address (shutdown: no container runs, no namespace is left)."""
        count = sum(len(used) for used in self._owners.values())
        self._owners.clear()
        return count

    def allocations(self, network: str | None = None) -> dict[tuple[str, str], str]:
        """``{(network, address): owner}``, of one network or of all."""
        return {(net, str(IPv4Address(n))): owner for net, used in self._owners.items()
                if network is None or net == network for n, owner in used.items()}
