"""``sbx``'s container commands: run/create (their flags are :mod:`.run`'s table),
the lifecycle, looking at containers (ps, inspect, logs, top, stats), exec/attach, cp,
and the ``sbx container`` group."""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Sequence

import click

from ..errors import SandboxError
from .app import (ARGS_AFTER, CONTEXT, SbxGroup, argument, complete_containers,
                  complete_images, confirm_prune, container_op, daemon_host, each,
                  open_client, option, print_inspect, print_pruned, print_rows, sbx)
from .common import EXIT_DAEMON, CliError, check_tty, local, pump, terminal_size, write
from .run import FLAGS, RUN_ONLY, Flag


def _click_option(flag: Flag) -> Callable[[Callable], Callable]:
    """One of :mod:`.run`'s flags as a (recorded) click option."""
    attrs: dict[str, Any] = {"metavar": flag.metavar, "help": flag.help}
    if flag.kind == "flag":
        attrs["is_flag"] = True
    elif flag.kind == "multi":
        attrs["multiple"] = True
    else:
        attrs["default"] = flag.default
        if flag.kind in ("int", "float"):
            attrs["type"] = {"int": int, "float": float}[flag.kind]
    return option(*flag.decls, flag.dest, **attrs)


def _flags(flags: Sequence[Flag]) -> Callable[[Callable], Callable]:
    """run/create's flags, then IMAGE [COMMAND] [ARG...]."""
    def apply(func: Callable) -> Callable:
        records = [*map(_click_option, flags),
                   argument("image", shell_complete=complete_images),
                   argument("command", nargs=-1, type=click.UNPROCESSED,
                            metavar="[COMMAND] [ARG...]")]
        for record in reversed(records):
            func = record(func)
        return func
    return apply


@sbx.command(context_settings=ARGS_AFTER)
@_flags(RUN_ONLY + FLAGS)
def run(image: str, command: tuple[str, ...], **opts: Any) -> int:
    """Create and run a new container from an image."""
    from .run import run as run_container
    return run_container(daemon_host(), image, command, opts)


@sbx.command(context_settings=ARGS_AFTER)
@_flags(FLAGS)
def create(image: str, command: tuple[str, ...], **opts: Any) -> int:
    """Create a new container."""
    from .run import create as create_container
    return create_container(daemon_host(), image, command, opts)


# ---------------------------------------------------------------- lifecycle

@sbx.command(context_settings=CONTEXT)
@option("-a", "--attach", is_flag=True, help="Attach STDOUT/STDERR and forward signals")
@option("-i", "--interactive", is_flag=True, help="Attach container's STDIN")
@argument("containers", nargs=-1, required=True, shell_complete=complete_containers)
def start(attach: bool, interactive: bool, containers: tuple[str, ...]) -> int:
    """Start one or more stopped containers."""
    if not (attach or interactive):
        return each(containers, container_op("container.start"))
    if len(containers) > 1:
        raise CliError("you cannot start and attach multiple containers at once", 1)
    with open_client() as client:
        container = client.containers.get(containers[0])
        tty = container.record.config.tty
        check_tty(tty, interactive)
        attachment = container.attach(stdin=interactive, start=True)
        result = pump(attachment, host=daemon_host(), tty=tty, stdin=interactive, sig_proxy=True,
                       container_id=container.id)
    return int(result.get("exit_code", 0))


@sbx.command(context_settings=CONTEXT)
@option("-t", "--time", "timeout", type=int, metavar="SECONDS",
              help="Seconds to wait before killing the container")
@argument("containers", nargs=-1, required=True, shell_complete=complete_containers)
def stop(timeout: int | None, containers: tuple[str, ...]) -> int:
    """Stop one or more running containers."""
    return each(containers, container_op("container.stop", timeout=timeout))


@sbx.command(context_settings=CONTEXT)
@option("-t", "--time", "timeout", type=int, metavar="SECONDS",
              help="Seconds to wait before killing the container")
