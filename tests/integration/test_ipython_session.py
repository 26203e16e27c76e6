"""ipython_ext.session.Session against a real daemon: the worker in a real ``host``-image
container, cells with state, live output, rich output, errors, interrupt, timeout, OOM,
values in and out, and removal of the container."""
from __future__ import annotations

import base64
import sys
import types

import pytest

from harness import running, wait_until
from ipython_ext.session import ExecuteReply, Session, SessionError

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


@pytest.fixture(scope="module")
def daemon():
    with running(busybox=False) as d:
        yield d


@pytest.fixture
def client(daemon):
    c = daemon.client(session=True)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def session(client):
    with Session(client, "host", memory="256m") as s:
        yield s


def texts(reply: ExecuteReply, name: str = "stdout") -> str:
    return "".join(o["text"] for o in reply.outputs
                   if o["output_type"] == "stream" and o["name"] == name)


def test_state_is_kept_and_outputs_are_nbformat(session):
    first = session.execute("x = 6 * 7\nprint('set')")
    assert first.status == "ok" and first.execution_count == 1
    assert first.outputs == [{"output_type": "stream", "name": "stdout", "text": "set\n"}]
    reply = session.execute("import sys\nprint('out')\nprint('err', file=sys.stderr)\nx")
    assert reply.execution_count == 2 and reply.error is None
    assert texts(reply) == "out\n" and texts(reply, "stderr") == "err\n"
    assert reply.outputs[-1] == {"output_type": "execute_result", "execution_count": 2,
                                 "data": {"text/plain": "42"}, "metadata": {}}
    # A trailing semicolon and a None value show nothing, as in IPython.
    assert session.execute("x;").outputs == []
    assert session.execute("None").outputs == []
    assert session.execute("_").outputs[0]["data"] == {"text/plain": "42"}


def test_output_arrives_live(session):
    """The callback sees the first print while the cell still runs: it interrupts the
    endless cell from there, which only ends the cell if the output came live."""
    seen: list[dict] = []

    def on_output(output: dict) -> None:
        seen.append(output)
        if "".join(o.get("text", "") for o in seen) == "waiting\n":
            session.interrupt()

    reply = session.execute("import time\nprint('waiting', flush=True)\n"
                            "while True:\n    time.sleep(0.05)", on_output=on_output,
                            timeout=120)
    assert not reply.timed_out
    # print() writes its text and the newline separately: chunks as they came.
    assert seen[0]["output_type"] == "stream" and seen[0]["name"] == "stdout"
    assert reply.error["ename"] == "KeyboardInterrupt"
    assert seen[-1] == reply.error
    # The interrupt stopped only the cell: the session goes on.
    assert session.execute("1 + 1").outputs[0]["data"]["text/plain"] == "2"


def test_split_utf8_and_subprocess_output(session):
    reply = session.execute(
        "import os, time, subprocess\n"
        "data = 'é€😀'.encode()\n"
        "for i in range(len(data)):\n"
        "    os.write(1, data[i:i + 1]); time.sleep(0.01)\n"
        "subprocess.run(['echo', 'from a child'])\n")
    assert texts(reply) == "é€😀from a child\n"


def test_order_of_prints_and_displays(session):
    reply = session.execute("print('a')\ndisplay('b')\nprint('c')\n'd'")
    kinds = [(o["output_type"], o.get("text") or o["data"]["text/plain"])
             for o in reply.outputs]
    assert kinds == [("stream", "a\n"), ("display_data", "'b'"), ("stream", "c\n"),
                     ("execute_result", "'d'")]


def test_rich_outputs(session):
    code = f"""
class Html:
    def _repr_html_(self): return '<b>bold</b>'
class Png:
    def _repr_png_(self): return {PNG!r}
class Bundle:
    def _repr_mimebundle_(self, include=None, exclude=None):
        return {{'application/json': {{'a': [1, 2]}}, 'text/markdown': '# hi'}}, {{'x': 1}}
display(Html(), Png())
Bundle()
"""
    reply = session.execute(code)
    html, png, bundle = reply.outputs
    assert html["output_type"] == "display_data"
    assert html["data"]["text/html"] == "<b>bold</b>"
    assert html["data"]["text/plain"].startswith("<__main__.Html object")
    assert base64.b64decode(png["data"]["image/png"]) == PNG
    assert bundle["output_type"] == "execute_result"
    assert bundle["data"]["application/json"] == {"a": [1, 2]}
    assert bundle["data"]["text/markdown"] == "# hi"
    assert bundle["metadata"] == {"x": 1}


