"""The runner's isolation, attempted from inside a default container (CHECKS.md 1-4, 6, 7,
10): capability sets, no_new_privs, masked and read-only paths, /proc/sys, /dev, pid and
namespace isolation, and the setup process that enters from the host."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

NINE = ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "SETGID", "SETUID", "SETPCAP",
        "NET_BIND_SERVICE", "KILL")
CAP_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5,
            "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10}


def _run(d, *args: str, check: bool = True) -> str:
    return d.sbx("run", "--rm", *args, check=check).out


def _status(text: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def test_check_01_capability_sets_exact(secure_daemon):
    nine = sum(1 << CAP_BITS[c] for c in NINE)
    root = _status(_run(secure_daemon, "busybox", "grep", "^Cap", "/proc/self/status"))
    assert {k: int(v, 16) for k, v in root.items() if k} == {
        "CapInh": 0, "CapPrm": nine, "CapEff": nine, "CapBnd": nine, "CapAmb": 0}
    user = _status(_run(secure_daemon, "--user", "65534", "busybox", "grep", "^Cap",
                        "/proc/self/status"))
    assert {k: int(v, 16) for k, v in user.items() if k} == {
        "CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": nine, "CapAmb": 0}


def test_check_02_no_new_privs(secure_daemon):
    status = _status(_run(secure_daemon, "busybox", "cat", "/proc/self/status"))
    assert status["NoNewPrivs"] == "1"


def test_check_02_seccomp_filter_in_force(secure_daemon):
    status = _status(_run(secure_daemon, "busybox", "cat", "/proc/self/status"))
    assert status["Seccomp"] == "2"


MASKED = ("/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
          "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
          "/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware")


def test_check_03_masked_paths_empty_unwritable_unmountable(secure_daemon):
    script = "".join(
        f'p={p}; if [ -d $p ]; then echo "$p $(ls -A $p | wc -l)"; '
        f'elif [ -e $p ]; then echo "$p $(cat $p 2>/dev/null | wc -c)"; fi; '
        f'(echo x > $p) 2>/dev/null && echo "WROTE $p"; '
        f'(touch $p/x) 2>/dev/null && echo "MADE $p/x"; '
        f'umount $p 2>/dev/null && echo "UNMOUNTED $p"; '
        f'umount -l $p 2>/dev/null && echo "UNMOUNTED $p"; '
        for p in MASKED)
    # Masked files are /dev/null binds as in runc and crun: a write "succeeds" into
    # /dev/null (a device node ignores a read-only mount), reaches nothing and reads
    # back empty; masked directories refuse writes (read-only empty tmpfs).
    script += "".join(f"[ -f {p} ] && echo AFTER {p} $(cat {p} | wc -c); " for p in MASKED)
    out = _run(secure_daemon, "busybox", "sh", "-c", script + "true")
    lines = out.splitlines()
    assert not [line for line in lines if line.split()[0] in ("MADE", "UNMOUNTED")]
    assert not [line for line in lines if line.split()[0] == "WROTE"
                and line.split()[1] not in ("/proc/interrupts", "/proc/keys",
                                            "/proc/timer_list", "/proc/kcore",
                                            "/proc/latency_stats", "/proc/sched_debug",
                                            "/proc/timer_stats")], out
    assert all(line.endswith(" 0") for line in lines if line.startswith("AFTER")), out
    lines = [line for line in lines if line.split()[0] not in ("WROTE", "AFTER")]
    sizes = dict(line.split() for line in lines)
    assert sizes and all(size == "0" for size in sizes.values()), out
    assert "/proc/keys" in sizes and "/sys/firmware" in sizes


PROC_SYS = tuple(p for p in ("/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe",
                             "/proc/sys/kernel/hostname", "/proc/sys/kernel/panic")
                 if os.path.exists(p))        # no modprobe on a kernel without modules


def test_check_04_proc_sys_and_sysrq_unwritable_host_unchanged(secure_daemon):
    before = {p: Path(p).read_bytes() for p in PROC_SYS}
    script = "".join(f"(echo '|/tmp/evil %p' > {p}) 2>/dev/null && echo WROTE {p}; "
                     for p in (*PROC_SYS, "/proc/sysrq-trigger"))
    script += ("(echo h > /proc/sysrq-trigger) 2>/dev/null && echo WROTE sysrq; "
               "mount -o remount,rw /proc/sys 2>/dev/null && echo REMOUNTED; "
               "umount /proc/sys 2>/dev/null && echo UNMOUNTED; echo end")
    for net in ("none", "host"):
        out = _run(secure_daemon, "--net", net, "busybox", "sh", "-c", script)
        assert out.split() == ["end"], out
    assert {p: Path(p).read_bytes() for p in PROC_SYS} == before


def test_check_06_dev_exact_and_mknod_fails(secure_daemon):
    out = _run(secure_daemon, "busybox", "sh", "-c",
               "ls -A /dev; echo ---; ls -ln /dev | grep '^c'; echo ---; "
               "mknod /tmp/sda b 8 0 2>/dev/null && echo MADE-b; "
               "mknod /dev/mem2 c 1 1 2>/dev/null && echo MADE-c; "
               "mknod /tmp/kmsg c 1 11 2>/dev/null && echo MADE-kmsg; echo end")
    names, chars, tail = out.split("---\n")
    assert set(names.split()) == {"null", "zero", "full", "random", "urandom", "tty",
                                  "ptmx", "pts", "shm", "mqueue", "fd", "stdin", "stdout",
                                  "stderr"}
    numbers = {(line.split()[4].rstrip(","), line.split()[5]) for line in chars.splitlines()}
    assert numbers == {("1", "3"), ("1", "5"), ("1", "7"), ("1", "8"), ("1", "9"),
                       ("5", "0")}
    assert tail.split() == ["end"]


def test_check_07_namespaces_pid1_and_host_pids(secure_daemon):
    d = secure_daemon
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        out = _run(d, "busybox", "sh", "-c",
                   "for n in mnt uts ipc net pid cgroup; do readlink /proc/self/ns/$n; done;"
                   f" echo $$; ls /proc | grep -c '^[0-9]'; kill -0 {sleeper.pid}; echo $?;"
                   f" kill -9 {sleeper.pid} 2>&1; ls /proc/{sleeper.pid} 2>&1 | head -1")
        lines = out.splitlines()
        host = [os.readlink(f"/proc/self/ns/{n}")
                for n in ("mnt", "uts", "ipc", "net", "pid", "cgroup")]
        assert all(a != b for a, b in zip(lines[:6], host))
        assert lines[6] == "1" and int(lines[7]) <= 4
        assert lines[8] == "1" and "No such process" in out
        assert sleeper.poll() is None, "a container killed a host process"
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("user", ["root", "1000"])
def test_check_07_an_init_shows_no_host_command_line(secure_daemon, user):
    """--init's reaper is forked from the fork server without an exec: its argv (the
    daemon's state directory, its flags) must not be what /proc/1/cmdline shows."""
    out = _run(secure_daemon, "--init", "-u", user, "busybox", "sh", "-c",
               "tr '\\0' '|' < /proc/1/cmdline; echo; cat /proc/1/comm")
    assert out == "sbx-init -- sh -c tr '\\0' '|' < /proc/1/cmdline; echo; cat /proc/1/comm|" \
        "\nsbx-init\n", out
    assert secure_daemon.root not in out


