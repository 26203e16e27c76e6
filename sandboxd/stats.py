"""One sample of a container's usage (``container.stats``): the runner's cgroup counters,
the network interfaces of its namespace, the host's CPU time and memory to relate them
to. ``sbx stats`` and the Docker API's stats both read it."""
from __future__ import annotations

import os
import time
from typing import Any

from .model import ContainerRecord

# /proc/PID/net/dev's columns after "name:": eight received, eight transmitted.
_NET_FIELDS = {"rx_bytes": 0, "rx_packets": 1, "rx_errors": 2, "rx_dropped": 3,
               "tx_bytes": 8, "tx_packets": 9, "tx_errors": 10, "tx_dropped": 11}


def sample(record: ContainerRecord, counters: dict[str, Any]) -> dict[str, Any]:
    """``counters``: the runner's cgroup figures of the running container ({} when it is
    not running: a sample of zeros)."""
    h = record.config.host
    running = bool(counters)
    networks = interfaces(record.state.pid) \
        if running and h.network_mode != "host" else {}
    io = counters.get("io")
    return {
        "read": time.time(), "cpu_ns": counters.get("cpu_usage_ns", 0),
        "cpu_user_ns": counters.get("cpu_user_ns", 0),
        "cpu_system_ns": counters.get("cpu_system_ns", 0),
        "cpu_periods": counters.get("cpu_periods", 0),
        "cpu_throttled_periods": counters.get("cpu_throttled_periods", 0),
        "cpu_throttled_ns": counters.get("cpu_throttled_ns", 0),
        "system_ns": system_ns(), "online_cpus": os.cpu_count() or 1,
        "memory_usage": counters.get("memory_current", 0),
        "memory_limit": h.memory or mem_total(),
        "memory_cache": counters.get("memory_cache", 0),
        "memory_inactive_file": counters.get("memory_inactive_file", 0),
        "pids": counters.get("pids_current", 0), "pids_limit": max(h.pids_limit or 0, 0),
        "networks": networks,
        "net_rx": sum(n["rx_bytes"] for n in networks.values()),
        "net_tx": sum(n["tx_bytes"] for n in networks.values()),
        "blkio": io,
        "blk_read": sum(d[2] for d in io or ()), "blk_write": sum(d[3] for d in io or ()),
    }


def interfaces(pid: int) -> dict[str, dict[str, int]]:
    """The counters of each interface in ``pid``'s network namespace but ``lo`` (what
    ``docker stats`` counts); {} when the process is gone."""
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return {}
    out = {}
    for line in lines:
        name, _, rest = line.partition(":")
        name, fields = name.strip(), rest.split()
        if name != "lo" and len(fields) >= 16:
            out[name] = {key: int(fields[i]) for key, i in _NET_FIELDS.items()}
    return out


def system_ns() -> int:
    """The host's CPU time, all CPUs, as Docker's ``system_cpu_usage``."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    return sum(int(x) for x in fields[:8]) * (10 ** 9 // os.sysconf("SC_CLK_TCK"))


def mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0
