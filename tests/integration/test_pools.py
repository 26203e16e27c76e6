"""Pools of prepared containers (sandboxd/pools.py): a pooled container is the cold one
from the inside, pools are declared and learned, hits and misses, nothing of them shows
in ``ps`` and nothing outlives the daemon; bad declarations are refused clearly."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading

import pytest

from harness import PY, REPO, Daemon, pid_alive, running, wait_until
from sandboxd.errors import InvalidArgument, NotFound

OPTS = dict(memory="64m", pids_limit=64)

# What a container sees of itself. Values that differ between any two containers by
# nature (its pid's memory figures, the overlay's upper path, namespace inode numbers)
# are left out here and checked apart.
PROBE = r"""
echo "hostname=$(hostname) etc=$(cat /etc/hostname) env=$HOSTNAME"
grep -E '^(Uid|Gid|Groups|Cap[A-Za-z]+|NoNewPrivs|Seccomp|Seccomp_filters|Cpus_allowed_list|Mems_allowed_list|NSpid|Umask)' /proc/self/status
env | grep -v '^HOSTNAME=' | sort
echo "pwd=$(pwd) pid=$$"; id; ulimit -a
for f in /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max \
         /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max; do
  [ -e $f ] && echo "$f=$(cat $f)"
done
awk '{ for (i = 7; $i != "-"; i++); print $5, $6, $(i+1) }' /proc/self/mountinfo
stat -c '%n %a %U %G' /tmp /etc/hosts /etc/resolv.conf; ls -A /tmp
cat /etc/hosts /etc/resolv.conf
echo ns; for n in mnt uts ipc net pid cgroup; do readlink /proc/self/ns/$n; done
"""


def _probe(client, **extra) -> tuple[str, list[str], str]:
    result = client.run("busybox", ["sh", "-c", PROBE], workdir="/work",
                        env={"GREETING": "hi"}, **OPTS, **extra)
    assert result.exit_code == 0, result.stderr
    text, _, ns = result.stdout.decode().partition("ns\n")
    return text, ns.split(), result.id


def _pool(client) -> dict:
    pools = client.pools()["pools"]
    return pools[0] if pools else {}


@pytest.fixture(scope="module")
def pooled_daemon():
    with running() as d:
        yield d


def test_pooled_container_is_indistinguishable_from_a_cold_one(pooled_daemon):
    client = pooled_daemon.client()
    client.set_pool("busybox", 1, workdir="/work", **OPTS)    # made and entered at park
    wait_until(lambda: _pool(client).get("ready") == 1, what="the pool to fill")
    hits = _pool(client)["hits"]
    pooled, pooled_ns, pooled_id = _probe(client)
    assert _pool(client)["hits"] == hits + 1, "the run did not take the pooled container"
    client.set_pool("busybox", 0, workdir="/work", **OPTS)
    wait_until(lambda: not client.pools()["pools"], what="the pool to go")
    cold, cold_ns, cold_id = _probe(client)
    assert not client.pools()["pools"], "the cold run came from a pool"

    # The host name is the request's id, whichever way it started.
    assert f"hostname={pooled_id[:12]} etc={pooled_id[:12]} env={pooled_id[:12]}" in pooled
    assert f"hostname={cold_id[:12]} etc={cold_id[:12]} env={cold_id[:12]}" in cold
    same = lambda text, cid: text.replace(cid[:12], "<id>")      # noqa: E731
    assert same(pooled, pooled_id) == same(cold, cold_id)
    for line in ("GREETING=hi", "pwd=/work pid=1", "uid=0(root) gid=0(root)",
                 "memory.limit_in_bytes=67108864", "pids.max=64", "/tmp 1777 root root"):
        assert line in pooled, f"{line!r} missing:\n{pooled}"
    # Fresh namespaces: none shared with the host. (Not compared with each other: the
    # two never ran at once, and the kernel reuses a freed namespace's inode number.)
    host_ns = [os.readlink(f"/proc/self/ns/{n}") for n in
               ("mnt", "uts", "ipc", "net", "pid", "cgroup")]
    assert len(pooled_ns) == 6 and len(cold_ns) == 6
    for a, b, h in zip(pooled_ns, cold_ns, host_ns):
        assert h not in (a, b), (a, b, h)


PROFILE = ["sh", "-c", "id; pwd; ls -ld .; grep -E '^(Cap|NoNewPrivs|Seccomp)' "
           "/proc/self/status; ulimit -n; echo $HOME"]


@pytest.mark.parametrize("opts", [
    dict(user="nobody", workdir="/made/at/park"),    # made as root, then entered as nobody
    dict(user="1000:1000", workdir="/tmp", cap_drop=["ALL"]),
    dict(security_opt=["no-new-privileges=false"]),  # the filter loaded at park, once
    dict(security_opt=["seccomp=unconfined"], ulimits=["nofile=64:64"]),
])
def test_pooled_security_profiles_are_the_cold_ones(pooled_daemon, opts):
    """User, groups, capabilities, no_new_privs, seccomp, ulimits, HOME and workdir are
    applied at park (before sbx-park waits): a hit shows exactly what a cold run shows."""
    client = pooled_daemon.client()
    cold = client.run("busybox", PROFILE, **OPTS, **opts)
    client.set_pool("busybox", 1, **OPTS, **opts)
    wait_until(lambda: _pool(client).get("ready") == 1, what="the pool to fill")
    pooled = client.run("busybox", PROFILE, **OPTS, **opts)
    assert _pool(client)["hits"] == 1
    assert (pooled.exit_code, pooled.stdout) == (cold.exit_code, cold.stdout)
    assert b"Seccomp_filters:\t" + (b"0" if "seccomp=unconfined" in str(opts) else b"1") \
        in pooled.stdout
    client.set_pool("busybox", 0, **OPTS, **opts)
    wait_until(lambda: not client.pools()["pools"], what="the pool to go")


def test_a_filter_that_denies_sbx_parks_own_calls_is_loaded_at_the_take(pooled_daemon,
                                                                        tmp_path):
    """A filter that lets all of sbx-park's calls through is loaded at park; one that
    denies one of them (setsid here: sbx-park's would fail) is loaded at the take, just
    before the exec, and the pooled run is still the cold one."""
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["setsid", "mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                      "errnoRet": 13}]}))
    opts = dict(OPTS, security_opt=[f"seccomp={profile}"])
    probe = ["sh", "-c", "mkdir /tmp/d; echo mkdir=$?; grep Seccomp_filters /proc/self/status"]
    client = pooled_daemon.client()
    cold = client.run("busybox", probe, **opts)
    client.set_pool("busybox", 1, **opts)
    wait_until(lambda: _pool(client).get("ready") == 1, what="the pool to fill")
    pooled = client.run("busybox", probe, **opts)
    assert _pool(client)["hits"] == 1
    assert (pooled.exit_code, pooled.stdout, pooled.stderr) == \
        (cold.exit_code, cold.stdout, cold.stderr)
    assert b"mkdir=1" in pooled.stdout         # the profile is in force, once
    assert b"Seccomp_filters:\t1" in pooled.stdout
    client.set_pool("busybox", 0, **opts)
    wait_until(lambda: not client.pools()["pools"], what="the pool to go")


def test_a_hit_takes_a_ready_container_and_the_pool_refills(pooled_daemon):
    client = pooled_daemon.client()
    client.set_pool("busybox", 2, **OPTS)
    wait_until(lambda: _pool(client).get("ready") == 2, what="the pool to fill")
    parked = set(_pool(client)["pids"])
    assert all(pid_alive(p) for p in parked)
    # Each parked container has namespaces of its own, none the host's.
    names = ("mnt", "uts", "ipc", "net", "pid", "cgroup")
    seen = [[os.readlink(f"/proc/{p}/ns/{n}") for n in names] for p in [os.getpid(), *parked]]
    for column in zip(*seen):
        assert len(set(column)) == 3, column
    # Parked containers are no containers of the user's: ps and ps -a do not list them,
    # info and df count them.
    assert pooled_daemon.ids("-a") == []
    assert client.info()["pooled"] == 2
    df = pooled_daemon.sbx("system", "df", check=True).out
    assert any(line.split()[:3] == ["Pooled", "Containers", "2"] for line in df.splitlines())

    result = client.run("busybox", ["sh", "-c", "echo $$; cat /proc/1/cmdline"], **OPTS)
    assert result.stdout.decode().split()[0] == "1"
    wait_until(lambda: _pool(client).get("ready") == 2, what="the pool to refill")
    assert len(parked - set(_pool(client)["pids"])) == 1, "one was used, never returned"
    # Another limit is another key: a miss, started cold.
    hits = _pool(client)["hits"]
    assert client.run("busybox", ["true"], memory="32m", pids_limit=64).exit_code == 0
    assert _pool(client)["hits"] == hits
    # A created container adopts the pooled id; removed unstarted, its parked one goes.
    created = client.containers.create("busybox", ["true"], auto_remove=True, **OPTS)
    taken = parked | set(_pool(client)["pids"])
    wait_until(lambda: _pool(client).get("ready") == 2, what="the pool to refill")
    created.remove(force=True)
    wait_until(lambda: not [p for p in taken if pid_alive(p) and
                            p not in _pool(client)["pids"]],
               what="the claimed container's parked process to go")
    client.set_pool("busybox", 0, **OPTS)
    wait_until(lambda: not client.pools()["pools"], what="the pool to go")
    assert pooled_daemon.cgroup_children() == []


def test_a_rm_run_is_removed_before_the_next_request_and_never_seen_unstarted_again(
        pooled_daemon):
    # A --rm run's reply goes out before its removal (ContainerService._settle): in
    # between, lookups find its exited record, and the removal runs before any request
    # that comes after the reply. Another connection lists containers all along.
    client = pooled_daemon.client()
    client.set_pool("busybox", 1, **OPTS)
    wait_until(lambda: _pool(client).get("ready") == 1, what="the pool to fill")
    seen: dict[str, list[str]] = {}
    listings: list[int] = []
    failures: list[BaseException] = []
    done = threading.Event()

    def watch() -> None:
        try:
            watcher = pooled_daemon.client()
            while not done.is_set():
                for c in watcher.containers.list(all=True):
                    states = seen.setdefault(c.id, [])
                    if not states or states[-1] != c.status:
                        states.append(c.status)
                listings.append(1)
        except BaseException as e:
            failures.append(e)
    watching = threading.Thread(target=watch)
    watching.start()
    ran = []
    try:
        for i in range(40):
            result = client.run("busybox", ["true"], **OPTS)        # hits and misses
            assert result.exit_code == 0
            ran.append(result.id)
            assert result.id not in {c.id for c in client.containers.list(all=True)}
            with pytest.raises(NotFound):
                client.containers.get(result.id)
    finally:
        done.set()
        watching.join(30)
        client.set_pool("busybox", 0, **OPTS)
    assert not failures and len(listings) >= 40
    assert set(ran) & set(seen), "the listings never overlapped a run"
    for states in seen.values():
        # "created" only before the start; never again once it ran or exited
        assert "created" not in states[1:], states


def test_a_parked_container_waits_in_sbx_park_and_takes_any_command(pooled_daemon):
    """The parked pid 1 is the small static sbx-park, not a Python fork; what it does
    at the take (stdio or a pty, the environment, the PATH search, the exec) gives
    what a cold start gives."""
    client = pooled_daemon.client()
    client.set_pool("busybox", 1, **OPTS)
    wait_until(lambda: _pool(client).get("ready") == 1, what="the pool to fill")
    (pid,) = _pool(client)["pids"]
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[0] == b"sbx-park"
    assert client.pools()["waits_in"] == "sbx-park"
    probe = ["sh", "-c", "tty; echo TERM=$TERM HOME=$HOME PATH=$PATH A=$A; ls -l /proc/$$/fd"]
    fds: dict[bool, list[str]] = {}
    for pooled in (True, False):
        wait_until(lambda: not pooled or _pool(client).get("ready") == 1,
                   what="the pool to refill")
        hits = _pool(client).get("hits", 0)
        result = client.run("busybox", probe, tty=True, env={"A": "1", "PATH": "/bin"},
                            **OPTS)
        assert (_pool(client).get("hits", 0) == hits + 1) == pooled
        lines = result.stdout.decode().replace("\r", "").splitlines()
        assert lines[0] == "/dev/pts/0", lines
        assert lines[1] == "TERM=xterm HOME=/root PATH=/bin A=1", lines
        fds[pooled] = [line.split(None, 8)[-1] for line in lines[3:]]   # "N -> target"
        if pooled:
            client.set_pool("busybox", 0, **OPTS)
            wait_until(lambda: not client.pools()["pools"], what="the pool to go")
    assert fds[True] == fds[False]                 # no fd of the park's reaches the shell
    assert fds[True][:3] == ["0 -> /dev/pts/0", "1 -> /dev/pts/0", "2 -> /dev/pts/0"]


def test_a_taken_terminal_has_its_size_from_the_start(pooled_daemon):
    """Docker's ConsoleSize: the pty is sized before the exec, for a pooled container
    (in sbx-park, and in the Python wait of an init's) as for a cold one. And its output
    is all there: the exit of a command this fast is often read in the same turn as its
    start, before the pty's master has arrived (it once settled the run with no output)."""
    client = pooled_daemon.client()
    for init in (False, True):
        client.set_pool("busybox", 1, init=init, **OPTS)
        try:
            wait_until(lambda: _pool(client).get("ready") == 1, what="the pool to fill")
            hits = _pool(client)["hits"]
            result = client.run("busybox", ["stty", "size"], tty=True,
                                console_size=(40, 120), init=init, **OPTS)
            assert result.stdout == b"40 120\r\n" and _pool(client)["hits"] == hits + 1
        finally:       # a failure here must not leave its pool to the module's next tests
            client.set_pool("busybox", 0, init=init, **OPTS)
            wait_until(lambda: not client.pools()["pools"], what="the pool to go")
    cold = client.run("busybox", ["stty", "size"], tty=True, console_size=(41, 121), **OPTS)
    assert cold.stdout == b"41 121\r\n"


def test_a_command_and_env_too_big_for_a_take_start_cold(pooled_daemon):
    """What does not fit one take message (park.MAX_TAKE) is no hit: it starts cold,
    with the cold path's result, and the pool keeps its parked container."""
    client = pooled_daemon.client()
    client.set_pool("busybox", 1, **OPTS)
    wait_until(lambda: _pool(client).get("ready") == 1, what="the pool to fill")
    parked = _pool(client)["pids"]
    env = {"A": "a" * 60_000, "B": "b" * 60_000}
    result = client.run("busybox", ["sh", "-c", 'echo ${#A} ${#B}'], env=env, **OPTS)
    assert result.stdout == b"60000 60000\n"
    assert _pool(client)["hits"] == 0 and _pool(client)["pids"] == parked
    client.set_pool("busybox", 0, **OPTS)
    wait_until(lambda: not client.pools()["pools"], what="the pool to go")
    wait_until(lambda: not any(pid_alive(p) for p in parked), what="the parked to go")


def test_an_init_pool_waits_in_python_behind_its_reaper(pooled_daemon):
    """--init's reaper is the Python loop of runner/init.py: such a container waits in
    Python (and counts 4 MiB), and runs as a cold --init container does."""
    client = pooled_daemon.client()
    probe = ["sh", "-c", "echo $$; cat /proc/1/cmdline | tr '\\0' ' '"]
    cold = client.run("busybox", probe, init=True, **OPTS).stdout
    client.set_pool("busybox", 1, init=True, **OPTS)
    wait_until(lambda: _pool(client).get("ready") == 1, what="the pool to fill")
    (pid,) = _pool(client)["pids"]
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert b"sbx-park" not in f.read()
    hits = _pool(client)["hits"]
    assert client.run("busybox", probe, init=True, **OPTS).stdout == cold
    assert _pool(client)["hits"] == hits + 1
    client.set_pool("busybox", 0, init=True, **OPTS)
    wait_until(lambda: not client.pools()["pools"], what="the pool to go")


def test_without_a_compiler_parked_containers_wait_in_python(tmp_path):
    """No cc to build sbx-park: the log says so, the budget counts 4 MiB each, and the
    pool still serves, its containers waiting in Python."""
    d = Daemon()
    d.env.update(PATH="/nonexistent", SANDBOXD_CACHE_DIR=str(tmp_path / "cache"))
    try:
        d.start()
        d.import_busybox()
        d.proc.terminate()
        assert d.proc.wait(30) == 0
        d.flags = ("--pool", "busybox,memory=64m,pids-limit=64=1", "--pool-memory", "8m")
        d.start()
        client = d.client()
        wait_until(lambda: _pool(client).get("ready") == 1, what="the pool to fill")
        assert client.pools()["waits_in"] == "python"
        assert client.pools()["parked_memory"] == 4 << 20
        assert "no C compiler (cc)" in d.log()
        result = client.run("busybox", ["sh", "-c", "echo $$ $HOME"], **OPTS)
        assert result.stdout == b"1 /root\n" and _pool(client)["hits"] == 1
    finally:
        d.stop()


def test_a_failing_workload_fails_as_a_cold_one(pooled_daemon):
    client = pooled_daemon.client()
    client.set_pool("busybox", 1, **OPTS)
    wait_until(lambda: _pool(client).get("ready") == 1, what="the pool to fill")
    from sandboxd.errors import CommandNotFound
    with pytest.raises(CommandNotFound):
        client.run("busybox", ["no-such-command"], **OPTS)
    result = client.run("busybox", ["sh", "-c", "exit 3"], **OPTS)
    assert result.exit_code == 3
    client.set_pool("busybox", 0, **OPTS)
    wait_until(lambda: not client.pools()["pools"], what="the pool to go")


def test_bad_pools_are_refused_at_the_api(pooled_daemon):
    client = pooled_daemon.client()
    with pytest.raises(NotFound):
        client.set_pool("no-such-image", 1)
    with pytest.raises(InvalidArgument, match="never pooled"):
        client.set_pool("busybox", 1, ports=["8080:80"])
    with pytest.raises(InvalidArgument, match="count"):
        client.set_pool("busybox", -1)
    assert client.pools()["pools"] == []


def test_learned_pool_fills_within_the_budget_and_serves_the_next_request():
    with running("--pool-memory", "4m") as d:
        client = d.client()
        assert client.run("busybox", ["true"], **OPTS).exit_code == 0     # a miss
        wait_until(lambda: _pool(client).get("ready") == 2, what="the learned pool")
        assert _pool(client)["declared"] == 0 and _pool(client)["misses"] == 1
        assert client.run("busybox", ["true"], **OPTS).exit_code == 0
        assert _pool(client)["hits"] == 1
        # 4m holds four parked containers (1m each in sbx-park): a second key gets
        # what is left.
        assert client.run("busybox", ["true"], memory="32m").exit_code == 0
        wait_until(lambda: client.pools()["parked"] == 4, what="the second learned pool")
        assert client.pools()["parked"] == 4


def test_declared_pools_fill_at_start_and_a_restart_reaps_them():
    d = Daemon().start()
    try:
        d.import_busybox()
        d.proc.terminate()
        assert d.proc.wait(30) == 0
        d.flags = ("--pool", "busybox,memory=64m,pids-limit=64=3")
        d.start()
        client = d.client()
        wait_until(lambda: _pool(client).get("ready") == 3, what="the declared pool")
        parked = _pool(client)["pids"]
        assert len({os.path.basename(c) for c in d.cgroup_children()}) == 3
        d.kill9()              # the fork server sees its socket close: it reaps them all
        wait_until(lambda: not any(pid_alive(p) for p in parked), 10,
                   what="the parked containers to die with the daemon")
        d.start()
        wait_until(lambda: _pool(d.client()).get("ready") == 3, what="the refill")
        assert not set(parked) & set(_pool(d.client())["pids"])
    finally:
        d.stop()


@pytest.mark.parametrize("flags, message", [
    (("--pool", "busybox,bogus=1=2"), "bogus=1"),
    (("--pool", "busybox=many"), "IMAGE[,OPTION=VALUE...]=N"),
    (("--pool", "busybox,memory=lots=1"), "memory"),
    (("--pool-memory", "512k"), "less than one parked container"),
])
def test_bad_declarations_stop_the_start(tmp_path, flags, message):
    proc = subprocess.run([PY, "-m", "sandboxd.daemon", "--root", str(tmp_path / "root"),
                           "--host", str(tmp_path / "s.sock"), *flags],
                          capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_a_pool_of_a_missing_image_stops_the_start():
    d = Daemon("--pool", "no-such-image=1")
    with pytest.raises(AssertionError, match="no-such-image"):
        d.start()
    d.assert_clean()
    # What started before the pools' check (the fork and network servers) was stopped,
    # not dropped with the loop ("Task was destroyed but it is pending!").
    assert "Traceback" not in d.log() and "destroyed but it is pending" not in d.log(), \
        d.log()
    shutil.rmtree(d.tmp)


def _held_mount_namespaces(daemon) -> list[str]:
    (pid,) = daemon.forkserver_pids()
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    return [link for link in links if link.startswith("mnt:")]


def test_the_fork_server_lets_go_of_each_mount_namespace_at_the_exit(pooled_daemon):
    """The fork server holds a container's mount namespace from its clone to its exit
    report (runner/forkserver.py, _Container.mounts_hold): one per parked or running
    container, none left once they have ended, cold or pooled."""
    client = pooled_daemon.client()
    assert _held_mount_namespaces(pooled_daemon) == []
    for _ in range(3):
        assert client.run("busybox", ["true"], **OPTS).exit_code == 0     # cold
    # Let go right after the exit report, which the reply may overtake.
    wait_until(lambda: _held_mount_namespaces(pooled_daemon) == [], 5,
               "the fork server to let go of the cold runs' mount namespaces")
    client.set_pool("busybox", 2, **OPTS)
    wait_until(lambda: _pool(client).get("ready") == 2, what="the pool to fill")
    held = _held_mount_namespaces(pooled_daemon)
    assert len(set(held)) == 2, held                      # one per parked container
    hits = _pool(client)["hits"]
    for _ in range(3):
        assert client.run("busybox", ["true"], **OPTS).exit_code == 0
    assert _pool(client)["hits"] > hits
    wait_until(lambda: _pool(client).get("ready") == 2, what="the pool to refill")
    assert len(_held_mount_namespaces(pooled_daemon)) == 2
    client.set_pool("busybox", 0, **OPTS)
    wait_until(lambda: not client.pools()["pools"], what="the pool to go")
    wait_until(lambda: _held_mount_namespaces(pooled_daemon) == [],
               what="the fork server to let go of every mount namespace")
