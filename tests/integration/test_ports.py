"""Published ports (``-p``, ``-P``, ``sbx port``, ``NetworkSettings.Ports``) through the
daemon's userland proxy, against the shared session daemon. Traffic goes only from
this host's loopback to the daemon's listeners and on to containers on its own
bridges; the daemon runs with ``--no-ip-masq`` (no forwarding)."""
from __future__ import annotations

import json
import socket
import sys
import time
import urllib.request

import pytest

from harness import Daemon, busybox_with_config, wait_until

HTTPD = "mkdir -p /www && echo hi-from-{name} > /www/index.html && exec httpd -f -p 80 -h /www"
# A UDP echo server in the container (the built-in host image: this Python).
UDP_ECHO = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.bind(('0.0.0.0', 9999)); "
            "exec('while True:\\n d, a = s.recvfrom(2048)\\n s.sendto(b\"echo:\" + d, a)')")


def inspect(daemon: Daemon, name: str) -> dict:
    return json.loads(daemon.sbx("inspect", name, check=True).out)[0]


def fetch(port: int, host: str = "127.0.0.1") -> str:
    """GET / through the published port, retrying while the server starts."""
    def attempt() -> str:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/", timeout=5) as r:
                return r.read().decode()
        except OSError:
            return ""
    return wait_until(attempt, what=f"an answer on {host}:{port}")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(5)
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def names(daemon: Daemon):
    made: list[str] = []
    yield made
    for name in made:
        daemon.sbx("rm", "-f", name)


