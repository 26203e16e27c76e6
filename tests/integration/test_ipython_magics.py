"""``%%container`` / ``%container`` in a real IPython shell (``InteractiveShell``) and in
a real kernel (ipykernel through ``jupyter_client``), against a real daemon: every
option, live output, rich output, errors, interrupt, timeout, OOM, sessions and their
removal when the kernel goes."""
from __future__ import annotations

import os
import sys

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from harness import running, wait_until
from ipython_ext.magics import CellError, Displayed


@pytest.fixture(scope="module")
def daemon():
    with running() as d:
        yield d


@pytest.fixture(scope="module")
def ip(daemon):
    shell = InteractiveShell.instance()
    shell.config.ContainerMagics.host = daemon.sock
    shell.run_line_magic("load_ext", "sandboxd")
    try:
        yield shell
    finally:
        shell.run_line_magic("unload_ext", "sandboxd")


@pytest.fixture
def magics(ip):
    return ip._sandboxd_magics


@pytest.fixture
def client(daemon):
    c = daemon.client()
    try:
        yield c
    finally:
        c.close()


def run(ip, cell: str, store_history: bool = False):
    """Run a cell; (result, stdout, stderr, rich outputs)."""
    with capture_output() as captured:
        result = ip.run_cell(cell, store_history=store_history)
    return result, captured.stdout, captured.stderr, captured.outputs


def cell_error(result) -> CellError:
    assert isinstance(result.error_in_exec, CellError), result.error_in_exec
    return result.error_in_exec


def test_loading_registers_both_magics_with_help(ip):
    magics = ip.magics_manager.magics
    assert "container" in magics["cell"] and "container" in magics["line"]
    doc = magics["cell"]["container"].__doc__
    for option in ("--image", "--memory", "--cpus", "--cpu-quota", "--cpu-period",
                   "--pids", "--ulimit", "--net", "--link", "--env", "--volume",
                   "--timeout", "--shell", "--in", "--out", "--no-raise", "--session"):
        assert option in doc, option
    # The ipython_ext name loads the same extension.
    ip.run_line_magic("unload_ext", "sandboxd")
    ip.magics_manager.magics["cell"].pop("container")
    ip.run_line_magic("load_ext", "ipython_ext")
    try:
        assert "container" in ip.magics_manager.magics["cell"]
        assert ip._sandboxd_magics.host == ip.config.ContainerMagics.host
    finally:
        ip.run_line_magic("unload_ext", "ipython_ext")
        ip.run_line_magic("load_ext", "sandboxd")


def test_fresh_cell_prints_and_displays_its_value(ip, client):
    count = ip.execution_count
    result, out, err, _ = run(ip, "%%container\nprint('hello from inside')\n6 * 7",
                              store_history=True)     # numbered as a user's cell is
    assert result.success, result.error_in_exec
    assert out.startswith("hello from inside\n")
    assert isinstance(result.result, Displayed)
    assert result.result.data == {"text/plain": "42"}
    assert f"Out[{count}]: 42" in out               # the displayhook, with the cell's count
    wait_until(lambda: not client.containers.list(all=True),
               what="the cell's container to be removed")


def test_fresh_cells_share_nothing(ip):
    run(ip, "%%container\nsecret = 1")
    error = cell_error(run(ip, "%%container\nsecret")[0])
    assert error.ename == "NameError"


def test_exception_raises_with_the_container_traceback(ip):
    result, _, _, _ = run(ip, "%%container\ndef f():\n    raise KeyError('k')\nf()")
    error = cell_error(result)
    assert error.ename == "KeyError"
    lines = error._render_traceback_()
    assert any('<cell-1>", line 3' in line for line in lines)
    assert lines[-1] == "KeyError: 'k'"


def test_no_raise_shows_the_traceback_only(ip):
    result, _, err, _ = run(ip, "%%container --no-raise\nraise ValueError('shown')")
    assert result.success
    assert "ValueError: shown" in err


def test_rich_output(ip):
    result, _, _, outputs = run(ip, (
        "%%container\nfrom IPython.display import HTML, display\n"
        "display(HTML('<b>inside</b>'))\n"
        "class Md:\n    def _repr_markdown_(self): return '*md*'\nMd()"))
    assert result.success
    assert outputs[0].data["text/html"] == "<b>inside</b>"
    assert result.result.data["text/markdown"] == "*md*"