def test_ipython_display_objects(session):
    reply = session.execute(
        "from IPython.display import HTML, Image, Markdown, display\n"
        f"display(HTML('<i>it</i>'), Markdown('*m*'))\nImage(data={PNG!r}, format='png')")
    html, markdown, image = reply.outputs
    assert html["data"]["text/html"] == "<i>it</i>"
    assert markdown["data"]["text/markdown"] == "*m*"
    assert image["output_type"] == "execute_result"
    assert base64.b64decode(image["data"]["image/png"]) == PNG


def test_exception_traceback_names_the_cell_not_the_worker(session):
    reply = session.execute("def f():\n    raise ValueError('bad value')\n\nf()")
    assert reply.status == "error"
    assert reply.error == reply.outputs[-1]
    assert reply.error["ename"] == "ValueError" and reply.error["evalue"] == "bad value"
    text = "\n".join(reply.error["traceback"])
    assert '<cell-1>", line 4' in text and '<cell-1>", line 2, in f' in text
    assert "sandboxd-worker" not in text
    syntax = session.execute("def (")
    assert syntax.error["ename"] == "SyntaxError"
    assert session.execute("'still alive'").status == "ok"


def test_values_in_by_pickle_and_out_by_msgpack(session):
    reply = session.execute("z = (a, b * 2, {1, 2}, frozenset([3]), 1+2j, {'k': [None]})",
                            inputs={"a": (1, "x"), "b": b"\x00\xff"}, outputs=["z", "a"])
    assert reply.values == {"z": ((1, "x"), b"\x00\xff" * 2, {1, 2}, frozenset([3]),
                                  1 + 2j, {"k": [None]}), "a": (1, "x")}


def test_unsafe_values_are_refused_not_unpickled(session):
    # An object pickles fine in the container; it must not come back at all.
    reply = session.execute("class Evil:\n    def __reduce__(self): return (print, ('x',))\n"
                            "e = Evil()", outputs=["e", "missing"])
    assert reply.status == "error" and reply.values == {}
    errors = [o for o in reply.outputs if o["output_type"] == "error"]
    assert "cannot send a __main__.Evil back safely" in errors[0]["evalue"]
    assert errors[1]["ename"] == "NameError" and "'missing'" in errors[1]["evalue"]


def test_timeout_interrupts_and_the_session_survives(session):
    session.execute("kept = 'yes'")
    reply = session.execute("import time\nwhile True:\n    time.sleep(0.05)", timeout=1)
    assert reply.timed_out and reply.status == "error"
    assert reply.error["ename"] == "TimeoutError"
    assert "did not finish within 1s" in reply.error["evalue"]
    assert "KeyboardInterrupt" in reply.error["traceback"]
    assert session.execute("kept").outputs[0]["data"]["text/plain"] == "'yes'"


