"""Registries for tests: Debian's ``docker-registry`` started on 127.0.0.1 with its
storage under a test's temp dir, and TCP proxies in front of one that pass traffic on,
cut it or hold it back (for pulls interrupted or stuck at a known point)."""
from __future__ import annotations

import base64
import contextlib
import http.client
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

REGISTRY_BIN = shutil.which("docker-registry")
NO_REGISTRY = "docker-registry is not installed (apt-get install docker-registry)"
USER, PASSWORD = "sbx-user", "s3cret-pass"          # the logins the test servers accept


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed(base: Path, name: str = "127.0.0.1") -> tuple[Path, Path]:
    """``(certificate, key)`` of a self-signed certificate for ``name`` made by openssl."""
    cert, key = base / f"{name}.pem", base / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName=IP:{name}"], check=True, capture_output=True)
    return cert, key


@contextlib.contextmanager
def serve_registry(base: Path, auth: str = "", tls: tuple[Path, Path] | None = None):
    """A docker-registry on 127.0.0.1:<free port> (``auth``: its config's auth
    section; ``tls``: ``(certificate, key)`` to serve HTTPS with); yields
    ``127.0.0.1:<port>``."""
    port = free_port()
    base.mkdir(parents=True)
    config = base / "config.yml"
    https = f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n" if tls else ""
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {base / 'data'}\n"
        f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n"
        f"  secret: sbx-test-secret\n{https}{auth}")
    log = open(base / "registry.log", "wb")
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = http.client.HTTPSConnection(
                    "127.0.0.1", port, timeout=2,
                    context=ssl._create_unverified_context()) if tls else \
                    http.client.HTTPConnection("127.0.0.1", port, timeout=2)
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


class TokenServer:
    """A token server for a registry with ``auth: token`` (distribution's JWT scheme):
    ``GET /token?service=&scope=`` with Basic credentials answers ``{"token"}``, an RS256
    JWT signed by ``openssl`` with a self-signed certificate the registry trusts
    (``x5c`` header). With ``public`` (a repository prefix such as ``library/``), a
    request without credentials gets a token that may pull those repositories and
    nothing else, as Docker Hub's does. Records the scopes it was asked for, and which
    of them came without credentials (:attr:`anonymous`)."""

    def __init__(self, base: Path, issuer: str = "sbx-test-issuer",
                 service: str = "sbx-test-registry", public: str | None = None):
        self.base, self.issuer, self.service, self.public = base, issuer, service, public
        self.anonymous: list[str] = []
        self.key, self.cert = base / "token.key", base / "token.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-keyout", str(self.key), "-out", str(self.cert), "-days", "1",
                        "-subj", "/CN=sbx-test-token"], check=True, capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
                             check=True, capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        self.scopes: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                given = self.headers.get("Authorization")
                if given is None and server.public is not None:
                    scope = query.get("scope", [""])[0]
                    server.anonymous.append(scope)
                    body = json.dumps({"token": server.token(scope, anonymous=True)}).encode()
                    self.send_response(200)
                elif given != expected:
                    body = b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}'
                    self.send_response(401)
                else:
                    scope = query.get("scope", [""])[0]
                    server.scopes.append(scope)
                    body = json.dumps({"token": server.token(scope)}).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def token(self, scope: str, anonymous: bool = False) -> str:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
        access = []
        if scope:
            kind, name, actions = scope.split(":")
            allowed = actions.split(",")
            if anonymous:
                allowed = ["pull"] if name.startswith(self.public or "\0") and \
                    "pull" in allowed else []
            access = [{"type": kind, "name": name, "actions": allowed}]
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": self.issuer, "sub": USER, "aud": self.service, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(),
                  "access": access}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                   input=signing_input.encode(), check=True,
                                   capture_output=True).stdout
        return f"{signing_input}.{b64(signature)}"

    def registry_auth(self) -> str:
        return (f"auth:\n  token:\n    realm: {self.realm}\n    service: {self.service}\n"
                f"    issuer: {self.issuer}\n    rootcertbundle: {self.cert}\n")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
