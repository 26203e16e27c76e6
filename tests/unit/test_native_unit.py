"""runner/native.py without root: which starts sbx-setup takes, and the words of its
failures (the same as the Python set-up's, which tests/integration/test_native_setup.py
compares on the real kernel)."""
from __future__ import annotations

import dataclasses
import struct

import pytest

from sandboxd.errors import CommandNotExecutable, CommandNotFound, SetupFailed
from sandboxd.runner import native
from sandboxd.runner import syscalls as sc
from sandboxd.runner.plan import build_plan
from sandboxd.runner.spec import ContainerSpec, Process, RootFS, Ulimit

CLONE = sc.CLONE_NEWNS | sc.CLONE_NEWPID
JOIN = ("/sys/fs/cgroup/pids/x/tasks",)


def make(**process) -> ContainerSpec:
    return ContainerSpec(id="c1", process=Process(args=("true",), **process),
                         root=RootFS(lowerdirs=("/a",)))


def test_a_plain_start_is_eligible():
    assert native.eligible(make(), CLONE, JOIN)
    assert native.eligible(make(terminal=True), CLONE, JOIN)      # its pty made in C too
    assert native.eligible(make(user="nobody:nogroup", groups=("audio",)), CLONE, JOIN)


@pytest.mark.parametrize("change", [
    dict(process=Process(args=("true",), no_new_privileges=False)),
    dict(init=True), dict(hold=True), dict(zygote=True), dict(entry="m:f"),
], ids=["new-privileges", "init", "hold", "zygote", "entry"])
def test_what_takes_the_python_path(change):
    assert not native.eligible(dataclasses.replace(make(), **change), CLONE, JOIN)


def test_a_joined_pid_namespace_or_a_nesting_cgroup_takes_the_python_path():
    assert not native.eligible(make(), None, JOIN)        # a C1 joins it by path
    assert not native.eligible(make(), CLONE, ())          # a v2 cgroup with a leaf


def _report(kind: bytes, err: int, index: int, detail: str = "") -> bytes:
    return b"X" + struct.pack("=ciI", kind, err, index) + detail.encode()


def _encoded(spec: ContainerSpec):
    plan = build_plan(spec, "/mnt")
    return native.encode(spec, plan, JOIN, CLONE, b"", 0, stdio=(0, 1, 2))


def test_each_step_has_its_failure_and_the_encoding_starts_with_the_magic():
    spec = make(ulimits=(Ulimit("nofile", 10, 20),))
    steps, failures = _encoded(spec)
    assert struct.unpack_from("=I", steps)[0] == native.MAGIC
    # join, clone, unshare, the plan's steps, stdio, rlimit, workdir, profile, chdir, exec
    assert len(failures) == 3 + len(build_plan(spec, "/mnt")) + 6


def test_failures_are_worded_as_the_python_path_words_them():
    spec = make(ulimits=(Ulimit("nofile", 10, 20),), cwd="/w")
    plan = build_plan(spec, "/mnt")
    _, failures = native.encode(spec, plan, JOIN, CLONE, b"", 0, stdio=(0, 1, 2))
    join = native.decode_failure(_report(b"o", 13, 0), failures)
    assert (str(join), join.details["step"]) == \
        (f"write 0 to {JOIN[0]}: Permission denied", "cgroup")
    clone = native.decode_failure(_report(b"o", 12, 1), failures)
    assert str(clone) == "create namespaces: Cannot allocate memory"
    proc = 3 + next(i for i, s in enumerate(plan) if getattr(s, "fstype", "") == "proc")
    link = native.decode_failure(_report(b"l", 40, proc, "/tmp"), failures)
    assert str(link) == ("mount proc on /proc: the image's /proc is a symlink (to /tmp); "
                         "refusing to mount through it")
    assert isinstance(link, SetupFailed) and link.details["errno"] == 40
    loop = native.decode_failure(_report(b"L", 40, proc, "/proc"), failures)
    assert str(loop) == "mount proc on /proc: too many levels of symbolic links in /proc"
    rlimit = native.decode_failure(_report(b"o", 1, 3 + len(plan) + 1), failures)
    assert str(rlimit) == "setrlimit nofile 10:20: Operation not permitted"
    assert rlimit.details["name"] == "nofile"
    workdir = native.decode_failure(_report(b"o", 17, 3 + len(plan) + 2), failures)
    assert str(workdir) == "prepare workdir /w: File exists"
    seccomp = native.decode_failure(_report(b"o", 22, len(failures) - 1), failures)
    assert str(seccomp) == "install the seccomp filter: Invalid argument"


