"""CHECKS.md 23-30: daemon faults and bad input, each a real attempt against a real
daemon (``python -m sandboxd.daemon``) over its socket.

Figures printed with ``-s`` (cycles, RSS, fds) go to docs/security.md. Knobs:
``SANDBOXD_FAULT_CONTAINERS`` (containers running when the daemon is SIGKILLed, default
20) and ``SANDBOXD_CYCLES`` (client disconnects mid-stream, default 1000).
"""
from __future__ import annotations

import grp
import json
import os
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import msgpack
import pytest

import fuzz
from harness import PY, REPO, Daemon, RawClient, pid_alive, running, wait_until
from registries import NO_REGISTRY, REGISTRY_BIN, StallingProxy, serve_registry
from sandboxd import protocol, testing
from sandboxd.errors import SandboxError
from sandboxd.flags import build_config
from sandboxd.images import ImageService
from sandboxd.network import POOL_SIZE, USER_POOL_SIZE
from sandboxd.snapshots import Snapshotter
from sandboxd.store import ContentStore, Store

FAULT_CONTAINERS = int(os.environ.get("SANDBOXD_FAULT_CONTAINERS", "20"))
CYCLES = int(os.environ.get("SANDBOXD_CYCLES", "1000"))


def figures(d: Daemon) -> dict[str, int]:
    return fuzz.proc_figures(d.proc.pid)


def assert_serving(d: Daemon) -> None:
    raw = RawClient(d.sock)
    assert raw.call(1, "ping") == {"id": 1, "ok": "pong"}
    raw.close()


@pytest.fixture(scope="module")
def strict_daemon(tmp_path_factory):
    """A daemon with short limits for the bad-input checks (busybox imported)."""
    conf = tmp_path_factory.mktemp("conf") / "daemon.json"
    conf.write_text(json.dumps({"frame-timeout": 0.5, "max-connections": 24}))
    d = Daemon("--config", str(conf)).start()
    try:
        d.import_busybox()
        yield d
    finally:
        d.stop()


@pytest.fixture
def fresh():
    with running() as d:
        yield d


# ---------------------------------------------------------------- 23: SIGKILL

@pytest.fixture
def stuck_pull_source(tmp_path):
    """``(reference, proxy)``: an image pushed to a local registry, reached through a
    proxy that holds back its config blob (the first blob a pull asks for) until
    ``proxy.let_go()``; None when docker-registry is not installed."""
    if REGISTRY_BIN is None:
        yield None
        return
    with serve_registry(tmp_path / "registry") as registry:
        root = tmp_path / "pusher"
        store = Store(root)
        images = ImageService(store, ContentStore(root), Snapshotter(root, store))
        image_id = images.import_rootfs(testing.busybox_tar(), f"{registry}/sbx/mid:v1",
                                        message="pushed for check 23")
        images.push(f"{registry}/sbx/mid:v1")
        proxy = StallingProxy(registry, image_id)
        try:
            yield f"{proxy.address}/sbx/mid:v1", proxy
        finally:
            proxy.close()


