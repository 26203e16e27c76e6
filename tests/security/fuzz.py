"""The fuzzer of tests/security (issue 13, CHECKS.md 28 and 29): hypothesis strategies for
garbage frames and for well-formed requests to every operation with hostile params, a
pipelining raw client, and the daemon's own figures read from /proc.

The operations and their fields are read from the daemon's operation table
(``sandboxd/operations.py``), so an operation added later is fuzzed without touching
this file; ``container.config``'s options take their names from
``flags.build_config``'s signature, and ``container.create``/``run``'s ``config`` is a
valid one with hostile values in some of its fields.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
from hypothesis import strategies as st

from sandboxd import flags, protocol
from sandboxd.filters import FILTER_KEYS
from sandboxd import operations as table

REPO = Path(__file__).resolve().parents[2]

# Fields the fuzzer must not fill at random: a daemon-side path given to image.import or
# image.load is read (or, for a directory, imported whole) by the daemon; random paths
# stay under a directory that does not exist.
SAFE_PATH_OPS = {"image.import", "image.load"}
# Ops that stream until a time or the client's end (system.events): their ``until`` is
# always in the past, so a valid request ends at once instead of holding its batch's
# connection until the batch times out.
ENDLESS_OPS = {"system.events"}


def operations() -> dict[str, set[str]]:
    """op -> its params' field names (retired ones too: they must be refused), read
    from the daemon's operation table."""
    return {op.name: {f.name for f in dataclasses.fields(op.params)} | set(op.params.RETIRED)
            for op in table.TABLE}


CONFIG = flags.build_config("fuzz-image-not-here").to_dict()
OPTION_NAMES = sorted(set(inspect.signature(flags.build_config).parameters)
                      - flags.CLIENT_SIDE)

# ---------------------------------------------------------------- values

huge_ints = st.sampled_from([0, -1, 1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1,
                             -(2**63), 2**64 - 1, 65536, -65536])
hostile_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "/", "..", "../..", "a/b", "\x00", "a\x00b", "/proc/self/fd/3",
                     "/proc", "/sys/fs/cgroup", "-1", "nan", "SIGKILL", "KILL", "9",
                     "busybox", "a=b", "=", "nofile=10:5", "nofile=-1", "x" * 10_000,
                     "(a+)+$", "[", "*", "%s%n", "\u202e", "\ud7ff", "label=a=b",
                     "name=[", "status=nope"]),
)
scalars = st.one_of(st.none(), st.booleans(), huge_ints,
                    st.integers(-(2**63), 2**64 - 1),
                    st.floats(allow_nan=True, allow_infinity=True), hostile_text,
                    st.binary(max_size=40))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(hostile_text, inner,
                                                                max_size=5),
    max_leaves=12)


def _field(op: str, name: str) -> st.SearchStrategy:
    if name == "path" and op in SAFE_PATH_OPS:
        return st.one_of(st.none(), st.text(max_size=20).map(
            lambda t: "/nonexistent-sandboxd-fuzz/" + t.replace("\x00", "")), values)
    if name == "options":
        return st.one_of(values, st.dictionaries(
            st.sampled_from(OPTION_NAMES) | hostile_text, values, max_size=6).map(
                lambda d: {"image": "fuzz-image-not-here", **d}))
    if name == "config":
        return st.one_of(values, st.tuples(
            st.dictionaries(st.sampled_from(sorted(CONFIG)) | hostile_text, values,
                            max_size=3),
            st.dictionaries(st.sampled_from(sorted(CONFIG["host"])) | hostile_text, values,
                            max_size=3)).map(
                lambda t: {**CONFIG, **t[0], "host": {**CONFIG["host"], **t[1]}}))
    if name == "filters":
        return st.one_of(values, st.dictionaries(
            st.sampled_from(list(FILTER_KEYS) + ["type", "driver", "scope"])
            | hostile_text, values | st.lists(hostile_text, max_size=3), max_size=4))
    return values


def params_for(op: str, names: set[str]) -> st.SearchStrategy:
    known = st.fixed_dictionaries({}, optional={n: _field(op, n) for n in sorted(names)})
    extra = st.dictionaries(hostile_text, values, max_size=2)
    drawn = st.one_of(known, st.tuples(known, extra).map(lambda t: {**t[1], **t[0]}),
                      values)
    if op in ENDLESS_OPS:
        return drawn.map(lambda p: {**p, "until": 1} if isinstance(p, dict) else p)
    return drawn


