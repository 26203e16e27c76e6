"""The container's resolv.conf from the host's (sandboxd/resolvconf.py, Docker's rules),
the --dns/--add-host flags' parsing and checks, and the daemon's --dns setting."""
from __future__ import annotations

import json

import pytest

from sandboxd import resolvconf as rc
from sandboxd.daemonconfig import load_config
from sandboxd.errors import InvalidArgument
from sandboxd.flags import build_config, parse_extra_host

HOST = """# a comment
; another
nameserver 127.0.0.53
nameserver 10.0.0.2
nameserver ::1
nameserver fd00::53
nameserver not-an-address
domain old.example
search corp.example lab.example
options edns0
options trust-ad
sortlist 10.0.0.0/255.0.0.0
"""


def servers(text: str) -> list[str]:
    return [line.split()[1] for line in text.splitlines() if line.startswith("nameserver")]


def lines(text: str, key: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(key)]


def test_parse_follows_dockers_reading() -> None:
    parsed = rc.parse(HOST)
    assert parsed.nameservers == ("127.0.0.53", "10.0.0.2", "::1", "fd00::53")
    assert parsed.search == ("corp.example", "lab.example")          # the last one wins
    assert parsed.options == ("edns0", "trust-ad")                   # they accumulate
    assert parsed.other == ("sortlist 10.0.0.0/255.0.0.0",)


def test_bridge_drops_loopback_and_ipv6_servers_keeps_the_rest() -> None:
    text = rc.container_text(HOST, "bridge")
    assert text.startswith(rc.HEADER)
    assert servers(text) == ["10.0.0.2"]
    assert lines(text, "search") == ["search corp.example lab.example"]
    assert lines(text, "options") == ["options edns0 trust-ad"]
    assert "sortlist 10.0.0.0/255.0.0.0" in text.splitlines()
    assert servers(rc.container_text(HOST, "bridge", ipv6=True)) == ["10.0.0.2", "fd00::53"]


@pytest.mark.parametrize("host", [
    "nameserver 127.0.0.1\n", "nameserver 127.0.0.53\nnameserver ::1\n",
    "nameserver 127.1.2.3\nnameserver fd00::1\n", "", "# nothing\n"])