def test_check_23_sigkill_with_containers_running_loses_nothing(
        fresh: Daemon, stuck_pull_source) -> None:
    if stuck_pull_source is None:
        pytest.skip(f"the mid-pull part needs a local registry: {NO_REGISTRY}")
    d = fresh
    reference, proxy = stuck_pull_source
    d.sbx("network", "create", "f-net", check=True)
    # Started through the Python client: one connection, not a CLI process each
    # (~0.2 s apiece); `sbx run -d` itself is the CLI tests'.
    client = d.client()
    names: dict[str, bool] = {}                       # name -> --rm
    for i in range(FAULT_CONTAINERS):
        network = ("f-net", "bridge", "default")[i % 3]
        names[f"f{i}"] = i % 4 == 0
        client.containers.run("busybox", ["sh", "-c",
                              f"echo out-{i}; echo err-{i} >&2; exec sleep 600"],
                              name=f"f{i}", remove=i % 4 == 0, network_mode=network)
    assert d.sbx("run", "--name", "f-done", "busybox", "sh", "-c",
                 "echo done-out; exit 7").returncode == 7
    # one mid-build: a RUN step sleeping while the daemon dies
    build = subprocess.Popen([PY, "-m", "sandboxd", "build", "-t", "mid-build", "-"],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=d.env, cwd=REPO)
    build.stdin.write(b"FROM busybox\nRUN echo building && sleep 600\n")
    build.stdin.close()
    wait_until(lambda: len(d.cgroup_children()) > FAULT_CONTAINERS, 30,
               "the build's RUN container to start")
    # one mid-pull: its config blob held back by the proxy
    pull = subprocess.Popen([PY, "-m", "sandboxd", "pull", reference],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=d.env, cwd=REPO)
    assert proxy.stalled.wait(30), "the pull never asked for the config blob"
    wait_until(lambda: all(client.containers.get(n).logs() for n in names), 15,
               "every container's log")
    client.close()
    # one inspect of them all (a CLI process per container is ~0.2 s each)
    rows = [line.split() for line in d.sbx("inspect", "-f", "{{.Name}} {{.State.Pid}} {{.Id}}",
                                           *names, check=True).out.splitlines()]
    pids = [int(pid) for _name, pid, _id in rows]
    ids = {name.lstrip("/"): cid for name, _pid, cid in rows}
    assert set(ids) == set(names)
    forkservers = d.forkserver_pids()

    d.kill9()
    wait_until(lambda: not any(pid_alive(p) for p in pids + forkservers), 20,
               "the containers and the fork server to die with the daemon")
    wait_until(lambda: not d.leftover_processes(), 20, "the daemon's helpers to clean up")
    build.wait(30)
    assert build.returncode != 0                      # the build failed, visibly
    pull.wait(30)
    assert pull.returncode != 0                       # so did the pull
    proxy.let_go()

    d.start()
    client = d.client()
    listed = set(d.sbx("ps", "-a", "--format", "{{.Names}}", check=True).out.split())
    kept = {n for n, remove in names.items() if not remove}
    assert listed == kept | {"f-done"}
    states = {}
    for line in d.sbx("inspect", "-f", "{{.Name}}|{{.State.Status}}|{{.State.ExitCode}}|"
                      "{{.State.Error}}", *sorted(kept), check=True).out.splitlines():
        name, status, code, error = line.split("|", 3)
        states[name.lstrip("/")] = (status, code, error)
    for name in names:
        if name not in kept:
            assert not (Path(d.root) / "containers" / ids[name]).exists()
            continue
        status, code, error = states[name]
        assert (status, code) == ("exited", "137"), name
        assert "daemon stopped" in error, (name, error)
        i = name[1:]
        container = client.containers.get(name)
        assert (container.logs(stderr=False), container.logs(stdout=False)) == (
            f"out-{i}\n".encode(), f"err-{i}\n".encode())
    assert d.sbx("inspect", "-f", "{{.State.ExitCode}}", "f-done").out.strip() == "7"
    assert d.sbx("logs", "f-done").out == "done-out\n"
    # no sqlite row of what is gone: containers, addresses of dead containers
    stored = {r[0] for r in d.meta_rows("SELECT id FROM containers")}
    assert stored == {ids[n] for n in kept} | {
        d.sbx("inspect", "-f", "{{.Id}}", "f-done").out.strip()}
    owners = {owner for _address, owner in d.addresses()}
    assert not owners & set(ids.values()), owners
    assert "mid-build" not in d.sbx("images").out
    assert "sbx/mid" not in d.sbx("images").out
    assert not [p for ingest in Path(d.root).rglob("ingest") for p in ingest.iterdir()]
    d.sbx("pull", reference, check=True)              # the same pull works now
    assert not d.cgroup_children()                    # no build or container cgroup
    d.sbx("start", "f1", check=True)                  # a pre-crash container runs again
    assert d.sbx("exec", "f1", "echo", "alive", check=True).out == "alive\n"
    d.sbx("rm", "-f", *kept, "f-done", check=True)
    d.sbx("rmi", reference, check=True)
    d.sbx("network", "rm", "f-net", check=True)
    owners = {owner for _address, owner in d.addresses()}
    assert not owners & set(ids.values()), owners
    client.close()
    d.stop()                                          # nothing left (harness)


# ---------------------------------------------------------------- 24: SIGTERM

