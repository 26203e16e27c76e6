"""Networks on the real kernel: prepared namespaces on our own bridges, entered with
``nsenter --net=<file>`` and busybox. Traffic goes only to addresses of our own bridges
and namespaces. Each test's service has this run's link prefix (``sbxt<hex>``) and its
own root, and the fixture checks that no link, namespace file or mount of it is left.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sandboxd.errors import Conflict, InvalidArgument
from sandboxd.ipam import mac_for
from sandboxd.network import NetworkService
from sandboxd.store import Store

PREFIX = f"sbxt{os.getpid() % 0xFFFF:04x}"


def our_links(prefix: str = PREFIX) -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                         check=True).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return [n for n in names if n.startswith(prefix)]


def nsfs_mounts(root: Path) -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(str(root))]


class Net:
    """A NetworkService on its own event loop, driven from a plain test."""

    def __init__(self, root: Path, pool_size: int = 2):
        self.root = root
        self.loop = asyncio.new_event_loop()
        self.store = Store(root)
        self.svc = NetworkService(self.store, root, prefix=PREFIX, pool_size=pool_size)
        self.run(self.svc.startup())

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def release(self, container_id: str) -> None:
        async def release() -> None:        # the service schedules its teardown on the loop
            self.svc.release(container_id)
        self.run(release())

    def close(self) -> None:
        try:
            self.run(self.svc.shutdown())
        finally:
            self.loop.close()
            self.store.close()


@pytest.fixture
def net(tmp_path):
    n = Net(tmp_path)
    yield n
    n.close()
    assert our_links() == [], "links left behind"
    assert list((tmp_path / "netns").iterdir()) == [], "namespace files left behind"
    assert nsfs_mounts(tmp_path) == [], "namespace mounts left behind"


def in_ns(path: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net={path}", *cmd], capture_output=True,
                          text=True, timeout=20, **kw)


def ping(path: str, ip: str) -> bool:
    return in_ns(path, "busybox", "ping", "-c1", "-W1", ip).returncode == 0


def test_bridge_endpoints_reach_each_other(net):
    a = net.run(net.svc.attach("c-a"))
    b = net.run(net.svc.attach("c-b"))
    bridge = net.svc.get("bridge")
    assert bridge.bridge == f"{PREFIX}0" and bridge.driver == "bridge"
    for att in (a, b):
        ep = att.endpoint
        assert ep.network == "bridge" and ep.gateway == bridge.gateway
        assert ep.prefix_len == int(bridge.subnet.split("/")[1])
        assert ep.mac_address == mac_for(ep.ip_address)
        assert att.sandbox_key == att.netns and Path(att.netns).parent == net.root / "netns"
    assert a.endpoint.ip_address != b.endpoint.ip_address
    addr = in_ns(a.netns, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
    assert f"{a.endpoint.ip_address}/{a.endpoint.prefix_len}" in addr
    link = in_ns(a.netns, "ip", "-o", "link", "show", "eth0").stdout
    assert a.endpoint.mac_address in link and ",UP" in link
    assert f"default via {bridge.gateway} dev eth0" in in_ns(a.netns, "ip", "route").stdout
    assert "UP" in in_ns(a.netns, "ip", "-o", "link", "show", "lo").stdout
    assert ping(a.netns, b.endpoint.ip_address) and ping(b.netns, a.endpoint.ip_address)
    assert ping(a.netns, bridge.gateway)
    assert set(net.svc.endpoints("bridge")) == {"c-a", "c-b"}
    net.release("c-a")
    net.release("c-b")
    net.release("c-b")                               # twice: nothing more to do
    net.run(net.svc.settle())
    assert not os.path.exists(a.netns) and net.svc.endpoints("bridge") == {}


def test_networks_are_isolated(net):
    n1 = net.run(net.svc.create("iso-one"))
    n2 = net.run(net.svc.create("iso-two"))
    assert n1.bridge.startswith(f"{PREFIX}-") and len(n1.bridge) <= 15
    assert n1.subnet != n2.subnet and n1.subnet != net.svc.get("bridge").subnet
    with pytest.raises(Conflict, match="already exists"):
        net.run(net.svc.create("iso-one"))
    a = net.run(net.svc.attach("c-a"))                   # default bridge
    b = net.run(net.svc.attach("c-b", "iso-one"))
    c = net.run(net.svc.attach("c-c", "iso-one"))
    d = net.run(net.svc.attach("c-d", n2.id[:12]))       # by id prefix
    ip = {k: v.endpoint.ip_address for k, v in dict(a=a, b=b, c=c, d=d).items()}
    assert ping(b.netns, ip["c"])
    # Each "no" waits out its timeout: they wait together.
    with ThreadPoolExecutor() as pool:
        crossed = list(pool.map(ping, (a.netns, b.netns, d.netns, b.netns),
                                (ip["b"], ip["a"], ip["b"], ip["d"])))
    assert crossed == [False] * 4
    # TCP: a listener in c answers b (same network) and not a or d.
    server = subprocess.Popen(["nsenter", f"--net={c.netns}", "busybox", "nc", "-ll", "-p",
                               "7777", "-e", "echo", "pong"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while "pong" not in (got := in_ns(b.netns, "busybox", "nc", "-w", "2", ip["c"],
                                          "7777", input="").stdout):
            assert time.monotonic() < deadline, f"no answer on the same network: {got!r}"
            time.sleep(0.05)
        with ThreadPoolExecutor() as pool:
            far = list(pool.map(lambda other: in_ns(other.netns, "busybox", "nc", "-w", "1",
                                                    ip["c"], "7777", input=""), (a, d)))
        assert all("pong" not in f.stdout and f.returncode != 0 for f in far), far
    finally:
        server.kill()
        server.wait()
    with pytest.raises(Conflict, match="active endpoints"):
        net.run(net.svc.remove("iso-one"))
    for cid in ("c-a", "c-b", "c-c", "c-d"):
        net.release(cid)
    net.run(net.svc.remove("iso-one"))
    net.run(net.svc.remove(n2.name))
    assert [n.name for n in net.svc.list()] == ["bridge", "host", "none"]
    assert net.svc.ipam.allocations(n1.id) == {}


def test_connect_plugs_a_second_veth_and_release_removes_everything(net):
    other = net.run(net.svc.create("plug-net"))
    a = net.run(net.svc.attach("c-a"))                       # default bridge
    b = net.run(net.svc.attach("c-b", "plug-net"))
    b_ip = b.endpoint.ip_address
    assert not ping(a.netns, b_ip)
    ep = net.run(net.svc.connect("c-a", "plug-net", aliases=("al",)))
    assert ep.network == "plug-net" and ep.gateway == "" and ep.aliases == ("al",)
    addr = in_ns(a.netns, "ip", "-4", "-o", "addr", "show", "dev", "eth1").stdout
    assert f"{ep.ip_address}/{ep.prefix_len}" in addr
    assert ep.mac_address in in_ns(a.netns, "ip", "-o", "link", "show", "eth1").stdout
    bridge_gw = net.svc.get("bridge").gateway
    assert f"default via {bridge_gw} dev eth0" in in_ns(a.netns, "ip", "route").stdout
    assert ping(a.netns, b_ip) and ping(b.netns, ep.ip_address)
    assert set(net.svc.endpoints("plug-net")) == {"c-a", "c-b"}
    assert [n.name for n in net.svc.networks_of("c-a")] == ["bridge", "plug-net"]
    with pytest.raises(Conflict, match="already exists"):
        net.run(net.svc.connect("c-a", "plug-net"))
    with pytest.raises(InvalidArgument, match="user defined networks only"):
        net.run(net.svc.connect("c-b", "bridge", ip="172.17.0.9"))
    # Out and in again: the veth goes at once, the address is free for a static connect.
    net.run(net.svc.disconnect("c-a", "plug-net"))
    assert in_ns(a.netns, "ip", "link", "show", "eth1").returncode != 0
    assert not ping(a.netns, b_ip)
    again = net.run(net.svc.connect("c-a", "plug-net", ip=ep.ip_address))
    assert again.ip_address == ep.ip_address
    # The first network unplugged: the namespace stays with eth1 alone.
    net.run(net.svc.disconnect("c-a", "bridge"))
    links = in_ns(a.netns, "ip", "-o", "link").stdout
    assert "eth0" not in links and "eth1" in links and ping(a.netns, b_ip)
    net.release("c-a")
    net.release("c-b")
    net.run(net.svc.settle())
    assert not os.path.exists(a.netns)
    owners = net.svc.ipam.allocations(other.id).values()
    assert owners and all(o.startswith("pool:") for o in owners)    # the pool's alone
    pooled = net.svc.pool_size
    assert len(our_links()) == 2 + 2 * pooled          # two bridges and their pools
    net.run(net.svc.remove("plug-net"))


def test_released_namespace_frees_its_address_only_once_its_veth_is_gone(net):
    """A released namespace goes lazily (the kernel deletes its veth with it); one that
    something still holds (a process of another container sharing it) keeps its veth
    and its address until DYING_PATIENCE, then the veth is deleted and the address freed."""
    from sandboxd.network import DYING_PATIENCE
    bridge = net.svc.get("bridge")
    gone = net.run(net.svc.attach("c-gone"))
    held = net.run(net.svc.attach("c-held"))
    held_veth = net.svc._attached["c-held"][bridge.id].prepared.veth
    holder = subprocess.Popen(["nsenter", f"--net={held.netns}", "sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while os.stat(f"/proc/{holder.pid}/ns/net").st_ino != os.stat(held.netns).st_ino:
            assert time.monotonic() < deadline, "nsenter did not enter the namespace"
            time.sleep(0.01)
        began = time.monotonic()
        net.release("c-gone")
        net.release("c-held")
        net.run(asyncio.sleep(0.5))
        owners = {a: o for (_n, a), o in net.svc.ipam.allocations(bridge.id).items()}
        assert gone.endpoint.ip_address not in owners          # its veth went with it
        assert owners[held.endpoint.ip_address] == "c-held"      # still on the bridge
        assert held_veth in our_links()
        net.run(net.svc.settle())
        assert time.monotonic() - began >= DYING_PATIENCE
        assert held_veth not in our_links()
        assert (bridge.id, held.endpoint.ip_address) not in net.svc.ipam.allocations(bridge.id)
        inside = subprocess.run(["nsenter", "-t", str(holder.pid), "-n", "ip", "-o", "link"],
                                capture_output=True, text=True, check=True).stdout
        assert "eth0" not in inside
    finally:
        holder.kill()
        holder.wait()


def test_rtnl_requests_report_the_kernels_answer():
    """The network server's own rtnetlink requests (read-only or refused here, on the
    host): a lookup by name, and the kernel's errno for a refused request."""
    import errno

    from sandboxd.runner.rtnl import Rtnl
    rtnl = Rtnl()
    try:
        assert rtnl.link_index("lo") == 1
        with pytest.raises(OSError) as missing:
            rtnl.link_index(f"{PREFIX}none")
        assert missing.value.errno == errno.ENODEV
        with pytest.raises(OSError) as taken:              # NLM_F_EXCL: nothing changes
            rtnl.add_address(1, "127.0.0.1", 8)
        assert taken.value.errno == errno.EEXIST
    finally:
        rtnl.close()


