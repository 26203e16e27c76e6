"""A container's stored output: one capped file of timestamped chunks.

Each entry is a msgpack array ``[unix_time, stream, bytes]`` (stream 1 stdout, 2 stderr)
appended to ``<dir>/output.log``. The file survives daemon restarts; once it reaches
``cap`` bytes one note says the output was truncated and later output is only streamed
to attached clients, never stored, so a container printing forever cannot fill the disk.
"""
from __future__ import annotations

import os
import time
from typing import Iterator

import msgpack

DEFAULT_CAP = 16 << 20
TRUNCATED = b"[sandboxd: log truncated here: the container wrote more than the log cap]\n"


class LogWriter:
    """Opens the file at the first output: a container that prints nothing (the
    common ``run ... true``) costs no file."""

    def __init__(self, path: str, cap: int = DEFAULT_CAP):
        self.path = path
        self.cap = cap
        self._fd = -1
        self._closed = False
        self.size = 0
        self.truncated = False

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        try:
            self._fd = os.open(self.path, flags, 0o600)
        except FileNotFoundError:       # a --rm container's directory is made on demand
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._fd = os.open(self.path, flags, 0o600)
        self.size = os.fstat(self._fd).st_size
        self.truncated = self.size >= self.cap

    def write(self, stream: int, data: bytes) -> None:
        if self._closed:
            return
        if self._fd < 0:
            self._open()
        if self.truncated:
            return
        if self.size + len(data) > self.cap:
            data, self.truncated = TRUNCATED, True
            stream = 2
        entry = msgpack.packb([time.time(), stream, data], use_bin_type=True)
        os.write(self._fd, entry)
        self.size += len(entry)

    def close(self) -> None:
        self._closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_entries(path: str, offset: int = 0) -> Iterator[tuple[float, int, bytes, int]]:
    """Stored entries from ``offset``: ``(time, stream, data, next_offset)``."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        f.seek(offset)
        unpacker = msgpack.Unpacker(f, raw=False, max_buffer_size=DEFAULT_CAP + (1 << 20))
        for entry in unpacker:
            if isinstance(entry, list) and len(entry) == 3:
                yield float(entry[0]), int(entry[1]), bytes(entry[2]), offset + unpacker.tell()


def tail_lines(entries: list[tuple[float, int, bytes, int]], n: int
               ) -> list[tuple[float, int, bytes, int]]:
    """The entries holding the last ``n`` lines of output (-1: all), split at newlines."""
    if n < 0:
        return entries
    lines: list[tuple[float, int, bytes, int]] = []
    for ts, stream, data, off in entries:
        for line in data.splitlines(keepends=True):
            lines.append((ts, stream, line, off))
    return lines[-n:] if n else []
