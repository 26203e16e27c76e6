"""Writes to a stream whose peer may be gone, the same under either event loop.

The daemon runs on uvloop (daemon.py). asyncio's own transports drop a write or a
``write_eof`` once the connection is closing, and the next ``drain`` raises
``ConnectionResetError``; uvloop's raise ``RuntimeError`` once the handle is closed. Every
write of the daemon's that can follow a hang-up goes through these, so a client that
leaves early ends its stream the asyncio way, whatever the loop."""
from __future__ import annotations

import asyncio


def write(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Queue ``data``, or drop it when the connection is closing (the caller's next
    ``drain`` raises ``ConnectionResetError``)."""
    if not writer.is_closing():
        writer.write(data)


def write_eof(writer: asyncio.StreamWriter) -> None:
    """Half-close, where the transport can and the connection is still open."""
    if not writer.is_closing() and writer.can_write_eof():
        writer.write_eof()
