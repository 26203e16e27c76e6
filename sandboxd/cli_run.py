"""``sbx run`` and ``sbx create`` without click, and the attached I/O every command shares.

``sbx run`` starts once per container in scripts, and importing click alone costs ~20 ms,
more than the container. So the flags of run/create are one table here (:data:`FLAGS`):
``cli.py`` builds its click options from it, and :func:`fast_main` (the ``sbx`` console
script) parses the same table itself when the command line is plain. Anything it does
not fully understand (help, completion, other commands, a bad flag or value) goes to the
click app, so errors and help read the same whichever path a line takes.

This module imports only the standard library's os and sys at load time.
"""
from __future__ import annotations

import os
import sys
from .errors import (CommandNotExecutable, CommandNotFound, InvalidArgument, SandboxError,
                     Unavailable)

TYPE_CHECKING = False
if TYPE_CHECKING:                    # annotations only: typing costs ~2 ms of every start
    from collections.abc import Callable, Sequence
    from typing import Any, BinaryIO, TextIO

    from .client import Connection, Stream

EXIT_DAEMON = 125        # Docker: the daemon (or the flags) refused


class CliError(Exception):
    """A client-side failure with Docker's wording and exit status."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status
        # Inside a click command its path ("sbx container run"), read now: it is gone
        # once main() catches this. click is only asked when it is loaded already;
        # :func:`fast_main` names its command itself.
        click = sys.modules.get("click")
        ctx = click.get_current_context(silent=True) if click is not None else None
        self.command_path = ctx.command_path if ctx is not None else "sbx"


# ---------------------------------------------------------------- the flags

class Flag:
    """One flag of run/create. ``kind``: ``flag`` (on/off), ``str``, ``int``, ``float``,
    ``multi`` (repeatable, a tuple of strings) or ``pair`` (``--x/--no-x``)."""

    __slots__ = ("decls", "dest", "kind", "default", "metavar", "help")

    def __init__(self, *decls: str, kind: str = "str", dest: str = "",
                 default: Any = None, metavar: str | None = None, help: str = ""):
        self.decls = decls
        # click's rule: the first long name (the "on" half of a pair), else the first.
        names = [d.split("/")[0] for d in decls]
        name = next((n for n in names if n.startswith("--")), names[0])
        self.dest = dest or name.lstrip("-").replace("-", "_")
        self.kind = kind
        self.default = {"flag": False, "multi": ()}.get(kind, default)
        self.metavar = metavar
        self.help = help


FLAGS: tuple[Flag, ...] = (
    Flag("-i", "--interactive", kind="flag", help="Keep STDIN open even if not attached"),
    Flag("-t", "--tty", kind="flag", help="Allocate a pseudo-TTY"),
    Flag("--name", metavar="NAME", help="Assign a name to the container"),
    Flag("-e", "--env", kind="multi", metavar="KEY[=VALUE]",
         help="Set environment variables"),
    Flag("--env-file", kind="multi", metavar="FILE",
         help="Read in a file of environment variables"),
    Flag("-v", "--volume", kind="multi", metavar="SRC:DST[:ro]", help="Bind mount a host path"),
    Flag("--tmpfs", kind="multi", metavar="PATH[:OPTS]",
         help="Mount a tmpfs directory (size=1g unless OPTS give one)"),
    Flag("-w", "--workdir", default="", metavar="DIR",
         help="Working directory inside the container"),
    Flag("-u", "--user", default="", metavar="USER[:GROUP]",
         help="Username or UID (format: <name|uid>[:<group|gid>])"),
    Flag("-h", "--hostname", default="", metavar="NAME", help="Container host name"),
    Flag("-m", "--memory", metavar="BYTES", help="Memory limit (e.g. 64m)"),
    Flag("--memory-swap", metavar="BYTES",
         help="Swap limit equal to memory plus swap: '-1' to enable unlimited swap"),
    Flag("--cpus", metavar="DECIMAL", help="Number of CPUs"),
    Flag("--cpu-period", kind="int", metavar="INT",
         help="Limit CPU CFS (Completely Fair Scheduler) period"),
    Flag("--cpu-quota", kind="int", metavar="INT",
         help="Limit CPU CFS (Completely Fair Scheduler) quota"),
    Flag("-c", "--cpu-shares", kind="int", metavar="INT", help="CPU shares (relative weight)"),
    Flag("--pids-limit", kind="int", metavar="INT",
         help="Tune container pids limit (set -1 for unlimited)"),
    Flag("--ulimit", kind="multi", metavar="NAME=SOFT[:HARD]", help="Ulimit options"),
    Flag("--uts", default="", metavar="MODE", help="UTS namespace to use"),
    Flag("--ipc", default="", metavar="MODE", help="IPC mode to use"),
    Flag("--pid", default="", metavar="MODE", help="PID namespace to use"),
    Flag("--network", "--net", dest="network", default="default", metavar="NETWORK",
         help="Connect a container to a network"),
    Flag("--ip", default="", metavar="IP",
         help="IPv4 address (e.g., 172.30.100.104) on a user network"),
    Flag("--link", kind="multi", metavar="NAME[:ALIAS]", help="Add link to another container"),
    Flag("-p", "--publish", kind="multi", metavar="[IP:]HOST:CTR[/PROTO]",
         help="Publish a container's port(s) to the host"),
    Flag("-P", "--publish-all", kind="flag", help="Publish all exposed ports to random ports"),
    Flag("--expose", kind="multi", metavar="PORT[/PROTO]",
         help="Expose a port or a range of ports"),
    Flag("--read-only", kind="flag",
         help="Mount the container's root filesystem as read only"),
    Flag("--init", kind="flag",
         help="Run an init inside the container that forwards signals and reaps processes"),
    Flag("--cap-add", kind="multi", metavar="CAP", help="Add Linux capabilities"),
    Flag("--cap-drop", kind="multi", metavar="CAP", help="Drop Linux capabilities"),
    Flag("--security-opt", kind="multi", metavar="OPT",
         help="Security options (seccomp=unconfined|PROFILE.json, no-new-privileges)"),
    Flag("--privileged", kind="flag",
         help="Give extended privileges to this container (all capabilities, no seccomp, "
              "no masked paths)"),
    Flag("-l", "--label", kind="multi", metavar="KEY[=VALUE]",
         help="Set meta data on a container"),
    Flag("--entrypoint", metavar="CMD", help="Overwrite the default ENTRYPOINT of the image"),
    Flag("--stop-signal", default="SIGTERM", metavar="SIGNAL",
         help="Signal to stop the container"),
    Flag("--stop-timeout", kind="int", metavar="SECONDS",
         help="Timeout (in seconds) to stop a container"),
    Flag("--timeout", kind="float", metavar="SECONDS",
         help="Kill the container after this many seconds (sandboxd)"),
    Flag("--storage-opt", kind="multi", metavar="size=SIZE",
         help="Cap the writable layer, e.g. size=20G [default: the daemon's, 10G]"),
    Flag("--log-driver", default="", metavar="DRIVER",
         help="Logging driver: json-file, local or none [default: the daemon's]"),
    Flag("--log-opt", kind="multi", metavar="KEY=VALUE",
         help="Log driver options: max-size=SIZE, max-file=N [default: 20m, 5]"),
    Flag("--rm", kind="flag", dest="auto_remove",
         help="Automatically remove the container when it exits"),
)

RUN_ONLY: tuple[Flag, ...] = (
    Flag("-d", "--detach", kind="flag", help="Run container in background and print container ID"),
    Flag("--sig-proxy/--no-sig-proxy", kind="pair", default=True,
         help="Proxy received signals to the process"),
)

_CONVERT: dict[str, Callable[[str], Any]] = {"str": str, "int": int, "float": float}


def parse_flags(args: Sequence[str], flags: Sequence[Flag]
                ) -> tuple[dict[str, Any], list[str]] | None:
    """``args`` after the command name as click parses them (options up to the first
    argument, ``--`` ends them, clustered short flags, ``-mVALUE``, ``--name=VALUE``):
    the values by dest, and the arguments. None when anything is not plain, so the
    caller hands the line to click for its error or help."""
    by_name: dict[str, tuple[Flag, bool]] = {}
    for flag in flags:
        for decl in flag.decls:
            on, _, off = decl.partition("/")
            by_name[on] = (flag, True)
            if off:
                by_name[off] = (flag, False)
    values: dict[str, Any] = {f.dest: f.default for f in flags}

    def store(flag: Flag, value: str) -> bool:
        if flag.kind == "multi":
            values[flag.dest] = (*values[flag.dest], value)
            return True
        try:
            values[flag.dest] = _CONVERT[flag.kind](value)
        except ValueError:
            return False
        return True

    i = 0

    def value_of(attached: str | None) -> str | None:
        """The value written in this word, else the next word (click takes it even when
        it starts with a dash); None at the end of the line."""
        nonlocal i
        if attached is not None:
            return attached
        i += 1
        return args[i] if i < len(args) else None

    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if arg[:1] != "-" or arg == "-" or arg == "--help":
            break
        if arg.startswith("--"):
            name, eq, attached = arg.partition("=")
            found = by_name.get(name)
            if found is None or (eq and found[0].kind in ("flag", "pair")):
                return None
            if found[0].kind in ("flag", "pair"):
                values[found[0].dest] = found[1]
            else:
                value = value_of(attached if eq else None)
                if value is None or not store(found[0], value):
                    return None
        else:
            for j in range(1, len(arg)):         # -it, -itm64m, -p 80
                found = by_name.get("-" + arg[j])
                if found is None:
                    return None
                if found[0].kind == "flag":
                    values[found[0].dest] = found[1]
                    continue
                value = value_of(arg[j + 1:] or None)
                if value is None or not store(found[0], value):
                    return None
                break
        i += 1
    if i < len(args) and args[i] == "--help":
        return None
    return values, list(args[i:])


# ---------------------------------------------------------------- run / create

def local(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Client-side parsing: a bad value is a usage error (exit 125), not the daemon's."""
    try:
        return func(*args, **kwargs)
    except InvalidArgument as e:
        raise CliError(e.message, EXIT_DAEMON) from None


