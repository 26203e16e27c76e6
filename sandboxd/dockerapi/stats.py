"""One sample of ``container.stats`` as Docker's stats JSON (what ``docker stats`` and
docker-py's ``stats()`` read: cpu and precpu for the percentage, memory, pids, net)."""
from __future__ import annotations

from typing import Any

from ..model import ContainerRecord
from ..render import rfc3339, ZERO_TIME


def _cpu(sample: dict | None) -> dict[str, Any]:
    if sample is None:
        return {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0,
                              "usage_in_usermode": 0},
                "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}
    return {"cpu_usage": {"total_usage": sample["cpu_ns"], "usage_in_kernelmode": 0,
                          "usage_in_usermode": 0},
            "system_cpu_usage": sample["system_ns"], "online_cpus": sample["online_cpus"],
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}


def docker_stats(record: ContainerRecord, sample: dict, previous: dict | None) -> dict:
    return {
        "read": rfc3339(sample["read"]),
        "preread": rfc3339(previous["read"]) if previous else ZERO_TIME,
        "name": f"/{record.name}", "id": record.id, "num_procs": 0,
        "pids_stats": {"current": sample["pids"],
                       **({"limit": sample["pids_limit"]} if sample["pids_limit"] > 0 else {})},
        "cpu_stats": _cpu(sample), "precpu_stats": _cpu(previous),
        "memory_stats": {"usage": sample["memory_usage"], "limit": sample["memory_limit"],
                         "stats": {"cache": sample["memory_cache"],
                                   "total_inactive_file": sample["memory_cache"]}},
        "blkio_stats": {"io_service_bytes_recursive": [
            {"major": 0, "minor": 0, "op": "read", "value": sample["blk_read"]},
            {"major": 0, "minor": 0, "op": "write", "value": sample["blk_write"]}]},
        "storage_stats": {},
        "networks": {"eth0": {"rx_bytes": sample["net_rx"], "tx_bytes": sample["net_tx"],
                              "rx_packets": 0, "tx_packets": 0, "rx_errors": 0,
                              "tx_errors": 0, "rx_dropped": 0, "tx_dropped": 0}},
    }
