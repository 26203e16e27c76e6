"""The ``sbx volume`` group: create, ls, inspect, rm, prune (Docker's flags and output)."""
from __future__ import annotations

from typing import Any

import click

from .app import (CONTEXT, SbxGroup, argument, confirm_prune, each, open_client, option,
                  print_inspect, print_pruned, print_rows)

VOLUME_HEADERS = {"Name": "VOLUME NAME", "Driver": "DRIVER", "Scope": "SCOPE",
                  "Mountpoint": "MOUNTPOINT", "Labels": "LABELS", "Links": "LINKS",
                  "Size": "SIZE", "CreatedAt": "CREATED AT"}
VOLUMES_TABLE = "table {{.Driver}}\t{{.Name}}"


def volume_row(doc: dict[str, Any]) -> dict[str, Any]:
    """The fields ``volume ls --format`` sees (Docker's names; Links and Size are N/A
    there too: they cost a walk of every volume, ``system df -v`` shows them)."""
    labels = doc.get("Labels") or {}
    return {"Name": doc["Name"], "Driver": doc["Driver"], "Scope": doc["Scope"],
            "Mountpoint": doc["Mountpoint"], "CreatedAt": doc["CreatedAt"],
            "Labels": ",".join(f"{k}={v}" for k, v in labels.items()),
            "Label": lambda key: labels.get(key, ""), "Links": "N/A", "Size": "N/A"}


def _pairs(items: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=what)
        out[key] = value
    return out


@click.group(cls=SbxGroup, context_settings=CONTEXT)
def volume() -> None:
    """Manage volumes."""


@volume.command("create", context_settings=CONTEXT)
@option("-d", "--driver", default="local", metavar="DRIVER",
        help="Specify volume driver name (local)")
@option("--label", multiple=True, metavar="KEY=VALUE", help="Set metadata for a volume")
@option("-o", "--opt", multiple=True, metavar="KEY=VALUE",
        help="Set driver specific options (the local driver here takes none)")
@option("--name", "name_flag", default="", metavar="NAME", help="Specify volume name")
@argument("name", required=False, default="")
def volume_create(driver: str, label: tuple[str, ...], opt: tuple[str, ...],
                  name_flag: str, name: str) -> int:
    """Create a volume."""
    if name and name_flag and name != name_flag:
        raise click.UsageError("conflicting options: either specify --name or provide "
                               "positional arg, not both")
    with open_client() as client:
        doc = client.call("volume.create", {
            "name": name or name_flag, "driver": driver,
            "labels": _pairs(label, "--label"), "driver_opts": _pairs(opt, "--opt")})
    click.echo(doc["Name"])
    return 0


@volume.command("ls", context_settings=CONTEXT)
@option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
        help="Provide filter values (e.g. 'dangling=true')")
@option("--format", "fmt", metavar="TEMPLATE", help="Format output using a Go template")
@option("-q", "--quiet", is_flag=True, help="Only display volume names")
def volume_ls(filters: tuple[str, ...], fmt: str | None, quiet: bool) -> int:
    """List volumes."""
    parsed: dict[str, list[str]] = {}
    for item in filters:
        key, _, value = item.partition("=")
        parsed.setdefault(key, []).append(value)
    with open_client() as client:
        docs = client.call("volume.list", {"filters": parsed})["volumes"]
    if quiet:
        for doc in docs:
            click.echo(doc["Name"])
        return 0
    print_rows(fmt, [volume_row(d) for d in docs], VOLUMES_TABLE, VOLUME_HEADERS)
    return 0


@volume.command("inspect", context_settings=CONTEXT)
@option("-f", "--format", "fmt", metavar="TEMPLATE", help="Format output using a Go template")
@argument("names", nargs=-1, required=True)
def volume_inspect(fmt: str | None, names: tuple[str, ...]) -> int:
    """Display detailed information on one or more volumes."""
    return print_inspect(fmt, "volume", names)


@volume.command("rm", context_settings=CONTEXT)
@option("-f", "--force", is_flag=True,
        help="Force the removal of one or more volumes (a missing one is no error; "
             "one in use still stays)")
@argument("names", nargs=-1, required=True)
def volume_rm(force: bool, names: tuple[str, ...]) -> int:
    """Remove one or more volumes. You cannot remove a volume that is in use by a
    container."""
    def remove(client: Any, name: str) -> str:
        client.call("volume.remove", {"name": name, "force": force})
        return name
    return each(names, remove)


@volume.command("prune", context_settings=CONTEXT)
@option("-a", "--all", "all_volumes", is_flag=True,
        help="Remove all unused volumes, not just anonymous ones")
@option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
        help="Provide filter values (e.g. 'label=<label>')")
@option("-f", "--force", is_flag=True, help="Do not prompt for confirmation")
def volume_prune(all_volumes: bool, filters: tuple[str, ...], force: bool) -> int:
    """Remove unused local volumes (anonymous ones unless -a)."""
    what = "all local volumes" if all_volumes else "anonymous local volumes"
    if not force and not confirm_prune(f"{what} not used by at least one container"):
        return 0
    parsed: dict[str, list[str]] = {}
    for item in filters:
        key, _, value = item.partition("=")
        parsed.setdefault(key, []).append(value)
    with open_client() as client:
        result = client.call("volume.prune", {"all": all_volumes, "filters": parsed})
    print_pruned("Deleted Volumes:", result["deleted"], result["space_reclaimed"])
    return 0


volume.alias("list", volume_ls)
volume.alias("remove", volume_rm)
