"""testcontainers' reaper (Ryuk) on sandboxd's Docker Engine API: the image
``sbx image bootstrap ryuk`` makes (busybox, the host's python3.11, :mod:`sandboxd.ryuk`)
under the name testcontainers asks for, started by testcontainers-python itself with
the daemon's Docker socket bound in; a test process killed outright (no clean-up of its
own) has its containers, networks and volumes removed by Ryuk once its connection has
been gone for ``RYUK_RECONNECTION_TIMEOUT``. Against a daemon of this module's own."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Iterator

import pytest

from harness import Daemon, running, wait_until

pytest.importorskip("testcontainers.core.container", reason="testcontainers is not "
                                                             "installed")
docker_py = pytest.importorskip("docker", reason="docker-py is not installed")

# The test session of testcontainers: a container, a network and a volume of its
# session, the ids printed, then it waits to be killed (so no atexit clean-up runs).
SESSION = """
import docker, sys, time
from testcontainers.core.container import DockerContainer
from testcontainers.core.labels import LABEL_SESSION_ID, SESSION_ID, create_labels
c = DockerContainer("busybox").with_command(["sleep", "600"]).start()
client = docker.from_env()
labels = create_labels("busybox", None)
net = client.networks.create("ryuk-test-net", labels=labels)
vol = client.volumes.create("ryuk-test-vol", labels=labels)
print(c.get_wrapped_container().id, net.id, vol.name, SESSION_ID, flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def d() -> Iterator[Daemon]:
    with running() as daemon:
        daemon.sbx("image", "bootstrap", "ryuk", check=True)
        yield daemon


@pytest.fixture
def client(d: Daemon):
    c = docker_py.DockerClient(base_url=f"unix://{d.docker_sock}")
    yield c
    c.close()


def test_bootstrap_ryuk_names_the_image_testcontainers_asks_for(d: Daemon) -> None:
    from testcontainers.core.config import testcontainers_config
    assert testcontainers_config.ryuk_image in d.sbx("images", "--format",
                                                     "{{.Repository}}:{{.Tag}}").out.split()
    assert d.sbx("image", "bootstrap", "-t", "my/ryuk:1", "ryuk", check=True).out
    assert "my/ryuk:1" in d.sbx("images", "--format", "{{.Repository}}:{{.Tag}}").out
    bad = d.sbx("image", "bootstrap", "ryuk:0.9")
    assert bad.returncode == 1 and "-t NAME[:TAG]" in bad.err


def test_ryuk_removes_a_killed_session(d: Daemon, client) -> None:
    env = {**os.environ, "DOCKER_HOST": f"unix://{d.docker_sock}",
           "RYUK_RECONNECTION_TIMEOUT": "1s", "TESTCONTAINERS_RYUK_DISABLED": "false"}
    proc = subprocess.Popen([sys.executable, "-c", SESSION], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        assert line, f"the session failed: {proc.stderr.read()}"
        cid, net, vol, session = line.split()
        ryuk = client.containers.get(f"testcontainers-ryuk-{session}")
        assert [b.startswith(f"{d.docker_sock}:/var/run/docker.sock")
                for b in ryuk.attrs["HostConfig"]["Binds"]] == [True]
        assert wait_until(lambda: "adding" in ryuk.logs().decode(), what="Ryuk's ACK")
        assert client.containers.get(cid).status == "running"
    finally:
        proc.send_signal(signal.SIGKILL)          # as a test run killed outright
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    gone = time.monotonic()

    def ids() -> set[str]:
        # The raw list: docker-py's containers.list inspects each row afterwards, and a
        # container Ryuk removes in between would be a NotFound.
        return {c["Id"] for c in client.api.containers(all=True)}

    def reaped() -> bool:
        names = ids()
        return cid not in names and not client.networks.list(ids=[net]) and \
            vol not in {v.name for v in client.volumes.list()}
    assert wait_until(reaped, timeout=10, what="Ryuk's removal")
    # 1 s of reconnection timeout, then the removal: well within the 10 s default
    assert time.monotonic() - gone < 6
    # Ryuk itself exits when done (AutoRemove takes its container)
    assert wait_until(lambda: not client.api.containers(
        all=True, filters={"name": f"testcontainers-ryuk-{session}"}), what="Ryuk's exit")


def test_ryuk_keeps_what_a_reconnecting_client_holds(d: Daemon, client) -> None:
    """Ryuk's protocol by hand: filters are ACKed; a client back within the
    reconnection timeout keeps its containers; a malformed line is ignored. A line of
    several labels takes what has all of them (testcontainers-java sends three): a
    container of another session, with only the shared label, stays."""
    busy = client.containers.run("busybox", ["sleep", "600"], detach=True,
                                 labels={"t": "ryuk-by-hand", "session": "mine"})
    other = client.containers.run("busybox", ["sleep", "600"], detach=True,
                                  labels={"t": "ryuk-by-hand", "session": "theirs"})
    ryuk = client.containers.run("testcontainers/ryuk:0.8.1", detach=True, auto_remove=True,
                                 ports={"8080/tcp": None},
                                 volumes=[f"{d.docker_sock}:/var/run/docker.sock"],
                                 environment={"RYUK_RECONNECTION_TIMEOUT": "2s"})
    try:
        assert wait_until(lambda: "Started!" in ryuk.logs().decode(), what="Ryuk's start")
        ryuk.reload()
        port = int(ryuk.ports["8080/tcp"][0]["HostPort"])

        def ask(lines: bytes) -> socket.socket:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(lines)
            return s
        first = ask(b"not a filter\nlabel=t=ryuk-by-hand&label=session=mine\n")
        assert first.recv(16) == b"ACK\n"
        first.close()
        time.sleep(0.5)
        second = ask(b"label=t=ryuk-by-hand&label=session=mine\r\n")   # back in time
        assert second.recv(16) == b"ACK\n"
        time.sleep(3)                                 # longer than the timeout
        assert client.containers.get(busy.id).status == "running"
        second.close()
        assert wait_until(lambda: busy.id not in {c["Id"] for c in client.api.containers(
            all=True)}, timeout=10, what="Ryuk's removal")
        assert client.containers.get(other.id).status == "running"
    finally:
        for c in (busy, other, ryuk):
            try:
                c.remove(force=True)
            except docker_py.errors.NotFound:
                pass