@argument("containers", nargs=-1, required=True, shell_complete=complete_containers)
def restart(timeout: int | None, containers: tuple[str, ...]) -> int:
    """Restart one or more containers."""
    return each(containers, container_op("container.restart", timeout=timeout))


@sbx.command(context_settings=CONTEXT)
@option("-s", "--signal", "sig", default="SIGKILL", metavar="SIGNAL",
              help="Signal to send to the container")
@argument("containers", nargs=-1, required=True, shell_complete=complete_containers)
def kill(sig: str, containers: tuple[str, ...]) -> int:
    """Kill one or more running containers."""
    from ..validate import parse_signal
    number = local(parse_signal, sig)
    return each(containers, container_op("container.kill", signal=number))


@sbx.command(context_settings=CONTEXT)
@option("-f", "--force", is_flag=True,
              help="Force the removal of a running container (uses SIGKILL)")
@option("-v", "--volumes", is_flag=True,
              help="Remove anonymous volumes associated with the container")
@argument("containers", nargs=-1, required=True, shell_complete=complete_containers)
def rm(force: bool, volumes: bool, containers: tuple[str, ...]) -> int:
    """Remove one or more containers."""
    return each(containers, container_op("container.remove", force=force, volumes=volumes))


@sbx.command(context_settings=CONTEXT)
@argument("containers", nargs=-1, required=True, shell_complete=complete_containers)
def pause(containers: tuple[str, ...]) -> int:
    """Pause all processes within one or more containers."""
    return each(containers, container_op("container.pause"))


@sbx.command(context_settings=CONTEXT)
@argument("containers", nargs=-1, required=True, shell_complete=complete_containers)
def unpause(containers: tuple[str, ...]) -> int:
    """Unpause all processes within one or more containers."""
    return each(containers, container_op("container.unpause"))


@sbx.command(context_settings=CONTEXT)
@argument("containers", nargs=-1, required=True, shell_complete=complete_containers)
def wait(containers: tuple[str, ...]) -> int:
    """Block until one or more containers stop, then print their exit codes."""
    return each(containers,
                 lambda c, name: c.call("container.wait", {"id": name})["exit_code"])


@sbx.command(context_settings=CONTEXT)
@argument("old")
@argument("new")
def rename(old: str, new: str) -> int:
    """Rename a container."""
    with open_client() as client:
        client.call("container.rename", {"id": old, "name": new})
    return 0


def _host_and_port(binding: dict[str, Any]) -> str:
    """``0.0.0.0:8080``, ``[::]:8080``: as ``docker port`` writes them."""
    ip = binding["host_ip"] or "0.0.0.0"
    return f"[{ip}]:{binding['host_port']}" if ":" in ip else f"{ip}:{binding['host_port']}"


@sbx.command(context_settings=CONTEXT)
@argument("container", shell_complete=complete_containers)
@argument("private_port", required=False, metavar="[PRIVATE_PORT[/PROTO]]")
def port(container: str, private_port: str | None) -> int:
    """List port mappings or a specific mapping for the container."""
    with open_client() as client:
        record = client.call("container.inspect", {"id": container})
    mappings = [(f"{p['container_port']}/{p['protocol']}", _host_and_port(p))
                for p in record["ports"]]
    if private_port is None:
        for key, host in mappings:
            click.echo(f"{key} -> {host}")
        return 0
    number, slash, proto = private_port.partition("/")
    if not number.isdigit() or (slash and proto not in ("tcp", "udp", "sctp")):
        raise CliError(f"Error: invalid port {private_port!r}: give PORT or PORT/PROTO "
                       f"(tcp, udp, sctp)", 1)
    key = f"{int(number)}/{proto or 'tcp'}"
    hosts = [host for k, host in mappings if k == key]
    if not hosts:
        raise CliError(f"Error: No public port '{key}' published for {container}", 1)
    for host in hosts:
        click.echo(host)
    return 0