def test_check_24_sigterm_stops_everything_and_exits_0(fresh: Daemon) -> None:
    d = fresh
    d.sbx("network", "create", "t-net", check=True)
    d.sbx("run", "-d", "--name", "t-rm", "--rm", "--network", "t-net", "busybox",
          "sleep", "600", check=True)
    d.sbx("run", "-d", "--name", "t-keep", "-p", "127.0.0.1::80", "busybox", "sleep", "600",
          check=True)
    pids = [int(d.sbx("inspect", "-f", "{{.State.Pid}}", n, check=True).out)
            for n in ("t-rm", "t-keep")]
    d.stop()            # exit 0, socket removed, no mount, cgroup, link or process left
    assert not any(pid_alive(p) for p in pids)
    assert not os.path.exists(d.sock)


# ---------------------------------------------------------------- 25: failure at each step

FAILING_STARTS = {
    # what fails and at which step (overlay, cgroup, veth, fork, exec) of the start
    "exec of a missing command (after fork)": ["busybox", "/no/such/binary"],
    "workdir is a file (after mounts)": ["-w", "/bin/sh", "busybox", "true"],
    # (a missing bind source is refused at create now, before any step)
    "bind of a file on a directory (mounts)": ["-v", "/etc/hostname:/bin", "busybox",
                                               "true"],
    "unknown user (before exec)": ["-u", "no-such-user", "busybox", "true"],
    "address outside the network (veth)": ["--network", "c25", "--ip", "10.255.255.9",
                                           "busybox", "true"],
    "port already published (ports)": ["-p", "127.0.0.1:{port}:80", "busybox", "true"],
}


def test_check_25_a_failure_at_each_creation_step_leaves_nothing(fresh: Daemon) -> None:
    d = fresh
    d.sbx("network", "create", "--subnet", "10.99.25.0/24", "c25", check=True)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    made: set[str] = set()
    # The network server keeps sandboxes ready: the default bridge's pool and c25's at
    # most (a pool is topped up some time after a take, so a count taken now may be
    # below what they hold later).
    pooled = POOL_SIZE + USER_POOL_SIZE
    client = d.client()          # the checks around each CLI run: no process each

    def ids() -> set[str]:
        return {c.id for c in client.containers.list(all=True)}
    try:
        for what, args in FAILING_STARTS.items():
            args = [a.replace("{port}", str(port)) for a in args]
            for rm in ([], ["--rm"]):
                before = ids()
                out = d.sbx("run", *rm, *args)
                assert out.returncode != 0 and out.err.strip(), (what, out.out)
                assert "internal" not in out.err.lower(), (what, out.err)
                new = ids() - before
                made |= new
                if rm:
                    wait_until(lambda: not ids() - before, 10,
                               f"{what}: the --rm container to go")
                for cid in new:              # a kept record reads exited, with the reason
                    container = client.containers.get(cid)
                    assert container.status in ("created", "exited"), (what, container.status)
                    container.remove(force=True)
                wait_until(lambda: not d.cgroup_children(), 10, f"{what}: cgroups to go")
                wait_until(lambda: len(veths(d)) <= pooled, 10,
                           f"{what}: its veth to go ({veths(d)}, {pooled} pooled)")
                mounts = [line for line in Path("/proc/self/mountinfo").read_text()
                          .splitlines() if f"{d.root}/snapshots" in line or
                          f"{d.root}/runtime/mnt/" in line.split()[4]]
                assert not mounts, (what, mounts)
        # no address is held by a container that failed (or by any container: none is left)
        def owners() -> set[str]:
            return {owner for _address, owner in d.addresses()}
        wait_until(lambda: not owners() & made, 15, "the failed containers' addresses to go")
        assert d.meta_rows("SELECT id FROM containers") == []
    finally:
        holder.close()
        client.close()
        d.sbx("network", "rm", "c25")


def veths(d: Daemon) -> list[str]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return [ln.split(": ")[1] for ln in links.splitlines()
            if ln.split(": ")[1].startswith(f"{d.prefix}v")]


# ---------------------------------------------------------------- 26: state machine