def daemon_options(opts: dict[str, Any], image: str, command: Sequence[str]
                   ) -> dict[str, Any]:
    """Flags -> the ``options`` of ``container.create``/``run``: the daemon builds and
    checks them (``flags.build_config``, the one model), so ``sbx`` does not import it;
    only ``-e``/``--env-file``, which read this machine, are resolved here."""
    from .envfile import resolve_env
    security_opt = opts["security_opt"]
    if security_opt:                 # json and the profile reader only when asked
        from .securityopt import read_security_opt
        security_opt = local(read_security_opt, security_opt)
    return {
        "image": image, "cmd": list(command) or None, "entrypoint": opts["entrypoint"],
        "env": local(resolve_env, opts["env_file"], opts["env"]),
        "workdir": opts["workdir"], "user": opts["user"], "hostname": opts["hostname"],
        "tty": opts["tty"], "open_stdin": opts["interactive"], "labels": opts["label"],
        "expose": opts["expose"], "stop_signal": opts["stop_signal"],
        "stop_timeout": opts["stop_timeout"], "memory": opts["memory"],
        "memory_swap": opts["memory_swap"], "cpus": opts["cpus"],
        "cpu_quota": opts["cpu_quota"], "cpu_period": opts["cpu_period"],
        "cpu_shares": opts["cpu_shares"], "pids_limit": opts["pids_limit"],
        "ulimits": opts["ulimit"], "uts_mode": opts["uts"], "ipc_mode": opts["ipc"],
        "pid_mode": opts["pid"], "network_mode": opts["network"], "ip": opts["ip"],
        "links": opts["link"],
        "ports": opts["publish"], "publish_all_ports": opts["publish_all"],
        "volumes": opts["volume"], "tmpfs": opts["tmpfs"],
        "read_only": opts["read_only"], "init": opts["init"], "cap_add": opts["cap_add"],
        "cap_drop": opts["cap_drop"], "auto_remove": opts["auto_remove"],
        "security_opt": security_opt,
        "privileged": opts["privileged"],
        "timeout": opts["timeout"], "storage_opt": opts["storage_opt"],
        "log_driver": opts["log_driver"], "log_opts": opts["log_opt"]}


