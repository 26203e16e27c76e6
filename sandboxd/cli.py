"""``sbx``: Docker's command line for sandboxd.

Commands, flags, output formats and exit codes follow ``docker``'s: ``sbx run``'s status is
the container's; a daemon error prints ``sbx: Error response from daemon: ...`` and exits
125 (126/127 when the command cannot be executed / found); a bad flag exits 125.
``docs/cli.md`` lists every command.

Start-up time matters (``sbx`` runs once per container in scripts): the ``sbx`` script
runs plain ``run``/``create`` lines without this module (``cli_run.py``), and this module
imports only click at load time; the client, the config model and json come in inside
commands.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Sequence

import click

from . import __version__
from .cli_run import (EXIT_DAEMON, FLAGS, REPORTED, RUN_ONLY, CliError, Flag, Progress,
                      check_tty, connection, follow, local, pump, report, write)
from .errors import SandboxError

CONTEXT = {"help_option_names": ["--help"], "max_content_width": 100}
# Options belong to sbx up to the image / container; everything after is the command's.
ARGS_AFTER = {**CONTEXT, "allow_interspersed_args": False}


# ---------------------------------------------------------------- plumbing

def _host() -> str | None:
    return click.get_current_context().find_root().params.get("host")


def _client(autostart: bool | None = None) -> Any:
    from .api import Client
    return Client(_host(), autostart=autostart)


def _complete_containers(ctx: click.Context, param: click.Parameter, incomplete: str
                         ) -> list[str]:
    """Names and ids of existing containers, when a daemon is already running."""
    try:
        from .api import Client
        with Client(ctx.find_root().params.get("host"), autostart=False) as client:
            records = [c.record for c in client.containers.list(all=True)]
    except Exception:            # completion must never fail loudly
        return []
    words = [r.name for r in records] + [r.id[:12] for r in records]
    return [w for w in words if w.startswith(incomplete)]


def _complete_images(ctx: click.Context, param: click.Parameter, incomplete: str
                     ) -> list[str]:
    try:
        from .api import Client
        with Client(ctx.find_root().params.get("host"), autostart=False) as client:
            tags = [t for image in client.images.list() for t in image.tags]
    except Exception:
        return []
    return [t for t in tags if t.startswith(incomplete)]


def _each(names: tuple[str, ...], action: Callable[[Any, str], Any]) -> int:
    """Docker's multi-container commands: act on each, report each failure, exit 1 if
    any failed."""
    status = 0
    with _client() as client:
        for name in names:
            try:
                output = action(client, name)
            except SandboxError as e:
                click.echo(f"Error response from daemon: {e.message}", err=True)
                status = 1
            else:
                if output is not None:
                    click.echo(output)
    return status


def _op(op: str, **params: Any) -> Callable[[Any, str], str]:
    """An action for :func:`_each`: call ``op`` on the container, echo its name."""
    def action(client: Any, name: str) -> str:
        client.call(op, {"id": name, **params})
        return name
    return action


# ---------------------------------------------------------------- the group

def option(*decls: str, **attrs: Any) -> Callable[[Callable], Callable]:
    """``click.option``, recorded now and built when the command is first used: making
    ~130 click parameters for every ``sbx`` start would cost milliseconds for nothing."""
    def record(func: Callable) -> Callable:
        func.__dict__.setdefault("_sbx_params", []).append(click.option(*decls, **attrs))
        return func
    return record


def argument(*decls: str, **attrs: Any) -> Callable[[Callable], Callable]:
    """``click.argument``, recorded like :func:`option`."""
    def record(func: Callable) -> Callable:
        func.__dict__.setdefault("_sbx_params", []).append(click.argument(*decls, **attrs))
        return func
    return record


class SbxGroup(click.Group):
    """A group whose commands are built on first use, listed in the order they were
    added (Docker's help is not alphabetical)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.builders: dict[str, Callable[[], click.Command]] = {}

    def command(self, name: str | None = None, **settings: Any  # type: ignore[override]
                ) -> Callable[[Callable], Callable]:
        def register(func: Callable) -> Callable:
            command_name = name or func.__name__
            built: list[click.Command] = []

            def build() -> click.Command:
                if not built:
                    f = func
                    for decorator in func.__dict__.get("_sbx_params", []):
                        f = decorator(f)        # recorded bottom-up, applied bottom-up
                    built.append(click.command(command_name, **settings)(f))
                return built[0]

            func._sbx_build = build            # type: ignore[attr-defined]
            self.builders[command_name] = build
            return func
        return register

    def alias(self, name: str, func: Callable) -> None:
        """Offer an already declared command under this group too (``container ls``)."""
        self.builders[name] = func._sbx_build

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.builders:
            return self.builders[name]()
        return super().get_command(ctx, name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.builders) + [n for n in self.commands if n not in self.builders]


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"sbx version {__version__}")
        ctx.exit()


@click.group(cls=SbxGroup, context_settings=CONTEXT)
@click.option("-H", "--host", envvar="SANDBOXD_HOST", metavar="URL",
              help="Daemon socket to connect to (unix:///path).")
@click.option("-v", "--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="Print version information and quit")
def cli(host: str | None) -> None:
    """Run fresh, strictly limited Linux containers (sandboxd)."""


# ---------------------------------------------------------------- run / create

# ---------------------------------------------------------------- run / create

def _click_option(flag: Flag) -> Callable[[Callable], Callable]:
    """One of cli_run's flags as a (recorded) click option."""
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
                   argument("image", shell_complete=_complete_images),
                   argument("command", nargs=-1, type=click.UNPROCESSED,
                            metavar="[COMMAND] [ARG...]")]
        for record in reversed(records):
            func = record(func)
        return func
    return apply


@cli.command(context_settings=ARGS_AFTER)
@_flags(RUN_ONLY + FLAGS)
def run(image: str, command: tuple[str, ...], **opts: Any) -> int:
    """Create and run a new container from an image."""
    from .cli_run import run as run_container
    return run_container(_host(), image, command, opts)


