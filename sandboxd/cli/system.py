"""``sbx info``, ``sbx version`` and the ``sbx system`` group (``df``, ``prune``)."""
from __future__ import annotations

import sys
from typing import Any

import click

from ..errors import SandboxError
from .app import CONTEXT, SbxGroup, open_client, option, print_rows, sbx
from .common import EXIT_DAEMON, CliError


# system.info's fields under the names ``docker info --format`` templates use.
_INFO_FIELDS = {
    "name": ("Name", ""), "server_version": ("ServerVersion", ""),
    "containers": ("Containers", 0), "running": ("ContainersRunning", 0),
    "pooled": ("ContainersPooled", 0),
    "paused": ("ContainersPaused", 0), "stopped": ("ContainersStopped", 0),
    "images": ("Images", 0), "kernel_version": ("KernelVersion", ""),
    "operating_system": ("OperatingSystem", ""), "os_type": ("OSType", "linux"),
    "architecture": ("Architecture", ""), "ncpu": ("NCPU", 0), "mem_total": ("MemTotal", 0),
    "cgroup_driver": ("CgroupDriver", "cgroupfs"), "cgroup_version": ("CgroupVersion", ""),
    "container_setup": ("ContainerSetup", ""),                  # sandboxd's own
    "root_dir": ("DockerRootDir", ""), "default_runtime": ("DefaultRuntime", ""),
    "security_options": ("SecurityOptions", []), "warnings": ("Warnings", []),
}


@sbx.command(context_settings=CONTEXT)
@option("-f", "--format", "fmt", metavar="TEMPLATE", help="Format output using a Go "
                                                                 "template")
def info(fmt: str | None) -> int:
    """Display system-wide information."""
    with open_client() as client:
        data = client.info()
    if fmt:
        from ..gotemplate import render_template
        document = {docker: data.get(ours, default)
                    for ours, (docker, default) in _INFO_FIELDS.items()}
        document["Driver"] = "overlay"
        click.echo(render_template(fmt, document))
        return 0
    from ..render import bytes_size
    lines = [
        "Server:",
        f" Containers: {data.get('containers', 0)}",
        f"  Running: {data.get('running', 0)}",
        f"  Paused: {data.get('paused', 0)}",
        f"  Stopped: {data.get('stopped', 0)}",
        f"  Pooled: {data.get('pooled', 0)}",
        f" Images: {data.get('images', 0)}",
        f" Server Version: {data.get('server_version', '')}",
        " Storage Driver: overlay",
        f" Cgroup Driver: {data.get('cgroup_driver', 'cgroupfs')}",
        f" Cgroup Version: {data.get('cgroup_version', '')}",
        f" Default Runtime: {data.get('default_runtime', '')}",
        f" Container Setup: {data.get('container_setup', '')}",
        f" Kernel Version: {data.get('kernel_version', '')}",
        f" Operating System: {data.get('operating_system', '')}",
        f" OSType: {data.get('os_type', 'linux')}",
        f" Architecture: {data.get('architecture', '')}",
        f" CPUs: {data.get('ncpu', 0)}",
        f" Total Memory: {bytes_size(data.get('mem_total', 0))}",
        f" Name: {data.get('name', '')}",
        f" Root Dir: {data.get('root_dir', '')}",
    ]
    if data.get("security_options"):
        lines.append(" Security Options:")
        lines += [f"  {o}" for o in data["security_options"]]
    click.echo("\n".join(lines))
    for warning in data.get("warnings") or ():
        click.echo(f"WARNING: {warning}", err=True)
    return 0


@sbx.command(context_settings=CONTEXT)
@option("-f", "--format", "fmt", metavar="TEMPLATE", help="Format output using a Go "
                                                                 "template")
def version(fmt: str | None) -> int:
    """Show the sbx and sandboxd version information."""
    import platform
    from ..version import __version__
    from ..protocol import PROTOCOL_VERSION
    client_info = {"Version": __version__, "ApiVersion": str(PROTOCOL_VERSION),
                   "PythonVersion": platform.python_version(),
                   "Os": sys.platform, "Arch": platform.machine()}
    server_info: dict[str, Any] | None = None
    error: SandboxError | None = None
    try:
        with open_client() as client:
            server_info = client.version()
    except SandboxError as e:
        error = e
    if fmt:
        from ..gotemplate import render_template
        click.echo(render_template(fmt, {"Client": client_info, "Server": server_info}))
    else:
        click.echo("\n".join([
            "Client:",
            f" Version:           {client_info['Version']}",
            f" API version:       {client_info['ApiVersion']}",
            f" Python version:    {client_info['PythonVersion']}",
            f" OS/Arch:           {client_info['Os']}/{client_info['Arch']}",
        ]))
        if server_info is not None:
            s = server_info
            click.echo("\n".join([
                "",
                "Server:",
                f" Version:           {s.get('version', '')}",
                f" API version:       {s.get('protocol', '')}",
                f" Python version:    {s.get('python', '')}",
                f" Kernel version:    {s.get('kernel', '')}",
                f" Listening on:      {s.get('host', '')}",
                f" Root dir:          {s.get('root', '')}",
                f" Pid:               {s.get('pid', '')}",
            ]))
    if error is not None:
        raise error
    return 0


