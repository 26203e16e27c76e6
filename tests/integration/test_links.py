"""Legacy links on the default bridge and names on user-defined networks, through the
real ``sbx`` CLI against the shared session daemon. Traffic goes only between
containers on the daemon's own bridges.

Containers' default capabilities lack NET_RAW. Every prepared namespace opens
``net.ipv4.ping_group_range`` to all groups (as Docker does), so ICMP datagram sockets
(iputils ``ping``) work without it. busybox 1.35's ``ping`` only knows raw sockets, so
the busybox pings here get ``--cap-add NET_RAW``; the datagram path is proven from the
host, with no capabilities, inside a container's namespace.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import Daemon, wait_until

# A page to serve, then busybox httpd in the foreground.
HTTPD = "mkdir -p /www && echo hi-from-{name} > /www/index.html && exec httpd -f -p 80 -h /www"
# Retry until the server listens (it was started with -d just before).
FETCH = "for i in $(seq 100); do wget -qO- http://{host}/ && break; sleep 0.1; done"


def inspect(daemon: Daemon, name: str) -> dict:
    return json.loads(daemon.sbx("inspect", name, check=True).out)[0]


def bridge_ip(daemon: Daemon, name: str) -> str:
    ip = inspect(daemon, name)["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
    assert ip, f"{name} has no address on the default bridge"
    return ip


@pytest.fixture
def http_server(daemon: Daemon):
    daemon.sbx("run", "-d", "--name", "http_server", "--expose", "80", "--expose",
               "81/udp", "-e", "GREETING=a=b", "busybox", "sh", "-c",
               HTTPD.format(name="server"), check=True)
    try:
        yield bridge_ip(daemon, "http_server")
    finally:
        daemon.sbx("rm", "-f", "http_server", check=True)


def test_seed_example_link(daemon: Daemon, http_server: str) -> None:
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


# Run in a container's network namespace with no capabilities at all: a raw socket is
# refused, an ICMP datagram socket (the namespace's ping_group_range) gets a reply.
PING_DGRAM = """
import socket, sys
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    print("raw socket allowed")
except PermissionError:
    print("raw socket refused")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
s.settimeout(10)
s.sendto(bytes([8, 0, 0, 0, 0, 0, 0, 1]) + b"sbx", (sys.argv[1], 0))  # kernel: id, sum
data, (peer, _) = s.recvfrom(1024)
print("reply", data[0], "from", peer)
"""


def test_ping_without_net_raw(daemon: Daemon, http_server: str) -> None:
    ip = http_server
    daemon.sbx("run", "-d", "--name", "pinger", "busybox", "sleep", "60", check=True)
    try:
        sysctl = daemon.sbx("exec", "pinger", "cat", "/proc/sys/net/ipv4/ping_group_range",
                            check=True).out
        assert sysctl.split() == ["0", "2147483647"]
        raw = daemon.sbx("exec", "pinger", "ping", "-c1", "-W1", ip)
        assert raw.returncode != 0 and "permission denied" in raw.err, raw.err
        netns = inspect(daemon, "pinger")["NetworkSettings"]["SandboxKey"]
        out = subprocess.run(["nsenter", f"--net={netns}", "setpriv", "--inh-caps=-all",
                              "--bounding-set=-all", sys.executable, "-c", PING_DGRAM, ip],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split("\n")[:2] == ["raw socket refused", f"reply 0 from {ip}"]
    finally:
        daemon.sbx("rm", "-f", "pinger", check=True)


def test_link_hosts_entry_and_inspect(daemon: Daemon, http_server: str) -> None:
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


def test_link_refusals(daemon: Daemon) -> None:
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


def test_names_on_a_user_network(daemon: Daemon) -> None:
    daemon.sbx("network", "create", "names-net", check=True)
    try:
        daemon.sbx("run", "-d", "--name", "names-watcher", "--network", "names-net",
                   "busybox", "sleep", "120", check=True)
        web = daemon.sbx("run", "-d", "--name", "web", "--network", "names-net", "busybox",
                         "sh", "-c", HTTPD.format(name="web"), check=True).out.strip()
        web_ip = inspect(daemon, "web")["NetworkSettings"]["Networks"]["names-net"][
            "IPAddress"]
        # by name and by short id, from a container started after it
        run = daemon.sbx("run", "--rm", "--network", "names-net", "--cap-add", "NET_RAW",
                         "busybox", "sh", "-c",
                         FETCH.format(host="web") + "; ping -c1 -W1 " + web[:12],
                         check=True)
        assert "hi-from-web" in run.out and "1 packets received" in run.out, run.out
        # a container that was already running learnt the name when web started...
        hosts = daemon.sbx("exec", "names-watcher", "cat", "/etc/hosts", check=True).out
        assert f"{web_ip}\tweb {web[:12]}" in hosts.splitlines(), hosts
        # ...and forgets it when web stops
        daemon.sbx("stop", "-t", "0", "web", check=True)
        wait_until(lambda: "\tweb " not in daemon.sbx("exec", "names-watcher", "cat",
                                                      "/etc/hosts", check=True).out,
                   what="web to leave names-watcher's /etc/hosts")
        # the default bridge has no names: only links
        # (the container has no DNS server: its hosts file is all it can resolve with)
        alone = daemon.sbx("run", "--rm", "busybox", "cat", "/etc/hosts", "/etc/resolv.conf",
                           check=True).out
        assert "names-watcher" not in alone and "nameserver" not in alone, alone
    finally:
        daemon.sbx("rm", "-f", "web", "names-watcher")
        daemon.sbx("network", "rm", "names-net", check=True)