def test_in_and_out_variables(ip):
    ip.user_ns["numbers"] = [1, 2, 3]
    ip.user_ns["scale"] = 10
    result, _, _, _ = run(ip, "%%container --in numbers,scale --out total,label\n"
                              "total = sum(numbers) * scale\nlabel = ('sum', total)")
    assert result.success, result.error_in_exec
    assert ip.user_ns["total"] == 60 and ip.user_ns["label"] == ("sum", 60)
    unsafe = cell_error(run(ip, "%%container --out obj\nobj = object()")[0])
    assert unsafe.ename == "TypeError" and "back safely" in unsafe.evalue
    with pytest.raises(UsageError, match="no variable nowhere"):
        ip.run_cell_magic("container", "--in nowhere", "1")


def test_timeout_and_oom_are_clear_errors(ip):
    timed = cell_error(run(ip, "%%container --timeout 1\nimport time\n"
                               "while True:\n    time.sleep(0.05)")[0])
    assert timed.ename == "TimeoutError" and "within 1s" in timed.evalue
    oom = cell_error(run(ip, "%%container -m 64m\nkeep = []\n"
                             "while True:\n    keep.append(bytearray(1 << 20))")[0])
    assert oom.ename == "MemoryError" and "limit of 64m" in oom.evalue


def test_pids_ulimit_env_and_volume(ip, tmp_path):
    (tmp_path / "data.txt").write_text("from the host")
    result, out, _, _ = run(ip, (
        f"%%container --pids 16 --ulimit nofile=64:128 -e COLOUR=blue "
        f"-v {tmp_path}:/data:ro\n"
        "import os, resource, threading, time\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE), os.environ['COLOUR'],\n"
        "      open('/data/data.txt').read())\n"
        "try:\n"
        "    for _ in range(64):\n"
        "        threading.Thread(target=time.sleep, args=(5,), daemon=True).start()\n"
        "except RuntimeError as e:\n"
        "    print('pids limit hit:', e)\n"
        "try:\n    open('/data/new', 'w')\nexcept OSError as e:\n    print(e.strerror)"))
    assert result.success, result.error_in_exec
    assert out.splitlines()[:3] == ["(64, 128) blue from the host",
                                    "pids limit hit: can't start new thread",
                                    "Read-only file system"]


def test_networks_and_links(ip, client):
    result, out, _, _ = run(ip, "%%container\nimport socket\n"
                                "print([n for _, n in socket.if_nameindex()])")
    assert out.startswith("['lo']\n")          # --net none is the default
    web = client.containers.run("busybox", ["sleep", "60"], name="ipy-web",
                                network_mode="bridge", remove=True)
    try:
        result, out, _, _ = run(ip, "%%container --net bridge --link ipy-web:db\n"
                                    "import os, socket\nprint(os.environ['DB_NAME'])\n"
                                    "print(socket.gethostbyname('db'))")
        assert result.success, result.error_in_exec
        name, address = out.splitlines()[:2]
        assert name.endswith("/db")
        assert address == web.reload().attrs["NetworkSettings"]["IPAddress"]
    finally:
        web.kill()


def test_shell_cells_fresh_and_in_busybox(ip):
    result, out, _, _ = run(ip, "%%container --shell\necho $((6 * 7)); echo é")
    assert result.success and out == "42\né\n"
    result, out, _, _ = run(ip, "%%container --shell --image busybox\nbusybox | head -1")
    assert result.success and out.startswith("BusyBox")
    failed = cell_error(run(ip, "%%container --shell --image busybox\nexit 4")[0])
    assert failed.ename == "ShellError" and "status 4" in failed.evalue
    timed = cell_error(run(ip, "%%container --shell --image busybox --timeout 1\n"
                               "echo before; sleep 60")[0])
    assert timed.ename == "TimeoutError" and "within 1s" in timed.evalue


