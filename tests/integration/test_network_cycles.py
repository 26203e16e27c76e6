"""The issue's leak check: many create → run → remove cycles on the default bridge and a
user network, ended in random ways (removed while running, SIGKILLed through the
daemon or from outside, exited by themselves, stopped), some with published ports,
and the daemon itself killed -9 and restarted half-way. Afterwards no veth of ours is
left besides the pools' and the IPAM has every address free again (only the pools'
own remain allocated).

``SBX_NET_CYCLES`` sets the count (default 500, the issue's; about a minute here).
Traffic: none beyond our own bridges."""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess

from conftest import Daemon, pid_alive, wait_until

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


def one_cycle(client, rng: random.Random, network: str) -> None:
    how = rng.choice(["remove", "kill", "outside", "exit", "stop"])
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
            return len(our_veths(daemon.prefix)) == bridges * POOL and \
                len(owners) == bridges * POOL and all(o.startswith("pool:") for o in owners)
        wait_until(settled, 30, "only the pools' veths and addresses to remain")
        daemon.sbx("network", "rm", "cycles-net", check=True)
    finally:
        daemon.stop()                           # and nothing of it is left
