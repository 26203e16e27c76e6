"""``%%container`` and ``%container``: notebook cells in sandboxd containers.

Loaded by ``%load_ext ipython_ext`` or ``%load_ext sandboxd``. Defaults come from
traitlets config, e.g. in ``ipython_config.py``::

    c.ContainerMagics.image = "host"
    c.ContainerMagics.memory = "512m"
    c.ContainerMagics.timeout = 60.0
"""
from __future__ import annotations

import atexit
import sys
from collections.abc import Sequence
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Float, Int, List, Unicode

from .session import ExecuteReply, Session, run_script

# Options that shape the container: fixed when a session starts.
CONTAINER_OPTIONS = ("image", "memory", "cpus", "cpu_quota", "cpu_period", "pids",
                     "ulimit", "net", "link", "env", "volume")


class CellError(Exception):
    """A ``%%container`` cell failed inside its container. IPython shows the
    container's traceback (``_render_traceback_``), not this host-side frame."""

    def __init__(self, error: dict[str, Any]):
        super().__init__(f"{error['ename']}: {error['evalue']}")
        self.error = error
        self.ename = error["ename"]
        self.evalue = error["evalue"]

    def _render_traceback_(self) -> list[str]:
        return list(self.error["traceback"]) or [str(self)]


class Displayed:
    """A cell's final value, shown as IPython shows a value: its mime bundle as the
    execute_result (``Out[n]``)."""

    def __init__(self, data: dict[str, Any], metadata: dict[str, Any]):
        self.data = data
        self.metadata = metadata

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None
                          ) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.data, self.metadata

    def __repr__(self) -> str:
        return str(self.data.get("text/plain", ""))


def _names(text: str | None) -> list[str]:
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    bad = [n for n in names if not n.isidentifier()]
    if bad:
        raise UsageError(f"--in/--out take comma-separated variable names; not {bad}")
    return names


