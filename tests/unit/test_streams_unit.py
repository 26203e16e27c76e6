"""sandboxd.streams: a write after the peer has gone is dropped under both event loops
(the daemon's uvloop raises where asyncio drops), and the next drain says the connection
was lost. Real unix sockets, a real transport of each loop."""
from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from sandboxd import streams

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


async def _after_hang_up(closed_by_us: bool) -> list[str]:
    """Writes through ``streams`` once the peer hung up (and, if ``closed_by_us``, the
    transport was closed and its handle released); what each step did."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    theirs.close()
    assert await reader.read() == b""                 # the hang-up reached the loop
    if closed_by_us:
        writer.close()
        await asyncio.sleep(0.02)                     # the loop releases the handle
    seen = []
    streams.write(writer, b"late")
    seen.append("write dropped")
    streams.write_eof(writer)
    seen.append("eof dropped")
    try:
        await writer.drain()
        seen.append("drained")
    except ConnectionResetError:
        seen.append("drain: connection lost")
    writer.close()
    return seen


@pytest.mark.parametrize("closed_by_us", [False, True], ids=["peer-gone", "closed"])
@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_write_after_a_hang_up_is_dropped_under_either_loop(loop: str,
                                                               closed_by_us: bool) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        seen = runner.run(_after_hang_up(closed_by_us))
    assert seen == ["write dropped", "eof dropped", "drain: connection lost"]


def test_uvloop_itself_raises_where_the_helpers_drop() -> None:
    """Why the helpers exist: uvloop's transport refuses a write once closed."""
    async def raw_write() -> None:
        ours, theirs = socket.socketpair()
        _, writer = await asyncio.open_unix_connection(sock=ours)
        theirs.close()
        writer.close()
        await asyncio.sleep(0.02)
        with pytest.raises(RuntimeError):
            writer.write(b"late")

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(raw_write())


async def _live_write() -> bytes:
    ours, theirs = socket.socketpair()
    _, writer = await asyncio.open_unix_connection(sock=ours)
    streams.write(writer, b"hello")
    streams.write_eof(writer)
    await writer.drain()
    their_reader, their_writer = await asyncio.open_unix_connection(sock=theirs)
    data = await asyncio.wait_for(their_reader.read(), 5)     # to the half-close
    writer.close()
    their_writer.close()
    return data


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_an_open_stream_gets_the_bytes_and_the_half_close(loop: str) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        assert runner.run(_live_write()) == b"hello"
