"""The embedded resolver of user networks (sandboxd/dns.py) and networked builds, through
the real ``sbx`` CLI, against an upstream this test runs.

No packet leaves this machine: the "host's resolver" is a dnslib server (UDP and TCP)
and the package index an HTTP server, both on an address of a bridge this module makes
(``upstream``), with no port and no route out. The daemon gets it as ``--dns``: its
embedded resolver forwards there from the host's namespace, and containers on the
default bridge reach it through their gateway (local delivery on the host).
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from harness import Daemon, inspect, running
from sandboxd import testing

UPSTREAM_NAME = "web.upstream.test"
UPSTREAM_ADDRESS = "192.0.2.80"        # only ever an answer: nothing is sent to it


@dataclass
class Upstream:
    address: str
    seen: list[tuple[str, str]] = field(default_factory=list)     # (protocol, name)

    def asked(self, name: str, protocol: str = "") -> bool:
        return any(n == name and protocol in ("", p) for p, n in self.seen)


class _Zone(BaseResolver):
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.records = {UPSTREAM_NAME: UPSTREAM_ADDRESS, "pkgs.test": upstream.address}

    def resolve(self, request, handler):
        name = str(request.q.qname).rstrip(".").lower()
        self.upstream.seen.append((handler.protocol, name))
        reply = request.reply()
        if name not in self.records:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.A:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(self.records[name]),
                                ttl=60))
        return reply


def _wheel(directory: Path) -> None:
    """A pure-Python wheel ``thepkg`` and a PEP 503 simple index for it."""
    name = "thepkg-1.0-py3-none-any.whl"
    files = {"thepkg/__init__.py": "VALUE = 'installed from pkgs.test'\n",
             "thepkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: thepkg\n"
                                              "Version: 1.0\n",
             "thepkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\n"
                                           "Root-Is-Purelib: true\nTag: py3-none-any\n"}
    files["thepkg-1.0.dist-info/RECORD"] = "".join(f"{f},,\n" for f in files) + \
        "thepkg-1.0.dist-info/RECORD,,\n"
    package = directory / "simple" / "thepkg"
    package.mkdir(parents=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    (package / name).write_bytes(buf.getvalue())
    (package / "index.html").write_text(f'<a href="{name}">{name}</a>\n')
    (directory / "simple" / "index.html").write_text('<a href="thepkg/">thepkg</a>\n')


def _apt_repository(directory: Path, work: Path) -> None:
    """A flat apt repository at ``directory``: one package ``thedeb`` (built by the
    host's dpkg-deb) and the ``Packages`` and unsigned ``Release`` files apt reads."""
    tree = work / "thedeb"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: thedeb\nVersion: 1.0\nArchitecture: all\nMaintainer: test <t@pkgs.test>\n"
        "Description: a package served by the test\n")
    (tree / "usr/share/thedeb").mkdir(parents=True)
    (tree / "usr/share/thedeb/hello").write_text("installed by apt from pkgs.test\n")
    directory.mkdir(parents=True)
    deb = directory / "thedeb_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)],
                   check=True, capture_output=True)
    data = deb.read_bytes()
    control = (tree / "DEBIAN" / "control").read_text()
    packages = (f"{control}Filename: ./{deb.name}\nSize: {len(data)}\n"
                f"SHA256: {hashlib.sha256(data).hexdigest()}\n\n").encode()
    (directory / "Packages").write_bytes(packages)
    (directory / "Release").write_text(
        "Origin: pkgs.test\nSuite: local\nCodename: local\n"
        "Date: Sun, 06 Dec 2026 00:00:00 UTC\nArchitectures: amd64 all\nSHA256:\n"
        f" {hashlib.sha256(packages).hexdigest()} {len(packages)} Packages\n")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    link = f"sbxtdns{os.getpid() % 10000}"
    address = f"198.18.{os.getpid() % 200 + 10}.1"         # benchmarking range, ours
    subprocess.run(["ip", "link", "add", link, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", link], check=True)
        subprocess.run(["ip", "link", "set", link, "up"], check=True)
        up = Upstream(address)
        quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data",
                          logf=lambda _text: None)
        servers = [DNSServer(_Zone(up), address=address, port=53, tcp=tcp, logger=quiet)
                   for tcp in (False, True)]
        for server in servers:
            server.start_thread()
        root = tmp_path_factory.mktemp("index")
        _wheel(root)
        _apt_repository(root / "apt", tmp_path_factory.mktemp("deb"))
        handler = functools.partial(_QuietHandler, directory=str(root))
        httpd = http.server.ThreadingHTTPServer((address, 80), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            yield up
        finally:
            httpd.shutdown()
            httpd.server_close()
            for server in servers:
                server.stop()
                server.server.server_close()
    finally:
        subprocess.run(["ip", "link", "del", link], check=False)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def dnsd(upstream: Upstream) -> Iterator[Daemon]:
    with running("--dns", upstream.address) as d:
        yield d


@pytest.fixture
def nets(dnsd: Daemon) -> Iterator[list[str]]:
    """Networks a test makes (removed afterwards, with their containers)."""
    made: list[str] = []
    yield made
    ids = dnsd.ids("-a")
    if ids:
        dnsd.sbx("rm", "-f", *ids, check=True)
    for name in made:
        dnsd.sbx("network", "rm", name, check=True)


def lookup(daemon: Daemon, network: str, name: str, *flags: str, qtype: str = "a"
           ) -> tuple[int, str]:
    proc = daemon.sbx("run", "--rm", "--network", network, *flags, "busybox", "nslookup",
                      f"-type={qtype}", name)
    return proc.returncode, proc.out + proc.err


def address_of(daemon: Daemon, container: str, network: str) -> str:
    return inspect(daemon, container)["NetworkSettings"]["Networks"][network]["IPAddress"]


def test_user_network_resolv_conf_names_the_embedded_resolver(dnsd: Daemon,
                                                              nets: list[str]) -> None:
    dnsd.sbx("network", "create", "dns-a", check=True)
    nets.append("dns-a")
    text = dnsd.sbx("run", "--rm", "--network", "dns-a", "--dns-search", "corp.example",
                    "busybox", "cat", "/etc/resolv.conf", check=True).out
    rows = [r for r in text.splitlines() if not r.startswith("#")]
    assert rows == ["nameserver 127.0.0.11", "search corp.example", "options ndots:0"]
    # --dns is where the resolver forwards to, not a nameserver line (as Docker)
    text = dnsd.sbx("run", "--rm", "--network", "dns-a", "--dns", "192.0.2.53",
                    "--dns-option", "ndots:2", "busybox", "cat", "/etc/resolv.conf",
                    check=True).out
    assert "nameserver 127.0.0.11\n" in text and "192.0.2.53" not in text
    assert "options ndots:2\n" in text


def test_names_aliases_and_short_ids_resolve_on_their_network_only(
        dnsd: Daemon, nets: list[str]) -> None:
    for name in ("dns-a", "dns-b"):
        dnsd.sbx("network", "create", name, check=True)
        nets.append(name)
    web = dnsd.sbx("run", "-d", "--name", "web", "--network", "dns-a", "--network-alias",
                   "db", "--network-alias", "cache.local", "busybox", "sleep", "300",
                   check=True).out.strip()
    dnsd.sbx("run", "-d", "--name", "other", "--network", "dns-b", "busybox", "sleep",
             "300", check=True)
    ip = address_of(dnsd, "web", "dns-a")
    for name in ("web", "WEB", "db", "cache.local", web[:12], "web.dns-a"):
        code, out = lookup(dnsd, "dns-a", name)
        assert code == 0 and f"Address: {ip}" in out, (name, out)
    # a container on another network is not known here, nor forwarded as ours
    code, out = lookup(dnsd, "dns-a", "other")
    assert code != 0 and "NXDOMAIN" in out, out
    code, out = lookup(dnsd, "dns-b", "web")
    assert code != 0 and "NXDOMAIN" in out, out
    # reverse: the address names the container on its network
    reverse = ".".join(reversed(ip.split("."))) + ".in-addr.arpa"
    code, out = lookup(dnsd, "dns-a", reverse, qtype="ptr")
    assert code == 0 and "web.dns-a" in out, out
    # connected to dns-b with an alias: now known there, under both names
    dnsd.sbx("network", "connect", "--alias", "extra", "dns-b", "web", check=True)
    ip_b = address_of(dnsd, "web", "dns-b")
    for name in ("web", "extra"):
        code, out = lookup(dnsd, "dns-b", name)
        assert code == 0 and f"Address: {ip_b}" in out, (name, out)
    # and gone once it stops
    dnsd.sbx("rm", "-f", "web", check=True)
    code, out = lookup(dnsd, "dns-a", "db")
    assert code != 0 and "NXDOMAIN" in out, out


@pytest.mark.parametrize("rm", [False, True])
def test_a_default_bridge_container_connected_to_a_user_network_gets_the_resolver(
        dnsd: Daemon, nets: list[str], rm: bool) -> None:
    """As Docker: its resolv.conf names 127.0.0.11 from then on, which answers the
    names there and forwards the rest."""
    dnsd.sbx("network", "create", "dns-a", check=True)
    nets.append("dns-a")
    dnsd.sbx("run", "-d", "--name", "web", "--network", "dns-a", "busybox", "sleep", "300",
             check=True)
    dnsd.sbx("run", "-d", *(("--rm",) if rm else ()), "--name", "plain", "busybox",
             "sleep", "300", check=True)
    assert "127.0.0.11" not in dnsd.sbx("exec", "plain", "cat", "/etc/resolv.conf",
                                        check=True).out
    dnsd.sbx("network", "connect", "dns-a", "plain", check=True)
    text = dnsd.sbx("exec", "plain", "cat", "/etc/resolv.conf", check=True).out
    assert "nameserver 127.0.0.11\n" in text, text
    for name, address in (("web", address_of(dnsd, "web", "dns-a")),
                          (UPSTREAM_NAME, UPSTREAM_ADDRESS)):
        out = dnsd.sbx("exec", "plain", "nslookup", "-type=a", name, check=True).out
        assert f"Address: {address}" in out, out
    # and containers on dns-a find it by name
    code, out = lookup(dnsd, "dns-a", "plain")
    assert code == 0 and f"Address: {address_of(dnsd, 'plain', 'dns-a')}" in out, out


def test_two_containers_with_one_alias_both_answer(dnsd: Daemon, nets: list[str]) -> None:
    dnsd.sbx("network", "create", "dns-a", check=True)
    nets.append("dns-a")
    for name in ("w1", "w2"):
        dnsd.sbx("run", "-d", "--name", name, "--network", "dns-a", "--network-alias",
                 "pool", "busybox", "sleep", "300", check=True)
    code, out = lookup(dnsd, "dns-a", "pool")
    assert code == 0, out
    for name in ("w1", "w2"):
        assert f"Address: {address_of(dnsd, name, 'dns-a')}" in out, out


def test_other_names_are_forwarded_to_the_daemons_dns(dnsd: Daemon, upstream: Upstream,
                                                      nets: list[str]) -> None:
    dnsd.sbx("network", "create", "dns-a", check=True)
    nets.append("dns-a")
    code, out = lookup(dnsd, "dns-a", UPSTREAM_NAME)
    assert code == 0 and f"Address: {UPSTREAM_ADDRESS}" in out, out
    assert "Server:\t\t127.0.0.11" in out
    assert upstream.asked(UPSTREAM_NAME, "udp")
    code, out = lookup(dnsd, "dns-a", "missing.upstream.test")
    assert code != 0 and "NXDOMAIN" in out, out
    assert upstream.asked("missing.upstream.test")
    # the default bridge has no embedded resolver: the daemon's --dns itself
    code, out = lookup(dnsd, "default", UPSTREAM_NAME)
    assert code == 0 and f"Server:\t\t{upstream.address}" in out, out


def test_questions_over_tcp_are_forwarded_over_tcp(dnsd: Daemon, upstream: Upstream,
                                                   nets: list[str]) -> None:
    """busybox asks over UDP only: a Python one-liner asks 127.0.0.11 over TCP."""
    dnsd.sbx("network", "create", "dns-a", check=True)
    nets.append("dns-a")
    dnsd.sbx("import", str(testing.python_tar()), "sbx-python", check=True)
    dnsd.sbx("run", "-d", "--name", "web", "--network", "dns-a", "busybox", "sleep",
             "300", check=True)
    script = (
        "import socket, struct, sys\n"
        "def ask(name):\n"
        "    q = struct.pack('!HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0) + b''.join(\n"
        "        bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\\0' + \\\n"
        "        struct.pack('!HH', 1, 1)\n"
        "    s = socket.create_connection(('127.0.0.11', 53), timeout=5)\n"
        "    s.sendall(struct.pack('!H', len(q)) + q)\n"
        "    n = struct.unpack('!H', s.recv(2))[0]\n"
        "    r = b''\n"
        "    while len(r) < n: r += s.recv(n - len(r))\n"
        "    ident, flags, _, answers = struct.unpack('!HHHH', r[:8])\n"
        "    print(name, hex(ident), flags & 15, answers, socket.inet_ntoa(r[-4:]))\n"
        "for name in sys.argv[1:]: ask(name)\n")
    out = dnsd.sbx("run", "--rm", "--network", "dns-a", "sbx-python", "python3", "-c",
                   script, "web", "tcp.upstream.test", UPSTREAM_NAME, check=True).out
    rows = out.splitlines()
    assert rows[0] == f"web 0x1234 0 1 {address_of(dnsd, 'web', 'dns-a')}", out
    assert rows[1].startswith("tcp.upstream.test 0x1234 3 0"), out        # NXDOMAIN
    assert rows[2] == f"{UPSTREAM_NAME} 0x1234 0 1 {UPSTREAM_ADDRESS}", out
    assert upstream.asked("tcp.upstream.test", "tcp")


def test_a_flood_of_garbage_and_questions_leaves_the_resolver_answering(
        dnsd: Daemon, upstream: Upstream, nets: list[str]) -> None:
    """A container sends 5000 random datagrams and 500 questions as fast as it can: the
    daemon drops what is not DNS, caps what is in flight, and keeps answering."""
    dnsd.sbx("network", "create", "dns-a", check=True)
    nets.append("dns-a")
    dnsd.sbx("import", str(testing.python_tar()), "sbx-python", check=True)
    dnsd.sbx("run", "-d", "--name", "web", "--network", "dns-a", "busybox", "sleep",
             "300", check=True)
    script = (
        "import os, socket, struct\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for i in range(5000): s.sendto(os.urandom(i % 300), ('127.0.0.11', 53))\n"
        "for i in range(500):\n"
        "    q = struct.pack('!HHHHHH', i, 0x0100, 1, 0, 0, 0) + b'\\x05flood' + \\\n"
        "        bytes([len(str(i))]) + str(i).encode() + b'\\x08upstream\\x04test\\0' + \\\n"
        "        struct.pack('!HH', 1, 1)\n"
        "    s.sendto(q, ('127.0.0.11', 53))\n"
        "s.settimeout(2)\n"
        "replies = 0\n"
        "try:\n"
        "    while True: s.recv(512); replies += 1\n"
        "except socket.timeout: pass\n"
        # On a loaded host the garbage may fill the socket's buffer until every one of
        # the 500 is dropped by the kernel: then ask one at a time until one is answered.
        "i = 500\n"
        "while not replies and i < 540:\n"
        "    s.sendto(q.replace(b'\\x03499', b'\\x03' + str(i).encode()), ('127.0.0.11', 53))\n"
        "    i += 1\n"
        "    try: s.recv(512); replies += 1\n"
        "    except socket.timeout: pass\n"
        "print(replies)\n")
    out = dnsd.sbx("run", "--rm", "--network", "dns-a", "sbx-python", "python3", "-c",
                   script, check=True, timeout=60).out
    # the kernel drops what overflows the socket's buffer, the daemon what is beyond
    # its cap: some of the 500 are answered, none of the garbage is
    assert 0 < int(out) <= 540, out
    assert any(name.startswith("flood.") for _, name in upstream.seen)   # forwarded
    code, out = lookup(dnsd, "dns-a", "web")
    assert code == 0 and f"Address: {address_of(dnsd, 'web', 'dns-a')}" in out, out
    code, out = lookup(dnsd, "dns-a", UPSTREAM_NAME)
    assert code == 0 and f"Address: {UPSTREAM_ADDRESS}" in out, out
    assert "Traceback" not in dnsd.log(1 << 20)


def test_container_dns_is_its_upstream_and_internal_networks_do_not_forward(
        dnsd: Daemon, nets: list[str]) -> None:
    dnsd.sbx("network", "create", "dns-a", check=True)
    dnsd.sbx("network", "create", "--internal", "dns-int", check=True)
    nets += ["dns-a", "dns-int"]
    # a loopback --dns is the container's own loopback, which the daemon does not ask
    # on the host's: nothing is forwarded (SERVFAIL), names still answer
    dnsd.sbx("run", "-d", "--name", "web", "--network", "dns-a", "busybox", "sleep",
             "300", check=True)
    code, out = lookup(dnsd, "dns-a", UPSTREAM_NAME, "--dns", "127.0.0.1")
    assert code != 0 and "SERVFAIL" in out, out
    assert lookup(dnsd, "dns-a", "web", "--dns", "127.0.0.1")[0] == 0
    dnsd.sbx("run", "-d", "--name", "inside", "--network", "dns-int", "busybox", "sleep",
             "300", check=True)
    code, out = lookup(dnsd, "dns-int", UPSTREAM_NAME)
    assert code != 0 and "SERVFAIL" in out, out
    code, out = lookup(dnsd, "dns-int", "inside")
    assert code == 0 and f"Address: {address_of(dnsd, 'inside', 'dns-int')}" in out, out


@pytest.mark.parametrize("network", ["default", "none", "host"])
def test_network_alias_needs_a_user_network(dnsd: Daemon, network: str) -> None:
    before = dnsd.ids("-a")
    proc = dnsd.sbx("run", "--network", network, "--network-alias", "x", "busybox", "true")
    assert proc.returncode == 125, proc.err
    assert "network-scoped alias is supported only for containers in user defined " \
           "networks" in proc.err
    assert dnsd.ids("-a") == before


def test_aliases_show_in_inspect(dnsd: Daemon, nets: list[str]) -> None:
    dnsd.sbx("network", "create", "dns-a", check=True)
    nets.append("dns-a")
    dnsd.sbx("run", "-d", "--name", "web", "--network", "dns-a", "--network-alias", "db",
             "busybox", "sleep", "300", check=True)
    doc = inspect(dnsd, "web")
    assert doc["NetworkSettings"]["Networks"]["dns-a"]["Aliases"] == ["web", "db"]
    assert doc["NetworkSettings"]["Networks"]["dns-a"]["DNSNames"] == [
        "web", "db", doc["Id"][:12]]
    assert doc["HostConfig"]["ShmSize"] == 64 << 20


# ---------------------------------------------------------------- networked builds

PIP = ("RUN python3 -m pip install --no-cache-dir --disable-pip-version-check "
       "--root-user-action=ignore --trusted-host pkgs.test "
       "--index-url http://pkgs.test/simple thepkg\n"
       "RUN python3 -c 'import thepkg; print(thepkg.VALUE)'\n")


def build(daemon: Daemon, context: Path, dockerfile: str, *flags: str
          ) -> subprocess.CompletedProcess:
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(dockerfile)
    return daemon.sbx("build", "--no-cache", *flags, str(context), timeout=180)


@pytest.fixture(params=["default bridge", "user network"])
def build_network(request: pytest.FixtureRequest, dnsd: Daemon, upstream: Upstream,
                  nets: list[str]) -> tuple[str, ...]:
    """``sbx build``'s flags for the network its RUN steps use: the default bridge (the
    daemon's --dns in resolv.conf) or a user network (the embedded resolver). Either
    way pkgs.test is found through the test's resolver, asked afresh."""
    upstream.seen.clear()
    if request.param == "default bridge":
        return ()
    dnsd.sbx("network", "create", "pkg-build", check=True)
    nets.append("pkg-build")
    return ("--network", "pkg-build")


def test_build_pip_installs_from_a_local_index_by_name(
        dnsd: Daemon, upstream: Upstream, tmp_path: Path,
        build_network: tuple[str, ...]) -> None:
    dnsd.sbx("import", str(testing.python_tar()), "sbx-python", check=True)
    proc = build(dnsd, tmp_path / "ctx", "FROM sbx-python\n" + PIP, *build_network,
                 "--iidfile", str(tmp_path / "iid"))
    assert proc.returncode == 0, proc.out + proc.err
    assert "Successfully installed thepkg-1.0" in proc.out, proc.out
    assert "installed from pkgs.test" in proc.out
    assert upstream.asked("pkgs.test")
    image_id = (tmp_path / "iid").read_text()
    assert image_id.startswith("sha256:") and image_id[7:19] in proc.out
    dnsd.sbx("rmi", image_id, check=True)


APT = ('RUN echo "deb [trusted=yes] http://pkgs.test/apt ./" > /etc/apt/sources.list '
       "&& apt-get update && apt-get install -y thedeb\n"
       "RUN cat /usr/share/thedeb/hello && dpkg-query -W thedeb\n")


def test_build_apt_get_installs_from_a_local_repository_by_name(
        dnsd: Daemon, upstream: Upstream, tmp_path: Path,
        build_network: tuple[str, ...]) -> None:
    """apt-get update and install in a RUN step (the host's apt and dpkg, in an image
    made here)."""
    dnsd.sbx("import", str(testing.apt_tar()), "sbx-apt", check=True)
    proc = build(dnsd, tmp_path / "ctx", "FROM sbx-apt\n" + APT, *build_network,
                 "-t", "with-deb")
    assert proc.returncode == 0, proc.out + proc.err
    assert "Setting up thedeb (1.0)" in proc.out, proc.out
    assert "installed by apt from pkgs.test" in proc.out
    assert "thedeb\t1.0" in proc.out
    assert upstream.asked("pkgs.test")
    ran = dnsd.sbx("run", "--rm", "with-deb", "dpkg-query", "-W", "-f", "${Status}", "thedeb")
    assert ran.out == "install ok installed", ran.out + ran.err
    dnsd.sbx("rmi", "with-deb", check=True)


def test_build_network_none_cannot_resolve(dnsd: Daemon, tmp_path: Path) -> None:
    proc = build(dnsd, tmp_path / "ctx", f"FROM busybox\nRUN nslookup {UPSTREAM_NAME}\n",
                 "--network", "none")
    assert proc.returncode != 0
    assert "returned a non-zero code" in proc.err, proc.err


def test_build_flags_reach_the_run_step(dnsd: Daemon, tmp_path: Path) -> None:
    dockerfile = ("FROM busybox\nARG WHO=nobody\n"
                  "RUN echo who=$WHO; grep db /etc/hosts; ulimit -n; "
                  "df -k /dev/shm | tail -1; cat /proc/self/net/route | wc -l\n")
    proc = build(dnsd, tmp_path / "ctx", dockerfile, "--build-arg", "WHO=builder",
                 "--add-host", "db:192.0.2.5", "--ulimit", "nofile=333:444",
                 "--shm-size", "96m", "--cache-from", "busybox", "--cache-from",
                 "not-here:1")
    assert proc.returncode == 0, proc.out + proc.err
    out = proc.out
    assert "who=builder\n" in out and "192.0.2.5\tdb\n" in out and "\n333\n" in out, out
    assert " 98304 " in out, out                                 # 96m in KiB
    assert "--cache-from not-here:1: no such image here" in out, out
    # the default bridge: a route table with a default route and the subnet's
    assert "\n3\n" in out, out
    image_id = out.split("Successfully built ")[1].split()[0]
    dnsd.sbx("rmi", image_id, check=True)


def test_run_shm_size(dnsd: Daemon) -> None:
    out = dnsd.sbx("run", "--rm", "--shm-size", "80m", "busybox", "sh", "-c",
                   "df -k /dev/shm | tail -1; grep ' /dev/shm ' /proc/mounts | tail -1",
                   check=True).out
    assert " 81920 " in out and "noexec" in out, out
    proc = dnsd.sbx("run", "--rm", "--shm-size", "lots", "busybox", "true")
    assert proc.returncode == 125 and "shm-size" in proc.err, proc.err
