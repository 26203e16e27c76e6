"""A container's stored output: size-capped files, rotated so the newest output is kept.

Each entry is a msgpack array ``[unix_time, stream, bytes]`` (stream 1 stdout, 2 stderr).
The files, newest last (Docker's json-file and local drivers rotate the same way)::

    <dir>/output.log.<max_file - 1>   the oldest kept
    ...
    <dir>/output.log.1
    <dir>/output.log                  being written
    <dir>/output.log.dropped          what rotation deleted: {"bytes", "until"}

When an entry would take ``output.log`` past ``max_size``, the files shift by one
(``output.log`` becomes ``.1``; the one past ``max_file`` is deleted and counted in
``.dropped``), so the log holds at most ``max_size * max_file`` bytes and always the
latest output. A chunk larger than ``max_size`` is stored in pieces. Writing costs one
``write`` per chunk the container prints (no buffer in the daemon), plus a few renames
per rotation. The files survive daemon restarts.

Readers (:class:`Snapshot`) open every file at once, so a rotation while they read
moves nothing under them; the current file is read up to its size at that moment (what
a follower gets later comes from the live stream instead).
"""
from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass
from typing import Iterator

import msgpack

UNLIMITED = -1
_ENTRY_OVERHEAD = 32           # msgpack array header, float, stream, bin header
_MAX_ENTRY = 8 << 20           # what a reader accepts as one entry


class LogWriter:
    """Opens the file at the first output: a container that prints nothing (the
    common ``run ... true``) costs no file. ``keep=False`` (the ``none`` driver)
    stores nothing."""

    def __init__(self, path: str, max_size: int = 20 << 20, max_file: int = 5,
                 keep: bool = True):
        self.path = path
        self.max_size = max_size
        self.max_file = max(1, max_file)
        self.keep = keep
        self._fd = -1
        self._closed = False
        self.size = 0

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        try:
            self._fd = os.open(self.path, flags, 0o600)
        except FileNotFoundError:       # a --rm container's directory is made on demand
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._fd = os.open(self.path, flags, 0o600)
        self.size = os.fstat(self._fd).st_size

    def write(self, stream: int, data: bytes) -> None:
        if self._closed or not self.keep:
            return
        if self._fd < 0:
            self._open()
        now = time.time()
        piece = len(data)
        if self.max_size != UNLIMITED:
            piece = max(1, self.max_size - _ENTRY_OVERHEAD)
        for start in range(0, len(data), piece):
            entry = msgpack.packb([now, stream, data[start:start + piece]], use_bin_type=True)
            if self.max_size != UNLIMITED and self.size and \
                    self.size + len(entry) > self.max_size:
                self._rotate()
            os.write(self._fd, entry)
            self.size += len(entry)

    def _rotate(self) -> None:
        """``output.log`` -> ``.1`` -> ... ; the file past ``max_file`` is dropped."""
        oldest = self.path if self.max_file == 1 else f"{self.path}.{self.max_file - 1}"
        try:
            st = os.stat(oldest)
        except FileNotFoundError:
            st = None
        if st is not None:
            _add_dropped(self.path, st.st_size, st.st_mtime)
        if self.max_file == 1:
            os.ftruncate(self._fd, 0)
            self.size = 0
            return
        for n in range(self.max_file - 1, 1, -1):
            try:
                os.replace(f"{self.path}.{n - 1}", f"{self.path}.{n}")
            except FileNotFoundError:
                pass
        os.replace(self.path, f"{self.path}.1")
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                           0o600)
        self.size = 0

    def close(self) -> None:
        self._closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _add_dropped(path: str, size: int, until: float) -> None:
    before = dropped(path) or {"bytes": 0, "until": 0.0}
    tmp = f"{path}.dropped.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as f:
        f.write(msgpack.packb({"bytes": before["bytes"] + size,
                               "until": max(before["until"], until)}))
    os.replace(tmp, f"{path}.dropped")


