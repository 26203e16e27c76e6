"""Real daemons for end-to-end tests (shared by tests/integration and tests/security): ``python -m sandboxd.daemon`` subprocesses with a
tmp root, a tmp socket and their own cgroup parent (``sandboxd-e2e-<pid>-<n>``), driven
through the real ``sbx`` CLI process and the Python ``Client``.

Every daemon is stopped by whoever started it; :meth:`Daemon.stop` sends SIGTERM, expects
exit 0, and checks that nothing of that daemon is left: its socket, a mount naming its
root, a cgroup under its parent (the parent itself is then removed: it is ours), or a
process in one of its cgroups or naming its root.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from sandboxd import protocol, testing
from sandboxd.api import Client

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]      # tests/harness.py -> the repo
CGROUP_ROOT = "/sys/fs/cgroup"
_serial = itertools.count(1)
_prefixes: set[str] = set()


def _new_prefix() -> str:
    """A link-name prefix no other daemon of this run has had: two daemons with the same
    one would take each other's bridge (a daemon's start-up removes the unowned links
    of its prefix), and 4 random hex digits alone meet again about once in 65536."""
    while True:
        prefix = "sbxe" + secrets.token_hex(2)
        if prefix not in _prefixes:
            _prefixes.add(prefix)
            return prefix


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0,
               what: str = "condition") -> Any:
    """Poll for something that must happen; fails (not flakes) only if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class Daemon:
    """One ``sandboxd.daemon`` subprocess and the ways tests talk to it."""

    def __init__(self, *flags: str, tmp: str | None = None, parent: str | None = None,
                 wrap: tuple[str, ...] = ()):
        self.tmp = tmp or tempfile.mkdtemp(prefix="sbxe-")   # short: socket paths ≤ 108
        self.root = os.path.join(self.tmp, "root")
        self.sock = os.path.join(self.tmp, "d.sock")
        self.docker_sock = os.path.join(self.tmp, "docker.sock")   # its Docker Engine API
        self.parent = parent or f"sandboxd-e2e-{os.getpid()}-{next(_serial)}"
        # Our own link-name prefix: a daemon's start-up removes unowned links of its
        # prefix, so daemons side by side need their own ("sbxe" never makes one of the
        # default "sbx" prefix's names: sbx0, sbx-<id>, sbxv<hex>).
        self.prefix = _new_prefix()
        self.flags = flags
        self.wrap = wrap          # a command the daemon runs under (``unshare --net``)
        self.log_path = os.path.join(self.tmp, "daemon.log")
        self.proc: subprocess.Popen | None = None
        self.env = {**os.environ, "SANDBOXD_HOST": self.sock,
                    "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    # -- life cycle
    def start(self) -> Daemon:
        """Start (or restart, with the same root) and wait until it listens (a socket
        file alone proves nothing after a kill -9: it is the dead daemon's)."""
        listening = self._listening()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*self.wrap, PY, "-m", "sandboxd.daemon", "--root", self.root, "--host", self.sock,
             "--cgroup-parent", self.parent, "--network-prefix", self.prefix,
             "--no-ip-masq", *self.flags],      # tests never turn on forwarding
            stdout=log, stderr=log, env=self.env, cwd=REPO)
        log.close()
        wait_until(lambda: self._listening() > listening or self.proc.poll() is not None,
                   what="the daemon to listen")
        assert self.proc.poll() is None, f"daemon exited at start:\n{self.log()}"
        return self

    def _listening(self) -> int:
        return self.log(1 << 30).count(" listening on ") if os.path.exists(self.log_path) \
            else 0

    def log(self, tail: int = 6000) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-tail:]

    def forkserver_pids(self) -> list[int]:
        """The daemon's fork server: its child with the fork server's command line. A
        child the fork server forks shows the same command line until it execs (an
        exec's set-up in flight), and is not counted."""
        assert self.proc is not None
        return [pid for pid, cmd in _processes() if "sandboxd.runner.forkserver" in cmd
                and f"{self.root}/runtime" in cmd and _parent(pid) == self.proc.pid]

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM: exit 0, no socket, nothing of ours left, no traceback in the log (then
        remove the tmp dir)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"daemon ignored SIGTERM for 30s:\n{self.log()}")
            assert rc == 0, f"daemon exited {rc}:\n{self.log()}"
        assert not os.path.exists(self.sock), "the daemon left its socket behind"
        self.assert_clean()
        assert "Traceback" not in self.log(1 << 30), f"the daemon logged a traceback:\n{self.log()}"
        shutil.rmtree(self.tmp, ignore_errors=True)

    def assert_clean(self) -> None:
        """No process, mount or cgroup of this daemon (its proc must have exited)."""
        wait_until(lambda: not self.leftover_processes(), 10,
                   f"processes of {self.parent} to exit: {self.leftover_processes()}")
        mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if self.tmp in line]
        assert not mounts, f"mounts left: {mounts}"
        children = self.cgroup_children(pooled=True)
        assert not children, f"cgroups left: {children}"
        # loop devices detach by themselves once the last mount of a layer is gone
        wait_until(lambda: not self.loop_devices(), 10,
                   f"loop devices of {self.tmp} to detach: {self.loop_devices()}")
        links = [line for line in subprocess.run(["ip", "-o", "link"], capture_output=True,
                                                  text=True).stdout.splitlines()
                 if line.split(": ")[1].startswith(self.prefix)]
        assert not links, f"links left: {links}"
        rules = netfilter_leftovers(self.prefix)
        assert not rules, f"netfilter rules or chains left: {rules}"
        for path in self.parent_dirs():
            os.rmdir(path)        # the parent is the test's: leave the host as it was

    def leftover_processes(self) -> list[str]:
        left = []
        for pid, cmd in _processes():
            try:
                cgroups = Path(f"/proc/{pid}/cgroup").read_text()
            except OSError:
                continue
            if (f"/{self.parent}/" in cgroups or self.root in cmd) and pid_alive(pid):
                left.append(f"{pid} {cmd}")
        return left

    def loop_devices(self) -> list[str]:
        """Loop devices bound to a file under this daemon's directory (capped layers)."""
        found = []
        for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
            try:
                if backing.read_text().startswith(self.tmp + "/"):
                    found.append(backing.parent.parent.name)
            except OSError:
                continue
        return found

    def parent_dirs(self) -> list[str]:
        return [str(p) for p in Path(CGROUP_ROOT).glob(f"*/{self.parent}") if p.is_dir()]

    def meta_rows(self, sql: str) -> list[tuple]:
        """Read the daemon's meta.db (read-only; WAL lets a reader in while it runs)."""
        import sqlite3
        db = sqlite3.connect(f"file:{self.root}/meta.db?mode=ro", uri=True)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()

    def addresses(self) -> list[tuple[str, str]]:
        """(address, owner) of every address the daemon's IPAM holds (in its memory)."""
        with self.client() as client:
            return [(a["address"], a["owner"])
                    for a in client.call("network.addresses", {})["addresses"]]

    def cgroup_children(self, pooled: bool = False) -> list[str]:
        """Containers' cgroups under our parent; with ``pooled`` also the fork server's
        pre-made ones (``_pool-*``, which exist while the daemon runs)."""
        return [str(c) for p in self.parent_dirs() for c in Path(p).iterdir()
                if c.is_dir() and (pooled or not c.name.startswith("_"))]

    def cgroup_file(self, controller: str, container_id: str, name: str) -> str:
        return Path(f"{CGROUP_ROOT}/{controller}/{self.parent}/{container_id}/{name}") \
            .read_text().strip()

    # -- clients
    def sbx(self, *args: str, input: bytes | str | None = None, timeout: float = 60,
            check: bool = False, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
        """The real CLI in its own process (``env``: variables added to its environment);
        ``.out`` / ``.err`` are decoded."""
        data = input.encode() if isinstance(input, str) else input
        proc = subprocess.run([PY, "-m", "sandboxd", *args], input=data,
                              capture_output=True, env={**self.env, **(env or {})},
                              cwd=REPO, timeout=timeout,
                              stdin=None if data is not None else subprocess.DEVNULL)
        proc.out = proc.stdout.decode(errors="replace")          # type: ignore[attr-defined]
        proc.err = proc.stderr.decode(errors="replace")          # type: ignore[attr-defined]
        if check and proc.returncode != 0:
            pytest.fail(f"sbx {' '.join(args)} exited {proc.returncode}: {proc.err}")
        return proc

    def client(self, **kwargs: Any) -> Client:
        return Client(self.sock, autostart=False, **kwargs)

    def import_busybox(self) -> None:
        self.sbx("import", str(testing.busybox_tar()), "busybox", check=True)

    def ids(self, *flags: str) -> list[str]:
        """Full ids from ``sbx ps -q --no-trunc`` (with ``flags``, e.g. ``-a``)."""
        return self.sbx("ps", "-q", "--no-trunc", *flags, check=True).out.split()


def _parent(pid: int) -> int:
    """Its parent's pid; 0 once it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


def _processes() -> list[tuple[int, str]]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            found.append((int(entry), cmd.decode(errors="replace")))
    return found


def netfilter_leftovers(prefix: str) -> list[str]:
    """Lines of ``iptables-save`` (both backends found) naming a chain of ``prefix``."""
    tag = f"{prefix.upper()}-"
    left = []
    for tool in ("iptables-legacy-save", "iptables-nft-save"):
        path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
        if path is None:
            continue
        out = subprocess.run([path], capture_output=True, text=True).stdout
        left += [f"{tool}: {line}" for line in out.splitlines() if tag in line]
    return left


# busybox httpd serving a page naming its container, and a fetch that retries until the
# server listens (it was started with -d just before): the link and network tests' pair.
HTTPD = "mkdir -p /www && echo hi-from-{name} > /www/index.html && exec httpd -f -p 80 -h /www"
FETCH = "for i in $(seq 100); do wget -qO- http://{host}/ && break; sleep 0.1; done"


def inspect(daemon: Daemon, name: str) -> dict:
    import json
    return json.loads(daemon.sbx("inspect", name, check=True).out)[0]


def bridge_ip(daemon: Daemon, name: str) -> str:
    ip = inspect(daemon, name)["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
    assert ip, f"{name} has no address on the default bridge"
    return ip


_saved_busybox: dict[str, tuple[dict, dict[str, bytes]]] = {}


def busybox_with_config(daemon: Daemon, tmp_path: Path, tag: str, check: bool = True,
                        **fields: Any) -> subprocess.CompletedProcess:
    """``sbx load`` of busybox with ``fields`` set in its config's ``config`` (runtime
    defaults), tagged ``tag``: an image made elsewhere (a registry, another tool), whose
    config nothing here wrote. Returns the load's result."""
    import copy
    import hashlib
    import io
    import json
    import tarfile
    if daemon.sock not in _saved_busybox:          # saved once per daemon (~1 s a save)
        archive = tmp_path / "busybox.tar"
        daemon.sbx("save", "-o", str(archive), "busybox", check=True)
        with tarfile.open(archive) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))[0]
            _saved_busybox[daemon.sock] = (
                json.load(tar.extractfile(manifest["Config"])),
                {name: tar.extractfile(name).read() for name in manifest["Layers"]})
    base, layers = _saved_busybox[daemon.sock]
    config = copy.deepcopy(base)
    config["config"].update(fields)
    data = json.dumps(config).encode()
    name = f"blobs/sha256/{hashlib.sha256(data).hexdigest()}"
    entries = {name: data, **layers, "manifest.json": json.dumps(
        [{"Config": name, "RepoTags": [f"{tag}:latest"], "Layers": list(layers)}]).encode()}
    with tarfile.open(tmp_path / f"{tag}.tar", "w") as tar:
        for entry, blob in entries.items():
            info = tarfile.TarInfo(entry)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return daemon.sbx("load", "-i", str(tmp_path / f"{tag}.tar"), check=check)


