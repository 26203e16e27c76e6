"""Service containers for tests: start one from any image, wait until it is ready,
remove it when done (the ``sandbox_container`` fixture is a :class:`ServiceFactory`).

Readiness is a small strategy object with one ``probe(container) -> bool``; the factory
polls it until it says yes, the container exits, or the timeout passes — then the
container's logs are attached to the :class:`ServiceNotReady` error and the container is
removed (a failed start leaves nothing behind)::

    web = sandbox_container("busybox", ["httpd", "-f", "-p", "8080"], wait=PortOpen(8080))
    db = sandbox_container("host", ["python3", "-m", "http.server"],
                           wait=LogLine(r"Serving HTTP"), timeout=10)
    job = sandbox_container("busybox", "sh -c 'sleep 1; touch /ready; sleep 60'",
                            wait=CommandSucceeds(["test", "-e", "/ready"]))

Probes run *inside* the container through ``exec`` (networks between the host and
containers are not needed): ``PortOpen`` reads ``/proc/net/tcp{,6}`` there, so the image
needs ``cat`` (busybox and the host image have it).
"""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from sandboxd.errors import NotFound, SandboxError

LOG_TAIL = 4000          # characters of the logs put into a readiness error
TCP_LISTEN = "0A"        # st column of /proc/net/tcp for a listening socket


class ServiceNotReady(Exception):
    """The service did not become ready; ``logs`` holds what it printed."""

    def __init__(self, message: str, logs: str = ""):
        tail = logs[-LOG_TAIL:]
        super().__init__(message + (f"\n--- container logs (last {len(tail)} chars) ---\n"
                                    f"{tail}" if tail else "\n(the container logged nothing)"))
        self.logs = logs


class WaitStrategy(Protocol):
    def probe(self, container: Any) -> bool: ...

    def describe(self) -> str: ...


class PortOpen:
    """Ready when something listens on TCP ``port`` inside the container."""

    def __init__(self, port: int):
        self.port = int(port)

    def describe(self) -> str:
        return f"TCP port {self.port} to be listening"

    def probe(self, container: Any) -> bool:
        result = container.exec(["cat", "/proc/net/tcp", "/proc/net/tcp6"])
        return self.port in listening_ports(result.stdout.decode("ascii", "replace"))


def listening_ports(proc_net_tcp: str) -> set[int]:
    """Local ports in state LISTEN in the text of /proc/net/tcp (and tcp6)."""
    ports = set()
    for line in proc_net_tcp.splitlines():
        cols = line.split()
        if len(cols) > 3 and cols[3] == TCP_LISTEN and ":" in cols[1]:
            ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


class LogLine:
    """Ready when the container's output (stdout and stderr) matches ``pattern``."""

    def __init__(self, pattern: str):
        self.pattern = re.compile(pattern)

    def describe(self) -> str:
        return f"a log line matching {self.pattern.pattern!r}"

    def probe(self, container: Any) -> bool:
        return self.pattern.search(container.logs().decode("utf-8", "replace")) is not None


class CommandSucceeds:
    """Ready when ``cmd`` exec'd in the container exits 0."""

    def __init__(self, cmd: str | Sequence[str]):
        self.cmd = cmd

    def describe(self) -> str:
        return f"{self.cmd!r} to succeed"

    def probe(self, container: Any) -> bool:
        return container.exec(self.cmd).exit_code == 0


