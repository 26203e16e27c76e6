"""The issue's leak check: many create → run → remove cycles on the default bridge and a
user network, ended in random ways (removed while running, SIGKILLed through the
daemon or from outside, exited by themselves, stopped, failed to start: a missing
command or a host port taken between create and start), some with published ports,
and the daemon itself killed -9 and restarted half-way. Afterwards no veth of ours is
left besides the pools', no namespace file but the pools' and the IPAM has every
address free again (only the pools' own remain allocated).

``SBX_NET_CYCLES`` sets the count (default 500, the issue's; about a minute here).
Traffic: none beyond our own bridges."""
from __future__ import annotations

import os
import random
import signal
import socket
import sqlite3
import subprocess

import pytest

from conftest import Daemon, pid_alive, wait_until
from sandboxd import errors

CYCLES = int(os.environ.get("SBX_NET_CYCLES", "500"))
POOL = 2                       # the network service's pool size per network


def our_veths(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                         check=True).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return [n for n in names if n.startswith(prefix + "v")]


def allocations(root: str) -> list[tuple[str, str]]:
    db = sqlite3.connect(f"file:{root}/meta.db?mode=ro", uri=True)
    try:
        return db.execute("SELECT address, owner FROM ip_allocations").fetchall()
    finally:
        db.close()


def failed_start(client, rng: random.Random, network: str) -> None:
    """A start that fails after the network was attached: a missing command, or a host
    port taken between create and start (the container stays created; rm removes it)."""
    if rng.random() < 0.5:
        container = client.containers.create("busybox", "/no/such/command",
                                             network_mode=network)
        with pytest.raises(errors.CommandNotFound):
            container.start()
        container.remove(force=True)
        return
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        holder.close()
        container = client.containers.create("busybox", "sleep 30", network_mode=network,
                                             ports={"80/tcp": ("127.0.0.1", port)})
        with socket.socket() as taker:
            taker.bind(("127.0.0.1", port))
            taker.listen()
            with pytest.raises(errors.Conflict, match="already allocated"):
                container.start()
        container.remove(force=True)


def one_cycle(client, rng: random.Random, network: str) -> None:
    how = rng.choice(["remove", "kill", "outside", "exit", "stop", "failed"])
    if how == "failed":
        failed_start(client, rng, network)
        return
    ports = {"80/tcp": None} if rng.random() < 0.25 else {}
    cmd = "true" if how == "exit" else "sleep 30"
    container = client.containers.run("busybox", cmd, network_mode=network, ports=ports)
    if how == "kill":
        container.kill()
    elif how == "outside":                      # a kill the daemon did not ask for
        pid = container.record.state.pid
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    elif how == "stop":
        container.stop(timeout=0)
    if how in ("kill", "outside", "exit"):
        container.wait()
    container.remove(force=True)


def test_cycles_with_random_kills_leave_no_veth_and_every_address_free() -> None:
    daemon = Daemon().start()
    try:
        daemon.import_busybox()
        daemon.sbx("network", "create", "cycles-net", check=True)
        rng = random.Random(5)
        for half in range(2):
            with daemon.client() as client:
                for i in range(CYCLES // 2):
                    one_cycle(client, rng, rng.choice(["bridge", "cycles-net"]))
                if half == 0:                   # leave some running, then kill -9
                    for _ in range(3):
                        client.containers.run("busybox", "sleep 60")
            if half == 0:
                pids = daemon.forkserver_pids()
                daemon.kill9()
                wait_until(lambda: not any(pid_alive(p) for p in pids), 15,
                           "the dead daemon's helpers to exit")
                daemon.start()
                daemon.sbx("container", "prune", "-f", check=True)
        assert daemon.ids("-a") == []
        bridges = 2                             # default and cycles-net

        def settled() -> bool:                  # teardowns run in the background
            owners = [owner for _address, owner in allocations(daemon.root)]
            netns = os.listdir(os.path.join(daemon.root, "netns"))   # bridges' and none's
            return len(our_veths(daemon.prefix)) == bridges * POOL and \
                len(owners) == bridges * POOL and \
                all(o.startswith("pool:") for o in owners) and len(netns) == (bridges + 1) * POOL
        wait_until(settled, 30, "only the pools' veths and addresses to remain")
        daemon.sbx("network", "rm", "cycles-net", check=True)
    finally:
        daemon.stop()                           # and nothing of it is left
