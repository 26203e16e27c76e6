"""``sbx notebook``: run Jupyter notebooks in a sandboxed session.

``sbx notebook run NB.ipynb`` executes every code cell in ONE container running one
IPython shell (state kept from cell to cell, magics, ``!`` and rich output as in a Jupyter
kernel) and writes the outputs and
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
                        workdir=workdir, ipython=True) as session:
            if not session.worker_info.get("ipython"):
                click.echo(f"sbx: image {image!r} has no IPython: cells run as plain "
                           f"Python (no magics, ! or get_ipython())", err=True)
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



@notebook.group("kernelspec", context_settings=CONTEXT)
def kernelspec() -> None:
    """Jupyter kernelspecs whose kernels run in sandboxd containers."""


@kernelspec.command("install", context_settings=CONTEXT)
@click.option("--name", default="python3-sandboxed", show_default=True,
              help="The kernelspec's name (what -k / kernel_name= ask for)")
@click.option("--display-name", default="Python 3 (sandboxed)", show_default=True,
              help="The name Jupyter's launchers show")
@click.option("--image", default="host", show_default=True,
              help="Image the kernels run in (it needs ipykernel; host: this Python's)")
@click.option("--python", default="", metavar="PATH",
              help="The interpreter inside the image (default: host: this Python; "
                   "another image: its python3)")
@click.option("-m", "--memory", metavar="BYTES", help="Memory limit (e.g. 1g)")
@click.option("--cpus", metavar="DECIMAL", help="Number of CPUs")
@click.option("--pids-limit", type=int, metavar="INT", help="Limit on processes")
@click.option("--network", "--net", "network", default="none", show_default=True,
              metavar="NETWORK", help="The kernels' network")
@click.option("-e", "--env", multiple=True, metavar="KEY[=VALUE]",
              help="Set environment variables in the kernels (KEY alone: its value in "
                   "the process that starts the kernel)")
@click.option("-v", "--volume", multiple=True, metavar="SRC:DST[:ro]",
              help="Bind mount a host path into the kernels")
@click.option("-w", "--workdir", default="", metavar="DIR",
              help="The kernels' working directory")
@click.option("--notebook-dir", type=click.Choice(["none", "ro", "rw"]), default="none",
              show_default=True,
              help="Show the directory a kernel is launched in (Jupyter's: the "
                   "notebook's) at its own path, read-only or read-write, and work there")
@click.option("--pool", type=int, default=0, metavar="N",
              help="Keep N started kernels ready in the process that launches them "
                   "(0-16; a launch then takes one in milliseconds)")
@click.option("--user", "scope", flag_value="user",
              help="Install for this user (~/.local/share/jupyter)")
@click.option("--sys-prefix", "scope", flag_value="sys-prefix",
              help="Install into this Python's prefix (a venv's share/jupyter)")
@click.option("--prefix", metavar="PREFIX", help="Install into PREFIX/share/jupyter")
def kernelspec_install(name: str, display_name: str, image: str, python: str,
                       memory: str | None, cpus: str | None, pids_limit: int | None,
                       network: str, env: tuple[str, ...], volume: tuple[str, ...],
                       workdir: str, notebook_dir: str, pool: int, scope: str | None, prefix: str | None
                       ) -> None:
    """Write a kernelspec that starts ipykernel in a sandboxd container with these
    limits (system-wide unless --user, --sys-prefix or --prefix)."""
    import json
    import tempfile

    try:
        from jupyter_client.kernelspec import KernelSpecManager

        from ipython_ext.provisioner import kernel_json
    except ImportError as e:
        raise click.ClickException(f"{e.name} is not installed: the kernelspec needs "
                                   f"jupyter_client (pip install jupyter_client ipykernel)"
                                   ) from None
    from ..errors import InvalidArgument

    if prefix and scope:
        raise click.ClickException(f"--prefix and --{scope} exclude each other")
    options = {"image": image, "python": python, "memory": memory, "cpus": _number(cpus),
               "pids_limit": pids_limit, "network": network, "env": list(env),
               "volumes": list(volume), "workdir": workdir, "notebook_dir": notebook_dir,
               "pool": pool,
               "host": _given_host()}
    # What is left at the provisioner's default is left out of the kernelspec.
    config = {k: v for k, v in options.items()
              if v not in (None, "", []) and (k, v) not in (("image", "host"),
                                                            ("network", "none"), ("pool", 0),
                                                            ("notebook_dir", "none"))}
    try:
        spec = kernel_json(config, display_name)
    except InvalidArgument as e:
        raise click.ClickException("; ".join(
            _as_flag(p) for p in e.details.get("problems") or [e.message])) from None
    with tempfile.TemporaryDirectory() as source:
        with open(f"{source}/kernel.json", "w", encoding="utf-8") as f:
            json.dump(spec, f, indent=1)
        try:
            target = KernelSpecManager().install_kernel_spec(
                source, name, user=scope == "user",
                prefix=sys.prefix if scope == "sys-prefix" else prefix)
        except ValueError as e:                     # a name Jupyter does not accept
            raise click.ClickException(str(e)) from None
        except OSError as e:
            raise click.ClickException(f"cannot write the kernelspec: {e.strerror or e}"
                                       f"{' (try --user)' if e.errno == 13 else ''}"
                                       ) from None
    click.echo(f"Installed kernelspec {name} ({display_name}) in {target}")


# the provisioner's config keys -> the flags that set them
FLAGS = {"image": "--image", "python": "--python", "memory": "--memory", "cpus": "--cpus",
         "pids_limit": "--pids-limit", "network": "--network", "env": "--env",
         "volumes": "--volume", "workdir": "--workdir", "host": "--host", "pool": "--pool"}


def _as_flag(problem: str) -> str:
    """A config problem (``memory: invalid size ...``) named by its flag."""
    key, sep, rest = problem.partition(": ")
    return f"{FLAGS[key]}: {rest}" if sep and key in FLAGS else problem


def _given_host() -> str | None:
    """``sbx -H URL``: the kernels use that daemon. Without it (or from $SANDBOXD_HOST)
    nothing is written: the process that starts a kernel finds its daemon itself."""
    root = click.get_current_context().find_root()
    if root.get_parameter_source("host") is click.core.ParameterSource.COMMANDLINE:
        return root.params.get("host")
    return None


def _number(text: str | None) -> float | int | str | None:
    """``--cpus 1.5`` as a number in the kernelspec (text the check then names)."""
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return text
    return int(value) if value is not None and value.is_integer() else value
