"""Images: a pull of a multi-layer image from a registry on loopback (Debian's
``docker-registry``), beside ``skopeo copy`` (and ``podman pull`` when installed) of the
same image in the same run; and a fully cached ``sbx build`` rebuild.

The pulled image is made once per bench run by our daemon: ``FROM scratch`` plus
``LAYERS`` COPY layers of ``LAYER_MIB`` MiB of random bytes each (nothing shared with
the busybox image already here), pushed to the registry. Before each timed pull the
image is removed (its blobs and snapshots go with it), so every pull fetches, verifies
and unpacks every layer; skopeo copies into a fresh OCI layout each time (it fetches
and verifies, it does not unpack). Targets (issue 4): pull within 1.5x of skopeo; a
cached rebuild under 100 ms.
"""
from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from . import ours
from .cases import case
from .context import Bench, NotAvailable, closed_on_failure

LAYERS = 5
LAYER_MIB = 4
PULL = f"pull of a {LAYERS}-layer image ({LAYERS * LAYER_MIB} MiB) from a loopback registry"
REBUILD = "fully cached build rebuild (5 steps, nothing changed)"
REGISTRY_TIMEOUT = 20.0


class _Registry:
    """docker-registry on 127.0.0.1:<free port> under the bench's temp dir, with the
    bench image pushed to it as ``<address>/bench/layers:1``."""

    def __init__(self, bench: Bench) -> None:
        self.base = bench.tmp / "registry"
        self.proc: subprocess.Popen | None = None
        self.address = ""
        self.ref = ""

    @classmethod
    def start(cls, bench: Bench) -> _Registry:
        binary = shutil.which("docker-registry")
        if binary is None:
            raise NotAvailable("docker-registry is not installed (apt-get install "
                               "docker-registry)")
        registry = cls(bench)
        with closed_on_failure(registry, "registry set-up failed"):
            registry._launch(binary)
            registry._push(bench)
        return registry

    def _launch(self, binary: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.base.mkdir(parents=True)
        config = self.base / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.base / 'data'}\n"
            f"http:\n  addr: 127.0.0.1:{port}\n  secret: sbx-bench\n")
        with open(self.base / "registry.log", "wb") as log:
            self.proc = subprocess.Popen([binary, "serve", str(config)], stdout=log,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + REGISTRY_TIMEOUT
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/v2/")
                ok = conn.getresponse().status == 200
                conn.close()
                if ok:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise NotAvailable("docker-registry did not start: " + (
                    self.base / "registry.log").read_text(errors="replace")[-300:])
            time.sleep(0.05)
        self.address = f"127.0.0.1:{port}"
        self.ref = f"{self.address}/bench/layers:1"

    def _push(self, bench: Bench) -> None:
        daemon = bench.shared("daemon", ours.Daemon.start)
        context = bench.tmp / "pull-context"
        context.mkdir()
        lines = ["FROM scratch"]
        for i in range(LAYERS):
            (context / f"layer{i}").write_bytes(os.urandom(LAYER_MIB << 20))
            lines.append(f"COPY layer{i} /layer{i}")
        (context / "Dockerfile").write_text("\n".join(lines) + "\n")
        daemon.client.images.build(path=context, tag=self.ref)
        daemon.client.images.push(self.ref)
        daemon.client.images.remove(self.ref)
        daemon.client.images.prune()            # the build's intermediate steps

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _registry(bench: Bench) -> _Registry:
    return bench.shared("image-registry", _Registry.start)


@case(PULL, "sandboxd (client.images.pull, unpacked)", reference=True, count="rounds")
def pull_ours(bench: Bench, n: int) -> list[float]:
    registry = _registry(bench)
    client = bench.shared("daemon", ours.Daemon.start).client
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        client.images.pull(registry.ref)
        samples.append(time.perf_counter() - start)
        client.images.remove(registry.ref)      # the next pull fetches everything again
    return samples


@case(PULL, "skopeo copy to an OCI layout (not unpacked)", count="rounds")
def pull_skopeo(bench: Bench, n: int) -> list[float]:
    if shutil.which("skopeo") is None:
        raise NotAvailable("skopeo is not installed (apt-get install skopeo)")
    registry = _registry(bench)
    samples = []
    for i in range(n):
        target = bench.tmp / f"skopeo-{i}"
        argv = ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                f"docker://{registry.ref}", f"oci:{target}:bench"]
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        samples.append(time.perf_counter() - start)
        shutil.rmtree(target, ignore_errors=True)
        if proc.returncode != 0:
            raise RuntimeError(f"skopeo copy exited {proc.returncode}: "
                               f"{proc.stderr.strip()[-300:]}")
    return samples


@case(PULL, "podman pull", count="rounds")
def pull_podman(bench: Bench, n: int) -> list[float]:
    if shutil.which("podman") is None:
        raise NotAvailable("podman is not installed")
    registry = _registry(bench)
    storage = ["--root", str(bench.tmp / "podman-root"), "--runroot",
               str(bench.tmp / "podman-run")]
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        proc = subprocess.run(["podman", *storage, "pull", "--quiet", "--tls-verify=false",
                               registry.ref], capture_output=True, text=True, timeout=300)
        samples.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise RuntimeError(f"podman pull exited {proc.returncode}: "
                               f"{proc.stderr.strip()[-300:]}")
        subprocess.run(["podman", *storage, "rmi", "-f", registry.ref], capture_output=True,
                       timeout=120)
    return samples


def _rebuild_context(bench: Bench) -> Path:
    context = bench.tmp / "rebuild-context"
    if not context.exists():
        context.mkdir()
        (context / "app.sh").write_text("echo hello\n")
        (context / "Dockerfile").write_text(
            "FROM busybox\nENV MODE=bench\nCOPY app.sh /app.sh\nRUN sh /app.sh > /out\n"
            'CMD ["cat", "/out"]\n')
    return context


@case(REBUILD, "sandboxd (client.images.build)", reference=True, count="process_runs")
def rebuild_client(bench: Bench, n: int) -> list[float]:
    client = bench.shared("daemon", ours.Daemon.start).client
    context = _rebuild_context(bench)
    client.images.build(path=context, tag="bench-rebuild")        # fills the cache
    samples = []
    for _ in range(bench.settings.warmup + n):
        lines: list[str] = []
        start = time.perf_counter()
        client.images.build(path=context, tag="bench-rebuild", progress=lines.append)
        samples.append(time.perf_counter() - start)
        if any("Running in" in line for line in lines):
            raise RuntimeError("a rebuild with nothing changed ran a step: "
                               + "".join(lines)[-300:])
    return samples[bench.settings.warmup:]


@case(REBUILD, "sbx build -q (a whole CLI process)", count="process_runs")
def rebuild_cli(bench: Bench, n: int) -> list[float]:
    daemon = bench.shared("daemon", ours.Daemon.start)
    context = _rebuild_context(bench)
    argv = daemon.cli("build", "-q", "-t", "bench-rebuild", str(context))
    subprocess.run(argv, check=True, capture_output=True, timeout=300)
    samples = []
    for _ in range(bench.settings.warmup + n):
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, timeout=300)
        samples.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise RuntimeError(f"sbx build exited {proc.returncode}: "
                               f"{proc.stderr.decode(errors='replace')[-300:]}")
    return samples[bench.settings.warmup:]
