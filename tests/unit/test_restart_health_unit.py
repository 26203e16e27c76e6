"""Pure parts of --restart, health checks and --detach-keys."""
from __future__ import annotations

import pytest

from sandboxd import detachkeys, health, restart
from sandboxd.errors import InvalidArgument
from sandboxd.flags import build_config, parse_duration
from sandboxd.model import ContainerRecord, ContainerState, Healthcheck


def test_backoff_doubles_caps_and_resets() -> None:
    delays, delay = [], 0.0
    for _ in range(12):
        delay = restart.next_delay(delay, ran=0.5)
        delays.append(delay)
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8] and delays[-1] == 60.0
    assert restart.next_delay(60.0, ran=10.0) == 0.1


def _record(policy: str, code: int = 1, count: int = 0, stopped: bool = False
            ) -> ContainerRecord:
    config = build_config("busybox", restart=policy)
    return ContainerRecord(id="a" * 64, name="x", created=0.0, config=config,
                           restart_count=count,
                           state=ContainerState(status="exited", exit_code=code,
                                                manually_stopped=stopped))


def test_policies() -> None:
    assert not restart.should_restart(_record("no"))
    assert restart.should_restart(_record("always", code=0))
    assert not restart.should_restart(_record("always", stopped=True))
    assert restart.should_restart(_record("on-failure:2", count=1))
    assert not restart.should_restart(_record("on-failure:2", count=2))
    assert not restart.should_restart(_record("on-failure", code=0))
    assert restart.restores(_record("always", stopped=True))
    assert restart.restores(_record("unless-stopped"))
    assert not restart.restores(_record("unless-stopped", stopped=True))
    assert not restart.restores(_record("on-failure"))


def test_durations_and_healthcheck_merge() -> None:
    assert parse_duration("1m30s", "x") == 90 and parse_duration("250ms", "x") == 0.25
    for bad in ("10", "1x", "s", "-1s"):
        with pytest.raises(InvalidArgument):
            parse_duration(bad, "x")
    image = health.from_image({"Test": ["CMD", "true"], "Interval": 2 * 10**9,
                               "Retries": 4})
    merged = health.effective(Healthcheck(timeout=1.0), image)
    assert merged == Healthcheck(test=("CMD", "true"), interval=2.0, timeout=1.0, retries=4)
    assert health.effective(Healthcheck(test=("NONE",)), image).test == ("NONE",)
    assert health.to_image(merged) == {"Test": ["CMD", "true"], "Interval": 2 * 10**9,
                                       "Timeout": 10**9, "Retries": 4}
    assert health.argv(Healthcheck(test=("CMD-SHELL", "a && b"))) == ("/bin/sh", "-c",
                                                                     "a && b")


def test_detach_keys() -> None:
    assert detachkeys.parse("ctrl-p,ctrl-q") == b"\x10\x11"
    assert detachkeys.parse("a,ctrl-@,ctrl-_") == b"a\x00\x1f"
    for bad in ("ctrl-", "ctrl-1", "alt-x", "ab", "\u20ac", "\u00e9"):   # one byte only
        with pytest.raises(InvalidArgument):
            detachkeys.parse(bad)
    escape = detachkeys.Escape(b"\x10\x11")
    assert escape.feed(b"ab\x10") == (b"ab", False)          # held back
    assert escape.feed(b"c") == (b"\x10c", False)            # broken: passed on
    assert escape.feed(b"x\x10\x10\x11tail") == (b"x\x10", True)
