"""Health checks: Docker's ``HEALTHCHECK`` and ``--health-*``, run by the daemon.

A running container with a test gets a task that runs the test as an exec nobody
attaches to (:meth:`ContainerService.probe`) every ``interval`` (every
``start_interval`` while it is still ``starting`` inside its ``start_period``), each
run killed after ``timeout``. Exit 0 makes it ``healthy`` and zeroes the failing
streak; anything else adds to the streak (not inside the start period) and ``retries``
failures in a row make it ``unhealthy``. The last five probes are kept with their first
4096 bytes of output (Docker's ``State.Health``). The state is written to the record
with each probe, so ``ps``, ``inspect`` and ``--filter health=`` see it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from .errors import SandboxError
from .model import Health, Healthcheck, HealthProbe

log = logging.getLogger("sandboxd.health")

DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_START_INTERVAL = 5.0
DEFAULT_RETRIES = 3
MAX_LOG = 5
MAX_OUTPUT = 4096
NS = 1_000_000_000


def from_image(doc: Any) -> Healthcheck:
    """An image config's ``Healthcheck`` (Docker's: durations in nanoseconds)."""
    if not isinstance(doc, dict):
        return Healthcheck()
    return Healthcheck(test=tuple(str(t) for t in doc.get("Test") or ()),
                       interval=(doc.get("Interval") or 0) / NS,
                       timeout=(doc.get("Timeout") or 0) / NS,
                       start_period=(doc.get("StartPeriod") or 0) / NS,
                       start_interval=(doc.get("StartInterval") or 0) / NS,
                       retries=int(doc.get("Retries") or 0))


def to_image(hc: Healthcheck) -> dict[str, Any]:
    """Docker's ``Healthcheck`` document (image config, ``inspect``'s Config)."""
    doc: dict[str, Any] = {"Test": list(hc.test)}
    for key, value in (("Interval", hc.interval), ("Timeout", hc.timeout),
                       ("StartPeriod", hc.start_period),
                       ("StartInterval", hc.start_interval)):
        if value:
            doc[key] = round(value * NS)
    if hc.retries:
        doc["Retries"] = hc.retries
    return doc


def effective(container: Healthcheck, image: Healthcheck) -> Healthcheck:
    """Docker's merge: the container's fields over the image's (``NONE`` disables)."""
    if container.test[:1] == ("NONE",):
        return container
    return Healthcheck(
        test=container.test or image.test,
        **{f.name: getattr(container, f.name) or getattr(image, f.name)
           for f in dataclasses.fields(Healthcheck) if f.name != "test"})


def active(hc: Healthcheck) -> bool:
    return bool(hc.test) and hc.test[0] != "NONE"


def argv(hc: Healthcheck) -> tuple[str, ...]:
    """``CMD-SHELL line`` runs under /bin/sh -c, as Docker's does."""
    if hc.test[0] == "CMD-SHELL":
        return ("/bin/sh", "-c", hc.test[1])
    return hc.test[1:]


class HealthMonitor:
    """One probing task per running container with a test; owned by the container
    service, which starts it with the container and stops it at its exit."""

    def __init__(self, containers: Any):
        self.containers = containers
        self.tasks: dict[str, asyncio.Task] = {}

    def watch(self, container_id: str, hc: Healthcheck) -> None:
        self.stop(container_id)
        self.tasks[container_id] = asyncio.ensure_future(self._run(container_id, hc))

    def stop(self, container_id: str) -> None:
        task = self.tasks.pop(container_id, None)
        if task is not None:
            task.cancel()

    def close(self) -> None:
        for container_id in list(self.tasks):
            self.stop(container_id)

    async def _run(self, container_id: str, hc: Healthcheck) -> None:
        interval = hc.interval or DEFAULT_INTERVAL
        timeout = hc.timeout or DEFAULT_TIMEOUT
        start_interval = hc.start_interval or DEFAULT_START_INTERVAL
        retries = hc.retries or DEFAULT_RETRIES
        started = time.monotonic()
        command = argv(hc)

        def in_start_period() -> bool:
            return time.monotonic() - started < hc.start_period

        health = Health(status="starting")
        try:
            while True:
                await asyncio.sleep(start_interval if health.status == "starting"
                                    and in_start_period() else interval)
                record = self.containers.live_record(container_id)
                if record is None:
                    return
                if record.state.status != "running":
                    continue                              # paused: no probe
                begin = time.time()
                try:
                    code, output = await self.containers.probe(record, command, timeout,
                                                               MAX_OUTPUT)
                except SandboxError as e:
                    code, output = -1, e.message
                if code == -1 and not output:
                    output = f"Health check exceeded timeout ({timeout:g}s)"
                probe = HealthProbe(start=begin, end=time.time(), exit_code=code,
                                    output=output)
                log_ = (*health.log, probe)[-MAX_LOG:]
                if code == 0:
                    health = Health("healthy", 0, log_)
                elif health.status == "starting" and in_start_period():
                    health = Health(health.status, health.failing_streak, log_)
                else:
                    streak = health.failing_streak + 1
                    health = Health("unhealthy" if streak >= retries else health.status,
                                    streak, log_)
                self.containers.set_health(container_id, health)
        except asyncio.CancelledError:
            raise
        except Exception:                                  # never the daemon's death
            log.exception("health check of %s failed", container_id[:12])
