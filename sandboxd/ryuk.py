"""A Ryuk: testcontainers' reaper, for the image ``sbx image bootstrap ryuk`` makes.

It speaks what testcontainers' clients speak to ``testcontainers/ryuk``: it listens on
TCP ``RYUK_PORT`` (8080), logs ``Started!``, reads lines of filters in query form
(``label=org.testcontainers.session-id=ID&label=…``), answers each with ``ACK``, and when
the last client has been gone for ``RYUK_RECONNECTION_TIMEOUT`` (10s) it removes, through
the Docker Engine API on ``/var/run/docker.sock`` (bound in by the client), every
container, network, volume and image those filters match, then exits. With no client
within ``RYUK_CONNECTION_TIMEOUT`` (60s) it exits without removing anything; on SIGTERM
(testcontainers stops it at exit, right after closing its connection) it removes at once.

It runs inside the image on the image's python3, so: one file, standard library only,
nothing imported from sandboxd. It listens before it imports what it needs later
(http.client alone takes ~30 ms): testcontainers connects right after the start, through
the port proxy, which drops a connection nothing listens for yet, and never retries.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import sys
import threading
import time

DOCKER_SOCK = "/var/run/docker.sock"
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str, name: str) -> float:
    """A Go duration (``10s``, ``1m30s``, ``500ms``; a bare number is seconds) in seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{name}={text!r}: not a duration (10s, 1m, 500ms)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def log(message: str) -> None:
    print(time.strftime("%Y/%m/%d %H:%M:%S"), message, flush=True)


def docker(method: str, path: str, sock: str = DOCKER_SOCK) -> tuple[int, object]:
    """One Docker Engine API call: ``(status, decoded JSON body or None)``."""
    import http.client
    import json

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(self.timeout)
            self.sock.connect(sock)

    conn = UnixConnection("localhost", timeout=60)
    try:
        conn.request(method, path, headers={"Host": "docker"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(body) if body else None
    except ValueError:
        return resp.status, body.decode(errors="replace")


def parse_filters(line: str) -> dict[str, list[str]]:
    """``label=a=b&label=c&name=x`` -> ``{"label": ["a=b", "c"], "name": ["x"]}``."""
    import urllib.parse
    filters: dict[str, list[str]] = {}
    for key, value in urllib.parse.parse_qsl(line, keep_blank_values=True, strict_parsing=True):
        filters.setdefault(key, []).append(value)
    return filters


def prune(filter_sets: list[dict[str, list[str]]], sock: str = DOCKER_SOCK) -> dict[str, int]:
    """Remove what each filter set matches: containers first (networks and volumes in
    use cannot go), then networks, volumes, images. Counts of what went."""
    import json
    import urllib.parse
    removed = {"containers": 0, "networks": 0, "volumes": 0, "images": 0}
    kinds = (("containers", "/containers/json?all=1&filters={}", "Id",
              "/containers/{}?force=1&v=1"),
             ("networks", "/networks?filters={}", "Id", "/networks/{}"),
             ("volumes", "/volumes?filters={}", "Name", "/volumes/{}"),
             ("images", "/images/json?filters={}", "Id", "/images/{}?force=1"))
    for kind, listing, key, removal in kinds:
        for filters in filter_sets:
            status, found = docker("GET", listing.format(
                urllib.parse.quote(json.dumps(filters))), sock)
            if kind == "volumes" and isinstance(found, dict):
                found = found.get("Volumes") or []
            if status != 200 or not isinstance(found, list):
                log(f"listing {kind} with {filters} failed: {status} {found}")
                continue
            for item in found:
                ident = item[key]
                status, answer = docker("DELETE", removal.format(urllib.parse.quote(ident)),
                                        sock)
                if status in (200, 204, 404):     # 404: gone already (AutoRemove)
                    removed[kind] += status != 404
                else:
                    log(f"removing {kind[:-1]} {ident} failed: {status} {answer}")
    return removed


class Reaper:
    def __init__(self, port: int, connection_timeout: float, reconnection_timeout: float,
                 sock: str = DOCKER_SOCK) -> None:
        self.connection_timeout = connection_timeout
        self.reconnection_timeout = reconnection_timeout
        self.sock = sock
        self.filters: list[dict[str, list[str]]] = []
        self.clients = 0
        self.ever_connected = False
        self.last_gone = 0.0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.server = socket.create_server(("0.0.0.0", port))

    def serve(self) -> None:
        log(f"Started! listening on port {self.server.getsockname()[1]}")
        self.server.settimeout(0.1)
        started = time.monotonic()
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except socket.timeout:
                now = time.monotonic()
                with self.lock:
                    if not self.ever_connected and now - started > self.connection_timeout:
                        log("no client connected within the connection timeout: exiting")
                        return
                    if self.ever_connected and self.clients == 0 and \
                            now - self.last_gone >= self.reconnection_timeout:
                        break
                continue
            with self.lock:
                self.clients += 1
                self.ever_connected = True
            threading.Thread(target=self.client, args=(conn,), daemon=True).start()
        self.server.close()
        with self.lock:
            filters = list(self.filters)
        log(f"removing what {len(filters)} filter(s) match")
        log(f"removed {prune(filters, self.sock)}")

    def client(self, conn: socket.socket) -> None:
        try:
            with conn, conn.makefile("rb") as lines:
                for raw in lines:
                    line = raw.decode(errors="replace").strip()
                    if not line:
                        continue
                    try:
                        filters = parse_filters(line)
                    except ValueError:
                        log(f"bad filter line {line!r}: ignored")
                        continue
                    with self.lock:
                        if filters not in self.filters:
                            self.filters.append(filters)
                    log(f"adding {filters}")
                    conn.sendall(b"ACK\n")
        except OSError:
            pass                                  # a client gone mid-line is gone
        finally:
            with self.lock:
                self.clients -= 1
                self.last_gone = time.monotonic()


def main() -> int:
    try:
        port = int(os.environ.get("RYUK_PORT", "8080"))
        connection = duration(os.environ.get("RYUK_CONNECTION_TIMEOUT", "60s"),
                              "RYUK_CONNECTION_TIMEOUT")
        reconnection = duration(os.environ.get("RYUK_RECONNECTION_TIMEOUT", "10s"),
                                "RYUK_RECONNECTION_TIMEOUT")
    except ValueError as e:
        print(f"ryuk: {e}", file=sys.stderr)
        return 2
    reaper = Reaper(port, connection, reconnection)
    signal.signal(signal.SIGTERM, lambda *_: reaper.stop.set())
    signal.signal(signal.SIGINT, lambda *_: reaper.stop.set())
    reaper.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