@magics_class
class ContainerMagics(Magics):
    """Run cells in fresh, limited containers, or in named container sessions."""

    image = Unicode("host", help="Image of containers started by %%container.").tag(
        config=True)
    memory = Unicode("", help="Default memory limit (e.g. '512m'; '' for none).").tag(
        config=True)
    cpus = Float(None, allow_none=True, help="Default CPU limit (e.g. 0.5).").tag(
        config=True)
    cpu_quota = Int(None, allow_none=True, help="Default CFS quota (µs).").tag(config=True)
    cpu_period = Int(None, allow_none=True, help="Default CFS period (µs).").tag(config=True)
    pids = Int(None, allow_none=True, help="Default limit on processes.").tag(config=True)
    ulimits = List(Unicode(), help="Default ulimits ('nofile=1024:2048').").tag(config=True)
    network = Unicode("none", help="Default network ('none', 'bridge', a name).").tag(
        config=True)
    env = List(Unicode(), help="Environment variables set in every container.").tag(
        config=True)
    volumes = List(Unicode(), help="Default bind mounts ('/host:/ctr[:ro]').").tag(
        config=True)
    timeout = Float(None, allow_none=True, help="Default per-cell timeout (s).").tag(
        config=True)
    interrupt_grace = Float(3.0, help="Seconds a cell gets to stop after SIGINT before "
                                      "its container is killed.").tag(config=True)
    host = Unicode("", help="sandboxd address (default: $SANDBOXD_HOST or the system "
                            "socket).").tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any):
        super().__init__(shell=shell, **kwargs)
        self.sessions: dict[str, Session] = {}
        self._client: Any = None
        atexit.register(self.close_all)

    # -- the daemon connection: one per kernel, a daemon session so that everything
    # started from this kernel is removed when the kernel's process goes away.
    @property
    def client(self) -> Any:
        if self._client is None:
            from sandboxd.api import Client
            self._client = Client(self.host or None, session=True)
        return self._client

    def close_all(self) -> None:
        """Stop every session and drop the connection (at kernel exit)."""
        for name in list(self.sessions):
            self.sessions.pop(name).close()
        if self._client is not None:
            client, self._client = self._client, None
            client.close()

    @magic_arguments()
    @argument("words", nargs="*", metavar="NAME | start NAME | stop NAME | ls",
              help="cell: run in session NAME (fresh container without); line: "
                   "'start NAME' starts a session with the options given, 'stop NAME' "
                   "removes it, 'ls' lists sessions")
    @argument("--image", help="image (default: c.ContainerMagics.image, 'host')")
    @argument("-m", "--memory", help="memory limit, e.g. 256m")
    @argument("--cpus", type=float, help="number of CPUs, e.g. 0.5")
    @argument("--cpu-quota", type=int, help="CFS quota in µs")
    @argument("--cpu-period", type=int, help="CFS period in µs")
    @argument("--pids", type=int, help="limit on processes")
    @argument("--ulimit", action="append", help="NAME=SOFT[:HARD] (repeatable)")
    @argument("--net", help="network: none (default), bridge, host, or a network name")
    @argument("--link", action="append", help="NAME:ALIAS link (repeatable)")
    @argument("-e", "--env", action="append", help="KEY=VALUE (repeatable)")
    @argument("-v", "--volume", action="append", help="/host:/ctr[:ro] (repeatable)")
    @argument("--timeout", type=float, help="seconds before the cell is interrupted")
    @argument("--shell", action="store_true", help="run the cell as a /bin/sh script")
    @argument("--in", dest="inputs", metavar="A,B",
              help="notebook variables sent into the cell (pickled)")
    @argument("--out", dest="outputs", metavar="X,Y",
              help="cell variables brought back (plain data only, never unpickled)")
    @argument("--no-raise", action="store_true",
              help="show a failing cell's traceback without raising in the notebook")
    @argument("--session", help="run in the named session (as %%%%container NAME)")
    @line_cell_magic
    def container(self, line: str, cell: str | None = None) -> Any:
        """Run a cell in a sandboxd container.

        ``%%container [options]``: the cell's Python runs in a fresh container, removed
        afterwards. Output streams live, the last expression is displayed, an exception
        raises here (unless ``--no-raise``).

        ``%container start NAME [options]``, then ``%%container NAME``: cells run in one
        long-lived container with state kept between them. ``%container ls``,
        ``%container stop NAME``. Sessions end with the kernel.
        """
        args = parse_argstring(self.container, line)
        if cell is None:
            return self._line(args)
        words = list(args.words)
        if args.session:
            words.insert(0, args.session)
        if len(words) > 1:
            raise UsageError(f"%%container takes at most one session name, not {words}")
        if words:
            return self._in_session(words[0], args, cell)
        return self._fresh(args, cell)

    # -- line forms
    def _line(self, args: Any) -> Any:
        words = list(args.words)
        command = words[0] if words else ""
        if command == "ls" and len(words) == 1:
            self._list()
            return None
        if command == "start" and len(words) == 2:
            self._start(words[1], args)
            return None
        if command == "stop" and len(words) == 2:
            self._stop(words[1])
            return None
        raise UsageError("usage: %container start NAME [options] | %container stop NAME "
                         "| %container ls (or %%container [NAME] [options] on a cell)")

    def _start(self, name: str, args: Any) -> None:
        if name in self.sessions and self.sessions[name].alive:
            raise UsageError(f"session {name!r} is running already; stop it first with "
                             f"%container stop {name}")
        session = Session(self.client, **self._container_options(args),
                          interrupt_grace=self.interrupt_grace)
        session.start()
        self.sessions[name] = session
        print(f"session {name!r} started (image {session.image}, container "
              f"{session.container_id[:12]})")

    def _stop(self, name: str) -> None:
        session = self.sessions.pop(name, None)
        if session is None:
            raise UsageError(f"no session {name!r}; see %container ls")
        session.close()
        print(f"session {name!r} stopped")

    def _list(self) -> None:
        rows = [("NAME", "IMAGE", "CONTAINER", "STATUS", "CELLS")]
        for name, s in self.sessions.items():
            rows.append((name, s.image, s.container_id[:12],
                         "running" if s.alive else "exited", str(s.execution_count)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())

    # -- cells
    def _container_options(self, args: Any) -> dict[str, Any]:
        """The options given on the line, over the configured defaults."""
        def pick(value: Any, default: Any) -> Any:
            return default if value is None else value
        return {"image": pick(args.image, self.image),
                "memory": pick(args.memory, self.memory) or None,
                "cpus": pick(args.cpus, self.cpus),
                "cpu_quota": pick(args.cpu_quota, self.cpu_quota),
                "cpu_period": pick(args.cpu_period, self.cpu_period),
                "pids": pick(args.pids, self.pids),
                "ulimits": [*self.ulimits, *(args.ulimit or ())],
                "network": pick(args.net, self.network),
                "links": list(args.link or ()),
                "env": [*self.env, *(args.env or ())],
                "volumes": [*self.volumes, *(args.volume or ())]}

    def _inputs(self, args: Any) -> dict[str, Any]:
        names = _names(args.inputs)
        missing = [n for n in names if n not in self.shell.user_ns]
        if missing:
            raise UsageError(f"--in: no variable {', '.join(missing)} in the notebook")
        return {n: self.shell.user_ns[n] for n in names}

    def _fresh(self, args: Any, cell: str) -> Any:
        options = self._container_options(args)
        timeout = args.timeout if args.timeout is not None else self.timeout
        if args.shell:
            if args.inputs or args.outputs:
                raise UsageError("--in/--out need Python: not with --shell")
            image = options.pop("image")
            reply = run_script(self.client, cell, image, on_output=self._show,
                               timeout=timeout, interrupt_grace=self.interrupt_grace,
                               **options)
            return self._finish(reply, args)
        inputs = self._inputs(args)
        session = Session(self.client, **options, interrupt_grace=self.interrupt_grace)
        try:
            session.start()
            reply = session.execute(cell, self._show, timeout, inputs,
                                    _names(args.outputs))
        finally:
            session.close(wait=False)       # the daemon removes it; the cell is done
        return self._finish(reply, args)

    def _in_session(self, name: str, args: Any, cell: str) -> Any:
        given = [o.replace("_", "-") for o in CONTAINER_OPTIONS
                 if getattr(args, o, None) not in (None, [])]
        if given:
            raise UsageError(f"--{', --'.join(given)}: a session's container options are "
                             f"set by %container start {name}, not per cell")
        session = self.sessions.get(name)
        if session is None:
            raise UsageError(f"no session {name!r}; start one with %container start {name}")
        timeout = args.timeout if args.timeout is not None else self.timeout
        reply = session.execute(cell, self._show, timeout, self._inputs(args),
                                _names(args.outputs), shell=args.shell)
        return self._finish(reply, args)

    def _show(self, output: dict[str, Any]) -> None:
        """Live output: streams to this kernel's stdout/stderr, displays published as
        display data. The final value and the error wait for the cell's end."""
        kind = output["output_type"]
        if kind == "stream":
            stream = sys.stderr if output["name"] == "stderr" else sys.stdout
            stream.write(output["text"])
            stream.flush()
        elif kind == "display_data":
            from IPython.display import publish_display_data
            publish_display_data(output["data"], output["metadata"])
        elif kind == "clear_output":
            from IPython.display import clear_output
            clear_output(wait=output["wait"])

    def _finish(self, reply: ExecuteReply, args: Any) -> Any:
        if reply.values:
            self.shell.user_ns.update(reply.values)
        if reply.error is not None:
            if not args.no_raise:
                raise CellError(reply.error)
            print("\n".join(reply.error["traceback"]), file=sys.stderr)
        for output in reply.outputs:
            if output["output_type"] == "execute_result":
                return Displayed(output["data"], output["metadata"])
        return None


def load(ip: Any) -> None:
    magics = ContainerMagics(shell=ip, parent=ip)   # parent: picks up c.ContainerMagics
    ip.register_magics(magics)
    ip._sandboxd_magics = magics


def unload(ip: Any) -> None:
    magics = getattr(ip, "_sandboxd_magics", None)
    if magics is not None:
        magics.close_all()
        atexit.unregister(magics.close_all)
        del ip._sandboxd_magics


__all__: Sequence[str] = ("ContainerMagics", "CellError", "Displayed", "load", "unload")
