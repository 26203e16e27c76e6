"""A container's stored output: size-capped files, rotated so the newest output is kept.

Each entry is a msgpack array ``[unix_time, stream, bytes]`` (stream 1 stdout, 2 stderr),
the output as the container's pipe gave it (chunks, not lines). The first entry of a
stream in a file that goes on with a line begun in the previous file carries a fourth
element, ``true``: once that file is dropped, readers leave out the line's rest instead
of showing a fragment as a line (Docker's drivers store lines and never do).
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
import errno
import logging
import os
import time
from dataclasses import dataclass
from typing import Iterator

import msgpack

log = logging.getLogger("sandboxd.logs")

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
        self._open_line: dict[int, bool] = {}   # stream -> its output ended mid-line
        self._continues: set[int] = set()       # streams mid-line at the last rotation
        self._failed = False                    # a write failed (said once)

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        try:
            self._fd = os.open(self.path, flags, 0o600)
        except FileNotFoundError:       # a --rm container's directory is made on demand
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._fd = os.open(self.path, flags, 0o600)
        self.size = os.fstat(self._fd).st_size

    def write(self, stream: int, data: bytes) -> None:
        """Log ``data``. A write the host refuses (a full disk, no fd left) loses it
        from the log only: the caller still hands it to attached clients, as Docker
        does, and the next write tries again. It used to raise out of the output
        callback, and an attached ``run`` got nothing of that output."""
        if self._closed or not self.keep:
            return
        try:
            self._write(stream, data)
        except OSError as exc:
            if not self._failed:
                log.warning("%s: output not logged: %s", self.path, exc)
            self._failed = True

    def _write(self, stream: int, data: bytes) -> None:
        if self._fd < 0:
            self._open()
        now = time.time()
        piece = len(data)
        if self.max_size != UNLIMITED:
            piece = max(1, self.max_size - _ENTRY_OVERHEAD)
        for start in range(0, len(data), piece):
            chunk = data[start:start + piece]
            entry = msgpack.packb([now, stream, chunk], use_bin_type=True)
            if self.max_size != UNLIMITED and self.size and \
                    self.size + len(entry) > self.max_size:
                self._rotate()
            if stream in self._continues:
                self._continues.discard(stream)
                entry = msgpack.packb([now, stream, chunk, True], use_bin_type=True)
            if os.write(self._fd, entry) != len(entry):
                # A full disk took part of it: cut it off, or every reader would stop
                # at the torn entry and never see what is logged after it.
                os.ftruncate(self._fd, self.size)
                raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (an entry of "
                                            f"{len(entry)} bytes cut short)")
            self.size += len(entry)
            self._open_line[stream] = not chunk.endswith(b"\n")

    def _rotate(self) -> None:
        """``output.log`` -> ``.1`` -> ... ; the file past ``max_file`` is dropped."""
        self._continues = {stream for stream, open_ in self._open_line.items() if open_}
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
    continues: bool = False     # goes on with a line begun in the previous file


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
        return self._entries(0, since, until)

    def _entries(self, first: int, since: float, until: float) -> Iterator[Entry]:
        """The entries from file ``first`` on; the rest of a line begun in a file before
        (dropped, or not read) is left out."""
        rest_of_line: set[int] = set()
        for index, (fd, size) in enumerate(self._files[first:]):
            for e in _read(fd, size, since, until):
                if index == 0 and e.continues:
                    rest_of_line.add(e.stream)
                if e.stream in rest_of_line:
                    cut = e.data.find(b"\n") + 1
                    if not cut:
                        continue
                    rest_of_line.discard(e.stream)
                    if cut == len(e.data):
                        continue
                    e = Entry(e.time, e.stream, e.data[cut:])
                yield e

    def tail(self, n: int, since: float = 0, until: float = 0) -> tuple[list[Entry], bool]:
        """The last ``n`` lines, oldest first (a line the pipe gave in several chunks is
        one), and whether the kept files held fewer lines than that. Goes back only as
        many files as hold ``n`` line ends after the first line's start (counted first),
        then reads forward; memory is bounded by ``n`` lines."""
        first, ends = len(self._files), 0
        while first > 0 and ends <= n:
            first -= 1
            fd, size = self._files[first]
            ends += sum(e.data.count(b"\n") for e in _read(fd, size, since, until))
        window: collections.deque[Entry] = collections.deque(maxlen=n)
        window.extend(_lines(self._entries(first, since, until)))
        return list(window), len(window) < n


def _lines(entries: Iterator[Entry]) -> Iterator[Entry]:
    """Entries as lines: a stream's chunks joined up to each newline; a line is timed by
    its first chunk. The last line of a stream may be open (no newline yet)."""
    # stream -> (the open line's time, its pieces): joined once, at its end (a line of
    # many chunks, a progress bar's \r updates, is not copied again at each one)
    open_lines: dict[int, tuple[float, list[bytes]]] = {}
    for e in entries:
        start = 0
        while start < len(e.data):
            end = e.data.find(b"\n", start) + 1 or len(e.data)
            piece, start = e.data[start:end], end
            when, pieces = open_lines.setdefault(e.stream, (e.time, []))
            pieces.append(piece)
            if piece.endswith(b"\n"):
                del open_lines[e.stream]
                yield Entry(when, e.stream, b"".join(pieces))
    for stream, (when, pieces) in sorted(open_lines.items(), key=lambda item: item[1][0]):
        yield Entry(when, stream, b"".join(pieces))


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
            if not (isinstance(entry, list) and len(entry) in (3, 4)):
                continue
            ts = float(entry[0])
            if ts >= since and (not until or ts <= until):
                yield Entry(ts, int(entry[1]), bytes(entry[2]), len(entry) == 4)


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