class RefusedOptions:
    """The daemon refusing run/create's flags: Docker's wording, exit 125 and hint
    (a class, not contextlib: that import alone costs ~1 ms of every start)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, InvalidArgument):
            raise CliError(f"Error response from daemon: {exc.message}", EXIT_DAEMON) from None
        return False


def connection(host: str | None, autostart: bool | None = None) -> Connection:
    """The bare protocol connection (``sandboxd.client``), for the commands that need
    no model: run and create stay quick to start."""
    from .client import connect
    return connect(host, autostart=autostart)


def check_tty(tty: bool, interactive: bool) -> None:
    if tty and interactive and not os.isatty(0):
        raise CliError("the input device is not a TTY", 1)


def run(host: str | None, image: str, command: Sequence[str], opts: dict[str, Any]
        ) -> int:
    """``sbx run``: create, start and attach (or ``-d``: print the id); the container's
    exit status."""
    detach = bool(opts["detach"])
    if not detach:
        check_tty(bool(opts["tty"]), bool(opts["interactive"]))
    params: dict[str, Any] = {
        "options": daemon_options(opts, image, command),
        "stdin": bool(opts["interactive"]) and not detach,
        "remove": opts["auto_remove"], "detach": detach}
    if opts["name"] is not None:
        params["name"] = opts["name"]
    with connection(host) as conn, RefusedOptions():
        attachment = conn.stream("container.run", params)
        if detach:
            result = follow(attachment, Progress(
                sys.stderr, first=f"Unable to find image '{image}' locally"))
            print(result["id"])
            return 0
        result = pump(attachment, host=host, tty=bool(opts["tty"]),
                      stdin=bool(opts["interactive"]), sig_proxy=bool(opts["sig_proxy"]),
                      image=image)
    if result.get("timed_out"):
        print(f"sbx: container {result.get('id', '')[:12]} timed out after "
              f"{opts['timeout']:g} seconds and was killed", file=sys.stderr)
    return int(result.get("exit_code", 0))


def create(host: str | None, image: str, command: Sequence[str], opts: dict[str, Any]
           ) -> int:
    """``sbx create``: print the new container's id."""
    params: dict[str, Any] = {"options": daemon_options(opts, image, command)}
    if opts["name"] is not None:
        params["name"] = opts["name"]
    with connection(host) as conn, RefusedOptions():
        print(conn.call("container.create", params)["id"])
    return 0


