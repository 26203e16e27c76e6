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
    return {"cpu_usage": {"total_usage": sample["cpu_ns"],
                          "usage_in_kernelmode": sample["cpu_system_ns"],
                          "usage_in_usermode": sample["cpu_user_ns"]},
            "system_cpu_usage": sample["system_ns"], "online_cpus": sample["online_cpus"],
            "throttling_data": {"periods": sample["cpu_periods"],
                                "throttled_periods": sample["cpu_throttled_periods"],
                                "throttled_time": sample["cpu_throttled_ns"]}}


def _blkio(devices: list | None) -> list[dict] | None:
    """Docker's ``io_service_bytes_recursive``: null where the kernel keeps no counters."""
    if devices is None:
        return None
    return [{"major": major, "minor": minor, "op": op, "value": value}
            for major, minor, read, written in devices
            for op, value in (("read", read), ("write", written))]


def docker_stats(record: ContainerRecord, sample: dict, previous: dict | None) -> dict:
    doc = {
        "read": rfc3339(sample["read"]),
        "preread": rfc3339(previous["read"]) if previous else ZERO_TIME,
        "name": f"/{record.name}", "id": record.id, "num_procs": 0,
        "pids_stats": {"current": sample["pids"],
                       **({"limit": sample["pids_limit"]} if sample["pids_limit"] > 0 else {})},
        "cpu_stats": _cpu(sample), "precpu_stats": _cpu(previous),
        # docker stats shows usage minus the inactive page cache (the v1 key first)
        "memory_stats": {"usage": sample["memory_usage"], "limit": sample["memory_limit"],
                         "stats": {"cache": sample["memory_cache"],
                                   "inactive_file": sample["memory_inactive_file"],
                                   "total_inactive_file": sample["memory_inactive_file"]}},
        "blkio_stats": {"io_service_bytes_recursive": _blkio(sample["blkio"])},
        "storage_stats": {},
    }
    if sample["networks"]:          # Docker leaves it out for --net none and host
        doc["networks"] = sample["networks"]
    return doc
