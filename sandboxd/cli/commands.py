"""The click app: every command group of ``sbx`` on the root group, in Docker's help
order, and its entry point (Docker's exit statuses and error wording).

The top-level commands join the root group as their modules are imported (containers,
images, system: the order ``sbx --help`` lists them); the management groups are added
below, then ``volume`` and ``notebook``, whose modules are imported only when used.
"""
from __future__ import annotations

import sys

import click

from . import containers, images, networks, system
from .app import sbx
from .common import EXIT_DAEMON, REPORTED, command_of, report

for _group in (containers.container, system.system, images.image, networks.network):
    sbx.add_command(_group)


def _volume() -> click.Command:
    from .volumes import volume          # its own module, imported when used
    return volume


sbx.builders["volume"] = _volume


def _notebook() -> click.Command:
    from .notebook import notebook       # its own module, imported when used
    return notebook


sbx.builders["notebook"] = _notebook


# ---------------------------------------------------------------- entry point

def _usage_hint(ctx: click.Context | None) -> str:
    path = ctx.command_path if ctx is not None else "sbx"
    return f"See '{path} --help'."


def main(argv: list[str] | None = None) -> None:
    """The ``sbx`` console script: Docker's exit statuses and error wording."""
    try:
        status = sbx.main(args=argv, prog_name="sbx", standalone_mode=False)
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
        sys.exit(report(e, command_of(sys.argv[1:] if argv is None else argv)))
    sys.exit(status if isinstance(status, int) else 0)