# ---------------------------------------------------------------- sbx system

@click.group(cls=SbxGroup, context_settings=CONTEXT)
def system() -> None:
    """Manage sandboxd."""


system.alias("info", info)


@sbx.command(context_settings=CONTEXT)
@option("--since", metavar="TIME", help="Show all events created since timestamp (a Unix "
                                        "time, 2013-01-02T13:23:37Z or a duration ago: 42m)")
@option("--until", metavar="TIME", help="Stream events until this timestamp")
@option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
        help="Filter output based on conditions provided (type, event, container, image, "
             "network, volume, label)")
@option("--format", "fmt", metavar="TEMPLATE", help="Format output using a Go template "
                                                    "('json': one JSON object a line)")
def events(since: str | None, until: str | None, filters: tuple[str, ...],
           fmt: str | None) -> int:
    """Get real time events from the server."""
    from .containers import _when
    parsed: dict[str, list[str]] = {}
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"bad format of filter (expected name=value): {item}", EXIT_DAEMON)
        parsed.setdefault(key.strip().lower(), []).append(value)
    params = {"since": _when(since, "since") if since else None,
              "until": _when(until, "until") if until else None, "filters": parsed}
    with open_client() as client:
        stream = client.stream("system.events", params)
        try:
            for name, event in stream:
                if name == "event":
                    click.echo(_event_text(event, fmt))
        except KeyboardInterrupt:
            stream.cancel()
            return 0
        stream.result()
    return 0


def _event_text(event: dict[str, Any], fmt: str | None) -> str:
    """Docker's line: local time with nanoseconds, type, action, actor id and the
    attributes sorted, or the ``--format`` template applied to the event."""
    if fmt:
        from ..gotemplate import render_template
        return render_template(fmt, event)
    import time
    seconds, nanos = divmod(event["timeNano"], 1_000_000_000)
    local = time.localtime(seconds)
    offset = time.strftime("%z", local)
    when = time.strftime("%Y-%m-%dT%H:%M:%S", local) + f".{nanos:09d}" + \
        ("Z" if offset in ("+0000", "-0000") else f"{offset[:3]}:{offset[3:]}")
    attrs = event["Actor"]["Attributes"]
    line = f"{when} {event['Type']} {event['Action']} {event['Actor']['ID']}"
    if attrs:
        line += " (" + ", ".join(f"{k}={attrs[k]}" for k in sorted(attrs)) + ")"
    return line


system.alias("events", events)


