"""The ``sbx`` console script (and ``python -m sandboxd``).

A plain ``[-H HOST] run|create ...`` line runs without click (:func:`fast_main`, with
:mod:`.run`'s flag table); every other line, and any line the fast path does not fully
understand, goes to the click app (:func:`.commands.main`), which reads the same table.

This module imports only the standard library's os and sys at load time.
"""
from __future__ import annotations

import os
import sys

from .common import REPORTED, CliError, report
from .run import FLAGS, RUN_ONLY, create, parse_flags, run

TYPE_CHECKING = False
if TYPE_CHECKING:                    # annotations only: typing costs ~2 ms of every start
    from collections.abc import Sequence


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
        return report(exc, command)


def main() -> None:
    """The ``sbx`` console script."""
    status = fast_main(sys.argv[1:])
    if status is None:
        from .commands import main as click_main
        click_main()
    sys.exit(status)
