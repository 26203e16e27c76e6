"""Networks (issue 5): a ``run --rm`` of ``true`` on the default bridge, where the veth,
address and route are ready before the exec (the pool of prepared namespaces), beside
``docker run --rm`` / ``podman run --rm`` on a bridge in the same run (docker's default;
for podman a bench CNI bridge like its default minus gateway address, masquerade and
firewall rules, so the host's forwarding stays off: :class:`bench.peers.Podman`);
the same start on a user network and with a published port; a TCP request/response
through a published port (the daemon's userland proxy) beside the same exchange sent
straight to the container's bridge address; and ``network connect`` + ``disconnect``
of a running container. Target (issue 5): ≤ 15 ms median on the default bridge, at
least 20x faster than docker and podman.

The bench's daemon runs with ``SANDBOXD_IP_MASQ=0`` (set when this module is
imported, before any daemon starts): masquerade is per network, not per container, so
it changes no row, and a bench leaves the host's forwarding and netfilter alone.
"""
from __future__ import annotations

import os
import socket
import time
from functools import partial

from .cases import case, client_run, shared_daemon, timed
from .context import Bench, NotAvailable
from .peers import PEERS, ImagePeer

os.environ.setdefault("SANDBOXD_IP_MASQ", "0")

RUN = "network: run --rm true, veth + address + route ready before exec"
RTT = "network: TCP connect + 1 KiB request/response + close"
CONNECT = "network: connect + disconnect a running container"
BENCH_NET = "bench-net"
ECHO_PORT = 7


def _user_network(bench: Bench) -> str:
    """A user-defined bridge on the bench's daemon (made once)."""
    def create(bench: Bench) -> _Network:
        client = shared_daemon(bench).client
        return _Network(client, client.networks.create(BENCH_NET))
    return bench.shared("bench-net", create).name


class _Network:
    def __init__(self, client, network) -> None:
        self.client, self.network, self.name = client, network, network.name

    def close(self) -> None:
        self.network.remove()


def network_run(bench: Bench, n: int, options: dict, network: bool = False) -> list[float]:
    """:func:`bench.cases.client_run` (``Client.run('busybox', ['true'])``, request to
    result) on the default bridge, or on the bench's user network."""
    if network:
        options = {**options, "network_mode": _user_network(bench)}
    return client_run(bench, n, options)


case(RUN, "sandboxd, default bridge", reference=True)(partial(network_run, options={}))
case(RUN, "sandboxd, user network")(partial(network_run, options={}, network=True))
case(RUN, "sandboxd, default bridge + -p 80")(
    partial(network_run, options={"ports": {"80/tcp": None}}))


def peer_run(bench: Bench, n: int, peer: ImagePeer) -> list[float]:
    """The peer's ``run --rm`` of /bin/true on a bridge network (``bridge_run``: docker's
    default bridge; for podman a bench CNI bridge without masquerade, see
    :class:`bench.peers.Podman`)."""
    bench.peer(peer)
    runs = [peer.bridge_run(bench) for _ in range(bench.settings.warmup + n)]
    return timed({"mode": "sequential", "warmup": bench.settings.warmup, "runs": runs},
                 peer.launcher)


for _peer in PEERS:
    if isinstance(_peer, ImagePeer):
        case(RUN, f"{_peer.name} run --rm, {_peer.bridge_label}")(
            partial(peer_run, peer=_peer))


# ---------------------------------------------------------------- published port

class _Echo:
    """A busybox ``nc`` echo server (one ``cat`` per connection) with port 7 published
    on 127.0.0.1; its bridge address for the direct row."""

    def __init__(self, bench: Bench) -> None:
        client = shared_daemon(bench).client
        self.container = client.containers.run(
            "busybox", ["nc", "-ll", "-p", str(ECHO_PORT), "-e", "cat"],
            ports={f"{ECHO_PORT}/tcp": ("127.0.0.1", None)})
        self.container.reload()
        self.published = int(self.container.ports[f"{ECHO_PORT}/tcp"][0]["HostPort"])
        self.direct = self.container.attrs["NetworkSettings"]["IPAddress"]
        deadline = time.monotonic() + 10
        while not _exchange(("127.0.0.1", self.published), b"x"):
            if time.monotonic() > deadline:
                self.close()
                raise NotAvailable("the echo container never answered")
            time.sleep(0.05)

    def close(self) -> None:
        self.container.remove(force=True)


def _exchange(address: tuple[str, int], payload: bytes) -> bool:
    try:
        with socket.create_connection(address, timeout=5) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := s.recv(65536):
                got += chunk
            return got == payload
    except OSError:
        return False


def rtt(bench: Bench, n: int, through_proxy: bool) -> list[float]:
    echo = bench.shared("echo", _Echo)
    address = ("127.0.0.1", echo.published) if through_proxy else (echo.direct, ECHO_PORT)
    payload = os.urandom(1024)
    samples = []
    for i in range(bench.settings.warmup + n):
        start = time.perf_counter()
        ok = _exchange(address, payload)
        elapsed = time.perf_counter() - start
        if not ok:
            raise RuntimeError(f"echo through {address} did not come back whole")
        if i >= bench.settings.warmup:
            samples.append(elapsed)
    return samples


case(RTT, "sandboxd published port (userland proxy)", reference=True)(
    partial(rtt, through_proxy=True))
case(RTT, "straight to the container's bridge address")(partial(rtt, through_proxy=False))


# ---------------------------------------------------------------- connect

@case(CONNECT, "sandboxd")
def connect_disconnect(bench: Bench, n: int) -> list[float]:
    """A further veth into a running container's namespace and out again, both calls."""
    client = shared_daemon(bench).client
    network = client.networks.get(_user_network(bench))
    container = client.containers.run("busybox", ["sleep", "3600"])
    try:
        samples = []
        for i in range(bench.settings.warmup + n):
            start = time.perf_counter()
            network.connect(container)
            network.disconnect(container)
            elapsed = time.perf_counter() - start
            if i >= bench.settings.warmup:
                samples.append(elapsed)
        return samples
    finally:
        container.remove(force=True)