class Service:
    """A running service container; a context manager that removes it on exit."""

    def __init__(self, container: Any, on_remove: Callable[[Service], None]):
        self.container = container
        self._on_remove = on_remove

    def __repr__(self) -> str:
        return f"<Service {self.container.short_id} {self.container.name}>"

    @property
    def id(self) -> str:
        return self.container.id

    @property
    def name(self) -> str:
        return self.container.name

    def exec(self, cmd: str | Sequence[str], **options: Any) -> Any:
        return self.container.exec(cmd, **options)

    def logs(self) -> str:
        return self.container.logs().decode("utf-8", "replace")

    def remove(self) -> None:
        try:
            self.container.remove(force=True)
        except NotFound:
            pass                     # already gone (auto-removed, or the session ended)
        self._on_remove(self)

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class ServiceFactory:
    """``factory(image, cmd, *, env, wait, timeout, **options) -> Service``; ``options``
    are ``sandboxd.Client`` container options (``memory``, ``expose``, ``network_mode``,
    ``volumes`` ...). Unnamed: the daemon picks unique names, so parallel runs never
    collide."""

    def __init__(self, client: Callable[[], Any]):
        self._client = client
        self._live: list[Service] = []
        self._lock = threading.Lock()

    def __call__(self, image: str, cmd: str | Sequence[str] | None = None, *,
                 env: Mapping[str, Any] | None = None, wait: WaitStrategy | None = None,
                 timeout: float = 30.0, interval: float = 0.05,
                 **options: Any) -> Service:
        container = self._client().containers.run(image, cmd, env=env, **options)
        service = Service(container, self._forget)
        with self._lock:
            self._live.append(service)
        try:
            if wait is not None:
                self._wait(service, wait, timeout, interval)
        except BaseException:
            service.remove()
            raise
        return service

    def _wait(self, service: Service, wait: WaitStrategy, timeout: float,
              interval: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            container = service.container.reload()
            if container.status not in ("running", "created"):
                code = container.record.state.exit_code
                raise ServiceNotReady(f"service {service.name} ({container.record.config.image}) "
                                      f"exited with code {code} while waiting for "
                                      f"{wait.describe()}", _logs(service))
            try:
                if wait.probe(container):
                    return
                last_error = ""
            except SandboxError as exc:       # e.g. the probe's command is missing
                last_error = f" (last probe: {exc.message})"
            if time.monotonic() > deadline:
                raise ServiceNotReady(f"service {service.name} was not ready after "
                                      f"{timeout:g} s waiting for {wait.describe()}"
                                      f"{last_error}", _logs(service))
            time.sleep(interval)

    def _forget(self, service: Service) -> None:
        with self._lock:
            if service in self._live:
                self._live.remove(service)

    def remove_all(self) -> None:
        with self._lock:
            live = list(self._live)
        for service in reversed(live):
            service.remove()


def _logs(service: Service) -> str:
    try:
        return service.logs()
    except SandboxError as exc:
        return f"(logs unavailable: {exc.message})"


class ServiceNetwork:
    """A user-defined network made for tests; a context manager that removes it."""

    def __init__(self, network: Any, on_remove: Callable[[ServiceNetwork], None]):
        self.network = network
        self._on_remove = on_remove

    def __repr__(self) -> str:
        return f"<ServiceNetwork {self.network.short_id} {self.name}>"

    @property
    def id(self) -> str:
        return self.network.id

    @property
    def name(self) -> str:
        return self.network.name

    def remove(self) -> None:
        try:
            self.network.remove()
        except NotFound:
            pass
        self._on_remove(self)

    def __enter__(self) -> ServiceNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class NetworkFactory:
    """``factory(**options) -> ServiceNetwork``: a fresh user-defined bridge named
    ``pytest-<random>`` (unique, so parallel runs never collide; labelled
    ``pytest_sandbox=1``). ``options``: ``sandboxd.Client.networks.create`` keywords
    (``subnet``, ``internal`` ...). Remove its containers before the network: a fixture
    that starts services on it requests the network fixture, so pytest tears the
    services down first. The plugin's client is a daemon session, so a killed pytest's
    networks go with its containers."""

    def __init__(self, client: Callable[[], Any]):
        self._client = client
        self._live: list[ServiceNetwork] = []
        self._lock = threading.Lock()

    def __call__(self, **options: Any) -> ServiceNetwork:
        import secrets
        labels = {"pytest_sandbox": "1", **dict(options.pop("labels", None) or {})}
        name = options.pop("name", None) or f"pytest-{secrets.token_hex(6)}"
        network = ServiceNetwork(self._client().networks.create(name, labels=labels,
                                                                **options), self._forget)
        with self._lock:
            self._live.append(network)
        return network

    def _forget(self, network: ServiceNetwork) -> None:
        with self._lock:
            if network in self._live:
                self._live.remove(network)

    def remove_all(self) -> None:
        with self._lock:
            live = list(self._live)
        for network in reversed(live):
            network.remove()
