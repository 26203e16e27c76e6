"""Limits hold against the code inside (CHECKS.md 18, and the cgroupfs/release_agent part
of 8): from inside a container, on every network mode, in its pid 1 and in an exec'd
process, every write into cgroupfs (each ``cgroup.procs``, ``tasks``, limit,
``notify_on_release``, ``release_agent`` it can find), every ``mkdir``, mount, remount and
unmount is attempted; then the host checks that nothing changed, and a memory hog and a
fork bomb run into the limits they tried to lift. The template's clones (the pytest
worker's path) get the same attempt in test_check_18_template_clone_cannot_lift_limits.
"""
from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import pytest

from harness import CGROUP_ROOT, wait_until

MEMORY = 16 << 20
TEMPLATE_MEMORY = 48 << 20         # Python itself takes ~10 MiB
PIDS = 32

# Busybox sh. Prints one line per success (WROTE/MADE/MOUNTED ...): the test wants none,
# and a few facts (how many files it tried, what it reads as its own limits).
GUARD = r'''
mkdir -p /tmp
# Fail safe: if any cgroupfs here is writable (the bug), say so and touch nothing: the
# attempts below would otherwise rewrite the host's cgroups.
awk '{for (i = 7; i <= NF; i++) if ($i == "-") fs = $(i + 1)
      if ((fs == "cgroup" || fs == "cgroup2") && $6 !~ /^ro(,|$)/) print "RW " $5}' \
    /proc/self/mountinfo > /tmp/rw
if [ -s /tmp/rw ]; then cat /tmp/rw; exit 0; fi
'''
ESCAPE = GUARD + r'''
tried=0
for f in $(find /sys/fs/cgroup -type f 2>/dev/null); do
  tried=$((tried+1))
  # The file's own value (a no-op, were it writable), then this shell's pid.
  if (cat "$f" > "$f") 2>/dev/null; then echo "WROTE $f"; fi
  case "$f" in
    */cgroup.procs|*/tasks|*/cgroup.threads)
      (echo $$ > "$f") 2>/dev/null && echo "WROTE $f"
      (echo 0 > "$f") 2>/dev/null && echo "WROTE0 $f";;
    */release_agent) echo "FOUND $f";;
  esac
done
echo "TRIED $tried"
for d in /sys/fs/cgroup /sys/fs/cgroup/memory /sys/fs/cgroup/pids /sys/fs/cgroup/cpu \
         /sys/fs/cgroup/memory/../..; do
  mkdir "$d/escape-$$" 2>/dev/null && echo "MADE $d/escape-$$"
done
mkdir -p /tmp/cg
for opts in memory pids cpu rdma none,name=x; do
  mount -t cgroup -o "$opts" cgroup /tmp/cg 2>/dev/null && echo "MOUNTED cgroup $opts"
done
mount -t cgroup2 none /tmp/cg 2>/dev/null && echo "MOUNTED cgroup2"
for m in /sys/fs/cgroup/memory /sys/fs/cgroup/pids /sys/fs/cgroup /sys; do
  mount -o remount,rw "$m" 2>/dev/null && echo "REMOUNTED $m"
  mount -o remount,bind,rw "$m" 2>/dev/null && echo "REMOUNTED bind $m"
done
for m in /sys/fs/cgroup/memory /sys/fs/cgroup /sys; do
  umount "$m" 2>/dev/null && echo "UNMOUNTED $m"
  umount -l "$m" 2>/dev/null && echo "UNMOUNTED lazy $m"
done
echo "LIMIT $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)"
echo "PIDS $(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max)"
echo "CGROUP $(cat /proc/self/cgroup | tr '\n' ' ')"
'''
# Then the limits, after all that: 2^24 characters, well past 16 MiB in busybox's sh.
HOG = "x=a; i=0; while [ $i -lt 24 ]; do x=$x$x; i=$((i+1)); done; echo ${#x}"
BOMB = ("(i=0; while [ $i -lt 100 ]; do sleep 60 >/dev/null 2>&1 & i=$((i+1)); done) "
        "2>/dev/null; "
        "set -- /proc/[0-9]*; echo TASKS $#")


def _successes(out: str) -> list[str]:
    return [line for line in out.splitlines()
            if line.split(" ")[0] in ("WROTE", "WROTE0", "FOUND", "MADE", "MOUNTED",
                                      "REMOUNTED", "UNMOUNTED", "RW")]


def _facts(out: str) -> dict[str, str]:
    return {k: v for k, _, v in (line.partition(" ") for line in out.splitlines())
            if k in ("TRIED", "LIMIT", "PIDS", "CGROUP", "TASKS")}


