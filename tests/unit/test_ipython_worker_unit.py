"""The cell worker without a container: its formatter and value codec in-process, and
the real worker program as a subprocess speaking its msgpack protocol (also with
msgpack and IPython hidden, as in an image without them)."""
from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from ipython_ext import worker
from ipython_ext.session import decode_value, worker_command


# ---------------------------------------------------------------- formatting

class Rich:
    def _repr_html_(self):
        return "<b>r</b>"

    def _repr_png_(self):
        return b"\x89PNG-bytes"

    def _repr_latex_(self):
        return "$x$", {"isolated": True}

    def __repr__(self):
        return "Rich()"


class Bundle:
    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/html": "<i>b</i>", "application/json": {"k": 1}}

    def _repr_html_(self):          # the bundle's own text/html wins
        return "<s>not this</s>"


class Broken:
    def _repr_html_(self):
        raise RuntimeError("repr failed")

    def __repr__(self):
        return "Broken()"


def test_format_object_builds_ipython_like_bundles(capsys):
    data, metadata = worker.format_object(Rich())
    assert data == {"text/html": "<b>r</b>", "text/latex": "$x$",
                    "image/png": base64.b64encode(b"\x89PNG-bytes").decode(),
                    "text/plain": "Rich()"}
    assert metadata == {"text/latex": {"isolated": True}}
    data, _ = worker.format_object(Bundle())
    assert data["text/html"] == "<i>b</i>" and data["application/json"] == {"k": 1}
    assert worker.format_object(Broken())[0] == {"text/plain": "Broken()"}
    assert "repr failed" in capsys.readouterr().err
    # A class is shown as itself, not by calling its unbound _repr_html_.
    assert worker.format_object(Rich)[0].keys() == {"text/plain"}
    assert worker.format_object(Rich(), exclude=["text/html"])[0].keys() == {
        "text/latex", "image/png", "text/plain"}


# ---------------------------------------------------------------- values

plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4)
    | st.tuples(children, children), max_leaves=20)


@given(plain)
def test_values_round_trip_without_pickle(value):
    assert decode_value(worker.encode_value(value)) == value


def test_sets_complex_and_subclasses():
    class Number(int):
        pass
    value = {"s": {1, 2}, "f": frozenset("ab"), "c": 1.5 - 2j, "n": Number(3)}
    back = decode_value(worker.encode_value(value))
    assert back == {"s": {1, 2}, "f": frozenset("ab"), "c": 1.5 - 2j, "n": 3}
    assert type(back["n"]) is int


def test_objects_are_refused_by_name():
    with pytest.raises(TypeError, match="cannot send a .*Path back safely"):
        worker.encode_value([Path("/")])


def test_unknown_ext_types_are_refused():
    with pytest.raises(ValueError, match="unknown ext type 9"):
        decode_value(msgpack.packb(msgpack.ExtType(9, b"x")))


@given(plain)
def test_the_workers_own_codec_speaks_msgpack(value):
    out = bytearray()
    worker.pack(value, out)
    assert msgpack.unpackb(bytes(out), raw=False, strict_map_key=False) == \
        msgpack.unpackb(msgpack.packb(value), raw=False, strict_map_key=False)
    out = bytearray()
    worker.pack(value, out, values=True)       # as encode_value without msgpack
    assert decode_value(bytes(out)) == value
    # ... and reads msgpack's own encoding, fed a byte at a time.
    unpacker = worker.Unpacker()
    packed = msgpack.packb([value, "end"], use_bin_type=True)
    got = []
    for i in range(len(packed)):
        unpacker.feed(packed[i:i + 1])
        got.extend(unpacker)
    assert got == [msgpack.unpackb(packed, raw=False, strict_map_key=False)]


# ---------------------------------------------------------------- the program

class WorkerProcess:
    """``python -u -c BOOTSTRAP <source>`` as a session starts it, on pipes."""

    def __init__(self, tmp_path: Path, hide: tuple[str, ...] = ()):
        env = dict(os.environ)
        if hide:                       # modules that fail to import, as if absent
            shadow = tmp_path / "shadow"
            shadow.mkdir()
            for name in hide:
                (shadow / f"{name}.py").write_text(f"raise ImportError('no {name}')\n")
            env["PYTHONPATH"] = str(shadow)
        self.proc = subprocess.Popen(worker_command(sys.executable), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, cwd=tmp_path)
        self.unpacker = msgpack.Unpacker(raw=False)
        self.ready = self.next()

    def next(self) -> dict:
        while True:
            for message in self.unpacker:
                return message
            data = os.read(self.proc.stdout.fileno(), 1 << 16)
            assert data, "the worker exited"
            self.unpacker.feed(data)

    def execute(self, code: str, **extra) -> list[dict]:
        self.send(code, **extra)
        return self.collect()

    def send(self, code: str, **extra) -> None:
        self.proc.stdin.write(msgpack.packb({"op": "execute", "code": code, **extra}))
        self.proc.stdin.flush()

    def collect(self) -> list[dict]:
        messages = []
        while not messages or messages[-1]["type"] != "done":
            messages.append(self.next())
        return messages

    def close(self) -> int:
        self.proc.stdin.close()
        return self.proc.wait(10)


