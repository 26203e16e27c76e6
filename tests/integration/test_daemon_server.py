"""The daemon's server core against real unix sockets: handshake, dispatch, streams,
cancel, sessions, limits, hostile input, shutdown and client autostart.

Two kinds of daemon: an in-process ``Server`` on its own loop in a thread (so tests can
register test-only ops and look at its state), and ``python -m sandboxd.daemon``
subprocesses (for signals, memory and garbage from many connections). Every daemon a test
starts is stopped by its fixture. Sockets live under short mkdtemp dirs (unix socket paths
are limited to 108 bytes)."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandboxd import client, errors, operations, protocol
from sandboxd.daemon import DaemonConfig, Server

from harness import RawClient, wait_until

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


@pytest.fixture
def short_tmp():
    path = tempfile.mkdtemp(prefix="sbxt-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- in-process server

class InProcess:
    """A Server on its own event loop in a thread."""

    def __init__(self, tmp: str, **overrides):
        self.path = os.path.join(tmp, "s.sock")
        self.config = DaemonConfig(host=self.path, root=os.path.join(tmp, "root"),
                                   frame_timeout=0.5, **overrides)
        self.server = Server(self.config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.running = False

    def start(self) -> InProcess:
        self.thread.start()
        self.run(self.server.start())
        self.running = True
        return self

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.run(self.server.shutdown())
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        if not self.loop.is_running():
            self.loop.close()

    def connect(self, **kw) -> client.Connection:
        return client.connect(self.path, autostart=False, **kw)

    def tasks(self) -> int:
        async def count() -> int:
            return len(asyncio.all_tasks()) - 1     # not this one
        return self.run(count())


@pytest.fixture
def make_server(short_tmp):
    made: list[InProcess] = []

    def make(**overrides) -> InProcess:
        d = tempfile.mkdtemp(dir=short_tmp)
        made.append(InProcess(d, **overrides))
        return made[-1]
    yield make
    for s in made:
        s.stop()


@pytest.fixture
def inproc(make_server) -> InProcess:
    return make_server().start()


# ---------------------------------------------------------------- subprocess daemons

class Proc:
    def __init__(self, tmp: str, config: dict | None = None, extra: list[str] = ()):
        self.dir = tmp
        self.path = os.path.join(tmp, "d.sock")
        self.root = os.path.join(tmp, "root")
        self.log_path = os.path.join(tmp, "daemon.log")
        args = [PY, "-m", "sandboxd.daemon", "--host", f"unix://{self.path}",
                "--root", self.root, *extra]
        if config:
            cfg = os.path.join(tmp, "daemon.json")
            Path(cfg).write_text(json.dumps(config))
            args += ["--config", cfg]
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, cwd=REPO, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log)

    def wait_ready(self) -> Proc:
        def up() -> bool:
            assert self.proc.poll() is None, f"daemon exited:\n{self.read_log()}"
            try:
                RawClient(self.path).close()
                return True
            except OSError:
                return False
        wait_until(up, what="the daemon to listen")
        return self

    def read_log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def daemon():
    """One subprocess daemon shared by the hostile-input tests (each checks it lives)."""
    tmp = tempfile.mkdtemp(prefix="sbxd-")
    proc = Proc(tmp, {"frame-timeout": 0.5, "max-connections": 64, "log-level": "info"})
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def assert_serving(path: str) -> None:
    """A fresh, well-formed connection still gets pong."""
    with client.connect(path, autostart=False) as conn:
        assert conn.call("ping") == "pong"


# ---------------------------------------------------------------- handshake and dispatch

def test_handshake_and_builtin_ops(inproc):
    raw = RawClient(inproc.path, hello=False)
    raw.send({"id": 0, "op": "hello", "params": {"version": 1, "client": "sbx/0.1"}})
    assert raw.recv() == {"id": 0, "ok": {"version": 1, "server": "sandboxd/0.1.0",
                                          "features": ["events", "stdin", "resize",
                                                       "cancel", "sessions", "networks",
                                                       "quiet-run"]}}
    raw.send(protocol.request(1, "ping"))
    assert raw.recv() == {"id": 1, "ok": "pong"}
    raw.close()
    with inproc.connect() as conn:
        version = conn.call("system.version")
        assert version["protocol"] == 1 and version["pid"] == os.getpid()
        assert version["host"] == f"unix://{inproc.path}"


def test_socket_is_0660_root_owned_and_of_the_sandboxd_group(inproc, make_server):
    import grp
    st_ = os.stat(inproc.path)
    assert (st_.st_mode & 0o777, st_.st_uid) == (0o660, 0)
    assert grp.getgrgid(st_.st_gid).gr_name == "sandboxd"
    rootish = make_server(group="").start()        # --group "": root's group
    st_ = os.stat(rootish.path)
    assert (st_.st_mode & 0o777, st_.st_uid, st_.st_gid) == (0o660, 0, 0)


def test_a_group_that_cannot_be_made_leaves_the_socket_root_s(make_server, caplog):
    import grp
    s = make_server(group="no/such group").start()    # groupadd refuses the name
    st_ = os.stat(s.path)
    assert (st_.st_mode & 0o777, st_.st_uid, st_.st_gid) == (0o660, 0, 0)
    assert "socket group no/such group: groupadd failed" in caplog.text
    assert not [g for g in grp.getgrall() if g.gr_name == "no/such group"]


def test_version_mismatch_gets_a_clear_error_then_close(inproc):
    raw = RawClient(inproc.path, hello=False)
    raw.send({"id": 0, "op": "hello", "params": {"version": 99, "client": "future/9"}})
    messages = raw.drain()
    assert len(messages) == 1 and messages[0]["id"] == 0
    err = messages[0]["error"]
    assert err["code"] == "invalid_argument"
    assert "protocol version 99 is not supported" in err["message"]
    assert err["details"] == {"versions": [1]}


@pytest.mark.parametrize("first", [
    protocol.request(1, "ping"),
    {"id": 0, "stdin": b"x"},
    {"id": 0, "op": "hello", "params": {"client": "x"}},                 # no version
    {"id": 0, "op": "hello", "params": {"version": "1"}},
    {"id": 5, "op": "hello", "params": {"version": 1}},
])
def test_the_first_message_must_be_a_good_hello(inproc, first):
    raw = RawClient(inproc.path, hello=False)
    raw.send(first)
    (message,) = raw.drain()
    assert message["error"]["code"] == "invalid_argument"
    assert_serving(inproc.path)


def test_unknown_op_and_second_hello_are_errors_on_a_live_connection(inproc):
    raw = RawClient(inproc.path)
    raw.send(protocol.request(1, "no.such.op"))
    reply = raw.recv()
    assert reply["id"] == 1 and reply["error"]["code"] == "invalid_argument"
    assert "unknown operation 'no.such.op'" in reply["error"]["message"]
    assert reply["error"]["message"].endswith("knows operations in: ping, session, system")
    raw.send(protocol.request(5, "system.verison"))
    assert raw.recv()["error"]["message"] == ("unknown operation 'system.verison'; "
                                              "sandboxd/0.1.0 knows: system.version")
    raw.send(protocol.hello("again"))
    assert raw.recv()["error"]["code"] == "conflict"
    raw.send(protocol.request(2, "ping", {"unexpected": 1}))
    reply = raw.recv()
    assert reply["error"]["code"] == "invalid_argument"
    assert "unknown field(s) unexpected" in reply["error"]["message"]
    raw.send({"id": 3, "op": 7})                        # bad shape, usable id: answered
    assert raw.recv()["id"] == 3
    raw.send(protocol.request(4, "ping"))
    assert raw.recv() == {"id": 4, "ok": "pong"}
    raw.close()


@dataclass(frozen=True, kw_only=True)
class _Repeated(operations.NoParams):
    REPEATS = True
    name: str = operations.param(str)
    n: int = operations.param(int, 0)

    def problems(self) -> list[str]:
        return [] if self.n >= 0 else [f"n must be >= 0, got {self.n}"]


@dataclass(frozen=True, kw_only=True)
class _Once(_Repeated):
    REPEATS = False


def test_a_request_sent_again_under_another_id_is_served_from_its_built_params(
        make_server):
    s = make_server()
    seen: list[object] = []

    async def record(ctx, params):
        seen.append(params)
        return [params.name, params.n]

    s.server.register("test.repeated", record, params=_Repeated)
    s.server.register("test.once", record, params=_Once)
    s.start()
    raw = RawClient(s.path)
    # every msgpack form of an id: fixint, uint 8, 16, 32 and 64
    ids = [5, 200, 40000, 3_000_000_000, 2 ** 40]
    for rid in ids:
        raw.send(protocol.request(rid, "test.repeated", {"name": "a", "n": 1}))
        assert raw.recv() == {"id": rid, "ok": ["a", 1]}
    assert all(p is seen[0] for p in seen)          # built once, shared by the rest
    raw.send(protocol.request(6, "test.repeated", {"name": "b", "n": 1}))
    assert raw.recv() == {"id": 6, "ok": ["b", 1]}
    assert seen[-1] is not seen[0]                  # other bytes, built anew
    for rid in (7, 8):                              # a refused request is not kept
        raw.send(protocol.request(rid, "test.repeated", {"name": "a", "n": -1}))
        assert raw.recv()["error"]["message"] == "n must be >= 0, got -1"
    for rid in (9, 10):                             # nor one whose class does not repeat
        raw.send(protocol.request(rid, "test.once", {"name": "a", "n": 1}))
        assert raw.recv() == {"id": rid, "ok": ["a", 1]}
    assert seen[-1] is not seen[-2]
    raw.close()
    # a new connection must still say hello first, even with a request kept
    fresh = RawClient(s.path, hello=False)
    fresh.send(protocol.request(1, "test.repeated", {"name": "a", "n": 1}))
    assert "the first message must be" in fresh.recv()["error"]["message"]
    assert fresh.recv() is None
    fresh.close()


def test_client_rebuilds_typed_errors(inproc):
    with inproc.connect() as conn:
        with pytest.raises(errors.InvalidArgument, match="unknown operation"):
            conn.call("nope")
        assert conn.call("ping") == "pong"


def test_handler_errors_are_typed_and_other_exceptions_become_internal(make_server, caplog):
    s = make_server()

    async def missing(ctx, params):
        raise errors.NotFound("no such container: web", {"id": "web"})

    async def buggy(ctx, params):
        raise ZeroDivisionError("division by zero")

    async def exits(ctx, params):
        raise SystemExit(3)

    s.server.register("test.missing", missing)
    s.server.register("test.buggy", buggy)
    s.server.register("test.exit", exits)
    s.start()
    with s.connect() as conn:
        with pytest.raises(errors.NotFound) as info:
            conn.call("test.missing")
        assert info.value.details == {"id": "web"}
        with pytest.raises(errors.Internal) as info:
            conn.call("test.buggy")
        assert info.value.message == ("internal error in test.buggy: ZeroDivisionError: "
                                      "division by zero")
        with pytest.raises(errors.Internal, match="SystemExit"):
            conn.call("test.exit")
        assert conn.call("ping") == "pong"
    assert "ZeroDivisionError" in caplog.text and "Traceback" in caplog.text


def test_replies_that_cannot_be_sent_become_errors(make_server):
    s = make_server(max_frame=1 << 20)

    async def big(ctx, params):
        return b"x" * (2 << 20)

    async def weird(ctx, params):
        return {"a set": {1, 2}}

    s.server.register("test.big", big)
    s.server.register("test.weird", weird)
    s.start()
    with s.connect() as conn:
        with pytest.raises(errors.LimitExceeded, match="does not fit in one frame"):
            conn.call("test.big")
        with pytest.raises(errors.Internal, match="cannot be encoded"):
            conn.call("test.weird")
        assert conn.call("ping") == "pong"


def test_registration_refuses_duplicates(inproc):
    async def h(ctx, params):
        return None
    with pytest.raises(ValueError):
        inproc.server.register("ping", h)
    with pytest.raises(ValueError):
        inproc.server.register("hello", h)


# ---------------------------------------------------------------- streams and cancel

def register_stream_ops(server: Server, state: dict) -> None:
    async def echo(ctx, params):
        total = 0
        while True:
            kind, value = await ctx.receive()
            if kind == "stdin":
                total += len(value)
                await ctx.send_event("stdout", value.upper())
            elif kind == "resize":
                await ctx.send_event("resized", list(value))
            else:
                assert kind == "stdin_eof"
                break
        await ctx.send_event("exit", {"code": 0})
        return {"bytes": total, "streaming": ctx.streaming}

    async def sleep(ctx, params):
        state["started"] = state.get("started", 0) + 1
        try:
            await asyncio.sleep(params.get("seconds", 3600))
            return params.get("value")
        finally:
            state["finished"] = state.get("finished", 0) + 1

    server.register("test.echo", echo, streaming=True)
    server.register("test.sleep", sleep)


def test_streaming_stdin_resize_events_and_result(make_server):
    s = make_server()
    register_stream_ops(s.server, {})
    s.start()
    with s.connect() as conn:
        with conn.stream("test.echo") as stream:
            stream.send(b"hello ")
            stream.resize(24, 80)
            stream.send(b"x" * 600_000)            # more than one stdin chunk
            stream.close_stdin()
            events = list(stream)
            assert stream.result() == {"bytes": 600_006, "streaming": True}
        assert events[0] == ("stdout", b"HELLO ")
        assert events[1] == ("resized", [24, 80])
        assert b"".join(d for n, d in events if n == "stdout") == b"HELLO " + b"X" * 600_000
        assert events[-1] == ("exit", {"code": 0})
        assert conn.call("ping") == "pong"


def test_async_streaming_and_concurrent_calls(make_server):
    s = make_server()
    register_stream_ops(s.server, {})
    s.start()

    async def scenario():
        conn = await client.connect_async(s.path, autostart=False)
        try:
            # 30 calls finishing in the reverse order they were sent.
            calls = [conn.call("test.sleep", {"seconds": (30 - i) * 0.01, "value": i})
                     for i in range(30)]
            stream = await conn.stream("test.echo")
            await stream.send(b"abc")
            await stream.close_stdin()
            events = [e async for e in stream]
            results = await asyncio.gather(*calls)
            return results, events, await stream.result()
        finally:
            await conn.close()

    results, events, final = asyncio.run(scenario())
    assert results == list(range(30))
    assert events == [("stdout", b"ABC"), ("exit", {"code": 0})]
    assert final == {"bytes": 3, "streaming": True}


def test_sync_connection_is_shared_by_threads(make_server):
    s = make_server()
    register_stream_ops(s.server, {})
    s.start()
    results: dict[int, object] = {}
    with s.connect() as conn:
        def worker(i: int) -> None:
            results[i] = conn.call("test.sleep", {"seconds": 0.01 * (i % 5), "value": i})
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert results == {i: i for i in range(20)}


def test_the_thread_reading_for_all_hands_over_when_its_reply_comes(make_server):
    # No reader thread: the first waiting thread reads for everyone. Its reply comes
    # first here; the threads still waiting must go on being served.
    s = make_server()
    register_stream_ops(s.server, {})
    s.start()
    results: dict[int, object] = {}
    with s.connect() as conn:
        def worker(i: int) -> None:
            results[i] = conn.call("test.sleep", {"seconds": 0.05 + 0.02 * i, "value": i})
        first = threading.Thread(target=worker, args=(0,))
        first.start()
        time.sleep(0.02)                  # it is reading when the others come
        others = [threading.Thread(target=worker, args=(i,)) for i in range(1, 6)]
        for t in others:
            t.start()
        for t in [first, *others]:
            t.join(30)
        assert conn._reader is None       # no thread of its own was needed
    assert results == {i: i for i in range(6)}


def test_a_stream_being_read_routes_the_replies_of_other_threads(make_server):
    s = make_server()
    register_stream_ops(s.server, {})
    s.start()
    with s.connect() as conn:
        stream = conn.stream("test.sleep", {"seconds": 1.0, "value": "slow"})
        got: list = []
        reader = threading.Thread(target=lambda: got.append(stream.result()))
        reader.start()
        time.sleep(0.05)                  # the stream's thread reads the socket
        assert [conn.call("test.sleep", {"seconds": 0.01, "value": i})
                for i in range(5)] == list(range(5))
        reader.join(30)
        assert got == ["slow"]


def test_the_reader_thread_of_a_stdin_stream_leaves_when_the_stream_ends(make_server):
    # A stream that sends stdin gets a reader thread; once it has ended, replies wake
    # their callers again (not a reader that then wakes them), and the next such
    # stream gets a reader of its own. Calls from other threads are served throughout.
    s = make_server()
    register_stream_ops(s.server, {})
    s.start()
    with s.connect() as conn:
        for round_ in range(2):
            slow: list = []
            waiter = threading.Thread(target=lambda: slow.append(
                conn.call("test.sleep", {"seconds": 0.3, "value": "slow"})))
            waiter.start()
            time.sleep(0.05)                  # it reads the socket for everyone
            with conn.stream("test.echo") as stream:
                stream.send(b"abc")
                reader = conn._reader
                assert reader is not None and reader.is_alive()
                assert conn.call("test.sleep", {"seconds": 0.01, "value": round_}) == round_
                stream.close_stdin()
                assert [d for n, d in stream if n == "stdout"] == [b"ABC"]
                assert stream.result() == {"bytes": 3, "streaming": True}
            reader.join(10)
            assert not reader.is_alive() and conn._reader is None
            waiter.join(10)
            assert slow == ["slow"]           # its reply came after the reader left
            assert [conn.call("test.sleep", {"seconds": 0.01, "value": i})
                    for i in range(3)] == [0, 1, 2]
            assert conn._reader is None


def test_a_call_that_times_out_while_it_reads_leaves_the_connection_usable(make_server):
    s = make_server()
    state: dict = {}
    register_stream_ops(s.server, state)
    s.start()
    with s.connect() as conn:
        with pytest.raises(TimeoutError, match="test.sleep: no reply within 0.2s"):
            conn.call("test.sleep", {"seconds": 30}, timeout=0.2)
        assert conn.call("test.sleep", {"seconds": 0.01, "value": 7}) == 7
        wait_until(lambda: state.get("finished") == 2, what="the timed-out call to end")


def test_a_timed_call_works_on_a_socket_numbered_above_select_s_limit(make_server):
    # A process with many files open (a big test suite) gets a socket fd above 1023:
    # waiting for it with a timeout must not go through select(2)'s FD_SETSIZE.
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"this process may open at most {hard} files; the test needs 1200")
    if soft != resource.RLIM_INFINITY and soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))
    s = make_server()
    register_stream_ops(s.server, {})
    s.start()
    fillers = []
    try:
        while not fillers or fillers[-1] < 1100:
            fillers.append(os.open("/dev/null", os.O_RDONLY))
        with s.connect() as conn:
            assert conn._sock.fileno() > 1100
            assert conn.call("test.sleep", {"seconds": 0.01, "value": 5}, timeout=10) == 5
            with pytest.raises(TimeoutError):
                conn.call("test.sleep", {"seconds": 30}, timeout=0.1)
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_closing_fails_the_calls_other_threads_wait_for(make_server):
    s = make_server()
    register_stream_ops(s.server, {})
    s.start()
    conn = s.connect()
    failures: list = []

    def wait() -> None:
        try:
            conn.call("test.sleep", {"seconds": 30})
        except errors.SandboxError as e:
            failures.append(e)
    waiters = [threading.Thread(target=wait) for _ in range(3)]
    for t in waiters:
        t.start()
    time.sleep(0.1)
    conn.close()
    for t in waiters:
        t.join(10)
    assert [type(e) for e in failures] == [errors.Unavailable] * 3
    assert all("the connection was closed" in e.message for e in failures)
    with pytest.raises(errors.Unavailable, match="the connection was closed"):
        conn.call("ping")


def test_cancel_stops_the_handler_and_replies_cancelled(make_server):
    s = make_server()
    state: dict = {}
    register_stream_ops(s.server, state)
    s.start()
    with s.connect() as conn:
        stream = conn.stream("test.sleep")
        wait_until(lambda: state.get("started") == 1, what="the handler to start")
        stream.cancel()
        with pytest.raises(errors.Cancelled, match="test.sleep .* was cancelled"):
            stream.result()
        assert state["finished"] == 1                  # its finally ran before the reply
        with pytest.raises(TimeoutError, match="cancelled"):
            conn.call("test.sleep", timeout=0.2)
        wait_until(lambda: state["finished"] == 2, what="the timed-out call to be cancelled")
        assert conn.call("ping") == "pong"


def test_leaving_a_stream_early_cancels_it(make_server):
    s = make_server()
    state: dict = {}
    register_stream_ops(s.server, state)
    s.start()
    with s.connect() as conn:
        with conn.stream("test.sleep") as stream:
            wait_until(lambda: state.get("started") == 1, what="the handler to start")
        assert stream.done and state["finished"] == 1
        with pytest.raises(errors.Cancelled):
            stream.result()


def test_inflight_requests_per_connection_are_capped(make_server):
    s = make_server(max_inflight=3)
    state: dict = {}
    register_stream_ops(s.server, state)
    s.start()
    with s.connect() as conn:
        streams = [conn.stream("test.sleep") for _ in range(3)]
        wait_until(lambda: state.get("started") == 3, what="three handlers")
        with pytest.raises(errors.LimitExceeded, match="3 requests in flight"):
            conn.call("ping")
        streams[0].cancel()
        with pytest.raises(errors.Cancelled):
            streams[0].result()
        assert conn.call("ping") == "pong"


# ---------------------------------------------------------------- sessions

def register_session_ops(server: Server, record: list) -> None:
    async def cleanup_thing(obj_id: str) -> None:
        record.append(f"thing {obj_id}")

    async def cleanup_bad(obj_id: str) -> None:
        raise RuntimeError(f"cannot remove {obj_id}")

    async def track(ctx, params):
        if ctx.session is None:
            return None
        for kind, name in params.get("track", []):
            ctx.session.track(kind, name)
        for name in params.get("untrack", []):
            ctx.session.untrack("thing", name)
        if params.get("fn"):
            async def fn() -> None:
                record.append("fn")
            ctx.session.add_cleanup(fn, "fn")
        return {"session": ctx.session.id, "things": ctx.session.tracked("thing"),
                "connection": ctx.connection_id}

    async def hang(ctx, params):
        try:
            await asyncio.sleep(3600)
        finally:
            record.append("hang finally")

    server.register_cleanup("thing", cleanup_thing)
    server.register_cleanup("bad", cleanup_bad)
    server.register("test.track", track)
    server.register("test.hang", hang)


def test_session_cleanups_run_in_reverse_when_the_connection_drops(make_server, caplog):
    s = make_server()
    record: list[str] = []
    register_session_ops(s.server, record)
    s.start()
    conn = s.connect(session=True, label="pytest worker 1")
    assert conn.session_id
    reply = conn.call("test.track", {"track": [["thing", "a"], ["bad", "x"], ["thing", "b"],
                                               ["thing", "c"]]})
    assert reply["session"] == conn.session_id and reply["things"] == ["a", "b", "c"]
    reply = conn.call("test.track", {"untrack": ["c"], "fn": True})
    assert reply["things"] == ["a", "b"]
    with pytest.raises(errors.Conflict, match="already has session"):
        conn.call("session.open")
    hang = conn.stream("test.hang")
    wait_until(lambda: s.server._connections and any(
        c.inflight for c in s.server._connections), what="the hanging request")
    conn.close()
    wait_until(lambda: len(record) == 4, what="session cleanups")
    # The in-flight request is cancelled first; then cleanups, last tracked first; the
    # failing one is logged and does not stop the rest.
    assert record == ["hang finally", "fn", "thing b", "thing a"]
    assert "cleanup of bad x failed" in caplog.text
    with pytest.raises(errors.Unavailable):
        hang.result()


def test_without_a_session_nothing_is_tied_to_the_connection(make_server):
    s = make_server()
    record: list[str] = []
    register_session_ops(s.server, record)
    s.start()
    with s.connect() as conn:
        assert conn.call("test.track", {"track": [["thing", "a"]]}) is None
    time.sleep(0.2)
    assert record == []


def test_shutdown_cleans_sessions_then_runs_hooks_and_removes_the_socket(make_server):
    s = make_server()
    record: list[str] = []
    register_session_ops(s.server, record)

    async def hook() -> None:
        record.append("shutdown hook")

    s.server.on_shutdown(hook)
    s.start()
    conn = s.connect(session=True)
    conn.call("test.track", {"track": [["thing", "z"]]})
    s.stop()
    assert record == ["thing z", "shutdown hook"]
    assert not os.path.exists(s.path)
    with pytest.raises(errors.Unavailable):
        conn.call("ping")
    conn.close()
    again = InProcess(os.path.dirname(s.path))       # the root lock was released
    try:
        again.start()
        assert_serving(again.path)
    finally:
        again.stop()


def test_startup_hooks_run_before_the_socket_opens(make_server):
    s = make_server()
    seen: list[bool] = []

    async def hook() -> None:
        seen.append(os.path.exists(s.path))

    s.server.on_startup(hook)
    s.start()
    assert seen == [False]


# ---------------------------------------------------------------- limits

def test_connections_are_bounded(make_server):
    s = make_server(max_connections=4)
    s.start()
    conns = [s.connect() for _ in range(4)]
    with pytest.raises(errors.LimitExceeded, match="too many connections"):
        s.connect()
    conns.pop().close()
    wait_until(lambda: len(s.server._connections) == 3, what="the closed connection to go")
    conns.append(s.connect())
    assert all(c.call("ping") == "pong" for c in conns)
    for c in conns:
        c.close()


def test_slow_reader_backpressure_bounds_queued_output(make_server):
    s = make_server()
    state = {"sent": 0, "ended": None}

    async def flood(ctx, params):
        try:
            while True:
                await ctx.send_event("stdout", b"x" * 65536)
                state["sent"] += 1
        except (errors.SandboxError, asyncio.CancelledError) as exc:
            state["ended"] = type(exc).__name__
            raise

    s.server.register("test.flood", flood, streaming=True)
    s.start()
    raw = RawClient(s.path)
    raw.send(protocol.request(1, "test.flood"))
    wait_until(lambda: state["sent"] > 0, what="the flood to start")
    previous = -1
    while previous != state["sent"]:            # until send_event blocks for good
        previous = state["sent"]
        time.sleep(0.3)
    # An endless producer wrote no more than the socket buffers and the transport's
    # high-water mark hold, while the client read nothing.
    assert state["sent"] * 65536 < 16 << 20
    for _ in range(10):
        assert raw.recv()["event"] == "stdout"
    raw.close()
    # Either the blocked write fails or the drop cancels the handler: both end it.
    wait_until(lambda: state["ended"] in ("ConnectionClosed", "CancelledError"),
               what="the handler to end")
    wait_until(lambda: not s.server._connections, what="the connection to go")


def test_unread_stdin_is_capped_and_a_hang_up_is_still_noticed(make_server):
    s = make_server(stdin_buffer=256 * 1024)
    state: dict = {}

    async def ignore_stdin(ctx, params):
        state["ctx"] = ctx
        try:
            await asyncio.sleep(3600)
        finally:
            state["finished"] = True

    s.server.register("test.ignore", ignore_stdin, streaming=True)
    s.start()
    raw = RawClient(s.path)
    raw.send(protocol.request(1, "test.ignore"))
    wait_until(lambda: "ctx" in state, what="the handler to start")

    def pump() -> None:
        try:
            for _ in range(400):        # 25 MiB; the daemon stops reading long before
                raw.send({"id": 1, "stdin": b"y" * 65536})
        except OSError:
            pass

    sender = threading.Thread(target=pump)
    sender.start()
    inbox = state["ctx"]._inbox
    wait_until(lambda: inbox._bytes > 0, what="stdin to queue up")
    previous = -1
    while previous != inbox._bytes:
        previous = inbox._bytes
        time.sleep(0.3)
    assert inbox._bytes <= 256 * 1024 + 65536
    raw.sock.shutdown(socket.SHUT_RDWR)
    raw.close()
    sender.join(10)
    wait_until(lambda: state.get("finished"), what="the hang-up to be noticed")
    wait_until(lambda: not s.server._connections, what="the connection to go")


def test_a_client_that_never_reads_its_replies_is_cleaned_up_when_it_leaves(make_server,
                                                                            caplog):
    s = make_server()
    s.start()
    raw = RawClient(s.path)
    request = b"".join(protocol.encode(protocol.request(i, "no.such.op"))
                       for i in range(1, 50_001))   # ~9 MiB of error replies unread

    def flood() -> None:
        try:
            raw.send_bytes(request)
        except OSError:
            pass

    sender = threading.Thread(target=flood)
    sender.start()
    time.sleep(0.3)                     # the daemon blocks writing replies nobody reads
    raw.sock.shutdown(socket.SHUT_RDWR)
    raw.close()
    sender.join(10)
    wait_until(lambda: not s.server._connections, what="the connection to go")
    assert "reader failed" not in caplog.text
    assert_serving(s.path)


def test_disconnects_mid_stream_leak_no_tasks_or_fds(make_server):
    s = make_server()

    async def ticker(ctx, params):
        while True:
            await ctx.send_event("tick", None)
            await asyncio.sleep(0.001)

    s.server.register("test.ticker", ticker, streaming=True)
    s.start()
    fds_before = len(os.listdir("/proc/self/fd"))
    tasks_before = s.tasks()
    for i in range(1000):
        raw = RawClient(s.path)
        raw.send(protocol.request(1, "test.ticker"))
        assert raw.recv()["event"] == "tick"
        if i % 2:
            raw.send({"id": 1, "stdin": b"ignored"})
        raw.close()
    wait_until(lambda: not s.server._connections, what="all connections to go")
    wait_until(lambda: s.tasks() == tasks_before, what="the tasks to finish")
    assert len(os.listdir("/proc/self/fd")) <= fds_before
    assert_serving(s.path)


# ---------------------------------------------------------------- hostile input

def big_header(n: int) -> bytes:
    return struct.pack(">I", n)


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


GARBAGE = {
    "0xc1": framed(b"\xc1"),
    "truncated body": framed(msgpack.packb({"id": 1, "op": "ping"}))[:-3],
    "trailing bytes": framed(msgpack.packb({"id": 1, "op": "ping"}) + b"\x00"),
    "4 GiB header": big_header(0xFFFFFFFF),
    "16 MiB + 1 header": big_header(16 * 1024 * 1024 + 1),
    "zero length": big_header(0),
    "nesting 2000": framed(b"\x81\xa1k" + b"\x91" * 2000 + b"\xc0"),
    "nesting 1025 maps": framed(b"\x81\xa1k" * 1025 + b"\xc0"),
    "nesting 100": framed(b"\x81\xa1k" + b"\x91" * 100 + b"\xc0"),
    "int keys": framed(b"\x82\x01\x02\x03\x04"),
    "bin keys": framed(b"\x81\xc4\x02id\x01"),
    "ext type": framed(msgpack.packb({"id": 1, "op": msgpack.ExtType(1, b"x")})),
    "timestamp": framed(msgpack.packb({"id": 1, "op": msgpack.Timestamp(5, 0)})),
    "huge int id": framed(b"\x83\xa2id\xcf" + b"\xff" * 8 + b"\xa2op\xa4ping\xa6params\x80"),
    "negative id": framed(msgpack.packb({"id": -5, "op": "ping"})),
    "not a map": framed(msgpack.packb([1, 2, 3])),
    "bad utf-8": framed(b"\x82\xa2id\x01\xa2op\xa2\xff\xfe"),
    "4G array header": framed(b"\xdd\xff\xff\xff\xff"),
    "item flood": framed(b"\x81\xa1k\xdd" + struct.pack(">I", 1_200_000)
                         + b"\x80" * 1_200_000),
    "random bytes": bytes(range(256)) * 4,
}


@pytest.mark.parametrize("greet", [False, True], ids=["before-hello", "after-hello"])
@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_gets_an_error_or_a_close_and_the_daemon_lives(daemon, name, greet):
    raw = RawClient(daemon.path, hello=greet)
    try:
        raw.send_bytes(GARBAGE[name])
        raw.sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass    # the daemon may already have hung up
    messages = raw.drain()
    raw.close()
    assert all("error" in m and m["id"] is None for m in messages), messages
    if messages:
        assert messages[0]["error"]["code"] in ("invalid_argument", "limit_exceeded")
    assert_serving(daemon.path)


def test_other_clients_keep_being_served_during_garbage(daemon):
    with client.connect(daemon.path, autostart=False) as conn:
        for name in sorted(GARBAGE):
            raw = RawClient(daemon.path, hello=False)
            raw.send_bytes(GARBAGE[name])
            assert conn.call("ping") == "pong"
            raw.close()


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=6) | st.integers(0, 3), inner, max_size=4),
    max_leaves=20)

attacks = st.one_of(
    st.binary(min_size=1, max_size=200),                                   # unframed
    st.binary(max_size=200).map(framed),                                   # framed bytes
    msgpack_values.map(lambda v: framed(msgpack.packb(v, strict_types=False))),
    st.fixed_dictionaries({"id": msgpack_values, "op": msgpack_values,
                           "params": msgpack_values}).map(lambda v: framed(msgpack.packb(v))),
    st.tuples(st.integers(0, 0xFFFFFFFF), st.binary(max_size=50)).map(
        lambda t: big_header(t[0]) + t[1]),                                # lying headers
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=attacks, greet=st.booleans())
def test_hypothesis_garbage_from_many_connections(daemon, data, greet):
    raw = RawClient(daemon.path, hello=greet)
    try:
        raw.send_bytes(data)
        raw.sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    for message in raw.drain():                 # replies to what happened to parse
        assert "error" in message or "ok" in message
        if "error" in message:
            assert message["error"]["code"] in ("invalid_argument", "limit_exceeded",
                                                "conflict")
    raw.close()
    assert_serving(daemon.path)
    assert daemon.proc.poll() is None


def test_random_well_formed_requests_get_errors_by_id(daemon):
    raw = RawClient(daemon.path)
    bad_options = [{"image": 5}, {"image": "b", "nope": 1}, {"image": "b", "memory": [1]},
                   {"image": "b", "ulimits": {"nofile": "x"}}, {"image": "b", "env": 7},
                   {"image": "b", "environ": {"A": "1"}}, {"image": "b", "ports": {"80": [1, 2]}},
                   {"image": "b", "cpus": "lots"}, [], {"image": "b", "links": 3.5}]
    requests = [("", {}), ("x" * 129, {}), ("container.create", 5),
                ("ping", {"a": [1, {"b": None}]}), ("session.open", {"label": 5}),
                ("container.create", {"options": {"image": "b"}, "config": {}}),
                ("container.run", {"options": {"image": "b"}}),
                *[("container.config", {"options": o}) for o in bad_options]]
    for rid, (op, params) in enumerate(requests, start=1):
        raw.send({"id": rid, "op": op, "params": params})
        reply = raw.recv()
        assert reply["id"] == rid and reply["error"]["code"] == "invalid_argument", reply
    raw.send(protocol.request(99, "ping"))
    assert raw.recv() == {"id": 99, "ok": "pong"}
    raw.close()


def test_a_partial_frame_is_dropped_after_the_timeout_but_idle_is_fine(daemon):
    idle = RawClient(daemon.path)
    stalled = RawClient(daemon.path)
    stalled.send_bytes(framed(msgpack.packb(protocol.request(1, "ping")))[:7])
    (message,) = stalled.drain()               # returns once the daemon hangs up
    assert message["id"] is None and message["error"]["code"] == "limit_exceeded"
    assert "not completed within 0.5 seconds" in message["error"]["message"]
    stalled.close()
    time.sleep(0.7)                            # longer than the frame timeout, idle
    idle.send(protocol.request(1, "ping"))
    assert idle.recv() == {"id": 1, "ok": "pong"}
    idle.close()


def test_memory_stays_bounded_after_many_garbage_connections(daemon):
    def burst(rounds: int) -> None:
        for _ in range(rounds):
            for data in GARBAGE.values():
                raw = RawClient(daemon.path, hello=True)
                try:
                    raw.send_bytes(data)
                    raw.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                raw.drain()
                raw.close()
            raw = RawClient(daemon.path)        # a 15 MiB frame of valid but useless bytes
            try:
                raw.send({"id": 1, "stdin": b"\x00" * (15 << 20)})
            except OSError:
                pass
            raw.close()

    burst(5)                            # warm up allocator pools
    before = daemon.rss_kib()
    burst(40)
    after = daemon.rss_kib()
    assert after - before < 64 * 1024, (before, after)
    assert_serving(daemon.path)
    assert "reader failed" not in daemon.read_log()


# ---------------------------------------------------------------- processes

def test_sigterm_exits_0_and_removes_the_socket(short_tmp):
    proc = Proc(short_tmp, {"log-level": "debug"}, ["--default-ulimit", "nofile=1280:2560",
                                                    "--no-ip-masq"]).wait_ready()
    try:
        conn = client.connect(proc.path, autostart=False, session=True)
        assert oct(os.stat(proc.path).st_mode & 0o777) == "0o660"
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(15) == 0
        assert not os.path.exists(proc.path)
        with pytest.raises(errors.Unavailable):
            conn.call("ping")
        conn.close()
        log = proc.read_log()
        assert "received SIGTERM" in log and "stopped" in log
    finally:
        proc.stop()


def test_a_second_daemon_on_the_same_root_or_socket_is_refused(daemon, short_tmp):
    same_root = subprocess.run(
        [PY, "-m", "sandboxd.daemon", "--host", os.path.join(short_tmp, "other.sock"),
         "--root", daemon.root], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert same_root.returncode == 1
    assert f"uses root {daemon.root}" in same_root.stderr
    same_socket = subprocess.run(
        [PY, "-m", "sandboxd.daemon", "--host", daemon.path,
         "--root", os.path.join(short_tmp, "root2")], cwd=REPO, capture_output=True,
        text=True, timeout=30)
    assert same_socket.returncode == 1
    assert "already listening" in same_socket.stderr
    assert_serving(daemon.path)


def test_bad_flags_are_usage_errors(short_tmp):
    for args, fragment in ((["--default-ulimit", "nofile=10:5"], "above the hard limit"),
                           (["--host", "tcp://1.2.3.4:5"], "not supported yet"),
                           (["--log-level", "loud"], "loud")):
        out = subprocess.run([PY, "-m", "sandboxd.daemon", "--root", short_tmp, *args],
                             cwd=REPO, capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and fragment in out.stderr, out.stderr


def test_a_stale_socket_file_is_replaced(make_server):
    s = make_server()
    os.makedirs(os.path.dirname(s.path), exist_ok=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(s.path)
    stale.close()                       # the file stays; nobody listens
    s.start()
    assert_serving(s.path)


def daemons_for(path: str) -> list[int]:
    """Live sandboxd processes started for this socket path."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if b"sandboxd.daemon" in cmdline and path.encode() in cmdline and state != b"Z":
            pids.append(int(entry))
    return pids