# ---------------------------------------------------------------- attached I/O

def write(stream: BinaryIO, data: bytes) -> None:
    stream.write(data)
    stream.flush()


def pump(attachment: Stream, *, host: str | None, tty: bool, stdin: bool, sig_proxy: bool,
         container_id: str = "", image: str = "") -> Any:
    """Stream a container's output to ours until it ends; with ``stdin`` forward our
    input; with ``tty`` put our terminal in raw mode (restored on the way out) and pass
    on window-size changes. The pull of a missing ``image`` (``run``) shows its
    progress on stderr. Returns the op's final result."""
    import signal
    import threading

    state = {"id": container_id}
    raw_tty = tty and stdin and os.isatty(0)
    saved_tty = None
    old_handlers: dict[int, Any] = {}

    def size() -> tuple[int, int]:
        cols, rows = os.get_terminal_size(0 if os.isatty(0) else 1)
        return rows, cols

    def forward_input() -> None:
        try:
            while data := os.read(0, 65536):
                attachment.send(data)
            attachment.close_stdin()
        except (OSError, SandboxError):
            return               # the op ended under us: nothing more to forward

    # Signal handlers run in this (the main) thread between reads of the stream; the
    # connection serialises sends, so they may send directly.
    def resize() -> None:
        rows, cols = size()
        if rows and cols:           # a terminal that reports no size (0x0): keep the pty's
            attachment.resize(rows, cols)

    def on_winch(signum: int, frame: Any) -> None:
        try:
            resize()
        except (OSError, SandboxError):
            pass

    def proxy(signum: int, frame: Any) -> None:
        # Docker's --sig-proxy: the container gets the signal we got.
        if not state["id"]:
            attachment.cancel()
            return
        try:
            with connection(host, autostart=False) as other:
                other.call("container.kill", {"id": state["id"], "signal": signum})
        except SandboxError:
            pass

    try:
        if raw_tty:
            import termios
            import tty as tty_module
            saved_tty = termios.tcgetattr(0)
            tty_module.setraw(0, termios.TCSANOW)     # keep what was typed already
        if tty and (os.isatty(0) or os.isatty(1)):
            resize()
            old_handlers[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, on_winch)
        if sig_proxy and not tty:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                        signal.SIGUSR1, signal.SIGUSR2):
                old_handlers[sig] = signal.signal(sig, proxy)
        if stdin:
            threading.Thread(target=forward_input, name="sbx-stdin", daemon=True).start()
        out, err = sys.stdout.buffer, sys.stderr.buffer
        display = Progress(sys.stderr, eol="\r\n" if raw_tty else "\n",
                           first=f"Unable to find image '{image}' locally")
        for event, data in attachment:
            if event == "stdout":
                write(out, data)
            elif event == "stderr":
                write(err, data)
            elif event in ("created", "started") and isinstance(data, dict):
                state["id"] = data.get("id", state["id"])
            elif event == "progress" and isinstance(data, dict):
                display.show(data)
        return attachment.result()
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        if saved_tty is not None:
            import termios
            termios.tcsetattr(0, termios.TCSADRAIN, saved_tty)


