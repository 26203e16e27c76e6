"""The event bus (sandboxd/events.py): Docker's event shape, --since/--until replay
without loss or repeats, a slow reader dropped instead of waited for, emits from worker
threads, and Docker's event filters."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from sandboxd.errors import InvalidArgument, LimitExceeded
from sandboxd.events import EventBus, check_filters, matches
from sandboxd.flags import build_config
from sandboxd.model import ContainerRecord, ContainerState


def record(name: str = "web", labels: tuple[str, ...] = ("app=shop",),
           exit_code: int = 0, oom: bool = False) -> ContainerRecord:
    config = build_config("busybox", labels=dict(l.split("=") for l in labels))
    return ContainerRecord(id="c" * 64, name=name, created=0.0, config=config,
                           state=ContainerState(exit_code=exit_code, oom_killed=oom))


def kept_events(bus: EventBus) -> list[dict]:
    """Every event the bus keeps (a subscription needs a running loop)."""
    async def replay() -> list[dict]:
        past, sub = bus.subscribe(since=0)
        sub.close()
        return past
    return asyncio.run(replay())


def test_container_event_has_dockers_shape() -> None:
    bus = EventBus()
    bus.exited(record(exit_code=137, oom=True))
    oom, die = kept_events(bus)
    assert oom["Action"] == "oom"
    assert die["Type"] == "container" and die["Action"] == "die" and die["status"] == "die"
    assert die["id"] == "c" * 64 and die["from"] == "busybox" and die["scope"] == "local"
    assert die["Actor"] == {"ID": "c" * 64, "Attributes": {
        "app": "shop", "image": "busybox", "name": "web", "exitCode": "137"}}
    assert die["time"] == die["timeNano"] // 10**9
    assert abs(die["timeNano"] / 1e9 - time.time()) < 5


def test_network_and_volume_events_have_no_old_fields() -> None:
    bus = EventBus()
    bus.volume("create", "data")
    (event,) = kept_events(bus)
    assert "status" not in event and "id" not in event
    assert event["Actor"] == {"ID": "data", "Attributes": {"driver": "local"}}


def test_since_until_replay_then_live_without_loss_or_repeat() -> None:
    async def main() -> None:
        bus = EventBus()
        bus.volume("create", "a")
        mid = time.time()
        await asyncio.sleep(0.01)
        bus.volume("create", "b")
        past, sub = bus.subscribe(since=mid)
        assert [e["Actor"]["ID"] for e in past] == ["b"]
        bus.volume("create", "c")
        assert (await sub.next(1))["Actor"]["ID"] == "c"
        assert await sub.next(0.01) is None               # nothing more: a timeout
        sub.close()
        assert bus.listeners == 0
        past, sub = bus.subscribe(until=mid)              # until alone replays too
        assert [e["Actor"]["ID"] for e in past] == ["a"]
        sub.close()
        past, sub = bus.subscribe()                       # neither: live only
        assert past == []
        sub.close()
    asyncio.run(main())


def test_a_slow_reader_is_dropped_and_never_blocks_the_emitter() -> None:
    async def main() -> None:
        bus = EventBus(ring=8, queue=5)
        _, slow = bus.subscribe()
        _, fast = bus.subscribe()
        started = time.monotonic()
        for i in range(5):
            bus.volume("create", f"v{i}")
            assert (await fast.next(1))["Actor"]["ID"] == f"v{i}"
        bus.volume("create", "v5")                         # the sixth: slow is 5 behind
        assert time.monotonic() - started < 1
        assert slow.dropped and bus.listeners == 1
        assert [(await slow.next(1))["Actor"]["ID"] for _ in range(5)] == \
            [f"v{i}" for i in range(5)]                    # what it had, then the error
        with pytest.raises(LimitExceeded, match="fell more than 5 events behind"):
            await slow.next(1)
        assert (await fast.next(1))["Actor"]["ID"] == "v5"
        fast.close()
    asyncio.run(main())


def test_an_event_emitted_in_a_worker_thread_reaches_the_loop() -> None:
    async def main() -> None:
        bus = EventBus()
        _, sub = bus.subscribe()
        worker = threading.Thread(target=bus.image, args=("pull", "busybox:latest"))
        worker.start()
        event = await sub.next(5)
        worker.join()
        assert event["Action"] == "pull" and event["Actor"]["Attributes"] == \
            {"name": "busybox:latest"}
        sub.close()
    asyncio.run(main())


def test_filters_follow_dockers_rules() -> None:
    bus = EventBus()
    bus.container(record(), "start")
    bus.container(record(), "exec_start: sh -c true", execID="e")
    bus.image("tag", "sha256:" + "a" * 64, "example/app:1.0")
    bus.network("connect", type("Net", (), {"id": "n" * 64, "name": "front",
                                            "driver": "bridge"})(), "c" * 64)
    past = kept_events(bus)

    def kept(**filters: list[str]) -> list[str]:
        check_filters(filters)
        return [e["Action"] for e in past if matches(e, filters)]

    assert kept(type=["container"]) == ["start", "exec_start: sh -c true"]
    assert kept(event=["exec_start"]) == ["exec_start: sh -c true"]   # by prefix
    assert kept(event=["exec"]) == []
    assert kept(container=["we"]) == ["start", "exec_start: sh -c true"]  # name prefix
    assert kept(container=["ccc"], event=["start"]) == ["start"]
    assert kept(network=["front"]) == ["connect"]
    assert kept(image=["example/app"]) == ["tag"]          # without its tag
    assert kept(image=["busybox"]) == ["start", "exec_start: sh -c true"]
    assert kept(label=["app=shop"]) == ["start", "exec_start: sh -c true"]
    assert kept(label=["app=other"]) == []
    assert kept(type=["network", "image"]) == ["tag", "connect"]
    with pytest.raises(InvalidArgument, match="colour"):
        check_filters({"colour": ["red"]})
    with pytest.raises(InvalidArgument, match="'thing'"):
        check_filters({"type": ["thing"]})