def test_none_has_only_loopback_and_host_is_the_host(net):
    att = net.run(net.svc.attach("c-none", "none"))
    links = in_ns(att.netns, "ip", "-o", "link").stdout.splitlines()
    assert len(links) == 1 and links[0].split(":")[1].strip() == "lo" and "UP" in links[0]
    assert att.endpoint.network == "none" and att.endpoint.ip_address == ""
    assert ping(att.netns, "127.0.0.1")
    host = net.run(net.svc.attach("c-host", "host"))
    assert host.netns == "host" and host.sandbox_key == ""
    with pytest.raises(Conflict, match="pre-defined"):
        net.run(net.svc.remove("none"))
    net.release("c-none")


def test_internal_network_and_static_addresses(net):
    internal = net.run(net.svc.create("inner", subnet="10.219.251.0/24",
                                      ip_range="10.219.251.128/25", internal=True))
    att = net.run(net.svc.attach("c-in", "inner"))
    assert att.endpoint.ip_address.startswith("10.219.251.")
    assert int(att.endpoint.ip_address.rsplit(".", 1)[1]) >= 128       # from the range
    assert "default" not in in_ns(att.netns, "ip", "route").stdout
    static = net.run(net.svc.attach("c-static", "inner", ip="10.219.251.9",
                                    aliases=("db",)))
    assert static.endpoint.ip_address == "10.219.251.9" and static.endpoint.aliases == ("db",)
    assert "10.219.251.9/24" in in_ns(static.netns, "ip", "-4", "-o", "addr").stdout
    assert ping(static.netns, att.endpoint.ip_address)
    with pytest.raises(Conflict, match="Address already in use"):
        net.run(net.svc.attach("c-dup", "inner", ip="10.219.251.9"))
    with pytest.raises(InvalidArgument, match="user defined networks only"):
        net.run(net.svc.attach("c-dup", "bridge", ip="172.30.0.50"))
    with pytest.raises(Conflict, match="already attached"):
        net.run(net.svc.attach("c-in", "bridge"))
    with pytest.raises(Conflict, match="overlaps"):
        net.run(net.svc.create("clash", subnet="10.219.251.0/25"))
    net.release("c-static")
    net.release("c-in")
    net.run(net.svc.settle())
    owners = set(net.svc.ipam.allocations(internal.id).values())
    assert owners == {f"pool:{p.name}" for p in net.svc._pools[internal.id]}
    net.run(net.svc.remove("inner"))


