"""The default seccomp filter, from inside containers (CHECKS.md items 2 and 8).

Probes call syscalls by number through ctypes in the ``host`` image (the host's own
Python) or use busybox's applets, and read the errno the filter (or the kernel) gives.
"""
from __future__ import annotations

import json
import platform
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64",
                                reason="the probes use x86-64 syscall numbers")

# x86-64 numbers; each probe passes zeros (or a harmless query): what matters is the errno.
SYSCALLS = {"keyctl": 250, "add_key": 248, "bpf": 321, "perf_event_open": 298,
            "userfaultfd": 323, "mount": 165, "kexec_load": 246, "init_module": 175,
            "clone3": 435, "personality": 135, "unshare": 272}

PROBE = r'''
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
calls = json.loads(sys.argv[1])
out = {}
for name, (nr, args) in calls.items():
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(a) for a in args])
    out[name] = [r, ctypes.get_errno() if r == -1 else 0]
print(json.dumps(out))
'''


def _probe(daemon, calls: dict[str, tuple[int, list[int]]], *flags: str) -> dict:
    r = daemon.sbx("run", "--rm", *flags, "host", sys.executable, "-c", PROBE,
                   json.dumps(calls), check=True)
    return {k: tuple(v) for k, v in json.loads(r.out).items()}


def _calls(*names: str) -> dict[str, tuple[int, list[int]]]:
    return {n: (SYSCALLS[n], [0] * 6) for n in names}


def _status(daemon, *args: str) -> dict[str, str]:
    out = daemon.sbx(*args, check=True).out
    return dict(line.split(":", 1) for line in out.splitlines() if ":" in line)


def test_check_02_seccomp_mode_2_in_run_and_exec(secure_daemon):
    d = secure_daemon
    status = _status(d, "run", "--rm", "busybox", "cat", "/proc/self/status")
    assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1"
    name = "seccomp-exec"
    d.sbx("run", "-d", "--name", name, "busybox", "sleep", "60", check=True)
    try:
        status = _status(d, "exec", name, "cat", "/proc/self/status")
        assert status["Seccomp"].strip() == "2"
    finally:
        d.sbx("rm", "-f", name)


def test_check_08_namespace_creation_refused(secure_daemon):
    r = secure_daemon.sbx("run", "--rm", "busybox", "sh", "-c",
                          "for f in -U -m -C -n -p -i -u; do unshare $f true 2>/dev/null;"
                          " echo \"$f=$?\"; done", check=True)
    results = dict(line.split("=") for line in r.out.split())
    assert all(code != "0" for code in results.values()), results
    # unshare without namespace flags stays open (CLONE_FS, 0x200), as the kernel allows.
    probe = _probe(secure_daemon, {"unshare_fs": (SYSCALLS["unshare"], [0x200])})
    assert probe["unshare_fs"] == (0, 0)


def test_blocked_syscalls_get_eperm_and_clone3_enosys(secure_daemon):
    names = ("keyctl", "add_key", "bpf", "perf_event_open", "userfaultfd", "mount",
             "kexec_load", "init_module")
    got = _probe(secure_daemon, _calls(*names, "clone3"))
    for name in names:
        assert got[name] == (-1, 1), f"{name}: {got[name]}"
    assert got["clone3"] == (-1, 38)            # ENOSYS: libc falls back to clone


def test_threads_of_a_glibc_program_still_work(secure_daemon):
    r = secure_daemon.sbx(
        "run", "--rm", "host", sys.executable, "-c",
        "import threading\nout=[]\nts=[threading.Thread(target=out.append, args=(i,)) "
        "for i in range(8)]\n[t.start() for t in ts]\n[t.join() for t in ts]\n"
        "print(sorted(out))", check=True)
    assert r.out.strip() == str(list(range(8)))


def test_personality_allowlist(secure_daemon):
    nr = SYSCALLS["personality"]
    got = _probe(secure_daemon, {"query": (nr, [0xFFFFFFFF]), "linux32": (nr, [0x0008]),
                                 "linux": (nr, [0]), "no_aslr": (nr, [0x0040000])})
    assert got["query"][1] == 0 and got["linux32"][1] == 0 and got["linux"][1] == 0
    assert got["no_aslr"] == (-1, 1)            # ADDR_NO_RANDOMIZE is not on the list