def test_sessions_keep_state(ip, magics, daemon, client):
    _, out, _, _ = run(ip, "%container start work -m 128m --cpus 0.5 --pids 40 -e MODE=s")
    assert out.startswith("session 'work' started")
    try:
        cid = magics.sessions["work"].container_id
        assert daemon.cgroup_file("memory", cid, "memory.limit_in_bytes") == str(128 << 20)
        assert daemon.cgroup_file("cpu", cid, "cpu.cfs_quota_us") == "50000"
        assert daemon.cgroup_file("pids", cid, "pids.max") == "40"
        assert run(ip, "%%container work\nimport os\ncounter = 1")[0].success
        run(ip, "%%container --session work\ncounter += 1")
        result, out, _, _ = run(ip, "%%container work\nprint(os.environ['MODE'], counter)")
        assert out == "s 2\n"
        result, out, _, _ = run(ip, "%%container work --shell\necho $MODE")
        assert out == "s\n"
        _, listing, _, _ = run(ip, "%container ls")
        assert listing.split("\n")[1].split() == ["work", "host", cid[:12], "running", "4"]
        with pytest.raises(UsageError, match="set by %container start work"):
            ip.run_cell_magic("container", "work -m 1g", "1")
        with pytest.raises(UsageError, match="running already"):
            ip.run_line_magic("container", "start work")
    finally:
        run(ip, "%container stop work")
    assert "work" not in magics.sessions
    wait_until(lambda: not client.containers.list(all=True), what="the session's removal")
    with pytest.raises(UsageError, match="no session 'work'"):
        ip.run_cell_magic("container", "work", "1")
    with pytest.raises(UsageError, match="usage"):
        ip.run_line_magic("container", "bogus")


def test_traitlets_defaults(ip, daemon):
    ip.config.ContainerMagics.memory = "72m"
    ip.config.ContainerMagics.env = ["FROM_CONFIG=1"]
    ip.config.ContainerMagics.image = "busybox"
    ip.run_line_magic("reload_ext", "sandboxd")
    try:
        magics = ip._sandboxd_magics
        assert (magics.memory, magics.image) == ("72m", "busybox")
        result, out, _, _ = run(ip, "%%container --shell\necho $FROM_CONFIG")
        assert result.success and out == "1\n"         # busybox: no Python needed
        run(ip, "%container start conf --image host")
        cid = magics.sessions["conf"].container_id
        assert daemon.cgroup_file("memory", cid, "memory.limit_in_bytes") == str(72 << 20)
    finally:
        for key in ("memory", "env", "image"):
            del ip.config.ContainerMagics[key]
        ip.run_line_magic("reload_ext", "sandboxd")      # stops 'conf' too


# ---------------------------------------------------------------- a real kernel

@pytest.fixture
def kernel(daemon):
    from jupyter_client.manager import KernelManager
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env={**os.environ, "SANDBOXD_HOST": daemon.sock,
                         "PYTHONPATH": os.pathsep.join(sys.path)})
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)


def execute(kc, code: str, on_iopub=None, timeout: float = 60) -> tuple[dict, list[dict]]:
    """Run ``code`` in the kernel: its execute_reply content and its iopub messages."""
    msg_id = kc.execute(code)
    messages = []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        messages.append(msg)
        if on_iopub is not None:
            on_iopub(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    reply = kc.get_shell_msg(timeout=timeout)
    return reply["content"], messages


def test_kernel_streams_live_and_interrupt_stops_the_cell(kernel):
    km, kc = kernel
    reply, _ = execute(kc, "%load_ext sandboxd")
    assert reply["status"] == "ok"

    def interrupt_on_go(msg):
        if msg["msg_type"] == "stream" and "go" in msg["content"]["text"]:
            km.interrupt_kernel()
    reply, messages = execute(kc, "%%container\nimport time\nprint('go', flush=True)\n"
                                  "while True:\n    time.sleep(0.05)", interrupt_on_go)
    assert reply["status"] == "error"
    assert reply["ename"] == "CellError" and "KeyboardInterrupt" in reply["evalue"]
    kinds = [m["msg_type"] for m in messages]
    assert kinds.index("stream") < kinds.index("error")
    reply, messages = execute(kc, "%%container\nfrom IPython.display import HTML\n"
                                  "HTML('<p>rich</p>')")
    result = [m for m in messages if m["msg_type"] == "execute_result"]
    assert result[0]["content"]["data"]["text/html"] == "<p>rich</p>"


def test_kernel_death_removes_its_sessions(kernel, client):
    km, kc = kernel
    execute(kc, "%load_ext sandboxd")
    reply, _ = execute(kc, "%container start doomed")
    assert reply["status"] == "ok"
    assert [c.name for c in client.containers.list()] != []
    km.shutdown_kernel(now=True)                  # killed: no atexit runs
    wait_until(lambda: not client.containers.list(all=True), 30,
               "the dead kernel's session container to be removed")


def test_kernel_exit_stops_sessions(kernel, client):
    km, kc = kernel
    execute(kc, "%load_ext sandboxd")
    execute(kc, "%container start graceful")
    assert client.containers.list()
    km.shutdown_kernel(now=False)                 # a clean exit: atexit closes sessions
    wait_until(lambda: not client.containers.list(all=True), 30,
               "the exited kernel's session container to be removed")