@system.command("df", context_settings=CONTEXT)
@option("-v", "--verbose", is_flag=True, help="Show detailed information on space usage")
@option("--format", "fmt", metavar="TEMPLATE", help="Format output using a Go template")
def system_df(verbose: bool, fmt: str | None) -> int:
    """Show disk usage: images (shared layers counted once) and containers' writable
    layers."""
    from ..render import human_size
    with open_client() as client:
        data = client.call("system.df", {})
    images, containers = data["images"], data["containers"]
    volumes = data.get("volumes") or []
    v_total = sum(v["UsageData"]["Size"] for v in volumes)
    v_reclaim = sum(v["UsageData"]["Size"] for v in volumes if not v["UsageData"]["RefCount"])
    sizes: dict[str, int] = {}               # layer -> bytes: shared layers once
    used: dict[str, int] = {}
    for i in images:
        for chain, size in zip(i["layers"], i["layer_sizes"]):
            sizes[chain] = size
            if i["containers"]:
                used[chain] = size
    total = sum(sizes.values())
    reclaim = total - sum(used.values())
    c_total = sum(c["size"] for c in containers)
    c_reclaim = sum(c["size"] for c in containers if not c["running"])

    def pct(part: int, whole: int) -> str:
        return f" ({100 * part // whole}%)" if whole else ""

    rows = [
        {"Type": "Images", "TotalCount": str(len(images)),
         "Active": str(sum(1 for i in images if i["containers"])),
         "Size": human_size(total),
         "Reclaimable": human_size(reclaim) + pct(reclaim, total)},
        {"Type": "Containers", "TotalCount": str(len(containers)),
         "Active": str(sum(1 for c in containers if c["running"])),
         "Size": human_size(c_total),
         "Reclaimable": human_size(c_reclaim) + pct(c_reclaim, c_total)},
        # Prepared, never-used containers (pools.py): a tmpfs layer each, no disk.
        {"Type": "Pooled Containers",
         "TotalCount": str((data.get("pooled") or {}).get("parked", 0)), "Active": "0",
         "Size": "0B", "Reclaimable": "0B"},
        {"Type": "Local Volumes", "TotalCount": str(len(volumes)),
         "Active": str(sum(1 for v in volumes if v["UsageData"]["RefCount"])),
         "Size": human_size(v_total),
         "Reclaimable": human_size(v_reclaim) + pct(v_reclaim, v_total)},
        {"Type": "Build Cache", "TotalCount": "0", "Active": "0", "Size": "0B",
         "Reclaimable": "0B"},
    ]
    if not verbose:
        print_rows(fmt, rows, "table {{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}"
                    "\t{{.Reclaimable}}", {"Type": "TYPE", "TotalCount": "TOTAL",
                                           "Active": "ACTIVE", "Size": "SIZE",
                                           "Reclaimable": "RECLAIMABLE"})
        return 0
    click.echo("Images space usage:\n")
    print_rows(None, [{"Repository": (t.rpartition(":")[0] if t else "<none>"),
                        "Tag": (t.rpartition(":")[2] if t else "<none>"),
                        "ID": i["id"].split(":", 1)[-1][:12],
                        "Size": human_size(i["size"]),
                        "Shared": human_size(i["shared"]),
                        "Unique": human_size(i["unique"]),
                        "Containers": str(i["containers"])}
                       for i in images for t in (i["tags"] or [""])],
                "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.Size}}\t{{.Shared}}"
                "\t{{.Unique}}\t{{.Containers}}",
                {"Repository": "REPOSITORY", "Tag": "TAG", "ID": "IMAGE ID",
                 "Size": "SIZE", "Shared": "SHARED SIZE", "Unique": "UNIQUE SIZE",
                 "Containers": "CONTAINERS"})
    click.echo("\nContainers space usage:\n")
    print_rows(None, [{"ID": c["id"][:12], "Image": c["image"],
                        "Size": human_size(c["size"]), "Status": c["status"],
                        "Names": c["name"]} for c in containers],
                "table {{.ID}}\t{{.Image}}\t{{.Size}}\t{{.Status}}\t{{.Names}}",
                {"ID": "CONTAINER ID", "Image": "IMAGE", "Size": "SIZE",
                 "Status": "STATUS", "Names": "NAMES"})
    click.echo("\nLocal Volumes space usage:\n")
    print_rows(None, [{"Name": v["Name"], "Links": str(v["UsageData"]["RefCount"]),
                       "Size": human_size(v["UsageData"]["Size"])} for v in volumes],
               "table {{.Name}}\t{{.Links}}\t{{.Size}}",
               {"Name": "VOLUME NAME", "Links": "LINKS", "Size": "SIZE"})
    return 0


@system.command("prune", context_settings=CONTEXT)
@option("-a", "--all", "all_unused", is_flag=True,
        help="Remove all unused images not just dangling ones")
@option("-f", "--force", is_flag=True, help="Do not prompt for confirmation")
@option("--volumes", is_flag=True, help="Prune anonymous volumes")
def system_prune(all_unused: bool, force: bool, volumes: bool) -> int:
    """Remove unused data: stopped containers, unused networks, (with --volumes:
    unused anonymous volumes,) dangling (with -a: unused) images, in that order, as
    Docker does."""
    if not force:
        images = ("all images without at least one container associated to them"
                  if all_unused else "all dangling images")
        anonymous = ("  - all anonymous volumes not used by at least one container\n"
                     if volumes else "")
        click.echo("WARNING! This will remove:\n  - all stopped containers\n"
                   "  - all networks not used by at least one container\n"
                   f"{anonymous}  - {images}\n", err=True)
        if not click.confirm("Are you sure you want to continue?", default=False, err=True):
            return 0
    from .images import pruned_images
    with open_client() as client:
        containers = client.containers.prune()
        networks = client.networks.prune()
        pruned = client.volumes.prune() if volumes else {}
        images = client.images.prune(all=all_unused)
    reclaimed = containers.get("space_reclaimed", 0) + images.get("space_reclaimed", 0) \
        + pruned.get("space_reclaimed", 0)
    for title, lines in (("Deleted Containers:", containers.get("removed") or []),
                         ("Deleted Networks:", networks.get("removed") or []),
                         ("Deleted Volumes:", pruned.get("deleted") or []),
                         ("Deleted Images:", pruned_images(images))):
        if lines:
            click.echo("\n".join([title, *lines, ""]))
    from ..render import human_size
    click.echo(f"Total reclaimed space: {human_size(reclaimed)}")
    return 0
