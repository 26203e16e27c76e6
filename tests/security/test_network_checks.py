"""CHECKS.md items 19-22: networks. Check 21 runs with ``ip_forward=1`` (what a daemon
with ``--ip-masq`` leaves on the host), a second daemon and a bridge no daemon made,
and proves every bridge still refuses forwarded traffic to and from the others."""
from __future__ import annotations

import ipaddress
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Daemon, netfilter_leftovers

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
HTTPD = ["busybox", "sh", "-c", "echo pong > /tmp/i && exec httpd -f -p 80 -h /tmp"]


def ip_of(d: Daemon, name: str, network: str | None = None) -> str:
    nets = json.loads(d.sbx("inspect", name, check=True).out)[0]["NetworkSettings"]["Networks"]
    return next(iter(nets.values()))["IPAddress"] if network is None \
        else nets[network]["IPAddress"]


def fetch(d: Daemon, name: str, ip: str) -> bool:
    """Does ``name`` get the page of the httpd at ``ip`` (TCP connect, 2 s)?"""
    # busybox nc, not wget: this busybox's wget crashes in a container (static NSS).
    run = d.sbx("exec", name, "sh", "-c",
                f"printf 'GET /i HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} 80", timeout=30)
    return "pong" in run.out


def fetch_from_ns(ns: str, ip: str) -> bool:
    run = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c",
                          f"printf 'GET /i HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 2 {ip} 80"],
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
        # Across every pair of bridges, either way: refused.
        reached = []
        for src, d in owner.items():
            for dst in ip:
                if dst != src and fetch(d, src, ip[dst]):
                    reached.append(f"{src} -> {dst}")
        for dst in ("a1", "a2", "a3", "b1"):
            if fetch_from_ns(ns, ip[dst]):
                reached.append(f"foreign -> {dst}")
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
