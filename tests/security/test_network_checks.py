"""CHECKS.md items 19-22: networks. Check 21 runs with ``ip_forward=1`` (what a daemon
with ``--ip-masq`` leaves on the host), a second daemon and a bridge no daemon made,
and proves every bridge still refuses forwarded traffic to and from the others."""
from __future__ import annotations

import concurrent.futures
import functools
import ipaddress
import json
import os
import random
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import (FETCH, Daemon, bridge_ip, inspect, netfilter_leftovers, pid_alive,
                     wait_until)
from sandboxd import errors
from sandboxd.network import POOL_SIZE, USER_POOL_SIZE

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
HTTPD = ["busybox", "sh", "-c", "echo pong > /tmp/i && exec httpd -f -p 80 -h /tmp"]


def ip_of(d: Daemon, name: str, network: str | None = None) -> str:
    nets = json.loads(d.sbx("inspect", name, check=True).out)[0]["NetworkSettings"]["Networks"]
    return next(iter(nets.values()))["IPAddress"] if network is None \
        else nets[network]["IPAddress"]


def fetch(d: Daemon, name: str, ip: str) -> bool:
    """Does ``name`` get the page of the httpd at ``ip`` (TCP connect, 1 s: a DROP shows as the timeout)?"""
    # busybox nc, not wget: this busybox's wget crashes in a container (static NSS).
    run = d.sbx("exec", name, "sh", "-c",
                f"printf 'GET /i HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {ip} 80", timeout=30)
    return "pong" in run.out


def fetch_from_ns(ns: str, ip: str) -> bool:
    run = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c",
                          f"printf 'GET /i HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 1 {ip} 80"],
                         capture_output=True, text=True, timeout=30)
    return "pong" in run.stdout


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 10.250-254.x no route of the host touches (daemons avoid routes too)."""
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"],
                            capture_output=True, text=True).stdout
    used = []
    for line in routes.split("\n"):
        word = line.split(" ")[0] if line else ""
        try:
            used.append(ipaddress.ip_network(word if "/" in word else word + "/32",
                                             strict=False))
        except ValueError:
            continue
    for third in range(250, 255):
        for fourth in range(10, 250):
            net = ipaddress.ip_network(f"10.{third}.{fourth}.0/24")
            if not any(net.overlaps(u) for u in used):
                return net
    pytest.skip("no free 10.250-254.x.0/24 for the foreign bridge")


@pytest.fixture
def forwarding_on() -> Iterator[None]:
    before = IP_FORWARD.read_text()
    IP_FORWARD.write_text("1\n")
    try:
        yield
    finally:
        IP_FORWARD.write_text(before)


@pytest.fixture
def foreign() -> Iterator[tuple[str, str, str]]:
    """A bridge no daemon made (address .1), a netns behind it (.2, default route via
    the bridge) serving httpd: (netns name, its address, the bridge's address)."""
    net = free_subnet()
    gw, ns_ip = str(net[1]), str(net[2])
    br, veth, ns = "sbxnfbr0", "sbxnfv0", "sbxnf-ns"
    cmds = [["ip", "link", "add", br, "type", "bridge"],
            ["ip", "addr", "add", f"{gw}/24", "dev", br], ["ip", "link", "set", br, "up"],
            ["ip", "netns", "add", ns],
            ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns],
            ["ip", "link", "set", veth, "master", br, "up"],
            ["ip", "-n", ns, "addr", "add", f"{ns_ip}/24", "dev", "eth0"],
            ["ip", "-n", ns, "link", "set", "eth0", "up"],
            ["ip", "-n", ns, "link", "set", "lo", "up"],
            ["ip", "-n", ns, "route", "add", "default", "via", gw]]
    server = None
    www = Path(f"/tmp/{ns}-www")
    try:
        for cmd in cmds:
            subprocess.run(cmd, check=True, capture_output=True)
        www.mkdir(exist_ok=True)
        (www / "i").write_text("pong\n")
        server = subprocess.Popen(["ip", "netns", "exec", ns, "busybox", "httpd", "-f",
                                   "-p", "80", "-h", str(www)])
        yield ns, ns_ip, gw
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", br], capture_output=True)
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        for f in www.glob("*"):
            f.unlink()
        if www.exists():
            www.rmdir()