def test_bridge_falls_back_to_googles_servers(host: str) -> None:
    assert servers(rc.container_text(host, "bridge")) == ["8.8.8.8", "8.8.4.4"]
    assert servers(rc.container_text("nameserver ::1\n", "bridge", ipv6=True)) == [
        "8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "2001:4860:4860::8844"]


def test_host_network_keeps_the_hosts_file() -> None:
    assert rc.container_text(HOST, "host") == HOST
    # with an override the file is rebuilt, and loopback servers stay (same namespace)
    text = rc.container_text(HOST, "host", dns_options=["ndots:2"])
    assert servers(text) == ["127.0.0.53", "10.0.0.2", "::1", "fd00::53"]
    assert lines(text, "options") == ["options ndots:2"]


def test_none_network_keeps_search_and_options_but_no_server() -> None:
    text = rc.container_text(HOST, "none")
    assert servers(text) == []
    assert lines(text, "search") == ["search corp.example lab.example"]
    assert lines(text, "options") == ["options edns0 trust-ad"]
    assert servers(rc.container_text(HOST, "none", dns=["127.0.0.1"])) == ["127.0.0.1"]


def test_overrides_replace_each_part_on_its_own() -> None:
    text = rc.container_text(HOST, "bridge", dns=["127.0.0.1", "192.0.2.1"],
                             dns_search=["a.example", "."], dns_options=["ndots:3"])
    assert servers(text) == ["127.0.0.1", "192.0.2.1"]       # --dns is kept as given
    assert lines(text, "search") == ["search a.example"]
    assert lines(text, "options") == ["options ndots:3"]
    assert lines(rc.container_text(HOST, "bridge", dns_search=["."]), "search") == []
    assert servers(rc.container_text(HOST, "bridge", dns_search=["x.example"])) == [
        "10.0.0.2"]


def test_systemd_resolved_stub_reads_its_upstream_file() -> None:
    stub = "nameserver 127.0.0.53\noptions edns0\n"
    assert rc.host_path(stub, systemd_exists=True) == rc.SYSTEMD
    assert rc.host_path(stub, systemd_exists=False) == rc.ETC
    assert rc.host_path("nameserver 127.0.0.53\nnameserver 10.0.0.1\n", True) == rc.ETC
    assert rc.host_path("nameserver 10.0.0.1\n", True) == rc.ETC


@pytest.mark.parametrize("text, expected", [
    ("db:10.0.0.5", "db:10.0.0.5"), ("db=10.0.0.5", "db:10.0.0.5"),
    ("v6:::1", "v6:::1"), ("v6=[fd00::1]", "v6:fd00::1"),
    ("gw:host-gateway", "gw:host-gateway")])
def test_add_host_forms(text: str, expected: str) -> None:
    assert parse_extra_host(text) == expected


@pytest.mark.parametrize("options, named", [
    ({"dns": ["10.0.0.300"]}, "host.dns[0]: '10.0.0.300' is not an IP address"),
    ({"dns": "resolver"}, "host.dns[0]: 'resolver'"),
    ({"extra_hosts": ["db"]}, "add-host: bad format 'db'"),
    ({"extra_hosts": [":10.0.0.1"]}, "add-host: bad format ':10.0.0.1'"),
    ({"extra_hosts": ["db:10.0.0"]}, "invalid IP address '10.0.0' for host 'db'"),
    ({"extra_hosts": {"my host": "10.0.0.1"}}, "host.extra_hosts[0]"),
    ({"dns_search": ["bad_domain"]}, "host.dns_search[0]: 'bad_domain'"),
    ({"dns_search": ["x\nnameserver 1.1.1.1"]}, "host.dns_search[0]"),
    ({"dns_opt": ["ndots:1\nnameserver 1.1.1.1"]}, "host.dns_options[0]"),
    ({"network_mode": "container:web", "dns": ["10.0.0.1"]},
     "conflicting options: dns and the network mode container:web"),
    ({"network_mode": "container:web", "extra_hosts": ["a:10.0.0.1"]},
     "conflicting options: custom host-to-IP mapping"),
])
def test_bad_values_are_refused_by_name(options: dict, named: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        build_config("busybox", **options)
    assert named in err.value.message


def test_flags_reach_the_model() -> None:
    h = build_config("busybox", dns=["10.0.0.1", "fd00::1"], dns_search="corp.example",
                     dns_opt=["ndots:2"], extra_hosts={"db": "10.0.0.5"}).host
    assert h.dns == ("10.0.0.1", "fd00::1") and h.dns_search == ("corp.example",)
    assert h.dns_options == ("ndots:2",) and h.extra_hosts == ("db:10.0.0.5",)


def test_daemon_dns_from_flags_and_config_file(tmp_path) -> None:
    assert load_config().dns == ()
    assert load_config(dns=("192.0.2.1",)).dns == ("192.0.2.1",)
    config = tmp_path / "daemon.json"
    config.write_text(json.dumps({"dns": ["192.0.2.2", "fd00::2"]}))
    assert load_config(str(config)).dns == ("192.0.2.2", "fd00::2")
    assert load_config(str(config), dns=("192.0.2.3",)).dns == ("192.0.2.3",)
    with pytest.raises(InvalidArgument, match="dns: 'nope' is not an IP address"):
        load_config(dns=("nope",))
    config.write_text(json.dumps({"dns": "192.0.2.2"}))
    with pytest.raises(InvalidArgument, match="dns"):
        load_config(str(config))


def test_upstreams_of_the_embedded_resolver() -> None:
    host = "nameserver 127.0.0.53\nnameserver 10.0.0.2\n"
    assert rc.upstreams(host) == ("127.0.0.53", "10.0.0.2")     # asked from the host
    assert rc.upstreams(host, (), ("192.0.2.1",)) == ("192.0.2.1",)
    assert rc.upstreams(host, ("192.0.2.9", "127.0.0.1"), ("192.0.2.1",)) == \
        ("192.0.2.9",)
    assert rc.upstreams(host, ("127.0.0.1", "::1")) == ()       # the container's
    assert rc.upstreams("") == rc.DEFAULT_IPV4


def test_user_network_file_names_the_embedded_resolver() -> None:
    host = "nameserver 10.0.0.2\nsearch lan\noptions edns0\n"
    assert rc.container_text(host, "user").endswith(
        "nameserver 127.0.0.11\nsearch lan\noptions edns0 ndots:0\n")
    text = rc.container_text(host, "user", dns=("192.0.2.1",),
                                     dns_options=("ndots:3",))
    assert text.endswith("nameserver 127.0.0.11\nsearch lan\noptions ndots:3\n")


def test_host_resolv_conf_is_read_again_when_it_changes(tmp_path) -> None:
    """The daemon reads the host's file at every start through a cache keyed by inode,
    size and mtime: an edit, a replacement by rename and a removal are all seen."""
    import os
    from sandboxd.containers import _read_host_file
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 10.0.0.1\n")
    assert _read_host_file(str(path)) == "nameserver 10.0.0.1\n"
    path.write_text("nameserver 10.0.0.22\n")              # in place, another size
    assert _read_host_file(str(path)) == "nameserver 10.0.0.22\n"
    new = tmp_path / "resolv.conf.new"
    new.write_text("nameserver 10.0.0.33\n")               # same size, a new inode
    os.rename(new, path)
    assert _read_host_file(str(path)) == "nameserver 10.0.0.33\n"
    path.unlink()
    assert _read_host_file(str(path)) == ""
    assert _read_host_file(str(path), None) is None