@sbx.command(context_settings=CONTEXT)
@option("-m", "--memory", metavar="BYTES", help="Memory limit")
@option("--memory-swap", metavar="BYTES",
              help="Swap limit equal to memory plus swap: '-1' to enable unlimited swap")
@option("--cpus", metavar="DECIMAL", help="Number of CPUs")
@option("--cpu-period", type=int, metavar="INT", help="Limit CPU CFS period")
@option("--cpu-quota", type=int, metavar="INT", help="Limit CPU CFS quota")
@option("-c", "--cpu-shares", type=int, metavar="INT",
              help="CPU shares (relative weight)")
@option("--pids-limit", type=int, metavar="INT",
              help="Tune container pids limit (set -1 for unlimited)")
@option("--restart", metavar="STRING",
              help="Restart policy to apply when a container exits")
@argument("containers", nargs=-1, required=True, shell_complete=complete_containers)
def update(containers: tuple[str, ...], **limits: Any) -> int:
    """Update configuration of one or more containers."""
    from ..flags import build_update
    params = local(build_update, **limits)

    def apply(client: Any, name: str) -> str:
        result = client.call("container.update", {"id": name, **params})
        for warning in result.get("warnings") or ():
            click.echo(f"WARNING: {warning}", err=True)
        return name
    return each(containers, apply)


# ---------------------------------------------------------------- looking at containers

@sbx.command(context_settings=CONTEXT)
@argument("container", shell_complete=complete_containers)
def diff(container: str) -> int:
    """Inspect changes to files or directories on a container's filesystem (A added,
    C changed, D deleted)."""
    with open_client() as client:
        changes = client.containers.get(container).diff()
    for change in changes:
        click.echo(f"{'CAD'[change['kind']]} {change['path']}")
    return 0


@sbx.command(context_settings=CONTEXT)
@option("-a", "--all", "show_all", is_flag=True,
              help="Show all containers (default shows just running)")
@option("-q", "--quiet", is_flag=True, help="Only display container IDs")
@option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Filter output based on conditions provided")
@option("--format", "fmt", metavar="TEMPLATE",
              help="Format output using a Go template ('table', 'json', "
                   "'{{.ID}} {{.Names}}' ...)")
@option("--no-trunc", is_flag=True, help="Don't truncate output")
@option("-n", "--last", type=int, default=-1, metavar="INT",
              help="Show n last created containers (includes all states)")
@option("-l", "--latest", is_flag=True,
              help="Show the latest created container (includes all states)")
def ps(show_all: bool, quiet: bool, filters: tuple[str, ...], fmt: str | None,
       no_trunc: bool, last: int, latest: bool) -> int:
    """List containers."""
    import time
    from ..filters import parse_filters
    from ..model import ContainerRecord
    from ..render import PS_HEADERS, PS_TABLE, ps_row
    parsed = local(parse_filters, filters)
    limit = 1 if latest else last
    with open_client() as client:
        result = client.call("container.list", {"all": show_all or limit > 0,
                                                 "filters": parsed, "limit": limit})
    records = [ContainerRecord.from_dict(r) for r in result["containers"]]
    if quiet:
        for r in records:
            click.echo(r.id if no_trunc else r.id[:12])
        return 0
    now = time.time()
    rows = [ps_row(r, now, trunc=not no_trunc) for r in records]
    print_rows(fmt, rows, PS_TABLE, PS_HEADERS)
    return 0


@sbx.command(context_settings=CONTEXT)
@option("-f", "--format", "fmt", metavar="TEMPLATE",
              help="Format output using a Go template")
@option("--type", "kind", type=click.Choice(["container", "image", "network", "volume"]),
              help="Return JSON for specified type")