@cli.command(context_settings=ARGS_AFTER)
@_flags(FLAGS)
def create(image: str, command: tuple[str, ...], **opts: Any) -> int:
    """Create a new container."""
    from .cli_run import create as create_container
    return create_container(_host(), image, command, opts)


# ---------------------------------------------------------------- lifecycle

@cli.command(context_settings=CONTEXT)
@option("-a", "--attach", is_flag=True, help="Attach STDOUT/STDERR and forward signals")
@option("-i", "--interactive", is_flag=True, help="Attach container's STDIN")
@argument("containers", nargs=-1, required=True, shell_complete=_complete_containers)
def start(attach: bool, interactive: bool, containers: tuple[str, ...]) -> int:
    """Start one or more stopped containers."""
    if not (attach or interactive):
        return _each(containers, _op("container.start"))
    if len(containers) > 1:
        raise CliError("you cannot start and attach multiple containers at once", 1)
    with _client() as client:
        container = client.containers.get(containers[0])
        tty = container.record.config.tty
        check_tty(tty, interactive)
        attachment = container.attach(stdin=interactive, start=True)
        result = pump(attachment, host=_host(), tty=tty, stdin=interactive, sig_proxy=True,
                       container_id=container.id)
    return int(result.get("exit_code", 0))


@cli.command(context_settings=CONTEXT)
@option("-t", "--time", "timeout", type=int, metavar="SECONDS",
              help="Seconds to wait before killing the container")
@argument("containers", nargs=-1, required=True, shell_complete=_complete_containers)
def stop(timeout: int | None, containers: tuple[str, ...]) -> int:
    """Stop one or more running containers."""
    return _each(containers, _op("container.stop", timeout=timeout))


@cli.command(context_settings=CONTEXT)
@option("-t", "--time", "timeout", type=int, metavar="SECONDS",
              help="Seconds to wait before killing the container")
@argument("containers", nargs=-1, required=True, shell_complete=_complete_containers)
def restart(timeout: int | None, containers: tuple[str, ...]) -> int:
    """Restart one or more containers."""
    return _each(containers, _op("container.restart", timeout=timeout))


@cli.command(context_settings=CONTEXT)
@option("-s", "--signal", "sig", default="SIGKILL", metavar="SIGNAL",
              help="Signal to send to the container")
@argument("containers", nargs=-1, required=True, shell_complete=_complete_containers)
def kill(sig: str, containers: tuple[str, ...]) -> int:
    """Kill one or more running containers."""
    from .validate import parse_signal
    number = local(parse_signal, sig)
    return _each(containers, _op("container.kill", signal=number))


@cli.command(context_settings=CONTEXT)
@option("-f", "--force", is_flag=True,
              help="Force the removal of a running container (uses SIGKILL)")
@option("-v", "--volumes", is_flag=True, help="Accepted for Docker compatibility")
@argument("containers", nargs=-1, required=True, shell_complete=_complete_containers)
def rm(force: bool, volumes: bool, containers: tuple[str, ...]) -> int:
    """Remove one or more containers."""
    return _each(containers, _op("container.remove", force=force))


@cli.command(context_settings=CONTEXT)
@argument("containers", nargs=-1, required=True, shell_complete=_complete_containers)
def pause(containers: tuple[str, ...]) -> int:
    """Pause all processes within one or more containers."""
    return _each(containers, _op("container.pause"))


@cli.command(context_settings=CONTEXT)
@argument("containers", nargs=-1, required=True, shell_complete=_complete_containers)
def unpause(containers: tuple[str, ...]) -> int:
    """Unpause all processes within one or more containers."""
    return _each(containers, _op("container.unpause"))


@cli.command(context_settings=CONTEXT)
@argument("containers", nargs=-1, required=True, shell_complete=_complete_containers)
def wait(containers: tuple[str, ...]) -> int:
    """Block until one or more containers stop, then print their exit codes."""
    return _each(containers,
                 lambda c, name: c.call("container.wait", {"id": name})["exit_code"])


@cli.command(context_settings=CONTEXT)
@argument("old")
@argument("new")
def rename(old: str, new: str) -> int:
    """Rename a container."""
    with _client() as client:
        client.call("container.rename", {"id": old, "name": new})
    return 0


def _host_and_port(binding: dict[str, Any]) -> str:
    """``0.0.0.0:8080``, ``[::]:8080``: as ``docker port`` writes them."""
    ip = binding["host_ip"] or "0.0.0.0"
    return f"[{ip}]:{binding['host_port']}" if ":" in ip else f"{ip}:{binding['host_port']}"


@cli.command(context_settings=CONTEXT)
@argument("container", shell_complete=_complete_containers)
@argument("private_port", required=False, metavar="[PRIVATE_PORT[/PROTO]]")
def port(container: str, private_port: str | None) -> int:
    """List port mappings or a specific mapping for the container."""
    with _client() as client:
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


@cli.command(context_settings=CONTEXT)
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
@argument("containers", nargs=-1, required=True, shell_complete=_complete_containers)
def update(containers: tuple[str, ...], **limits: Any) -> int:
    """Update configuration of one or more containers."""
    from .flags import build_update
    params = local(build_update, **limits)

    def apply(client: Any, name: str) -> str:
        result = client.call("container.update", {"id": name, **params})
        for warning in result.get("warnings") or ():
            click.echo(f"WARNING: {warning}", err=True)
        return name
    return _each(containers, apply)


# ---------------------------------------------------------------- looking at containers