def requests(ops: dict[str, set[str]]) -> st.SearchStrategy:
    """(op, params) for a known op with hostile params, or an unknown op."""
    known = st.sampled_from(sorted(ops)).flatmap(
        lambda op: st.tuples(st.just(op), params_for(op, ops[op])))
    return st.one_of(known, known, known, st.tuples(hostile_text, values))


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def _mutate(data: bytes, cuts: list[tuple[int, int]]) -> bytes:
    buf = bytearray(data)
    for pos, byte in cuts:
        if buf:
            buf[pos % len(buf)] = byte
    return bytes(buf)


garbage = st.one_of(
    st.binary(min_size=1, max_size=300),                                     # unframed
    st.binary(min_size=1, max_size=300).map(framed),                         # framed junk
    st.tuples(st.integers(0, 0xFFFFFFFF), st.binary(max_size=40)).map(       # lying headers
        lambda t: struct.pack(">I", t[0]) + t[1]),
    st.tuples(values, st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)),
                               min_size=1, max_size=4)).map(                 # flipped bytes
        lambda t: _mutate(framed(msgpack.packb({"id": 1, "op": "ping", "params": t[0]})),
                          t[1])),
    st.sampled_from([framed(b"\xc1"), framed(b"\x81\xa1k" + b"\x91" * 1100 + b"\xc0"),
                     framed(b"\x82\x01\x02\x03\x04"),
                     framed(msgpack.packb({"id": 1, "op": msgpack.ExtType(1, b"x")})),
                     framed(b"\x81\xa2id\xcf" + b"\xff" * 8),
                     framed(msgpack.packb({"id": 1, "op": "ping"}) + b"\x00"),
                     framed(msgpack.packb({"id": 1, "op": "ping"}))[:-2],
                     struct.pack(">I", 0xFFFFFFFF)]),
)


# ---------------------------------------------------------------- the client

@dataclass
class Tally:
    frames: int = 0
    replies: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    unanswered: int = 0
    internal: list[str] = field(default_factory=list)

    def add(self, message: dict) -> None:
        self.replies += 1
        error = message.get("error")
        code = "ok" if error is None else str(error.get("code"))
        self.codes[code] = self.codes.get(code, 0) + 1
        if code == "internal":
            self.internal.append(str(error.get("message"))[:300])


def _encode(rid: int, op: object, params: object) -> bytes | None:
    try:
        return framed(msgpack.packb({"id": rid, "op": op, "params": params},
                                    use_bin_type=True))
    except (OverflowError, TypeError, ValueError):
        return None     # a value msgpack cannot carry (an int beyond 64 bits)


def send_batch(path: str, batch: list[tuple[object, object]], tally: Tally,
               timeout: float = 15.0) -> None:
    """One connection: hello, every request pipelined with a ``stdin_eof`` after it (so
    an upload ends; a non-streaming op's is dropped), then read until each is answered
    or ``timeout``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    frames = protocol.FrameBuffer()
    try:
        out = [protocol.encode(protocol.hello("fuzz/1"))]
        waiting: set[int] = set()
        for rid, (op, params) in enumerate(batch, start=1):
            frame = _encode(rid, op, params)
            if frame is None:
                continue
            out.append(frame)
            waiting.add(rid)
            out.append(protocol.encode({"id": rid, "stdin_eof": True}))
        tally.frames += len(out)
        sock.sendall(b"".join(out))
        deadline = time.monotonic() + timeout
        hello_seen = False
        while waiting and time.monotonic() < deadline:
            try:
                data = sock.recv(1 << 16)
            except socket.timeout:
                break
            if not data:
                break
            for message in frames.feed(data):
                if message.get("id") == 0 and not hello_seen:
                    hello_seen = True
                    continue
                if "event" in message:
                    continue
                assert message.get("id") is not None, f"connection error: {message}"
                waiting.discard(message["id"])
                tally.add(message)
        tally.unanswered += len(waiting)
    finally:
        sock.close()


def send_garbage(path: str, data: bytes, greet: bool, tally: Tally) -> None:
    """One connection: (hello), the garbage, then whatever the daemon answers until it
    closes; every answer must be an error or a reply, never ``internal``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    frames = protocol.FrameBuffer()
    try:
        try:
            if greet:
                sock.sendall(protocol.encode(protocol.hello("fuzz/1")))
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass                 # the daemon hung up first
        tally.frames += 1 + greet
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            try:
                messages = frames.feed(chunk)
            except protocol.ProtocolError:
                break
            for message in messages:
                if message.get("id") == 0 and "ok" in message:
                    continue
                tally.add(message)
    finally:
        sock.close()


# ---------------------------------------------------------------- the daemon's figures

def proc_figures(pid: int) -> dict[str, int]:
    """RSS (KiB), threads and open fds of ``pid``, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    get = {key: value.split()[0] for key, _, value in (line.partition(":") for line in status)
           if value.split()}
    return {"rss_kib": int(get["VmRSS"]), "threads": int(get["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}
