"""``network connect`` / ``network disconnect`` on running containers, through the real
``sbx`` CLI and the Python client against the shared session daemon. Traffic goes only
between containers on the daemon's own bridges."""
from __future__ import annotations

import json
import os

import pytest

from harness import Daemon

HTTPD = "mkdir -p /www && echo hi-from-{name} > /www/index.html && exec httpd -f -p 80 -h /www"
# One try, short: used where the answer must be "no" (busybox 1.35's static wget
# crashes on its own -T, hence timeout). A peer on one of our bridges answers in well
# under a millisecond; a second is ample.
FETCH_ONCE = "timeout 1 wget -qO- http://{host}/"
FETCH = "for i in $(seq 50); do timeout 3 wget -qO- http://{host}/ && break; sleep 0.1; done"


def inspect(daemon: Daemon, name: str) -> dict:
    return json.loads(daemon.sbx("inspect", name, check=True).out)[0]


def sh(daemon: Daemon, name: str, script: str):
    return daemon.sbx("exec", name, "sh", "-c", script)


@pytest.fixture
def pair(daemon: Daemon):
    """``cweb`` serving on network ``conn-net``; ``cclient`` on the default bridge."""
    daemon.sbx("network", "create", "--subnet", "10.231.7.0/24", "conn-net", check=True)
    try:
        daemon.sbx("run", "-d", "--name", "cweb", "--network", "conn-net", "busybox", "sh",
                   "-c", HTTPD.format(name="cweb"), check=True)
        daemon.sbx("run", "-d", "--name", "cclient", "busybox", "sleep", "600", check=True)
        yield
    finally:
        daemon.sbx("rm", "-f", "cweb", "cclient")
        daemon.sbx("network", "rm", "conn-net")


def test_connect_adds_an_interface_live_and_disconnect_removes_it(
        daemon: Daemon, pair: None) -> None:
    web_ip = inspect(daemon, "cweb")["NetworkSettings"]["Networks"]["conn-net"]["IPAddress"]
    assert sh(daemon, "cclient", FETCH_ONCE.format(host=web_ip)).returncode != 0

    daemon.sbx("network", "connect", "--alias", "front", "--ip", "10.231.7.77", "conn-net",
               "cclient", check=True)
    networks = inspect(daemon, "cclient")["NetworkSettings"]["Networks"]
    assert set(networks) == {"bridge", "conn-net"}
    assert networks["conn-net"]["IPAddress"] == "10.231.7.77"
    assert networks["conn-net"]["Gateway"] == ""       # the default route stays on eth0
    assert "front" in networks["conn-net"]["Aliases"]
    addr = sh(daemon, "cclient", "ip -o -4 addr show eth1; ip route").out
    assert "10.231.7.77/24" in addr and "default via " + networks["bridge"]["Gateway"] in addr
    # Names on the joined network both ways (the embedded resolver), as containers
    # started on it have them; /etc/hosts keeps only each container's own (Docker's).
    assert "hi-from-cweb" in sh(daemon, "cclient", FETCH.format(host="cweb")).out
    found = sh(daemon, "cweb", "nslookup front; nslookup cclient").out
    assert found.count("Address: 10.231.7.77") == 2, found
    assert "cclient" not in sh(daemon, "cweb", "cat /etc/hosts").out
    doc = json.loads(daemon.sbx("network", "inspect", "conn-net", check=True).out)[0]
    assert {c["Name"] for c in doc["Containers"].values()} == {"cweb", "cclient"}
    busy = daemon.sbx("network", "rm", "conn-net")
    assert busy.returncode == 1 and "active endpoints" in busy.err
    again = daemon.sbx("network", "connect", "conn-net", "cclient")
    assert again.returncode == 125 and "already exists" in again.err

    daemon.sbx("network", "disconnect", "conn-net", "cclient", check=True)
    assert set(inspect(daemon, "cclient")["NetworkSettings"]["Networks"]) == {"bridge"}
    assert sh(daemon, "cclient", "ip link show eth1").returncode != 0
    assert sh(daemon, "cclient", FETCH_ONCE.format(host=web_ip)).returncode != 0
    assert sh(daemon, "cweb", "nslookup cclient").returncode != 0
    gone = daemon.sbx("network", "disconnect", "conn-net", "cclient")
    assert gone.returncode == 125 and "is not connected" in gone.err
    daemon.sbx("network", "disconnect", "-f", "conn-net", "cclient", check=True)
    # Its address is free again: a static connect may take it at once.
    daemon.sbx("network", "connect", "--ip", "10.231.7.77", "conn-net", "cclient",
               check=True)