@pytest.fixture
def process(tmp_path):
    p = WorkerProcess(tmp_path)
    yield p
    if p.proc.poll() is None:
        p.proc.kill()
        p.proc.wait()


def streams(messages: list[dict]) -> bytes:
    return b"".join(m["data"] for m in messages if m["type"] == "stream")


def test_protocol_cell_by_cell(process):
    assert process.ready["type"] == "ready"
    first = process.execute("import os\nx = 2\nprint('p'); os.system('echo child')\nx * 21")
    assert streams(first) == b"p\nchild\n"
    assert first[-2] == {"type": "result", "data": {"text/plain": "42"}, "metadata": {}}
    assert first[-1] == {"type": "done", "status": "ok", "values": {}}
    done = process.execute("y = x + 1", outputs=["y"])[-1]
    assert decode_value(done["values"]["y"]["value"]) == 3
    assert process.close() == 0                   # stdin closed: the worker ends


def test_sigint_stops_a_cell_and_is_ignored_between_cells(process):
    process.send("import time\nprint('started', flush=True)\nwhile True:\n"
                 "    time.sleep(0.01)")
    seen = b""
    while not seen.endswith(b"\n"):              # print's parts may come one by one
        message = process.next()
        assert message["type"] == "stream" and message["name"] == "stdout"
        seen += message["data"]
    assert seen == b"started\n"
    process.proc.send_signal(signal.SIGINT)
    messages = process.collect()
    assert messages[-2]["type"] == "error" and messages[-2]["ename"] == "KeyboardInterrupt"
    assert not any("sandboxd-worker" in line for line in messages[-2]["traceback"])
    process.proc.send_signal(signal.SIGINT)        # idle: nothing happens
    assert process.execute("'alive'")[-2]["data"]["text/plain"] == "'alive'"


def test_cell_namespace_is_a_main_module_that_pickles(process):
    messages = process.execute("import pickle\nclass Point:\n    pass\n"
                               "type(pickle.loads(pickle.dumps(Point()))).__qualname__")
    assert messages[-2]["data"]["text/plain"] == "'Point'"


def test_without_msgpack_and_ipython(tmp_path):
    """An image with a bare Python: values through the worker's own codec, display
    through its own formatter."""
    p = WorkerProcess(tmp_path, hide=("msgpack", "IPython"))
    try:
        messages = p.execute(
            "class H:\n    def _repr_html_(self): return '<p/>'\n"
            "display(H())\nv = {'a': [1, 2.5, None, 'é', b'\\x00']}\nprint('ok')\nv",
            outputs=["v"], inputs={})
        kinds = [m["type"] for m in messages]
        assert [k for i, k in enumerate(kinds) if kinds[i - 1:i] != [k]] == \
            ["display", "stream", "result", "done"]
        assert streams(messages) == b"ok\n"
        assert messages[0]["data"]["text/html"] == "<p/>"
        assert decode_value(messages[-1]["values"]["v"]["value"]) == \
            {"a": [1, 2.5, None, "é", b"\x00"]}
        failed = p.execute("import IPython")
        assert failed[-2]["ename"] == "ImportError"
    finally:
        p.close()


def test_top_level_await_as_in_ipython(process):
    messages = process.execute("import asyncio\nawait asyncio.sleep(0)\n"
                               "await asyncio.sleep(0, result=7)")
    assert messages[-2]["data"]["text/plain"] == "7"


@settings(deadline=None)   # the first example imports ipykernel: over 200 ms on a busy host
@given(st.text(st.characters(blacklist_categories=("Cs",))))
def test_cells_are_named_with_ipykernels_hash(text):
    """IPython mode names a cell's code as ipykernel does (the name shows in a
    SyntaxError's message): the same MurmurHash2 and seed."""
    compiler = pytest.importorskip("ipykernel.compiler")
    seed = compiler.get_tmp_hash_seed()
    assert worker._murmur2(text.encode("utf-8"), seed) == compiler.murmur2_x86(text, seed)