def test_check_21_networks_isolated_with_forwarding_on(secure_daemon: Daemon, forwarding_on,
                                                       foreign) -> None:
    a = secure_daemon
    ns, ns_ip, _ = foreign
    b = Daemon().start()
    started: list[tuple[Daemon, str]] = []

    def run(d: Daemon, name: str, *args: str) -> None:
        d.sbx("run", "-d", "--name", name, *args, "busybox", *HTTPD, check=True)
        started.append((d, name))

    try:
        b.import_busybox()
        a.sbx("network", "create", "iso21", check=True)
        a.sbx("network", "create", "--internal", "iso21-int", check=True)
        run(a, "a1", "-p", "127.0.0.1::80")       # A's default bridge, a published port
        run(a, "a1b")                             # same network as a1
        run(a, "a2", "--network", "iso21")        # A's user network
        run(a, "a2b", "--network", "iso21")
        run(a, "a3", "--network", "iso21-int")    # internal
        run(b, "b1")                              # B's default bridge
        ip = {"a1": ip_of(a, "a1"), "a2": ip_of(a, "a2"), "a3": ip_of(a, "a3"),
              "b1": ip_of(b, "b1"), "ns": ns_ip}
        owner = {"a1": a, "a2": a, "a3": a, "b1": b}
        # Same network: passes (the listeners are up once this answers).
        deadline = time.monotonic() + 15
        while not (fetch(a, "a1b", ip["a1"]) and fetch(a, "a2b", ip["a2"])):
            assert time.monotonic() < deadline, "no answer within the same network"
        # Published port: the daemon's proxy, from the host.
        port = a.sbx("port", "a1", check=True).out.split(":")[-1].strip()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/i", timeout=5) as page:
            assert page.read() == b"pong\n"
        # Across every pair of bridges, either way: refused. Each refusal is a 1 s
        # timeout: the tries run side by side.
        tries = {f"{src} -> {dst}": functools.partial(fetch, d, src, ip[dst])
                 for src, d in owner.items() for dst in ip if dst != src}
        tries.update({f"foreign -> {dst}": functools.partial(fetch_from_ns, ns, ip[dst])
                      for dst in ("a1", "a2", "a3", "b1")})
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answered = dict(zip(tries, pool.map(lambda attempt: attempt(), tries.values())))
        reached = [pair for pair, got in answered.items() if got]
        assert not reached, f"forwarded between networks with ip_forward=1: {reached}"
        # No raw sockets without NET_RAW (the default profile's ping, then dropped).
        raw = a.sbx("run", "--rm", "--cap-drop", "NET_RAW", "busybox", "ping", "-c", "1",
                    "-W", "1", ip["a1"])
        assert raw.returncode != 0 and "permission denied" in raw.err, raw.err
    finally:
        for d, name in started:
            d.sbx("rm", "-f", name)
        for net in ("iso21", "iso21-int"):
            a.sbx("network", "rm", net)
        b.stop()
    assert not netfilter_leftovers(b.prefix)


@pytest.fixture
def daemon(secure_daemon: Daemon) -> Daemon:
    return secure_daemon


# A page to serve, then busybox httpd in the foreground.
LINK_HTTPD = "mkdir -p /www && echo hi-from-{name} > /www/index.html && exec httpd -f -p 80 -h /www"


@pytest.fixture
def http_server(daemon: Daemon):
    daemon.sbx("run", "-d", "--name", "http_server", "--expose", "80", "--expose",
               "81/udp", "-e", "GREETING=a=b", "busybox", "sh", "-c",
               LINK_HTTPD.format(name="server"), check=True)
    try:
        yield bridge_ip(daemon, "http_server")
    finally:
        daemon.sbx("rm", "-f", "http_server", check=True)


def test_check_19_link_variables_exact(daemon: Daemon, http_server: str) -> None:
    ip = http_server
    run = daemon.sbx("run", "--rm", "--name", "client1", "--link", "http_server:server",
                     "--cap-add", "NET_RAW", "busybox", "sh", "-c",
                     "env; ping -c1 -W1 server; " + FETCH.format(host="server"), check=True)
    env = dict(line.split("=", 1) for line in run.out.splitlines() if "=" in line
               and line.startswith("SERVER_"))
    assert env["SERVER_NAME"] == "/client1/server"
    assert env["SERVER_PORT"] == f"tcp://{ip}:80"             # lowest port, tcp first
    assert env["SERVER_PORT_80_TCP"] == f"tcp://{ip}:80"
    assert env["SERVER_PORT_80_TCP_ADDR"] == ip
    assert env["SERVER_PORT_80_TCP_PORT"] == "80"
    assert env["SERVER_PORT_80_TCP_PROTO"] == "tcp"
    assert env["SERVER_PORT_81_UDP"] == f"udp://{ip}:81"
    assert env["SERVER_PORT_80_TCP_START"] == f"tcp://{ip}:80"  # 80-81: a range
    assert env["SERVER_PORT_80_UDP_END"] == f"udp://{ip}:81"
    assert env["SERVER_ENV_GREETING"] == "a=b"                 # values keep '='
    assert "SERVER_ENV_PATH" not in env and "SERVER_ENV_HOME" not in env
    assert "1 packets received" in run.out, run.out
    assert "hi-from-server" in run.out, run.out


def test_check_20_link_hosts_entry(daemon: Daemon, http_server: str) -> None:
    ip = http_server
    run = daemon.sbx("run", "--rm", "--name", "client2", "--link", "http_server:web-srv",
                     "busybox", "sh", "-c", "cat /etc/hosts; env", check=True)
    assert f"{ip}\tweb-srv " in run.out and "http_server" in run.out.split(f"{ip}\t")[1] \
        .splitlines()[0], run.out
    assert "WEB_SRV_NAME=/client2/web-srv" in run.out.splitlines()
    daemon.sbx("create", "--name", "client3", "--link", "http_server:server", "busybox",
               "true", check=True)
    try:
        assert inspect(daemon, "client3")["HostConfig"]["Links"] == \
            ["/http_server:/client3/server"]
    finally:
        daemon.sbx("rm", "-f", "client3", check=True)


