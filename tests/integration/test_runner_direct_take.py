"""A take sent by the fork server's owner straight to the parked pid 1 (AsyncRunner
prepare(direct=True), the daemon's pool hits): the fork server hands over a copy of the
channel the pid 1 waits on and reports the exec, or its failure, as an event."""
from __future__ import annotations

import asyncio
import itertools
import os
import signal

import pytest

from harness import remove_cgroup_parent
from sandboxd.errors import CommandNotFound, Conflict, InvalidArgument
from sandboxd.runner.api import AsyncRunner
from sandboxd.runner import native, park
from sandboxd.runner.park import build_helper
from sandboxd.runner.spec import ContainerSpec, Limits, Process, RootFS

PARENT = f"sandboxd-test-direct-{os.getpid()}"
_ids = itertools.count()


def _prepared_spec(rootfs, **process) -> ContainerSpec:
    return ContainerSpec(id=f"d{os.getpid()}-{next(_ids)}",
                         process=Process(args=("sandboxd-pooled",), **process),
                         root=RootFS(lowerdirs=(str(rootfs),)),
                         limits=Limits(memory=64 << 20, pids=64))


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _scenario(tmp_path, body):
    """Run ``body(runner, exits)`` against a fresh AsyncRunner; exits: id -> ExitInfo."""
    async def main():
        exits: dict = {}
        arrived = asyncio.Event()

        def on_exit(container_id, exec_id, info):
            exits[container_id] = info
            arrived.set()
        runner = AsyncRunner(on_exit, state_dir=str(tmp_path / "runner"),
                             cgroup_parent=PARENT, exit_stats=False)
        await runner.start()
        try:
            return await body(runner, exits, arrived)
        finally:
            await runner.close()
    try:
        return asyncio.run(main())
    finally:
        remove_cgroup_parent(PARENT)


async def _exit_of(exits, arrived, container_id):
    while container_id not in exits:
        arrived.clear()
        await asyncio.wait_for(arrived.wait(), 10)
    return exits[container_id]


async def _take(runner, container_id, process) -> tuple[int, bytes]:
    """Take with /dev/null as stdin and stderr: (the pid, all it wrote on stdout)."""
    out_r, out_w = os.pipe()
    null = os.open("/dev/null", os.O_RDWR)
    try:
        pid = await runner.take(container_id, process, (null, out_w, null))
    except BaseException:
        os.close(out_r)
        raise
    finally:
        os.close(out_w)
        os.close(null)
    with os.fdopen(out_r, "rb") as out:
        return pid, await asyncio.to_thread(out.read)


def test_the_owner_sends_the_take_and_the_fork_server_reports_the_exec(tmp_path,
                                                                       busybox_rootfs):
    async def body(runner, exits, arrived):
        spec = _prepared_spec(busybox_rootfs, cwd="/tmp")
        pid = await runner.prepare(spec, build_helper(), direct=True)
        assert spec.id in runner._channels            # the server gave its channel
        taken, output = await _take(runner, spec.id, Process(
            args=("sh", "-c", "echo $GREETING from $(pwd) as $$"),
            env=("GREETING=hi", "PATH=/bin"), cwd="/tmp"))
        info = await _exit_of(exits, arrived, spec.id)
        assert spec.id not in runner._channels and not runner._taking
        return pid, taken, output, info

    pid, taken, output, info = _scenario(tmp_path, body)
    assert taken == pid
    assert output == b"hi from /tmp as 1\n"
    assert (info.exit_code, info.oom_killed, info.stats) == (0, False, None)


def test_a_direct_take_that_cannot_exec_fails_as_the_fork_servers_take(tmp_path,
                                                                      busybox_rootfs):
    async def body(runner, exits, arrived):
        spec = _prepared_spec(busybox_rootfs)
        await runner.prepare(spec, build_helper(), direct=True)
        with pytest.raises(CommandNotFound, match="nosuchcmd"):
            await _take(runner, spec.id, Process(args=("nosuchcmd",), env=("PATH=/bin",)))
        # Its failure was the take's: no exit to report, and nothing of it is left.
        await asyncio.sleep(0.2)
        assert spec.id not in exits and not runner._taking
        with pytest.raises(Conflict, match="is not running"):
            await runner.pids(spec.id)                # the fork server forgot it

    _scenario(tmp_path, body)


