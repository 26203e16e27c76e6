"""--restart policies (Docker's backoff, RestartCount, the daemon's start) and health
checks (--health-*, HEALTHCHECK of an image, ps/inspect, --filter health=)."""
from __future__ import annotations

import itertools
import json
import signal
import time
from typing import Any

import pytest

from harness import Daemon, inspect, running, wait_until


@pytest.fixture(scope="module")
def d():
    with running() as daemon:
        yield daemon


def _state(d: Daemon, name: str) -> dict:
    return inspect(d, name)["State"]


def test_on_failure_retries_then_stops(d: Daemon) -> None:
    d.sbx("run", "-d", "--name", "of3", "--restart", "on-failure:3", "busybox", "sh", "-c",
          "exit 3", check=True)
    wait_until(lambda: inspect(d, "of3")["RestartCount"] == 3
               and _state(d, "of3")["Status"] == "exited", 20, "three restarts, then exited")
    time.sleep(1.2)                                   # the backoff would be 800 ms by now
    doc = inspect(d, "of3")
    assert doc["RestartCount"] == 3 and doc["State"]["ExitCode"] == 3
    assert doc["HostConfig"]["RestartPolicy"] == {"Name": "on-failure",
                                                  "MaximumRetryCount": 3}


def test_on_failure_leaves_success_alone(d: Daemon) -> None:
    d.sbx("run", "-d", "--name", "of0", "--restart", "on-failure", "busybox", "true",
          check=True)
    wait_until(lambda: _state(d, "of0")["Status"] == "exited", 10, "the exit")
    time.sleep(0.5)
    assert inspect(d, "of0")["RestartCount"] == 0


def test_always_backs_off_and_stop_ends_it(d: Daemon) -> None:
    d.sbx("run", "-d", "--name", "alw", "--restart", "always", "busybox", "sh", "-c",
          "exit 1", check=True)
    # 100, 200, 400, 800 ms ...: five restarts take at least 1.5 s
    begin = time.monotonic()
    wait_until(lambda: inspect(d, "alw")["RestartCount"] >= 5, 20, "five restarts")
    assert time.monotonic() - begin > 1.0
    statuses = d.sbx("ps", "-a", "--filter", "name=alw", "--format", "{{.Status}}").out
    assert statuses.startswith(("Restarting (1)", "Up ", "Exited (1)"))
    d.sbx("stop", "alw", check=True)
    count = inspect(d, "alw")["RestartCount"]
    time.sleep(2)
    assert _state(d, "alw")["Status"] == "exited"
    assert inspect(d, "alw")["RestartCount"] == count
    d.sbx("start", "alw", check=True)                 # a user's start: the count resets
    wait_until(lambda: inspect(d, "alw")["RestartCount"] >= 1, 10, "a restart")
    d.sbx("rm", "-f", "alw", check=True)


def test_rm_with_restart_refused(d: Daemon) -> None:
    r = d.sbx("run", "--rm", "--restart", "always", "busybox", "true")
    assert r.returncode == 125
    assert "can't create 'AutoRemove' container with restart policy" in r.err
    r = d.sbx("run", "--restart", "always:2", "busybox", "true")
    assert r.returncode == 125 and "only be used with 'on-failure'" in r.err
    r = d.sbx("run", "--restart", "sometimes", "busybox", "true")
    assert r.returncode == 125 and "unknown policy 'sometimes'" in r.err


def test_update_restart_takes_effect_at_the_next_exit(d: Daemon) -> None:
    """``sbx update --restart`` on a running container (Docker's update): the policy
    is stored, shown by inspect, and applied when it exits; the limits are untouched."""
    d.sbx("run", "-d", "--name", "upd", "-m", "64m", "busybox", "sh", "-c",
          "sleep 0.6; exit 4", check=True)
    d.sbx("update", "--restart", "on-failure:2", "upd", check=True)
    doc = inspect(d, "upd")
    assert doc["HostConfig"]["RestartPolicy"] == {"Name": "on-failure",
                                                  "MaximumRetryCount": 2}
    assert doc["HostConfig"]["Memory"] == 64 << 20
    wait_until(lambda: inspect(d, "upd")["RestartCount"] == 2
               and _state(d, "upd")["Status"] == "exited", 20, "two restarts, then exited")
    d.sbx("update", "--restart", "no", "upd", check=True)
    assert inspect(d, "upd")["HostConfig"]["RestartPolicy"] == {"Name": "no",
                                                                "MaximumRetryCount": 0}
    r = d.sbx("update", "--restart", "always:2", "upd")
    assert r.returncode != 0 and "only be used with 'on-failure'" in r.err
    d.sbx("rm", "-f", "upd", check=True)
    d.sbx("run", "-d", "--rm", "--name", "updrm", "busybox", "sleep", "30", check=True)
    r = d.sbx("update", "--restart", "always", "updrm")
    assert r.returncode != 0
    assert "Restart policy cannot be updated because AutoRemove is enabled" in r.err
    d.sbx("rm", "-f", "updrm", check=True)