def test_unconfined_turns_the_filter_off(secure_daemon):
    status = _status(secure_daemon, "run", "--rm", "--security-opt", "seccomp=unconfined",
                     "busybox", "cat", "/proc/self/status")
    assert status["Seccomp"].strip() == "0"
    got = _probe(secure_daemon, _calls("clone3"), "--security-opt", "seccomp=unconfined")
    assert got["clone3"] == (-1, 22)            # the kernel's EINVAL for a zero size


def test_a_custom_profile_applies(secure_daemon, tmp_path):
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                      "errnoRet": 13}]}))
    r = secure_daemon.sbx("run", "--rm", "--security-opt", f"seccomp={profile}", "busybox",
                          "sh", "-c", "mkdir /tmp/d; echo mkdir=$?; unshare -U true;"
                          " echo unshare=$?")
    assert "Permission denied" in r.err and "mkdir=1" in r.out
    assert "unshare=0" in r.out                  # the default profile is not in force
    name = "seccomp-custom"
    secure_daemon.sbx("create", "--name", name, "--security-opt", f"seccomp={profile}",
                      "busybox", "true", check=True)
    try:
        doc = json.loads(secure_daemon.sbx("inspect", name, check=True).out)[0]
        assert doc["HostConfig"]["SeccompProfile"].startswith("custom sha256:")
        opt = doc["HostConfig"]["SecurityOpt"][0]
        assert opt.startswith("seccomp={") and json.loads(opt[8:])["defaultAction"] == \
            "SCMP_ACT_ALLOW"
    finally:
        secure_daemon.sbx("rm", "-f", name)


def test_cap_add_sys_admin_allows_user_namespaces(secure_daemon):
    r = secure_daemon.sbx("run", "--rm", "--cap-add", "SYS_ADMIN", "busybox", "unshare",
                          "-U", "true")
    assert r.returncode == 0, r.err
    got = _probe(secure_daemon, _calls("clone3"), "--cap-add", "SYS_ADMIN")
    assert got["clone3"] == (-1, 22)            # clone3 is the kernel's with SYS_ADMIN


def test_privileged_has_everything_and_no_filter(secure_daemon):
    status = _status(secure_daemon, "run", "--rm", "--privileged", "busybox", "cat",
                     "/proc/self/status")
    assert status["Seccomp"].strip() == "0"
    assert int(status["CapEff"], 16) == int(status["CapBnd"], 16)
    assert int(status["CapEff"], 16) >> 21 & 1               # CAP_SYS_ADMIN
    # No masked or read-only paths: nothing is mounted over /proc/kcore or /proc/sys.
    mounts = "grep -cE ' /proc/(kcore|sys) ' /proc/self/mounts"
    privileged = secure_daemon.sbx("run", "--rm", "--privileged", "busybox", "sh", "-c",
                                   mounts).out
    default = secure_daemon.sbx("run", "--rm", "busybox", "sh", "-c", mounts).out
    assert privileged.strip() == "0" and int(default) >= 1


def test_no_new_privileges_false_still_gets_the_filter(secure_daemon):
    status = _status(secure_daemon, "run", "--rm", "--security-opt",
                     "no-new-privileges=false", "busybox", "cat", "/proc/self/status")
    assert status["NoNewPrivs"].strip() == "0" and status["Seccomp"].strip() == "2"


@pytest.mark.parametrize("content, words", [
    ("{not json", ["not valid JSON"]),
    (json.dumps({"defaultAction": "SCMP_ACT_NOPE"}), ["defaultAction", "SCMP_ACT_NOPE"]),
    (json.dumps({"defaultAction": "SCMP_ACT_ERRNO",
                 "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                               "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]}),
     ["syscalls[0].args[0].index"]),
])
def test_a_bad_profile_is_a_clear_error_and_creates_nothing(secure_daemon, tmp_path,
                                                            content, words):
    before = secure_daemon.ids("-a")
    profile = tmp_path / "bad.json"
    profile.write_text(content)
    r = secure_daemon.sbx("run", "--rm", "--security-opt", f"seccomp={profile}", "busybox",
                          "true")
    assert r.returncode == 125, (r.returncode, r.err)
    for word in words:
        assert word in r.err, r.err
    missing = secure_daemon.sbx("run", "--rm", "--security-opt",
                                f"seccomp={tmp_path}/absent.json", "busybox", "true")
    assert missing.returncode == 125 and "absent.json" in missing.err
    assert secure_daemon.ids("-a") == before


def test_unknown_security_opt_is_refused(secure_daemon):
    r = secure_daemon.sbx("run", "--rm", "--security-opt", "apparmor=x", "busybox", "true")
    assert r.returncode == 125 and "apparmor=x" in r.err
