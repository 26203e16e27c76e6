"""The Docker Engine API face (issue 16, sandboxd/dockerapi/): whole ``docker run --rm``
processes of the real docker CLI against our daemon's Docker socket and against podman's
Docker-compatible service (``podman system service``, the bench's podman set-up: runc,
storage and CNI config under the bench's temp dir), beside ``sbx run --rm`` on the
msgpack socket, in the same run.

Every row is a CLI process from exec to exit with 64 MiB and 64 pids: what a user
waits for. The docker CLI is a Go binary (no interpreter start-up), so its row against
our socket minus the REST work is what the msgpack row would be without Python's
start-up; the difference of the two sandboxd rows is what the REST face costs per run,
CLI included. Networks: ours is sandboxd's default bridge; podman's is the bench's CNI
bridge without NAT or firewall rules (``bench.peers.Podman``: a lower bound of its
default network's work).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .cases import case, shared_daemon, timed
from .context import MEMORY, PIDS, Bench, NotAvailable
from .peers import IMAGE, PEERS, Podman

RUN = "process: docker run --rm busybox true"
LIMITS = ["-m", str(MEMORY), "--pids-limit", str(PIDS)]
DOCKER = shutil.which("docker")


def _docker(bench: Bench, sock: Path, *args: str) -> list[str]:
    if DOCKER is None:
        raise NotAvailable("not installed: the docker CLI")
    config = bench.tmp / "docker-config"
    config.mkdir(exist_ok=True)
    return [DOCKER, "--config", str(config), "-H", f"unix://{sock}", *args]


def _processes(bench: Bench, n: int, argv: list[str]) -> list[float]:
    return timed({"mode": "sequential", "warmup": bench.settings.warmup,
                  "runs": [{"argv": argv, "cleanup": None}] * (bench.settings.warmup + n)})


@case(RUN, "docker CLI -> sandboxd Docker API", reference=True, count="process_runs")
def docker_ours(bench: Bench, n: int) -> list[float]:
    sock = shared_daemon(bench).root / "docker.sock"
    if not sock.exists():
        raise NotAvailable(f"the daemon has no Docker socket at {sock}")
    return _processes(bench, n, _docker(bench, sock, "run", "--rm", *LIMITS, "busybox",
                                        "true"))


@case(RUN, "sbx CLI -> sandboxd msgpack", count="process_runs")
def sbx_ours(bench: Bench, n: int) -> list[float]:
    return _processes(bench, n, shared_daemon(bench).cli(
        "run", "--rm", "-m", str(MEMORY), "--pids-limit", str(PIDS), "busybox", "true"))


class PodmanService:
    """``podman system service --time=0`` on a socket in the bench's temp dir, with the
    bench's podman storage (its image imported by the podman peer's set-up)."""

    def __init__(self, bench: Bench, podman: Podman) -> None:
        self.sock = bench.tmp / "podman-docker.sock"
        self.log = bench.tmp / "podman-service.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                podman.command(bench, "--cgroup-manager", "cgroupfs", "system", "service",
                               "--time=0", f"unix://{self.sock}"),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 30
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise NotAvailable(f"podman system service did not listen: "
                                   f"{self.log.read_text(errors='replace')[-300:]}")
            time.sleep(0.02)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@case(RUN, "docker CLI -> podman system service", count="process_runs")
def docker_podman(bench: Bench, n: int) -> list[float]:
    podman = bench.peer(next(p for p in PEERS if isinstance(p, Podman)))
    service = bench.shared("podman-service", lambda b: PodmanService(b, podman))
    argv = _docker(bench, service.sock, "run", "--rm", *podman.options(bench, podman.bridge(
        bench)), IMAGE, "true")
    return _processes(bench, n, argv)


INPROC = "in-process: run busybox true (64 MiB, 64 pids), request to exit code"
# docker-py raises ContainerError on a non-zero exit: a sample is a success.


def _dockerpy_runs(bench: Bench, n: int, sock: Path, image: str, **options) -> list[float]:
    try:
        import docker
    except ImportError:
        raise NotAvailable("not installed: docker-py (pip install docker)") from None
    client = docker.DockerClient(base_url=f"unix://{sock}", version="1.41")
    samples = []
    try:
        for i in range(bench.settings.warmup + n):
            start = time.perf_counter()
            # create, logs (follow), start, wait, remove: docker-py's own sequence
            client.containers.run(image, ["true"], mem_limit=MEMORY, pids_limit=PIDS,
                                  remove=True, **options)
            elapsed = time.perf_counter() - start
            if i >= bench.settings.warmup:
                samples.append(elapsed)
    finally:
        client.close()
    return samples


@case(INPROC, "sandboxd Python client (msgpack)", reference=True)
def client_ours(bench: Bench, n: int) -> list[float]:
    client = shared_daemon(bench).client
    samples = []
    for i in range(bench.settings.warmup + n):
        start = time.perf_counter()
        result = client.run("busybox", ["true"], memory=MEMORY, pids_limit=PIDS)
        elapsed = time.perf_counter() - start
        if result.exit_code != 0:
            raise RuntimeError(f"exit {result.exit_code}: {result.stderr[-300:]!r}")
        if i >= bench.settings.warmup:
            samples.append(elapsed)
    return samples


@case(INPROC, "docker-py -> sandboxd Docker API containers.run(remove=True)")
def dockerpy_ours(bench: Bench, n: int) -> list[float]:
    return _dockerpy_runs(bench, n, shared_daemon(bench).root / "docker.sock", "busybox")


@case(INPROC, "docker-py -> podman system service containers.run(remove=True)")
def dockerpy_podman(bench: Bench, n: int) -> list[float]:
    podman = bench.peer(next(p for p in PEERS if isinstance(p, Podman)))
    service = bench.shared("podman-service", lambda b: PodmanService(b, podman))
    return _dockerpy_runs(bench, n, service.sock, IMAGE, network=podman.bridge(bench),
                          cgroup_parent=f"/{bench.tag}",
                          ulimits=PODMAN_ULIMITS)


# podman's defaults ask for more than this root may raise (no CAP_SYS_RESOURCE).
PODMAN_ULIMITS = [{"Name": "nofile", "Soft": 20000, "Hard": 20000},
                  {"Name": "nproc", "Soft": 32768, "Hard": 32768}]


TC = "in-process: testcontainers DockerContainer start -> ready (its log line) -> stop"


def _testcontainers_runs(bench: Bench, n: int, sock: Path, image: str,
                         **options) -> list[float]:
    try:
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs
    except ImportError:
        raise NotAvailable("not installed: testcontainers (pip install testcontainers)") \
            from None
    # testcontainers reads its engine from the environment; its reaper is left out here
    # so that both engines do the same work (docs/docker-api.md, "Ryuk").
    saved = {k: os.environ.get(k) for k in ("DOCKER_HOST", "TESTCONTAINERS_RYUK_DISABLED")}
    os.environ.update(DOCKER_HOST=f"unix://{sock}", TESTCONTAINERS_RYUK_DISABLED="true")
    samples = []
    try:
        for i in range(bench.settings.warmup + n):
            start = time.perf_counter()
            container = DockerContainer(image, mem_limit=MEMORY, pids_limit=PIDS, **options)
            container.with_command(["sh", "-c", "echo ready; exec sleep 60"])
            with container:
                wait_for_logs(container, "ready", timeout=30, interval=0.005)
                ready = time.perf_counter() - start
            if i >= bench.settings.warmup:
                samples.append(ready)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return samples


@case(TC, "testcontainers -> sandboxd Docker API", reference=True)
def testcontainers_ours(bench: Bench, n: int) -> list[float]:
    return _testcontainers_runs(bench, n, shared_daemon(bench).root / "docker.sock",
                                "busybox")


@case(TC, "testcontainers -> podman system service")
def testcontainers_podman(bench: Bench, n: int) -> list[float]:
    podman = bench.peer(next(p for p in PEERS if isinstance(p, Podman)))
    service = bench.shared("podman-service", lambda b: PodmanService(b, podman))
    return _testcontainers_runs(bench, n, service.sock, IMAGE,
                                network_mode=podman.bridge(bench),
                                cgroup_parent=f"/{bench.tag}", ulimits=PODMAN_ULIMITS)
