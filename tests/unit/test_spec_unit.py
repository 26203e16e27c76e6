"""Spec parsing and validation: every bad field named, in one error."""
from __future__ import annotations

import pytest

from sandboxd.errors import InvalidArgument
from sandboxd.runner.spec import (ContainerSpec, File, Limits, Mount, Process, RootFS, Ulimit,
                                  cpus_to_quota, from_dict, merge_ulimits, parse_size,
                                  parse_ulimit, to_dict, validate)


def make(**kw) -> ContainerSpec:
    base = dict(id="c1", process=Process(args=("true",)), root=RootFS(lowerdirs=("/l",)))
    base.update(kw)
    return ContainerSpec(**base)


@pytest.mark.parametrize("text,value", [("64m", 64 << 20), ("1g", 1 << 30), ("512k", 512 << 10),
                                        ("100b", 100), ("64M", 64 << 20), ("1GB", 1 << 30),
                                        ("2GiB", 2 << 30), ("1024", 1024), (4096, 4096)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "m", "-1m", "12x", "1.2.3g", "64 mb extra"])
def test_parse_size_rejects(text):
    with pytest.raises(InvalidArgument, match="invalid size"):
        parse_size(text)


def test_cpus_and_ulimits():
    assert cpus_to_quota(0.5) == 50000 and cpus_to_quota(2, 50000) == 100000
    assert parse_ulimit("nofile=128:256") == Ulimit("nofile", 128, 256)
    assert parse_ulimit("nproc=32") == Ulimit("nproc", 32, 32)
    assert parse_ulimit("core=-1") == Ulimit("core", -1, -1)
    merged = merge_ulimits([Ulimit("nofile", 1280, 2560), Ulimit("nproc", 256, 512)],
                           [Ulimit("nofile", 128, 256)])
    assert set(merged) == {Ulimit("nofile", 128, 256), Ulimit("nproc", 256, 512)}
    for bad in ("nofile", "=1", "nofile=a:b"):
        with pytest.raises(InvalidArgument):
            parse_ulimit(bad)


def test_every_problem_reported_by_field():
    spec = make(
        id="bad/id", hostname="-bad-",
        process=Process(args=("sh",), env=("", "=", "=x", "OK=1"), cwd="/proc/self/fd/3",
                        ulimits=(Ulimit("nofile", 300, 200), Ulimit("bogus", 1, 1)),
                        capabilities=("CHOWN", "NOPE")),
        root=RootFS(lowerdirs=("relative",)),
        mounts=(Mount("/proc/x", "bind", "/src"), Mount("rel", "bind", "/src"),
                Mount("/sys/y", "tmpfs"), Mount("/ok", "bind", "relative-src")),
        limits=Limits(memory=4 << 20, memory_swap=2 << 20, cpu_quota=500, cpu_period=999,
                      cpu_shares=1, pids=0))
    with pytest.raises(InvalidArgument) as err:
        validate(spec)
    problems = err.value.details["problems"]
    text = "\n".join(problems)
    for needle in ("id:", "hostname:", "process.env[0]", "process.env[1]", "process.env[2]",
                   "process.cwd", "nofile soft limit 300 is above the hard limit 200",
                   "unknown ulimit 'bogus'", "unknown capability 'NOPE'", "root.lowerdirs[0]",
                   "mounts[0].destination", "mounts[1].destination", "mounts[2].destination",
                   "mounts[3].source", "limits.memory: minimum is 6MiB",
                   "limits.memory_swap", "limits.cpu_quota", "limits.cpu_period",
                   "limits.cpu_shares", "limits.pids"):
        assert needle in text, needle
    assert "OK=1" not in text


@pytest.mark.parametrize("terminal, size", [(True, (0, 80)), (True, (24,)),
                                            (True, (24, 70000)), (False, (24, 80))])
def test_a_console_size_is_rows_and_cols_of_a_terminal(terminal, size):
    with pytest.raises(InvalidArgument, match="process.console_size"):
        validate(make(process=Process(args=("sh",), terminal=terminal, console_size=size)))
    validate(make(process=Process(args=("sh",), terminal=True, console_size=(24, 80))))


def test_files_need_a_file_path_outside_the_kernel_filesystems():
    ok = make(files=(File("/etc/hosts", "x"),))
    assert validate(ok) is ok and from_dict(ContainerSpec, to_dict(ok)) == ok
    with pytest.raises(InvalidArgument) as err:
        validate(make(files=(File("etc/hosts", ""), File("/etc/../x", ""), File("/etc/", ""),
                             File("/proc/x", ""), File("/dev/shm/x", ""))))
    text = "\n".join(err.value.details["problems"])
    for i in range(5):
        assert f"files[{i}].path" in text


def test_swap_rules():
    validate(make(limits=Limits(memory=64 << 20, memory_swap=64 << 20)))
    validate(make(limits=Limits(memory=64 << 20, memory_swap=-1)))
    with pytest.raises(InvalidArgument, match="needs a memory limit"):
        validate(make(limits=Limits(memory_swap=64 << 20)))


def test_wire_round_trip_and_bad_types():
    spec = make(mounts=(Mount("/d", "bind", "/s", True),), limits=Limits(memory=64 << 20))
    assert from_dict(ContainerSpec, to_dict(spec)) == spec
    with pytest.raises(InvalidArgument) as err:
        from_dict(ContainerSpec, {"id": 5, "process": {"args": [1], "extra": 0},
                                  "root": {"lowerdirs": "x"}, "limits": {"memory": True}})
    text = str(err.value)
    for needle in ("ContainerSpec.id: expected a string", "process.args[0]",
                   "process.extra: unknown field", "root.lowerdirs: expected a list",
                   "limits.memory: expected an integer"):
        assert needle in text


@pytest.mark.parametrize("bad", [dict(hold=True), dict(process=Process(args=("x",),
                                                                          user="1000")),
                                 dict(entry="m:f")])
def test_a_zygote_is_root_of_its_own_pid_namespace_and_runs_a_command(bad):
    base = dict(id="z", process=Process(args=("x",)), root=RootFS(lowerdirs=("/a",)),
                zygote=True)
    validate(ContainerSpec(**base))
    with pytest.raises(InvalidArgument, match="zygote"):
        validate(ContainerSpec(**{**base, **bad}))