def test_command_failures_are_worded_as_sbx_park_words_them():
    missing = native.decode_failure(b"Xp" + struct.pack("=i", 0) + b"nosuch", [])
    assert isinstance(missing, CommandNotFound) and missing.details["exit_code"] == 127
    denied = native.decode_failure(b"Xx" + struct.pack("=i", 13) + b"/w/x", [])
    assert isinstance(denied, CommandNotExecutable)
    assert str(denied) == "exec /w/x: Permission denied"


def test_stdio_failures_are_worded_as_sbx_park_words_them():
    """helper.h's install_stdio is sbx-park's too: its 's' reports name no step."""
    _, failures = _encoded(make(terminal=True))
    pty = native.decode_failure(b"Xs" + struct.pack("=i", 2) + b"pty", failures)
    assert (str(pty), pty.details["step"]) == ("pty: No such file or directory", "pty")
    assert b"s" not in native.STEP_KINDS


def test_an_unknown_step_index_still_names_sbx_setup():
    err = native.decode_failure(_report(b"o", 22, 99, "the encoded plan is truncated"), [])
    assert str(err) == "container setup (sbx-setup): the encoded plan is truncated"


def test_user_failures_are_worded_as_security_words_them():
    spec = make(user="nobody:staff")
    plan = build_plan(spec, "/mnt")
    _, failures = native.encode(spec, plan, JOIN, CLONE, b"", 0, stdio=(0, 1, 2))
    profile = 3 + len(plan) + 2                 # after stdio and the workdir
    missing = native.decode_failure(_report(b"u", 0, profile, "nobody"), failures)
    assert str(missing) == "user: no user 'nobody' in the image's /etc/passwd"
    group = native.decode_failure(_report(b"g", 0, profile, "staff"), failures)
    assert str(group) == "user: no group 'staff' in the image's /etc/group"
    added = native.decode_failure(_report(b"a", 0, profile, "audio"), failures)
    assert str(added) == "group-add: no group 'audio' in the image's /etc/group"
    unreadable = native.decode_failure(_report(b"U", 22, profile, "/etc/passwd"), failures)
    assert str(unreadable) == ("apply security profile (user nobody:staff): the image's "
                               "/etc/passwd has a uid or gid that is not a number")


def test_a_pid_report_after_a_failure_report_is_found():
    """pid 1 can fail, and report, before its C1 writes "P" + pid on the same pipe: the
    fork server finds where the failure report ends, so that neither the error's words
    nor the pid are lost (the words once ended in "P>>\\x00\\x00")."""
    import msgpack

    from sandboxd.runner.forkserver import _failure_report_end
    late_pid = b"P" + struct.pack("<i", 15934)
    step = b"Xo" + struct.pack("<iI", 22, 3) + b"write /w/null: /w/null is not a regular file"
    park = b"Xp" + struct.pack("<i", 0) + b"nosuchcmd"
    bare = b"Xo" + struct.pack("<iI", 22, 3)                 # no text: ends in NULs
    python = b"E" + msgpack.packb({"code": "setup_failed", "message": "no"})
    for report in (step, park, bare, python):
        assert _failure_report_end(report + late_pid) == len(report), report
    for report in (step, park, bare):
        assert _failure_report_end(report) is None, report
    assert _failure_report_end(python) == len(python)
    assert _failure_report_end(b"E\xc1") is None                # not msgpack