def test_check_20_link_refusals(daemon: Daemon) -> None:
    unknown = daemon.sbx("run", "--rm", "--link", "no_such_server:s", "busybox", "true")
    assert unknown.returncode != 0 and "could not get container for no_such_server" \
        in unknown.err, unknown.err

    daemon.sbx("create", "--name", "link-stopped", "busybox", "true", check=True)
    daemon.sbx("run", "-d", "--name", "link-host", "--network", "host", "busybox", "sleep",
               "60", check=True)
    daemon.sbx("network", "create", "link-net", check=True)
    try:
        stopped = daemon.sbx("run", "--rm", "--link", "link-stopped:s", "busybox", "true")
        assert stopped.returncode != 0 and "Cannot link to a non running container: " \
            "/link-stopped AS" in stopped.err, stopped.err
        host = daemon.sbx("create", "--link", "link-host:h", "busybox", "true")
        assert host.returncode != 0 and "host type networking" in host.err, host.err
        user = daemon.sbx("create", "--network", "link-net", "--link", "link-host:h",
                          "busybox", "true")
        assert user.returncode != 0 and "only supported for containers on the default " \
            "bridge network" in user.err, user.err
    finally:
        daemon.sbx("rm", "-f", "link-stopped", "link-host", check=True)
        daemon.sbx("rm", "-f", *daemon.ids("-a", "--filter", "status=created"))
        daemon.sbx("network", "rm", "link-net", check=True)


CYCLES = int(os.environ.get("SBX_NET_CYCLES", "500"))
POOL = POOL_SIZE               # the network service's pool size per built-in network


def our_veths(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                         check=True).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return [n for n in names if n.startswith(prefix + "v")]


def failed_start(client, rng: random.Random, network: str) -> None:
    """A start that fails after the network was attached: a missing command, or a host
    port taken between create and start (the container stays created; rm removes it)."""
    if rng.random() < 0.5:
        container = client.containers.create("busybox", "/no/such/command",
                                             network_mode=network)
        with pytest.raises(errors.CommandNotFound):
            container.start()
        container.remove(force=True)
        return
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        holder.close()
        container = client.containers.create("busybox", "sleep 30", network_mode=network,
                                             ports={"80/tcp": ("127.0.0.1", port)})
        with socket.socket() as taker:
            taker.bind(("127.0.0.1", port))
            taker.listen()
            with pytest.raises(errors.Conflict, match="already allocated"):
                container.start()
        container.remove(force=True)


def one_cycle(client, rng: random.Random, network: str) -> None:
    how = rng.choice(["remove", "kill", "outside", "exit", "stop", "failed"])
    if how == "failed":
        failed_start(client, rng, network)
        return
    ports = {"80/tcp": None} if rng.random() < 0.25 else {}
    cmd = "true" if how == "exit" else "sleep 30"
    container = client.containers.run("busybox", cmd, network_mode=network, ports=ports)
    if how == "kill":
        container.kill()
    elif how == "outside":                      # a kill the daemon did not ask for
        pid = container.record.state.pid
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    elif how == "stop":
        container.stop(timeout=0)
    if how in ("kill", "outside", "exit"):
        container.wait()
    container.remove(force=True)


def test_check_22_cycles_leave_no_veth_netns_or_address() -> None:
    """create -> start -> (kill -9 | exit | failed start ...) -> rm, ``SBX_NET_CYCLES``
    times (default 500, ~10 s here; moved from tests/integration, so the suite is not longer)."""
    daemon = Daemon().start()
    try:
        daemon.import_busybox()
        daemon.sbx("network", "create", "cycles-net", check=True)
        rng = random.Random(5)
        for half in range(2):
            with daemon.client() as client:
                for i in range(CYCLES // 2):
                    one_cycle(client, rng, rng.choice(["bridge", "cycles-net"]))
                if half == 0:                   # leave some running, then kill -9
                    for _ in range(3):
                        client.containers.run("busybox", "sleep 60")
            if half == 0:
                pids = daemon.forkserver_pids()
                daemon.kill9()
                wait_until(lambda: not any(pid_alive(p) for p in pids), 15,
                           "the dead daemon's helpers to exit")
                daemon.start()
                daemon.sbx("container", "prune", "-f", check=True)
        assert daemon.ids("-a") == []
        pooled = POOL + USER_POOL_SIZE          # the default bridge's and cycles-net's

        def settled() -> bool:                  # teardowns run in the background
            owners = [owner for _address, owner in daemon.addresses()]
            netns = os.listdir(os.path.join(daemon.root, "netns"))   # bridges' and none's
            return len(our_veths(daemon.prefix)) == pooled and len(owners) == pooled and \
                all(o.startswith("pool:") for o in owners) and len(netns) == pooled + POOL
        wait_until(settled, 30, "only the pools' veths and addresses to remain")
        daemon.sbx("network", "rm", "cycles-net", check=True)
    finally:
        daemon.stop()                           # and nothing of it is left