def test_check_26_wrong_state_errors_change_nothing_and_disconnects_leak_nothing(
        strict_daemon: Daemon) -> None:
    d = strict_daemon
    d.sbx("create", "--name", "s-created", "busybox", "sleep", "600", check=True)
    d.sbx("run", "-d", "--name", "s-run", "busybox", "sh", "-c",
          "while :; do echo tick; sleep 0.01; done", check=True)
    d.sbx("run", "--name", "s-exited", "busybox", "true", check=True)
    wrong = [("unpause", "s-run"), ("pause", "s-created"), ("pause", "s-exited"),
             ("exec", "s-exited", "true"), ("exec", "s-created", "true"),
             ("rename", "s-run", "s-exited"), ("rm", "s-run"), ("top", "s-exited"),
             ("attach", "s-exited"), ("unpause", "s-exited")]
    snapshot = d.meta_rows("SELECT id, name, state FROM containers ORDER BY id")
    for args in wrong:
        out = d.sbx(*args, timeout=20)
        assert out.returncode != 0 and out.err.strip(), args
        assert "internal" not in out.err.lower(), (args, out.err)
    assert d.meta_rows("SELECT id, name, state FROM containers ORDER BY id") == snapshot

    # client disconnects mid-stream: logs --follow, attach, stats
    ref = d.sbx("inspect", "-f", "{{.Id}}", "s-run", check=True).out.strip()
    streams = [("container.logs", {"id": ref, "follow": True}),
               ("container.attach", {"id": ref}),
               ("container.stats", {"id": ref, "interval": 0.05})]
    assert_serving(d)
    before = figures(d)
    started = time.monotonic()
    for i in range(CYCLES):
        raw = RawClient(d.sock)
        op, params = streams[i % len(streams)]
        raw.send(protocol.request(1, op, params))
        first = raw.recv()
        assert first is not None and "event" in first, first
        if i % 2:
            raw.send({"id": 1, "stdin": b"x"})
        raw.close()
    elapsed = time.monotonic() - started
    wait_until(lambda: figures(d)["fds"] <= before["fds"], 20,
               "the daemon's fds to return to their count")
    after = figures(d)
    print(f"\ncheck 26: {CYCLES} mid-stream disconnects in {elapsed:.1f}s; "
          f"before {before}; after {after}")
    assert after["threads"] <= before["threads"] + 8
    assert after["rss_kib"] - before["rss_kib"] < 32 * 1024, (before, after)
    assert_serving(d)
    d.sbx("rm", "-f", "s-created", "s-run", "s-exited", check=True)


def test_execs_racing_their_containers_end_leave_the_fork_server_serving(
        strict_daemon: Daemon) -> None:
    """A kill while execs are starting in the container: each exec ends (an exit code
    or a clear error), the fork server lives on and the next run works. The fork
    server once dropped a container's exec pids when its pid 1 exited, and an exec
    still starting then met a missing pid (KeyError: the server died on the first
    round of this loop)."""
    d = strict_daemon
    forkservers = d.forkserver_pids()
    assert len(forkservers) == 1, forkservers
    with d.client() as client:
        for i in range(40):
            container = client.containers.run("busybox", ["sleep", "600"])
            ended = []

            def exec_true() -> None:
                try:
                    with d.client() as own:
                        own.containers.get(container.id).exec(["true"])
                except SandboxError as e:
                    assert "internal" not in str(e).lower(), e
                ended.append(True)
            threads = [threading.Thread(target=exec_true) for _ in range(3)]
            for t in threads:
                t.start()
            time.sleep(i % 8 * 0.001)       # the kill lands at points of the execs' start
            container.kill()
            for t in threads:
                t.join(10)
            assert len(ended) == 3, "an exec never ended"
            container.remove(force=True)
        assert client.run("busybox", ["echo", "alive"]).stdout == b"alive\n"
    assert d.forkserver_pids() == forkservers


# ---------------------------------------------------------------- 27: the socket

