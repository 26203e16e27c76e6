"""Registries for tests: Debian's ``docker-registry`` started on 127.0.0.1 with its
storage under a test's temp dir, and TCP proxies in front of one that pass traffic on,
cut it or hold it back (for pulls interrupted or stuck at a known point)."""
from __future__ import annotations

import contextlib
import http.client
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

REGISTRY_BIN = shutil.which("docker-registry")
NO_REGISTRY = "docker-registry is not installed (apt-get install docker-registry)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_registry(base: Path, auth: str = ""):
    """A docker-registry on 127.0.0.1:<free port> (``auth``: its config's auth
    section); yields ``127.0.0.1:<port>``."""
    port = free_port()
    base.mkdir(parents=True)
    config = base / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {base / 'data'}\n"
        f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n"
        f"  secret: sbx-test-secret\n{auth}")
    log = open(base / "registry.log", "wb")
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/v2/")
                status = conn.getresponse().status
                conn.close()
                if status in (200, 401):
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not start: "
                                   f"{(base / 'registry.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class Proxy:
    """A TCP proxy on 127.0.0.1 to a registry at ``upstream``, a thread per direction
    of each connection. It passes everything on; a subclass changes what one chunk
    does (:meth:`forward`), with state per connection (:meth:`connection`)."""

    def __init__(self, upstream: str):
        host, port = upstream.split(":")
        self.upstream = (host, int(port))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def connection(self) -> dict:
        """The state both directions of a new connection share (made under the lock)."""
        return {}

    def forward(self, src: socket.socket, dst: socket.socket, data: bytes, state: dict,
                request: bool) -> bool:
        """Pass ``data`` (``request``: from the client) on; False when the connection
        was cut instead."""
        dst.sendall(data)
        return True

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._conns += [client, server]
                state = self.connection()
            for a, b, request in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(a, b, state, request),
                                 daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict,
              request: bool) -> None:
        try:
            while data := src.recv(65536):
                if not self.forward(src, dst, data, state, request):
                    return
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()
        with self._lock:
            for s in self._conns:
                s.close()


class StallingProxy(Proxy):
    """A proxy that holds back the response to the first request naming
    ``/blobs/<digest>`` until :meth:`let_go` (:attr:`stalled` is set once it holds
    one)."""

    def __init__(self, upstream: str, digest: str):
        self.needle = f"/blobs/{digest}".encode()
        self.stalled = threading.Event()
        self.released = threading.Event()
        super().__init__(upstream)

    def connection(self) -> dict:
        return {"hold": False}

    def forward(self, src: socket.socket, dst: socket.socket, data: bytes, state: dict,
                request: bool) -> bool:
        if request and self.needle in data and not self.stalled.is_set():
            state["hold"] = True
        if not request and state["hold"]:
            self.stalled.set()
            self.released.wait()
            state["hold"] = False
        return super().forward(src, dst, data, state, request)

    def let_go(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.let_go()
        super().close()
