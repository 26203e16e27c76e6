"""``sbx notebook``: run Jupyter notebooks in a sandboxed session.

``sbx notebook run NB.ipynb`` executes every code cell in ONE container running one
interpreter (state kept from cell to cell, as in Jupyter) and writes the outputs and
execution counts into the notebook (in place, or to ``-o OUT.ipynb``; ``-o -`` is
stdout). Exit status: 0 when every cell ran, 1 when a cell failed (the notebook is still
written, with the error in that cell), 130 when Ctrl-C interrupted a cell (written too),
125 when sandboxd or the notebook file refused.

``sbx`` imports this module only when the command is used; nbformat, the session and the
client come in inside the command (``sbx notebook --help`` needs none of them).
"""
from __future__ import annotations

import sys

import click

from .app import CONTEXT

# A ClickException is what main() turns into "sbx: <message>" and exit 125.
EXIT_CELL_FAILED = 1
EXIT_INTERRUPTED = 130


@click.group(context_settings=CONTEXT)
def notebook() -> None:
    """Run Jupyter notebooks in sandboxes."""


@notebook.command("run", context_settings=CONTEXT)
@click.option("-o", "--output", metavar="FILE",
              help="Write the executed notebook here ('-' for stdout) instead of in place")
@click.option("--image", default="host", show_default=True,
              help="Image whose Python runs the cells")
@click.option("-m", "--memory", metavar="BYTES", help="Memory limit (e.g. 512m)")
@click.option("--cpus", metavar="DECIMAL", help="Number of CPUs")
@click.option("--pids-limit", type=int, metavar="INT", help="Tune container pids limit")
@click.option("--network", "--net", "network", default="none", show_default=True,
              metavar="NETWORK", help="Connect the session's container to a network")
@click.option("-e", "--env", multiple=True, metavar="KEY[=VALUE]",
              help="Set environment variables")
@click.option("--env-file", multiple=True, metavar="FILE",
              help="Read in a file of environment variables")
@click.option("-v", "--volume", multiple=True, metavar="SRC:DST[:ro]",
              help="Bind mount a host path")
@click.option("-w", "--workdir", default="", metavar="DIR",
              help="Working directory of the cells inside the container")
@click.option("--cell-timeout", type=float, metavar="SECONDS",
              help="Stop the run when one cell takes longer than this")
@click.option("--timeout", type=float, metavar="SECONDS",
              help="Stop the run when all cells together take longer than this")
@click.option("--allow-errors", is_flag=True,
              help="Keep going after a cell raises (its error is recorded); exit 0")
@click.argument("path", metavar="NOTEBOOK", type=click.Path(dir_okay=False))
def notebook_run(path: str, output: str | None, image: str, memory: str | None,
                 cpus: str | None, pids_limit: int | None, network: str,
                 env: tuple[str, ...], env_file: tuple[str, ...], volume: tuple[str, ...],
                 workdir: str, cell_timeout: float | None, timeout: float | None,
                 allow_errors: bool) -> int:
    """Execute a notebook's code cells in one sandboxed session and save the outputs."""
    from ipython_ext.notebooks import (NotebookError, code_cells, dumps_notebook,
                                       read_notebook, run_notebook, write_notebook)
    from ipython_ext.session import Session

    from ..api import Client
    from ..envfile import resolve_env
    from ..errors import CommandNotExecutable, CommandNotFound, InvalidArgument

    for name, value in (("--cell-timeout", cell_timeout), ("--timeout", timeout)):
        if value is not None and value <= 0:
            raise click.ClickException(
                f"{name} must be a positive number of seconds, got {value:g}")
    try:
        environment = resolve_env(env_file, env)
        nb = read_notebook(path)
    except InvalidArgument as e:
        raise click.ClickException(e.message) from None
    except NotebookError as e:
        raise click.ClickException(str(e)) from None
    host = click.get_current_context().find_root().params.get("host")
    # A session connection: if sbx is killed, the daemon removes the container.
    try:
        with Client(host, session=True) as client, \
                Session(client, image, memory=memory, cpus=cpus, pids=pids_limit,
                        network=network, env=environment, volumes=volume,
                        workdir=workdir) as session:
            run = run_notebook(nb, session, cell_timeout=cell_timeout, timeout=timeout,
                               allow_errors=allow_errors)
    except (CommandNotFound, CommandNotExecutable) as e:
        # Docker's 127/126 are about the user's command; here it is our worker's Python.
        raise click.ClickException(f"image {image!r} cannot run the notebook: "
                                   f"{e.message} (it needs a Python)") from None
    target = output or path
    try:
        if target == "-":
            sys.stdout.write(dumps_notebook(nb))
        else:
            write_notebook(nb, target)
    except NotebookError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot write {target!r}: {e.strerror or e}") from None
    for failure in run.failures:
        if failure.expected:
            click.echo(f"sbx: allowed error in cell {failure.index}: {failure.ename}: "
                       f"{failure.evalue}", err=True)
    if run.stopped_at is not None:
        click.echo(f"sbx: {run.stopped_at.describe()}", err=True)
        skipped = sum(1 for i, _ in code_cells(nb) if i > run.stopped_at.index)
        if skipped:
            click.echo(f"sbx: {skipped} later code cell(s) not run", err=True)
        # Ctrl-C reached the cell as SIGINT (the session passes it on): 130, as a shell
        # reports an interrupted command; the notebook shows where it stopped.
        interrupted = run.stopped_at.reason == "interrupt"
        return EXIT_INTERRUPTED if interrupted else EXIT_CELL_FAILED
    return 0