class Progress:
    """Docker's pull/push progress. On a terminal: one line per layer, redrawn in place
    (status and a bar of bytes done); otherwise a line each time a layer's status
    changes (no byte counts: logs stay short)."""

    def __init__(self, stream: TextIO, eol: str = "\n", first: str = ""):
        self.stream = stream
        self.eol = eol                      # "\r\n" while our terminal is in raw mode
        self.first = first                  # a line to print before the first event
        self.tty = stream.isatty()
        self.rows: dict[str, int] = {}      # layer id -> its line, counted from the top
        self.lines = 0
        self.status: dict[str, str] = {}

    def show(self, event: dict[str, Any]) -> None:
        if self.first:
            self.first, first = "", self.first
            self._line(first)
        layer, status = event.get("id"), str(event.get("status", ""))
        text = f"{layer}: {status}" if layer else status
        if not isinstance(layer, str) or not layer:
            self._line(text)
            return
        if not self.tty:
            if self.status.get(layer) != status:
                self.status[layer] = status
                self._line(text)
            return
        total, current = event.get("total"), event.get("current")
        if isinstance(total, int) and total > 0 and isinstance(current, int):
            text = f"{text} {_bar(current, total)}"
        if layer in self.rows:
            up = self.lines - self.rows[layer]
            # Up to the layer's line, clear it, write, back down.
            self.stream.write(f"\x1b[{up}A\r\x1b[2K{text}\r\x1b[{up}B")
            self.stream.flush()
        else:
            self.rows[layer] = self.lines
            self._line(text)

    def _line(self, text: str) -> None:
        self.stream.write(text + self.eol)
        self.stream.flush()
        self.lines += 1


def _bar(current: int, total: int, width: int = 50) -> str:
    from .render import human_size
    done = min(width, width * current // total)
    arrow = ">" if done < width else ""
    return (f"[{'=' * (done - len(arrow))}{arrow}{' ' * (width - done)}] "
            f"{human_size(current)}/{human_size(total)}")


def follow(attachment: Stream, display: Progress | None) -> Any:
    for event, data in attachment:
        if event == "progress" and display is not None and isinstance(data, dict):
            display.show(data)
    return attachment.result()


# ---------------------------------------------------------------- exit statuses

def report(exc: BaseException) -> int:
    """An error that ends ``sbx``, printed with Docker's wording; the exit status."""
    if isinstance(exc, CliError):
        hint = f"\nSee '{exc.command_path} --help'." if exc.status == EXIT_DAEMON else ""
        print(f"sbx: {exc}{hint}", file=sys.stderr)
        return exc.status
    if isinstance(exc, Unavailable):
        # No daemon answered: nothing "responded", so say what failed and how to fix it.
        print(f"sbx: {exc.message}", file=sys.stderr)
        return EXIT_DAEMON
    if isinstance(exc, (CommandNotFound, CommandNotExecutable)):
        print(f"sbx: Error response from daemon: {exc.message}", file=sys.stderr)
        return exc.exit_code
    if isinstance(exc, SandboxError):
        print(f"sbx: Error response from daemon: {exc.message}", file=sys.stderr)
        return EXIT_DAEMON
    if isinstance(exc, BrokenPipeError):
        # Our reader went away (``sbx logs x | head``): stop quietly like other tools.
        sys.stderr.close()
        return 141
    if isinstance(exc, KeyboardInterrupt):
        return 130
    raise exc


REPORTED = (CliError, SandboxError, BrokenPipeError, KeyboardInterrupt)


def _plain_line(argv: Sequence[str]) -> tuple[str | None, str, list[str]] | None:
    """``[-H HOST] run|create ARGS``: the host, the command and its arguments, or None."""
    host = os.environ.get("SANDBOXD_HOST") or None
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        arg = argv[i]
        if arg in ("-H", "--host") and i + 1 < len(argv):
            i += 1
            host = argv[i]
        elif arg.startswith("--host="):
            host = arg[len("--host="):]
        elif arg.startswith("-H") and len(arg) > 2:
            host = arg[2:]
        else:
            return None
        i += 1
    if i == len(argv) or argv[i] not in ("run", "create"):
        return None
    return host, argv[i], list(argv[i + 1:])


def fast_main(argv: Sequence[str]) -> int | None:
    """Run a plain ``sbx run``/``sbx create`` line without click; None when the line
    must go to the click app (see the module's docstring)."""
    if "_SBX_COMPLETE" in os.environ:
        return None
    line = _plain_line(argv)
    if line is None:
        return None
    host, command, args = line
    parsed = parse_flags(args, FLAGS + RUN_ONLY if command == "run" else FLAGS)
    if parsed is None or not parsed[1]:
        return None               # no IMAGE: click says what is missing
    opts, (image, *cmd) = parsed
    try:
        if command == "run":
            return run(host, image, cmd, opts)
        return create(host, image, cmd, opts)
    except REPORTED as exc:
        if isinstance(exc, CliError):
            exc.command_path = f"sbx {command}"
        return report(exc)


def main() -> None:
    """The ``sbx`` console script."""
    status = fast_main(sys.argv[1:])
    if status is None:
        from .cli import main as click_main
        click_main()
    sys.exit(status)
