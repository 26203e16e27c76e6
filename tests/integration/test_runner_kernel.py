"""The runner against the real kernel: namespaces, overlay root, limits, profile.

Each test starts a busybox container through one shared fork server and reads what the
workload sees (``/proc/self/status``, ``ulimit``, ``hostname`` ...), the way crun's
Python tests do.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness import remove_cgroup_parent
from sandboxd.errors import CommandNotExecutable, CommandNotFound, InvalidArgument, SetupFailed
from sandboxd.runner import Runner
from sandboxd.runner.spec import (ContainerSpec, File, Limits, Mount, Namespaces, Process,
                                  RootFS, Ulimit)

PARENT = f"sandboxd-test-{os.getpid()}"
_ids = itertools.count()


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    with Runner(state_dir=str(tmp_path_factory.mktemp("runner")), cgroup_parent=PARENT) as r:
        yield r
    remove_cgroup_parent(PARENT)


def spec(rootfs: Path, *args: str, **kw) -> ContainerSpec:
    process_kw = {k: kw.pop(k) for k in ("env", "cwd", "user", "ulimits", "capabilities")
                  if k in kw}
    return ContainerSpec(id=f"t{os.getpid()}-{next(_ids)}",
                         process=Process(args=args, **process_kw),
                         root=kw.pop("root", RootFS(lowerdirs=(str(rootfs),))), **kw)


def sh(runner: Runner, rootfs: Path, script: str, **kw):
    return runner.run(spec(rootfs, "/bin/sh", "-c", script, **kw), timeout=60)


def test_echo_and_exit_code(runner, busybox_rootfs):
    result = sh(runner, busybox_rootfs, "echo hello; echo oops >&2; exit 3")
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"hello\n", b"oops\n")
    assert not result.oom_killed and not result.timed_out


def test_stdin_is_passed(runner, busybox_rootfs):
    result = runner.run(spec(busybox_rootfs, "/bin/cat"), input=b"x" * 200_000)
    assert result.stdout == b"x" * 200_000


def test_pid_namespace(runner, busybox_rootfs):
    result = sh(runner, busybox_rootfs, "echo $$; ls /proc | grep -c '^[0-9]'")
    pid1, count = result.stdout.split()
    assert pid1 == b"1"
    assert int(count) <= 3               # sh, ls/grep: no host process visible


def test_namespaces_differ_from_host(runner, busybox_rootfs):
    result = sh(runner, busybox_rootfs,
                "for n in mnt uts ipc net pid cgroup; do readlink /proc/self/ns/$n; done")
    inside = result.stdout.decode().split()
    host = [os.readlink(f"/proc/self/ns/{n}") for n in ("mnt", "uts", "ipc", "net", "pid",
                                                        "cgroup")]
    assert len(inside) == 6 and all(a != b for a, b in zip(inside, host))


def test_hostname_private_and_host(runner, busybox_rootfs):
    own = sh(runner, busybox_rootfs, "hostname", hostname="box-1")
    assert own.stdout == b"box-1\n"
    assert os.uname().nodename != "box-1"
    shared = sh(runner, busybox_rootfs, "hostname", namespaces=Namespaces(uts="host"))
    assert shared.stdout.decode().strip() == os.uname().nodename


def test_net_host_and_private(runner, busybox_rootfs):
    private = sh(runner, busybox_rootfs, "ls /sys/class/net")
    assert private.stdout.split() == [b"lo"]
    host = sh(runner, busybox_rootfs, "readlink /proc/self/ns/net",
              namespaces=Namespaces(net="host"))
    assert host.stdout.decode().strip() == os.readlink("/proc/self/ns/net")


def test_writes_never_reach_lower(runner, busybox_rootfs):
    before = sorted(os.listdir(busybox_rootfs))
    result = sh(runner, busybox_rootfs, "echo x > /newfile && rm /bin/ls && cat /newfile")
    assert result.stdout == b"x\n"
    assert sorted(os.listdir(busybox_rootfs)) == before
    assert (busybox_rootfs / "bin" / "ls").exists()


def test_persistent_upper(runner, busybox_rootfs, tmp_path):
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir(), work.mkdir()
    root = RootFS(lowerdirs=(str(busybox_rootfs),), upperdir=str(upper), workdir=str(work))
    assert sh(runner, busybox_rootfs, "echo kept > /data", root=root).exit_code == 0
    assert (upper / "data").read_text() == "kept\n"


def test_held_root_runs_nothing_and_serves_its_files_until_stdin_closes(
        runner, busybox_rootfs, tmp_path):
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir(), work.mkdir()
    (upper / "etc").mkdir()
    (upper / "etc" / "written").write_text("by the workload\n")
    root = RootFS(lowerdirs=(str(busybox_rootfs),), upperdir=str(upper), workdir=str(work))
    # A command that would fail (not found) proves nothing is executed.
    held = spec(busybox_rootfs, "/no/such/command", root=root, hold=True)
    stdin_r, stdin_w = os.pipe()
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        pid = runner.spawn(held, (stdin_r, null, null))
    finally:
        os.close(stdin_r), os.close(null)
    try:
        merged = Path(f"/proc/{pid}/root")
        assert (merged / "etc/written").read_text() == "by the workload\n"   # upper
        assert (merged / "bin/busybox").is_file()                             # lower
        (merged / "tmp/copied-in").write_text("x")          # writes land in the upper
        assert (upper / "tmp/copied-in").read_text() == "x"
        assert Path(f"/proc/{pid}/cmdline").read_bytes() != b"/no/such/command\0"
        assert runner.pids(held.id) == [pid]
    finally:
        os.close(stdin_w)
    assert runner.wait(held.id, timeout=30).exit_code == 0
    with pytest.raises(InvalidArgument, match="hold"):
        runner.spawn(dataclasses.replace(held, init=True), (0, 1, 2))


def test_read_only_root(runner, busybox_rootfs):
    root = RootFS(lowerdirs=(str(busybox_rootfs),), readonly=True)
    result = sh(runner, busybox_rootfs, "touch /x", root=root)
    assert result.exit_code != 0 and b"Read-only file system" in result.stderr
    tmp_ok = sh(runner, busybox_rootfs, "echo ok > /tmp/x && cat /tmp/x", root=root,
                mounts=(Mount("/tmp", "tmpfs"),))
    assert tmp_ok.stdout == b"ok\n"


def test_binds_and_etc_files(runner, busybox_rootfs, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from host")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1\tlocalhost\n10.0.0.2\tdb\n")
    mounts = (Mount("/data", "bind", str(data)), Mount("/ro", "bind", str(data), readonly=True),
              Mount("/etc/hosts", "bind", str(hosts), readonly=True))
    result = sh(runner, busybox_rootfs,
                "cat /data/in.txt; echo out > /data/out.txt; touch /ro/x 2>&1; "
                "grep db /etc/hosts", mounts=mounts)
    assert result.stdout.startswith(b"from host")
    assert b"Read-only file system" in result.stdout and b"10.0.0.2\tdb" in result.stdout
    assert (data / "out.txt").read_text() == "out\n"


def test_spec_files_land_in_the_layer_inside_the_root(runner, busybox_rootfs, tmp_path):
    """Files are written into the writable layer (no mount), through symlinks resolved
    inside the root; the lower layer and the host are untouched."""
    lower = tmp_path / "lower"
    shutil.copytree(busybox_rootfs, lower, symlinks=True)
    outside = tmp_path / "outside"
    (lower / "etc" / "resolv.conf").symlink_to(str(outside))      # absolute: the host's
    (lower / "etc" / "hosts").write_text("from the image\n")
    os.chown(lower / "etc" / "hosts", 1, 2)
    os.chmod(lower / "etc" / "hosts", 0o640)
    os.chmod(lower / "etc", 0o750)
    files = (File("/etc/hosts", "10.0.0.2\tdb\n"), File("/etc/resolv.conf", "# none\n"),
             File("/etc/new/hostname", "box\n"))
    script = (f"cat /etc/hosts /etc/new/hostname {outside}; grep -c ' /etc/' "
              f"/proc/self/mountinfo; stat -c '%a %u %g' /etc /etc/hosts; ls /etc")
    # A fresh tmpfs layer (seeded before the overlay) and a kept one (written after).
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir(), work.mkdir()
    for root in (RootFS(lowerdirs=(str(lower),)),
                 RootFS(lowerdirs=(str(lower),), upperdir=str(upper), workdir=str(work))):
        result = sh(runner, lower, script, files=files, root=root)
        assert result.stdout.decode().split("\n")[:6] == [
            "10.0.0.2\tdb", "box", "# none", "0", "750 0 0", "640 1 2"], result
        assert {"passwd", "group", "new", "hosts"} <= set(result.stdout.decode().split())
    assert not outside.exists()
    assert (lower / "etc" / "hosts").read_text() == "from the image\n"
    assert (upper / "etc" / "hosts").read_text() == "10.0.0.2\tdb\n"
    os.mkfifo(lower / "etc" / "hostname")
    with pytest.raises(SetupFailed, match="write /etc/hostname"):
        runner.run(spec(lower, "true", root=RootFS(lowerdirs=(str(lower),)),
                        files=(File("/etc/hostname", "x\n"),)))


def test_proc_and_dev(runner, busybox_rootfs):
    result = sh(runner, busybox_rootfs,
                "ls /dev | tr '\\n' ' '; echo; grep -E ' /(proc|dev/shm|sys) ' /proc/mounts")
    devices, mounts = result.stdout.decode().split("\n", 1)
    assert set(devices.split()) == {"null", "zero", "full", "random", "urandom", "tty",
                                    "ptmx", "pts", "shm", "mqueue", "fd", "stdin", "stdout",
                                    "stderr"}
    proc_line = next(l for l in mounts.splitlines() if " /proc " in l)
    assert all(flag in proc_line for flag in ("nosuid", "nodev", "noexec"))
    sys_line = next(l for l in mounts.splitlines() if " /sys " in l)
    assert " ro," in sys_line
    mknod = sh(runner, busybox_rootfs, "mknod /tmp/sda b 8 0")
    assert mknod.exit_code != 0


def test_masked_and_readonly_paths(runner, busybox_rootfs):
    result = sh(runner, busybox_rootfs,
                "cat /proc/keys /proc/timer_list /proc/sched_debug | wc -c; "
                "ls -A /sys/firmware /proc/acpi | grep -v -e : -e '^$' | wc -l; "
                "echo x > /proc/sysrq-trigger || echo denied; "
                "echo '|/bin/evil' > /proc/sys/kernel/core_pattern || echo denied2")
    lines = result.stdout.decode().split()
    assert lines[:2] == ["0", "0"]
    assert "denied" in lines and "denied2" in lines
    assert "evil" not in Path("/proc/sys/kernel/core_pattern").read_text()


def test_capabilities_and_no_new_privs(runner, busybox_rootfs):
    status = sh(runner, busybox_rootfs, "grep -E '^(Cap|NoNewPrivs)' /proc/self/status")
    fields = dict(line.split(":\t") for line in status.stdout.decode().splitlines())
    expected = (1 << 0) | (1 << 1) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) \
        | (1 << 8) | (1 << 10)
    assert int(fields["CapEff"], 16) == expected
    assert int(fields["CapPrm"], 16) == expected
    assert int(fields["CapBnd"], 16) == expected
    assert int(fields["CapInh"], 16) == 0 and int(fields["CapAmb"], 16) == 0
    assert fields["NoNewPrivs"] == "1"


def test_non_root_user_has_no_capabilities(runner, busybox_rootfs):
    result = sh(runner, busybox_rootfs, "id -u; grep CapEff /proc/self/status", user="65534")
    uid, capeff = result.stdout.decode().splitlines()
    assert uid == "65534" and capeff.split()[-1] == "0000000000000000"


def test_fd_census(runner, busybox_rootfs):
    result = sh(runner, busybox_rootfs, "ls /proc/1/fd; readlink /proc/1/cwd")
    *fds, cwd = result.stdout.decode().split()
    assert sorted(fds) == ["0", "1", "2"] and cwd == "/"


def test_command_not_found_and_not_executable(runner, busybox_rootfs):
    with pytest.raises(CommandNotFound, match=r"executable file not found in \$PATH: nosuch"):
        runner.run(spec(busybox_rootfs, "nosuch"))
    with pytest.raises(CommandNotExecutable) as err:
        runner.run(spec(busybox_rootfs, "/etc/passwd"))
    assert err.value.details["exit_code"] == 126


def test_workdir_env_and_defaults(runner, busybox_rootfs):
    result = sh(runner, busybox_rootfs, "pwd; echo $FOO; echo $PATH; echo $HOME",
                cwd="/work/dir", env=("FOO=a=b",))
    assert result.stdout.decode().split() == [
        "/work/dir", "a=b", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "/root"]


def test_symlinked_proc_is_refused(runner, busybox_rootfs, tmp_path):
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "proc").symlink_to("/tmp")
    root = RootFS(lowerdirs=(str(evil), str(busybox_rootfs)))
    with pytest.raises(SetupFailed, match=r"/proc is a symlink"):
        runner.run(spec(busybox_rootfs, "/bin/true", root=root))


def test_bind_target_through_symlink_stays_inside(runner, busybox_rootfs, tmp_path):
    evil = tmp_path / "evil2"
    (evil / "etc").mkdir(parents=True)
    (evil / "etc" / "escape").symlink_to("../../../../../../tmp/sbx-escape-target")
    src = tmp_path / "src.txt"
    src.write_text("payload")
    root = RootFS(lowerdirs=(str(evil), str(busybox_rootfs)))
    result = runner.run(spec(busybox_rootfs, "/bin/cat", "/tmp/sbx-escape-target", root=root,
                             mounts=(Mount("/etc/escape", "bind", str(src)),)))
    assert result.stdout == b"payload"                 # landed inside the container's /tmp
    assert not Path("/tmp/sbx-escape-target").exists()


def test_ulimits(runner, busybox_rootfs):
    result = sh(runner, busybox_rootfs, "ulimit -n; ulimit -Hn",
                ulimits=(Ulimit("nofile", 128, 256),))
    assert result.stdout.split() == [b"128", b"256"]


def test_ulimit_above_host_hard_limit_is_refused(runner, busybox_rootfs):
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    with pytest.raises(InvalidArgument, match="nofile"):
        sh(runner, busybox_rootfs, "true", ulimits=(Ulimit("nofile", 10, hard + 1),))


def test_memory_limit_oom(runner, busybox_rootfs):
    big = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo done"
    oom = sh(runner, busybox_rootfs, big, limits=Limits(memory=64 << 20))
    assert oom.exit_code == 137 and oom.oom_killed
    small = sh(runner, busybox_rootfs, big.replace("200000000", "10000000"),
               limits=Limits(memory=64 << 20))
    assert (small.exit_code, small.oom_killed, small.stdout) == (0, False, b"done\n")


def test_without_exit_stats_an_exit_still_reports_its_oom_kill(tmp_path, busybox_rootfs):
    # The daemon's fork server reads only the OOM kill count at an exit (no client
    # reads the rest): the OOM verdict must not depend on the other counters.
    with Runner(state_dir=str(tmp_path / "runner"), cgroup_parent=PARENT,
                exit_stats=False) as quiet:
        oom = sh(quiet, busybox_rootfs, "x=$(head -c 200000000 /dev/zero | tr '\\0' a)",
                 limits=Limits(memory=64 << 20))
        fine = sh(quiet, busybox_rootfs, "echo done", limits=Limits(memory=64 << 20))
    assert (oom.exit_code, oom.oom_killed, oom.stats) == (137, True, None)
    assert (fine.exit_code, fine.oom_killed, fine.stats, fine.stdout) == \
        (0, False, None, b"done\n")


def test_kill_self_is_not_oom(runner, busybox_rootfs):
    # With an init the shell is not pid 1, which the kernel shields from its own namespace.
    result = sh(runner, busybox_rootfs, "kill -9 $$", limits=Limits(memory=64 << 20),
                init=True)
    assert (result.exit_code, result.oom_killed) == (137, False)


def test_cpu_quota(runner, busybox_rootfs):
    result = sh(runner, busybox_rootfs, "timeout 2 sh -c 'while :; do :; done'; true",
                limits=Limits(cpu_quota=25000, cpu_period=100000))
    used = result.stats["cpu_usage_ns"] / 1e9
    assert 0.2 < used < 0.8, f"used {used:.2f}s of CPU in ~2s at 0.25 CPU"


def test_pids_limit_stops_fork_bomb(runner, busybox_rootfs):
    result = sh(runner, busybox_rootfs,
                "(i=0; while [ $i -lt 60 ]; do sleep 30 & i=$((i+1)); done) 2>/dev/null; "
                "set -- /proc/[0-9]*; echo $#", limits=Limits(pids=16))
    assert 10 <= int(result.stdout) <= 16     # builtins only: no fork left to count with
    assert result.exit_code == 0     # pid 1 ended; the kernel killed the sleeps with it


def test_exec_into_running_container(runner, busybox_rootfs):
    s = spec(busybox_rootfs, "/bin/sleep", "30", hostname="exec-target",
             ulimits=(Ulimit("nofile", 100, 200),))
    null = os.open("/dev/null", os.O_RDWR)
    r, w = os.pipe()
    try:
        runner.spawn(s, (null, null, null))
        runner.exec(s.id, "e1", s.process.__class__(
            args=("/bin/sh", "-c", "hostname; echo $$; ulimit -n; ls /proc/self/fd"),
            ulimits=(Ulimit("nofile", 100, 200),)), (null, w, w))
        os.close(w)
        w = -1
        info = runner.wait(s.id, "e1", timeout=30)
        out = os.read(r, 65536).decode().split()
        assert info.exit_code == 0
        assert out[0] == "exec-target" and int(out[1]) > 1 and out[2] == "100"
        assert sorted(out[3:]) == ["0", "1", "2", "3"]    # 3: ls's own directory fd
    finally:
        runner.kill(s.id)
        assert runner.wait(s.id, timeout=30).exit_code == 137
        for fd in (null, r, w):
            if fd >= 0:
                os.close(fd)


def test_init_reaps_and_forwards(runner, busybox_rootfs):
    s = spec(busybox_rootfs, "/bin/sh", "-c",
             "trap 'echo got-term; exit 7' TERM; (sleep 0.1 &) ; while :; do sleep 0.05; done",
             init=True)
    null = os.open("/dev/null", os.O_RDWR)
    r, w = os.pipe()
    try:
        pid = runner.spawn(s, (null, w, w))
        os.close(w)
        time.sleep(0.5)
        zombies = subprocess.run(["ps", "-o", "stat=", "--ppid", str(pid)],
                                 capture_output=True, text=True).stdout
        assert "Z" not in zombies
        runner.kill(s.id, signal.SIGTERM)
        info = runner.wait(s.id, timeout=30)
        assert info.exit_code == 7 and b"got-term" in os.read(r, 4096)
    finally:
        os.close(null)
        os.close(r)


def test_terminal(runner, busybox_rootfs):
    s = spec(busybox_rootfs, "/bin/sh", "-c", "tty; stty size")
    s = s.__class__(**{**s.__dict__, "process": Process(args=s.process.args, terminal=True)})
    pid, master = runner.spawn_terminal(s)
    try:
        info = runner.wait(s.id, timeout=30)
        out = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:              # EIO once the last slave fd is gone
                break
            if not chunk:
                break
            out += chunk
        assert info.exit_code == 0 and out.startswith(b"/dev/pts/0\r\n")
    finally:
        os.close(master)


def test_timeout_kills(runner, busybox_rootfs):
    result = runner.run(spec(busybox_rootfs, "/bin/sleep", "30"), timeout=0.5)
    assert result.timed_out and result.exit_code == 137


def test_failed_setup_leaves_nothing(runner, busybox_rootfs, tmp_path):
    bad = RootFS(lowerdirs=(str(tmp_path / "missing"), str(busybox_rootfs)))
    s = spec(busybox_rootfs, "/bin/true", root=bad)
    with pytest.raises(SetupFailed, match="mount overlay"):
        runner.run(s)
    assert not any((Path("/sys/fs/cgroup") / c / PARENT / s.id).exists()
                   for c in ("memory", "pids", "cpu"))


def test_mount_events_do_not_cross(runner, busybox_rootfs, tmp_path):
    """A host mount made after start is invisible inside; a mount made inside never
    appears on the host."""
    host_dir = tmp_path / "late"
    host_dir.mkdir()
    s = spec(busybox_rootfs, "/bin/sh", "-c",
             "mkdir -p /mnt/in && mount -t tmpfs none /mnt/in 2>/dev/null; "
             "sleep 0.5; cat /proc/mounts")
    # CAP_SYS_ADMIN is needed for the inner mount attempt to mean anything.
    s = s.__class__(**{**s.__dict__, "process": Process(
        args=s.process.args, capabilities=s.process.capabilities + ("SYS_ADMIN",))})
    null = os.open("/dev/null", os.O_RDWR)
    r, w = os.pipe()
    try:
        runner.spawn(s, (null, w, w))
        os.close(w)
        subprocess.run(["mount", "-t", "tmpfs", "sbx-late", str(host_dir)], check=True)
        try:
            info = runner.wait(s.id, timeout=30)
            inside = b""
            while chunk := os.read(r, 65536):
                inside += chunk
            host_mounts = Path("/proc/self/mounts").read_text()
        finally:
            subprocess.run(["umount", str(host_dir)], check=True)
        assert info.exit_code == 0
        assert b"sbx-late" not in inside and b"/mnt/in" in inside
        assert "/mnt/in" not in host_mounts
    finally:
        os.close(null)
        os.close(r)
