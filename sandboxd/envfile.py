"""Environment variables as ``sbx``'s ``-e`` and ``--env-file`` give them, resolved
against the *caller's* environment. Kept apart from :mod:`sandboxd.model` so the CLI can
resolve them before sending its options to the daemon without importing the model.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from .errors import InvalidArgument

# Annotations only: ``typing`` costs ~2 ms of every ``sbx`` start (sandboxd/cli/main.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any


def parse_env(entries: Iterable[str] | Mapping[str, Any],
              environ: Mapping[str, str] | None = None) -> list[str]:
    """``-e KEY=value`` as is; ``-e KEY`` takes KEY from ``environ`` (the caller's
    environment) and is dropped when unset there, as Docker does."""
    if isinstance(entries, Mapping):
        return [f"{k}={'' if v is None else v}" for k, v in entries.items()]
    environ = os.environ if environ is None else environ
    out = []
    for entry in entries:
        if "=" in entry:
            out.append(entry)
        elif entry in environ:
            out.append(f"{entry}={environ[entry]}")
        elif not entry:
            out.append(entry)        # kept so validation names it
    return out


def parse_env_file(path: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """Docker's ``--env-file``: ``KEY=value`` per line, ``#`` comments and blank lines
    skipped, a bare ``KEY`` taken from the caller's environment. Values are literal
    (no quotes removed, no expansion)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise InvalidArgument(f"env-file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise InvalidArgument(f"env-file {path}: not UTF-8 text") from None
    entries, problems = [], []
    for number, line in enumerate(lines, 1):
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        if not key or any(c.isspace() for c in key):
            problems.append(f"env-file {path}:{number}: {line!r} is not KEY=value "
                            f"(the name may not be empty or contain spaces)")
            continue
        entries.append(f"{key}={value}" if sep else key)
    if problems:
        raise InvalidArgument.of(problems)
    return parse_env(entries, environ)


def resolve_env(files: Sequence[str], entries: Iterable[str] | Mapping[str, Any] | None,
                environ: Mapping[str, str] | None = None) -> list[str]:
    """``KEY=value`` entries from ``--env-file`` files first, then ``-e``, as Docker
    orders them (a later entry overrides an earlier one)."""
    env: list[str] = []
    for path in files:
        env += parse_env_file(path, environ)
    if entries is not None:
        env += parse_env(entries, environ)
    return env