def test_pool_serves_many_cycles_without_leaks(net):
    bridge = net.svc.get("bridge")
    seen = set()
    for i in range(100):
        a = net.run(net.svc.attach(f"cyc-{i}"))
        live = {ep.ip_address for ep in net.svc.endpoints("bridge").values()}
        assert len(live) == len(net.svc.endpoints("bridge"))         # no duplicate
        seen.add(a.endpoint.ip_address)
        if i % 2:                                   # two at a time, then both go
            net.release(f"cyc-{i - 1}")
            net.release(f"cyc-{i}")
    net.run(net.svc.settle())
    assert len(seen) > 50                           # round-robin, not the same few
    pooled = net.svc.pool_size
    # Left: the bridge and the pooled veths; the pooled namespaces (bridge and none).
    assert len(our_links()) == 1 + pooled
    assert len(list((net.root / "netns").iterdir())) == 2 * pooled
    owners = net.svc.ipam.allocations(bridge.id).values()
    assert len(owners) == pooled and all(o.startswith("pool:") for o in owners)


def test_startup_removes_what_a_dead_server_left(tmp_path):
    first = Net(tmp_path)
    try:
        first.run(first.svc.attach("c-a"))
        first.run(first.svc.create("left-over"))
        first.run(first.svc.settle())
        os.kill(first.svc._helper._proc.pid, signal.SIGKILL)   # no cleanup of its own
        first.svc._helper._proc.wait()
        assert len(our_links()) > 2 and list((tmp_path / "netns").iterdir())
    finally:
        first.close()                          # its server is gone: nothing removed
    second = Net(tmp_path, pool_size=0)
    try:
        # The stored networks keep their bridges; every veth and namespace went.
        assert sorted(our_links()) == sorted(n.bridge for n in second.svc.list() if n.bridge)
        assert list((tmp_path / "netns").iterdir()) == [] and nsfs_mounts(tmp_path) == []
        assert second.svc.ipam.allocations() == {}
        second.run(second.svc.remove("left-over"))
    finally:
        second.close()
    assert our_links() == [] and nsfs_mounts(tmp_path) == []