def test_check_27_socket_mode_group_and_unreachable_from_containers(
        strict_daemon: Daemon) -> None:
    d = strict_daemon
    st = os.stat(d.sock)
    assert oct(st.st_mode & 0o777) == "0o660" and st.st_uid == 0
    group = grp.getgrgid(st.st_gid)
    assert group.gr_name == "sandboxd", group     # made by the daemon when missing
    probe = ("import socket,sys; s=socket.socket(socket.AF_UNIX)\n"
             "try:\n s.connect(sys.argv[1]); print('connected')\n"
             "except OSError as e: print(e.errno)")

    def connect_as(*setpriv: str) -> str:
        return subprocess.run(["setpriv", *setpriv, PY, "-c", probe, d.sock],
                              capture_output=True, text=True, timeout=30).stdout.strip()

    import errno
    os.chmod(d.tmp, 0o711)      # mkdtemp's 0700 would refuse everyone: let the mode decide
    assert connect_as("--reuid", "65534", "--regid", "65534", "--clear-groups") == \
        str(errno.EACCES)
    assert connect_as("--reuid", "65534", "--regid", "65534",
                      "--groups", str(st.st_gid)) == "connected"
    # from inside: the path does not exist there, whatever the network mode; outside
    # the host's network namespace no socket of ours is even listed
    for mode in ("none", "bridge", "host"):
        out = d.sbx("run", "--rm", "--network", mode, "busybox", "sh", "-c",
                    f"ls {d.sock} {os.path.dirname(d.sock)} 2>&1; "
                    f"grep -c {os.path.basename(d.tmp)} /proc/net/unix", timeout=60)
        assert out.out.count("No such file") == 2, (mode, out.out)
        assert out.out.strip().endswith("\n0") or mode == "host", (mode, out.out)


# ---------------------------------------------------------------- 28: garbage frames

def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


GARBAGE = {
    "random bytes": os.urandom(4096),
    "0xc1": framed(b"\xc1"),
    "truncated": framed(msgpack.packb({"id": 1, "op": "ping"}))[:-3],
    "trailing bytes": framed(msgpack.packb({"id": 1, "op": "ping"}) + b"\x00\x01"),
    "4 GiB header": struct.pack(">I", 0xFFFFFFFF),
    "4 GiB header then data": struct.pack(">I", 0xFFFFFFFF) + b"\x00" * 65536,
    "nesting 1025": framed(b"\x81\xa1k" * 1025 + b"\xc0"),
    "nesting 5000 arrays": framed(b"\x81\xa1k" + b"\x91" * 5000 + b"\xc0"),
    "non-string keys": framed(b"\x83\x01\x01\xa2op\xa4ping\xc0\xc0"),
    "bin keys": framed(b"\x82\xc4\x02id\x01\xa2op\xa4ping"),
    "ext type": framed(msgpack.packb({"id": 1, "op": "ping",
                                      "params": {"x": msgpack.ExtType(5, b"abc")}})),
    "timestamp": framed(msgpack.packb({"id": 1, "op": msgpack.Timestamp(1, 0)})),
    "huge int id": framed(b"\x83\xa2id\xcf" + b"\xff" * 8 + b"\xa2op\xa4ping\xa6params\x80"),
    "huge int param": framed(b"\x83\xa2id\x01\xa2op\xa4ping\xa6params\x81\xa1n\xd3"
                             + b"\x80" + b"\x00" * 7),
    "4G array header": framed(b"\xdd\xff\xff\xff\xff"),
    "million empty maps": framed(b"\x81\xa1k\xdd" + struct.pack(">I", 1_100_000)
                                 + b"\x80" * 1_100_000),
}


@pytest.mark.parametrize("greet", [False, True], ids=["before-hello", "after-hello"])
def test_check_28_garbage_frames_error_or_close_and_the_daemon_lives(
        strict_daemon: Daemon, greet: bool) -> None:
    d = strict_daemon
    other = RawClient(d.sock)                     # a client served throughout
    assert_serving(d)
    before = figures(d)
    for rounds in range(10):
        for name, data in GARBAGE.items():
            raw = RawClient(d.sock, hello=greet)
            try:
                raw.sock.sendall(data)
                raw.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            for message in raw.drain():
                assert "error" in message or message.get("ok") == "pong", (name, message)
                if "error" in message:
                    assert message["error"]["code"] in ("invalid_argument",
                                                        "limit_exceeded"), (name, message)
            raw.close()
            assert other.call(rounds * 100 + len(name), "ping")["ok"] == "pong"
    other.close()
    wait_until(lambda: figures(d)["fds"] <= before["fds"], 10, "fds to return")
    after = figures(d)
    print(f"\ncheck 28: {10 * len(GARBAGE)} garbage connections; before {before}; "
          f"after {after}")
    assert after["rss_kib"] - before["rss_kib"] < 48 * 1024, (before, after)
    assert "Traceback" not in d.log(1 << 30)


