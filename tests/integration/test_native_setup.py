"""sbx-setup (runner/setup.c, runner/native.py) against the Python set-up it replaces
on the cold path: the same container from the inside, the same errors, the same refusal
of hostile paths. Two fork servers, one with sbx-setup and one without
(``SANDBOXD_NATIVE_SETUP=0``), start the same specs."""
from __future__ import annotations

import dataclasses
import itertools
import os
import stat
import time
from pathlib import Path

import pytest

from harness import remove_cgroup_parent
from sandboxd.runner import Runner
from sandboxd.runner.park import build_helper
from sandboxd.runner.spec import (ContainerSpec, File, Limits, Mount, Namespaces, Process,
                                  RootFS, Ulimit)

PARENT = f"sandboxd-test-native-{os.getpid()}"
_ids = itertools.count()

PROBE = r"""
echo "id: $(id)"; env | sort; echo "pwd: $(pwd)"; echo "hostname: $(hostname)"
grep -E "^(Cap|NoNewPrivs|Seccomp|Uid|Gid|Groups|SigIgn|SigBlk)" /proc/self/status
echo "nofile: $(ulimit -n) $(ulimit -Hn)"; ls -la /dev | awk '{print $1, $NF}'
awk '{print $5, $6, $9, $10, $11}' /proc/self/mountinfo | sort
cat /etc/hosts; ls -la /tmp /scratch; cat /proc/self/cgroup; ls /sys/fs/cgroup
ls /proc/self/fd; cat /proc/sys/net/ipv4/ip_unprivileged_port_start
"""


def _runner(state: Path, native: bool) -> Runner:
    saved = os.environ.get("SANDBOXD_NATIVE_SETUP")
    os.environ["SANDBOXD_NATIVE_SETUP"] = "1" if native else "0"
    try:
        r = Runner(state_dir=str(state), cgroup_parent=PARENT)
        r.start()
    finally:
        if saved is None:
            del os.environ["SANDBOXD_NATIVE_SETUP"]
        else:
            os.environ["SANDBOXD_NATIVE_SETUP"] = saved
    return r


@pytest.fixture(scope="module")
def runners(tmp_path_factory):
    """(with sbx-setup, Python only); the first waits for sbx-setup's build on a host
    that has not built it yet."""
    native = _runner(tmp_path_factory.mktemp("native"), True)
    python = _runner(tmp_path_factory.mktemp("python"), False)
    try:
        deadline = time.monotonic() + 120
        while native.ping()["setup"] != "sbx-setup":
            assert time.monotonic() < deadline, "sbx-setup was not built in 120 s"
            time.sleep(0.2)
        yield native, python
    finally:
        native.close()
        python.close()
        remove_cgroup_parent(PARENT)


def _spec(lowers: tuple[str, ...], *args: str, **kw) -> ContainerSpec:
    process_kw = {k: kw.pop(k) for k in ("env", "cwd", "ulimits", "capabilities")
                  if k in kw}
    return ContainerSpec(id=f"n{os.getpid()}-{next(_ids)}",
                         process=Process(args=args, **process_kw),
                         root=RootFS(lowerdirs=lowers), **kw)


def _both(runners, make):
    """The outcome of the same spec on each runner: its output, or its error."""
    outcomes = []
    for runner in runners:
        try:
            result = runner.run(make(), timeout=60)
            outcomes.append(("ran", result.exit_code, result.stdout.decode()
                             .replace(runner.state_dir, "STATE"), result.stderr.decode()))
        except Exception as e:                       # the error is what is compared
            outcomes.append(("error", type(e).__name__, str(e),
                             getattr(e, "details", None)))
    return outcomes


def test_each_runner_says_how_it_sets_up(runners):
    native, python = runners
    assert native.ping()["setup"] == "sbx-setup"
    assert python.ping()["setup"] == "python"


