"""Legacy links on the default bridge and names on user-defined networks, through the
real ``sbx`` CLI against the shared session daemon (link variables, hosts entries and
refusals: CHECKS.md 19-20 in tests/security/test_network_checks.py). Traffic goes only between
containers on the daemon's own bridges.

Containers' default capabilities lack NET_RAW. Every prepared namespace opens
``net.ipv4.ping_group_range`` to all groups (as Docker does), so ICMP datagram sockets
(iputils ``ping``) work without it. busybox 1.35's ``ping`` only knows raw sockets, so
the busybox pings here get ``--cap-add NET_RAW``; the datagram path is proven from the
host, with no capabilities, inside a container's namespace.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from harness import FETCH, HTTPD, Daemon, bridge_ip, inspect



@pytest.fixture
def http_server(daemon: Daemon):
    daemon.sbx("run", "-d", "--name", "http_server", "--expose", "80", "--expose",
               "81/udp", "-e", "GREETING=a=b", "busybox", "sh", "-c",
               HTTPD.format(name="server"), check=True)
    try:
        yield bridge_ip(daemon, "http_server")
    finally:
        daemon.sbx("rm", "-f", "http_server", check=True)


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
        # a container that was already running finds web by name (the embedded
        # resolver; its /etc/hosts has only its own names, as Docker's)...
        found = daemon.sbx("exec", "names-watcher", "nslookup", "web", check=True).out
        assert f"Address: {web_ip}" in found, found
        assert "web" not in daemon.sbx("exec", "names-watcher", "cat", "/etc/hosts",
                                       check=True).out
        # ...and no longer once web stops
        daemon.sbx("stop", "-t", "0", "web", check=True)
        assert daemon.sbx("exec", "names-watcher", "nslookup", "web").returncode != 0
        # the default bridge has no names: only links
        alone = daemon.sbx("run", "--rm", "busybox", "cat", "/etc/hosts", check=True).out
        assert "names-watcher" not in alone, alone
    finally:
        daemon.sbx("rm", "-f", "web", "names-watcher")
        daemon.sbx("network", "rm", "names-net", check=True)
