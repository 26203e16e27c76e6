"""The Docker Engine API's networks, volumes, events and ``system df`` with the real
clients: the ``docker`` CLI (DOCKER_HOST at the test daemon's docker.sock) and docker-py,
against a real daemon; the networks are real bridges and veths (checked from inside the
container), the volumes real directories, the events the daemon's own bus."""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from typing import Any, Iterator

import pytest

from harness import Daemon, wait_until

pytestmark = pytest.mark.skipif(shutil.which("docker") is None,
                                reason="needs the docker CLI (apt-get install docker.io)")


@pytest.fixture
def docker(daemon: Daemon) -> Iterator[Any]:
    """A runner of the docker CLI against the shared daemon's Docker socket; what a test
    made (containers named dk-*, networks dkn-*, volumes dkv-*) goes afterwards."""
    env = {**os.environ, "DOCKER_HOST": f"unix://{os.path.join(daemon.tmp, 'docker.sock')}",
           "DOCKER_CONFIG": os.path.join(daemon.tmp, "docker-config")}

    def run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(["docker", *args], env=env, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            pytest.fail(f"docker {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc

    run.env = env      # type: ignore[attr-defined]
    yield run
    names = run("ps", "-aq", "--filter", "name=dk-", check=False).stdout.split()
    if names:
        run("rm", "-f", *names, check=False)
    listings = {"network": ("network", "ls", "--format", "{{.Name}}"),
                "volume": ("volume", "ls", "-q")}
    for kind, prefix in (("network", "dkn-"), ("volume", "dkv-")):
        left = [n for n in run(*listings[kind], check=False).stdout.split()
                if n.startswith(prefix)]
        if left:
            run(kind, "rm", *left, check=False)


def events_between(docker: Any, since: float, until: float, *filters: str) -> list[dict]:
    out = docker("events", "--since", f"{since:.9f}", "--until", f"{until:.9f}",
                 "--format", "{{json .}}", *filters).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# ---------------------------------------------------------------- networks

def test_network_create_ls_inspect_connect_disconnect_rm(docker: Any) -> None:
    net_id = docker("network", "create", "--label", "team=dk", "--subnet", "10.231.7.0/24",
                    "--gateway", "10.231.7.1", "dkn-one").stdout.strip()
    assert len(net_id) == 64
    listed = docker("network", "ls", "--filter", "label=team=dk", "--format",
                    "{{.Name}} {{.Driver}} {{.Scope}}").stdout.split("\n")
    assert "dkn-one bridge local" in listed
    assert docker("network", "ls", "-q", "--filter", "name=dkn-one").stdout.strip() == \
        net_id[:12]
    assert "dkn-one" not in docker("network", "ls", "--filter", "type=builtin").stdout
    assert docker("network", "ls", "--filter", "driver=null", "--format",
                  "{{.Name}}").stdout.split() == ["none"]

    docker("run", "-d", "--name", "dk-net", "busybox", "sleep", "60")
    docker("network", "connect", "--alias", "web", "--ip", "10.231.7.50", "dkn-one", "dk-net")
    doc = json.loads(docker("network", "inspect", "dkn-one").stdout)[0]
    assert doc["Name"] == "dkn-one" and doc["Id"] == net_id and doc["Driver"] == "bridge"
    assert doc["IPAM"]["Config"] == [{"Subnet": "10.231.7.0/24", "Gateway": "10.231.7.1"}]
    assert doc["Labels"] == {"team": "dk"} and doc["Internal"] is False
    (cid, member), = doc["Containers"].items()
    assert member["Name"] == "dk-net" and member["IPv4Address"] == "10.231.7.50/24"
    assert len(member["EndpointID"]) == 64 and member["MacAddress"]
    # the kernel's view: a second interface with that address in the container
    addrs = docker("exec", "dk-net", "ip", "-o", "-4", "addr").stdout
    assert "10.231.7.50/24" in addrs
    # the alias answers on the network's resolver
    assert "10.231.7.50" in docker("exec", "dk-net", "nslookup", "web", "127.0.0.11").stdout

    refused = docker("network", "rm", "dkn-one", check=False)
    assert refused.returncode != 0 and "active endpoints" in refused.stderr
    docker("network", "disconnect", "dkn-one", "dk-net")
    assert json.loads(docker("network", "inspect", "dkn-one").stdout)[0]["Containers"] == {}
    assert "10.231.7.50" not in docker("exec", "dk-net", "ip", "-o", "-4", "addr").stdout
    assert docker("network", "rm", "dkn-one").stdout.strip() == "dkn-one"
    gone = docker("network", "inspect", "dkn-one", check=False)
    assert gone.returncode != 0 and "dkn-one" in gone.stderr


def test_network_prune_and_refusals(docker: Any) -> None:
    docker("network", "create", "dkn-unused")
    docker("network", "create", "--label", "keep=1", "dkn-kept")
    out = docker("network", "prune", "-f", "--filter", "until=1h").stdout   # made just now
    assert "dkn-unused" not in out and "dkn-unused" in docker("network", "ls").stdout
    out = docker("network", "prune", "-f", "--filter", "label!=keep=1").stdout
    assert "Deleted Networks:" in out and "dkn-unused" in out and "dkn-kept" not in out
    assert "dkn-unused" not in docker("network", "ls").stdout
    docker("network", "rm", "dkn-kept")

    docker("network", "create", "dkn-dup")
    dup = docker("network", "create", "dkn-dup", check=False)
    assert dup.returncode != 0 and "already exists" in dup.stderr
    v6 = docker("network", "create", "--ipv6", "dkn-six", check=False)
    assert v6.returncode != 0 and "EnableIPv6" in v6.stderr
    overlay = docker("network", "create", "-d", "overlay", "dkn-ov", check=False)
    assert overlay.returncode != 0 and "overlay" in overlay.stderr
    two = docker("network", "create", "--subnet", "10.232.1.0/24", "--subnet",
                 "10.232.2.0/24", "dkn-two", check=False)
    assert two.returncode != 0 and "one" in two.stderr
    builtin = docker("network", "rm", "bridge", check=False)
    assert builtin.returncode != 0 and "pre-defined" in builtin.stderr


# ---------------------------------------------------------------- volumes

def test_volume_create_ls_inspect_run_rm_prune(docker: Any) -> None:
    assert docker("volume", "create", "--label", "tier=db", "dkv-data").stdout.strip() == \
        "dkv-data"
    assert docker("volume", "ls", "-q", "--filter", "label=tier=db").stdout.split() == \
        ["dkv-data"]
    doc = json.loads(docker("volume", "inspect", "dkv-data").stdout)[0]
    assert doc["Name"] == "dkv-data" and doc["Driver"] == "local"
    assert doc["Labels"] == {"tier": "db"} and doc["Scope"] == "local"
    assert os.path.isdir(doc["Mountpoint"])

    # a named volume keeps what one container wrote for the next one
    docker("run", "--rm", "-v", "dkv-data:/data", "busybox", "sh", "-c",
           "echo kept > /data/f")
    assert docker("run", "--rm", "-v", "dkv-data:/data:ro", "busybox",
                  "cat", "/data/f").stdout == "kept\n"
    with open(os.path.join(doc["Mountpoint"], "f")) as f:
        assert f.read() == "kept\n"
    # made on first use by `run -v name:/path`
    docker("run", "--name", "dk-vol", "-v", "dkv-auto:/x", "busybox", "true")
    assert "dkv-auto" in docker("volume", "ls", "-q").stdout.split()
    busy = docker("volume", "rm", "dkv-auto", check=False)
    assert busy.returncode != 0 and "in use" in busy.stderr
    docker("rm", "dk-vol")
    assert docker("volume", "rm", "dkv-auto", "dkv-data").stdout.split() == \
        ["dkv-auto", "dkv-data"]
    missing = docker("volume", "inspect", "dkv-data", check=False)
    assert missing.returncode != 0 and "no such volume" in missing.stderr.lower()
    assert docker("volume", "rm", "-f", "dkv-data").returncode == 0   # force: no error

    # prune: anonymous volumes by default (API 1.42+), every unused one with --all
    docker("create", "--name", "dk-anon", "-v", "/scratch", "busybox", "true")
    anon = json.loads(docker("inspect", "dk-anon").stdout)[0]["Mounts"][0]["Name"]
    docker("volume", "create", "dkv-named")
    docker("rm", "dk-anon")
    pruned = docker("volume", "prune", "-f").stdout
    assert anon in pruned and "dkv-named" not in pruned
    assert "dkv-named" in docker("volume", "prune", "-f", "--all").stdout
    assert not {anon, "dkv-named"} & set(docker("volume", "ls", "-q").stdout.split())


def test_system_df_counts_volumes(docker: Any) -> None:
    docker("volume", "create", "dkv-df")
    docker("run", "--rm", "-v", "dkv-df:/d", "busybox", "dd", "if=/dev/zero", "of=/d/z",
           "bs=1024", "count=300")
    rows = {r["Type"]: r for r in map(json.loads, docker(
        "system", "df", "--format", "{{json .}}").stdout.splitlines())}
    assert int(rows["Local Volumes"]["TotalCount"]) >= 1
    verbose = docker("system", "df", "-v").stdout
    line = next(row for row in verbose.splitlines() if row.startswith("dkv-df "))
    assert line.split()[1] == "0"                       # LINKS: no container mounts it
    assert line.split()[2].endswith("kB") and float(line.split()[2][:-2]) >= 300


# ---------------------------------------------------------------- events

def test_events_since_until_replays_in_docker_shape(docker: Any) -> None:
    since = time.time()
    docker("network", "create", "dkn-ev")
    docker("volume", "create", "dkv-ev")
    cid = docker("run", "--name", "dk-ev", "--label", "app=ev", "-v", "dkv-ev:/v",
                 "busybox", "sh", "-c", "exit 3", check=False).stdout.strip() or \
        json.loads(docker("inspect", "dk-ev").stdout)[0]["Id"]
    docker("rename", "dk-ev", "dk-ev2")
    docker("rm", "dk-ev2")
    docker("network", "rm", "dkn-ev")
    docker("volume", "rm", "dkv-ev")
    until = time.time()

    events = events_between(docker, since, until)
    mine = [(e["Type"], e["Action"]) for e in events
            if e["Actor"]["ID"] in (cid, "dkv-ev")
            or e["Actor"]["Attributes"].get("name") == "dkn-ev"]
    # the CLI attaches while the container starts: its attach comes in between
    assert ("container", "attach") in mine
    mine.remove(("container", "attach"))
    assert mine == [
        ("network", "create"), ("volume", "create"), ("container", "create"),
        ("volume", "mount"), ("container", "start"),
        ("container", "die"), ("volume", "unmount"), ("container", "rename"),
        ("container", "destroy"), ("network", "destroy"), ("volume", "destroy")], mine
    die = next(e for e in events if e["Action"] == "die" and e["Actor"]["ID"] == cid)
    assert die["Actor"]["Attributes"] == {"exitCode": "3", "image": "busybox",
                                          "name": "dk-ev", "app": "ev"}
    assert die["status"] == "die" and die["id"] == cid and die["from"] == "busybox"
    assert die["scope"] == "local" and die["time"] == die["timeNano"] // 10**9
    assert since <= die["timeNano"] / 1e9 <= until
    rename = next(e for e in events if e["Action"] == "rename")
    assert rename["Actor"]["Attributes"]["oldName"] == "/dk-ev"

    # filters: Docker's keys, OR within a key, AND across keys
    assert {e["Type"] for e in events_between(
        docker, since, until, "--filter", "type=network")} == {"network"}
    assert [e["Action"] for e in events_between(
        docker, since, until, "--filter", "container=dk-ev", "--filter",
        "event=start", "--filter", "event=die")] == ["start", "die"]
    assert [e["Action"] for e in events_between(
        docker, since, until, "--filter", "label=app=ev", "--filter", "event=destroy")] \
        == ["destroy"]
    assert [e["Action"] for e in events_between(
        docker, since, until, "--filter", "volume=dkv-ev")] == \
        ["create", "mount", "unmount", "destroy"]
    assert events_between(docker, since, until, "--filter", "image=nosuch") == []
    bad = docker("events", "--since", "1", "--until", "2", "--filter", "colour=red",
                 check=False)
    assert bad.returncode != 0 and "colour" in bad.stderr


def test_events_live_stream_with_a_filter(docker: Any) -> None:
    since = time.time()
    # --since as well: the stream replays from there, so the subscription cannot miss
    # the first die however late it is registered
    watcher = subprocess.Popen(
        ["docker", "events", "--since", f"{since:.9f}", "--filter", "event=die",
         "--filter", "type=container", "--format", "{{json .}}"],
        env=docker.env, stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in watcher.stdout],
                              daemon=True)
    reader.start()

    def listeners() -> int:
        return int(docker("info", "--format", "{{.NEventsListener}}").stdout)
    try:
        cid = docker("run", "-d", "--name", "dk-live", "busybox", "sleep", "60"
                     ).stdout.strip()
        docker("stop", "-t", "1", "dk-live")
        event = json.loads(lines.get(timeout=20))
        assert event["Action"] == "die" and event["Actor"]["ID"] == cid
        assert event["Actor"]["Attributes"]["exitCode"] in ("137", "143")
        assert docker("run", "--rm", "busybox", "sh", "-c", "exit 5", check=False).returncode == 5
        event = json.loads(lines.get(timeout=20))
        assert event["Action"] == "die" and event["Actor"]["Attributes"]["exitCode"] == "5"
        assert watcher.poll() is None          # a live stream: still open
        assert lines.empty()                   # nothing but die events passed the filter
        assert listeners() == 1
    finally:
        watcher.terminate()
        watcher.wait(10)
    # the daemon notices the reader is gone without waiting for a next event
    wait_until(lambda: listeners() == 0, what="the events subscription to end")


def test_stop_rm_and_update_emit_dockers_events(docker: Any) -> None:
    """stop: kill (its signal), die, stop; a stop that times out adds kill 9; rm -f of a
    running container: kill 9, die, destroy; update: update."""
    since = time.time()
    docker("run", "-d", "--name", "dk-term", "busybox", "sh", "-c",
           "trap 'exit 0' TERM; sleep 60 & wait")
    docker("update", "--cpu-shares", "512", "dk-term")
    docker("stop", "-t", "10", "dk-term")
    docker("rm", "dk-term")
    docker("run", "-d", "--name", "dk-kill", "busybox", "sleep", "60")    # pid 1: no TERM
    docker("stop", "-t", "0", "dk-kill")
    docker("start", "dk-kill")
    docker("rm", "-f", "dk-kill")
    until = time.time()

    def actions(name: str) -> list[tuple[str, str]]:
        return [(e["Action"], e["Actor"]["Attributes"].get("signal", ""))
                for e in events_between(docker, since, until, "--filter", f"container={name}")
                if e["Action"] in ("kill", "die", "stop", "update", "destroy")]
    assert actions("dk-term") == [("update", ""), ("kill", "15"), ("die", ""), ("stop", ""),
                                ("destroy", "")]
    assert actions("dk-kill") == [("kill", "15"), ("kill", "9"), ("die", ""), ("stop", ""),
                                 ("kill", "9"), ("die", ""), ("destroy", "")]


def test_sbx_events_reads_the_same_bus(daemon: Daemon, docker: Any) -> None:
    since = time.time()
    docker("volume", "create", "dkv-sbx")
    docker("volume", "rm", "dkv-sbx")
    until = time.time()
    out = daemon.sbx("events", "--since", str(since), "--until", str(until), "--filter",
                     "type=volume", check=True).out.splitlines()
    assert [line.split()[1:4] for line in out] == [["volume", "create", "dkv-sbx"],
                                                   ["volume", "destroy", "dkv-sbx"]]
    assert out[0].endswith("(driver=local)")
    as_json = daemon.sbx("events", "--since", str(since), "--until", str(until),
                         "--format", "{{json .}}", "--filter", "volume=dkv-sbx",
                         check=True).out.splitlines()
    assert [json.loads(line)["Action"] for line in as_json] == ["create", "destroy"]
    bad = daemon.sbx("events", "--filter", "type=bogus", "--until", str(until))
    assert bad.returncode != 0 and "bogus" in bad.err

    # image and exec events, emitted whichever face did the work
    since = time.time()
    daemon.sbx("tag", "busybox", "dkimg:1", check=True)
    daemon.sbx("rmi", "dkimg:1", check=True)
    docker("run", "-d", "--name", "dk-exec", "busybox", "sleep", "60")
    docker("exec", "dk-exec", "true")
    docker("exec", "dk-exec", "sh", "-c", "exit 3", check=False)
    docker("rm", "-f", "dk-exec")
    until = time.time()
    images = events_between(docker, since, until, "--filter", "type=image")
    assert [(e["Action"], e["Actor"]["Attributes"]["name"]) for e in images] == \
        [("tag", "dkimg:1"), ("untag", "dkimg:1")]
    execs = events_between(docker, since, until, "--filter", "event=exec_create",
                           "--filter", "event=exec_start")
    assert [e["Action"] for e in execs] == ["exec_create: true", "exec_start: true",
                                            "exec_create: sh -c exit 3",
                                            "exec_start: sh -c exit 3"]
    died = events_between(docker, since, until, "--filter", "event=exec_die")
    assert [(e["Actor"]["Attributes"]["execID"], e["Actor"]["Attributes"]["exitCode"])
            for e in died] == [(execs[0]["Actor"]["Attributes"]["execID"], "0"),
                               (execs[2]["Actor"]["Attributes"]["execID"], "3")]

    # the Python API reads the same bus
    with daemon.client() as client:
        assert [(e["Type"], e["Action"]) for e in client.events(
            since=since, until=until, filters={"type": "image"})] == \
            [("image", "tag"), ("image", "untag")]

    # a reader that is killed is dropped by the daemon at once
    listeners = lambda: int(docker("info", "--format", "{{.NEventsListener}}").stdout)
    reader = subprocess.Popen([*daemon_cli(daemon), "events"], env=daemon.env,
                              stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: listeners() == 1, what="sbx events to subscribe")
    finally:
        reader.kill()
        reader.wait(10)
    wait_until(lambda: listeners() == 0, what="the killed reader to be dropped")


def daemon_cli(daemon: Daemon) -> list[str]:
    from harness import PY
    return [PY, "-m", "sandboxd"]


# ---------------------------------------------------------------- docker-py

def test_docker_py_networks_volumes_and_events(daemon: Daemon, docker: Any) -> None:
    dockerpy = pytest.importorskip("docker", reason="needs docker-py (pip install docker)")
    client = dockerpy.DockerClient(base_url=docker.env["DOCKER_HOST"], timeout=30)
    api = client.api
    got: queue.Queue[dict] = queue.Queue()
    stream = api.events(decode=True, since=time.time() - 0.001,
                        filters={"type": ["network"]})
    threading.Thread(target=lambda: [got.put(e) for e in stream], daemon=True).start()
    try:
        net = client.networks.create("dkn-py", driver="bridge", labels={"via": "py"})
        assert net.attrs["Labels"] == {"via": "py"}
        volume = client.volumes.create("dkv-py", labels={"via": "py"})
        assert volume.name == "dkv-py" and volume.attrs["Labels"] == {"via": "py"}
        assert [v.name for v in client.volumes.list(filters={"label": "via=py"})] == \
            ["dkv-py"]
        container = client.containers.run("busybox", ["sleep", "60"], name="dk-py",
                                          detach=True, volumes={"dkv-py": {"bind": "/v",
                                                                           "mode": "rw"}})
        net.connect(container, aliases=["pyalias"])
        net.reload()
        assert list(net.attrs["Containers"]) == [container.id]
        assert [c.id for c in net.containers] == [container.id]
        assert client.networks.list(names=["dkn-py"])[0].id == net.id
        net.disconnect(container)
        container.remove(force=True)
        net.remove()
        volume.remove()

        seen = []
        while len(seen) < 4:
            event = got.get(timeout=20)
            if event["Actor"]["Attributes"].get("name") == "dkn-py":
                seen.append(event["Action"])
        assert seen == ["create", "connect", "disconnect", "destroy"]
        with pytest.raises(dockerpy.errors.NotFound):
            client.networks.get("dkn-py")
        with pytest.raises(dockerpy.errors.APIError) as bad:
            api.create_network("dkn-bad", ipam={"Driver": "weird", "Config": []})
        assert bad.value.status_code == 400 and "IPAM.Driver" in str(bad.value)
    finally:
        stream.close()
        client.close()


# ---------------------------------------------------------------- bad input

def _request(daemon: Daemon, method: str, path: str, body: bytes | None = None
             ) -> tuple[int, dict]:
    import http.client
    import socket

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(15)
            self.sock.connect(os.path.join(daemon.tmp, "docker.sock"))

    conn = UnixConnection("localhost")
    try:
        conn.request(method, path, body=body,
                     headers={"Content-Type": "application/json"} if body else {})
        response = conn.getresponse()
        data = response.read()
        is_json = response.getheader("Content-Type") == "application/json"
        return response.status, json.loads(data) if is_json and data else {}
    finally:
        conn.close()


@pytest.mark.parametrize("method, path, body, status, words", [
    ("POST", "/v1.43/networks/create", b"{not json", 400, "invalid JSON"),
    ("POST", "/v1.43/networks/create", b'{"Name": 5}', 400, "Name"),
    ("POST", "/v1.43/networks/create", b'{"Name": "dkn-x", "Colour": 1}', 400, "Colour"),
    ("POST", "/v1.43/networks/create", b'{"Name": "dkn-x", "Labels": {"a": 1}}', 400,
     "Labels"),
    ("POST", "/v1.43/networks/create", b'{"Name": "bad name!"}', 400, "network name"),
    ("POST", "/v1.43/networks/nosuch/connect", b'{"Container": "x"}', 404, "No such"),
    ("POST", "/v1.43/networks/bridge/connect", b"{}", 400, "Container"),
    ("POST", "/v1.43/networks/prune?filters=%7B%22colour%22%3A%5B%22x%22%5D%7D", None,
     400, "colour"),
    ("GET", "/v1.43/networks?filters=%7B%22colour%22%3A%5B%22x%22%5D%7D", None, 400,
     "colour"),
    ("POST", "/v1.43/volumes/create", b'{"Name": "a/b"}', 400, "a/b"),
    ("POST", "/v1.43/volumes/create", b'{"Name": "dkv-x", "Labels": ["a"]}', 400,
     "Labels"),
    ("POST", "/v1.43/volumes/create", b'{"Name": "dkv-x", "Driver": "nfs"}', 400, "nfs"),
    ("GET", "/v1.43/volumes/nosuch", None, 404, "no such volume"),
    ("DELETE", "/v1.43/volumes/nosuch", None, 404, "no such volume"),
    ("GET", "/v1.43/events?since=later", None, 400, "since"),
    ("GET", "/v1.43/events?since=20&until=10", None, 400, "after until"),
    ("GET", "/v1.43/events?until=1&filters=%7B%22type%22%3A%5B%22thing%22%5D%7D", None,
     400, "thing"),
    ("GET", "/v1.43/events?until=1&filters=%5B1%5D", None, 400, "filters"),
])
def test_bad_requests_get_dockers_error_shape(daemon: Daemon, method: str, path: str,
                                             body: bytes | None, status: int,
                                             words: str) -> None:
    got, doc = _request(daemon, method, path, body)
    assert (got, words in doc.get("message", "")) == (status, True), doc
    assert _request(daemon, "GET", "/_ping")[0] == 200      # and the daemon is fine