@option("-s", "--size", is_flag=True, help="Accepted for Docker compatibility")
@argument("names", nargs=-1, required=True, shell_complete=complete_containers)
def inspect(fmt: str | None, kind: str | None, size: bool, names: tuple[str, ...]) -> int:
    """Return low-level information on containers, images or networks."""
    return print_inspect(fmt, kind, names)


@sbx.command(context_settings=CONTEXT)
@option("-f", "--follow", is_flag=True, help="Follow log output")
@option("-n", "--tail", default="all", metavar="N",
              help='Number of lines to show from the end of the logs (default "all")')
@option("-t", "--timestamps", is_flag=True, help="Show timestamps")
@option("--since", metavar="TIME",
              help="Show logs since timestamp (e.g. 2013-01-02T13:23:37Z) or relative "
                   "(e.g. 42m for 42 minutes)")
@option("--until", metavar="TIME",
              help="Show logs before a timestamp or relative (e.g. 42m)")
@argument("container", shell_complete=complete_containers)
def logs(follow: bool, tail: str, timestamps: bool, since: str | None, until: str | None,
         container: str) -> int:
    """Fetch the logs of a container."""
    if tail == "all":
        lines = -1
    else:
        try:
            lines = int(tail)
        except ValueError:
            raise CliError(f"invalid --tail value {tail!r}: a number of lines or 'all'",
                           EXIT_DAEMON) from None
    params = {"id": container, "follow": follow, "tail": lines, "timestamps": timestamps,
              "stdout": True, "stderr": True, "since": _when(since, "since"),
              "until": _when(until, "until")}
    with open_client() as client:
        attachment = client.stream("container.logs", params)
        try:
            for event, data in attachment:
                if event == "stdout":
                    write(sys.stdout.buffer, data)
                elif event == "stderr":
                    write(sys.stderr.buffer, data)
                elif event == "notice":          # older output dropped by rotation
                    sys.stdout.flush()
                    write(sys.stderr.buffer, str(data).encode())
        except KeyboardInterrupt:
            attachment.cancel()
            return 130
        attachment.result()
    return 0


def _when(text: str | None, what: str) -> float:
    """``--since``: Unix seconds, RFC3339 / ISO 8601, or a duration ago (``42m``)."""
    import time
    from ..errors import InvalidArgument
    from ..filters import point_in_time
    if not text:
        return 0.0
    try:
        return point_in_time(text, f"--{what}", time.time())
    except InvalidArgument as e:
        raise CliError(f"invalid {e.message}", EXIT_DAEMON) from None


@sbx.command(context_settings=CONTEXT)
@argument("container", shell_complete=complete_containers)
@argument("ps_args", nargs=-1, type=click.UNPROCESSED)
def top(container: str, ps_args: tuple[str, ...]) -> int:
    """Display the running processes of a container."""
    from ..render import align
    with open_client() as client:
        result = client.containers.get(container).top()
    click.echo(align([result["titles"]] + result["processes"]), nl=False)
    return 0


@sbx.command(context_settings=CONTEXT)
@option("-a", "--all", "show_all", is_flag=True,
              help="Show all containers (default shows just running)")
@option("--no-stream", is_flag=True,
              help="Disable streaming stats and only pull the first result")
