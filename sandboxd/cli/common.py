"""What every ``sbx`` command shares, without click: Docker's exit statuses and error
report, client-side parsing errors, the daemon connection, and attached I/O (stdin and
signals forwarded, a terminal in raw mode, pull progress bars).

This module imports only the standard library's os and sys at load time: ``sbx run``
starts once per container in scripts (:mod:`.main`).
"""
from __future__ import annotations

import os
import sys

from ..errors import (CommandNotExecutable, CommandNotFound, InvalidArgument, SandboxError,
                      Unavailable)

TYPE_CHECKING = False
if TYPE_CHECKING:                    # annotations only: typing costs ~2 ms of every start
    from collections.abc import Callable, Sequence
    from typing import Any, BinaryIO, TextIO

    from ..client import Connection, Stream

EXIT_DAEMON = 125        # Docker: the daemon (or the flags) refused


class CliError(Exception):
    """A client-side failure with Docker's wording and exit status."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status
        # Inside a click command its path ("sbx container run"), read now: it is gone
        # once main() catches this. click is only asked when it is loaded already;
        # :func:`.main.fast_main` names its command itself.
        click = sys.modules.get("click")
        ctx = click.get_current_context(silent=True) if click is not None else None
        self.command_path = ctx.command_path if ctx is not None else "sbx"


class ReaderGone(Exception):
    """Our output's reader went away (``sbx logs -f x | head``), carried out of click:
    click turns EPIPE into exit status 1, where ``sbx run``, and the docker CLI (killed
    by SIGPIPE), end with 141."""


def local(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Client-side parsing: a bad value is a usage error (exit 125), not the daemon's."""
    try:
        return func(*args, **kwargs)
    except InvalidArgument as e:
        raise CliError(e.message, EXIT_DAEMON) from None


def connection(host: str | None, autostart: bool | None = None) -> Connection:
    """The bare protocol connection (``sandboxd.client``), for the commands that need
    no model: run and create stay quick to start."""
    from ..client import connect
    return connect(host, autostart=autostart)


def check_tty(tty: bool, interactive: bool) -> None:
    if tty and interactive and not os.isatty(0):
        raise CliError("the input device is not a TTY", 1)


# ---------------------------------------------------------------- attached I/O

def write(stream: BinaryIO, data: bytes) -> None:
    stream.write(data)
    stream.flush()


def terminal_size() -> list[int]:
    """[rows, cols] of our terminal (stdin's, else stdout's): sent with a ``-t``
    container's config (Docker's ConsoleSize) and on each SIGWINCH; [] when neither is a
    terminal or it reports no size."""
    for fd in (0, 1):
        if os.isatty(fd):
            cols, rows = os.get_terminal_size(fd)
            return [rows, cols] if rows and cols else []
    return []


def pump(attachment: Stream, *, host: str | None, tty: bool, stdin: bool, sig_proxy: bool,
         container_id: str = "", image: str = "",
         on_id: Callable[[str], None] | None = None) -> Any:
    """Stream a container's output to ours until it ends; with ``stdin`` forward our
    input; with ``tty`` put our terminal in raw mode (restored on the way out) and pass
    on window-size changes. The pull of a missing ``image`` (``run``) shows its
    progress on stderr; ``on_id`` gets the container's id once known (``--cidfile``).
    Returns the op's final result."""
    import signal
    import threading

    state = {"id": container_id}
    raw_tty = tty and stdin and os.isatty(0)
    saved_tty = None
    old_handlers: dict[int, Any] = {}

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
        size = terminal_size()
        if size:                    # a terminal that reports no size (0x0): keep the pty's
            attachment.resize(*size)

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
                if on_id is not None and state["id"]:
                    on_id(state["id"])
            elif event == "progress" and isinstance(data, dict):
                display.show(data)
            elif event == "detached":           # an exec's detach keys: it goes on
                return {}
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
    from ..render import human_size
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

def command_of(argv: Sequence[str]) -> str:
    """The command word of an ``sbx`` line (``container run`` -> ``run``), past the
    global options."""
    words = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("-H", "--host"):
            skip = True
        elif not arg.startswith("-"):
            words.append(arg)
            if len(words) == 2 or arg != "container":
                break
    return words[-1] if words else ""


def report(exc: BaseException, command: str = "") -> int:
    """An error that ends ``sbx`` (of ``command``), printed with Docker's wording; the
    exit status. Docker prefixes its name only to run's and create's errors (``docker:
    Error response from daemon: …``), and says "Error response from daemon" only of
    what the daemon answered."""
    prefix = "sbx: " if command in ("run", "create") or not command else ""
    if isinstance(exc, CliError):
        hint = f"\nSee '{exc.command_path} --help'." if exc.status == EXIT_DAEMON else ""
        print(f"sbx: {exc}{hint}", file=sys.stderr)
        return exc.status
    if isinstance(exc, Unavailable) and not exc.from_daemon:
        # No daemon answered: nothing "responded", so say what failed and how to fix it.
        print(f"sbx: {exc.message}", file=sys.stderr)
        return EXIT_DAEMON
    if isinstance(exc, SandboxError):
        label = "Error response from daemon: " if exc.from_daemon else ""
        print(f"{prefix if exc.from_daemon else 'sbx: '}{label}{exc.message}",
              file=sys.stderr)
        return exc.exit_code if isinstance(exc, (CommandNotFound, CommandNotExecutable)) \
            else EXIT_DAEMON
    if isinstance(exc, (BrokenPipeError, ReaderGone)):
        # Our reader went away (``sbx logs x | head``): stop quietly like other tools.
        sys.stderr.close()
        return 141
    if isinstance(exc, KeyboardInterrupt):
        return 130
    raise exc


REPORTED = (CliError, SandboxError, BrokenPipeError, ReaderGone, KeyboardInterrupt)
