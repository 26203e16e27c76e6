"""The embedded resolver's answers (sandboxd/dns.py) for a fixed scope: local names,
PTR, other types, refusals and garbage. Forwarding is exercised against a real
upstream in tests/integration/test_embedded_dns.py."""
from __future__ import annotations

import asyncio

from dnslib import RCODE, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxd.dns import TTL, Resolver, Scope

SCOPE = Scope(names={"web": ["10.1.0.2"], "web.net": ["10.1.0.2"],
                     "pool": ["10.1.0.3", "10.1.0.4"]},
              reverse={"10.1.0.2": "web.net"}, upstreams=())


def ask(data: bytes, scope: Scope | None = SCOPE) -> bytes | None:
    return asyncio.run(Resolver(lambda key: scope).answer("ns", data, tcp=False))


def reply(name: str, qtype: str = "A") -> DNSRecord:
    data = ask(DNSRecord.question(name, qtype).pack())
    assert data is not None
    return DNSRecord.parse(data)


def test_a_record_of_a_name_case_insensitive_with_our_ttl() -> None:
    r = reply("WEB.")
    assert r.header.rcode == RCODE.NOERROR and r.header.aa
    assert [(str(a.rdata), a.ttl) for a in r.rr] == [("10.1.0.2", TTL)]
    assert str(r.rr[0].rname) == "WEB."             # the question's spelling


def test_every_address_of_a_shared_alias() -> None:
    assert sorted(str(a.rdata) for a in reply("pool").rr) == ["10.1.0.3", "10.1.0.4"]


def test_other_types_of_our_names_have_no_answer() -> None:
    for qtype in ("AAAA", "MX", "TXT"):
        r = reply("web", qtype)
        assert r.header.rcode == RCODE.NOERROR and not r.rr, qtype


def test_ptr_of_a_member_address() -> None:
    r = reply("2.0.1.10.in-addr.arpa", "PTR")
    assert [str(a.rdata) for a in r.rr] == ["web.net."]
    assert reply("9.0.1.10.in-addr.arpa", "PTR").header.rcode == RCODE.SERVFAIL


def test_no_upstream_means_servfail() -> None:
    r = reply("example.org")
    assert r.header.rcode == RCODE.SERVFAIL and not r.rr


def test_not_a_question() -> None:
    query = DNSRecord.question("web")
    assert ask(query.reply().pack()) is None            # a response: dropped
    query.header.opcode = 2                             # STATUS
    assert DNSRecord.parse(ask(query.pack())).header.rcode == RCODE.NOTIMP
    assert ask(DNSRecord.question("web").pack(), scope=None) is None   # not served


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_never_raises(data: bytes) -> None:
    result = ask(data)
    assert result is None or isinstance(result, bytes)