def dropped(path: str) -> dict | None:
    """``{"bytes", "until"}``: how much older output rotation deleted, and the time of
    the newest of it; None when nothing was."""
    try:
        with open(f"{path}.dropped", "rb") as f:
            doc = msgpack.unpackb(f.read(), raw=False)
        return {"bytes": int(doc["bytes"]), "until": float(doc["until"])}
    except (OSError, ValueError, KeyError, TypeError, msgpack.ExtraData):
        return None


def files(path: str) -> list[str]:
    """The log's files that exist, oldest first."""
    directory, base = os.path.split(path)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    numbered = sorted((int(n[len(base) + 1:]), n) for n in names
                      if n.startswith(base + ".") and n[len(base) + 1:].isdigit())
    out = [os.path.join(directory, n) for _, n in reversed(numbered)]
    if base in names:
        out.append(path)
    return out


@dataclass
class Entry:
    time: float
    stream: int
    data: bytes


class Snapshot:
    """Every file of a log, opened now (oldest first); the newest is read up to its size
    now. Use as a context manager (closes the files)."""

    def __init__(self, path: str):
        self.path = path
        self._files: list[tuple[int, int]] = []      # (fd, bytes to read)
        for name in files(path):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:               # rotated away between list and open
                continue
            self._files.append((fd, os.fstat(fd).st_size))
        self.dropped = dropped(path)

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd, _ in self._files:
            os.close(fd)
        self._files = []

    def entries(self, since: float = 0, until: float = 0) -> Iterator[Entry]:
        """Oldest first, with ``since <= time`` (and ``time <= until`` when given)."""
        for fd, size in self._files:
            yield from _read(fd, size, since, until)

    def tail(self, n: int, since: float = 0, until: float = 0) -> tuple[list[Entry], bool]:
        """The last ``n`` lines (split at newlines, each an entry), oldest first, and
        whether the kept files held fewer lines than that. Reads the newest file first
        and only goes back as far as it must; memory is bounded by ``n`` lines."""
        lines: list[Entry] = []
        for fd, size in reversed(self._files):
            window: collections.deque[Entry] = collections.deque(maxlen=n - len(lines))
            for e in _read(fd, size, since, until):
                for line in e.data.splitlines(keepends=True):
                    window.append(Entry(e.time, e.stream, line))
            lines[:0] = window
            if len(lines) >= n:
                return lines, False
        return lines, True


def _read(fd: int, size: int, since: float, until: float) -> Iterator[Entry]:
    offset = 0
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=_MAX_ENTRY)
    while offset < size:
        chunk = os.pread(fd, min(1 << 20, size - offset), offset)
        if not chunk:                   # truncated meanwhile (max-file 1)
            return
        offset += len(chunk)
        unpacker.feed(chunk)
        for entry in unpacker:
            if not (isinstance(entry, list) and len(entry) == 3):
                continue
            ts = float(entry[0])
            if ts >= since and (not until or ts <= until):
                yield Entry(ts, int(entry[1]), bytes(entry[2]))


def dropped_note(snapshot: Snapshot, since: float, short: bool) -> str:
    """The line ``sbx logs`` prints on stderr when what was asked for reaches back
    past what rotation deleted (``short``: the kept files ran out before the request
    was satisfied, or it asked for everything); "" otherwise."""
    gone = snapshot.dropped
    if gone is None or not short or (since and since > gone["until"]):
        return ""
    return (f"sandboxd: {_human(gone['bytes'])} of older output were dropped by log "
            f"rotation (max-size x max-file); showing what is kept\n")


def _human(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


class Stamper:
    """Docker's ``logs -t``: every line starts with its time. Output arrives in chunks
    that need not end at a newline, so remember per stream whether a line is open."""

    def __init__(self) -> None:
        self.open_line = {1: False, 2: False}

    def stamp(self, fd: int, data: bytes, ts: float) -> bytes:
        from .render import rfc3339
        prefix = rfc3339(ts).encode() + b" "
        out = bytearray()
        for line in data.splitlines(keepends=True):
            if not self.open_line[fd]:
                out += prefix
            out += line
            self.open_line[fd] = not line.endswith((b"\n", b"\r"))
        return bytes(out)
