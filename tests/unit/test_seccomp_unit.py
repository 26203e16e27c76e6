"""Seccomp profiles: checking, Docker's resolution rules, compiling, the option parsing.

One test loads a compiled filter in a forked child (no root needed: no_new_privs) to see
that the program libseccomp made does what the profile says.
"""
from __future__ import annotations

import ctypes
import json
import os
import platform

import pytest

from sandboxd.flags import build_config, config_from_options
from sandboxd.model import ContainerRecord
from sandboxd.render import inspect_document
from sandboxd.errors import InvalidArgument
from sandboxd.runner import seccomp
from sandboxd.runner.spec import CAPABILITY_NAMES, DEFAULT_CAPABILITIES
from sandboxd.securityopt import (check_security_opt, no_new_privileges,
                                  read_security_opt, seccomp_profile)

DEFAULT = json.loads(seccomp.default_profile_text())


def _allowed(resolved: seccomp.Resolved) -> dict[str, list[seccomp.Rule]]:
    out: dict[str, list[seccomp.Rule]] = {}
    for rule in resolved.rules:
        for name in rule.names:
            out.setdefault(name, []).append(rule)
    return out


def test_the_default_profile_is_valid_and_denies_by_default():
    assert seccomp.check_profile(DEFAULT) == []
    assert DEFAULT["defaultAction"] == "SCMP_ACT_ERRNO" and DEFAULT["defaultErrnoRet"] == 1


def test_default_capabilities_leave_out_what_docker_gates():
    rules = _allowed(seccomp.resolve(DEFAULT, DEFAULT_CAPABILITIES, "amd64", (6, 1)))
    for name in ("mount", "umount2", "bpf", "perf_event_open", "setns", "keyctl", "add_key",
                 "userfaultfd", "kexec_load", "init_module", "reboot", "chroot", "acct",
                 "open_by_handle_at", "iopl", "settimeofday"):
        assert all(r.action != "SCMP_ACT_ALLOW" for r in rules.get(name, [])), name
    # clone and unshare: only without namespace flags; clone3: ENOSYS.
    ns = 0x7E020000
    assert [r.args for r in rules["clone"]] == [((0, "SCMP_CMP_MASKED_EQ", ns, 0),)]
    assert [r.args for r in rules["unshare"]] == [((0, "SCMP_CMP_MASKED_EQ", ns, 0),)]
    assert [(r.action, r.errno) for r in rules["clone3"]] == [("SCMP_ACT_ERRNO", 38)]
    personalities = sorted(r.args[0][2] for r in rules["personality"])
    assert personalities == [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]
    assert rules["socket"][0].args == ((0, "SCMP_CMP_NE", 40, 0),)      # no AF_VSOCK
    assert "ptrace" in rules and "arch_prctl" in rules and "modify_ldt" in rules


def test_capabilities_open_their_syscalls():
    caps = (*DEFAULT_CAPABILITIES, "SYS_ADMIN", "SYS_PTRACE", "SYS_CHROOT", "SYS_MODULE")
    rules = _allowed(seccomp.resolve(DEFAULT, caps, "amd64", (6, 1)))
    for name in ("mount", "unshare", "clone", "clone3", "setns", "bpf", "kcmp", "chroot",
                 "init_module"):
        assert any(r.action == "SCMP_ACT_ALLOW" and not r.args for r in rules[name]), name
    assert all(r.action == "SCMP_ACT_ALLOW" for r in rules["clone3"])   # no ENOSYS rule


def test_architecture_and_kernel_conditions():
    amd = seccomp.resolve(DEFAULT, DEFAULT_CAPABILITIES, "amd64", (6, 1))
    assert amd.architectures == ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32")
    arm = seccomp.resolve(DEFAULT, DEFAULT_CAPABILITIES, "arm64", (6, 1))
    assert arm.architectures == ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM")
    assert "arch_prctl" not in _allowed(arm) and "set_tls" in _allowed(arm)
    old = seccomp.resolve(DEFAULT, DEFAULT_CAPABILITIES, "amd64", (4, 4))
    assert "ptrace" not in _allowed(old)                    # minKernel 4.8
    s390 = _allowed(seccomp.resolve(DEFAULT, DEFAULT_CAPABILITIES, "s390x", (6, 1)))
    assert [r.args[0][0] for r in s390["clone"]] == [1]     # flags are argument 1 there


@pytest.mark.parametrize("profile, fragment", [
    ([], "a profile is a JSON object"),
    ({}, "defaultAction"),
    ({"defaultAction": "SCMP_ACT_NOTIFY"}, "needs a listener"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "bogus": 1}, "seccomp.bogus: unknown field"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_PDP11"]},
     "architectures"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86"],
      "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}, "not both"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 99999}, "defaultErrnoRet"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {}}, "syscalls: expected a list"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]},
     "syscalls[0].names"),
    ({"defaultAction": "SCMP_ACT_ALLOW",
      "syscalls": [{"name": "a", "names": ["b"], "action": "SCMP_ACT_ERRNO"}]},
     "either name or names"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]},
     "syscalls[0].args[0].value"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 0, "value": 1, "op": "EQ"}]}]}, "syscalls[0].args[0].op"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO",
         "includes": {"minKernel": "4"}}]}, "minKernel"),
])
def test_profile_problems_name_their_place(profile, fragment):
    problems = seccomp.check_profile(profile)
    assert problems and any(fragment in p for p in problems), problems


def test_a_profile_text_that_is_not_json():
    assert "not valid JSON" in seccomp.check_text("{nope")[0]


