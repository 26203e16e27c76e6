"""The click side of ``sbx``: the root group, commands built on first use, and the
helpers the command groups share (the client, multi-container actions, rows, inspect,
prune reports).

Start-up time matters: this module imports only click at load time; the client, the
model and json come in inside commands.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import click

from ..version import __version__
from ..errors import SandboxError
from .common import ReaderGone

CONTEXT = {"help_option_names": ["--help"], "max_content_width": 100}
# Options belong to sbx up to the image / container; everything after is the command's.
ARGS_AFTER = {**CONTEXT, "allow_interspersed_args": False}


# ---------------------------------------------------------------- plumbing

def daemon_host() -> str | None:
    return click.get_current_context().find_root().params.get("host")


def open_client(autostart: bool | None = None) -> Any:
    from ..api import Client
    return Client(daemon_host(), autostart=autostart)


def complete_containers(ctx: click.Context, param: click.Parameter, incomplete: str
                         ) -> list[str]:
    """Names and ids of existing containers, when a daemon is already running."""
    try:
        from ..api import Client
        with Client(ctx.find_root().params.get("host"), autostart=False) as client:
            records = [c.record for c in client.containers.list(all=True)]
    except Exception:            # completion must never fail loudly
        return []
    words = [r.name for r in records] + [r.id[:12] for r in records]
    return [w for w in words if w.startswith(incomplete)]


def complete_images(ctx: click.Context, param: click.Parameter, incomplete: str
                     ) -> list[str]:
    try:
        from ..api import Client
        with Client(ctx.find_root().params.get("host"), autostart=False) as client:
            tags = [t for image in client.images.list() for t in image.tags]
    except Exception:
        return []
    return [t for t in tags if t.startswith(incomplete)]


def each(names: tuple[str, ...], action: Callable[[Any, str], Any]) -> int:
    """Docker's multi-container commands: act on each, report each failure, exit 1 if
    any failed."""
    status = 0
    with open_client() as client:
        for name in names:
            try:
                output = action(client, name)
            except SandboxError as e:
                label = "Error response from daemon: " if e.from_daemon else "sbx: "
                click.echo(f"{label}{e.message}", err=True)
                status = 1
            else:
                if output is not None:
                    click.echo(output)
    return status


def container_op(op: str, **params: Any) -> Callable[[Any, str], str]:
    """An action for :func:`each`: call ``op`` on the container, echo its name."""
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

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError as e:
            raise ReaderGone() from e         # past click's own EPIPE handling (common.py)


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"sbx version {__version__}")
        ctx.exit()


@click.group(cls=SbxGroup, context_settings=CONTEXT)
@click.option("-H", "--host", envvar="SANDBOXD_HOST", metavar="URL",
              help="Daemon socket to connect to (unix:///path).")
@click.option("-v", "--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="Print version information and quit")
def sbx(host: str | None) -> None:
    """Run fresh, strictly limited Linux containers (sandboxd)."""


# ---------------------------------------------------------------- shared output

def print_rows(fmt: str | None, rows: list[dict[str, Any]], default: str,
                headers: dict[str, str]) -> None:
    from ..render import format_table
    if fmt == "json":
        import json
        for row in rows:
            click.echo(json.dumps({k: v for k, v in row.items() if not callable(v)}))
        return
    template = default if not fmt or fmt == "table" else fmt
    click.echo(format_table(template, rows, headers), nl=False)


def print_inspect(fmt: str | None, kind: str | None, names: tuple[str, ...]) -> int:
    import json
    from ..gotemplate import render_template
    from ..errors import NotFound
    documents, status = [], 0
    with open_client() as client:
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
    """Docker's lookup order without ``--type``: container, image, network, volume."""
    from ..model import ContainerRecord, ImageRecord, NetworkRecord
    from ..render import image_document, inspect_document, network_document
    from ..errors import InvalidArgument, NotFound
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
    if kind in (None, "network"):
        try:
            network = client.call("network.inspect", {"id": name})
            return network_document(NetworkRecord.from_dict(network))
        except NotFound:
            if kind == "network":
                raise
    return client.call("volume.inspect", {"name": name})    # Docker's own document


def confirm_prune(what: str) -> bool:
    """Docker's prune prompt (on stderr, default no): True to go on."""
    click.echo(f"WARNING! This will remove {what}.", err=True)
    return click.confirm("Are you sure you want to continue?", default=False, err=True)


def print_pruned(title: str, lines: Sequence[str], reclaimed: int | None = None) -> None:
    """Docker's prune report: ``title`` over what was removed, a line each, then the
    space freed (``reclaimed`` bytes; None: no such line)."""
    if lines:
        click.echo(title)
        for line in lines:
            click.echo(line)
        if reclaimed is not None:
            click.echo("")
    if reclaimed is not None:
        from ..render import human_size
        click.echo(f"Total reclaimed space: {human_size(reclaimed)}")