def _escapes(top: Path) -> list[str]:
    """Every cgroup named escape-* below ``top``; a directory another process removes
    while this walks is skipped (``Path.glob`` would fail on it)."""
    return sorted(os.path.join(parent, d) for parent, dirs, _ in os.walk(top)
                  for d in dirs if d.startswith("escape-"))


def _host_state(daemon, cid: str) -> dict:
    """What a successful escape would change, read on the host: the top of every
    hierarchy (new cgroups, release_agent, notify_on_release, root tasks), the daemon's
    parent, and the container's own limits and members."""
    state: dict = {}
    for top in sorted(Path(CGROUP_ROOT).iterdir()):
        if not top.is_dir():
            continue
        # Other daemons on the machine make and remove cgroups: only ours are counted.
        state[f"{top}:escapes"] = _escapes(top)
        for name in ("release_agent", "notify_on_release", "cgroup.clone_children",
                     "cgroup.max.descendants", "cgroup.max.depth"):
            if (top / name).exists():
                state[f"{top}/{name}"] = (top / name).read_text()
        for parent in top.glob(daemon.parent):
            state[f"{parent}:dirs"] = sorted(p.name for p in parent.iterdir() if p.is_dir())
            own = parent / cid
            for name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes",
                         "pids.max", "cpu.cfs_quota_us", "cpu.shares", "notify_on_release",
                         "devices.list", "freezer.state"):
                if (own / name).exists():
                    state[f"{own}/{name}"] = (own / name).read_text()
    return state


def _members(daemon, cid: str) -> set[str]:
    """The container's processes as each of its hierarchies lists them: all the same."""
    seen = {c: Path(f"{CGROUP_ROOT}/{c}/{daemon.parent}/{cid}/cgroup.procs").read_text()
            for c in ("memory", "pids", "cpu", "freezer", "devices")}
    assert len(set(seen.values())) == 1, f"a process left one of its cgroups: {seen}"
    return set(next(iter(seen.values())).split())


NETWORKS = ["none", "bridge", "host", "container"]


@pytest.fixture(scope="module")
def peer(secure_daemon):
    """A running container whose network the ``container:`` case joins."""
    name = "cgfs-peer-" + uuid.uuid4().hex[:6]
    secure_daemon.sbx("run", "-d", "--name", name, "busybox", "sleep", "600", check=True)
    yield name
    secure_daemon.sbx("rm", "-f", name, check=True)


@pytest.mark.parametrize("net", NETWORKS)
def test_check_18_cgroupfs_is_read_only_and_limits_hold(secure_daemon, peer, net):
    d = secure_daemon
    mode = f"container:{peer}" if net == "container" else net
    name = f"cgfs-{net}-" + uuid.uuid4().hex[:6]
    # pid 1 attacks first, then waits; the exec'd process attacks next.
    d.sbx("run", "-d", "--name", name, "--net", mode, "-m", "16m", "--pids-limit", str(PIDS),
          "busybox", "sh", "-c", "(" + ESCAPE + ")\necho DONE; exec sleep 600",
          check=True)
    try:
        cid = d.sbx("inspect", "-f", "{{.Id}}", name, check=True).out.strip()
        wait_until(lambda: "DONE" in d.sbx("logs", name).out, 60, "pid 1's attempt")
        before = _host_state(d, cid)
        out = d.sbx("logs", name).out
        assert _successes(out) == [], out
        facts = _facts(out)
        assert int(facts["TRIED"]) > 50, out          # it found cgroupfs and tried it all
        assert (facts["LIMIT"], facts["PIDS"]) == (str(MEMORY), str(PIDS)), out
        assert all(line.endswith(":/") for line in facts["CGROUP"].split()), out
        assert before[f"{CGROUP_ROOT}/memory/{d.parent}/{cid}/memory.limit_in_bytes"] \
            .strip() == str(MEMORY)

        ex = d.sbx("exec", name, "sh", "-c", ESCAPE)
        assert ex.returncode == 0 and _successes(ex.out) == [], ex.out + ex.err
        assert _facts(ex.out)["LIMIT"] == str(MEMORY)
        assert _host_state(d, cid) == before, "an attempt changed the host's cgroups"
        pid1 = d.sbx("inspect", "-f", "{{.State.Pid}}", name, check=True).out.strip()
        assert pid1 in _members(d, cid)           # pid 1 is still in its own cgroup

        # The limits, after all that: a hog in an exec is OOM-killed at 16 MiB ...
        hog = d.sbx("exec", name, "sh", "-c", ESCAPE + HOG)
        assert hog.returncode == 137, hog.out + hog.err
        assert _successes(hog.out) == []
        # ... and a fork bomb stops at the pids limit (pid 1 and its sleep count too).
        bomb = d.sbx("exec", name, "sh", "-c", ESCAPE + BOMB)
        assert _successes(bomb.out) == [], bomb.out
        assert int(_facts(bomb.out)["TASKS"]) <= PIDS, bomb.out
        assert _host_state(d, cid) == before
    finally:
        d.sbx("rm", "-f", name)
    wait_until(lambda: not list(Path(CGROUP_ROOT).glob(f"*/{d.parent}/{cid}")), 15,
               "the container's cgroups to go")


