"""IPAM and network bookkeeping without the kernel: subnet choice, pool validation, the
persisted allocator (never the same address twice, round-robin, survives a reopen)."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxd.errors import Conflict, InvalidArgument, LimitExceeded, NotFound, Unavailable
from sandboxd.ipam import (IPAM, Pool, _first_free, choose_subnet, default_bridge_candidates,
                           mac_for, user_network_candidates)
from sandboxd.network import NetworkService
from sandboxd.store import Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path)
    yield s
    s.close()


def test_pool_defaults_gateway_to_first_host():
    pool = Pool.parse("10.216.5.0/24")
    assert pool.gateway == IPv4Address("10.216.5.1") and pool.ip_range is None
    assert pool.size() == 253                       # 254 hosts minus the gateway


def test_pool_lists_every_problem():
    with pytest.raises(InvalidArgument) as e:
        Pool.parse("10.216.5.0/24", gateway="10.9.9.9", ip_range="10.217.0.0/25")
    text = str(e.value)
    assert "gateway: 10.9.9.9 is not a host address" in text
    assert "ip-range: 10.217.0.0/25 is not inside the subnet" in text
    with pytest.raises(InvalidArgument, match="host bits"):
        Pool.parse("10.216.5.7/24")
    with pytest.raises(InvalidArgument, match="too small"):
        Pool.parse("10.216.5.0/31")
    with pytest.raises(InvalidArgument, match="not an IPv4 address"):
        Pool.parse("10.216.5.0/24", gateway="nope")


def test_pool_range_without_room_is_refused():
    with pytest.raises(InvalidArgument, match="leaves no address"):
        Pool.parse("10.216.5.0/24", gateway="10.216.5.4", ip_range="10.216.5.4/32")


def test_pool_numbers_wrap_and_skip_gateway():
    pool = Pool.parse("10.216.5.0/29", gateway="10.216.5.3")   # hosts .1-.6
    taken: dict[int, str] = {}
    last = int(IPv4Address("10.216.5.4"))
    got = []
    while (last := _first_free(pool, last, taken)) is not None:
        got.append(str(IPv4Address(last)))
        taken[last] = "x"
    assert got == ["10.216.5.5", "10.216.5.6", "10.216.5.1", "10.216.5.2", "10.216.5.4"]


def _order(after: int | None) -> list[int]:
    """The /29 below's dynamic hosts (.1-.6 but the gateway .3) in the order they are
    looked at: from just after ``after`` (when it is one before .6), wrapping round."""
    hosts = [1, 2, 4, 5, 6]
    start = after + 1 if after is not None and 1 <= after < 6 else 1
    return [n for n in hosts if n >= start] + [n for n in hosts if n < start]


@pytest.mark.parametrize("after", [None, 0, 1, 2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("used", [(), (5,), (5, 6), (1, 2, 4, 5, 6), (1, 2, 4, 5)])
def test_allocation_takes_the_first_free_number_in_address_order(after, used):
    """The allocator takes the first free address after the last one given, wrapping
    round, never the gateway; None on a pool with nothing free."""
    pool = Pool.parse("10.216.5.0/29", gateway="10.216.5.3")   # hosts .1-.6
    base = int(IPv4Address("10.216.5.0"))
    taken = {base + n: "x" for n in used}
    last = None if after is None else base + after
    expected = next((base + n for n in _order(after) if n not in used), None)
    assert _first_free(pool, last, taken) == expected


def test_pool_static_address_checks():
    pool = Pool.parse("10.216.5.0/24")
    assert pool.check_static("10.216.5.77") == IPv4Address("10.216.5.77")
    with pytest.raises(Conflict, match="gateway"):
        pool.check_static("10.216.5.1")
    for bad in ("10.216.6.1", "10.216.5.0", "10.216.5.255", "x"):
        with pytest.raises(InvalidArgument):
            pool.check_static(bad)


def test_choose_subnet_avoids_routes_and_networks():
    taken = [IPv4Network("0.0.0.0/0"), IPv4Network("172.30.4.0/24"),
             IPv4Network("172.28.0.0/15")]
    # 172.30/16 overlaps a route, 172.29 and 172.28 the /15; the default route is no clash.
    assert choose_subnet(default_bridge_candidates(), taken) == IPv4Network("172.27.0.0/16")
    assert choose_subnet(user_network_candidates(), [IPv4Network("10.216.0.0/23")]) == \
        IPv4Network("10.216.2.0/24")
    with pytest.raises(Unavailable, match="--subnet"):
        choose_subnet([IPv4Network("10.0.0.0/24")], [IPv4Network("10.0.0.0/8")])


def test_candidate_lists_do_not_overlap():
    bridge = list(default_bridge_candidates())
    assert not any(u.overlaps(b) for u in user_network_candidates() for b in bridge)


def test_mac_for_is_dockers():
    assert mac_for("172.17.0.2") == "02:42:ac:11:00:02"


def test_allocate_round_robin_and_release():
    ipam = IPAM()
    pool = Pool.parse("10.216.9.0/29")               # .2-.6 for containers
    got = [str(ipam.allocate("n1", pool, f"c{i}")) for i in range(5)]
    assert got == [f"10.216.9.{i}" for i in range(2, 7)]
    with pytest.raises(LimitExceeded, match="no free address"):
        ipam.allocate("n1", pool, "c9")
    assert ipam.release("n1", "10.216.9.3")
    assert not ipam.release("n1", "10.216.9.3")      # twice: nothing to free
    assert str(ipam.allocate("n1", pool, "c10")) == "10.216.9.3"
    ipam.release("n1", "10.216.9.5")
    ipam.release("n1", "10.216.9.2")
    # The search goes on after the last one given (.3): .5 before the older hole .2.
    assert str(ipam.allocate("n1", pool, "c11")) == "10.216.9.5"


def test_static_conflict_and_other_networks_are_separate():
    ipam = IPAM()
    pool = Pool.parse("10.216.9.0/24")
    ipam.allocate("n1", pool, "a", "10.216.9.50")
    with pytest.raises(Conflict, match="Address already in use"):
        ipam.allocate("n1", pool, "b", "10.216.9.50")
    assert str(ipam.allocate("n2", pool, "b", "10.216.9.50")) == "10.216.9.50"


def test_reassign_and_release_all():
    ipam = IPAM()
    pool = Pool.parse("10.216.9.0/24")
    ip = ipam.allocate("n1", pool, "pool:x")
    ipam.reassign("n1", ip, "container")
    assert ipam.allocations("n1") == {("n1", str(ip)): "container"}
    with pytest.raises(Conflict):
        ipam.reassign("n1", "10.216.9.200", "container")
    ipam.allocate("n2", pool, "y")
    assert ipam.release_all() == 2 and ipam.allocations() == {}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=120))
def test_never_hands_out_an_address_twice(ops):
    ipam = IPAM()
    pool = Pool.parse("10.216.9.0/27", ip_range="10.216.9.0/28")
    held: list[IPv4Address] = []
    for allocate, pick in ops:
        if allocate:
            try:
                ip = ipam.allocate("n", pool, "o")
            except LimitExceeded:
                assert len(held) == pool.size()
                continue
            assert ip not in held and ip in pool.ip_range and ip != pool.gateway
            held.append(ip)
        elif held:
            assert ipam.release("n", held.pop(pick % len(held)))
    assert sorted(ipam.allocations("n")) == sorted(("n", str(ip)) for ip in held)


def test_service_refuses_bad_prefix(store, tmp_path):
    for bad in ("", "s", "SBX", "sbx-", "sbxabcdefg"):
        with pytest.raises(InvalidArgument, match="network prefix"):
            NetworkService(store, tmp_path, prefix=bad)


def test_networks_kept_in_memory_follow_their_table(store, tmp_path):
    """Lookups by id and name are served from memory after the first (several per
    start); a removed network is gone at once and one made again under its name is the
    new one, by name and by id prefix."""
    svc = NetworkService(store, tmp_path, prefix="sbxt")
    first = svc._insert("web", "bridge", bridge="sbxt-a", subnet="10.77.0.0/24")
    assert svc.get("web") is svc.get(first.id)
    assert svc.get("web").pool.subnet == IPv4Network("10.77.0.0/24")
    svc._delete(first)
    with pytest.raises(NotFound):
        svc.get("web")
    with pytest.raises(NotFound):
        svc.get(first.id)
    second = svc._insert("web", "bridge", bridge="sbxt-b", subnet="10.78.0.0/24")
    assert svc.get("web").id == second.id != first.id
    assert svc.get(second.id[:12]).pool.subnet == IPv4Network("10.78.0.0/24")


# ---------------------------------------------------------------- netfilter rule set

BRIDGES = [("sbx0", "172.17.0.0/16", False), ("sbx-abc", "10.216.0.0/24", False),
           ("sbx-int", "10.217.0.0/24", True)]


def test_isolation_rule_set_without_masquerade():
    from sandboxd.runner import masq
    text = masq.ruleset("sbx", BRIDGES, masq=False, uplinks=["eth0"])
    assert "*nat" not in text and "MASQUERADE" not in text
    assert text.splitlines() == [
        "*filter", ":SBX-ISOLATION - [0:0]",
        "-A SBX-ISOLATION -i sbx0 -o sbx0 -j ACCEPT",       # within the bridge
        "-A SBX-ISOLATION -i sbx0 -j DROP",                 # nothing else forwarded
        "-A SBX-ISOLATION -o sbx0 -j DROP",
        "-A SBX-ISOLATION -i sbx-abc -o sbx-abc -j ACCEPT",
        "-A SBX-ISOLATION -i sbx-abc -j DROP",
        "-A SBX-ISOLATION -o sbx-abc -j DROP",
        "-A SBX-ISOLATION -i sbx-int -o sbx-int -j ACCEPT",
        "-A SBX-ISOLATION -i sbx-int -j DROP",
        "-A SBX-ISOLATION -o sbx-int -j DROP",
        "COMMIT"]


def test_masquerade_rule_set_allows_only_the_uplink():
    from sandboxd.runner import masq
    text = masq.ruleset("sbx", BRIDGES, masq=True, uplinks=["eth0"])
    filt, nat = text.split("COMMIT\n")[:2]
    assert nat.splitlines() == [
        "*nat", ":SBX-POSTROUTING - [0:0]",
        "-A SBX-POSTROUTING -s 172.17.0.0/16 ! -o sbx0 -j MASQUERADE",
        "-A SBX-POSTROUTING -s 10.216.0.0/24 ! -o sbx-abc -j MASQUERADE"]   # not internal
    rules = filt.splitlines()
    assert rules[2:7] == [
        "-A SBX-ISOLATION -i sbx0 -o sbx0 -j ACCEPT",
        "-A SBX-ISOLATION -i sbx0 -o eth0 -j ACCEPT",       # out by the uplink only
        "-A SBX-ISOLATION -i eth0 -o sbx0 -m conntrack --ctstate RELATED,ESTABLISHED "
        "-j ACCEPT",                                        # and its replies
        "-A SBX-ISOLATION -i sbx0 -j DROP",
        "-A SBX-ISOLATION -o sbx0 -j DROP"]
    internal = [r for r in rules if "sbx-int" in r]         # no way out at all
    assert internal == ["-A SBX-ISOLATION -i sbx-int -o sbx-int -j ACCEPT",
                        "-A SBX-ISOLATION -i sbx-int -j DROP",
                        "-A SBX-ISOLATION -o sbx-int -j DROP"]
    assert masq.chains("sbxe12") == {"nat": ("SBXE12-POSTROUTING", "POSTROUTING"),
                                     "filter": ("SBXE12-ISOLATION", "FORWARD")}


def test_rule_set_without_networks_empties_the_chains():
    from sandboxd.runner import masq
    assert masq.ruleset("sbx", [], masq=True) == (
        "*filter\n:SBX-ISOLATION - [0:0]\nCOMMIT\n*nat\n:SBX-POSTROUTING - [0:0]\nCOMMIT\n")


def test_ip_masq_is_off_for_the_test_suite_and_on_by_default():
    import os
    from sandboxd.daemon import DaemonConfig, load_config
    assert DaemonConfig().ip_masq is True                  # Docker's default for users
    assert os.environ.get("SANDBOXD_IP_MASQ") == "0"       # tests/conftest.py
    assert load_config(ip_masq=False).ip_masq is False


# ---------------------------------------------------------------- published ports

def test_publish_all_adds_every_exposed_port_not_published():
    import dataclasses
    from sandboxd.flags import build_config
    from sandboxd.model import ContainerRecord, PortBinding
    from sandboxd.render import inspect_document
    from sandboxd.containers import _port_bindings
    config = build_config("img", "true", ports=["8080:80"], expose=["81/udp", "82"],
                          publish_all_ports=True)
    record = ContainerRecord(id="a" * 64, name="x", created=0.0, config=config)
    assert _port_bindings(record) == (PortBinding(80, "tcp", "", 8080),
                                      PortBinding(81, "udp"), PortBinding(82, "tcp"))
    host = dataclasses.replace(config, host=dataclasses.replace(
        config.host, network_mode="host", port_bindings=()))
    assert _port_bindings(dataclasses.replace(record, config=host)) == ()
    assert inspect_document(record)["HostConfig"]["PublishAllPorts"] is True


def test_port_proxy_refuses_duplicates_and_ports_of_other_containers():
    import asyncio
    import socket
    from sandboxd.model import PortBinding
    from sandboxd.ports import PortProxy

    async def scenario() -> None:
        proxy = PortProxy()
        with pytest.raises(Conflict, match="published twice"):
            proxy.check([PortBinding(80, host_port=18080),
                         PortBinding(81, host_ip="127.0.0.1", host_port=18080)])
        bound = await proxy.publish("c1", "127.0.0.1", [
            PortBinding(80, host_ip="127.0.0.1"), PortBinding(53, "udp", "127.0.0.1")])
        try:
            assert all(b.host_port > 0 for b in bound) and proxy.published("c1") == bound
            with pytest.raises(Conflict, match="container c1 publishes it"):
                proxy.check([PortBinding(80, host_port=bound[0].host_port)], "c2")
            # UDP and TCP are separate port spaces.
            proxy.check([PortBinding(80, "udp", "127.0.0.1", bound[0].host_port)], "c2")
        finally:
            proxy.release("c1")
        assert proxy.published("c1") == ()
        with socket.socket() as s:                       # the listener is gone
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", bound[0].host_port))
        await proxy.close()

    asyncio.run(scenario())


def test_teardowns_wait_behind_starts_and_refills_but_are_not_starved():
    """The network server's queue (network._Helper): starts first, then refills, then
    teardowns; but a teardown that MAX_PASSED_OVER requests went ahead of goes next,
    and then a start or refill again. Four clients running back to back once kept the
    server busy with starts and refills, no teardown ran, and the bridge filled up with
    the finished containers' ports (1024: "Exchange full")."""
    import asyncio

    from sandboxd.network import MAX_PASSED_OVER, REFILL, TEARDOWN, URGENT, _Helper
    from sandboxd.runner.channel import recv_message, seqpacket_pair

    async def scenario() -> list[str]:
        helper = _Helper()
        ours, server = seqpacket_pair()
        helper._sock = ours
        teardowns = 8
        calls = [asyncio.ensure_future(helper.call({"op": "start"}, URGENT))]
        await asyncio.sleep(0)                       # in flight: the queue builds behind it
        calls += [asyncio.ensure_future(helper.call({"op": f"teardown {i}"}, TEARDOWN))
                  for i in range(teardowns)]
        calls += [asyncio.ensure_future(helper.call({"op": f"refill {i}"}, REFILL))
                  for i in range(5)]
        await asyncio.sleep(0)
        sent = []
        for _ in calls:
            message, _fds = recv_message(server)
            sent.append(message["op"])
            helper._on_message({"rid": message["rid"], "ok": None})
            await asyncio.sleep(0)
        await asyncio.gather(*calls)
        ours.close()
        server.close()
        return sent

    sent = asyncio.run(scenario())
    assert MAX_PASSED_OVER == 2
    assert sent == ["start", "refill 0", "refill 1", "teardown 0", "refill 2", "teardown 1",
                    "refill 3", "teardown 2", "refill 4"] + [
        f"teardown {i}" for i in range(3, 8)]
