"""End to end: the real ``sbx`` CLI process and the Python ``Client`` against a real
daemon subprocess (``conftest.Daemon``), real containers, real cgroups.

Most tests share the session daemon (started with ``--default-ulimit nofile=1280:2560``);
each names its containers and removes them. Tests that need to kill a daemon live in
``test_daemon_restart.py``.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Iterator

import pytest

import sandboxd
from sandboxd import errors, testing

from harness import PY, REPO, Daemon, pid_alive, running, wait_until

MEMORY_HOG = "x=a; while true; do x=$x$x; done"


def inspect(daemon: Daemon, name: str) -> dict:
    docs = json.loads(daemon.sbx("inspect", name, check=True).out)
    assert len(docs) == 1
    return docs[0]


def all_names(daemon: Daemon) -> set[str]:
    return set(daemon.sbx("ps", "-a", "--format", "{{.Names}}", check=True).out.split())


# ---------------------------------------------------------------- run: refused flags

@pytest.mark.parametrize("args, words", [
    (["-m", "1k"], "host.memory: minimum is 6MiB"),
    (["--memory-swap", "32m", "-m", "64m"], "host.memory_swap"),
    (["--cpus", "1", "--cpu-quota", "50000"], "--cpus and --cpu-quota cannot both be set"),
    (["--cpus", str(len(os.sched_getaffinity(0)) + 1)], "range of CPUs is from 0.01 to"),
    (["--ulimit", "nofile=2:1"], "above the hard limit"),
    (["-v", "b@d:/x"], "includes invalid characters for a local volume name"),
    (["-p", "99999:80"], "host port '99999'"),
    (["-e", "=x"], "env[0]"),
    (["--name", "a"], "invalid container name"),
    (["--stop-signal", "SIGNOPE"], "unknown signal"),
])
def test_bad_flag_values_are_refused_and_create_nothing(daemon: Daemon, args: list[str],
                                                         words: str) -> None:
    # sbx sends its flags as given; the daemon builds and checks them (one model).
    before = set(daemon.ids("-a"))
    for command in ("run", "create"):
        r = daemon.sbx(command, *args, "busybox", "true")
        assert r.returncode == 125, r.err
        assert words in r.err and "Error response from daemon" in r.err
        assert f"See 'sbx {command} --help'." in r.err
    assert set(daemon.ids("-a")) == before
    assert not daemon.cgroup_children()


def test_every_bad_flag_value_is_reported_together(daemon: Daemon) -> None:
    r = daemon.sbx("run", "-m", "1k", "-p", "99999:80", "-e", "=x", "busybox")
    assert r.returncode == 125
    assert "host.memory" in r.err and "99999" in r.err and "env[0]" in r.err


def test_env_names_and_files_are_resolved_from_the_callers_environment(
        daemon: Daemon, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE=1\nBOTH=file\nPASSED\n")
    r = daemon.sbx("run", "--rm", "--env-file", str(env_file), "-e", "BOTH=flag",
                   "-e", "PASSED", "-e", "UNSET_HERE", "busybox", "env",
                   env={"PASSED": "from-caller"})
    assert r.returncode == 0, r.err
    lines = r.out.splitlines()
    assert "FROM_FILE=1" in lines and "BOTH=flag" in lines and "PASSED=from-caller" in lines
    assert not any(line.startswith("UNSET_HERE") for line in lines)
    r = daemon.sbx("run", "--rm", "--env-file", str(tmp_path / "missing"), "busybox", "true")
    assert r.returncode == 125 and "env-file" in r.err and "missing" in r.err


# ---------------------------------------------------------------- run: output and exits

def test_run_output_and_exit_codes(daemon: Daemon) -> None:
    before = set(daemon.ids("-a"))
    r = daemon.sbx("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.out, r.err) == (3, "out\n", "err\n")
    assert daemon.sbx("run", "--rm", "busybox", "true").returncode == 0

    r = daemon.sbx("run", "--rm", "busybox", "no-such-command")
    assert r.returncode == 127
    assert "executable file not found in $PATH" in r.err and "no-such-command" in r.err

    r = daemon.sbx("run", "--rm", "busybox", "/etc/passwd")       # exists, not executable
    assert r.returncode == 126, r.err

    # --rm leaves nothing: no record, no directory under the root, no cgroup.
    assert set(daemon.ids("-a")) == before
    assert sorted(os.listdir(Path(daemon.root) / "containers")) == sorted(before)
    assert not daemon.cgroup_children()


def test_client_run(daemon: Daemon) -> None:
    with daemon.client() as client:
        result = client.run("busybox", ["sh", "-c", "cat; echo -n done >&2; exit 4"],
                            input=b"in-put\n")
        assert (result.exit_code, result.stdout, result.stderr) == (4, b"in-put\n", b"done")
        with pytest.raises(errors.CommandNotFound):
            client.run("busybox", ["no-such-command"])


def test_oom_kill_is_137_and_recorded(daemon: Daemon) -> None:
    r = daemon.sbx("run", "-d", "--name", "e2e-oom", "-m", "64m", "busybox", "sh", "-c",
                   MEMORY_HOG, check=True)
    container_id = r.out.strip()
    assert daemon.sbx("wait", "e2e-oom", check=True).out.strip() == "137"
    state = daemon.sbx("inspect", "-f", "{{.State.Status}} {{.State.OOMKilled}} "
                       "{{.State.ExitCode}}", "e2e-oom", check=True).out.split()
    assert state == ["exited", "true", "137"]
    doc = inspect(daemon, "e2e-oom")
    assert doc["Id"] == container_id
    assert doc["HostConfig"]["Memory"] == 67108864
    daemon.sbx("rm", "e2e-oom", check=True)
    assert "e2e-oom" not in all_names(daemon)


def test_timeout_kills_with_137(daemon: Daemon) -> None:
    r = daemon.sbx("run", "--rm", "--timeout", "1", "busybox", "sleep", "30")
    assert r.returncode == 137
    assert "timed out" in r.err
    with daemon.client() as client:
        result = client.run("busybox", ["sleep", "30"], timeout=1)
        assert result.timed_out and result.exit_code == 137


def test_ulimits_default_and_per_container(daemon: Daemon) -> None:
    show = ["sh", "-c", "ulimit -n; ulimit -Hn"]
    r = daemon.sbx("run", "--rm", "busybox", *show, check=True)
    assert r.out.split() == ["1280", "2560"]          # the daemon's --default-ulimit
    r = daemon.sbx("run", "--rm", "--ulimit", "nofile=128:256", "busybox", *show, check=True)
    assert r.out.split() == ["128", "256"]            # a container's own value wins
    daemon.sbx("run", "-d", "--name", "e2e-ulimit", "--ulimit", "nofile=128:256", "busybox",
               "sleep", "60", check=True)
    r = daemon.sbx("exec", "e2e-ulimit", *show, check=True)
    assert r.out.split() == ["128", "256"]            # execs get the container's ulimits
    daemon.sbx("rm", "-f", "e2e-ulimit", check=True)


def _open_files_limit(pid: int) -> list[str]:
    with open(f"/proc/{pid}/limits") as f:
        line = next(line for line in f if line.startswith("Max open files"))
    return line.split()[3:5]


def test_the_daemon_raises_its_open_files_limit_and_containers_keep_theirs() -> None:
    """Started under a service's soft limit (systemd's 1024, 256 here), the daemon and
    its helpers run with the hard one (a few fds per running container); a container
    still gets Docker's 1024 (or less: the hard limit) unless told otherwise."""
    d = Daemon(wrap=("prlimit", "--nofile=256:4096")).start()
    try:
        d.import_busybox()
        assert _open_files_limit(d.proc.pid) == ["4096", "4096"]
        (forkserver,) = d.forkserver_pids()
        assert _open_files_limit(forkserver) == ["4096", "4096"]
        r = d.sbx("run", "--rm", "busybox", "sh", "-c", "ulimit -n; ulimit -Hn", check=True)
        assert r.out.split() == ["1024", "4096"]
    finally:
        d.stop()


