"""The client builds a run's config once per distinct set of arguments (api._build_config),
except when it depends on the caller's machine: files it names or its environment."""
from __future__ import annotations

import pytest

from sandboxd import api
from sandboxd.errors import InvalidArgument


@pytest.fixture(autouse=True)
def empty_cache():
    api._CONFIGS.clear()
    yield
    api._CONFIGS.clear()


def test_the_same_request_reuses_its_config():
    first = api._build_config("busybox", ["true"], True, {"memory": "64m", "env": ["A=1"]})
    again = api._build_config("busybox", ["true"], True, {"env": ["A=1"], "memory": "64m"})
    assert again is first and first.host.memory == 64 << 20


@pytest.mark.parametrize("other", [
    ("busybox", ["false"], True, {"memory": "64m", "env": ["A=1"]}),
    ("busybox", ["true"], False, {"memory": "64m", "env": ["A=1"]}),
    ("busybox", ["true"], True, {"memory": "32m", "env": ["A=1"]}),
    ("busybox", ["true"], True, {"memory": "64m", "env": ["A=2"]}),
    ("busybox", "true", True, {"memory": "64m", "env": ["A=1"]}),
])
def test_any_difference_builds_another(other):
    first = api._build_config("busybox", ["true"], True, {"memory": "64m", "env": ["A=1"]})
    assert api._build_config(*other) is not first


def test_one_and_true_are_different_values():
    assert api._config_key("i", None, True, {"tty": True}) != \
        api._config_key("i", None, True, {"tty": 1})


@pytest.mark.parametrize("options", [
    {"env": ["HOME"]},                          # -e NAME: the caller's environment
    {"env_files": ["/etc/environment"]},
    {"security_opt": ["seccomp=/tmp/profile.json"]},
    {"environ": {"A": "1"}},
    {"volumes": {"/src": {"bind": "/src", "mode": {"ro"}}}},        # no hashable form
])
def test_what_reads_the_callers_machine_is_built_every_time(options, monkeypatch):
    monkeypatch.setenv("HOME", "/first")
    assert api._config_key("busybox", None, False, options) is None
    if "env" in options:
        first = api._build_config("busybox", None, False, dict(options))
        monkeypatch.setenv("HOME", "/second")
        second = api._build_config("busybox", None, False, dict(options))
        assert (first.env, second.env) == (("HOME=/first",), ("HOME=/second",))
    assert not api._CONFIGS


def test_a_bad_request_is_not_kept_and_still_refused():
    for _ in range(2):
        with pytest.raises(InvalidArgument, match="memory"):
            api._build_config("busybox", None, False, {"memory": "lots"})
    assert not api._CONFIGS


def test_the_cache_keeps_the_most_recently_used(monkeypatch):
    monkeypatch.setattr(api, "CONFIG_CACHE", 3)
    kept = api._build_config("busybox", ["0"], True, {})
    for n in range(1, 6):
        api._build_config("busybox", ["0"], True, {})          # used again: kept
        api._build_config("busybox", [str(n)], True, {})
    assert len(api._CONFIGS) == 3
    assert api._build_config("busybox", ["0"], True, {}) is kept
