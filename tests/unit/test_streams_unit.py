"""sandboxd.streams: a write after the peer has gone is dropped under both event loops
(the daemon's uvloop raises where asyncio drops), and the next drain says the connection
was lost; a listener out of file descriptors keeps its waiting clients (uvloop's own
drops them). Real unix sockets, a real transport of each loop."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap

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


# A process with few fds (its own, so the test's process keeps its limit) serves a unix
# socket, uses up its fds, lets a client connect, frees a few: what the client reads.
_OUT_OF_FDS = textwrap.dedent("""
    import asyncio, os, resource, socket, sys, tempfile, uvloop
    from sandboxd import streams
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}

    async def main(which):
        async def greet(reader, writer):
            writer.write(b"hello")
            await writer.drain()
            writer.close()
        path = os.path.join(tempfile.mkdtemp(), "s.sock")
        listening = socket.socket(socket.AF_UNIX)
        listening.bind(path)
        if which == "ours":
            server = streams.serve(greet, listening)
        else:
            server = await asyncio.start_unix_server(greet, sock=listening)
        client = socket.socket(socket.AF_UNIX)      # made while fds remain
        hog = []
        try:
            while True:
                hog.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        loop = asyncio.get_running_loop()
        def ask():
            client.connect(path)
            client.settimeout(5)
            return client.recv(16)
        answer = loop.run_in_executor(None, ask)
        await asyncio.sleep(0.3)                    # the server tries to accept, fails
        for fd in hog[:8]:
            os.close(fd)
        print((await answer).decode() or "dropped")
        server.close()

    with asyncio.Runner(loop_factory=LOOPS[sys.argv[1]]) as runner:
        runner.run(main(sys.argv[2]))
""")


def _client_of_a_server_out_of_fds(loop: str, which: str) -> str:
    done = subprocess.run([sys.executable, "-c", _OUT_OF_FDS, loop, which],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_listener_out_of_fds_keeps_its_waiting_clients(loop: str) -> None:
    """Accepting resumes once fds are freed, and the waiting client is served."""
    assert _client_of_a_server_out_of_fds(loop, "ours") == "hello"


def test_uvloop_s_own_listener_drops_clients_while_out_of_fds() -> None:
    """Why ``streams.serve`` exists: libuv accepts and closes every waiting connection
    when accept fails with EMFILE (a docker CLI's dropped ``start`` hung its ``--rm``)."""
    assert _client_of_a_server_out_of_fds("uvloop", "uvloop's") == "dropped"