@cli.command(context_settings=CONTEXT)
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
    from .filters import parse_filters
    from .model import ContainerRecord
    from .render import PS_HEADERS, PS_TABLE, ps_row
    parsed = local(parse_filters, filters)
    limit = 1 if latest else last
    with _client() as client:
        result = client.call("container.list", {"all": show_all or limit > 0,
                                                 "filters": parsed, "limit": limit})
    records = [ContainerRecord.from_dict(r) for r in result["containers"]]
    if quiet:
        for r in records:
            click.echo(r.id if no_trunc else r.id[:12])
        return 0
    now = time.time()
    rows = [ps_row(r, now, trunc=not no_trunc) for r in records]
    _print_rows(fmt, rows, PS_TABLE, PS_HEADERS)
    return 0


def _print_rows(fmt: str | None, rows: list[dict[str, Any]], default: str,
                headers: dict[str, str]) -> None:
    from .render import format_table
    if fmt == "json":
        import json
        for row in rows:
            click.echo(json.dumps({k: v for k, v in row.items() if not callable(v)}))
        return
    template = default if not fmt or fmt == "table" else fmt
    click.echo(format_table(template, rows, headers), nl=False)


@cli.command(context_settings=CONTEXT)
@option("-f", "--format", "fmt", metavar="TEMPLATE",
              help="Format output using a Go template")
@option("--type", "kind", type=click.Choice(["container", "image", "network"]),
              help="Return JSON for specified type")
@option("-s", "--size", is_flag=True, help="Accepted for Docker compatibility")
@argument("names", nargs=-1, required=True, shell_complete=_complete_containers)
def inspect(fmt: str | None, kind: str | None, size: bool, names: tuple[str, ...]) -> int:
    """Return low-level information on containers, images or networks."""
    return _inspect(fmt, kind, names)


def _inspect(fmt: str | None, kind: str | None, names: tuple[str, ...]) -> int:
    import json
    from .gotemplate import render_template
    from .errors import NotFound
    documents, status = [], 0
    with _client() as client:
        for name in names:
            try:
                documents.append(_inspect_one(client, name, kind))
            except NotFound:
                click.echo(f"Error: No such {kind or 'object'}: {name}", err=True)
                status = 1
    if fmt:
        for doc in documents:
            click.echo(render_template(fmt, doc))
    else:
        click.echo(json.dumps(documents, indent=4, ensure_ascii=False))
    return status


def _inspect_one(client: Any, name: str, kind: str | None) -> dict[str, Any]:
    """Docker's lookup order without ``--type``: container, image, network."""
    from .model import ContainerRecord, ImageRecord, NetworkRecord
    from .render import image_document, inspect_document, network_document
    from .errors import InvalidArgument, NotFound
    if kind in (None, "container"):
        try:
            record = client.call("container.inspect", {"id": name})
            return inspect_document(ContainerRecord.from_dict(record))
        except NotFound:
            if kind == "container":
                raise
    if kind in (None, "image"):
        try:
            image = client.call("image.inspect", {"name": name})
            return image_document(ImageRecord.from_dict(image))
        except (NotFound, InvalidArgument):     # not an image name at all: maybe a network
            if kind == "image":
                raise
    network = client.call("network.inspect", {"id": name})
    return network_document(NetworkRecord.from_dict(network))


@cli.command(context_settings=CONTEXT)
@option("-f", "--follow", is_flag=True, help="Follow log output")
@option("-n", "--tail", default="all", metavar="N",
              help='Number of lines to show from the end of the logs (default "all")')
@option("-t", "--timestamps", is_flag=True, help="Show timestamps")
@option("--since", metavar="TIME",
              help="Show logs since timestamp (e.g. 2013-01-02T13:23:37Z) or relative "
                   "(e.g. 42m for 42 minutes)")
@option("--until", metavar="TIME",
              help="Show logs before a timestamp or relative (e.g. 42m)")
@argument("container", shell_complete=_complete_containers)
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
    with _client() as client:
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
    import re
    import time
    if not text:
        return 0.0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", text.strip())
    if m:
        scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
        return time.time() - float(m.group(1)) * scale[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    import datetime
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"invalid --{what} value {text!r}: use a Unix time, "
                       f"2013-01-02T13:23:37Z or a duration such as 42m", EXIT_DAEMON) \
            from None
    if when.tzinfo is None:
        when = when.astimezone()
    return when.timestamp()


@cli.command(context_settings=CONTEXT)
@argument("container", shell_complete=_complete_containers)
@argument("ps_args", nargs=-1, type=click.UNPROCESSED)
def top(container: str, ps_args: tuple[str, ...]) -> int:
    """Display the running processes of a container."""
    from .render import align
    with _client() as client:
        result = client.containers.get(container).top()
    click.echo(align([result["titles"]] + result["processes"]), nl=False)
    return 0


@cli.command(context_settings=CONTEXT)
@option("-a", "--all", "show_all", is_flag=True,
              help="Show all containers (default shows just running)")
@option("--no-stream", is_flag=True,
              help="Disable streaming stats and only pull the first result")
@option("--format", "fmt", metavar="TEMPLATE", help="Format output using a Go template")
@option("--no-trunc", is_flag=True, help="Do not truncate output")
@argument("containers", nargs=-1, shell_complete=_complete_containers)
def stats(show_all: bool, no_stream: bool, fmt: str | None, no_trunc: bool,
          containers: tuple[str, ...]) -> int:
    """Display a live stream of container(s) resource usage statistics."""
    import threading
    import time
    from .api import Client, _with_cpu_percent
    with _client() as client:
        if containers:
            targets = [client.containers.get(c).record for c in containers]
        else:
            targets = [c.record for c in client.containers.list(all=show_all)]
    latest: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    host = _host()

    def follow(record: Any) -> None:
        previous = None
        try:
            with Client(host, autostart=False) as own:   # one stream per thread
                attachment = own.containers.get(record.id).stats_stream(stream=not no_stream)
                for event, data in attachment:
                    if event == "stats":
                        latest[record.id] = _with_cpu_percent(data, previous)
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
    from .render import bytes_size, human_size
    rows = []
    for record in targets:
        s = latest.get(record.id)
        if s is None:
            continue
        limit = s.get("memory_limit") or 0
        usage = s.get("memory_usage") or 0
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
    _print_rows(fmt, rows, STATS_TABLE, STATS_HEADERS)