def test_starts_stops_kills_and_execs_of_one_container_at_once_take_turns(
        d: Daemon) -> None:
    """Clients restarting, starting, stopping, killing and exec'ing in one container at
    once: every start, restart and stop succeeds, as with Docker, whose second start of
    a running container is a no-op and whose kill waits for a start under way; a kill
    or an exec may only find it not running (409). Both restarts' starts used to pass
    the state check and the second failed in the middle ("container ... is already
    attached to network bridge"); a kill, or a stop's SIGKILL sent after its run had
    ended, failed the next start's set-up ("container setup died before exec"); an
    exec whose container ended under its set-up failed with whichever step noticed
    ("enter the container's namespaces: No such file or directory", "exec setup died
    before exec (status -9)")."""
    import threading

    from sandboxd.errors import Conflict
    d.sbx("run", "-d", "--name", "twice", "busybox", "sh", "-c",
          "trap 'exit 0' TERM; while :; do sleep 0.05; done", check=True)
    failures: list[str] = []
    lifecycle_done = threading.Event()

    def restarts(op: str) -> None:
        with d.client() as own:
            turns(op, own.containers.get("twice"))

    def turns(op: str, container: Any) -> None:
        # Execs go on for as long as the others run: most find it stopped (409), the
        # rest race its ends and starts.
        for n in itertools.count():
            if lifecycle_done.is_set() if op == "exec" else n == 25:
                return
            try:
                if op == "kill":
                    container.kill()
                elif op == "stop":
                    container.stop(timeout=1)
                elif op == "exec":
                    container.exec(["true"])
                elif op == "restart":
                    container.restart(timeout=1)
                else:
                    container.start()
            except Conflict as e:
                if op not in ("kill", "exec") or "is not running" not in str(e):
                    failures.append(f"{op}: {e}")
            except Exception as e:          # noqa: BLE001 -- every failure is reported
                failures.append(f"{op}: {e}")
    threads = [threading.Thread(target=restarts, args=(op,))
               for op in ("restart", "restart", "start", "kill", "stop", "exec", "exec")]
    for thread in threads:
        thread.start()
    for thread in threads[:-2]:
        thread.join(120)
    lifecycle_done.set()
    for thread in threads[-2:]:
        thread.join(120)
    assert not failures, failures[:5]
    d.sbx("rm", "-f", "twice", check=True)


def test_rm_f_during_a_start_kills_what_the_start_made(d: Daemon) -> None:
    """``rm -f`` while the container starts waits for the start, then kills and removes
    it (Docker's container lock). It used to kill before the fork server knew the
    process, miss it, and wait for it to end on its own: a ``sleep 60`` held the rm
    for 60 s. The start either ran first or finds the container gone (404)."""
    import threading

    from sandboxd.errors import NotFound
    client = d.client()
    failures: list[str] = []
    made: set[str] = set()
    for delay in (0.0, 0.002, 0.005) * 2:
        container = client.containers.create("busybox", ["sleep", "30"])
        made.add(container.id)

        def start(container_id: str = container.id) -> None:
            try:
                with d.client() as own:
                    own.containers.get(container_id).start()
            except NotFound:
                pass                                  # the rm came first
            except Exception as e:                    # noqa: BLE001 -- reported
                failures.append(f"start: {e}")

        starting = threading.Thread(target=start)
        starting.start()
        time.sleep(delay)
        began = time.monotonic()
        container.remove(force=True)
        took = time.monotonic() - began
        starting.join(30)
        if took > 10:
            failures.append(f"rm -f took {took:.1f} s")
    left = made & {c.id for c in client.containers.list(all=True)}
    client.close()
    assert not failures, failures[:5]
    assert not left


def test_policies_survive_a_daemon_restart() -> None:
    with running() as d:
        for name, policy in (("p-always", "always"), ("p-unless", "unless-stopped"),
                             ("p-stopped", "unless-stopped"), ("p-fail", "on-failure"),
                             ("p-no", "no"), ("p-always-stopped", "always")):
            d.sbx("run", "-d", "--name", name, "--restart", policy, "busybox", "sleep", "600",
                  check=True)
        d.sbx("stop", "-t", "0", "p-stopped", "p-always-stopped", check=True)
        d.proc.send_signal(signal.SIGTERM)      # a clean stop, keeping the root
        assert d.proc.wait(30) == 0
        d.start()
        up = {"p-always", "p-unless", "p-always-stopped"}
        wait_until(lambda: set(d.sbx("ps", "--format", "{{.Names}}").out.split()) == up,
                   20, f"{sorted(up)} to come back")
        time.sleep(0.5)
        assert set(d.sbx("ps", "--format", "{{.Names}}").out.split()) == up
        assert d.sbx("exec", "p-unless", "echo", "back", check=True).out == "back\n"