def test_cell_ignoring_sigint_is_killed(client):
    with Session(client, "host", interrupt_grace=0.5) as s:
        reply = s.execute("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                          "while True:\n    time.sleep(0.05)", timeout=1)
        assert reply.timed_out and reply.error["ename"] == "TimeoutError"
        assert "container was killed" in reply.error["evalue"]
        assert not s.alive
        with pytest.raises(SessionError, match="not running"):
            s.execute("1")


def test_oom_reads_as_a_clear_error(client):
    with Session(client, "host", memory="64m") as s:
        reply = s.execute("blocks = []\nwhile True:\n    blocks.append(bytearray(1 << 20))")
        assert reply.oom_killed and reply.status == "error"
        assert reply.error["ename"] == "MemoryError"
        assert "ran out of memory (limit of 64m)" in reply.error["evalue"]


def test_shell_cells(session):
    reply = session.execute("echo hi; echo oops >&2; exit 3", shell=True)
    assert texts(reply) == "hi\n" and texts(reply, "stderr") == "oops\n"
    assert reply.error["ename"] == "ShellError"
    assert "exited with status 3" in reply.error["evalue"]


def test_limits_env_and_network_reach_the_container(client, daemon):
    with Session(client, "host", memory="96m", pids=50, cpus=0.5, env={"GREETING": "hej"},
                 ulimits=["nofile=123:456"]) as s:
        reply = s.execute("import os, resource, socket\n"
                          "print(os.environ['GREETING'], resource.getrlimit("
                          "resource.RLIMIT_NOFILE), sorted(n for _, n in "
                          "socket.if_nameindex()))")
        assert texts(reply) == "hej (123, 456) ['lo']\n"
        assert daemon.cgroup_file("memory", s.container_id,
                                  "memory.limit_in_bytes") == str(96 << 20)
        assert daemon.cgroup_file("pids", s.container_id, "pids.max") == "50"
        assert daemon.cgroup_file("cpu", s.container_id, "cpu.cfs_quota_us") == "50000"


def test_close_removes_the_container(client):
    s = Session(client, "host", name="ipy-session-close").start()
    assert [c.name for c in client.containers.list()] == ["ipy-session-close"]
    s.close()
    wait_until(lambda: not client.containers.list(all=True), what="the container to go")
    s.close()                                  # idempotent


def test_dropped_connection_removes_the_session(daemon, client):
    own = daemon.client(session=True)
    s = Session(own, "host", name="ipy-session-drop").start()
    assert client.containers.list()[0].name == "ipy-session-drop"
    own.close()                                # the kernel died: its connection drops
    wait_until(lambda: not client.containers.list(all=True),
               what="the daemon to remove the dropped session's container")
    wait_until(lambda: not s.alive, what="the session to see its connection gone")
    with pytest.raises(Exception, match="connection"):
        s.execute("1")


def test_bad_options_are_named_before_start():
    with pytest.raises(Exception, match="memory"):
        Session(None, "host", memory="lots")


def test_image_without_python_fails_clearly(daemon, client):
    daemon.import_busybox()
    with pytest.raises(Exception, match="python3"):
        Session(client, "busybox").start()
    wait_until(lambda: not client.containers.list(all=True), what="the container to go")


def test_close_ends_a_worker_a_cell_thread_holds_up(client):
    s = Session(client, "host").start()
    s.execute("import threading, time\n"
              "threading.Thread(target=time.sleep, args=(3600,)).start()")
    s.close()                                  # EOF alone would wait for the thread
    wait_until(lambda: not client.containers.list(all=True), what="the container to go")


def test_close_without_waiting_kills_and_leaves_removal_to_the_daemon(client):
    s = Session(client, "host").start()
    assert s.execute("print(1)").status == "ok"
    s.close(wait=False)
    wait_until(lambda: not client.containers.list(all=True), what="the container to go")


def test_interrupt_inside_on_output_keeps_cells_apart(session):
    """A KeyboardInterrupt raised in the callback (the kernel's stdout being written)
    interrupts the cell; the next cell gets only its own outputs."""
    def on_output(output: dict) -> None:
        if output.get("text", "").startswith("tick"):
            raise KeyboardInterrupt
    reply = session.execute("import time\nprint('tick', flush=True)\n"
                            "while True:\n    time.sleep(0.05)", on_output=on_output,
                            timeout=120)
    assert reply.error["ename"] == "KeyboardInterrupt" and not reply.timed_out
    after = session.execute("print('next')")
    assert after.outputs == [{"output_type": "stream", "name": "stdout", "text": "next\n"}]


# Pickled by reference to a module that exists only in this process (the container
# shows this process's sys.path, so a class of this test module would travel).
ONLY_HERE = types.ModuleType("sbx_only_on_the_host")
sys.modules[ONLY_HERE.__name__] = ONLY_HERE


class OnlyOnTheHost:
    pass


OnlyOnTheHost.__module__ = ONLY_HERE.__name__
ONLY_HERE.OnlyOnTheHost = OnlyOnTheHost


def test_inputs_that_cannot_travel_say_why(session):
    with pytest.raises(TypeError, match="--in f: a function cannot be pickled"):
        session.execute("f", inputs={"f": lambda: 1})
    reply = session.execute("obj", inputs={"obj": OnlyOnTheHost()})
    assert reply.error["ename"] == "InputError"
    assert reply.error["evalue"].startswith("--in obj: cannot be rebuilt in the container")
    assert reply.execution_count == 1             # the refused cell was never sent