# ---------------------------------------------------------------- 29: invalid requests

BUSYBOX = build_config("busybox").to_dict()
INVALID = [
    ("container.create", {"options": {"image": "busybox"}}),      # the retired shape
    ("container.run", {"options": {"image": "busybox"}}),
    ("container.config", {"options": {"image": 5}}),
    ("container.config", {"options": {"image": "busybox", "nope": 1}}),
    ("container.create", {"config": BUSYBOX, "extra": True}),
    ("container.create", {}),
    ("container.create", {"name": "a/b", "config": BUSYBOX}),
    ("container.create", {"name": "..", "config": BUSYBOX}),
    ("container.create", {"name": "a\x00b", "config": BUSYBOX}),
    ("container.create", {"name": "n" * 10_000, "config": BUSYBOX}),
    ("container.config", {"options": {"image": "busybox", "env": ["=x"]}}),
    ("container.config", {"options": {"image": "busybox", "env": ["A\x00B=1"]}}),
    ("container.config", {"options": {"image": "busybox", "env": [7]}}),
    ("container.config", {"options": {"image": "busybox", "volumes": ["/tmp:/proc"]}}),
    ("container.config", {"options": {"image": "busybox", "volumes": ["/tmp:/proc/sys"]}}),
    ("container.config", {"options": {"image": "busybox", "tmpfs": ["/proc/x"]}}),
    ("container.config", {"options": {"image": "busybox", "volumes": ["/tmp:/x:zz"]}}),
    ("container.config", {"options": {"image": "busybox", "ulimits": ["nofile=10:5"]}}),
    ("container.config", {"options": {"image": "busybox", "ulimits": ["nope=1"]}}),
    ("container.config", {"options": {"image": "busybox", "ulimits": {"nofile": "x"}}}),
    ("container.config", {"options": {"image": "busybox", "memory": "1k"}}),
    ("container.config", {"options": {"image": "busybox", "memory": [1]}}),
    ("container.config", {"options": {"image": "busybox", "cpus": "lots"}}),
    ("container.create", {"config": build_config(          # the spec check refuses it
        "busybox", tmpfs={"/t": "mode=99999"}).to_dict()}),
    ("container.create", {"config": build_config(
        "busybox", workdir="/proc/self/fd/3").to_dict()}),
    ("container.config", {"options": {"image": "busybox", "ports": ["99999:80"]}}),
    ("container.config", {"options": {"image": "busybox", "pids_limit": "many"}}),
    ("container.list", {"filters": {"name": 5}}),
    ("container.list", {"filters": {"name": ["["]}}),
    ("container.list", {"filters": {"status": [{"a": 1}]}}),
    ("container.list", {"filters": ["status"]}),
    ("network.list", {"filters": {"name": [None]}}),
    ("network.list", {"filters": {"bogus": ["x"]}}),
    ("network.create", {"name": "x/y"}),
    ("network.create", {"name": "ok-name", "subnet": "10.0.0.0/99"}),
    ("network.create", {"name": "ok-name", "labels": {"a": 1}}),
    ("container.stop", {"id": "x", "timeout": 2**62}),
    ("container.resize", {"id": "x", "rows": 0, "cols": 70000}),
    ("container.stats", {"id": "x", "interval": -1}),
    ("container.kill", {"id": "x", "signal": "SIGNOPE"}),
    ("container.kill", {"id": "x", "signal": 2**40}),
    ("container.wait", {"id": "x", "condition": "eventually"}),
    ("container.exec", {"id": "x", "cmd": []}),
    ("container.exec", {"id": "x", "cmd": [1, 2]}),
    ("image.load", {"path": "relative.tar"}),
    ("image.load", {"path": "/nonexistent/x.tar"}),
    ("image.import", {"name": "x", "path": "/"}),
    ("image.import", {"name": "x", "path": "/dev/zero"}),
    ("image.tag", {"source": "busybox", "target": "UPPER/Case"}),
    ("system.login", {"registry": 5, "username": "u", "password": "p"}),
    ("session.open", {"label": 5}),
    ("ping", {"a": [1, {"b": None}]}),
]