@pytest.fixture
def autostart_dir(short_tmp):
    yield short_tmp
    path = os.path.join(short_tmp, "auto.sock")
    for pid in daemons_for(path):
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not daemons_for(path), what="autostarted daemons to exit")


def test_autostart_starts_one_daemon_for_concurrent_clients(autostart_dir):
    path = os.path.join(autostart_dir, "auto.sock")
    root = os.path.join(autostart_dir, "root")
    code = ("import sys; from sandboxd import client\n"
            "c = client.connect(sys.argv[1], autostart=True, root=sys.argv[2])\n"
            "print(c.call('system.version')['pid'])")
    env = {k: v for k, v in os.environ.items() if k not in ("SANDBOXD_HOST", "SANDBOXD_ROOT")}
    procs = [subprocess.Popen([PY, "-c", code, path, root], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    pids = {int(out) for out, _ in outs}
    assert len(pids) == 1
    started = [err for _, err in outs if "sandboxd: started a daemon at" in err]
    assert len(started) == 1
    assert started[0].strip() == (f"sandboxd: started a daemon at {path} "
                                  f"(log: {root}/daemon.log)")
    assert daemons_for(path) == list(pids)
    # Detached: its own session, not a child of the client that started it.
    (pid,) = pids
    stat_fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(stat_fields[1]) != os.getpid() and int(stat_fields[3]) == pid   # ppid, sid
    assert_serving(path)


def test_autostart_is_only_for_the_default_socket_unless_asked(autostart_dir):
    path = os.path.join(autostart_dir, "auto.sock")
    with pytest.raises(errors.Unavailable, match="no such socket; start it with"):
        client.connect(path)
    with pytest.raises(errors.Unavailable, match="no such socket"):
        client.connect(path, autostart=False)
    assert daemons_for(path) == []


def test_autostart_replaces_a_stale_socket_and_connect_async_works(autostart_dir, capsys):
    path = os.path.join(autostart_dir, "auto.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()

    async def go():
        conn = await client.connect_async(f"unix://{path}", autostart=True, session=True,
                                          root=os.path.join(autostart_dir, "root"))
        try:
            return conn.session_id, await conn.call("ping")
        finally:
            await conn.close()

    session_id, pong = asyncio.run(go())
    assert session_id and pong == "pong"
    assert "started a daemon" in capsys.readouterr().err
    assert len(daemons_for(path)) == 1
