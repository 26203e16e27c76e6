"""``sbx network create/ls/inspect/rm/prune`` and ``client.networks`` against the shared
session daemon: real bridges (named with the daemon's link prefix) and containers
attached to them. Every network made here is removed here; the daemon's stop checks
that no link of its prefix is left.
"""
from __future__ import annotations

import json
import subprocess

import pytest

from sandboxd import errors

from harness import Daemon, wait_until


def links(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                         check=True).stdout
    return [line.split(": ")[1].split("@")[0] for line in out.splitlines()
            if line.split(": ")[1].startswith(prefix)]


def inspect_network(daemon: Daemon, name: str) -> dict:
    docs = json.loads(daemon.sbx("network", "inspect", name, check=True).out)
    assert len(docs) == 1
    return docs[0]


def test_builtin_networks_are_listed(daemon: Daemon) -> None:
    lines = daemon.sbx("network", "ls", check=True).out.splitlines()
    assert lines[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
    rows = {line.split()[1]: line.split() for line in lines[1:]}
    assert rows["bridge"][2:] == ["bridge", "local"]
    assert rows["host"][2:] == ["host", "local"]
    assert rows["none"][2:] == ["null", "local"]
    bridge = inspect_network(daemon, "bridge")
    assert bridge["Id"].startswith(rows["bridge"][0]) and bridge["Driver"] == "bridge"
    assert bridge["IPAM"]["Config"][0]["Subnet"] and bridge["IPAM"]["Config"][0]["Gateway"]
    assert inspect_network(daemon, "none")["IPAM"]["Config"] == []
    builtin = daemon.sbx("network", "ls", "--filter", "type=builtin", "--format",
                         "{{.Name}}", check=True).out.split()
    assert builtin == ["bridge", "host", "none"]


def test_create_inspect_attach_remove(daemon: Daemon) -> None:
    created = daemon.sbx("network", "create", "--subnet", "10.197.3.0/24", "--gateway",
                         "10.197.3.254", "--ip-range", "10.197.3.64/26", "--label",
                         "team=qa", "-o", "note=x", "cli-net", check=True)
    net_id = created.out.strip()
    assert len(net_id) == 64
    try:
        # its bridge is up (named <prefix>-<id prefix>, as network.py names it)
        bridge = f"{daemon.prefix}-{net_id[:15 - len(daemon.prefix) - 1]}"
        assert bridge in links(daemon.prefix)
        doc = inspect_network(daemon, "cli-net")
        assert doc["Name"] == "cli-net" and doc["Id"] == net_id
        assert doc["Driver"] == "bridge" and doc["Scope"] == "local"
        assert doc["Internal"] is False
        assert doc["IPAM"]["Config"] == [{"Subnet": "10.197.3.0/24",
                                          "Gateway": "10.197.3.254",
                                          "IPRange": "10.197.3.64/26"}]
        assert doc["Labels"] == {"team": "qa"} and doc["Options"] == {"note": "x"}
        assert doc["Containers"] == {}
        names = daemon.sbx("network", "ls", "--format", "{{.Name}}", check=True).out.split()
        assert "cli-net" in names and names == sorted(names)
        assert daemon.sbx("network", "ls", "-q", "--filter", "label=team=qa",
                          check=True).out.split() == [net_id[:12]]

        cid = daemon.sbx("run", "-d", "--name", "net-member", "--network", "cli-net",
                         "busybox", "sleep", "60", check=True).out.strip()
        try:
            members = inspect_network(daemon, net_id[:12])["Containers"]
            assert list(members) == [cid]
            member = members[cid]
            assert member["Name"] == "net-member"
            address = member["IPv4Address"]
            assert address.startswith("10.197.3.") and address.endswith("/24")
            assert 64 <= int(address.split("/")[0].rsplit(".", 1)[1]) < 128   # ip-range
            assert member["MacAddress"].startswith("02:42:")
            # the container sees the same address
            ip = daemon.sbx("exec", "net-member", "ip", "-4", "-o", "addr", "show", "eth0",
                            check=True).out
            assert address in ip, ip
            # sbx inspect falls back to networks
            assert json.loads(daemon.sbx("inspect", "cli-net", check=True).out)[0]["Id"] \
                == net_id
            busy = daemon.sbx("network", "rm", "cli-net")
            assert busy.returncode == 1 and "active endpoints" in busy.err, busy.err
        finally:
            daemon.sbx("rm", "-f", "net-member", check=True)
        assert daemon.sbx("network", "rm", "cli-net", check=True).out == "cli-net\n"
    finally:
        daemon.sbx("network", "rm", "cli-net")
    assert bridge not in links(daemon.prefix)
    gone = daemon.sbx("network", "inspect", "cli-net")
    assert gone.returncode == 1 and "No such network: cli-net" in gone.err


def test_create_refusals_and_prune(daemon: Daemon) -> None:
    first = daemon.sbx("network", "create", "--internal", "cli-auto", check=True).out.strip()
    try:
        doc = inspect_network(daemon, "cli-auto")
        assert doc["Internal"] is True and doc["IPAM"]["Config"][0]["Subnet"]
        again = daemon.sbx("network", "create", "cli-auto")
        assert again.returncode == 125 and "already exists" in again.err
        overlap = daemon.sbx("network", "create", "--subnet",
                             doc["IPAM"]["Config"][0]["Subnet"], "cli-overlap")
        assert overlap.returncode == 125 and "overlaps" in overlap.err, overlap.err
        driver = daemon.sbx("network", "create", "--driver", "overlay", "cli-overlay")
        assert driver.returncode == 125 and "not supported" in driver.err
        builtin = daemon.sbx("network", "rm", "bridge")
        assert builtin.returncode == 1 and "pre-defined" in builtin.err
        connect = daemon.sbx("network", "connect", "cli-auto", "no-such-container")
        assert connect.returncode == 125 and "No such container" in connect.err

        pruned = daemon.sbx("network", "prune", "-f", check=True).out.splitlines()
        assert pruned[0] == "Deleted Networks:" and "cli-auto" in pruned[1:], pruned
        names = daemon.sbx("network", "ls", "--format", "{{.Name}}", check=True).out.split()
        assert "cli-auto" not in names and {"bridge", "host", "none"} <= set(names)
    finally:
        daemon.sbx("network", "rm", first)


def test_python_client_networks(daemon: Daemon) -> None:
    with daemon.client() as client:
        net = client.networks.create("py-net", labels={"from": "python"})
        try:
            assert net.name == "py-net" and net.attrs["Labels"] == {"from": "python"}
            assert net.id in [n.id for n in client.networks.list({"name": "py-"})]
            assert client.networks.get(net.short_id).record == net.record
            container = client.containers.run("busybox", "sleep 60", network_mode="py-net")
            try:
                assert net.reload().containers == [container.id]
            finally:
                container.remove(force=True)
            assert net.reload().containers == []
        finally:
            net.remove()
        with pytest.raises(errors.NotFound):
            client.networks.get("py-net")


def test_run_with_a_static_address(daemon: Daemon) -> None:
    daemon.sbx("network", "create", "--subnet", "10.231.9.0/24", "cli-static", check=True)
    try:
        run = daemon.sbx("run", "-d", "--name", "cstatic", "--network", "cli-static", "--ip",
                         "10.231.9.99", "busybox", "sleep", "60", check=True)
        assert run.returncode == 0
        doc = json.loads(daemon.sbx("inspect", "cstatic", check=True).out)[0]
        endpoint = doc["NetworkSettings"]["Networks"]["cli-static"]
        assert endpoint["IPAddress"] == "10.231.9.99"
        assert endpoint["IPAMConfig"] == {"IPv4Address": "10.231.9.99"}
        addr = daemon.sbx("exec", "cstatic", "ip", "-4", "-o", "addr", "show", "eth0",
                          check=True).out
        assert "10.231.9.99/24" in addr
        # network.addresses shows who holds it: the container, by its id
        cid = doc["Id"]
        assert ("10.231.9.99", cid) in daemon.addresses()
        taken = daemon.sbx("run", "--rm", "--network", "cli-static", "--ip", "10.231.9.99",
                           "busybox", "true")
        assert taken.returncode != 0 and "10.231.9.99" in taken.err, taken.err
        outside = daemon.sbx("create", "--network", "cli-static", "--ip", "10.9.9.9",
                             "busybox", "true")
        assert outside.returncode == 125 and "no configured subnet" in outside.err
        builtin = daemon.sbx("create", "--ip", "172.17.0.9", "busybox", "true")
        assert builtin.returncode == 125 and "user defined networks only" in builtin.err
        daemon.sbx("rm", "-f", "cstatic", check=True)
        wait_until(lambda: not any(o == cid for _a, o in daemon.addresses()), 15,
                   "the removed container's address to be freed")
    finally:
        daemon.sbx("rm", "-f", "cstatic")
        daemon.sbx("network", "rm", "cli-static")