def test_check_29_invalid_requests_are_invalid_argument_and_create_nothing(
        strict_daemon: Daemon) -> None:
    d = strict_daemon
    containers = d.meta_rows("SELECT id FROM containers")
    networks = d.meta_rows("SELECT id FROM networks")
    images = d.meta_rows("SELECT id FROM images")
    raw = RawClient(d.sock)
    for rid, (op, params) in enumerate(INVALID, start=1):
        reply = raw.call(rid, op, params)
        assert reply.get("error", {}).get("code") == "invalid_argument", (op, params, reply)
        assert reply["error"]["message"], (op, params)
    assert raw.call(999, "ping") == {"id": 999, "ok": "pong"}
    raw.close()
    assert d.meta_rows("SELECT id FROM containers") == containers
    assert d.meta_rows("SELECT id FROM networks") == networks
    assert d.meta_rows("SELECT id FROM images") == images
    assert not d.cgroup_children()
    assert "Traceback" not in d.log(1 << 30)


# ---------------------------------------------------------------- 30: timeouts, bounds

def test_check_30_partial_frames_time_out_connections_are_bounded(
        strict_daemon: Daemon) -> None:
    d = strict_daemon
    stalled = RawClient(d.sock)
    stalled.sock.sendall(framed(msgpack.packb(protocol.request(1, "ping")))[:7])
    t0 = time.monotonic()
    (message,) = stalled.drain()          # the daemon hangs up on it
    assert time.monotonic() - t0 < 5
    assert message["error"]["code"] == "limit_exceeded"
    assert "not completed within" in message["error"]["message"]
    stalled.close()
    # bounded: 24 connections are served; the 25th gets an error and is closed
    held = [RawClient(d.sock) for _ in range(24)]
    extra = RawClient(d.sock, hello=False)
    (refused,) = extra.drain()
    assert refused["error"]["code"] == "limit_exceeded", refused
    extra.close()
    for raw in held:
        raw.close()
    wait_until(lambda: _can_ping(d), 10, "a slot to free up")


def _can_ping(d: Daemon) -> bool:
    try:
        assert_serving(d)
        return True
    except (AssertionError, OSError, protocol.ProtocolError):
        return False


def test_check_30_a_stdout_flood_does_not_grow_the_daemon(strict_daemon: Daemon) -> None:
    d = strict_daemon
    d.sbx("run", "-d", "--name", "flood", "busybox", "sh", "-c",
          "yes 0123456789abcdefghijklmnopqrstuvwxyz", check=True)
    ref = d.sbx("inspect", "-f", "{{.Id}}", "flood", check=True).out.strip()
    time.sleep(1)
    before = figures(d)
    # a client attached that never reads, one that reads slowly, for five seconds
    stuck = RawClient(d.sock)
    stuck.send(protocol.request(1, "container.attach", {"id": ref}))
    slow = RawClient(d.sock)
    slow.send(protocol.request(1, "container.attach", {"id": ref}))
    stop = threading.Event()

    def read_slowly() -> None:
        while not stop.is_set():
            try:
                slow.sock.recv(4096)
            except OSError:
                return
            time.sleep(0.01)

    reader = threading.Thread(target=read_slowly)
    reader.start()
    peak = before["rss_kib"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        peak = max(peak, figures(d)["rss_kib"])
        time.sleep(0.2)
    stop.set()
    stuck.close()
    slow.close()
    reader.join(5)
    d.sbx("rm", "-f", "flood", check=True)
    print(f"\ncheck 30: stdout flood for 5 s with a stuck and a slow reader: RSS "
          f"{before['rss_kib']} KiB before, peak {peak} KiB")
    assert peak - before["rss_kib"] < 48 * 1024, (before, peak)
    assert_serving(d)


# ---------------------------------------------------------------- the state directory

def test_state_directory_is_root_only_after_a_run(strict_daemon: Daemon) -> None:
    """Issue 13: nothing under the state directory is readable by other local users."""
    d = strict_daemon
    d.sbx("run", "--name", "modes", "-p", "127.0.0.1::80", "busybox", "sh", "-c",
          "echo secret-output", check=True)
    d.sbx("login", "-u", "u", "--password-stdin", "127.0.0.1:1", input="pw\n")
    root = Path(d.root)
    st = root.stat()
    assert st.st_uid == 0 and oct(st.st_mode & 0o777) == "0o700", oct(st.st_mode)
    for name in ("meta.db", "meta.db-wal", "meta.db-shm", "daemon.lock"):
        if (root / name).exists():
            assert (root / name).stat().st_mode & 0o077 == 0, name
    for log in root.glob("containers/*/*.log*"):
        assert log.stat().st_mode & 0o077 == 0, log
    # and as another user, every path under the root is out of reach
    paths = [str(p) for p in root.rglob("*") if "/fs/" not in str(p)][:2000]
    script = ("import os,sys\nfor p in sys.stdin.read().split('\\0'):\n"
              " try:\n  os.stat(p); print(p)\n except OSError: pass")
    seen = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534",
                           "--clear-groups", PY, "-c", script],
                          input="\0".join(paths), capture_output=True, text=True, timeout=60)
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout == "", seen.stdout[:2000]
    d.sbx("rm", "-f", "modes", check=True)