def test_check_07_two_containers_cannot_see_or_signal_each_other(secure_daemon):
    d = secure_daemon
    a = "iso-a-" + uuid.uuid4().hex[:6]
    d.sbx("run", "-d", "--name", a, "busybox", "sleep", "600", check=True)
    try:
        host_pid = int(d.sbx("inspect", "-f", "{{.State.Pid}}", a, check=True).out)
        out = _run(d, "busybox", "sh", "-c",
                   f"ls /proc | grep -c '^[0-9]'; kill -9 {host_pid} 2>&1; "
                   "kill -9 -1 2>&1; echo end")
        assert "end" in out
        state = d.sbx("inspect", "-f", "{{.State.Status}}", a, check=True).out.strip()
        assert state == "running"
        assert Path(f"/proc/{host_pid}").exists()
    finally:
        d.sbx("rm", "-f", a)


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_check_10_setup_process_exe_cannot_be_opened(secure_daemon):
    """CVE-2019-5736: while ``exec`` enters a container, its process is the host's Python
    (the fork server's) until execve. A watcher inside tries every process's
    /proc/<pid>/exe for writing (and for reading, and its fd/ directory) during 30 execs;
    the setup process is non-dumpable, so none opens, and the host's binaries hash the
    same afterwards."""
    d = secure_daemon
    name = "exe-" + uuid.uuid4().hex[:6]
    watcher = (
        "while :; do for p in /proc/[0-9]*; do "
        "  t=$(readlink $p/exe 2>/dev/null) || continue; "
        "  case $t in /bin/*|'') continue;; esac; "
        "  echo SEEN $p $t; "
        "  (exec 3>$p/exe) 2>/dev/null && echo OPENED-W $t; "
        "  (exec 3<$p/exe) 2>/dev/null && echo OPENED-R $t; "
        "  ls $p/fd/ >/dev/null 2>&1 && echo FDS $t; "
        "done; done")
    binaries = {p: _sha(p) for p in {os.path.realpath(sys.executable),
                                     os.path.realpath("/bin/sh")}}
    d.sbx("run", "-d", "--name", name, "busybox", "sh", "-c", watcher, check=True)
    try:
        with d.client() as client:       # 30 exec windows, without a CLI process each
            container = client.containers.get(name)
            for _ in range(30):
                assert container.exec(["true"]).exit_code == 0
        out = d.sbx("logs", name).out
        assert not [line for line in out.splitlines()
                    if line.startswith(("OPENED", "FDS", "SEEN"))], out[-3000:]
    finally:
        d.sbx("rm", "-f", name)
    assert {p: _sha(p) for p in binaries} == binaries