# ---------------------------------------------------------------- exec / attach

@cli.command("exec", context_settings=ARGS_AFTER)
@option("-d", "--detach", is_flag=True, help="Detached mode: run command in the "
                                                    "background")
@option("-i", "--interactive", is_flag=True,
              help="Keep STDIN open even if not attached")
@option("-t", "--tty", is_flag=True, help="Allocate a pseudo-TTY")
@option("-e", "--env", multiple=True, metavar="KEY[=VALUE]",
              help="Set environment variables")
@option("-w", "--workdir", default="", metavar="DIR",
              help="Working directory inside the container")
@option("-u", "--user", default="", metavar="USER[:GROUP]",
              help="Username or UID (format: <name|uid>[:<group|gid>])")
@argument("container", shell_complete=_complete_containers)
@argument("command", nargs=-1, required=True, type=click.UNPROCESSED,
                metavar="COMMAND [ARG...]")
def exec_(detach: bool, interactive: bool, tty: bool, env: tuple[str, ...], workdir: str,
          user: str, container: str, command: tuple[str, ...]) -> int:
    """Execute a command in a running container."""
    from .api import _exec_params
    from .envfile import parse_env
    if not detach:
        check_tty(tty, interactive)
    params = local(_exec_params, container, list(command), parse_env(list(env)), workdir,
                    user, tty, interactive and not detach, detach)
    with _client() as client:
        attachment = client.stream("container.exec", params)
        if detach:
            attachment.collect()
            return 0
        result = pump(attachment, host=_host(), tty=tty, stdin=interactive, sig_proxy=False)
    return int(result.get("exit_code") or 0)


@cli.command(context_settings=CONTEXT)
@option("--no-stdin", is_flag=True, help="Do not attach STDIN")
@option("--sig-proxy/--no-sig-proxy", default=True,
              help="Proxy all received signals to the process")
@argument("container", shell_complete=_complete_containers)
def attach(no_stdin: bool, sig_proxy: bool, container: str) -> int:
    """Attach local standard input, output, and error streams to a running container."""
    with _client() as client:
        handle = client.containers.get(container)
        cfg = handle.record.config
        stdin = cfg.open_stdin and not no_stdin
        check_tty(cfg.tty, stdin)
        attachment = handle.attach(stdin=stdin)
        result = pump(attachment, host=_host(), tty=cfg.tty, stdin=stdin, sig_proxy=sig_proxy,
                       container_id=handle.id)
    return int(result.get("exit_code") or 0)


# ---------------------------------------------------------------- cp

@cli.command(context_settings=CONTEXT)
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
    with _client() as client:
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
    from .errors import NotFound
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


# ---------------------------------------------------------------- images

@cli.command(context_settings=CONTEXT)
@option("-m", "--message", default="", help="Commit message")
@argument("container", shell_complete=_complete_containers)
@argument("reference", metavar="[REPOSITORY[:TAG]]", required=False)
def commit(message: str, container: str, reference: str | None) -> int:
    """Create a new image from a container's changes (not one run with --rm)."""
    with _client() as client:
        result = client.call("container.commit", {"id": container, "name": reference,
                                                  "message": message})
    click.echo(result["id"])
    return 0


@cli.command("import", context_settings=CONTEXT)
@option("-m", "--message", default="", help="Set commit message for imported image")
@argument("file", metavar="FILE|-")
@argument("reference", metavar="REPOSITORY[:TAG]")
def import_(message: str, file: str, reference: str) -> int:
    """Import the contents from a tarball to create a filesystem image."""
    from .api import CHUNK
    with _client() as client:
        params: dict[str, Any] = {"name": reference}
        if message:
            params["message"] = message
        attachment = client.stream("image.import", params)
        source = sys.stdin.buffer if file == "-" else open(file, "rb")
        try:
            while chunk := source.read(CHUNK):
                attachment.send(chunk)
        finally:
            if source is not sys.stdin.buffer:
                source.close()
        attachment.close_stdin()
        _, _, result = attachment.collect()
    # entries the unpacker refused (``..``, links out, devices): said, not silently lost
    for warning in result.get("warnings") or ():
        click.echo(f"WARNING: not imported: {warning}", err=True)
    click.echo(result["id"])
    return 0


@cli.command(context_settings=CONTEXT)
@option("-a", "--all", "show_all", is_flag=True, help="Show all images")
@option("-q", "--quiet", is_flag=True, help="Only show image IDs")
@option("--format", "fmt", metavar="TEMPLATE", help="Format output using a Go template")
@option("--no-trunc", is_flag=True, help="Don't truncate output")
@option("--digests", is_flag=True, help="Show digests")
def images(show_all: bool, quiet: bool, fmt: str | None, no_trunc: bool,
           digests: bool) -> int:
    """List images."""
    import time
    from .model import ImageRecord
    from .render import IMAGES_DIGESTS_TABLE, IMAGES_TABLE, IMAGE_HEADERS, image_row
    with _client() as client:
        result = client.call("image.list", {"all": show_all})
    records = [ImageRecord.from_dict(i) for i in result["images"]]
    now = time.time()
    if quiet:
        seen = []
        for r in records:
            shown = r.id if no_trunc else r.id.split(":", 1)[-1][:12]
            if shown not in seen:
                seen.append(shown)
                click.echo(shown)
        return 0
    rows = [row for r in records for row in image_row(r, now, trunc=not no_trunc)]
    _print_rows(fmt, rows, IMAGES_DIGESTS_TABLE if digests else IMAGES_TABLE,
                IMAGE_HEADERS)
    return 0