async def _timed_attach(svc: NetworkService, container_id: str) -> float:
    """Seconds one attach takes on an idle service (measured inside the loop)."""
    await svc.settle()
    began = time.perf_counter()
    await svc.attach(container_id)
    took = time.perf_counter() - began
    svc.release(container_id)
    return took


def test_acquire_latency_warm_pool_vs_cold(tmp_path):
    """Measured and printed, not asserted (speed is the benchmark's business)."""
    results = {}
    for label, pool_size in (("warm pool", 2), ("cold", 0)):
        n = Net(tmp_path / label.replace(" ", "-"), pool_size=pool_size)
        try:
            times = [n.run(_timed_attach(n.svc, f"lat-{i}")) for i in range(20)]
            times.sort()
            results[label] = (times[len(times) // 2], times[-2])
        finally:
            n.close()
    for label, (median, p95) in results.items():
        print(f"\nattach on the default bridge, {label}: median {median * 1e3:.2f} ms, "
              f"p95 {p95 * 1e3:.2f} ms")
    assert our_links() == []


def test_runner_container_joins_a_prepared_namespace(net, busybox_rootfs, tmp_path_factory):
    from sandboxd.runner import Runner
    from sandboxd.runner.spec import (DEFAULT_CAPABILITIES, ContainerSpec, Namespaces,
                                      Process, RootFS)

    parent = f"sandboxd-test-{os.getpid()}-net"
    peer = net.run(net.svc.attach("c-peer"))
    att = net.run(net.svc.attach("c-box"))
    script = (f"ip -4 -o addr show eth0; ip route; ping -c1 -W1 {peer.endpoint.ip_address}"
              f" >/dev/null && echo reached")
    # busybox ping needs a raw socket: NET_RAW is not among the default capabilities.
    process = Process(args=("/bin/sh", "-c", script),
                      capabilities=DEFAULT_CAPABILITIES + ("NET_RAW",))
    spec = ContainerSpec(id=f"tnet{os.getpid()}", process=process,
                         root=RootFS(lowerdirs=(str(busybox_rootfs),)),
                         namespaces=Namespaces(net=att.netns))
    try:
        with Runner(state_dir=str(tmp_path_factory.mktemp("runner")),
                    cgroup_parent=parent) as runner:
            result = runner.run(spec, timeout=60)
    finally:
        for controller in os.listdir("/sys/fs/cgroup"):
            path = Path("/sys/fs/cgroup") / controller / parent
            if path.is_dir():
                path.rmdir()
    out = result.stdout.decode()
    assert result.exit_code == 0, (out, result.stderr)
    assert f"{att.endpoint.ip_address}/{att.endpoint.prefix_len}" in out
    assert f"default via {att.endpoint.gateway}" in out and "reached" in out
    net.release("c-box")
    net.release("c-peer")


def test_a_refill_batch_that_fails_part_way_keeps_what_it_made(net):
    """A refill prepares its namespaces in one request, which stops at the first one the
    kernel refuses (here: its veth's name is taken): those made before it are the
    caller's, the refused one is undone, and its address and those of the ones not
    tried are free again."""
    bridge = net.svc.get("bridge")
    net.run(net.svc.settle())
    taken = f"{PREFIX}vtaken"
    subprocess.run(["ip", "link", "add", taken, "type", "bridge"], check=True)
    try:
        names = iter([f"{PREFIX}vfirst", taken, f"{PREFIX}vthird"])
        net.svc._veth_name = lambda: next(names)
        addresses = set(net.svc.ipam.allocations(bridge.id))
        files = {p.name for p in (net.root / "netns").iterdir()}
        made, error = net.run(net.svc._prepare_batch(bridge, 3))
        assert [p.veth for p in made] == [f"{PREFIX}vfirst"]
        assert error is not None and taken in error.message, error
        assert set(net.svc.ipam.allocations(bridge.id)) - addresses == \
            {(bridge.id, str(made[0].address))}
        assert {p.name for p in (net.root / "netns").iterdir()} - files == {made[0].name}
        assert not any(name.endswith("vthird") for name in our_links())
        assert taken in our_links()          # the link that had the name is not undone
        assert ping(made[0].path, bridge.gateway)          # the one made works

        async def give_back() -> None:
            net.svc._teardown_later(bridge, made[0])
        net.run(give_back())
        net.run(net.svc.settle())
    finally:
        subprocess.run(["ip", "link", "del", taken], capture_output=True)