def test_health_cmd_healthy_then_unhealthy(d: Daemon) -> None:
    d.sbx("run", "-d", "--name", "hc", "--health-cmd", "test ! -e /tmp/bad && echo fine",
          "--health-interval", "1s", "--health-retries", "2", "busybox", "sleep", "600",
          check=True)
    assert _state(d, "hc")["Health"]["Status"] == "starting"
    assert "(health: starting)" in d.sbx("ps", "--filter", "name=hc", "--format",
                                         "{{.Status}}").out
    wait_until(lambda: _state(d, "hc")["Health"]["Status"] == "healthy", 10, "healthy")
    health = _state(d, "hc")["Health"]
    assert health["FailingStreak"] == 0
    assert health["Log"][-1]["ExitCode"] == 0 and health["Log"][-1]["Output"] == "fine\n"
    assert d.sbx("ps", "--filter", "health=healthy", "--format", "{{.Names}}").out.split() \
        == ["hc"]
    assert "(healthy)" in d.sbx("ps", "--filter", "name=hc", "--format", "{{.Status}}").out
    d.sbx("exec", "hc", "touch", "/tmp/bad", check=True)
    wait_until(lambda: _state(d, "hc")["Health"]["Status"] == "unhealthy", 10, "unhealthy")
    health = _state(d, "hc")["Health"]
    assert health["FailingStreak"] >= 2 and len(health["Log"]) <= 5
    assert d.sbx("ps", "--filter", "health=unhealthy", "--format", "{{.Names}}").out.split() \
        == ["hc"]
    assert inspect(d, "hc")["Config"]["Healthcheck"] == {
        "Test": ["CMD-SHELL", "test ! -e /tmp/bad && echo fine"], "Interval": 1_000_000_000,
        "Retries": 2}
    # A probe is an exec, with an exec's events (as Docker's)
    until = time.time()
    actions = d.sbx("events", "--since", "0", "--until", str(until), "--filter",
                    "container=hc", "--format", "{{.Action}}", check=True).out.splitlines()
    probe = "/bin/sh -c test ! -e /tmp/bad && echo fine"
    assert actions.count(f"exec_create: {probe}") >= 3
    assert actions.count(f"exec_start: {probe}") >= 3
    assert actions.count("exec_die") >= actions.count(f"exec_start: {probe}")
    d.sbx("rm", "-f", "hc", check=True)


def test_health_timeout(d: Daemon) -> None:
    d.sbx("run", "-d", "--name", "hto", "--health-cmd", "sleep 5", "--health-interval",
          "200ms", "--health-timeout", "300ms", "--health-retries", "1", "busybox",
          "sleep", "600", check=True)
    wait_until(lambda: _state(d, "hto")["Health"]["Status"] == "unhealthy", 10, "unhealthy")
    probe = _state(d, "hto")["Health"]["Log"][0]
    assert probe["ExitCode"] == -1 and "exceeded timeout" in probe["Output"]
    d.sbx("rm", "-f", "hto", check=True)


def test_image_healthcheck_and_no_healthcheck(d: Daemon, tmp_path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox\n"
        "HEALTHCHECK --interval=200ms --timeout=2s --retries=2 CMD [\"true\"]\n")
    d.sbx("build", "-q", "-t", "hcimg", str(tmp_path), check=True)
    image = json.loads(d.sbx("image", "inspect", "hcimg", check=True).out)[0]
    assert image["Config"]["Healthcheck"] == {"Test": ["CMD", "true"],
                                              "Interval": 200_000_000,
                                              "Timeout": 2_000_000_000, "Retries": 2}
    d.sbx("run", "-d", "--name", "hci", "hcimg", "sleep", "600", check=True)
    assert inspect(d, "hci")["Config"]["Healthcheck"] == {
        "Test": ["CMD", "true"], "Interval": 200_000_000, "Timeout": 2_000_000_000,
        "Retries": 2}
    wait_until(lambda: _state(d, "hci")["Health"]["Status"] == "healthy", 10, "healthy")
    d.sbx("run", "-d", "--name", "hcn", "--no-healthcheck", "hcimg", "sleep", "600",
          check=True)
    assert "Health" not in _state(d, "hcn")
    assert d.sbx("ps", "--filter", "health=none", "--format", "{{.Names}}").out.split() \
        == ["hcn"] or "hcn" in d.sbx("ps", "--filter", "health=none", "--format",
                                     "{{.Names}}").out.split()
    r = d.sbx("run", "--no-healthcheck", "--health-cmd", "true", "busybox", "true")
    assert r.returncode == 125 and "conflicts with --health-*" in r.err
    d.sbx("rm", "-f", "hci", "hcn", check=True)