@cli.command(context_settings=CONTEXT)
@option("-f", "--force", is_flag=True, help="Force removal of the image")
@argument("images", nargs=-1, required=True, shell_complete=_complete_images)
def rmi(force: bool, images: tuple[str, ...]) -> int:
    """Remove one or more images."""
    def remove(client: Any, name: str) -> str:
        result = client.images.remove(name, force=force)
        lines = [f"Untagged: {t}" for t in result.get("untagged") or ()]
        lines += [f"Deleted: {d}" for d in result.get("deleted") or ()]
        return "\n".join(lines)
    return _each(images, remove)


@cli.command(context_settings=CONTEXT)
@option("-q", "--quiet", is_flag=True, help="Suppress verbose output")
@argument("name", metavar="NAME[:TAG|@DIGEST]")
def pull(quiet: bool, name: str) -> int:
    """Download an image from a registry."""
    with _client() as client:
        result = follow(client.stream("image.pull", {"name": name}),
                         None if quiet else Progress(sys.stdout))
    click.echo(result["name"])
    return 0


@cli.command(context_settings=CONTEXT)
@option("-q", "--quiet", is_flag=True, help="Suppress verbose output")
@argument("name", metavar="NAME[:TAG]", shell_complete=_complete_images)
def push(quiet: bool, name: str) -> int:
    """Upload an image to a registry."""
    with _client() as client:
        result = follow(client.stream("image.push", {"name": name}),
                         None if quiet else Progress(sys.stdout))
    if quiet:
        click.echo(name)
    return 0 if result.get("digest") else 1


@cli.command(context_settings=CONTEXT)
@option("-i", "--input", "path", metavar="FILE",
        help="Read from tar archive file, instead of STDIN")
@option("-q", "--quiet", is_flag=True, help="Suppress the load output")
def load(path: str | None, quiet: bool) -> int:
    """Load images from a tar archive (an OCI layout or a docker save archive)."""
    from .api import CHUNK
    if path is None and sys.stdin.isatty():
        raise CliError("requested load from stdin, but stdin is empty: give -i FILE or "
                       "redirect a tar", 1)
    source = sys.stdin.buffer if path is None else _open_input(path)
    try:
        with _client() as client:
            attachment = client.stream("image.load", {})
            while chunk := source.read(CHUNK):
                attachment.send(chunk)
            attachment.close_stdin()
            result = follow(attachment, None)
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    for image in result["images"]:
        for tag in image["tags"]:
            click.echo(f"Loaded image: {tag}")
        if not image["tags"]:
            click.echo(f"Loaded image ID: {image['id']}")
    return 0


def _open_input(path: str) -> Any:
    try:
        return open(path, "rb")
    except OSError as e:
        raise CliError(f"open {path}: {e.strerror}", 1) from None


def _stream_out(method: str, params: dict[str, Any], output: str | None,
                what: str) -> None:
    """Write the data ``method`` streams back (a tar) to the file ``output``, or to
    STDOUT when that is not a terminal; a file a failure left half-written is removed.
    ``what`` names the action in errors ("save image")."""
    if output is None and sys.stdout.isatty():
        raise CliError("cowardly refusing to save to a terminal. Use the -o flag or "
                       "redirect", 1)
    try:
        out = sys.stdout.buffer if output is None else open(output, "wb")
    except OSError as e:
        raise CliError(f"failed to {what}: open {output}: {e.strerror}", 1) from None
    ok = False
    try:
        with _client() as client:
            attachment = client.stream(method, params)
            for event, data in attachment:
                if event == "data":
                    out.write(data)
            attachment.result()
        ok = True
    finally:
        if output is not None:
            out.close()
            if not ok:
                os.unlink(output)      # no half-written archive left behind
        else:
            out.flush()


@cli.command(context_settings=CONTEXT)
@option("-o", "--output", metavar="FILE", help="Write to a file, instead of STDOUT")
@argument("images", nargs=-1, required=True, shell_complete=_complete_images)
def save(output: str | None, images: tuple[str, ...]) -> int:
    """Save one or more images to a tar archive (streamed to STDOUT by default)."""
    _stream_out("image.save", {"names": list(images)}, output, "save image")
    return 0


@cli.command(context_settings=CONTEXT)
@argument("source", metavar="SOURCE_IMAGE[:TAG]", shell_complete=_complete_images)
@argument("target", metavar="TARGET_IMAGE[:TAG]")
def tag(source: str, target: str) -> int:
    """Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE."""
    with _client() as client:
        client.call("image.tag", {"source": source, "target": target})
    return 0


HISTORY_HEADERS = {"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT",
                   "CreatedBy": "CREATED BY", "Size": "SIZE", "Comment": "COMMENT"}
HISTORY_TABLE = ("table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t"
                 "{{.Comment}}")


@cli.command(context_settings=CONTEXT)
@option("--format", "fmt", metavar="TEMPLATE", help="Format output using a Go template")
@option("-H", "--human/--no-human", default=True,
        help="Print sizes and dates in human readable format")
@option("--no-trunc", is_flag=True, help="Don't truncate output")
@option("-q", "--quiet", is_flag=True, help="Only show image IDs")
@argument("image", shell_complete=_complete_images)
def history(fmt: str | None, human: bool, no_trunc: bool, quiet: bool, image: str) -> int:
    """Show the history of an image."""
    import time
    from .render import human_duration, human_size, rfc3339, truncate
    with _client() as client:
        entries = client.call("image.history", {"name": image})["history"]
    now = time.time()
    rows = []
    for e in entries:
        shown = e["id"] if no_trunc else e["id"].split(":", 1)[-1][:12]
        created = e["created"]
        by = e["created_by"] if no_trunc else truncate(e["created_by"], 45)
        rows.append({"ID": shown or "<missing>",
                     "CreatedSince": human_duration(now - created) + " ago"
                     if human else rfc3339(created),
                     "CreatedAt": rfc3339(created), "CreatedBy": by,
                     "Size": human_size(e["size"]) if human else str(e["size"]),
                     "Comment": e["comment"]})
    if quiet:
        for row in rows:
            click.echo(row["ID"])
        return 0
    _print_rows(fmt, rows, HISTORY_TABLE, HISTORY_HEADERS)
    return 0


