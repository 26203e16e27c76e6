"""A container's resolver configuration through the real ``sbx`` CLI: resolv.conf per
network mode (made from this host's file by the rules unit-tested in
tests/unit/test_resolvconf_unit.py), ``--dns``/``--dns-search``/``--dns-option``,
``--add-host`` (also ``host-gateway``), refusals, the daemon's ``--dns``, and a real
lookup against a resolver the test runs on the default bridge's gateway address. No
packet leaves this machine: the resolver listens on our own bridge."""
from __future__ import annotations

import json
import os
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from harness import Daemon, inspect, running
from sandboxd import resolvconf


def expected(mode: str) -> str:
    """What a container gets on this host with no --dns* flag."""
    etc = open(resolvconf.ETC).read() if os.path.exists(resolvconf.ETC) else ""
    if mode == "host":
        return resolvconf.container_text(etc, "host")
    if mode == "user":
        return resolvconf.container_text(etc, "user")
    path = resolvconf.host_path(etc, os.path.exists(resolvconf.SYSTEMD))
    return resolvconf.container_text(open(path).read() if path != resolvconf.ETC else etc,
                                     mode)


def gateway(daemon: Daemon) -> str:
    doc = json.loads(daemon.sbx("network", "inspect", "bridge", check=True).out)[0]
    return doc["IPAM"]["Config"][0]["Gateway"]


def cat(daemon: Daemon, *flags: str, path: str = "/etc/resolv.conf") -> str:
    return daemon.sbx("run", "--rm", *flags, "busybox", "cat", path, check=True).out


@pytest.mark.parametrize("mode", ["default", "none", "host"])
def test_resolv_conf_per_network_mode(daemon: Daemon, mode: str) -> None:
    want = expected({"default": "bridge"}.get(mode, mode))
    assert cat(daemon, "--network", mode) == want
    # a container with a kept layer gets the same through its bind-mounted file
    name = f"dns-kept-{mode}"
    daemon.sbx("create", "--name", name, "--network", mode, "busybox", "cat",
               "/etc/resolv.conf", check=True)
    try:
        assert daemon.sbx("start", "-a", name, check=True).out == want
    finally:
        daemon.sbx("rm", "-f", name, check=True)


def test_resolv_conf_on_a_user_network(daemon: Daemon) -> None:
    daemon.sbx("network", "create", "--subnet", "10.231.53.0/24", "dns-net", check=True)
    try:
        # the embedded resolver (tests/integration/test_embedded_dns.py), with the
        # host's search and options
        assert cat(daemon, "--network", "dns-net") == expected("user")
    finally:
        daemon.sbx("network", "rm", "dns-net", check=True)


def test_dns_flags_are_written_and_inspected(daemon: Daemon) -> None:
    flags = ("--dns", "192.0.2.10", "--dns", "2001:db8::53", "--dns-search", "corp.example",
             "--dns-search", "lab.example", "--dns-option", "ndots:3", "--dns-opt", "edns0")
    text = cat(daemon, *flags)
    assert "nameserver 192.0.2.10\nnameserver 2001:db8::53\n" in text
    assert "search corp.example lab.example\n" in text
    assert "options ndots:3 edns0\n" in text
    assert "search" not in cat(daemon, "--dns-search", ".")
    daemon.sbx("create", "--name", "dns-inspect", *flags, "--add-host", "db:192.0.2.5",
               "--add-host", "gw:host-gateway", "busybox", "true", check=True)
    try:
        hc = inspect(daemon, "dns-inspect")["HostConfig"]
        assert hc["Dns"] == ["192.0.2.10", "2001:db8::53"]
        assert hc["DnsSearch"] == ["corp.example", "lab.example"]
        assert hc["DnsOptions"] == ["ndots:3", "edns0"]
        assert hc["ExtraHosts"] == ["db:192.0.2.5", "gw:host-gateway"]
    finally:
        daemon.sbx("rm", "-f", "dns-inspect", check=True)
    plain = inspect_plain(daemon)
    assert (plain["Dns"], plain["DnsSearch"], plain["DnsOptions"], plain["ExtraHosts"]) == (
        [], [], [], None)


def inspect_plain(daemon: Daemon) -> dict:
    daemon.sbx("create", "--name", "dns-plain", "busybox", "true", check=True)
    try:
        return inspect(daemon, "dns-plain")["HostConfig"]
    finally:
        daemon.sbx("rm", "-f", "dns-plain", check=True)


@pytest.mark.parametrize("rm", [True, False])
def test_add_host_and_host_gateway(daemon: Daemon, rm: bool) -> None:
    flags = ("--add-host", "db:192.0.2.5", "--add-host", "v6=[2001:db8::5]",
             "--add-host", "host.docker.internal:host-gateway")
    if rm:
        hosts = cat(daemon, *flags, path="/etc/hosts")
    else:
        daemon.sbx("create", "--name", "dns-hosts", *flags, "busybox", "cat", "/etc/hosts",
                   check=True)
        try:
            hosts = daemon.sbx("start", "-a", "dns-hosts", check=True).out
        finally:
            daemon.sbx("rm", "-f", "dns-hosts", check=True)
    rows = hosts.splitlines()
    assert "192.0.2.5\tdb" in rows and "2001:db8::5\tv6" in rows, hosts
    assert f"{gateway(daemon)}\thost.docker.internal" in rows, hosts
    assert "127.0.0.1\tlocalhost" in rows