def test_a_daemon_out_of_fds_refuses_clearly_loses_no_output_and_recovers() -> None:
    """At its open-files limit (42 here: a few fds per container), concurrent runs are
    refused as unavailable, naming the limit, with no traceback in the log; a run that
    starts gets all of its output (the log file it could not open loses it, not the
    client), and no fd is kept. Before: an internal error with a traceback per request,
    a /dev/null and a pipe kept per refused start, and runs whose output was lost."""
    import threading

    d = Daemon(wrap=("prlimit", "--nofile=42:42")).start()
    try:
        d.import_busybox()
        assert d.proc is not None
        fd_dir = f"/proc/{d.proc.pid}/fd"
        d.sbx("run", "--rm", "busybox", "true", check=True)
        before = len(os.listdir(fd_dir))
        outcomes: list[str] = []

        def runs() -> None:
            with d.client() as client:
                for _ in range(15):
                    try:
                        r = client.run("busybox", ["sh", "-c", "echo hi; sleep 0.2"])
                        outcomes.append("ok" if r.stdout == b"hi\n" else f"lost: {r}")
                    except errors.Unavailable as e:
                        assert "out of file descriptors" in str(e) and "42" in str(e), e
                        outcomes.append("refused")
                    except errors.SandboxError as e:
                        outcomes.append(f"{e.code}: {e}")
        threads = [threading.Thread(target=runs) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert {o for o in outcomes} <= {"ok", "refused"}, \
            [o for o in outcomes if o not in ("ok", "refused")][:3]
        assert "ok" in outcomes and "refused" in outcomes, outcomes.count("ok")
        wait_until(lambda: len(os.listdir(fd_dir)) <= before, 10,
                   "the daemon's fds back to where they were")
        assert d.sbx("run", "--rm", "busybox", "echo", "after", check=True).out == "after\n"
        assert "Traceback" not in d.log(1 << 30)
    finally:
        d.stop()


def test_uts_modes(daemon: Daemon) -> None:
    r = daemon.sbx("run", "--rm", "--uts", "host", "busybox", "hostname", check=True)
    assert r.out.strip() == os.uname().nodename
    r = daemon.sbx("run", "-d", "--name", "e2e-uts", "busybox", "hostname", check=True)
    daemon.sbx("wait", "e2e-uts", check=True)
    assert daemon.sbx("logs", "e2e-uts", check=True).out.strip() == r.out.strip()[:12]
    daemon.sbx("rm", "e2e-uts", check=True)
    # --network host: the host's name (its own UTS namespace still), as Docker; -h wins.
    for flags, name in (((), os.uname().nodename), (("-h", "given"), "given")):
        r = daemon.sbx("run", "--rm", "--network", "host", *flags, "busybox", "sh", "-c",
                       "hostname; cat /etc/hostname", check=True)
        assert r.out.split() == [name, name]


def _piped_to_head(daemon: Daemon, *args: str) -> str:
    """``sbx ARGS | head -n 2`` as a shell runs it: head exits after two lines, and sbx,
    still writing, meets a closed pipe. Its status is a SIGPIPE death's (141), whatever
    the command, as the docker CLI's (click's own handling made it 1), said quietly."""
    sbx = " ".join([PY, "-m", "sandboxd", *args])
    done = subprocess.run(["bash", "-c", f'{sbx} | head -n 2; echo "${{PIPESTATUS[0]}}" >&2'],
                          capture_output=True, text=True, env=daemon.env, cwd=REPO,
                          timeout=60)
    assert done.stderr == "141\n", (args, done.stderr)
    return done.stdout


def test_a_client_gone_mid_output_cancels_its_run_and_exec(daemon: Daemon) -> None:
    """`sbx run --rm IMAGE yes | head`: the client dies while the daemon is sending it
    output, and its requests are cancelled as when it hangs up between frames: the run's
    container is killed and removed, an exec's process killed. A failed send used to end
    the request before the hang-up was read, and `yes` ran on at full speed."""
    for _ in range(12):                         # it was a race: 4 in 20 left one
        assert _piped_to_head(daemon, "run", "--rm", "-l", "e2e=chatty", "busybox",
                              "yes") == "y\ny\n"
    wait_until(lambda: not daemon.sbx("ps", "-aq", "-f", "label=e2e=chatty",
                                      check=True).out.strip(), 15,
               "the --rm container killed and removed")

    daemon.sbx("run", "-d", "--name", "e2e-chatty", "busybox", "sh", "-c",
               "while true; do echo line; sleep 0.01; done", check=True)
    try:
        assert _piped_to_head(daemon, "logs", "-f", "e2e-chatty") == "line\nline\n"
        for _ in range(8):
            assert _piped_to_head(daemon, "exec", "e2e-chatty", "yes") == "y\ny\n"
        wait_until(lambda: "yes" not in daemon.sbx("top", "e2e-chatty", check=True).out,
                   15, "the exec's process killed")
    finally:
        daemon.sbx("rm", "-f", "e2e-chatty")


# ---------------------------------------------------------------- lifecycle

def test_lifecycle(daemon: Daemon) -> None:
    script = "echo one; echo two; echo three; trap 'exit 0' TERM; while true; do sleep 0.1; done"
    r = daemon.sbx("run", "-d", "--name", "e2e-life", "-m", "64m", "busybox", "sh", "-c",
                   script, check=True)
    cid = r.out.strip()
    assert len(cid) == 64
    ps = daemon.sbx("ps", "--format", "{{.Names}} {{.Status}}", check=True).out
    assert any(line.startswith("e2e-life Up") for line in ps.splitlines()), ps

    # exec: env, workdir, user; the container's environment underneath.
    r = daemon.sbx("exec", "-e", "FOO=1", "-w", "/tmp", "-u", "65534", "e2e-life", "sh", "-c",
                   'echo "$FOO $(pwd) $(id -u) $HOSTNAME"; exit 5')
    assert r.returncode == 5
    assert r.out.split() == ["1", "/tmp", "65534", cid[:12]]
    assert daemon.sbx("exec", "e2e-life", "no-such-command").returncode == 127
    env_file = Path(daemon.tmp) / "exec.env"
    env_file.write_text("FOO=from-file\n# a comment\nBAR=b\n")
    r = daemon.sbx("exec", "--env-file", str(env_file), "-e", "FOO=flag", "e2e-life",
                   "sh", "-c", 'echo "$FOO $BAR"', check=True)
    assert r.out == "flag b\n"                          # -e after the file wins
    r = daemon.sbx("exec", "--env-file", str(env_file) + ".missing", "e2e-life", "true")
    assert r.returncode == 125 and "env-file" in r.err, r.err

    wait_until(lambda: "three" in daemon.sbx("logs", "e2e-life").out, what="the output")
    assert daemon.sbx("logs", "--tail", "2", "e2e-life", check=True).out == "two\nthree\n"
    stamped = daemon.sbx("logs", "-t", "e2e-life", check=True).out.splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["one", "two", "three"]
    assert all(line[:4].isdigit() and "T" in line.split(" ")[0] for line in stamped)

    # update: the new limit reaches the kernel.
    memory = lambda: daemon.cgroup_file("memory", cid, "memory.limit_in_bytes")  # noqa: E731
    assert memory() == str(64 << 20)
    daemon.sbx("update", "-m", "32m", "e2e-life", check=True)
    assert memory() == str(32 << 20)
    assert inspect(daemon, "e2e-life")["HostConfig"]["Memory"] == 32 << 20

    # pause freezes every process; unpause thaws them.
    pid = int(daemon.sbx("inspect", "-f", "{{.State.Pid}}", "e2e-life", check=True).out)
    daemon.sbx("pause", "e2e-life", check=True)
    assert "Paused" in daemon.sbx("ps", "--format", "{{.Names}} {{.Status}}", "-f",
                                  "name=e2e-life", check=True).out
    assert daemon.cgroup_file("freezer", cid, "freezer.state") == "FROZEN"
    assert _proc_state(pid) == "D"                  # frozen tasks sleep uninterruptibly
    assert daemon.sbx("exec", "e2e-life", "true").returncode != 0
    assert daemon.sbx("pause", "e2e-life").returncode != 0        # already paused
    daemon.sbx("unpause", "e2e-life", check=True)
    assert daemon.cgroup_file("freezer", cid, "freezer.state") == "THAWED"
    assert daemon.sbx("inspect", "-f", "{{.State.Status}}", "e2e-life").out.strip() == \
        "running"

    # stop (SIGTERM trapped: exit 0), start again (same id, a new process), rm -f.
    daemon.sbx("stop", "-t", "1", "e2e-life", check=True)
    assert daemon.sbx("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}",
                      "e2e-life").out.split() == ["exited", "0"]
    assert not pid_alive(pid)
    assert not daemon.cgroup_children()
    daemon.sbx("start", "e2e-life", check=True)
    new_pid = int(daemon.sbx("inspect", "-f", "{{.State.Pid}}", "e2e-life", check=True).out)
    assert new_pid != pid and pid_alive(new_pid)
    assert daemon.cgroup_file("memory", cid, "memory.limit_in_bytes") == str(32 << 20)
    r = daemon.sbx("rm", "e2e-life")
    assert r.returncode != 0 and "Stop the container" in r.err
    daemon.sbx("rm", "-f", "e2e-life", check=True)
    assert not pid_alive(new_pid)
    assert "e2e-life" not in all_names(daemon)
    assert not (Path(daemon.root) / "containers" / cid).exists()
    assert not daemon.cgroup_children()


def _proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_rename_wait_prune(daemon: Daemon) -> None:
    daemon.sbx("run", "-d", "--name", "e2e-a", "busybox", "sh", "-c", "exit 9", check=True)
    assert daemon.sbx("wait", "e2e-a", check=True).out.strip() == "9"
    daemon.sbx("rename", "e2e-a", "e2e-b", check=True)
    assert {"e2e-b"} <= all_names(daemon) and "e2e-a" not in all_names(daemon)
    daemon.sbx("create", "--name", "e2e-c", "busybox", "true", check=True)
    r = daemon.sbx("rename", "e2e-c", "e2e-b")
    assert r.returncode != 0 and "already in use" in r.err
    daemon.sbx("run", "-d", "--name", "e2e-up", "busybox", "sleep", "60", check=True)
    r = daemon.sbx("container", "prune", "-f", check=True)
    names = all_names(daemon)
    assert "e2e-up" in names and not {"e2e-b", "e2e-c"} & names, r.out
    daemon.sbx("rm", "-f", "e2e-up", check=True)


def test_top_stats_info_version_images(daemon: Daemon) -> None:
    cid = daemon.sbx("run", "-d", "--name", "e2e-top", "-m", "64m", "busybox", "sleep", "60",
                     check=True).out.strip()
    top = daemon.sbx("top", "e2e-top", check=True).out.splitlines()
    assert top[0].split()[:3] == ["UID", "PID", "PPID"]
    assert any(line.endswith("sleep 60") for line in top[1:]), top
    stats = daemon.sbx("stats", "--no-stream", "--format",
                       "{{.Name}} {{.MemUsage}} {{.PIDs}}", "e2e-top", check=True).out
    name, *usage, pids = stats.split()
    assert name == "e2e-top" and pids == "1" and "64MiB" in " ".join(usage), stats
    with daemon.client() as client:
        sample = client.containers.get("e2e-top").stats()
        assert sample["memory_limit"] == 64 << 20 and sample["pids"] == 1

    info = daemon.sbx("info", "--format", "{{json .}}", check=True).out
    doc = json.loads(info)                                     # docker info's names
    assert doc["ContainersRunning"] >= 1 and doc["Images"] >= 1, doc
    assert doc["NCPU"] == os.cpu_count() and doc["Driver"] == "overlay"
    # sbx-setup, once the fork server has built it (in the background on a new host)
    assert doc["ContainerSetup"] in ("sbx-setup", "python"), doc
    assert " Container Setup: " in daemon.sbx("info", check=True).out
    line = daemon.sbx("info", "-f", "{{.ServerVersion}}/{{.CgroupVersion}}", check=True).out
    v2 = not os.path.isdir("/sys/fs/cgroup/memory")           # no v1 memory controller
    assert line.strip() == f"{sandboxd.__version__}/{2 if v2 else 1}"
    version = daemon.sbx("version", "--format", "{{json .}}", check=True).out
    assert "sandboxd" in version
    images = daemon.sbx("images", "--format", "{{.Repository}}:{{.Tag}}", check=True).out
    assert "busybox:latest" in images.split()

    r = daemon.sbx("rmi", "busybox")
    assert r.returncode != 0 and "in use" in r.err and cid[:12] in r.err, r.err
    assert "busybox:latest" in daemon.sbx("images", "--format",
                                          "{{.Repository}}:{{.Tag}}").out.split()
    daemon.sbx("rm", "-f", "e2e-top", check=True)


def test_images_by_repository_and_filter_and_json_rows(daemon: Daemon) -> None:
    daemon.sbx("tag", "busybox", "e2e-filter/app:1.2", check=True)
    try:
        fmt = "{{.Repository}}:{{.Tag}}"
        assert daemon.sbx("images", "e2e-filter/app", "--format", fmt,
                          check=True).out.split() == ["e2e-filter/app:1.2"]
        assert daemon.sbx("images", "-f", "reference=e2e-*/*:1.*", "--format", fmt,
                          check=True).out.split() == ["e2e-filter/app:1.2"]
        bad = daemon.sbx("images", "-f", "status=running")
        assert bad.returncode == 125 and "status=running" in bad.err, bad.err
        for command in (("ps", "-a"), ("network", "ls"), ("images",)):
            lines = daemon.sbx(*command, "--format", "{{json .}}", check=True).out
            assert all(json.loads(line) for line in lines.splitlines()), command
    finally:
        daemon.sbx("rmi", "e2e-filter/app:1.2", check=True)


def test_system_prune_removes_stopped_containers_unused_networks_dangling_images() -> None:
    with running() as d:                     # its own daemon: prune takes everything
        d.sbx("run", "--name", "stopped", "busybox", "true", check=True)
        d.sbx("run", "-d", "--name", "kept", "busybox", "sleep", "60", check=True)
        d.sbx("network", "create", "unused-net", check=True)
        d.sbx("commit", "stopped", check=True)                 # a dangling image
        refused = d.sbx("system", "prune", input="n\n")
        assert "Are you sure" in refused.err and d.ids("-a") and refused.returncode == 0
        out = d.sbx("system", "prune", "-f", check=True).out
        assert out.startswith("Deleted Containers:\n") and "unused-net" in out, out
        assert "Deleted Images:\ndeleted: sha256:" in out and "Total reclaimed space" in out
        assert d.sbx("ps", "-a", "--format", "{{.Names}}").out.split() == ["kept"]
        assert "unused-net" not in d.sbx("network", "ls").out
        assert "busybox" in d.sbx("images").out
        d.sbx("rm", "-f", "kept", check=True)


def test_prune_filters_remove_only_what_they_take(daemon: Daemon) -> None:
    """`container prune --filter` and `network prune --filter` ignored their filters
    and removed every stopped container and unused network."""
    d = daemon
    names = ("pr-keep", "pr-go", "pr-other")
    client = d.client()          # the set-up and the checks; the prunes are the CLI's

    def there() -> set[str]:
        return {c.name for c in client.containers.list(all=True)} & set(names)
    for name, labels in zip(names, (["sbxpr=1", "keep=1"], ["sbxpr=1"], [])):
        client.run("busybox", ["true"], name=name, remove=False, labels=labels, check=True)
        client.networks.create(f"{name}-net", labels=labels)
    try:
        # created now, not before an hour ago: nothing goes
        out = d.sbx("container", "prune", "-f", "--filter", "label=sbxpr=1",
                    "--filter", "until=1h", check=True).out
        assert "pr-" not in out and there() == set(names)
        out = d.sbx("container", "prune", "-f", "--filter", "label=sbxpr=1",
                    "--filter", "label!=keep=1", check=True).out
        assert there() == {"pr-keep", "pr-other"}, out
        d.sbx("network", "prune", "-f", "--filter", "label=keep=1", check=True)
        nets = d.sbx("network", "ls", "--format", "{{.Name}}", check=True).out.split()
        assert "pr-keep-net" not in nets and {"pr-go-net", "pr-other-net"} <= set(nets)
        bad = d.sbx("container", "prune", "-f", "--filter", "status=exited")
        assert bad.returncode != 0 and "status=exited" in bad.err, bad.err
        bad = d.sbx("container", "prune", "-f", "--filter", "until=yesterday")
        assert bad.returncode != 0 and "'yesterday' is not a Unix time" in bad.err, bad.err
        assert there() == {"pr-keep", "pr-other"}                # nothing went
        # images: two dangling commits, one kept by label!, none by until
        go = d.sbx("commit", "-c", "LABEL sbxpr=1", "pr-other", check=True).out.strip()
        kept = d.sbx("commit", "-c", "LABEL sbxpr=1 keep=1", "pr-other",
                     check=True).out.strip()
        d.sbx("image", "prune", "-f", "--filter", "label=sbxpr=1", "--filter", "until=1h",
              check=True)
        assert d.sbx("image", "inspect", go).returncode == 0
        out = d.sbx("image", "prune", "-f", "--filter", "label=sbxpr=1", "--filter",
                    "label!=keep=1", check=True).out
        assert go in out and d.sbx("image", "inspect", go).returncode != 0, out
        assert d.sbx("image", "inspect", kept).returncode == 0
        d.sbx("rmi", kept, check=True)
    finally:
        for container in client.containers.list(all=True):
            if container.name in names:
                container.remove(force=True)
        for network in client.networks.list():
            if network.name in {f"{name}-net" for name in names}:
                network.remove()
        client.close()


# ---------------------------------------------------------------- sbx cp

def test_cp_both_directions(daemon: Daemon, tmp_path: Path) -> None:
    daemon.sbx("run", "-d", "--name", "e2e-cp", "busybox", "sh", "-c",
               "mkdir -p /data/sub && echo deep > /data/sub/f && echo top > /data/t && "
               "ln -s /etc/passwd /data/link && ln -s ../../../../etc /data/up && "
               "exec sleep 60", check=True)
    wait_until(lambda: daemon.sbx("exec", "e2e-cp", "test", "-L", "/data/up").returncode
               == 0, what="the container's files")

    # out of the container: a directory, with symlinks kept as symlinks
    daemon.sbx("cp", "e2e-cp:/data", str(tmp_path / "out"), check=True)
    assert (tmp_path / "out/sub/f").read_text() == "deep\n"
    assert (tmp_path / "out/t").read_text() == "top\n"
    assert os.readlink(tmp_path / "out/link") == "/etc/passwd"
    assert os.readlink(tmp_path / "out/up") == "../../../../etc"
    # a symlink inside the path resolves inside the container's root, never the host's
    r = daemon.sbx("cp", "e2e-cp:/data/up/passwd", "-", check=True)
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tar:
        data = tar.extractfile("passwd").read()
    assert data == (testing.busybox_rootfs() / "etc/passwd").read_bytes()
    assert data != Path("/etc/passwd").read_bytes()
    r = daemon.sbx("cp", "e2e-cp:/no/such", str(tmp_path / "x"))
    assert r.returncode != 0 and "Could not find the file /no/such" in r.err

    # into the container: a file into a directory, and a file under a new name
    (tmp_path / "in.txt").write_text("hello in\n")
    daemon.sbx("cp", str(tmp_path / "in.txt"), "e2e-cp:/tmp/", check=True)
    daemon.sbx("cp", str(tmp_path / "in.txt"), "e2e-cp:/tmp/renamed", check=True)
    r = daemon.sbx("exec", "e2e-cp", "cat", "/tmp/in.txt", "/tmp/renamed", check=True)
    assert r.out == "hello in\nhello in\n"
    # through a symlink to the host's /: lands inside the container
    daemon.sbx("exec", "e2e-cp", "ln", "-s", "/", "/tmp/toroot", check=True)
    daemon.sbx("cp", str(tmp_path / "in.txt"), "e2e-cp:/tmp/toroot/", check=True)
    assert daemon.sbx("exec", "e2e-cp", "cat", "/in.txt", check=True).out == "hello in\n"
    assert not Path("/in.txt").exists()

    with daemon.client() as client:
        container = client.containers.get("e2e-cp")
        data, stat = container.get_archive("/data/t")
        assert stat["name"] == "t" and stat["size"] == 4
        # unsafe entries are refused and nothing is written
        for name in ("../escape", "a/../../escape", ".wh.t"):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                info = tarfile.TarInfo(name)
                info.size = 2
                tar.addfile(info, io.BytesIO(b"x\n"))
            with pytest.raises(errors.InvalidArgument):
                container.put_archive("/data", buf.getvalue())
        assert daemon.sbx("exec", "e2e-cp", "ls", "/data", check=True).out.split() == \
            ["link", "sub", "t", "up"]
        with pytest.raises(errors.InvalidArgument):
            container.put_archive("/data/t", data)            # not a directory
    daemon.sbx("rm", "-f", "e2e-cp", check=True)


def test_cp_with_stopped_and_created_containers(daemon: Daemon, tmp_path: Path) -> None:
    # What a finished test run leaves behind can be copied out, and files copied into a
    # stopped container are there when it starts again (its writable layer is kept).
    r = daemon.sbx("run", "--name", "e2e-cp-done", "busybox", "sh", "-c",
                   "mkdir /results && echo passed > /results/report.txt")
    assert r.returncode == 0, r.err
    daemon.sbx("cp", "e2e-cp-done:/results", str(tmp_path / "results"), check=True)
    assert (tmp_path / "results/report.txt").read_text() == "passed\n"
    (tmp_path / "input.txt").write_text("given\n")
    daemon.sbx("cp", str(tmp_path / "input.txt"), "e2e-cp-done:/results/", check=True)
    assert daemon.sbx("inspect", "-f", "{{.State.Status}}", "e2e-cp-done",
                      check=True).out.strip() == "exited"
    r = daemon.sbx("start", "-a", "e2e-cp-done")       # runs its command again: mkdir fails
    assert "File exists" in r.err
    with daemon.client() as client:
        done = client.containers.get("e2e-cp-done")
        data, stat = done.get_archive("/results/input.txt")
        assert stat["size"] == 6
        daemon.sbx("run", "--name", "e2e-cp-done2", "-v", f"{tmp_path}:/host:ro",
                   "busybox", "true", check=True)
        # mounts are part of the held root: a volume of a stopped container is readable
        data, stat = client.containers.get("e2e-cp-done2").get_archive("/host/input.txt")
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            assert tar.extractfile("input.txt").read() == b"given\n"
    # a created, never started container: its image's files, and writes that persist
    daemon.sbx("create", "--name", "e2e-cp-new", "busybox", "cat", "/etc/motd",
               check=True)
    (tmp_path / "motd").write_text("copied before the first start\n")
    daemon.sbx("cp", str(tmp_path / "motd"), "e2e-cp-new:/etc/motd", check=True)
    r = daemon.sbx("start", "-a", "e2e-cp-new")
    assert (r.returncode, r.out) == (0, "copied before the first start\n"), r.err
    # read-only root: copying out works, copying in is refused
    daemon.sbx("create", "--name", "e2e-cp-ro", "--read-only", "busybox", "true",
               check=True)
    daemon.sbx("cp", "e2e-cp-ro:/bin/busybox", str(tmp_path / "bb"), check=True)
    assert (tmp_path / "bb").stat().st_size > 100_000
    r = daemon.sbx("cp", str(tmp_path / "motd"), "e2e-cp-ro:/etc/")
    assert r.returncode != 0 and "read-only" in r.err
    # --rm: a created container has no layer to keep writes in yet
    daemon.sbx("create", "--rm", "--name", "e2e-cp-rm", "busybox", "true", check=True)
    r = daemon.sbx("cp", str(tmp_path / "motd"), "e2e-cp-rm:/etc/")
    assert r.returncode != 0 and "--rm" in r.err
    for name in ("e2e-cp-done", "e2e-cp-done2", "e2e-cp-new", "e2e-cp-ro", "e2e-cp-rm"):
        daemon.sbx("rm", "-f", name, check=True)
    assert not daemon.cgroup_children()


# ---------------------------------------------------------------- a terminal

def _read_until(fd: int, needle: bytes, seen: bytearray, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no {needle!r} on the terminal; it showed {bytes(seen)!r}")
        if select.select([fd], [], [], left)[0]:
            try:
                seen += os.read(fd, 4096)
            except OSError:          # EIO: the CLI closed the terminal
                pytest.fail(f"terminal closed before {needle!r}; it showed {bytes(seen)!r}")


def _set_size(fd: int, rows: int, cols: int) -> None:
    import fcntl
    import struct
    import termios
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class _TerminalCli:
    """An ``sbx`` process on a terminal of its own (see :func:`_cli_on_terminal`)."""

    def __init__(self, pid: int, master: int) -> None:
        self.pid, self.master = pid, master

    def exit_code(self) -> int:
        """Wait for the CLI to end; its exit code."""
        _, status = os.waitpid(self.pid, 0)
        self.pid = 0
        return os.waitstatus_to_exitcode(status)


@contextlib.contextmanager
def _cli_on_terminal(daemon: Daemon, *args: str, size: tuple[int, int] = (30, 100)
                     ) -> Iterator[_TerminalCli]:
    """``sbx ARGS`` with a terminal (size rows x cols; 0 x 0: one that reports none) as
    its controlling tty and stdio, as a user's; killed at the end of the block unless
    waited for, the terminal's master closed."""
    import fcntl
    import termios
    master, slave = os.openpty()
    _set_size(slave, *size)
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(slave, fd)
            os.chdir(REPO)
            os.execve(PY, [PY, "-m", "sandboxd", *args], daemon.env)
        finally:
            os._exit(99)
    os.close(slave)
    cli = _TerminalCli(pid, master)
    try:
        yield cli
    finally:
        if cli.pid:
            os.kill(cli.pid, signal.SIGKILL)
            os.waitpid(cli.pid, 0)
        os.close(master)


def test_input_typed_before_the_container_runs_reaches_it(daemon: Daemon) -> None:
    # Typed at once, before sbx has even started: the terminal's pending input must not
    # be flushed when sbx makes it raw. A terminal that reports no size (0x0) is fine.
    with _cli_on_terminal(daemon, "run", "-it", "--rm", "busybox", "sh", "-c",
                          "read x; echo got:$x", size=(0, 0)) as cli:
        os.write(cli.master, b"typed-early\n")
        seen = bytearray()
        _read_until(cli.master, b"got:typed-early", seen)
        assert cli.exit_code() == 0, bytes(seen)


def test_interactive_tty(daemon: Daemon) -> None:
    with _cli_on_terminal(daemon, "run", "-it", "--rm", "busybox", "sh") as cli:
        master = cli.master
        seen = bytearray()
        _read_until(master, b"/ # ", seen)          # type at the prompt, as a user does
        os.write(master, b"echo hi-$((1+2))\n")
        _read_until(master, b"hi-3", seen)         # only the shell's output says 3
        os.write(master, b"stty size\n")
        _read_until(master, b"30 100", seen)       # the size the CLI found at start
        _set_size(master, 40, 120)                 # the CLI gets SIGWINCH and passes it on
        deadline = time.monotonic() + 15
        while b"40 120" not in seen:
            os.write(master, b"stty size\n")
            _read_until(master, b"\n", bytearray(), 5)
            time.sleep(0.1)
            while select.select([master], [], [], 0.2)[0]:
                seen += os.read(master, 4096)
            assert time.monotonic() < deadline, f"never resized: {bytes(seen)!r}"
        os.write(master, b"exit 7\n")
        assert cli.exit_code() == 7, bytes(seen)


def test_run_t_has_the_terminals_size_from_the_start(daemon: Daemon) -> None:
    # Docker's ConsoleSize: a command that reads its size at once, before any resize
    # could reach it, gets the CLI's terminal's.
    with _cli_on_terminal(daemon, "run", "-t", "--rm", "busybox", "sh", "-c",
                          "stty size; echo done", size=(33, 101)) as cli:
        seen = bytearray()
        _read_until(cli.master, b"done", seen)
        assert cli.exit_code() == 0, bytes(seen)
    assert bytes(seen).replace(b"\r", b"").startswith(b"33 101\n"), bytes(seen)
    daemon.sbx("run", "-d", "--name", "sizes", "busybox", "sleep", "60", check=True)
    try:
        with _cli_on_terminal(daemon, "exec", "-t", "sizes", "sh", "-c",
                              "stty size; echo done", size=(34, 102)) as cli:
            seen = bytearray()
            _read_until(cli.master, b"done", seen)
            assert cli.exit_code() == 0, bytes(seen)
        assert bytes(seen).replace(b"\r", b"").startswith(b"34 102\n"), bytes(seen)
    finally:
        daemon.sbx("rm", "-f", "sizes", check=True)


def test_detach_keys_leave_the_container_running(daemon: Daemon) -> None:
    """ctrl-p ctrl-q (Docker's default) detaches `run -it`; `attach --detach-keys`
    takes another sequence; a broken sequence reaches the container after all."""
    with _cli_on_terminal(daemon, "run", "-it", "--name", "detachme", "busybox",
                          "sh") as cli:
        seen = bytearray()
        _read_until(cli.master, b"/ # ", seen)
        os.write(cli.master, b"read x; echo \"$x\" | od -c | head -1\n")
        _read_until(cli.master, b"head -1\r\n", seen)
        os.write(cli.master, b"a\x10b\n")                 # ctrl-p then b: passed on
        _read_until(cli.master, b"020", seen)
        os.write(cli.master, b"\x10\x11")
        assert cli.exit_code() == 0, bytes(seen)
    assert daemon.sbx("inspect", "-f", "{{.State.Status}}", "detachme").out.strip() == \
        "running"
    with _cli_on_terminal(daemon, "attach", "--detach-keys", "ctrl-x,e",
                          "detachme") as cli:
        os.write(cli.master, b"echo again-$((2+2))\n")
        _read_until(cli.master, b"again-4", bytearray())
        os.write(cli.master, b"\x18e")
        assert cli.exit_code() == 0
    assert daemon.sbx("inspect", "-f", "{{.State.Status}}", "detachme").out.strip() == \
        "running"
    daemon.sbx("rm", "-f", "detachme", check=True)


def test_exec_detach_keys_leave_the_command_running(daemon: Daemon) -> None:
    """`exec -it` detaches on ctrl-p ctrl-q (or `--detach-keys`): the client exits 0,
    the keys do not reach the command, and it goes on (writing into a discarded
    output)."""
    daemon.sbx("run", "-d", "--name", "execdetach", "busybox", "sleep", "600", check=True)
    try:
        for keys, typed in ((None, b"\x10\x11"), ("ctrl-x,e", b"\x18e")):
            flags = ("--detach-keys", keys) if keys else ()
            with _cli_on_terminal(
                    daemon, "exec", "-it", *flags, "execdetach", "sh", "-c",
                    "echo ready; while :; do echo tick; sleep 0.1; done & read x; "
                    "echo \"$x\" > /tmp/typed; kill $!") as cli:
                _read_until(cli.master, b"ready", bytearray())
                os.write(cli.master, typed)
                assert cli.exit_code() == 0
            time.sleep(0.5)                        # ticks into the discarded output
            top = daemon.sbx("top", "execdetach", check=True).out
            assert "read x" in top or "sh -c" in top, top
            assert daemon.sbx("exec", "execdetach", "cat", "/tmp/typed").returncode != 0
        # exec -d -t: its terminal stays up (no hang-up) while it runs
        daemon.sbx("exec", "-d", "-t", "execdetach", "sh", "-c",
                   "sleep 0.5; echo out; touch /tmp/after-detach", check=True)
        wait_until(lambda: daemon.sbx("exec", "execdetach", "test", "-e",
                                      "/tmp/after-detach").returncode == 0,
                   10, "the detached tty exec to finish")
    finally:
        daemon.sbx("rm", "-f", "execdetach", check=True)


def test_execs_that_cannot_start_leave_no_fds_in_the_daemon(daemon: Daemon) -> None:
    """An exec the container refuses (no such command, no such user) closes the pipes
    the daemon made for it. Each left two open: a daemon racing execs with kills
    reached its open-files limit (20000) within minutes, and then every start failed."""
    assert daemon.proc is not None
    fd_dir = f"/proc/{daemon.proc.pid}/fd"
    daemon.sbx("run", "-d", "--name", "execfds", "busybox", "sleep", "600", check=True)
    try:
        with daemon.client() as client:
            container = client.containers.get("execfds")
            container.exec(["true"])                     # anything made once is made
            before = len(os.listdir(fd_dir))
            for _ in range(20):
                with pytest.raises(errors.CommandNotFound):
                    container.exec(["no-such-command"])
                with pytest.raises(errors.SandboxError, match="nobodyx"):
                    container.exec(["true"], user="nobodyx")
            assert container.exec(["true"]).exit_code == 0
            after = len(os.listdir(fd_dir))
            assert after <= before, f"{after - before} fds left open by 40 refused execs"
    finally:
        daemon.sbx("rm", "-f", "execfds", check=True)


# ---------------------------------------------------------------- sessions

SESSION_CLIENT = """
import sys, time
from sandboxd.api import Client
client = Client(sys.argv[1], session=True, autostart=False)
net = client.networks.create("e2e-session-net")
kept = client.networks.create("e2e-session-kept")
c = client.containers.create("busybox", ["sleep", "600"], name="e2e-session",
                             network_mode=net.name)
c.start()
print(c.id, flush=True)
time.sleep(600)
"""


def test_session_containers_go_with_their_client(daemon: Daemon) -> None:
    proc = subprocess.Popen([PY, "-c", SESSION_CLIENT, daemon.sock], stdout=subprocess.PIPE,
                            env=daemon.env, cwd=REPO)
    try:
        cid = proc.stdout.readline().decode().strip()
        assert len(cid) == 64, cid
        assert cid in daemon.ids()
        pid = int(daemon.sbx("inspect", "-f", "{{.State.Pid}}", cid, check=True).out)
        # another client's container on a session's network keeps that network alive
        daemon.sbx("run", "-d", "--name", "e2e-not-session", "--net", "e2e-session-kept",
                   "busybox", "sleep", "600", check=True)
    finally:
        proc.kill()                                # SIGKILL: no goodbye to the daemon
        proc.wait()

    def networks() -> set[str]:
        return set(daemon.sbx("network", "ls", "--format", "{{.Name}}", check=True).out.split())

    wait_until(lambda: cid not in daemon.ids("-a"), 15, "the session's container to go")
    wait_until(lambda: "e2e-session-net" not in networks(), 15, "the session's network to go")
    assert not pid_alive(pid)
    assert not (Path(daemon.root) / "containers" / cid).exists()
    assert "e2e-session-kept" in networks()
    assert "session network" in daemon.log() and "kept" in daemon.log()
    daemon.sbx("rm", "-f", "e2e-not-session", check=True)
    daemon.sbx("network", "rm", "e2e-session-kept", check=True)


GONE_MID_RUN_CLIENT = """
import os, sys
from sandboxd.api import Client
from sandboxd.flags import build_config
client = Client(sys.argv[1], session=True, autostart=False)
config = build_config("busybox", ["sleep", sys.argv[2]]).to_dict()
stream = client.stream("container.run", {"config": config, "remove": True})
for event in stream:             # "created": the start comes next, and this client goes
    print(event[1]["id"], flush=True)
    os._exit(0)
"""


def test_a_client_gone_while_its_run_starts_leaves_no_process(daemon: Daemon) -> None:
    # The connection drops while the fork server starts the container: the request is
    # cancelled and the session removes the record. The process, started anyway, must
    # not run on with no record (it did: a kernel pool's refill at a client's exit).
    marker = "6017"
    ids = []
    for _ in range(8):
        out = subprocess.run([PY, "-c", GONE_MID_RUN_CLIENT, daemon.sock, marker],
                             capture_output=True, env=daemon.env, cwd=REPO, timeout=60)
        ids.append(out.stdout.decode().strip())
        assert len(ids[-1]) == 64, out
    wait_until(lambda: not set(ids) & set(daemon.ids("-a")), 15,
               "the gone clients' containers to go")

    def sleepers() -> list[str]:
        return subprocess.run(["pgrep", "-f", f"^sleep {marker}$"], capture_output=True,
                              text=True).stdout.split()
    wait_until(lambda: not sleepers(), 15, "no container process to outlive its record")


# ---------------------------------------------------------------- bad input (CHECKS 29)

def _config(**changes: object) -> dict:
    from sandboxd.flags import build_config
    doc = build_config("busybox", ["true"]).to_dict()
    host = changes.pop("host", {})
    doc.update(changes)
    doc["host"].update(host)
    return doc


BAD_CREATES = {
    "cmd not a list": {"config": _config(cmd="true")},
    "memory a string": {"config": _config(host={"memory": "64m"})},
    "unknown field": {"config": {**_config(), "privileged": True}},
    "unknown host field": {"config": _config(host={"devices": ["/dev/sda"]})},
    "missing config": {},
    "config not a map": {"config": ["busybox"]},
    "unknown param": {"config": _config(), "nmae": "x"},
    "env without =": {"config": _config(env=["NOEQUALS"])},
    "env with NUL": {"config": _config(env=["A=b\0c"])},
    "name with /": {"config": _config(), "name": "a/b"},
    "name ..": {"config": _config(), "name": ".."},
    "name with NUL": {"config": _config(), "name": "a\0b"},
    "name with newline": {"config": _config(), "name": "ab\n"},
    "name 10 KB": {"config": _config(), "name": "a" * 10240},
    "mount into /proc": {"config": _config(host={"mounts": [
        {"destination": "/proc/sys", "type": "tmpfs", "source": "", "readonly": False,
         "options": []}]})},
    "relative mount": {"config": _config(host={"mounts": [
        {"destination": "data", "type": "tmpfs", "source": "", "readonly": False,
         "options": []}]})},
    "bad ulimit name": {"config": _config(host={"ulimits": [
        {"name": "nofiles", "soft": 1, "hard": 2}]})},
    "ulimit soft > hard": {"config": _config(host={"ulimits": [
        {"name": "nofile", "soft": 300, "hard": 200}]})},
    "bad uts mode": {"config": _config(host={"uts_mode": "sideways"})},
    "negative memory": {"config": _config(host={"memory": -5})},
}


@pytest.mark.parametrize("params", BAD_CREATES.values(), ids=BAD_CREATES.keys())
def test_bad_create_is_invalid_argument_and_creates_nothing(daemon: Daemon,
                                                            params: dict) -> None:
    containers = Path(daemon.root) / "containers"
    listing = lambda: set(os.listdir(containers)) if containers.exists() else set()  # noqa
    before = (set(daemon.ids("-a")), listing(), set(daemon.cgroup_children()))
    with daemon.client() as client:
        with pytest.raises(errors.InvalidArgument) as caught:
            client.call("container.create", params)
        assert caught.value.message
        with pytest.raises(errors.InvalidArgument):
            client.call("container.run", dict(params))
    assert (set(daemon.ids("-a")), listing(), set(daemon.cgroup_children())) == before


def test_quiet_run_sends_only_the_output_and_the_result(daemon: Daemon) -> None:
    """``container.run`` with ``quiet``: no created/started events, the result's id is the
    container's; the Python API asks for it when the daemon lists ``quiet-run``."""
    config = _config(cmd=["echo", "hi"], host={"auto_remove": True})
    with daemon.client() as client:
        assert "quiet-run" in client._conn.server_info["features"]
        for quiet, events in ((False, ["created", "started", "stdout"]), (True, ["stdout"])):
            stream = client.stream("container.run", {"config": config, "quiet": quiet})
            seen = [(event, data) for event, data in stream]
            assert [event for event, _ in seen] == events
            assert seen[-1][1] == b"hi\n"
            result = stream.result()
            assert result["exit_code"] == 0 and len(result["id"]) == 64
            if not quiet:
                assert seen[0][1]["id"] == result["id"]
        result = client.run("busybox", ["echo", "api"])
        assert (result.exit_code, result.stdout, len(result.id)) == (0, b"api\n", 64)
        with pytest.raises(errors.InvalidArgument, match="quiet"):
            client.call("container.run", {"config": config, "quiet": "yes"})

    async def with_asyncio() -> None:
        from sandboxd.api import AsyncClient
        async with AsyncClient(daemon.sock, autostart=False) as aclient:
            result = await aclient.run("busybox", ["echo", "async"])
            assert (result.exit_code, result.stdout) == (0, b"async\n")
            container = await aclient.containers.run("busybox", ["sleep", "30"])
            assert len(container.id) == 64
            await container.remove(force=True)
    import asyncio
    asyncio.run(with_asyncio())


# ---------------------------------------------------------------- output volume

def test_log_cap_and_daemon_memory(daemon: Daemon) -> None:
    rss_before = _rss(daemon.proc.pid)
    # ~40 MiB of output, read by nobody while it is written, with the default log
    # options (max-size 20m, max-file 5): one rotation, nothing dropped
    r = daemon.sbx("run", "-d", "--name", "e2e-flood", "busybox", "sh", "-c",
                   "yes 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde"
                   " | head -c 41943040; echo; echo done", check=True)
    cid = r.out.strip()
    assert daemon.sbx("wait", "e2e-flood", check=True).out.strip() == "0"
    files = sorted(p.name for p in (Path(daemon.root) / "containers" / cid).glob("output.log*"))
    assert files == ["output.log", "output.log.1", "output.log.2"]
    logs = daemon.sbx("logs", "e2e-flood", check=True, timeout=120)
    assert logs.err == ""                        # nothing was dropped
    assert len(logs.stdout) == (40 << 20) + len("\ndone\n")
    assert logs.stdout.endswith(b"\ndone\n")
    daemon.sbx("rm", "e2e-flood", check=True)
    # Generous: the daemon must not have kept the flood (20 MiB) in memory.
    assert _rss(daemon.proc.pid) - rss_before < 64 << 20


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")