@cli.command(context_settings=CONTEXT)
@option("-u", "--username", metavar="USER", help="Username")
@option("-p", "--password", metavar="PASSWORD", help="Password")
@option("--password-stdin", is_flag=True, help="Take the password from stdin")
@argument("registry", metavar="REGISTRY")
def login(username: str | None, password: str | None, password_stdin: bool,
          registry: str) -> int:
    """Log in to a registry (the daemon keeps the credentials for its pulls and pushes).

    There is no default registry: name one, e.g. localhost:5000."""
    if password_stdin:
        if password is not None:
            raise CliError("--password and --password-stdin are mutually exclusive",
                           EXIT_DAEMON)
        if username is None:
            raise CliError("Must provide --username with --password-stdin", EXIT_DAEMON)
        password = sys.stdin.read().rstrip("\r\n")
    elif password is not None:
        click.echo("WARNING! Using --password via the CLI is insecure. Use "
                   "--password-stdin.", err=True)
    interactive = sys.stdin.isatty()
    if username is None:
        if not interactive:
            raise CliError("Cannot perform an interactive login from a non TTY device",
                           1)
        username = click.prompt("Username", err=True)
    if password is None:
        if not interactive:
            raise CliError("Cannot perform an interactive login from a non TTY device",
                           1)
        password = click.prompt("Password", hide_input=True, err=True)
    if not username or not password:
        raise CliError("Error: a username and a password are required", 1)
    with _client() as client:
        result = client.call("system.login", {"registry": registry, "username": username,
                                              "password": password})
    click.echo(result["status"])
    return 0


@cli.command(context_settings=CONTEXT)
@argument("registry", metavar="REGISTRY")
def logout(registry: str) -> int:
    """Log out from a registry."""
    with _client() as client:
        removed = client.call("system.logout", {"registry": registry})["removed"]
    click.echo(f"Removing login credentials for {registry}" if removed
               else f"Not logged in to {registry}")
    return 0


@cli.command(context_settings=CONTEXT)
@option("-t", "--tag", "tags", multiple=True, metavar="NAME[:TAG]",
        help="Name and optionally a tag for the image (repeatable)")
@option("-f", "--file", "dockerfile", metavar="PATH",
        help="Name of the Dockerfile (default: CONTEXT/Dockerfile or CONTEXT/Sandboxfile)")
@option("--build-arg", "build_args", multiple=True, metavar="KEY=VALUE",
        help="Set build-time variables")
@option("--label", "labels", multiple=True, metavar="KEY=VALUE",
        help="Set metadata for the image")
@option("--no-cache", is_flag=True, help="Do not use cache when building the image")
@option("-q", "--quiet", is_flag=True,
        help="Suppress the build output and print image ID on success")
@option("--network", default="none", show_default=True,
        help="Networking mode for the RUN instructions (none, bridge, host or a network)")
@option("--target", default="", metavar="STAGE", help="Build up to this stage")
@option("-m", "--memory", default=None, help="Memory limit of each RUN (e.g. 512m)")
@option("--cpus", default=None, help="Number of CPUs of each RUN")
@option("--pids-limit", type=int, default=None, help="Process limit of each RUN")
@argument("context", metavar="CONTEXT|-")
def build(tags: tuple[str, ...], dockerfile: str | None, build_args: tuple[str, ...],
          labels: tuple[str, ...], no_cache: bool, quiet: bool, network: str, target: str,
          memory: str | None, cpus: str | None, pids_limit: int | None, context: str) -> int:
    """Build an image from a Dockerfile. CONTEXT is a local directory, or - for a
    Dockerfile on stdin and no context; -f - reads the Dockerfile from stdin (URLs are
    not supported)."""
    from .images.context import prepare
    args: dict[str, str] = {}
    for item in build_args:
        key, eq, value = item.partition("=")
        if not eq:                   # Docker: KEY alone takes the client's value
            if key not in os.environ:
                continue
            value = os.environ[key]
        args[key] = value
    label_map = dict(item.partition("=")[::2] for item in labels)
    if "://" in context or context.startswith("git@"):
        raise CliError(f"unable to prepare context: {context}: remote contexts are not "
                       f"supported; clone or download it and give the directory", 1)
    stdin_text = sys.stdin.read() if context == "-" or dockerfile == "-" else None
    try:
        text, name, spool = prepare(None if context == "-" else context,
                                    None if dockerfile == "-" else dockerfile, stdin_text)
    except SandboxError as e:
        raise CliError(f"unable to prepare context: {e.message}", 1) from None
    params: dict[str, Any] = {"dockerfile": text, "dockerfile_name": name,
                              "tags": list(tags), "build_args": args, "no_cache": no_cache,
                              "network": network, "target": target, "labels": label_map}
    for key, value in (("memory", memory), ("cpus", cpus), ("pids_limit", pids_limit)):
        if value is not None:
            params[key] = value
    with connection(_host()) as conn, spool:    # no model to import: a rebuild is quick
        attachment = conn.stream("image.build", params)
        while chunk := spool.read(1 << 20):
            attachment.send(chunk)
        attachment.close_stdin()
        for event, data in attachment:
            if event == "progress" and not quiet and isinstance(data, dict):
                sys.stdout.write(str(data.get("stream", "")))
                sys.stdout.flush()
        result = attachment.result()
    if quiet:
        click.echo(result["id"])
    return 0


@cli.command(context_settings=CONTEXT)
@option("-o", "--output", metavar="FILE", help="Write to a file, instead of STDOUT")
@argument("container", shell_complete=_complete_containers)
def export(output: str | None, container: str) -> int:
    """Export a container's filesystem as a tar archive (its image's layers and its
    changes, flattened)."""
    _stream_out("container.export", {"id": container}, output, "export container")
    return 0


# ---------------------------------------------------------------- system