@option("--format", "fmt", metavar="TEMPLATE", help="Format output using a Go template")
@option("--no-trunc", is_flag=True, help="Do not truncate output")
@argument("containers", nargs=-1, shell_complete=complete_containers)
def stats(show_all: bool, no_stream: bool, fmt: str | None, no_trunc: bool,
          containers: tuple[str, ...]) -> int:
    """Display a live stream of container(s) resource usage statistics."""
    import threading
    import time
    from ..api import Client, with_cpu_percent
    with open_client() as client:
        if containers:
            targets = [client.containers.get(c).record for c in containers]
        else:
            targets = [c.record for c in client.containers.list(all=show_all)]
    latest: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    host = daemon_host()

    def follow(record: Any) -> None:
        previous = None
        try:
            with Client(host, autostart=False) as own:   # one stream per thread
                attachment = own.containers.get(record.id).stats_stream(stream=not no_stream)
                for event, data in attachment:
                    if event == "stats":
                        latest[record.id] = with_cpu_percent(data, previous)
                        previous = data
        except SandboxError as e:
            errors.append(f"{record.name}: {e.message}")

    threads = [threading.Thread(target=follow, args=(r,), daemon=True) for r in targets]
    for t in threads:
        t.start()
    names = {r.id: r.name for r in targets}
    try:
        if no_stream:
            for t in threads:
                t.join()
            _print_stats(fmt, targets, latest, names, no_trunc)
        else:
            while any(t.is_alive() for t in threads) or not threads:
                time.sleep(1.0)
                sys.stdout.write("\033[2J\033[H")
                _print_stats(fmt, targets, latest, names, no_trunc)
                if not threads:
                    break
    except KeyboardInterrupt:
        return 0
    for message in errors:
        click.echo(f"Error response from daemon: {message}", err=True)
    return 1 if errors and not latest else 0


STATS_HEADERS = {"Container": "CONTAINER", "ID": "CONTAINER ID", "Name": "NAME",
                 "CPUPerc": "CPU %", "MemUsage": "MEM USAGE / LIMIT", "MemPerc": "MEM %",
                 "NetIO": "NET I/O", "BlockIO": "BLOCK I/O", "PIDs": "PIDS"}
STATS_TABLE = ("table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t"
               "{{.NetIO}}\t{{.BlockIO}}\t{{.PIDs}}")


def _print_stats(fmt: str | None, targets: list[Any], latest: dict[str, dict[str, Any]],
                 names: dict[str, str], no_trunc: bool) -> None:
    from ..render import bytes_size, human_size
    rows = []
    for record in targets:
        s = latest.get(record.id)
        if s is None:
            continue
        limit = s.get("memory_limit") or 0
        usage = s.get("memory_usage") or 0
        inactive = s.get("memory_inactive_file") or 0
        usage -= inactive if inactive < usage else 0      # as docker stats: no reclaimable cache
        rows.append({
            "Container": record.id[:12], "ID": record.id if no_trunc else record.id[:12],
            "Name": names[record.id], "CPUPerc": f"{s.get('cpu_percent', 0.0):.2f}%",
            "MemUsage": f"{bytes_size(usage)} / {bytes_size(limit)}",
            "MemPerc": f"{usage / limit * 100 if limit else 0.0:.2f}%",
            "NetIO": f"{human_size(s.get('net_rx', 0))} / {human_size(s.get('net_tx', 0))}",
            "BlockIO": f"{human_size(s.get('blk_read', 0))} / "
                       f"{human_size(s.get('blk_write', 0))}",
            "PIDs": str(s.get("pids", 0)),
        })
    print_rows(fmt, rows, STATS_TABLE, STATS_HEADERS)


# ---------------------------------------------------------------- exec / attach

@sbx.command("exec", context_settings=ARGS_AFTER)
@option("-d", "--detach", is_flag=True, help="Detached mode: run command in the "
                                                    "background")
@option("-i", "--interactive", is_flag=True,
              help="Keep STDIN open even if not attached")
@option("-t", "--tty", is_flag=True, help="Allocate a pseudo-TTY")
@option("-e", "--env", multiple=True, metavar="KEY[=VALUE]",
              help="Set environment variables")
@option("--env-file", multiple=True, metavar="FILE",
        help="Read in a file of environment variables")
@option("-w", "--workdir", default="", metavar="DIR",
              help="Working directory inside the container")
@option("-u", "--user", default="", metavar="USER[:GROUP]",
              help="Username or UID (format: <name|uid>[:<group|gid>])")
@option("--detach-keys", metavar="KEYS",
        help="Override the key sequence for detaching a container [default: ctrl-p,ctrl-q]")
