"""Links from a containerised test to service containers, and the network it joins.

``@pytest.mark.container(links=["db"])`` or ``links={"database": "db"}`` (``{alias:
target}``; a list item is ``target`` or ``target:alias``, as ``--link``) names *targets*:
a fixture, set up on the host before the test's container starts (it starts a service
container with ``sandbox_container``), or else a container's name. ``network=`` may name
a fixture too (``network="sandbox_network"``): the test's container joins the network
that fixture made.

How the test reaches the services:

- on the default bridge (the mode a test with links gets unless it names a network),
  as Docker's legacy links: the alias resolves through the container's hosts file and
  Docker's link variables (``DB_PORT_5432_TCP_ADDR`` ...) are set;
- on a user network, by container name (the daemon lists every member in each member's
  hosts file; links are refused there, and the daemon has no per-network aliases yet).

Inside the container, a fixture named in ``links`` is not run again: its value is a
:class:`LinkedService` saying where the service is (``host`` is the name to use on the
chosen network). This module's top level is light: the worker imports it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# Network modes the daemon knows by themselves (anything else names a user network,
# or, with a fixture of that name, the network the fixture made).
BUILTIN_MODES = ("none", "bridge", "default", "host")


@dataclass(frozen=True)
class LinkedService:
    """A linked fixture's value inside the test's container."""
    alias: str               # the name the marker gave it
    host: str                # the host name to connect to (alias, or the container name)
    name: str                # the service container's name
    id: str                  # its id
    ip: str                  # its address on the network the test joined ('' if none)
    ports: tuple[str, ...] = ()   # its exposed ports ("80/tcp" ...)

    def url(self, scheme: str = "http", port: int | None = None, path: str = "/") -> str:
        """``scheme://host[:port]path`` for this service."""
        return f"{scheme}://{self.host}{f':{port}' if port else ''}{path}"


def parse_links(links: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """``{alias: target}`` from the marker's ``links``."""
    if not links:
        return {}
    if isinstance(links, Mapping):
        pairs = [(str(alias), str(target)) for alias, target in links.items()]
    elif isinstance(links, str):
        raise TypeError(f"links must be a list or a dict, not the string {links!r}: "
                        f"write links=[{links!r}]")
    else:
        pairs = []
        for entry in links:
            target, _, alias = str(entry).partition(":")
            pairs.append((alias or target, target))
    for alias, target in pairs:
        if not alias or not target:
            raise ValueError(f"links: {alias!r}: {target!r} is not alias: target")
    return dict(pairs)


def is_user_network(mode: str) -> bool:
    return mode not in BUILTIN_MODES and not mode.startswith("container:")


# ---------------------------------------------------------------- the host side

@dataclass
class Plan:
    """What the daemon and the worker are told about one item's links."""
    network: str                                  # the container's network mode
    links: list[str]                              # legacy links, "name:alias"
    linked: dict[str, dict[str, Any]]             # fixture name -> LinkedService fields


def is_fixture(item: Any, name: str) -> bool:
    return bool(item.session._fixturemanager.getfixturedefs(name, item))


def host_fixtures(item: Any, network: str | None, links: dict[str, str]) -> list[str]:
    """The fixtures the host sets up for this item: link targets and the network."""
    names = [t for t in links.values() if is_fixture(item, t)]
    if network and is_user_network(network) and is_fixture(item, network):
        names.append(network)
    return list(dict.fromkeys(names))


def setup_on_host(item: Any, names: list[str]) -> dict[str, Any]:
    """Set up ``names`` (and their dependencies) on the host, as pytest sets up a local
    item: through the session's SetupState, so their finalizers run when the item is
    torn down there (``teardown_exact``), each at the end of its own scope."""
    values: dict[str, Any] = {}

    def setup() -> None:
        for name in names:
            values[name] = item._request.getfixturevalue(name)

    # Only these fixtures: the item's own setup (all its fixtures) runs in the container.
    item.setup = setup
    try:
        item.session._setupstate.setup(item)
    finally:
        del item.setup
    return values


def plan(client: Any, network: str | None, links: dict[str, str],
         values: Mapping[str, Any]) -> Plan:
    """Resolve fixture values to containers and the network; what to tell whom."""
    if network and network in values:
        network = _network_name(network, values[network])
    mode = network or ("bridge" if links else "none")
    user = is_user_network(mode)
    result = Plan(network=mode, links=[], linked={})
    for alias, target in links.items():
        container = _container(client, target, values.get(target, target))
        if not user:
            result.links.append(f"{container.name}:{alias}")
        if target in values:
            ip = next((e.ip_address for e in container.record.endpoints
                       if e.network == ("bridge" if mode == "default" else mode)), "")
            result.linked[target] = asdict(LinkedService(
                alias=alias, host=container.name if user else alias, name=container.name,
                id=container.id, ip=ip, ports=tuple(container.record.config.exposed_ports)))
    return result


def _container(client: Any, target: str, value: Any) -> Any:
    """The sandboxd Container a link target stands for (a fresh view: its address)."""
    from .services import Service
    if isinstance(value, Service):
        return value.container.reload()
    if isinstance(value, str):
        from sandboxd.errors import NotFound
        try:
            return client.containers.get(value)
        except NotFound:
            raise ValueError(f"links: {target!r} is neither a fixture nor a container; "
                             f"name a fixture that starts a service with "
                             f"sandbox_container(...)") from None
    if hasattr(value, "reload") and hasattr(value, "record"):     # a sandboxd Container
        return value.reload()
    raise TypeError(f"links: fixture {target!r} gave {type(value).__name__}; a linked "
                    f"fixture must give a service (sandbox_container(...)), a sandboxd "
                    f"Container or a container name")


def _network_name(fixture: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    name = getattr(value, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"network: fixture {fixture!r} gave {type(value).__name__}; it "
                        f"must give a network (sandbox_network) or a network name")
    return name