# system.info's fields under the names ``docker info --format`` templates use.
_INFO_FIELDS = {
    "name": ("Name", ""), "server_version": ("ServerVersion", ""),
    "containers": ("Containers", 0), "running": ("ContainersRunning", 0),
    "paused": ("ContainersPaused", 0), "stopped": ("ContainersStopped", 0),
    "images": ("Images", 0), "kernel_version": ("KernelVersion", ""),
    "operating_system": ("OperatingSystem", ""), "os_type": ("OSType", "linux"),
    "architecture": ("Architecture", ""), "ncpu": ("NCPU", 0), "mem_total": ("MemTotal", 0),
    "cgroup_driver": ("CgroupDriver", "cgroupfs"), "cgroup_version": ("CgroupVersion", ""),
    "root_dir": ("DockerRootDir", ""), "default_runtime": ("DefaultRuntime", ""),
    "security_options": ("SecurityOptions", []), "warnings": ("Warnings", []),
}


@cli.command(context_settings=CONTEXT)
@option("-f", "--format", "fmt", metavar="TEMPLATE", help="Format output using a Go "
                                                                 "template")
def info(fmt: str | None) -> int:
    """Display system-wide information."""
    with _client() as client:
        data = client.info()
    if fmt:
        from .gotemplate import render_template
        document = {docker: data.get(ours, default)
                    for ours, (docker, default) in _INFO_FIELDS.items()}
        document["Driver"] = "overlay"
        click.echo(render_template(fmt, document))
        return 0
    from .render import bytes_size
    lines = [
        "Server:",
        f" Containers: {data.get('containers', 0)}",
        f"  Running: {data.get('running', 0)}",
        f"  Paused: {data.get('paused', 0)}",
        f"  Stopped: {data.get('stopped', 0)}",
        f" Images: {data.get('images', 0)}",
        f" Server Version: {data.get('server_version', '')}",
        " Storage Driver: overlay",
        f" Cgroup Driver: {data.get('cgroup_driver', 'cgroupfs')}",
        f" Cgroup Version: {data.get('cgroup_version', '')}",
        f" Default Runtime: {data.get('default_runtime', '')}",
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


@cli.command(context_settings=CONTEXT)
@option("-f", "--format", "fmt", metavar="TEMPLATE", help="Format output using a Go "
                                                                 "template")
def version(fmt: str | None) -> int:
    """Show the sbx and sandboxd version information."""
    import platform
    from . import __version__
    from .protocol import PROTOCOL_VERSION
    client_info = {"Version": __version__, "ApiVersion": str(PROTOCOL_VERSION),
                   "PythonVersion": platform.python_version(),
                   "Os": sys.platform, "Arch": platform.machine()}
    server_info: dict[str, Any] | None = None
    error: SandboxError | None = None
    try:
        with _client() as client:
            server_info = client.version()
    except SandboxError as e:
        error = e
    if fmt:
        from .gotemplate import render_template
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


# ---------------------------------------------------------------- management groups

@cli.group(cls=SbxGroup, context_settings=CONTEXT)
def container() -> None:
    """Manage containers."""


for _name, _func in (("run", run), ("create", create), ("start", start), ("stop", stop),
                     ("restart", restart), ("kill", kill), ("rm", rm), ("ls", ps), ("ps", ps),
                     ("logs", logs), ("exec", exec_), ("attach", attach),
                     ("inspect", inspect), ("wait", wait), ("top", top), ("stats", stats),
                     ("cp", cp), ("pause", pause), ("unpause", unpause), ("update", update),
                     ("rename", rename)):
    container.alias(_name, _func)


def _confirm_prune(what: str) -> bool:
    """Docker's prune prompt (on stderr, default no): True to go on."""
    click.echo(f"WARNING! This will remove {what}.", err=True)
    return click.confirm("Are you sure you want to continue?", default=False, err=True)


def _pruned(title: str, lines: Sequence[str], reclaimed: int | None = None) -> None:
    """Docker's prune report: ``title`` over what was removed, a line each, then the
    space freed (``reclaimed`` bytes; None: no such line)."""
    if lines:
        click.echo(title)
        for line in lines:
            click.echo(line)
        if reclaimed is not None:
            click.echo("")
    if reclaimed is not None:
        from .render import human_size
        click.echo(f"Total reclaimed space: {human_size(reclaimed)}")


@container.command(context_settings=CONTEXT)
@option("-f", "--force", is_flag=True, help="Do not prompt for confirmation")
@option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Provide filter values (e.g. 'label=<key>=<value>')")
def prune(force: bool, filters: tuple[str, ...]) -> int:
    """Remove all stopped containers."""
    if not force and not _confirm_prune("all stopped containers"):
        return 0
    parsed: dict[str, list[str]] = {}
    for item in filters:
        key, _, value = item.partition("=")
        parsed.setdefault(key, []).append(value)
    with _client() as client:
        result = client.containers.prune(parsed)
    _pruned("Deleted Containers:", result.get("removed") or [],
            result.get("space_reclaimed", 0))
    return 0


@cli.group(cls=SbxGroup, context_settings=CONTEXT)
def system() -> None:
    """Manage sandboxd."""


system.alias("info", info)


@system.command("df", context_settings=CONTEXT)
@option("-v", "--verbose", is_flag=True, help="Show detailed information on space usage")
@option("--format", "fmt", metavar="TEMPLATE", help="Format output using a Go template")
def system_df(verbose: bool, fmt: str | None) -> int:
    """Show disk usage: images (shared layers counted once) and containers' writable
    layers."""
    from .render import human_size
    with _client() as client:
        data = client.call("system.df", {})
    images, containers = data["images"], data["containers"]
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
        {"Type": "Local Volumes", "TotalCount": "0", "Active": "0", "Size": "0B",
         "Reclaimable": "0B"},
        {"Type": "Build Cache", "TotalCount": "0", "Active": "0", "Size": "0B",
         "Reclaimable": "0B"},
    ]
    if not verbose:
        _print_rows(fmt, rows, "table {{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}"
                    "\t{{.Reclaimable}}", {"Type": "TYPE", "TotalCount": "TOTAL",
                                           "Active": "ACTIVE", "Size": "SIZE",
                                           "Reclaimable": "RECLAIMABLE"})
        return 0
    click.echo("Images space usage:\n")
    _print_rows(None, [{"Repository": (t.rpartition(":")[0] if t else "<none>"),
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
    _print_rows(None, [{"ID": c["id"][:12], "Image": c["image"],
                        "Size": human_size(c["size"]), "Status": c["status"],
                        "Names": c["name"]} for c in containers],
                "table {{.ID}}\t{{.Image}}\t{{.Size}}\t{{.Status}}\t{{.Names}}",
                {"ID": "CONTAINER ID", "Image": "IMAGE", "Size": "SIZE",
                 "Status": "STATUS", "Names": "NAMES"})
    return 0


@cli.group(cls=SbxGroup, context_settings=CONTEXT)
def image() -> None:
    """Manage images."""


for _name, _func in (("import", import_), ("ls", images), ("rm", rmi), ("pull", pull),
                     ("push", push), ("load", load), ("save", save), ("tag", tag),
                     ("history", history), ("build", build)):
    image.alias(_name, _func)


@image.command("prune", context_settings=CONTEXT)
@option("-a", "--all", "all_unused", is_flag=True,
        help="Remove all unused images, not just dangling ones")
@option("-f", "--force", is_flag=True, help="Do not prompt for confirmation")
def image_prune(all_unused: bool, force: bool) -> int:
    """Remove unused images."""
    if not force and not _confirm_prune(
            "all images without at least one container associated to them"
            if all_unused else "all dangling images"):
        return 0
    with _client() as client:
        result = client.images.prune(all=all_unused)
    lines = [f"untagged: {t}" for t in result.get("untagged") or ()]
    lines += [f"deleted: {d}" for d in result.get("deleted") or ()]
    _pruned("Deleted Images:", lines, result.get("space_reclaimed", 0))
    return 0


@image.command("inspect", context_settings=CONTEXT)
@option("-f", "--format", "fmt", metavar="TEMPLATE",
              help="Format output using a Go template")
@argument("names", nargs=-1, required=True, shell_complete=_complete_images)
def image_inspect(fmt: str | None, names: tuple[str, ...]) -> int:
    """Display detailed information on one or more images."""
    return _inspect(fmt, "image", names)


@cli.group(cls=SbxGroup, context_settings=CONTEXT)
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
    from .api import _network_params
    with _client() as client:
        result = client.call("network.create", _network_params(
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
    from .model import NetworkRecord
    from .render import NETWORKS_TABLE, NETWORK_HEADERS, network_row
    parsed: dict[str, list[str]] = {}
    for item in filters:
        key, _, value = item.partition("=")
        parsed.setdefault(key, []).append(value)
    with _client() as client:
        result = client.call("network.list", {"filters": parsed})
    records = sorted((NetworkRecord.from_dict(n) for n in result["networks"]),
                     key=lambda n: n.name)
    if quiet:
        for n in records:
            click.echo(n.id if no_trunc else n.id[:12])
        return 0
    rows = [network_row(n, trunc=not no_trunc) for n in records]
    _print_rows(fmt, rows, NETWORKS_TABLE, NETWORK_HEADERS)
    return 0


@network.command("inspect", context_settings=CONTEXT)
@option("-f", "--format", "fmt", metavar="TEMPLATE",
              help="Format output using a Go template")
@argument("names", nargs=-1, required=True)
def network_inspect(fmt: str | None, names: tuple[str, ...]) -> int:
    """Display detailed information on one or more networks."""
    return _inspect(fmt, "network", names)


@network.command("rm", context_settings=CONTEXT)
@argument("names", nargs=-1, required=True)
def network_rm(names: tuple[str, ...]) -> int:
    """Remove one or more networks."""
    def remove(client: Any, name: str) -> str:
        client.call("network.remove", {"id": name})
        return name
    return _each(names, remove)


@network.command("prune", context_settings=CONTEXT)
@option("-f", "--force", is_flag=True, help="Do not prompt for confirmation")
@option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Provide filter values (accepted for Docker compatibility)")
def network_prune(force: bool, filters: tuple[str, ...]) -> int:
    """Remove all unused networks."""
    if not force and not _confirm_prune("all custom networks not used by at least one "
                                        "container"):
        return 0
    with _client() as client:
        removed = client.call("network.prune", {"filters": {}})["removed"]
    _pruned("Deleted Networks:", removed)       # Docker says no space for networks
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
    with _client() as client:
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
    with _client() as client:
        client.call("network.disconnect", {"id": network_name, "container": container,
                                           "force": force})
    return 0


network.alias("list", network_ls)
network.alias("remove", network_rm)


def _notebook() -> click.Command:
    from .cli_notebook import notebook       # its own module, imported when used
    return notebook


cli.builders["notebook"] = _notebook


# ---------------------------------------------------------------- entry point

def _usage_hint(ctx: click.Context | None) -> str:
    path = ctx.command_path if ctx is not None else "sbx"
    return f"See '{path} --help'."


def main(argv: list[str] | None = None) -> None:
    """The ``sbx`` console script: Docker's exit statuses and error wording."""
    try:
        status = cli.main(args=argv, prog_name="sbx", standalone_mode=False)
    except click.UsageError as e:
        # Docker exits 125 for flag and argument errors.
        message = e.format_message()
        click.echo(f"sbx: {message}\n{_usage_hint(e.ctx)}", err=True)
        sys.exit(EXIT_DAEMON)
    except click.ClickException as e:
        click.echo(f"sbx: {e.format_message()}", err=True)
        sys.exit(EXIT_DAEMON)
    except click.Abort:
        sys.exit(130)
    except REPORTED as e:
        sys.exit(report(e))
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()