@argument("container", shell_complete=complete_containers)
@argument("command", nargs=-1, required=True, type=click.UNPROCESSED,
                metavar="COMMAND [ARG...]")
def exec_(detach: bool, interactive: bool, tty: bool, env: tuple[str, ...],
          env_file: tuple[str, ...], workdir: str, user: str, detach_keys: str | None,
          container: str, command: tuple[str, ...]) -> int:
    """Execute a command in a running container."""
    from ..api import exec_params
    from ..envfile import parse_env, parse_env_file
    if not detach:
        check_tty(tty, interactive)
    # As Docker: the files first, then -e (a later entry wins).
    environment = [e for path in env_file for e in local(parse_env_file, path)]
    params = local(exec_params, container, list(command), environment + parse_env(list(env)),
                   workdir, user, tty, interactive and not detach, detach, detach_keys,
                   terminal_size() if tty else [])
    with open_client() as client:
        attachment = client.stream("container.exec", params)
        if detach:
            attachment.collect()
            return 0
        result = pump(attachment, host=daemon_host(), tty=tty, stdin=interactive, sig_proxy=False)
    return int(result.get("exit_code") or 0)


@sbx.command(context_settings=CONTEXT)
@option("--no-stdin", is_flag=True, help="Do not attach STDIN")
@option("--sig-proxy/--no-sig-proxy", default=True,
              help="Proxy all received signals to the process")
@option("--detach-keys", metavar="KEYS",
        help="Override the key sequence for detaching a container [default: ctrl-p,ctrl-q]")
@argument("container", shell_complete=complete_containers)
def attach(no_stdin: bool, sig_proxy: bool, detach_keys: str | None, container: str) -> int:
    """Attach local standard input, output, and error streams to a running container."""
    with open_client() as client:
        handle = client.containers.get(container)
        cfg = handle.record.config
        stdin = cfg.open_stdin and not no_stdin
        check_tty(cfg.tty, stdin)
        attachment = handle.attach(stdin=stdin, detach_keys=detach_keys)
        result = pump(attachment, host=daemon_host(), tty=cfg.tty, stdin=stdin, sig_proxy=sig_proxy,
                       container_id=handle.id)
    return int(result.get("exit_code") or 0)


# ---------------------------------------------------------------- cp

@sbx.command(context_settings=CONTEXT)
@option("-a", "--archive", is_flag=True, help="Archive mode (copy all uid/gid "
                                                     "information)")
@option("-L", "--follow-link", is_flag=True,
              help="Always follow symbol link in SRC_PATH")
@argument("src", metavar="SRC")
@argument("dest", metavar="DEST")
def cp(archive: bool, follow_link: bool, src: str, dest: str) -> int:
    """Copy files/folders between a container and the local filesystem.

    \b
    sbx cp [OPTIONS] CONTAINER:SRC_PATH DEST_PATH|-
    sbx cp [OPTIONS] SRC_PATH|- CONTAINER:DEST_PATH
    """
    src_ref, dest_ref = _cp_ref(src), _cp_ref(dest)
    if (src_ref is None) == (dest_ref is None):
        raise CliError("copying between containers or between local paths is not "
                       "supported: exactly one of SRC and DEST must be CONTAINER:PATH",
                       EXIT_DAEMON)
    with open_client() as client:
        if src_ref is not None:
            container = client.containers.get(src_ref[0])
            data, _ = container.get_archive(src_ref[1])
            if dest == "-":
                write(sys.stdout.buffer, data)
            else:
                _extract_local(data, dest, archive)
        else:
            container = client.containers.get(dest_ref[0])
            target = dest_ref[1]
            into, name = _cp_target(container, target)
            data = sys.stdin.buffer.read() if src == "-" else \
                _pack_local(src, name, follow_link)
            container.put_archive(into, data)
    return 0


