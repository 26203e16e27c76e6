"""The ``sbx network`` group: create, ls, inspect, rm, prune, connect, disconnect."""
from __future__ import annotations

from typing import Any

import click

from .app import (CONTEXT, SbxGroup, argument, confirm_prune, each, open_client, option,
                  print_inspect, print_pruned, print_rows)


@click.group(cls=SbxGroup, context_settings=CONTEXT)
def network() -> None:
    """Manage networks."""


@network.command("create", context_settings=CONTEXT)
@option("-d", "--driver", default="bridge", metavar="DRIVER",
              help="Driver to manage the Network (bridge)")
@option("--subnet", default="", metavar="CIDR",
              help="Subnet in CIDR format that represents a network segment")
@option("--gateway", default="", metavar="IP", help="IPv4 Gateway for the subnet")
@option("--ip-range", default="", metavar="CIDR",
              help="Allocate container ip from a sub-range")
@option("--internal", is_flag=True, help="Restrict external access to the network")
@option("--label", multiple=True, metavar="KEY=VALUE", help="Set metadata on a network")
@option("-o", "--opt", multiple=True, metavar="KEY=VALUE",
              help="Set driver specific options")
@argument("name")
def network_create(driver: str, subnet: str, gateway: str, ip_range: str, internal: bool,
                   label: tuple[str, ...], opt: tuple[str, ...], name: str) -> int:
    """Create a network."""
    from ..api import network_params
    with open_client() as client:
        result = client.call("network.create", network_params(
            name, driver, subnet, gateway, ip_range, internal, label, opt))
    click.echo(result["id"])
    return 0


@network.command("ls", context_settings=CONTEXT)
@option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Provide filter values (e.g. 'driver=bridge')")
@option("--format", "fmt", metavar="TEMPLATE", help="Format output using a Go template")
@option("--no-trunc", is_flag=True, help="Do not truncate the output")
@option("-q", "--quiet", is_flag=True, help="Only display network IDs")
def network_ls(filters: tuple[str, ...], fmt: str | None, no_trunc: bool,
               quiet: bool) -> int:
    """List networks."""
    from ..model import NetworkRecord
    from ..render import NETWORKS_TABLE, NETWORK_HEADERS, network_row
    parsed: dict[str, list[str]] = {}
    for item in filters:
        key, _, value = item.partition("=")
        parsed.setdefault(key, []).append(value)
    with open_client() as client:
        result = client.call("network.list", {"filters": parsed})
    records = sorted((NetworkRecord.from_dict(n) for n in result["networks"]),
                     key=lambda n: n.name)
    if quiet:
        for n in records:
            click.echo(n.id if no_trunc else n.id[:12])
        return 0
    rows = [network_row(n, trunc=not no_trunc) for n in records]
    print_rows(fmt, rows, NETWORKS_TABLE, NETWORK_HEADERS)
    return 0


@network.command("inspect", context_settings=CONTEXT)
@option("-f", "--format", "fmt", metavar="TEMPLATE",
              help="Format output using a Go template")
@argument("names", nargs=-1, required=True)
def network_inspect(fmt: str | None, names: tuple[str, ...]) -> int:
    """Display detailed information on one or more networks."""
    return print_inspect(fmt, "network", names)


@network.command("rm", context_settings=CONTEXT)
@argument("names", nargs=-1, required=True)
def network_rm(names: tuple[str, ...]) -> int:
    """Remove one or more networks."""
    def remove(client: Any, name: str) -> str:
        client.call("network.remove", {"id": name})
        return name
    return each(names, remove)


@network.command("prune", context_settings=CONTEXT)
@option("-f", "--force", is_flag=True, help="Do not prompt for confirmation")
@option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Provide filter values (e.g. 'until=<timestamp>')")
def network_prune(force: bool, filters: tuple[str, ...]) -> int:
    """Remove all unused networks."""
    if not force and not confirm_prune("all custom networks not used by at least one "
                                        "container"):
        return 0
    with open_client() as client:
        from ..filters import PRUNE_FILTER_KEYS, parse_filters
        removed = client.networks.prune(
            parse_filters(filters, PRUNE_FILTER_KEYS))["removed"]
    print_pruned("Deleted Networks:", removed)       # Docker says no space for networks
    return 0


@network.command("connect", context_settings=CONTEXT)
@option("--ip", default="", metavar="IP", help="IPv4 address (e.g., 172.30.100.104)")
@option("--alias", multiple=True, metavar="NAME",
              help="Add network-scoped alias for the container")
@argument("network_name", metavar="NETWORK")
@argument("container", metavar="CONTAINER")
def network_connect(ip: str, alias: tuple[str, ...], network_name: str,
                    container: str) -> int:
    """Connect a running container to a network."""
    with open_client() as client:
        client.call("network.connect", {"id": network_name, "container": container,
                                        "ip": ip, "aliases": list(alias)})
    return 0


@network.command("disconnect", context_settings=CONTEXT)
@option("-f", "--force", is_flag=True,
              help="Force the container to disconnect from a network")
@argument("network_name", metavar="NETWORK")
@argument("container", metavar="CONTAINER")
def network_disconnect(force: bool, network_name: str, container: str) -> int:
    """Disconnect a container from a network."""
    with open_client() as client:
        client.call("network.disconnect", {"id": network_name, "container": container,
                                           "force": force})
    return 0


network.alias("list", network_ls)
network.alias("remove", network_rm)