def test_tcp_round_trip_through_a_fixed_host_port(daemon: Daemon, names: list[str]) -> None:
    port = free_port()
    names.append("pweb")
    daemon.sbx("run", "-d", "--name", "pweb", "-p", f"127.0.0.1:{port}:80", "busybox",
               "sh", "-c", HTTPD.format(name="pweb"), check=True)
    assert fetch(port) == "hi-from-pweb\n"
    # Docker's shapes: port, inspect, ps.
    assert daemon.sbx("port", "pweb", check=True).out == f"80/tcp -> 127.0.0.1:{port}\n"
    assert daemon.sbx("port", "pweb", "80/tcp", check=True).out == f"127.0.0.1:{port}\n"
    missing = daemon.sbx("port", "pweb", "81")
    assert missing.returncode == 1 and "No public port '81/tcp' published for pweb" \
        in missing.err
    doc = inspect(daemon, "pweb")
    assert doc["NetworkSettings"]["Ports"] == {
        "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    assert doc["HostConfig"]["PortBindings"] == {
        "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    ps = daemon.sbx("ps", "--filter", "name=pweb", "--format", "{{.Ports}}", check=True)
    assert ps.out.strip() == f"127.0.0.1:{port}->80/tcp"


def test_ephemeral_host_port_released_on_stop_and_rebound_on_start(
        daemon: Daemon, names: list[str]) -> None:
    names.append("peph")
    daemon.sbx("run", "-d", "--name", "peph", "-p", "80", "busybox", "sh", "-c",
               HTTPD.format(name="peph"), check=True)
    ports = inspect(daemon, "peph")["NetworkSettings"]["Ports"]["80/tcp"]
    assert ports[0]["HostIp"] == "0.0.0.0" and int(ports[0]["HostPort"]) > 0
    port = int(ports[0]["HostPort"])
    assert fetch(port) == "hi-from-peph\n"
    daemon.sbx("stop", "-t", "1", "peph", check=True)
    assert refused(port)                                # the listener went with it
    assert inspect(daemon, "peph")["NetworkSettings"]["Ports"] == {"80/tcp": None}
    with socket.socket() as s:                          # and the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # past TIME_WAIT
        s.bind(("0.0.0.0", port))
        s.listen()
    daemon.sbx("start", "peph", check=True)
    again = int(inspect(daemon, "peph")["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])
    assert fetch(again) == "hi-from-peph\n"
    daemon.sbx("rm", "-f", "peph", check=True)
    names.remove("peph")
    assert refused(again)


@pytest.mark.parametrize("publish, family, address", [
    ("127.0.0.1::9999/udp", socket.AF_INET, "127.0.0.1"),
    ("9999/udp", socket.AF_INET6, "::1"),            # all addresses: IPv6 too
])
def test_udp_round_trip(daemon: Daemon, names: list[str], publish: str, family: int,
                        address: str) -> None:
    names.append("pudp")
    daemon.sbx("run", "-d", "--name", "pudp", "-p", publish, "host",
               sys.executable, "-c", UDP_ECHO, check=True)
    out = daemon.sbx("port", "pudp", "9999/udp", check=True).out.split()[0]
    host, _, port = out.rpartition(":")
    assert host == ("127.0.0.1" if family == socket.AF_INET else "0.0.0.0")
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        deadline = time.monotonic() + 15                # until the server has bound
        reply = b""
        while not reply and time.monotonic() < deadline:
            s.sendto(b"ping", (address, int(port)))
            try:
                reply = s.recv(2048)
            except socket.timeout:
                pass
    assert reply == b"echo:ping"


def test_all_addresses_are_ipv4_and_ipv6_on_one_port(daemon: Daemon, names: list[str]
                                                     ) -> None:
    """Docker's shapes for a port published on every address: 0.0.0.0 and ::, the
    same host port, reachable over both loopbacks; an IPv6 host address alone works."""
    names.append("pdual")
    daemon.sbx("run", "-d", "--name", "pdual", "-p", "80", "-p", "[::1]::81", "busybox",
               "sh", "-c", HTTPD.format(name="pdual"), check=True)
    ports = inspect(daemon, "pdual")["NetworkSettings"]["Ports"]
    both = ports["80/tcp"]
    assert [p["HostIp"] for p in both] == ["0.0.0.0", "::"]
    assert both[0]["HostPort"] == both[1]["HostPort"]
    port = int(both[0]["HostPort"])
    assert [p["HostIp"] for p in ports["81/tcp"]] == ["::1"]
    v6_only = int(ports["81/tcp"][0]["HostPort"])
    assert fetch(port) == "hi-from-pdual\n"
    assert fetch(port, "[::1]") == "hi-from-pdual\n"
    assert daemon.sbx("port", "pdual", "80", check=True).out == (
        f"0.0.0.0:{port}\n[::]:{port}\n")
    assert daemon.sbx("port", "pdual", "81", check=True).out == f"[::1]:{v6_only}\n"
    ps = daemon.sbx("ps", "--filter", "name=pdual", "--format", "{{.Ports}}", check=True)
    assert ps.out.strip() == (f"0.0.0.0:{port}->80/tcp, :::{port}->80/tcp, "
                              f"::1:{v6_only}->81/tcp")
    with socket.socket() as s:                           # the IPv6 listener is ::1 only
        s.settimeout(5)
        assert s.connect_ex(("127.0.0.1", v6_only)) != 0


def test_publish_all_exposed_ports(daemon: Daemon, names: list[str]) -> None:
    names.append("pall")
    daemon.sbx("run", "-d", "--name", "pall", "--expose", "80", "--expose", "81-82/udp",
               "-P", "busybox", "sh", "-c", HTTPD.format(name="pall"), check=True)
    doc = inspect(daemon, "pall")
    assert doc["HostConfig"]["PublishAllPorts"] is True
    ports = doc["NetworkSettings"]["Ports"]
    assert set(ports) == {"80/tcp", "81/udp", "82/udp"}          # a range: each port
    assert all(int(ports[k][0]["HostPort"]) > 0 for k in ports)
    assert fetch(int(ports["80/tcp"][0]["HostPort"])) == "hi-from-pall\n"


def test_an_images_exposed_ports_made_elsewhere(daemon: Daemon, names: list[str],
                                                 tmp_path) -> None:
    for tag, ports in (("sbx-exposed-range", ["8000-8001/tcp", "9000/udp"]),
                       ("sbx-exposed-bad", ["99999999999999999999/tcp"])):
        busybox_with_config(daemon, tmp_path, tag, ExposedPorts={p: {} for p in ports})
    try:
        names.append("prange")     # a range as a key: each port (it was an internal error)
        daemon.sbx("run", "-d", "--name", "prange", "-P", "sbx-exposed-range", "sleep", "60",
                   check=True)
        assert set(inspect(daemon, "prange")["NetworkSettings"]["Ports"]) == \
            {"8000/tcp", "8001/tcp", "9000/udp"}
        run = daemon.sbx("run", "--rm", "-P", "sbx-exposed-bad", "true")
        assert run.returncode == 125 and "image sbx-exposed-bad: ExposedPorts " \
            "'99999999999999999999/tcp' is not PORT[-END]/tcp|udp|sctp" in run.err, run.err
    finally:
        daemon.sbx("rm", "-f", "prange")
        daemon.sbx("rmi", "sbx-exposed-range", "sbx-exposed-bad")


def test_a_taken_port_is_a_clear_error_and_creates_nothing(
        daemon: Daemon, names: list[str]) -> None:
    with socket.socket() as holder:                     # someone on the host has it
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        before = daemon.ids("-a")
        run = daemon.sbx("run", "-d", "--name", "ptaken", "-p", f"127.0.0.1:{port}:80",
                         "busybox", "true")
        assert run.returncode == 125
        assert f"Bind for 127.0.0.1:{port} failed: port is already allocated" in run.err
        assert daemon.ids("-a") == before
    # One of ours holds it: the second container is refused the same way.
    names.append("pfirst")
    port = free_port()
    daemon.sbx("run", "-d", "--name", "pfirst", "-p", f"{port}:80", "busybox", "sleep",
               "60", check=True)
    before = daemon.ids("-a")
    run = daemon.sbx("run", "-d", "-p", f"127.0.0.1:{port}:80", "busybox", "true")
    assert run.returncode == 125 and "port is already allocated" in run.err, run.err
    assert daemon.ids("-a") == before


def test_client_api_ports_mapping(daemon: Daemon) -> None:
    with daemon.client() as client:
        container = client.containers.run("busybox", ["sh", "-c", HTTPD.format(name="api")],
                                          ports={"80/tcp": None})
        try:
            container.reload()
            port = int(container.ports["80/tcp"][0]["HostPort"])
            assert fetch(port) == "hi-from-api\n"
        finally:
            container.remove(force=True)
        assert refused(port)


def test_published_port_follows_the_container_to_its_other_network(
        daemon: Daemon, names: list[str]) -> None:
    daemon.sbx("network", "create", "ports-net", check=True)
    try:
        names.append("pmove")
        daemon.sbx("run", "-d", "--name", "pmove", "-p", "127.0.0.1::80", "busybox", "sh",
                   "-c", HTTPD.format(name="pmove"), check=True)
        port = int(daemon.sbx("port", "pmove", "80", check=True).out.rpartition(":")[2])
        assert fetch(port) == "hi-from-pmove\n"
        daemon.sbx("network", "connect", "ports-net", "pmove", check=True)
        daemon.sbx("network", "disconnect", "bridge", "pmove", check=True)
        assert fetch(port) == "hi-from-pmove\n"          # now through its ports-net address
    finally:
        daemon.sbx("rm", "-f", "pmove")
        names.remove("pmove")
        daemon.sbx("network", "rm", "ports-net")