def _cp_ref(text: str) -> tuple[str, str] | None:
    """``name:path`` -> (name, path); local paths (``/x``, ``./a:b``, ``-``) -> None."""
    if text == "-" or text.startswith(("/", ".")):
        return None
    name, sep, path = text.partition(":")
    if not sep or not name:
        return None
    return name, path or "/"


def _cp_target(container: Any, target: str) -> tuple[str, str | None]:
    """Docker's rule: into an existing directory (or a path ending in /) keep the
    source's name; otherwise DEST names the copy, made in DEST's parent."""
    from ..errors import NotFound
    if target.endswith("/"):
        return target, None
    try:
        stat = container.client.call("container.archive_stat",
                                      {"id": container.id, "path": target})
    except NotFound:
        stat = None
    if stat is not None and stat.get("is_dir"):
        return target, None
    parent, _, name = target.rstrip("/").rpartition("/")
    return parent or "/", name


def _pack_local(src: str, name: str | None, follow_link: bool) -> bytes:
    import io
    import tarfile
    path = os.path.realpath(src) if follow_link else src
    if not os.path.lexists(path):
        raise CliError(f"could not find the file {src} locally", 1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(path, arcname=name or os.path.basename(os.path.normpath(src)))
    return buf.getvalue()


def _extract_local(data: bytes, dest: str, keep_owner: bool) -> None:
    """Unpack a container's tar at DEST with Docker's naming rule, refusing entries that
    would land outside DEST (tarfile's ``tar`` filter). Symlinks are copied as they are
    (absolute ones too, as Docker does); owners only with ``-a``."""
    import io
    import shutil
    import tarfile
    import tempfile

    def extract_filter(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
        member = tarfile.tar_filter(member, path)
        return member if keep_owner else member.replace(uid=None, gid=None, uname=None,
                                                        gname=None, deep=False)

    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = tar.getmembers()
            if not members:
                raise CliError("the container sent an empty archive", 1)
            top = members[0].name.split("/")[0]
            if os.path.isdir(dest):
                tar.extractall(dest, filter=extract_filter)
                return
            parent = os.path.dirname(os.path.abspath(dest))
            if not os.path.isdir(parent):
                raise CliError(f"destination directory {parent} does not exist", 1)
            staging = tempfile.mkdtemp(prefix=".sbx-cp-", dir=parent)
            try:
                tar.extractall(staging, filter=extract_filter)
                os.replace(os.path.join(staging, top), dest)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except tarfile.FilterError as e:
        raise CliError(f"refused an entry of the container's archive: {e}", 1) from None


# ---------------------------------------------------------------- sbx container

@click.group(cls=SbxGroup, context_settings=CONTEXT)
def container() -> None:
    """Manage containers."""


for _name, _func in (("run", run), ("create", create), ("start", start), ("stop", stop),
                     ("restart", restart), ("kill", kill), ("rm", rm), ("ls", ps), ("ps", ps),
                     ("logs", logs), ("exec", exec_), ("attach", attach),
                     ("inspect", inspect), ("wait", wait), ("top", top), ("diff", diff),
                     ("stats", stats),
                     ("cp", cp), ("pause", pause), ("unpause", unpause), ("update", update),
                     ("rename", rename)):
    container.alias(_name, _func)


@container.command(context_settings=CONTEXT)
@option("-f", "--force", is_flag=True, help="Do not prompt for confirmation")
@option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Provide filter values (e.g. 'until=<timestamp>')")
def prune(force: bool, filters: tuple[str, ...]) -> int:
    """Remove all stopped containers."""
    if not force and not confirm_prune("all stopped containers"):
        return 0
    from ..filters import PRUNE_FILTER_KEYS, parse_filters
    parsed = parse_filters(filters, PRUNE_FILTER_KEYS)
    with open_client() as client:
        result = client.containers.prune(parsed)
    print_pruned("Deleted Containers:", result.get("removed") or [],
            result.get("space_reclaimed", 0))
    return 0