def test_a_direct_take_is_checked_as_the_fork_server_checks_one(tmp_path, busybox_rootfs):
    async def body(runner, exits, arrived):
        spec = _prepared_spec(busybox_rootfs)
        await runner.prepare(spec, build_helper(), direct=True)
        with pytest.raises(InvalidArgument, match="only the command, environment"):
            await _take(runner, spec.id, Process(args=("true",), cwd="/etc"))
        await runner.kill(spec.id, signal.SIGKILL, all=True)     # as the daemon does
        return await _exit_of(exits, arrived, spec.id)

    assert _scenario(tmp_path, body).signal == signal.SIGKILL


def test_discarded_prepared_containers_leave_no_channel_behind(tmp_path, busybox_rootfs):
    async def body(runner, exits, arrived):
        before = _fds()
        specs = [_prepared_spec(busybox_rootfs) for _ in range(4)]
        for spec in specs:
            await runner.prepare(spec, build_helper(), direct=True)
        assert len(runner._channels) == 4 and len(_fds() - before) == 4
        for spec in specs:
            await runner.kill(spec.id, signal.SIGKILL, all=True)
        for spec in specs:
            await _exit_of(exits, arrived, spec.id)
        return runner._channels, _fds() - before

    channels, new_fds = _scenario(tmp_path, body)
    assert channels == {} and new_fds == set()


def test_a_take_the_server_must_filter_goes_through_the_server(tmp_path, busybox_rootfs):
    # A prepared pid 1 waiting in Python loads its filter at the take: the fork server
    # sends that take, so it keeps the channel to itself.
    async def body(runner, exits, arrived):
        spec = _prepared_spec(busybox_rootfs)
        await runner.prepare(spec, "", direct=True)
        assert spec.id not in runner._channels
        _, output = await _take(runner, spec.id, Process(
            args=("sh", "-c", "grep Seccomp: /proc/self/status"), env=("PATH=/bin",)))
        await _exit_of(exits, arrived, spec.id)
        return output

    assert _scenario(tmp_path, body) == b"Seccomp:\t2\n"


@pytest.mark.parametrize("compiler", ["musl", "cc"])
def test_a_parked_pid_1_built_by_either_toolchain_serves_a_take(tmp_path, busybox_rootfs,
                                                                monkeypatch, compiler):
    """The helpers are built against musl when musl-tools is there (a start-up 0.5 ms
    shorter than static glibc's under virtualisation), else by cc: both sources build
    either way, each in its own file, and either sbx-park parks a pid 1 that takes the
    workload alike."""
    monkeypatch.setenv("SANDBOXD_CACHE_DIR", str(tmp_path / "cache"))
    first = park.toolchain(), park.helper_path()
    if compiler == "cc":                     # a host without musl-tools
        which = park.shutil.which
        monkeypatch.setattr(park.shutil, "which",
                            lambda name: None if name == "musl-gcc" else which(name))
    chosen = park.toolchain()
    if chosen is None or chosen[0] != compiler:
        pytest.skip(f"no {compiler} toolchain here (.ci/install installs musl-tools)")
    # A host that gains or loses musl builds anew: the file is named by the toolchain.
    assert (park.helper_path() == first[1]) == (first[0] == chosen)
    helper = park.build_helper()
    assert helper == str(park.helper_path())
    setup = park.build_helper(native.SOURCE, "sbx-setup")      # sbx-setup builds too
    for path in (helper, setup):
        with open(path, "rb") as f:
            # glibc's static start-up carries its CPU-feature probe's tunables; musl's
            # does not.
            assert (b"glibc.cpu.hwcaps" in f.read()) == (compiler == "cc")

    async def body(runner, exits, arrived):
        spec = _prepared_spec(busybox_rootfs)
        await runner.prepare(spec, helper, direct=True)
        _, output = await _take(runner, spec.id, Process(
            args=("sh", "-c", "echo $$ $HOME $(cat /proc/1/comm)"), env=("PATH=/bin",)))
        return output, (await _exit_of(exits, arrived, spec.id)).exit_code

    assert _scenario(tmp_path, body) == (b"1 /root sh\n", 0)