@pytest.mark.parametrize("net", ["none", "host"])
def test_check_18_pid1_hog_is_oom_killed_after_trying_to_escape(secure_daemon, net):
    d = secure_daemon
    name = f"cgfs-oom-{net}-" + uuid.uuid4().hex[:6]
    run = d.sbx("run", "--name", name, "--net", net, "-m", "16m", "busybox", "sh", "-c",
                GUARD + "echo $$ > /sys/fs/cgroup/memory/cgroup.procs; "
                "echo -1 > /sys/fs/cgroup/memory/memory.limit_in_bytes; " + HOG)
    try:
        state = d.sbx("inspect", "-f", "{{.State.ExitCode}} {{.State.OOMKilled}}", name,
                      check=True).out.split()
        assert state == ["137", "true"], run.out + run.err
        assert "Read-only file system" in run.err
    finally:
        d.sbx("rm", "-f", name)


def test_check_08_no_writable_release_agent_and_no_cgroupfs_mount(secure_daemon):
    """CVE-2022-0492: no release_agent exists inside, none can be made by mounting a
    hierarchy (no CAP_SYS_ADMIN; the ``unshare -U`` route is the seccomp filter's)."""
    out = secure_daemon.sbx("run", "--rm", "busybox", "sh", "-c", ESCAPE, check=True).out
    assert not [line for line in out.splitlines() if line.startswith(("FOUND", "MOUNTED"))]
    find = secure_daemon.sbx("run", "--rm", "busybox", "sh", "-c",
                             "find / -xdev -name release_agent; find /sys -name release_agent;"
                             " echo end", check=True).out
    assert find.split() == ["end"]


TEMPLATE_PROBE = '''
import json, os, subprocess


def main():
    script = os.environ["SCRIPT"]
    done = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True)
    print(json.dumps({"out": done.stdout, "code": done.returncode}))
    return 0
'''


def test_check_18_template_clone_cannot_lift_limits(tmp_path):
    """The pytest/notebook worker's path: pid 1 is a clone of the runner's template, not
    an exec. The same attempt from Python, then the hog."""
    from sandboxd.images.host import host_rootfs
    from sandboxd.runner import Runner
    from sandboxd.runner.spec import ContainerSpec, Limits, Mount, Process, RootFS
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "sbx_cgfs_probe.py").write_text(TEMPLATE_PROBE)
    repo = str(Path(__file__).resolve().parents[2])
    parent = f"sandboxd-test-cgfs-{os.getpid()}"
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(probe), repo, saved]))
    try:
        runner = Runner(state_dir=str(tmp_path / "runner"), cgroup_parent=parent,
                        template_entries=("sbx_cgfs_probe:main",))
        runner.start()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved
    skeleton, host_mounts = host_rootfs(tmp_path / "host")
    try:
        # The host's sh (dash) keeps a doubled string compactly: a 100 MB one instead.
        hog = "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}"
        for i, script in enumerate((ESCAPE, ESCAPE + hog)):
            # The host's own tree, read-only (what the pytest worker runs in).
            spec = ContainerSpec(
                id=f"cgfs{os.getpid()}-{i}", entry="sbx_cgfs_probe:main",
                process=Process(args=(sys.executable, "-m", "sbx_cgfs_probe"),
                                env=(f"SCRIPT={script}", f"PYTHONPATH={probe}")),
                root=RootFS(lowerdirs=(str(skeleton),)),
                mounts=(Mount("/tmp", "tmpfs", options=("mode=1777",)), *host_mounts,
                        Mount(str(probe), "bind", str(probe), readonly=True),
                        Mount(repo, "bind", repo, readonly=True)),
                limits=Limits(memory=TEMPLATE_MEMORY, pids=PIDS))
            result = runner.run(spec, timeout=120)
            if script == ESCAPE:
                assert result.exit_code == 0, result.stderr.decode()
                report = json.loads(result.stdout)
                assert _successes(report["out"]) == [], report["out"]
                assert _facts(report["out"])["LIMIT"] == str(TEMPLATE_MEMORY)
            else:
                # The kernel kills the biggest task: the shell, or Python with it.
                assert result.oom_killed, (result, result.stderr[-2000:])
                if result.exit_code == 0:
                    report = json.loads(result.stdout)
                    assert report["code"] == -9 and _successes(report["out"]) == []
    finally:
        runner.close()
        for path in Path(CGROUP_ROOT).glob(f"*/{parent}"):
            assert not [p for p in path.iterdir() if p.is_dir()]
            path.rmdir()