@pytest.mark.parametrize("flags, named", [
    (("--dns", "192.0.2.300"), "'192.0.2.300' is not an IP address"),
    (("--dns", "resolver.example"), "'resolver.example' is not an IP address"),
    (("--add-host", "db"), "add-host: bad format 'db'"),
    (("--add-host", "db:10.0.0"), "invalid IP address '10.0.0' for host 'db'"),
    (("--dns-search", "bad_domain"), "'bad_domain' is not a valid domain"),
    (("--dns-option", "ndots:1 rotate"), "is not one resolver option"),
])
@pytest.mark.parametrize("command", ["run", "create"])
def test_bad_values_refused_and_nothing_created(daemon: Daemon, flags: tuple,
                                                named: str, command: str) -> None:
    before = daemon.ids("-a")
    proc = daemon.sbx(command, *flags, "busybox", "true")
    assert proc.returncode == 125, proc.err
    assert named in proc.err, proc.err
    assert daemon.ids("-a") == before


def test_daemon_dns_is_the_default_and_a_flag_overrides_it() -> None:
    with running("--dns", "192.0.2.53", "--dns", "192.0.2.54") as d:
        text = cat(d)
        assert "nameserver 192.0.2.53\nnameserver 192.0.2.54\n" in text
        assert "nameserver 8.8.8.8" not in text
        assert "192.0.2.53" not in cat(d, "--dns", "192.0.2.99")
        assert "nameserver" not in cat(d, "--network", "none")   # no network, no server
        assert inspect_plain(d)["Dns"] == []      # the record keeps the container's own


# ---------------------------------------------------------------- a real lookup

def _answer(query: bytes, records: dict[str, str]) -> bytes:
    """A reply to one DNS question: an A record for a known name, else no answer
    (NOERROR for our names' other types, NXDOMAIN for names we do not know)."""
    ident, _flags, qdcount = struct.unpack("!HHH", query[:6])
    pos, labels = 12, []
    while query[pos]:
        labels.append(query[pos + 1:pos + 1 + query[pos]].decode())
        pos += 1 + query[pos]
    qtype = struct.unpack("!H", query[pos + 1:pos + 3])[0]
    question = query[12:pos + 5]
    name = ".".join(labels).lower()
    known = name in records
    answers = b""
    if known and qtype == 1:                                 # A
        answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(records[name])
    rcode = 0 if known else 3
    header = struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, 1 if answers else 0, 0, 0)
    return header + question + answers


@pytest.fixture
def resolver(daemon: Daemon) -> Iterator[str]:
    """A one-name DNS server on the default bridge's gateway, port 53 (the bridge is
    ours; containers reach the host on it)."""
    address = gateway(daemon)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 53))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                query, peer = sock.recvfrom(512)
            except socket.timeout:
                continue
            try:
                sock.sendto(_answer(query, {"web.sbx-test.internal": "192.0.2.80"}), peer)
            except (IndexError, struct.error):
                pass                                         # not a question: ignore it

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield address
    finally:
        stop.set()
        thread.join()
        sock.close()


def test_nslookup_through_dns_flag(daemon: Daemon, resolver: str) -> None:
    proc = daemon.sbx("run", "--rm", "--dns", resolver, "busybox", "nslookup",
                      "-type=a", "web.sbx-test.internal")
    assert proc.returncode == 0, proc.out + proc.err
    assert f"Server:\t\t{resolver}" in proc.out, proc.out
    assert "Address: 192.0.2.80" in proc.out, proc.out
    missing = daemon.sbx("run", "--rm", "--dns", resolver, "busybox", "nslookup",
                         "-type=a", "nope.sbx-test.internal")
    assert missing.returncode != 0 and "NXDOMAIN" in missing.out + missing.err, missing.out


def test_an_edited_resolv_conf_survives_a_restart(daemon: Daemon) -> None:
    """Docker's rule: a start regenerates the file only when the container left it as
    written (a hash of what was written is kept beside it)."""
    daemon.sbx("create", "--name", "dns-edit", "busybox", "sh", "-c",
               "cat /etc/resolv.conf; echo nameserver 192.0.2.7 >> /etc/resolv.conf",
               check=True)
    try:
        first = daemon.sbx("start", "-a", "dns-edit", check=True).out
        assert first == expected("bridge")
        second = daemon.sbx("start", "-a", "dns-edit", check=True).out
        assert second == first + "nameserver 192.0.2.7\n"
    finally:
        daemon.sbx("rm", "-f", "dns-edit", check=True)
