"""Pool declarations, the budget and the key (sandboxd/pools.py), and their daemon
settings (flags and config file)."""
from __future__ import annotations

import json

import pytest

from sandboxd.daemonconfig import load_config
from sandboxd.errors import InvalidArgument
from sandboxd.flags import build_config
from sandboxd.pools import PARKED_MEMORY, parse_budget, parse_declaration, pool_key


def test_a_declaration_is_the_config_of_a_rm_container_and_a_count() -> None:
    config, count = parse_declaration("busybox,memory=64m,pids-limit=64,network=none=4")
    assert count == 4
    assert config == build_config("busybox", memory="64m", pids_limit=64,
                                  network_mode="none", auto_remove=True)
    config, count = parse_declaration("reg.example:5000/app:1,cap-drop=ALL,cap-add=CHOWN=2")
    assert (config.image, count) == ("reg.example:5000/app:1", 2)
    assert (config.host.cap_drop, config.host.cap_add) == (("ALL",), ("CHOWN",))


@pytest.mark.parametrize("text, says", [
    ("busybox", "IMAGE[,OPTION=VALUE...]=N"),
    ("busybox=-1", "IMAGE[,OPTION=VALUE...]=N"),
    ("=3", "IMAGE[,OPTION=VALUE...]=N"),
    ("busybox,colour=red=1", "'colour=red' is not OPTION=VALUE"),
    ("busybox,memory=lots=1", "memory"),
    ("busybox,pids-limit=many=1", "pids-limit"),
])
def test_bad_declarations_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_declaration(text)
    assert says in str(err.value.details.get("problems") or err.value.message)


def test_the_key_ignores_what_only_the_process_sees() -> None:
    a = build_config("busybox", ["true"], memory="64m", auto_remove=True)
    b = build_config("busybox", ["sh", "-c", "env"], env={"A": "1"},
                     tty=True, console_size=(40, 120), labels={"x": "y"}, timeout=5,
                     memory="64m",
                     network_mode="bridge", auto_remove=True)
    assert pool_key(a, "sha256:1") == pool_key(b, "sha256:1")
    assert pool_key(a, "sha256:1") != pool_key(a, "sha256:2")          # another image
    for other in (dict(memory="32m"), dict(memory="64m", user="1000"),
                  dict(memory="64m", hostname="h"), dict(memory="64m", network_mode="none"),
                  dict(memory="64m", cap_drop=["ALL"]),
                  dict(memory="64m", workdir="/w")):        # made and entered at park
        c = build_config("busybox", ["true"], auto_remove=True, **other)
        assert pool_key(c, "sha256:1") != pool_key(a, "sha256:1"), other


@pytest.mark.parametrize("options", [
    dict(auto_remove=False), dict(read_only=True), dict(ports=["8080:80"]),
    dict(volumes=["/tmp:/x"]), dict(network_mode="mynet"), dict(pid_mode="container:x"),
])
def test_what_depends_on_more_than_the_key_is_never_pooled(options: dict) -> None:
    options.setdefault("auto_remove", True)
    assert pool_key(build_config("busybox", **options), "sha256:1") is None


def test_budget_and_config_file_keys(tmp_path) -> None:
    assert parse_budget("64m") == 64 << 20 and parse_budget(0) == 0
    with pytest.raises(InvalidArgument, match="less than one parked container"):
        parse_budget(PARKED_MEMORY - 1)
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps({"pools": ["busybox,memory=64m=2"], "pool-memory": "32m"}))
    config = load_config(str(path))
    assert config.pools == ("busybox,memory=64m=2",) and config.pool_memory == 32 << 20
    assert load_config(str(path), pools=("busybox=1",)).pools == ("busybox=1",)
    path.write_text(json.dumps({"pools": ["busybox,bogus=1=2"], "pool-memory": "1k"}))
    with pytest.raises(InvalidArgument) as err:
        load_config(str(path))
    problems = err.value.details["problems"]
    assert any("bogus=1" in p for p in problems) and any("pool-memory" in p for p in problems)


@pytest.mark.parametrize("turns", range(6))
def test_shutdown_ends_the_refill_even_when_it_was_just_woken(turns):
    """A shutdown right after a wake (``set_pool(..., 0)`` then SIGTERM) hung the
    daemon: on Python 3.11 ``asyncio.wait_for`` swallows a cancel that arrives once its
    awaited event has fired, and the refill loop went on waiting. Each turn count puts
    the cancel at another point of that wake-up."""
    import asyncio

    from sandboxd.pools import PoolService

    async def main() -> None:
        pools = PoolService(containers=None)
        await pools.startup()
        while not pools._wake._waiters:            # until the refill waits for a wake
            await asyncio.sleep(0)
        pools._wake.set()
        for _ in range(turns):
            await asyncio.sleep(0)
        await asyncio.wait_for(pools.shutdown(), 5)
        assert pools._task is None
    asyncio.run(main())


def test_a_take_carries_the_terminal_and_its_size() -> None:
    from sandboxd.runner.park import decode_take, take_message
    from sandboxd.runner.spec import Process
    prepared = Process(args=("true",))
    taken = Process(args=("stty", "size"), env=("A=1",), terminal=True,
                    console_size=(40, 120))
    message = take_message(prepared, taken, 1)
    assert decode_take(message)[:4] == (True, (40, 120), ["stty", "size"], ["A=1"])
    assert decode_take(take_message(prepared, Process(args=("true",)), 3))[:2] == \
        (False, ())