def test_the_same_container_from_the_inside(runners, busybox_rootfs):
    def make():
        return _spec((str(busybox_rootfs),), "/bin/sh", "-c", PROBE,
                     env=("FOO=bar", "PATH=/bin:/usr/bin"), cwd="/work/here",
                     ulimits=(Ulimit("nofile", 100, 200),), hostname="boxy",
                     files=(File("/etc/hosts", "127.0.0.1 localhost boxy\n"),),
                     mounts=(Mount(destination="/scratch", type="tmpfs",
                                   options=("size=1m",)),),
                     sysctls=("net.ipv4.ip_unprivileged_port_start=80",),
                     limits=Limits(memory=64 << 20, pids=64),
                     namespaces=Namespaces(net="private"), seccomp="default")
    native, python = _both(runners, make)
    assert native[:2] == ("ran", 0), native
    assert "HOSTNAME=boxy" in native[2] and "HOME=/root" in native[2]
    assert "NoNewPrivs:\t1" in native[2] and "Seccomp:\t2" in native[2]
    assert "nofile: 100 200" in native[2] and "pwd: /work/here" in native[2]
    assert native == python


@pytest.fixture(scope="module")
def hostile_layer(tmp_path_factory) -> Path:
    """An image layer with a /proc that is a symlink, a symlink that climbs out, a file
    where a directory is wanted, a dangling symlink, a device where a file is wanted and
    a script that cannot be run."""
    layer = tmp_path_factory.mktemp("hostile")
    (layer / "w").mkdir()
    (layer / "w" / "file").write_text("x")
    (layer / "w" / "noexec").write_text("#!/nonexistent\n")
    os.symlink("../../../../../../etc", layer / "w" / "up")
    os.symlink("/etc", layer / "w" / "abs")
    os.symlink("/nonexistent", layer / "w" / "dangling")
    os.mknod(layer / "w" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return layer


CASES = {
    "not in PATH": dict(args=("nosuchcmd",)),
    "no such file": dict(args=("/bin/nosuch",)),
    "not executable": dict(args=("/w/noexec",)),
    "workdir is a file": dict(args=("true",), cwd="/w/file"),
    "workdir is a dangling symlink": dict(args=("true",), cwd="/w/dangling"),
    "unknown sysctl": dict(args=("true",), sysctls=("net.ipv4.no_such_key=1",)),
    "bind through a climbing symlink": dict(
        args=("sh", "-c", "ls /w/up/sbx-bound; ls /etc/sbx-bound"),
        mounts=(Mount(destination="/w/up/sbx-bound", type="bind", source="/w"),)),
    "bind through an absolute symlink": dict(
        args=("sh", "-c", "ls /etc/sbx-abs"),
        mounts=(Mount(destination="/w/abs/sbx-abs", type="tmpfs"),)),
    "file over a file": dict(args=("cat", "/w/up/hostname"),
                             files=(File("/w/up/hostname", "boxy\n"),)),
    "file over a device": dict(args=("true",), files=(File("/w/null", "x"),)),
    "exit status": dict(args=("sh", "-c", "exit 7")),
}


@pytest.mark.parametrize("case", CASES)
def test_the_same_outcome_and_words(runners, busybox_rootfs, hostile_layer, case):
    kw = dict(CASES[case])
    args = kw.pop("args")
    mounts = tuple(Mount(destination=m.destination, type=m.type,
                         source=str(hostile_layer / "w") if m.source else "")
                   for m in kw.pop("mounts", ()))
    outcomes = _both(runners, lambda: _spec((str(hostile_layer), str(busybox_rootfs)), *args,
                                            mounts=mounts, **kw))
    assert outcomes[0] == outcomes[1]
    # Nothing reached the host's /etc through the image's symlinks.
    assert not any(Path("/etc", name).exists()
                   for name in ("sbx-bound", "sbx-abs"))


def test_a_symlinked_proc_is_refused_the_same(runners, busybox_rootfs, tmp_path):
    (tmp_path / "proc").symlink_to("/tmp")
    native, python = _both(runners, lambda: _spec((str(tmp_path), str(busybox_rootfs)),
                                                  "true"))
    assert native == python
    assert native[:2] == ("error", "SetupFailed")
    assert "the image's /proc is a symlink (to /tmp)" in native[2]


def _prepared_output(runner: Runner, spec: ContainerSpec) -> str:
    """A prepared container of ``spec`` (waiting in sbx-park), taken with its process:
    what it printed, its state dir named STATE."""
    runner.prepare(spec, build_helper())
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        runner.take(spec.id, spec.process, (null, out_w, null))
    finally:
        os.close(out_w)
        os.close(null)
    with os.fdopen(out_r, "rb") as out:
        text = out.read().decode()
    assert runner.wait(spec.id, timeout=60).exit_code == 0
    return text.replace(runner.state_dir, "STATE")


def test_a_prepared_container_is_the_same_either_way(runners, busybox_rootfs):
    """sbx-setup also sets up a pool's prepared containers, up to sbx-park."""
    outputs = [_prepared_output(runner, _spec(
        (str(busybox_rootfs),), "/bin/sh", "-c", PROBE.replace("/scratch", ""),
        env=("FOO=bar",), cwd="/work/here", ulimits=(Ulimit("nofile", 100, 200),),
        hostname="pooled", sysctls=("net.ipv4.ip_unprivileged_port_start=80",),
        limits=Limits(memory=64 << 20, pids=64), namespaces=Namespaces(net="private"),
        seccomp="default")) for runner in runners]
    assert "HOSTNAME=pooled" in outputs[0] and "NoNewPrivs:\t1" in outputs[0]
    assert outputs[0] == outputs[1]


def _exec_outcome(runner: Runner, spec: ContainerSpec, process: Process):
    """Exec ``process`` into a running container of ``spec``: its output or its error."""
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        runner.spawn(spec, (null, null, null))
    finally:
        os.close(null)
    try:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            runner.exec(spec.id, "e1", process, (null, out_w, null))
        except Exception as e:                       # the error is what is compared
            return ("error", type(e).__name__, str(e), getattr(e, "details", None))
        finally:
            os.close(out_w)
            os.close(null)
        with os.fdopen(out_r, "rb") as out:
            text = out.read().decode().replace(runner.state_dir, "STATE")
        return ("ran", runner.wait(spec.id, "e1", timeout=60).exit_code, text)
    finally:
        runner.kill(spec.id)
        runner.wait(spec.id, timeout=60)


@pytest.mark.parametrize("args", [("/bin/sh", "-c", PROBE.replace("/scratch", "")),
                                  ("nosuchcmd",)], ids=["probe", "not in PATH"])
def test_an_exec_is_the_same_either_way(runners, busybox_rootfs, args):
    """An exec into a running container goes through sbx-setup too: its C1 joins the
    container's cgroup and namespaces and forks the process."""
    outcomes = [_exec_outcome(runner, _spec(
        (str(busybox_rootfs),), "/bin/sleep", "60", hostname="execd",
        limits=Limits(memory=64 << 20, pids=64), namespaces=Namespaces(net="private"),
        seccomp="default"), Process(args=args, env=("FOO=bar",), cwd="/work/exec",
                                    ulimits=(Ulimit("nofile", 100, 200),)))
        for runner in runners]
    assert outcomes[0] == outcomes[1]
    if args[0] == "/bin/sh":
        assert outcomes[0][:2] == ("ran", 0)
        assert "HOSTNAME=execd" in outcomes[0][2] and "pwd: /work/exec" in outcomes[0][2]
        assert "nofile: 100 200" in outcomes[0][2]


def _terminal_output(runner: Runner, spec: ContainerSpec) -> str:
    """What a container on a pty (made in its devpts) wrote to it, until it exited."""
    _pid, master = runner.spawn_terminal(spec)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:                    # EIO: the last holder of the pty is gone
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
    assert runner.wait(spec.id, timeout=60).exit_code == 0
    return b"".join(chunks).decode().replace(runner.state_dir, "STATE")


def test_a_terminal_is_the_same_either_way(runners, busybox_rootfs):
    """With a pty: made in the container's devpts by sbx-setup too, its master sent back,
    sized before the exec when the spec gives a size (Docker's ConsoleSize)."""
    script = ("tty; echo TERM=$TERM; stty size; grep -E '^(Sig|NoNew|Cap)' /proc/self/status;"
              " ls /dev/pts")
    outputs = [_terminal_output(runner, dataclasses.replace(
        _spec((str(busybox_rootfs),), "/bin/sh", limits=Limits(memory=64 << 20, pids=64),
              namespaces=Namespaces(net="private"), seccomp="default"),
        process=Process(args=("/bin/sh", "-c", script), terminal=True,
                        console_size=(40, 120))))
        for runner in runners]
    assert "/dev/pts/0" in outputs[0] and "TERM=xterm" in outputs[0]
    assert "\n40 120\r\n" in outputs[0]
    assert outputs[0] == outputs[1]


@pytest.fixture(scope="module")
def users_layer(tmp_path_factory) -> Path:
    """An image layer whose /etc/passwd and /etc/group have comments, blank lines,
    supplementary groups and a user without a passwd line's gid group."""
    layer = tmp_path_factory.mktemp("users")
    (layer / "etc").mkdir()
    (layer / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n# people\n\nalice:x:1000:1000:Alice:/home/alice:"
        "/bin/sh\nbob:x:1001:100::/home/bob:/bin/sh\nnobody:x:65534:65534:nobody:"
        "/nonexistent:/bin/false\n")
    (layer / "etc" / "group").write_text(
        "root:x:0:\nusers:x:100:alice,bob\nalice:x:1000:\naudio:x:29:alice\nstaff:x:50:\n"
        "nogroup:x:65534:\n")
    return layer


USERS = [("alice", ()), ("bob", ()), ("1000", ()), ("1001:50", ()), ("alice:staff", ()),
         ("4242", ()), ("nobody", ("audio", "777")), ("", ("audio", "29")),
         ("nosuch", ()), ("alice:nosuchgroup", ()), ("alice", ("nosuchgroup",))]


@pytest.mark.parametrize("user,groups", USERS, ids=[f"{u or 'root'}+{','.join(g)}"
                                                    for u, g in USERS])
def test_users_and_groups_the_same_either_way(runners, busybox_rootfs, users_layer,
                                              user, groups):
    script = "id; echo HOME=$HOME; grep -E '^(Uid|Gid|Groups|Cap)' /proc/self/status"
    outcomes = _both(runners, lambda: dataclasses.replace(
        _spec((str(users_layer), str(busybox_rootfs)), "/bin/sh"),
        process=Process(args=("/bin/sh", "-c", script), user=user, groups=groups)))
    assert outcomes[0] == outcomes[1]
    if (user, groups) in (("alice", ()), ("nobody", ("audio", "777"))):
        assert outcomes[0][:2] == ("ran", 0), outcomes[0]
        assert "groups=" in outcomes[0][2] and "CapEff:\t0000000000000000" in outcomes[0][2]


@pytest.fixture(scope="module")
def odd_users_layer(tmp_path_factory) -> Path:
    """/etc/passwd and /etc/group with a NUL byte in a line before the user's, a line
    ending in CRLF and ids written with leading zeros."""
    layer = tmp_path_factory.mktemp("odd-users")
    (layer / "etc").mkdir()
    (layer / "etc" / "passwd").write_bytes(
        b"root:x:0:0:root:/root:/bin/sh\nzed:x:7\0:7::/z:/bin/sh\n"
        b"alice:x:1000:1000::/home/alice:/bin/sh\r\n"
        b"carol:x:00000001002:00000000100::/c:/bin/sh\n")
    (layer / "etc" / "group").write_bytes(
        b"users:x:100:alice,carol\nodd\0:x:200:alice\nwheel:x:10:alice\r\n")
    return layer


ODD_USERS = [("alice", ()), ("carol", ()), ("1000", ("wheel",)), ("alice", ("00000000010",))]


@pytest.mark.parametrize("user,groups", ODD_USERS, ids=[f"{u}+{','.join(g)}"
                                                        for u, g in ODD_USERS])
def test_odd_users_files_the_same_either_way(runners, busybox_rootfs, odd_users_layer,
                                             user, groups):
    outcomes = _both(runners, lambda: dataclasses.replace(
        _spec((str(odd_users_layer), str(busybox_rootfs)), "/bin/sh"),
        process=Process(args=("/bin/sh", "-c", "id; echo HOME=$HOME"), user=user,
                        groups=groups)))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][:2] == ("ran", 0), outcomes[0]


@pytest.mark.parametrize("user,groups", [("99999999999", ()), ("alice:4294967295", ()),
                                         ("alice", ("99999999999",))])
def test_a_flag_id_out_of_range_is_not_blamed_on_the_image(runners, users_layer, user,
                                                           groups, busybox_rootfs):
    """The Python path fails too (an OverflowError from os.setresgid or setgroups); its
    words differ, so only sbx-setup's are checked."""
    spec = dataclasses.replace(_spec((str(users_layer), str(busybox_rootfs)), "true"),
                               process=Process(args=("true",), user=user, groups=groups))
    with pytest.raises(Exception) as info:
        runners[0].run(spec, timeout=60)
    assert str(info.value) == (f"apply security profile (user {user}): Numerical result "
                               f"out of range")