# ---------------------------------------------------------------- lifecycles (issue 13)

LIFECYCLES = int(os.environ.get("SANDBOXD_LIFECYCLES", "250"))
ENDINGS = {
    "exit": (["sh", "-c", "exit 3"], {}, 3),
    "kill -9": (["sleep", "600"], {}, 137),
    "oom": (["sh", "-c", "x=0123456789; while :; do x=$x$x; done"], {"memory": "8m"}, 137),
    "failed start": (["/no/such/binary"], {}, None),
}


def test_lifecycle_cycles_leave_zero_leaks(fresh: Daemon) -> None:
    """create -> start -> (exit | kill -9 | OOM | failed start) -> rm, LIFECYCLES times
    (``SANDBOXD_LIFECYCLES``, default 250; 1000 on demand: ~50 s here), on the default
    bridge: no cgroup, mount, veth, address, sqlite row, fd or thread more than before."""
    d = fresh
    raw = RawClient(d.sock, timeout=60)
    rid = iter(range(1, 1 << 30))
    assert raw.call(next(rid), "ping")["ok"] == "pong"
    before = figures(d)
    pooled = POOL_SIZE              # the default bridge's pool, full (see check 25)
    started = time.monotonic()
    endings = list(ENDINGS.items())
    for i in range(LIFECYCLES):
        what, (cmd, extra, code) = endings[i % len(endings)]
        created = raw.call(next(rid), "container.create", {"config": build_config(
            "busybox", cmd, network_mode="bridge", **extra).to_dict()})
        cid = created["ok"]["id"]
        start = raw.call(next(rid), "container.start", {"id": cid})
        if code is None:
            assert start["error"]["code"] == "command_not_found", start
        else:
            assert "ok" in start, (what, start)
            if what == "kill -9":
                assert "ok" in raw.call(next(rid), "container.kill", {"id": cid})
            waited = raw.call(next(rid), "container.wait", {"id": cid})["ok"]
            assert waited["exit_code"] == code, (what, waited)
            assert waited["oom_killed"] == (what == "oom"), (what, waited)
        assert "ok" in raw.call(next(rid), "container.remove", {"id": cid, "force": True})
    elapsed = time.monotonic() - started
    raw.close()
    wait_until(lambda: not d.cgroup_children(), 15, "every container cgroup to go")
    wait_until(lambda: len(veths(d)) <= pooled, 15, "every veth to go")
    assert d.meta_rows("SELECT count(*) FROM containers") == [(0,)]
    # addresses: only the network server's ready sandboxes ("pool:...") hold some; the
    # last container's goes as its netns is torn down, just after the remove returned
    def held() -> list[tuple]:
        return [(o, a) for a, o in d.addresses() if not o.startswith("pool:")]
    wait_until(lambda: not held(), 15, f"addresses to be released: {held()}")
    assert not list((Path(d.root) / "containers").iterdir())
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if f"{d.root}/snapshots" in line]
    assert not mounts, mounts
    wait_until(lambda: figures(d)["fds"] <= before["fds"], 15, "fds to return")
    after = figures(d)
    print(f"\nlifecycles: {LIFECYCLES} cycles in {elapsed:.1f}s "
          f"({1000 * elapsed / LIFECYCLES:.0f} ms each); before {before}; after {after}")
    assert after["threads"] <= before["threads"] + 8