def test_a_filter_is_loaded_at_park_only_if_it_allows_sbx_parks_calls():
    default = seccomp.FilterCache().get("default", DEFAULT_CAPABILITIES)
    assert default.allows_park
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}
    assert seccomp.allows(seccomp.resolve(profile, ()), seccomp.PARK_CALLS)
    for rule in ({"names": ["setsid"], "action": "SCMP_ACT_ERRNO"},
                 {"names": ["ioctl"], "action": "SCMP_ACT_ERRNO",
                  "args": [{"index": 1, "value": 1, "op": "SCMP_CMP_EQ"}]},
                 {"names": ["recvmsg"], "action": "SCMP_ACT_LOG"}):
        resolved = seccomp.resolve(dict(profile, syscalls=[rule]), ())
        assert not seccomp.allows(resolved, seccomp.PARK_CALLS), rule
    denying = {"defaultAction": "SCMP_ACT_ERRNO",
               "syscalls": [{"names": list(seccomp.PARK_CALLS[1:]), "action": "SCMP_ACT_ALLOW"}]}
    assert not seccomp.allows(seccomp.resolve(denying, ()), seccomp.PARK_CALLS)


def test_compiled_programs_are_cached_per_profile_and_capabilities():
    cache = seccomp.FilterCache()
    a = cache.get("default", DEFAULT_CAPABILITIES)
    assert a is cache.get("default", tuple(reversed(DEFAULT_CAPABILITIES)))
    b = cache.get("default", (*DEFAULT_CAPABILITIES, "SYS_ADMIN"))
    assert a is not b and a.bpf != b.bpf and len(a.bpf) % 8 == 0
    assert cache.get("unconfined", DEFAULT_CAPABILITIES) is None


def test_conditions_on_one_argument_are_alternatives():
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "args": [
            {"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
            {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]}]}
    # libseccomp refuses two conditions on one argument in one rule: that they compile
    # shows they became two rules (runc's reading).
    assert seccomp.compile_filter(seccomp.resolve(profile, ()))


def _in_child(program: seccomp.Program, calls: list[tuple[int, tuple[int, ...]]]) -> list:
    """Install ``program`` in a forked child, make ``calls``; their (result, errno)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            libc.prctl(38, 1, 0, 0, 0)                          # PR_SET_NO_NEW_PRIVS
            seccomp.install(program)
            out = []
            for nr, args in calls:
                ctypes.set_errno(0)
                res = libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(a) for a in args])
                out.append([res, ctypes.get_errno() if res == -1 else 0])
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return [tuple(x) for x in json.loads(data)]


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 syscall numbers")
def test_the_compiled_default_does_what_the_profile_says():
    program = seccomp.FilterCache().get("default", DEFAULT_CAPABILITIES)
    got = _in_child(program, [(39, ()), (250, (0,) * 5), (435, (0, 0)), (135, (0xFFFFFFFF,)),
                              (135, (0x0040000,)), (272, (0x10000000,)), (272, (0x200,))])
    getpid, keyctl, clone3, query, no_aslr, unshare_user, unshare_fs = got
    assert getpid[0] > 0 and keyctl == (-1, 1) and clone3 == (-1, 38)
    assert query[1] == 0 and no_aslr == (-1, 1)
    assert unshare_user == (-1, 1) and unshare_fs == (0, 0)


def test_security_opt_reads_a_profile_on_the_callers_side(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{\n  "defaultAction": "SCMP_ACT_ALLOW"\n}\n')
    assert read_security_opt([f"seccomp={path}", "no-new-privileges"]) == \
        ['seccomp={"defaultAction":"SCMP_ACT_ALLOW"}', "no-new-privileges"]
    assert read_security_opt([f"seccomp:{path}"]) == ['seccomp={"defaultAction":"SCMP_ACT_ALLOW"}']
    with pytest.raises(InvalidArgument, match="absent.json"):
        read_security_opt([f"seccomp={tmp_path}/absent.json"])
    path.write_text("{oops")
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        read_security_opt([f"seccomp={path}"])


def test_security_opt_checks_and_meaning():
    assert check_security_opt(["seccomp=unconfined", "no-new-privileges=false",
                               "seccomp=builtin", 'seccomp={"defaultAction":"SCMP_ACT_LOG"}']
                              ) == []
    problems = check_security_opt(["apparmor=x", "no-new-privileges=maybe", "seccomp=/p.json",
                                   'seccomp={"defaultAction":"X"}'])
    assert len(problems) == 4 and "apparmor=x" in problems[0] and "[3]" in problems[3]
    assert seccomp_profile([]) == "default"
    assert seccomp_profile(["seccomp=unconfined", "seccomp=builtin"]) == "default"
    assert seccomp_profile(["seccomp={}"], privileged=True) == "unconfined"
    assert no_new_privileges([]) and no_new_privileges(["no-new-privileges"])
    assert not no_new_privileges(["no-new-privileges=false"])


def test_privileged_and_security_opt_in_the_model(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    c = build_config("busybox", "true", security_opt=[f"seccomp={path}"])
    assert c.host.seccomp() == '{"defaultAction":"SCMP_ACT_ALLOW"}'
    p = build_config("busybox", "true", privileged=True, cap_drop=["CHOWN"])
    assert p.host.capabilities() == CAPABILITY_NAMES and p.host.seccomp() == "unconfined"
    doc = inspect_document(ContainerRecord(
        id="a" * 64, name="x", config=p, created=0.0, image_id="sha256:" + "0" * 64))
    assert doc["HostConfig"]["Privileged"] and doc["HostConfig"]["MaskedPaths"] == []
    assert doc["HostConfig"]["SeccompProfile"] == "unconfined"
    # The daemon's side never opens a file a client names.
    with pytest.raises(InvalidArgument, match="does not open files"):
        config_from_options({"image": "busybox", "security_opt": [f"seccomp={path}"]})
    with pytest.raises(InvalidArgument, match="local_files"):
        config_from_options({"image": "busybox", "local_files": True})
