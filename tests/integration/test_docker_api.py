"""The Docker Engine API's container and exec endpoints with the real clients: the
``docker`` CLI (a real pty for ``run -it``), docker-py 7.x and testcontainers-python 4.x,
against a daemon of this module's own (busybox imported); plus raw HTTP on the socket for
what no client sends (malformed JSON, unknown fields, huge bodies, garbage bytes, a client
gone mid-stream). The module's daemon is stopped at its end by the harness, which fails
on a traceback in its log or anything of it left behind."""
from __future__ import annotations

import io
import json
import os
import resource
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from harness import Daemon, running, wait_until
from sandboxd import testing

DOCKER = shutil.which("docker")
needs_cli = pytest.mark.skipif(DOCKER is None, reason="the docker CLI is not installed "
                                                      "(apt-get install docker.io)")


@pytest.fixture(scope="module")
def d() -> Iterator[Daemon]:
    with running() as daemon:
        yield daemon


@pytest.fixture(scope="module")
def docker_host(d: Daemon) -> str:
    return f"unix://{d.docker_sock}"


@pytest.fixture(scope="module")
def docker(docker_host: str, tmp_path_factory):
    """``docker(*args)``: the CLI against our socket, with a config dir of its own."""
    config = tmp_path_factory.mktemp("docker-config")
    env = {**os.environ, "DOCKER_HOST": docker_host, "DOCKER_CONFIG": str(config)}

    def run(*args: str, check: bool = True, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run([DOCKER, *args], env=env, capture_output=True, text=True,
                              input=input, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            pytest.fail(f"docker {' '.join(args)} exited {proc.returncode}:\n"
                        f"{proc.stdout}\n{proc.stderr}")
        return proc
    run.env = env                                   # type: ignore[attr-defined]
    return run


@pytest.fixture(scope="module")
def dockerpy(docker_host: str):
    docker_py = pytest.importorskip("docker", reason="docker-py is not installed "
                                                     "(pip install docker)")
    client = docker_py.DockerClient(base_url=docker_host, version="auto")
    yield client
    client.close()


def _labelled(docker, label: str) -> list[str]:
    return docker("ps", "-aq", "--no-trunc", "--filter", f"label={label}").stdout.split()


# ------------------------------------------------------------------ the docker CLI

@needs_cli
def test_cli_run_rm_exit_codes(docker) -> None:
    """Docker's exit codes: the command's own, 127 for a missing command, 126 for one
    that cannot be executed; a failed start of a --rm container ends the CLI (it once
    hung waiting for a removal) and leaves nothing."""
    label = "t=exitcodes"
    ok = docker("run", "--rm", "-l", label, "busybox", "echo", "hello")
    assert ok.stdout == "hello\n"
    assert docker("run", "--rm", "-l", label, "busybox", "sh", "-c", "exit 3",
                  check=False).returncode == 3
    missing = docker("run", "--rm", "-l", label, "busybox", "nosuch", check=False, timeout=20)
    assert missing.returncode == 127, missing.stderr
    assert "executable file not found" in missing.stderr
    assert "Error waiting" not in missing.stderr
    denied = docker("run", "--rm", "-l", label, "busybox", "/etc/passwd", check=False,
                    timeout=20)
    assert denied.returncode == 126, denied.stderr
    assert "permission denied" in denied.stderr
    # A missing network is not a missing image: no "Unable to find image" and pull
    nonet = docker("run", "--rm", "-l", label, "--network", "sbx-no-such-net", "busybox",
                   "true", check=False, timeout=20)
    assert nonet.returncode == 125, nonet.stderr
    assert "network sbx-no-such-net not found" in nonet.stderr
    assert "Unable to find image" not in nonet.stderr
    assert _labelled(docker, label) == []


@needs_cli
def test_cli_detached_lifecycle(docker, d: Daemon, tmp_path: Path) -> None:
    """run -d, logs -f, exec (with and without -i), cp both ways, inspect -f, ps
    filters, top, stats, rename, pause/unpause, update -m, kill -s, restart, stop, wait,
    rm: each through the CLI against one container."""
    script = ("trap 'echo got-usr1' USR1; echo started; "
              "while true; do echo tick; sleep 0.1; done")
    cid = docker("run", "-d", "--name", "dk-life", "-l", "t=life", "busybox", "sh", "-c",
                 script).stdout.strip()
    assert len(cid) == 64
    try:
        # logs -f: follows, and its client goes away mid-stream
        follow = subprocess.Popen([DOCKER, "logs", "-f", "dk-life"], env=docker.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert follow.stdout.readline() == b"started\n"
        assert follow.stdout.readline() == b"tick\n"
        follow.kill()
        follow.wait()

        assert docker("logs", "--tail", "1", "dk-life").stdout in ("started\n", "tick\n")
        stamped = docker("logs", "-t", "dk-life").stdout.splitlines()[0]
        assert stamped.endswith("Z started") and stamped[:4].isdigit()
        assert docker("logs", "--since", "1h", "dk-life").stdout.startswith("started\n")

        assert docker("exec", "dk-life", "echo", "in-exec").stdout == "in-exec\n"
        assert docker("exec", "dk-life", "sh", "-c", "exit 7", check=False).returncode == 7
        assert docker("exec", "-i", "dk-life", "cat", input="piped\nlines\n").stdout \
            == "piped\nlines\n"
        # without -i the exec's stdin is not the CLI's
        assert docker("exec", "dk-life", "cat", input="ignored\n").stdout == ""

        # cp both ways, a file and a directory
        (tmp_path / "up").mkdir()
        (tmp_path / "up" / "a.txt").write_text("alpha\n")
        (tmp_path / "one.txt").write_text("one\n")
        docker("cp", str(tmp_path / "one.txt"), "dk-life:/tmp/one.txt")
        docker("cp", str(tmp_path / "up"), "dk-life:/tmp/up")
        assert docker("exec", "dk-life", "cat", "/tmp/one.txt", "/tmp/up/a.txt").stdout \
            == "one\nalpha\n"
        docker("exec", "dk-life", "sh", "-c", "mkdir /tmp/down && echo beta > /tmp/down/b")
        docker("cp", "dk-life:/tmp/down", str(tmp_path / "down"))
        assert (tmp_path / "down" / "b").read_text() == "beta\n"
        docker("cp", "dk-life:/tmp/one.txt", str(tmp_path / "back.txt"))
        assert (tmp_path / "back.txt").read_text() == "one\n"
        # what the container and cp changed, as docker diff lists it
        docker("exec", "dk-life", "rm", "/bin/ls")
        assert docker("diff", "dk-life").stdout == (
            "C /bin\nD /bin/ls\nC /tmp\nA /tmp/down\nA /tmp/down/b\nA /tmp/one.txt\n"
            "A /tmp/up\nA /tmp/up/a.txt\n")
        docker("export", "-o", str(tmp_path / "fs.tar"), "dk-life")
        with tarfile.open(tmp_path / "fs.tar") as tar:
            names = set(tar.getnames())
            assert tar.extractfile("tmp/up/a.txt").read() == b"alpha\n"
        assert "bin/cat" in names and "bin/ls" not in names

        assert docker("inspect", "-f", "{{.State.Status}}", "dk-life").stdout == "running\n"
        assert docker("ps", "-q", "--no-trunc", "--filter", "label=t=life").stdout.split() \
            == [cid]
        assert cid in docker("ps", "-q", "--no-trunc", "--filter", "status=running").stdout
        assert docker("ps", "-q", "--filter", "label=t=nosuch").stdout == ""

        top = docker("top", "dk-life").stdout
        assert "PID" in top.splitlines()[0] and "echo started" in top
        stats = docker("stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}}",
                       "dk-life").stdout.split()
        assert stats[0] == "dk-life" and int(stats[1]) >= 1

        docker("rename", "dk-life", "dk-life2")
        assert docker("inspect", "-f", "{{.Name}}", cid).stdout == "/dk-life2\n"

        docker("pause", "dk-life2")
        assert docker("inspect", "-f", "{{.State.Status}}", cid).stdout == "paused\n"
        assert docker("ps", "-q", "--no-trunc", "--filter", "status=paused").stdout.split() \
            == [cid]
        refused = docker("exec", "dk-life2", "true", check=False)
        assert refused.returncode != 0 and "is paused, unpause the container before exec" \
            in refused.stderr, refused.stderr
        docker("unpause", "dk-life2")
        assert docker("inspect", "-f", "{{.State.Status}}", cid).stdout == "running\n"

        docker("update", "-m", "96m", "dk-life2")
        assert d.cgroup_file("memory", cid, "memory.limit_in_bytes") == str(96 << 20)
        docker("update", "--restart", "on-failure:5", "dk-life2")
        assert docker("inspect", "-f", "{{json .HostConfig.RestartPolicy}}", cid).stdout \
            == '{"Name":"on-failure","MaximumRetryCount":5}\n'
        assert d.cgroup_file("memory", cid, "memory.limit_in_bytes") == str(96 << 20)
        docker("update", "--restart", "no", "dk-life2")

        docker("kill", "-s", "USR1", "dk-life2")
        wait_until(lambda: "got-usr1" in docker("logs", "dk-life2").stdout,
                   what="the trap of SIGUSR1 to run")
        assert docker("inspect", "-f", "{{.State.Status}}", cid).stdout == "running\n"

        first = docker("inspect", "-f", "{{.State.StartedAt}}", cid).stdout
        docker("restart", "-t", "0", "dk-life2")
        assert docker("inspect", "-f", "{{.State.Status}}", cid).stdout == "running\n"
        assert docker("inspect", "-f", "{{.State.StartedAt}}", cid).stdout != first

        waiter = subprocess.Popen([DOCKER, "wait", "dk-life2"], env=docker.env,
                                  stdout=subprocess.PIPE, text=True)
        docker("stop", "-t", "0", "dk-life2")
        assert waiter.communicate(timeout=30)[0] == "137\n"
        assert docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", cid).stdout \
            == "exited 137\n"
        assert cid in docker("ps", "-aq", "--no-trunc", "--filter", "status=exited").stdout
    finally:
        docker("rm", "-f", cid, check=False)
    assert _labelled(docker, "t=life") == []
    assert not d.cgroup_children()


@needs_cli
def test_cli_run_it_through_a_pty(docker) -> None:
    """``docker run -it``: a real terminal, its size and a resize reaching the
    container, the exit code of the shell."""
    pexpect = pytest.importorskip("pexpect", reason="pexpect is not installed")
    child = pexpect.spawn(DOCKER, ["run", "-it", "--rm", "-l", "t=pty", "busybox", "sh"],
                          env=docker.env, dimensions=(30, 90), timeout=20)
    try:
        child.expect_exact("# ")
        child.sendline("stty size; tty")
        child.expect(r"30 90\r\n/dev/pts/\d+")
        child.setwinsize(41, 123)         # SIGWINCH: the CLI posts /containers/…/resize
        deadline = time.monotonic() + 10
        while True:
            child.sendline("stty size")
            if child.expect([r"41 123", r"\d+ \d+"]) == 0:
                break
            assert time.monotonic() < deadline, "the resize never reached the container"
            time.sleep(0.1)
        child.sendline("exit 5")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 5
    assert _labelled(docker, "t=pty") == []


@needs_cli
def test_cli_run_t_has_the_terminals_size_from_the_start(docker) -> None:
    """The CLI sends its terminal's size as HostConfig.ConsoleSize and resizes only
    after the start: a command that reads the size at once gets it from the first."""
    pexpect = pytest.importorskip("pexpect", reason="pexpect is not installed")
    child = pexpect.spawn(DOCKER, ["run", "-t", "--rm", "busybox", "stty", "size"],
                          env=docker.env, dimensions=(33, 101), timeout=20)
    try:
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.before.replace(b"\r", b"") == b"33 101\n" and child.exitstatus == 0


@needs_cli
def test_cli_exec_it_through_a_pty(docker) -> None:
    pexpect = pytest.importorskip("pexpect", reason="pexpect is not installed")
    cid = docker("run", "-d", "busybox", "sleep", "600").stdout.strip()
    try:
        child = pexpect.spawn(DOCKER, ["exec", "-it", cid, "sh"], env=docker.env,
                              dimensions=(25, 70), timeout=20)
        child.expect_exact("# ")
        child.sendline("stty size")
        child.expect_exact("25 70")
        child.sendline("exit 4")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 4
        # ConsoleSize of the exec: its pty is sized before the command runs
        child = pexpect.spawn(DOCKER, ["exec", "-t", cid, "stty", "size"], env=docker.env,
                              dimensions=(33, 101), timeout=20)
        child.expect(pexpect.EOF)
        child.close()
        assert child.before.replace(b"\r", b"") == b"33 101\n" and child.exitstatus == 0
    finally:
        docker("rm", "-f", cid)


@needs_cli
def test_cli_exec_that_cannot_start_says_why(docker) -> None:
    """As dockerd: an exec whose start fails writes why on its stream (the CLI prints
    it) and ends with 126; one that ran keeps its own code."""
    cid = docker("run", "-d", "busybox", "sleep", "600").stdout.strip()
    try:
        for args, why in (([cid, "nosuchcmd"], "executable file not found in $PATH: nosuchcmd"),
                          ([cid, "/etc/passwd"], "exec /etc/passwd: Permission denied"),
                          (["-u", "nobodyx", cid, "true"], "no user 'nobodyx'")):
            out = docker("exec", *args, check=False)
            assert out.returncode == 126, out
            assert why in out.stdout, out
        assert docker("exec", cid, "sh", "-c", "exit 7", check=False).returncode == 7
    finally:
        docker("rm", "-f", cid)


@needs_cli
def test_cli_start_a_that_fails_ends_its_attach(docker, d: Daemon) -> None:
    """`docker start -a` whose start fails (its published port was taken after the
    create): the CLI says why, and the attach it opened first ends with the failed start.
    It used to wait for the container's removal, and then raised NotFound out of the
    stream (a traceback in the daemon's log)."""
    with socket.socket() as taker:
        taker.bind(("127.0.0.1", 0))
        port = taker.getsockname()[1]
    mark = len(d.log(1 << 30))                        # this test's part of the log
    docker("create", "--name", "portlater", "-p", f"127.0.0.1:{port}:80", "busybox", "true")
    try:
        with socket.socket() as taker:
            taker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            taker.bind(("127.0.0.1", port))
            taker.listen()
            out = docker("start", "-a", "portlater", check=False, timeout=20)
        assert out.returncode != 0 and "port is already allocated" in out.stderr, out
    finally:
        docker("rm", "-f", "portlater")
    time.sleep(0.2)                                   # an attach woken by the removal
    assert "Traceback" not in d.log(1 << 30)[mark:], d.log()


def _settled_fds(fd_dir: str) -> int:
    """How many fds a process has, once the count has held still for 0.2 s."""
    count = len(os.listdir(fd_dir))
    while True:
        time.sleep(0.2)
        now = len(os.listdir(fd_dir))
        if now == count:
            return count
        count = now


def _hold_fds(d: Daemon, fd_dir: str, target: int) -> list[socket.socket]:
    """Idle connections to the daemon's socket (each accepted one holds an fd of its)
    until it has ``target`` fds open, or no more are accepted."""
    hogs: list[socket.socket] = []
    while (count := _settled_fds(fd_dir)) < target:
        assert len(hogs) < 256, "the daemon's fds did not fill"
        for _ in range(max(1, target - count - 2)):     # the last few one at a time
            hogs.append(socket.socket(socket.AF_UNIX))
            hogs[-1].connect(d.sock)
    return hogs


@needs_cli
def test_cli_waits_for_a_daemon_out_of_fds_and_then_runs(tmp_path: Path) -> None:
    """A daemon at its open-files limit leaves new connections waiting until it has fds
    again. libuv's own listener (the daemon runs on uvloop) accepted each waiting
    connection and closed it at once: a `docker run --rm` whose start was dropped so
    waited for ever for its container's removal. Idle connections to the daemon's own
    socket take every fd it has here; a docker run meanwhile waits; they close, it runs."""
    limit = 64
    d = Daemon(wrap=("prlimit", f"--nofile={limit}:{limit}")).start()
    hogs: list[socket.socket] = []
    try:
        d.import_busybox()
        assert d.proc is not None
        fd_dir = f"/proc/{d.proc.pid}/fd"
        env = {**os.environ, "DOCKER_HOST": f"unix://{d.docker_sock}",
               "DOCKER_CONFIG": str(tmp_path)}
        assert subprocess.run([DOCKER, "version"], env=env, capture_output=True,
                              timeout=30).returncode == 0
        idle = _settled_fds(fd_dir)
        hogs = _hold_fds(d, fd_dir, limit)
        run = subprocess.Popen([DOCKER, "run", "--rm", "busybox", "echo", "ran"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.5)
            assert run.poll() is None, run.communicate()     # waiting, not dropped
        finally:
            for hog in hogs:
                hog.close()
        out, err = run.communicate(timeout=60)
        assert (run.returncode, out) == (0, "ran\n"), err
        assert "cannot accept connections (Too many open files)" in d.log(1 << 30)
        wait_until(lambda: _settled_fds(fd_dir) <= idle, 10, "the connections closed")

        # Room for the exec's two connections and not for its pipes: the exec says why
        # on its stream (it said nothing, and exited 126).
        cid = subprocess.run([DOCKER, "run", "-d", "busybox", "sleep", "600"], env=env,
                             capture_output=True, text=True, timeout=30).stdout.strip()
        hogs = _hold_fds(d, fd_dir, limit - 2)
        exec_ = subprocess.run([DOCKER, "exec", cid, "echo", "hi"], env=env,
                               capture_output=True, text=True, timeout=60)
        assert exec_.returncode == 126, exec_
        assert "the daemon is out of file descriptors (its open files limit is 64)" in \
            exec_.stdout, exec_
        for hog in hogs:
            hog.close()
        subprocess.run([DOCKER, "rm", "-f", cid], env=env, capture_output=True, timeout=30)
        assert "Traceback" not in d.log(1 << 30)
    finally:
        for hog in hogs:
            hog.close()
        d.stop()


@needs_cli
def test_cli_exec_detach_keys(docker, dockerpy) -> None:
    """ctrl-p ctrl-q ends `docker exec -it` while the command goes on (the CLI watches
    for the keys itself and says "read escape sequence", exit 1, as against dockerd);
    through docker-py, an exec's own DetachKeys make the daemon end its stream, and exec
    inspect shows it running, then its real exit code."""
    pexpect = pytest.importorskip("pexpect", reason="pexpect is not installed")
    cid = docker("run", "-d", "busybox", "sleep", "600").stdout.strip()
    try:
        child = pexpect.spawn(DOCKER, ["exec", "-it", cid, "sh", "-c",
                                       "echo ready; read x; echo \"$x\" > /typed"],
                              env=docker.env, timeout=20)
        child.expect_exact("ready")
        child.send("\x10\x11")
        child.expect(pexpect.EOF)
        assert b"read escape sequence" in child.before
        child.close()
        assert child.exitstatus == 1
        top = docker("top", cid).stdout
        assert "read x" in top, top
        assert docker("exec", cid, "test", "-e", "/typed", check=False).returncode == 1

        api = dockerpy.api
        exec_id = api.exec_create(cid, ["sh", "-c", "echo ready; sleep 1; exit 5"],
                                  stdin=True, tty=True, detach_keys="ctrl-x,e")["Id"]
        assert api.exec_inspect(exec_id)["DetachKeys"] == "ctrl-x,e"
        sock = api.exec_start(exec_id, tty=True, socket=True)._sock
        sock.settimeout(10)
        assert b"ready" in sock.recv(100)
        sock.sendall(b"\x18e")
        while sock.recv(100):                      # the daemon ends the stream
            pass
        sock.close()
        assert api.exec_inspect(exec_id)["Running"] is True
        wait_until(lambda: not api.exec_inspect(exec_id)["Running"], 10, "the exec's end")
        assert api.exec_inspect(exec_id)["ExitCode"] == 5
        bad = docker("exec", "--detach-keys", "ctrl-7", cid, "true", check=False)
        assert bad.returncode != 0 and "Invalid detach keys" in bad.stderr, bad.stderr
    finally:
        docker("rm", "-f", cid)


@needs_cli
def test_cli_run_i_cat_stdin_eof(docker) -> None:
    """stdin's end reaches the container (the CLI half-closes the hijacked stream)."""
    out = docker("run", "--rm", "-i", "busybox", "cat", input="one\ntwo\n", timeout=20)
    assert out.stdout == "one\ntwo\n"
    counted = docker("run", "--rm", "-i", "busybox", "wc", "-c", input="x" * 300000,
                     timeout=20)
    assert counted.stdout.strip() == "300000"


@needs_cli
def test_cli_run_limits_verified_inside(docker) -> None:
    script = ("cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
              "/sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us "
              "/sys/fs/cgroup/pids/pids.max; ulimit -n; ulimit -Hn")
    out = docker("run", "--rm", "-m", "64m", "--cpus", "0.5", "--pids-limit", "64",
                 "--ulimit", "nofile=128:256", "busybox", "sh", "-c", script).stdout.split()
    assert out == [str(64 << 20), "50000", "100000", "64", "128", "256"]
    # -1 is unlimited (it once failed in sbx-setup's encoding: "argument out of range")
    core = docker("run", "--rm", "--ulimit", "core=-1", "busybox", "sh", "-c",
                  "ulimit -c; ulimit -Hc", check=False)
    if resource.getrlimit(resource.RLIMIT_CORE)[1] == resource.RLIM_INFINITY:
        assert core.stdout.split() == ["unlimited", "unlimited"], core.stderr
    else:                               # raising the host's hard limit needs the capability
        assert "needs CAP_SYS_RESOURCE" in core.stderr, core.stderr


@needs_cli
def test_cli_restart_policy_and_health(docker) -> None:
    """--restart on-failure:2 restarts twice and stops; --health-* makes it healthy in
    ps and inspect, the policy and the check reported back as dockerd does."""
    failing = docker("run", "-d", "--restart", "on-failure:2", "busybox", "false").stdout.strip()
    healthy = docker("run", "-d", "--health-cmd", "true", "--health-interval", "1s",
                     "busybox", "sleep", "600").stdout.strip()
    try:
        wait_until(lambda: docker("inspect", "-f", "{{.RestartCount}} {{.State.Status}}",
                                  failing).stdout.split() == ["2", "exited"],
                   timeout=30, what="two restarts, then exited")
        assert docker("inspect", "-f", "{{json .HostConfig.RestartPolicy}}",
                      failing).stdout.strip() == '{"Name":"on-failure","MaximumRetryCount":2}'
        wait_until(lambda: docker("inspect", "-f", "{{.State.Health.Status}}",
                                  healthy).stdout.strip() == "healthy",
                   timeout=30, what="healthy")
        assert "(healthy)" in docker("ps", "--filter", f"id={healthy}").stdout
        check = json.loads(docker("inspect", "-f", "{{json .Config.Healthcheck}}",
                                  healthy).stdout)
        assert check == {"Test": ["CMD-SHELL", "true"], "Interval": 10**9}
    finally:
        docker("rm", "-f", failing, healthy)


@needs_cli
def test_cli_mounts_sysctls_cpuset_shm(docker) -> None:
    script = ("echo x > /d/f && cat /d/f; grep ' /t ' /proc/mounts; "
              "cat /proc/sys/net/ipv4/ip_forward; grep Cpus_allowed_list /proc/self/status; "
              "df -k /dev/shm | tail -1")
    name = "dkmap-mounts"
    out = docker("run", "--name", name, "--mount", "type=volume,src=dkmapv1,dst=/d",
                 "--mount", "type=tmpfs,dst=/t,tmpfs-size=1m",
                 "--sysctl", "net.ipv4.ip_forward=1", "--cpuset-cpus", "0",
                 "--shm-size", "8m", "busybox", "sh", "-c", script).stdout.splitlines()
    try:
        assert out[0] == "x"
        assert out[1].startswith("tmpfs /t tmpfs") and "size=1024k" in out[1]
        assert out[2] == "1"
        assert out[3].split() == ["Cpus_allowed_list:", "0"]
        assert out[4].split()[1] == "8192"              # 1K-blocks of /dev/shm
        mounts = json.loads(docker("inspect", "-f", "{{json .Mounts}}", name).stdout)
        assert [(m["Type"], m["Name"], m["Destination"]) for m in mounts] == \
            [("volume", "dkmapv1", "/d")]
        host = json.loads(docker("inspect", "-f", "{{json .HostConfig}}", name).stdout)
        assert host["Sysctls"] == {"net.ipv4.ip_forward": "1"}
        assert host["CpusetCpus"] == "0" and host["ShmSize"] == 8 << 20
    finally:
        docker("rm", "-f", name)
        docker("volume", "rm", "dkmapv1")


@needs_cli
def test_cli_network_alias(docker) -> None:
    docker("network", "create", "dkmapnet")
    server = docker("run", "-d", "--network", "dkmapnet", "--network-alias", "db",
                    "busybox", "sleep", "600").stdout.strip()
    try:
        aliases = json.loads(docker("inspect", "-f",
                                    "{{json .NetworkSettings.Networks.dkmapnet.Aliases}}",
                                    server).stdout)
        assert "db" in aliases
        out = docker("run", "--rm", "--network", "dkmapnet", "busybox",
                     "nslookup", "db").stdout
        ip = docker("inspect", "-f", "{{.NetworkSettings.Networks.dkmapnet.IPAddress}}",
                    server).stdout.strip()
        assert ip in out
    finally:
        docker("rm", "-f", server)
        docker("network", "rm", "dkmapnet")


@needs_cli
def test_cli_system_prune_with_a_filter(docker) -> None:
    """docker system prune: containers, networks, images, then the build cache
    (/build/prune, a 404 before); its filter reaches each (images refused it)."""
    docker("run", "--name", "dk-sys-gone", "-l", "sbxsys=1", "busybox", "true")
    other = docker("run", "-d", "busybox", "true").stdout.strip()
    docker("network", "create", "--label", "sbxsys=1", "dk-sys-net")
    try:
        docker("wait", other)
        out = docker("system", "prune", "-f", "--filter", "label=sbxsys=1").stdout
        assert "Deleted Containers" in out and "dk-sys-net" in out, out
        left = docker("ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}}").stdout
        assert other in left and "dk-sys-gone" not in left
    finally:
        docker("rm", "-f", other, "dk-sys-gone", check=False)
        docker("network", "rm", "dk-sys-net", check=False)


@needs_cli
def test_cli_container_prune(docker) -> None:
    docker("run", "-l", "t=prune", "busybox", "true")
    kept = docker("run", "-d", "-l", "t=prune", "-l", "keep=1", "busybox", "true").stdout.strip()
    running_id = docker("run", "-d", "-l", "t=prune", "busybox", "sleep", "600").stdout.strip()
    try:
        docker("wait", kept)
        out = docker("container", "prune", "-f", "--filter", "label!=keep=1").stdout
        assert kept in docker("ps", "-aq", "--no-trunc").stdout.split()      # its filter
        docker("rm", kept)
        assert "Deleted Containers" in out
        assert _labelled(docker, "t=prune") == [running_id]
    finally:
        docker("rm", "-f", running_id, kept, check=False)


# ------------------------------------------------------------------ docker-py

def test_dockerpy_containers(dockerpy, tmp_path: Path) -> None:
    assert dockerpy.containers.run("busybox", ["echo", "hi"], remove=True) == b"hi\n"
    c = dockerpy.containers.run(
        "busybox", ["sh", "-c", "echo out; echo err >&2; exec sleep 600"],
        detach=True, labels={"t": "py"})
    try:
        lines = c.logs(stream=True, follow=True)
        got = b""
        while b"out\n" not in got or b"err\n" not in got:
            got += next(lines)
        lines.close()

        result = c.exec_run(["sh", "-c", "echo a; echo b >&2; exit 4"], demux=True)
        assert result.exit_code == 4 and result.output == (b"a\n", b"b\n")
        assert c.exec_run("hostname").output.strip() == c.id[:12].encode()

        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            info = tarfile.TarInfo("put.txt")
            info.size = 4
            tar.addfile(info, io.BytesIO(b"put\n"))
        assert c.put_archive("/tmp", data.getvalue())
        stream, stat = c.get_archive("/tmp/put.txt")
        assert stat["name"] == "put.txt" and stat["size"] == 4
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            assert tar.extractfile("put.txt").read() == b"put\n"

        stats = c.stats(stream=False)
        assert stats["id"] == c.id and stats["pids_stats"]["current"] >= 1
        assert stats["memory_stats"]["usage"] > 0
        assert stats["cpu_stats"]["cpu_usage"]["total_usage"] > 0
        # a previous sample, as dockerd's: docker stats --no-stream computes CPU % so
        assert 0 < stats["precpu_stats"]["system_cpu_usage"] \
            < stats["cpu_stats"]["system_cpu_usage"]
        # the interfaces of its namespace, counted by the kernel (not lo)
        c.reload()
        c.exec_run(["ping", "-c", "1", "-W", "2", c.attrs["NetworkSettings"]["Gateway"]])
        eth0 = c.stats(stream=False, one_shot=True)["networks"]["eth0"]
        assert eth0["tx_packets"] >= 1 and eth0["rx_packets"] >= 1 and eth0["tx_bytes"] > 0
        assert set(stats["networks"]) == {"eth0"}
        alone = dockerpy.containers.run("busybox", ["sleep", "600"], detach=True,
                                        network_mode="none")
        try:
            assert "networks" not in alone.stats(stream=False, one_shot=True)  # as dockerd
        finally:
            alone.remove(force=True)

        assert [x.id for x in dockerpy.containers.list(filters={"label": "t=py"})] == [c.id]
        assert dockerpy.containers.list(filters={"label": "t=py", "status": "exited"}) == []
        c.kill()
        assert c.wait(timeout=30) == {"StatusCode": 137, "Error": None}
    finally:
        c.remove(force=True)
    three = dockerpy.containers.run("busybox", ["sh", "-c", "exit 3"], detach=True)
    try:
        assert three.wait(timeout=30)["StatusCode"] == 3
    finally:
        three.remove()


def test_dockerpy_restart_health_mounts(dockerpy) -> None:
    import docker as docker_py
    c = dockerpy.containers.run(
        "busybox", ["sh", "-c", "touch /m/ok; exec sleep 600"], detach=True,
        restart_policy={"Name": "on-failure", "MaximumRetryCount": 3},
        healthcheck={"test": ["CMD", "test", "-e", "/m/ok"], "interval": 500_000_000,
                     "retries": 2},
        mounts=[docker_py.types.Mount("/m", "dkmappy", type="volume"),
                docker_py.types.Mount("/t", None, type="tmpfs", tmpfs_size=1 << 20)])
    try:
        wait_until(lambda: (c.reload() or c.attrs["State"]["Health"]["Status"]) == "healthy",
                   timeout=30, what="healthy")
        assert c.attrs["HostConfig"]["RestartPolicy"] == {"Name": "on-failure",
                                                          "MaximumRetryCount": 3}
        assert c.attrs["Config"]["Healthcheck"]["Test"] == ["CMD", "test", "-e", "/m/ok"]
        assert [m["Name"] for m in c.attrs["Mounts"]] == ["dkmappy"]
        assert c.exec_run(["sh", "-c", "grep ' /t ' /proc/mounts"]).output.startswith(
            b"tmpfs /t tmpfs")
    finally:
        c.remove(force=True)
        dockerpy.volumes.get("dkmappy").remove()


# ------------------------------------------------------------------ testcontainers

def test_testcontainers_http_server(docker_host: str, monkeypatch) -> None:
    """testcontainers' generic container with an exposed port, its log wait and host
    and port look-ups, then a GET to the server from here. Ryuk is off: see
    docs/docker-api.md (the daemon's own clean-up is the container's removal on exit)."""
    tc = pytest.importorskip("testcontainers.core.container",
                             reason="testcontainers is not installed")
    from testcontainers.core.config import testcontainers_config
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    monkeypatch.setattr(testcontainers_config, "ryuk_disabled", True)
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy
    container = tc.DockerContainer("busybox").with_command(
        ["sh", "-c", "mkdir -p /www && echo hello-tc > /www/index.html && echo serving && "
                     "exec httpd -f -p 80 -h /www"]).with_exposed_ports(80) \
        .waiting_for(LogMessageWaitStrategy("serving").with_startup_timeout(20))
    with container:
        host, port = container.get_container_host_ip(), container.get_exposed_port(80)
        url = f"http://{host}:{port}/"
        body = wait_until(lambda: _get(url), what=f"{url} to answer")
        assert body == b"hello-tc\n"
        cid = container.get_wrapped_container().id
    docker_py = pytest.importorskip("docker")
    client = docker_py.DockerClient(base_url=docker_host)
    try:
        with pytest.raises(docker_py.errors.NotFound):
            client.containers.get(cid)
    finally:
        client.close()


REDIS_LIKE = """
import socketserver

store = {}


class Session(socketserver.StreamRequestHandler):
    def handle(self):
        while line := self.rfile.readline():            # RESP: *N, then $len + data
            args = []
            for _ in range(int(line[1:])):
                size = int(self.rfile.readline()[1:])
                args.append(self.rfile.read(size + 2)[:-2])
            cmd = args[0].upper()
            if cmd == b"PING":
                self.wfile.write(b"+PONG\\r\\n")
            elif cmd == b"SET":
                store[args[1]] = args[2]
                self.wfile.write(b"+OK\\r\\n")
            elif cmd == b"GET" and args[1] in store:
                value = store[args[1]]
                self.wfile.write(b"$%d\\r\\n%s\\r\\n" % (len(value), value))
            elif cmd == b"GET":
                self.wfile.write(b"$-1\\r\\n")
            else:
                self.wfile.write(b"-ERR unknown command\\r\\n")


socketserver.ThreadingTCPServer.allow_reuse_address = True
server = socketserver.ThreadingTCPServer(("0.0.0.0", 6379), Session)
print("Ready to accept connections", flush=True)
server.serve_forever()
"""


def _resp(sock_file, *args: bytes) -> bytes:
    sock_file.write(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a)
                                                     for a in args))
    sock_file.flush()
    first = sock_file.readline()
    if first.startswith(b"$") and first != b"$-1\r\n":
        return sock_file.readline().rstrip(b"\r\n")
    return first.rstrip(b"\r\n")


def test_testcontainers_redis_like_service_built_locally(d: Daemon, docker_host: str,
                                                         dockerpy, tmp_path: Path,
                                                         monkeypatch) -> None:
    """A Redis-like service (RESP over TCP) built from a Dockerfile through docker-py,
    started by testcontainers with its log wait, then used from here: PING, SET, GET."""
    tc = pytest.importorskip("testcontainers.core.container",
                             reason="testcontainers is not installed")
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy
    d.sbx("import", str(testing.python_tar()), "sbx-python", check=True)
    (tmp_path / "server.py").write_text(REDIS_LIKE)
    (tmp_path / "Dockerfile").write_text(
        "FROM sbx-python\nCOPY server.py /srv/server.py\nEXPOSE 6379\n"
        'CMD ["python3", "-u", "/srv/server.py"]\n')
    image, _logs = dockerpy.images.build(path=str(tmp_path), tag="tc-redislike:1", rm=True)
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    monkeypatch.setattr(testcontainers_config, "ryuk_disabled", True)
    container = tc.DockerContainer("tc-redislike:1").with_exposed_ports(6379).waiting_for(
        LogMessageWaitStrategy("Ready to accept connections").with_startup_timeout(20))
    try:
        with container:
            host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
            with socket.create_connection((host, int(port)), timeout=10) as conn:
                f = conn.makefile("rwb")
                assert _resp(f, b"PING") == b"+PONG"
                assert _resp(f, b"SET", b"greeting", b"hello-sandboxd") == b"+OK"
                assert _resp(f, b"GET", b"greeting") == b"hello-sandboxd"
                assert _resp(f, b"GET", b"missing") == b"$-1"
    finally:
        dockerpy.images.remove(image.id, force=True)


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read()
    except OSError:
        return None


# ------------------------------------------------------------------ bad input (raw HTTP)

def _raw(path: str, data: bytes, timeout: float = 20) -> bytes:
    """Send ``data`` on the socket, return everything until the daemon closes."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def _request(path: str, method: str, target: str, body: bytes = b"") -> tuple[int, dict]:
    head = (f"{method} {target} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    raw = _raw(path, head + body)
    status = int(raw.split(b" ", 2)[1])
    payload = raw.partition(b"\r\n\r\n")[2]
    return status, json.loads(payload) if payload.strip() else {}


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "invalid JSON body"),
    (b"[1, 2]", 400, "expected an object"),
    (b"", 400, "request body is empty"),
    (b'{"Image": 5}', 400, "Config.Image"),
    (b'{"Image": "busybox", "Cmd": 5}', 400, "Config.Cmd"),
    (b'{"Image": "busybox", "Env": [1]}', 400, "Config.Env"),
    (b'{"Image": "busybox", "HostConfig": {"Memory": "lots"}}', 400, "HostConfig.Memory"),
    (b'{"Image": "busybox", "HostConfig": []}', 400, "HostConfig"),
    (b'{"Image": "busybox", "Bogus": 1}', 400, "Config.Bogus: unknown field"),
    (b'{"Image": "busybox", "HostConfig": {"Bogus": 1}}', 400,
     "HostConfig.Bogus: unknown field"),
    (b'{"Image": "busybox", "HostConfig": {"Sysctls": ["net.x=1"]}}', 400,
     "HostConfig.Sysctls"),
    (b'{"Image": "busybox", "HostConfig": {"Sysctls": {"kernel.hostname": "x"}}}', 400,
     "kernel.hostname"),
    (b'{"Image": "busybox", "HostConfig": {"RestartPolicy": {"Name": "sometimes"}}}', 400,
     "sometimes"),
    (b'{"Image": "busybox", "HostConfig": {"Mounts": [{"Type": "npipe", "Target": "/x"}]}}',
     400, "npipe"),
    (b'{"Image": "busybox", "HostConfig": {"Mounts": [{"Target": "/x", "Nope": 1}]}}', 400,
     "HostConfig.Mounts[0].Nope"),
    (b'{"Image": "busybox", "Healthcheck": {"Test": ["CMD"]}}', 400,
     "Config.Healthcheck.Test"),
    (b'{"Image": "nosuch-image"}', 404, "nosuch-image"),
])
def test_bad_create_bodies(d: Daemon, body: bytes, status: int, words: str) -> None:
    before = d.ids("-a")
    got, doc = _request(d.docker_sock, "POST", "/v1.43/containers/create", body)
    assert (got, words in doc.get("message", "")) == (status, True), doc
    assert d.ids("-a") == before


def test_bad_query_and_exec_bodies(d: Daemon) -> None:
    status, doc = _request(d.docker_sock, "GET", "/containers/json?all=maybe")
    assert status == 400 and "all" in doc["message"]
    status, doc = _request(d.docker_sock, "GET", "/containers/json?filters=%7Bx")
    assert status == 400 and "filters" in doc["message"]
    status, doc = _request(d.docker_sock, "GET", "/containers/nosuch/json")
    assert status == 404 and "nosuch" in doc["message"]
    status, doc = _request(d.docker_sock, "POST", "/exec/nosuch/start", b"{}")
    assert status == 404


def test_huge_body_is_413_and_closed(d: Daemon) -> None:
    """A body past the cap is refused as soon as the cap is passed: the connection is
    closed without reading the rest (a 64 MiB body is not sent whole)."""
    size = 64 << 20
    head = (f"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json"
            f"\r\nContent-Length: {size}\r\n\r\n").encode()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(20)
        s.connect(d.docker_sock)
        s.sendall(head)
        sent = 0
        chunk = b" " * (1 << 20)
        try:
            while sent < size:
                s.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        try:
            while data := s.recv(65536):
                out += data
        except ConnectionResetError:
            pass
    assert out.startswith(b"HTTP/1.1 413 "), out[:200]
    assert b"larger than" in out
    assert sent < size


def test_garbage_bytes_are_400_and_closed(d: Daemon) -> None:
    out = _raw(d.docker_sock, b"\x00\xff garbage \x13\x37\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 "), out[:200]
    assert b"malformed HTTP request" in out
    # and the daemon still answers
    assert _raw(d.docker_sock, b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close"
                               b"\r\n\r\n").endswith(b"OK")


def _fds(d: Daemon) -> int:
    assert d.proc is not None
    return len(os.listdir(f"/proc/{d.proc.pid}/fd"))


def test_client_gone_mid_stream(d: Daemon) -> None:
    """A logs -f, an attach and a streaming stats whose clients vanish mid-stream: the
    container still stops and goes at once (nothing of the streams holds it) and the
    daemon logs no traceback (checked when the module's daemon stops)."""
    status, doc = _request(d.docker_sock, "POST", "/containers/create", json.dumps({
        "Image": "busybox", "Cmd": ["sh", "-c", "while true; do echo x; sleep 0.05; done"],
        "OpenStdin": True}).encode())
    assert status == 201, doc
    cid = doc["Id"]
    assert _request(d.docker_sock, "POST", f"/containers/{cid}/start")[0] == 204
    fds = _fds(d)
    for target in (f"/containers/{cid}/logs?follow=1&stdout=1",
                   f"/containers/{cid}/attach?stream=1&stdout=1&stdin=1",
                   f"/containers/{cid}/stats"):
        for _ in range(3):
            method = "POST" if "attach" in target else "GET"
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)
            s.connect(d.docker_sock)
            s.sendall(f"{method} {target} HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\n"
                      f"Upgrade: tcp\r\n\r\n".encode())
            assert s.recv(4096)
            s.close()
    # every stream's connection and task went with its client (a task left streaming
    # would hold its socket, and the logs and stats ones a file or pipe)
    wait_until(lambda: _fds(d) <= fds, what=f"the daemon's fds to come back to {fds}")
    started = time.monotonic()
    assert _request(d.docker_sock, "POST", f"/containers/{cid}/stop?t=0")[0] == 204
    assert _request(d.docker_sock, "DELETE", f"/containers/{cid}")[0] == 204
    assert time.monotonic() - started < 5
    assert cid not in d.ids("-a")
    assert "Traceback" not in d.log(1 << 30)


def test_a_stats_stream_ends_when_its_container_is_removed(d: Daemon) -> None:
    """dockerd ends a streaming stats when its container goes; ours raised "No such
    container" in the stream's task, which the connection logged as a traceback."""
    mark = len(d.log(1 << 30))                        # this test's part of the log
    status, doc = _request(d.docker_sock, "POST", "/containers/create", json.dumps({
        "Image": "busybox", "Cmd": ["sleep", "60"]}).encode())
    assert status == 201, doc
    cid = doc["Id"]
    assert _request(d.docker_sock, "POST", f"/containers/{cid}/start")[0] == 204
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(15)
    s.connect(d.docker_sock)
    s.sendall(f"GET /containers/{cid}/stats HTTP/1.1\r\nHost: d\r\n\r\n".encode())
    got = s.recv(65536)
    while b"cpu_stats" not in got:
        got += s.recv(65536)
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    assert _request(d.docker_sock, "DELETE", f"/containers/{cid}?force=1")[0] == 204
    while not got.endswith(b"\r\n0\r\n\r\n"):    # the chunked body's end, in time
        data = s.recv(65536)
        assert data, "the connection was cut instead of the stream ending"
        got += data
    s.close()
    ours = d.log(1 << 30)[mark:]
    assert "Traceback" not in ours and "No such container" not in ours, ours


@needs_cli
def test_cli_docker_socket_bound_into_a_container(docker, d: Daemon) -> None:
    """``-v DOCKER_SOCK:/var/run/docker.sock`` (what Ryuk and docker-in-docker tools
    ask for): a container reaches the daemon's Docker API through the bound socket (the
    built-in host image brings a Python to ask with)."""
    assert docker("run", "--rm", "-v", f"{d.docker_sock}:/var/run/docker.sock", "busybox",
                  "test", "-S", "/var/run/docker.sock").returncode == 0
    ask = ("import socket; s = socket.socket(socket.AF_UNIX); "
           "s.connect('/var/run/docker.sock'); "
           "s.sendall(b'GET /containers/json?all=1 HTTP/1.0\\r\\nHost: d\\r\\n\\r\\n'); "
           "print(s.makefile('rb').read().decode())")
    out = docker("run", "--rm", "-l", "t=inside", "-v",
                 f"{d.docker_sock}:/var/run/docker.sock", "host", "python3", "-c",
                 ask).stdout
    assert out.startswith("HTTP/1.1 200 ") and '"t": "inside"' in out


def test_stdin_nobody_reads_holds_the_client_not_the_daemon(d: Daemon) -> None:
    """A client streaming stdin to a container (and to an exec) that never reads it: the
    daemon stops reading the client once a few frames wait (the client's send blocks)
    and keeps answering everyone else; it once blocked its whole loop in a write to
    the full pipe."""
    status, doc = _request(d.docker_sock, "POST", "/containers/create", json.dumps({
        "Image": "busybox", "Cmd": ["sleep", "600"], "OpenStdin": True}).encode())
    assert status == 201, doc
    cid = doc["Id"]
    assert _request(d.docker_sock, "POST", f"/containers/{cid}/start")[0] == 204
    status, doc = _request(d.docker_sock, "POST", f"/containers/{cid}/exec", json.dumps({
        "Cmd": ["sleep", "600"], "AttachStdin": True}).encode())
    assert status == 201, doc
    exec_id = doc["Id"]
    rss_before = _rss(d)
    try:
        for target, body in ((f"/containers/{cid}/attach?stream=1&stdin=1", b""),
                             (f"/exec/{exec_id}/start", b'{"Detach": false}')):
            s = socket.socket(socket.AF_UNIX)
            s.connect(d.docker_sock)
            s.sendall(f"POST {target} HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\n"
                      f"Upgrade: tcp\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            s.settimeout(10)
            assert s.recv(4096).startswith(b"HTTP/1.1 101 ")
            s.settimeout(1)            # a send blocked this long: the daemon stopped reading
            sent = 0
            with pytest.raises(socket.timeout):
                while sent < 256 << 20:
                    sent += s.send(b"\0" * (1 << 20))
            assert sent < 64 << 20, f"the daemon took {sent} bytes no one reads"
            started = time.monotonic()
            assert _raw(d.docker_sock, b"GET /_ping HTTP/1.1\r\nHost: d\r\n"
                                       b"Connection: close\r\n\r\n").endswith(b"OK")
            assert time.monotonic() - started < 2
            s.close()
        assert _rss(d) - rss_before < 64 << 20
    finally:
        assert _request(d.docker_sock, "DELETE", f"/containers/{cid}?force=1")[0] == 204


def _rss(d: Daemon) -> int:
    assert d.proc is not None
    for line in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_hijacked_stream_waits_until_its_head_is_read(d: Daemon) -> None:
    """docker-py reads a hijacked response's head through a buffered file, then the
    stream from the raw socket: stream bytes that came in the same read as the head
    were lost (``exec_run(["echo", "x"])`` gave b"" about once in 300 with four clients
    at once). The stream's bytes now wait until the client has read the head: a client
    that reads only after 0.2 s gets the head alone, then the output."""
    status, doc = _request(d.docker_sock, "POST", "/containers/create", json.dumps({
        "Image": "busybox", "Cmd": ["sleep", "600"]}).encode())
    assert status == 201, doc
    cid = doc["Id"]
    try:
        assert _request(d.docker_sock, "POST", f"/containers/{cid}/start")[0] == 204
        status, doc = _request(d.docker_sock, "POST", f"/containers/{cid}/exec", json.dumps(
            {"Cmd": ["echo", "x"], "AttachStdout": True}).encode())
        assert status == 201, doc
        body = b'{"Detach": false, "Tty": false}'
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(20)
            s.connect(d.docker_sock)
            s.sendall(f"POST /exec/{doc['Id']}/start HTTP/1.1\r\nHost: d\r\n"
                      f"Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Type: application/json"
                      f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            time.sleep(0.2)                 # the exec would have written by now
            head = s.recv(65536)
            assert head.startswith(b"HTTP/1.1 101 ") and head.endswith(b"\r\n\r\n"), head
            rest = b""
            while chunk := s.recv(65536):
                rest += chunk
        assert rest == b"\x01\0\0\0\0\0\0\x02x\n", rest     # one stdout frame
    finally:
        assert _request(d.docker_sock, "DELETE", f"/containers/{cid}?force=1")[0] == 204