def test_rm_containers_own_etc_files_are_rewritten_inside_their_root(
        daemon: Daemon) -> None:
    """A --rm container's /etc files are plain files of its own layer (no bind mounts).
    Joining a user network rewrites its resolv.conf (the embedded resolver, as Docker
    does) through its root: a symlink the container put there resolves inside it,
    never to the host. /etc/hosts keeps its own names only; the others' come by DNS."""
    host_target = f"/tmp/sbx-resolv-target-{os.getpid()}"
    daemon.sbx("network", "create", "--subnet", "10.231.9.0/24", "rm-net", check=True)
    try:
        daemon.sbx("run", "-d", "--rm", "--name", "rmwatch", "--hostname", "watcher",
                   "busybox", "sleep", "600", check=True)
        assert sh(daemon, "rmwatch", "grep -c ' /etc/' /proc/self/mountinfo").out == "0\n"
        assert sh(daemon, "rmwatch", "cat /etc/hostname").out == "watcher\n"
        assert "127.0.1.1\twatcher" in sh(daemon, "rmwatch", "cat /etc/hosts").out
        assert sh(daemon, "rmwatch", "cat /etc/resolv.conf").out.startswith(
            "# Generated by sandboxd")
        daemon.sbx("run", "-d", "--rm", "--name", "rmevil", "busybox", "sh", "-c",
                   f"rm /etc/resolv.conf && ln -s {host_target} /etc/resolv.conf && "
                   f"exec sleep 600", check=True)
        daemon.sbx("run", "-d", "--name", "rmpeer", "--network", "rm-net", "busybox",
                   "sleep", "600", check=True)
        hosts, found = daemon.sbx("run", "--rm", "--network", "rm-net", "busybox", "sh",
                                  "-c", "cat /etc/hosts; echo ---; nslookup rmpeer",
                                  check=True).out.split("---")
        assert "rmpeer" not in hosts and "Address: 10.231.9." in found
        for name in ("rmwatch", "rmevil"):
            daemon.sbx("network", "connect", "rm-net", name, check=True)
        assert "nameserver 127.0.0.11" in sh(daemon, "rmwatch", "cat /etc/resolv.conf").out
        assert "rmpeer" not in sh(daemon, "rmwatch", "cat /etc/hosts").out
        assert "Address: 10.231.9." in sh(daemon, "rmwatch", "nslookup rmpeer").out
        assert "nameserver 127.0.0.11" in sh(daemon, "rmevil", f"cat {host_target}").out
        assert not os.path.lexists(host_target)
    finally:
        daemon.sbx("rm", "-f", "rmwatch", "rmevil", "rmpeer")
        daemon.sbx("network", "rm", "rm-net")


def test_disconnect_from_the_first_network_keeps_the_container_running(
        daemon: Daemon, pair: None) -> None:
    daemon.sbx("network", "disconnect", "conn-net", "cweb", check=True)
    links = sh(daemon, "cweb", "ip -o link").out.splitlines()
    assert len(links) == 1 and links[0].startswith("1: lo:"), links       # lo alone
    assert inspect(daemon, "cweb")["State"]["Running"] is True
    # And back: a new interface in the same namespace, from the default bridge.
    daemon.sbx("network", "connect", "bridge", "cweb", check=True)
    ip = inspect(daemon, "cweb")["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
    assert "hi-from-cweb" in sh(daemon, "cclient", FETCH.format(host=ip)).out


def test_connect_refusals(daemon: Daemon) -> None:
    daemon.sbx("create", "--name", "cstopped", "busybox", "true", check=True)
    try:
        stopped = daemon.sbx("network", "connect", "bridge", "cstopped")
        assert stopped.returncode == 125 and "not running" in stopped.err
        daemon.sbx("run", "-d", "--name", "chost", "--network", "host", "busybox", "sleep",
                   "60", check=True)
        host = daemon.sbx("network", "connect", "bridge", "chost")
        assert host.returncode == 125 and "cannot be connected" in host.err
        static = daemon.sbx("network", "connect", "--ip", "172.17.0.50", "bridge", "chost")
        assert static.returncode == 125
        missing = daemon.sbx("network", "connect", "no-such-net", "chost")
        assert missing.returncode == 125 and "not found" in missing.err
        daemon.sbx("run", "-d", "--name", "cnone", "--network", "none", "busybox", "sleep",
                   "60", check=True)
        none = daemon.sbx("network", "connect", "bridge", "cnone")
        assert none.returncode == 125 and "private (none) mode" in none.err
    finally:
        daemon.sbx("rm", "-f", "cstopped", "chost", "cnone")


def test_python_client_connect_disconnect(daemon: Daemon) -> None:
    with daemon.client() as client:
        net = client.networks.create("conn-py")
        try:
            container = client.containers.run("busybox", "sleep 600")
            try:
                net.connect(container, aliases=["pyalias"])
                assert net.reload().containers == [container.id]
                endpoint = container.reload().attrs["NetworkSettings"]["Networks"]["conn-py"]
                assert endpoint["IPAddress"] and "pyalias" in endpoint["Aliases"]
                net.disconnect(container)
                assert net.reload().containers == []
            finally:
                container.remove(force=True)
        finally:
            net.remove()


def test_connect_keeps_a_linked_containers_link_entry(daemon: Daemon) -> None:
    daemon.sbx("network", "create", "conn-links", check=True)
    try:
        daemon.sbx("run", "-d", "--name", "lserver", "busybox", "sleep", "600", check=True)
        daemon.sbx("run", "-d", "--name", "lclient", "--link", "lserver:srv", "busybox",
                   "sleep", "600", check=True)
        daemon.sbx("run", "-d", "--name", "lpeer", "--network", "conn-links", "busybox",
                   "sleep", "600", check=True)
        daemon.sbx("network", "connect", "conn-links", "lclient", check=True)
        hosts = sh(daemon, "lclient", "cat /etc/hosts").out
        assert "\tsrv " in hosts and "lpeer" not in hosts, hosts
        assert sh(daemon, "lclient", "nslookup lpeer").returncode == 0
        daemon.sbx("network", "disconnect", "conn-links", "lclient", check=True)
        hosts = sh(daemon, "lclient", "cat /etc/hosts").out
        assert "\tsrv " in hosts, hosts
    finally:
        daemon.sbx("rm", "-f", "lserver", "lclient", "lpeer")
        daemon.sbx("network", "rm", "conn-links")