@contextlib.contextmanager
def running(*flags: str, busybox: bool = True) -> Iterator[Daemon]:
    """A started daemon (busybox imported unless ``busybox=False``), stopped afterwards;
    when a test left it dead, what it left is checked instead."""
    d = Daemon(*flags).start()
    try:
        if busybox:
            d.import_busybox()
        yield d
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()
        else:
            d.assert_clean()


class RawClient:
    """A bare protocol client on a unix socket, to send exactly the bytes a test wants."""

    def __init__(self, path: str, hello: bool = True, timeout: float = 15.0,
                 name: str = "test/1"):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.frames = protocol.FrameBuffer()
        self.queue: list[dict] = []
        if hello:
            self.send(protocol.hello(name))
            reply = self.recv()
            assert reply is not None and reply["id"] == 0, reply
            assert reply["ok"]["version"] == protocol.PROTOCOL_VERSION, reply

    def send(self, message: dict) -> None:
        self.sock.sendall(protocol.encode(message))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> dict | None:
        """The next message, or None at EOF."""
        while not self.queue:
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.queue += self.frames.feed(data)
        return self.queue.pop(0)

    def reply(self, rid: int) -> dict:
        """The final reply (ok or error) of request ``rid``, skipping its events."""
        while True:
            message = self.recv()
            assert message is not None, "the daemon closed the connection"
            if message.get("id") == rid and "event" not in message:
                return message

    def call(self, rid: int, op: str, params: dict | None = None) -> dict:
        self.send(protocol.request(rid, op, params))
        return self.reply(rid)

    def drain(self) -> list[dict]:
        """Every message until the daemon closes the connection."""
        out = []
        while (message := self.recv()) is not None:
            out.append(message)
        return out

    def close(self) -> None:
        self.sock.close()


def remove_cgroup_parent(parent: str) -> None:
    """Remove a test runner's cgroup parent in every v1 hierarchy, failing the test when
    a container's cgroup is still in it."""
    for controller in os.listdir(CGROUP_ROOT):
        path = Path(CGROUP_ROOT) / controller / parent
        if path.is_dir():
            leftovers = [p.name for p in path.iterdir() if p.is_dir()]
            assert not leftovers, f"cgroups left in {path}: {leftovers}"
            path.rmdir()
