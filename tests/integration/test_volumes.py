"""Named and anonymous volumes, ``--mount`` and ``--volumes-from`` through the real
``sbx`` CLI against real daemons: the data lives in the daemon's root and survives its
containers and the daemon; read-only mounts are enforced by the kernel."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from harness import Daemon, running, wait_until

RO = "Read-only file system"


def inspect(daemon: Daemon, *args: str) -> list[dict]:
    return json.loads(daemon.sbx("inspect", *args, check=True).out)


def bound(image: str) -> list[str]:
    """The loop devices backed by ``image``."""
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if backing.read_text().strip() == image:
                found.append(backing.parent.parent.name)
        except OSError:                 # detached meanwhile
            continue
    return found


def volumes(daemon: Daemon, *flags: str) -> list[str]:
    return daemon.sbx("volume", "ls", "-q", *flags, check=True).out.split()


@pytest.fixture
def clean(daemon: Daemon):
    """The shared daemon, left without the containers and volumes a test made."""
    before = set(volumes(daemon))
    yield daemon
    ids = daemon.sbx("ps", "-aq", check=True).out.split()
    if ids:
        daemon.sbx("rm", "-f", *ids)
    extra = set(volumes(daemon)) - before
    if extra:
        daemon.sbx("volume", "rm", "-f", *extra)


def test_named_volume_survives_its_containers_and_a_daemon_restart() -> None:
    with running() as d:
        # First use makes it (as Docker's -v does).
        d.sbx("run", "--rm", "-v", "keep:/data", "busybox", "sh", "-c",
              "echo kept > /data/f", check=True)
        assert volumes(d) == ["keep"]
        doc = json.loads(d.sbx("volume", "inspect", "keep", check=True).out)[0]
        assert doc["Driver"] == "local" and doc["Scope"] == "local" and doc["Name"] == "keep"
        assert doc["Mountpoint"] == f"{d.root}/volumes/keep/_data"
        assert Path(doc["Mountpoint"], "f").read_text() == "kept\n"
        d.proc.send_signal(signal.SIGTERM)          # a clean stop, the same root kept
        assert d.proc.wait(30) == 0
        d.start()
        out = d.sbx("run", "--rm", "--mount", "source=keep,target=/v", "busybox",
                    "cat", "/v/f", check=True).out
        assert out == "kept\n"
        d.sbx("volume", "rm", "keep", check=True)
        assert volumes(d) == [] and not Path(doc["Mountpoint"]).exists()


def test_readonly_mounts_are_enforced(clean: Daemon) -> None:
    d = clean
    d.sbx("volume", "create", "rovol", check=True)
    for flags in (["-v", "rovol:/d:ro"], ["--mount", "type=volume,src=rovol,dst=/d,ro"],
                  ["--mount", "src=rovol,dst=/d,readonly=true"]):
        proc = d.sbx("run", "--rm", *flags, "busybox", "sh", "-c", "touch /d/x")
        assert proc.returncode == 1 and RO in proc.err, (flags, proc.err)
    # The same volume read-write, and -v ...:rw, can write.
    d.sbx("run", "--rm", "-v", "rovol:/d:rw", "busybox", "touch", "/d/x", check=True)
    mounts = inspect(d, "--type", "volume", "rovol")
    assert mounts[0]["Name"] == "rovol"


def test_a_volume_in_use_is_not_removed(clean: Daemon) -> None:
    d = clean
    cid = d.sbx("create", "--name", "vol-user", "-v", "busy:/d", "busybox", "true",
                check=True).out.strip()
    for flags in ((), ("-f",)):                 # Docker: force does not override in-use
        proc = d.sbx("volume", "rm", *flags, "busy")
        assert proc.returncode == 1
        assert f"remove busy: volume is in use - [{cid}]" in proc.err
    # Still empty, but mounted by a container: the image's /usr is not copied into it
    # (another container could race the copy).
    out = d.sbx("run", "--rm", "-v", "busy:/usr", "busybox", "ls", "/usr", check=True).out
    assert out == ""
    assert "busy" in volumes(d, "--filter", "dangling=false")
    assert "busy" not in volumes(d, "--filter", "dangling=true")
    d.sbx("rm", "vol-user", check=True)         # without -v: a named volume stays anyway
    assert "busy" in volumes(d, "--filter", "dangling=true")
    assert d.sbx("volume", "rm", "busy", check=True).out == "busy\n"
    proc = d.sbx("volume", "rm", "busy")
    assert proc.returncode == 1 and "get busy: no such volume" in proc.err
    assert d.sbx("volume", "rm", "-f", "busy").returncode == 0


def test_prune_anonymous_by_default_all_with_a_and_label_filters(clean: Daemon) -> None:
    d = clean
    d.sbx("volume", "create", "--label", "team=a", "named-a", check=True)
    d.sbx("volume", "create", "--label", "team=b", "named-b", check=True)
    d.sbx("create", "--name", "anon-user", "-v", "/anon", "busybox", "true", check=True)
    anon = inspect(d, "anon-user")[0]["Mounts"][0]["Name"]
    d.sbx("run", "--name", "anon-gone", "-v", "/x", "busybox", "true", check=True)
    unused = inspect(d, "anon-gone")[0]["Mounts"][0]["Name"]
    d.sbx("rm", "anon-gone", check=True)        # without -v: its anonymous volume stays
    assert unused in volumes(d)
    out = d.sbx("volume", "prune", "-f", check=True).out
    assert out.startswith(f"Deleted Volumes:\n{unused}\n") and "Total reclaimed space" in out
    assert {"named-a", "named-b", anon} <= set(volumes(d))      # named and in use stay
    assert unused not in volumes(d)
    out = d.sbx("volume", "prune", "-af", "--filter", "label=team=a", check=True).out
    assert "named-a" in out and "named-b" not in out
    assert volumes(d, "-f", "label=team") == ["named-b"]
    proc = d.sbx("volume", "prune", "-f", "--filter", "dangling=true")
    assert proc.returncode != 0 and "invalid filter 'dangling'" in proc.err
    assert anon in volumes(d)


def test_mount_forms_bind_volume_tmpfs(clean: Daemon, tmp_path: Path) -> None:
    d = clean
    host = tmp_path / "host"
    host.mkdir()
    script = ("echo via-bind > /b/f && echo via-vol > /v/f && stat -c %a /t && "
              "df -k /t | tail -1 && ls /usr | grep -c sbin && ls /var | wc -l")
    out = d.sbx("run", "--rm",
                "--mount", f"type=bind,source={host},target=/b",
                "--mount", "type=volume,source=mvol,destination=/v,volume-label=k=v",
                "--mount", "type=tmpfs,dst=/t,tmpfs-size=8m,tmpfs-mode=1770",
                "--mount", "type=volume,src=copied,dst=/usr",
                "-v", "nocopy:/var:nocopy",
                "busybox", "sh", "-c", script, check=True).out.split("\n")
    assert (host / "f").read_text() == "via-bind\n"
    assert out[0] == "1770"
    assert out[1].split()[1] == "8192"                       # tmpfs-size=8m, in KiB
    assert out[2] == "1"                  # an empty new volume gets the image's files ...
    assert out[3] == "0"
    labels = json.loads(d.sbx("volume", "inspect", "mvol", check=True).out)[0]["Labels"]
    assert labels == {"k": "v"}
    assert volumes(d, "--filter", "label=k=v") == ["mvol"]
    # ... and with nocopy it stays empty (busybox's /var/www is not copied).
    assert not os.listdir(f"{d.root}/volumes/nocopy/_data")
    assert "sbin" in os.listdir(f"{d.root}/volumes/copied/_data")
    d.sbx("volume", "rm", "mvol", "copied", "nocopy", check=True)


def test_volumes_from_rm_v_and_rm_keep_named_volumes(clean: Daemon) -> None:
    d = clean
    d.sbx("run", "--name", "src", "-v", "shared:/shared", "-v", "/scratch", "busybox", "sh",
          "-c", "echo s > /shared/f; echo a > /scratch/f", check=True)
    src = inspect(d, "src")[0]
    anon = next(m["Name"] for m in src["Mounts"] if m["Destination"] == "/scratch")
    assert src["HostConfig"]["Binds"] == ["shared:/shared"]
    assert src["Config"]["Volumes"] == {"/scratch": {}}
    out = d.sbx("run", "--rm", "--volumes-from", "src", "busybox", "cat", "/shared/f",
                "/scratch/f", check=True).out
    assert out == "s\na\n"
    proc = d.sbx("run", "--rm", "--volumes-from", "src:ro", "busybox", "touch", "/shared/g")
    assert proc.returncode == 1 and RO in proc.err
    d.sbx("rm", "-v", "src", check=True)
    left = volumes(d)
    assert "shared" in left and anon not in left
    # --rm takes its anonymous volumes with it, named ones stay.
    d.sbx("run", "--rm", "-v", "/gone", "-v", "shared:/s", "busybox", "true", check=True)
    assert set(volumes(d)) == set(left)
    proc = d.sbx("run", "--rm", "--volumes-from", "no-such-ctr", "busybox", "true")
    assert proc.returncode == 125 and "volumes-from: no such container: no-such-ctr" in proc.err
    d.sbx("volume", "rm", "shared", check=True)


def test_image_volume_gets_an_anonymous_volume(clean: Daemon, tmp_path: Path) -> None:
    d = clean
    (tmp_path / "Dockerfile").write_text("FROM busybox\nVOLUME /declared\n")
    d.sbx("build", "-q", "-t", "sbx-vol-image", str(tmp_path), check=True, timeout=120)
    try:
        d.sbx("run", "--name", "decl", "sbx-vol-image", "sh", "-c", "echo x > /declared/f",
              check=True)
        mounts = inspect(d, "decl")[0]["Mounts"]
        assert [m["Destination"] for m in mounts] == ["/declared"]
        assert Path(mounts[0]["Source"], "f").read_text() == "x\n"
        d.sbx("rm", "-v", "decl", check=True)
        assert mounts[0]["Name"] not in volumes(d)
    finally:
        d.sbx("rmi", "sbx-vol-image")


def test_system_df_counts_volumes(clean: Daemon) -> None:
    d = clean
    d.sbx("run", "--rm", "-v", "dfvol:/d", "busybox", "dd", "if=/dev/zero", "of=/d/z",
          "bs=1024", "count=300", check=True)
    out = d.sbx("system", "df", "--format", "{{.Type}} {{.TotalCount}} {{.Size}}",
                check=True).out
    line = next(l for l in out.splitlines() if l.startswith("Local Volumes"))
    assert int(line.split()[2]) >= 1 and line.split()[3] != "0B"
    # Images as `images` and `info` count them: the built-in host image too.
    images = next(l for l in out.splitlines() if l.startswith("Images "))
    listed = d.sbx("images", "-q", check=True).out.split()
    assert "host" in d.sbx("images", check=True).out
    assert int(images.split()[1]) == len(listed) == int(
        d.sbx("info", "--format", "{{.Images}}", check=True).out)
    verbose = d.sbx("system", "df", "-v", check=True).out
    assert "Local Volumes space usage:" in verbose and "dfvol" in verbose
    d.sbx("volume", "rm", "dfvol", check=True)


@pytest.mark.parametrize("flags, expected", [
    (["--mount", "type=bind,target=/x"], "source: required for type=bind"),
    (["--mount", "type=volume,src=ok,dst=rel"], "target: 'rel' must be an absolute path"),
    (["--mount", "type=nfs,dst=/x"], "type: 'nfs' is not bind, volume or tmpfs"),
    (["--mount", "type=bind,src=/tmp,dst=/x,bind-propagation=shared"],
     "bind-propagation: 'shared' is not supported"),
    (["--mount", "type=volume,dst=/x,tmpfs-size=1m"],
     "cannot mix tmpfs-size with mount type 'volume'"),
    (["--mount", "type=tmpfs,dst=/x,tmpfs-mode=99z"], "tmpfs-mode: '99z' is not an octal"),
    (["--mount", "type=volume,dst=/x,colour=red"], "unexpected key 'colour'"),
    (["--mount", "type=volume,dst=/x,volume-driver=nfs"], "driver: 'nfs' is not supported"),
    (["--mount", "type=volume,dst=/x,volume-opt=size=1m"],
     "driver option size: '1m' is outside 16m to 16t"),
    (["--mount", "type=volume,dst=/x,volume-opt=o=bind"], "driver option 'o'"),
    (["-v", "bad name:/x"], "includes invalid characters for a local volume name"),
    (["-v", "ok:/x:bogus"], "unknown mode 'bogus'"),
    (["--volumes-from", "a:rx"], "host.volumes_from[0]: 'a:rx' is not CONTAINER[:ro|rw]"),
    (["--mount", "type=bind,src=/no/such/dir,dst=/x"],
     'invalid mount config for type "bind": bind source path does not exist: /no/such/dir'),
])
def test_bad_mounts_are_refused_naming_the_field(clean: Daemon, flags: list[str],
                                                 expected: str) -> None:
    before = volumes(clean)
    proc = clean.sbx("run", "--rm", *flags, "busybox", "true")
    assert proc.returncode == 125 and expected in proc.err, proc.err
    assert volumes(clean) == before and not clean.sbx("ps", "-aq").out.strip()


def test_bad_volume_create_is_refused(clean: Daemon) -> None:
    d = clean
    for args, expected in ((["x"], "'x' is too short"),
                           (["-d", "nfs", "vv"], "driver: 'nfs' is not supported"),
                           (["-o", "size=lots", "vv"], "invalid size 'lots'"),
                           (["-o", "type=tmpfs", "vv"], "driver option 'type'")):
        proc = d.sbx("volume", "create", *args)
        assert proc.returncode != 0 and expected in proc.err, proc.err
    assert "vv" not in volumes(d)
    proc = d.sbx("volume", "ls", "--filter", "colour=red")
    assert proc.returncode != 0 and "invalid filter 'colour'" in proc.err
    # create is idempotent (Docker's): the same name again is the same volume
    assert d.sbx("volume", "create", "twice", check=True).out == "twice\n"
    assert d.sbx("volume", "create", "twice", check=True).out == "twice\n"
    anon = d.sbx("volume", "create", check=True).out.strip()
    assert len(anon) == 64
    rows = d.sbx("volume", "ls", "--format", "{{json .}}", check=True).out.splitlines()
    assert {json.loads(r)["Name"] for r in rows} >= {"twice", anon}
    table = d.sbx("volume", "ls", "--format", "table {{.Name}}\t{{.Driver}}",
                  check=True).out.splitlines()
    assert table[0].split() == ["VOLUME", "NAME", "DRIVER"]
    assert d.sbx("volume", "ls", "--format", '{{.Label "nope"}}|{{.Scope}}',
                 check=True).out.splitlines()[0] == "|local"
    d.sbx("volume", "rm", "twice", anon, check=True)


def test_a_capped_volume_is_an_ext4_image_shared_by_its_containers(clean: Daemon) -> None:
    """``-o size=``: writes past the size fail inside, two containers mounting it at
    once share it (one loop device), ``:ro`` holds, and nothing stays bound after."""
    d = clean
    d.sbx("volume", "create", "-o", "size=32m", "--label", "kind=capped", "capped",
          check=True)
    doc = json.loads(d.sbx("volume", "inspect", "capped", check=True).out)[0]
    assert doc["Options"] == {"size": "32m"}
    assert doc["Mountpoint"] == f"{d.root}/volumes/capped/volume.img"
    out = d.sbx("run", "--rm", "-v", "capped:/c", "busybox", "sh", "-c",
                "echo kept > /c/f; dd if=/dev/zero of=/c/big bs=1M count=64 2>&1; "
                "echo dd=$?; rm /c/big; df -k /c | tail -1", check=True).out
    assert "No space left on device" in out and "dd=1" in out
    assert 20000 < int(out.splitlines()[-1].split()[1]) <= 32768      # KiB, the cap
    d.sbx("run", "-d", "--name", "holder", "-v", "capped:/c", "busybox", "sh", "-c",
          "echo from-holder > /c/g; exec sleep 600", check=True)
    out = d.sbx("run", "--rm", "--mount", "src=capped,dst=/c,ro", "busybox", "sh", "-c",
                "for i in $(seq 50); do [ -e /c/g ] && break; sleep 0.1; done; "
                "cat /c/f /c/g; touch /c/x", timeout=30)
    assert out.out == "kept\nfrom-holder\n" and RO in out.err
    assert len(bound(doc["Mountpoint"])) == 1           # the holder's, shared
    proc = d.sbx("volume", "rm", "capped")
    assert proc.returncode == 1 and "volume is in use" in proc.err
    d.sbx("rm", "-f", "holder", check=True)
    wait_until(lambda: not bound(doc["Mountpoint"]), 10, "the loop device to detach")
    # An anonymous capped volume from --mount volume-opt, gone with its --rm container.
    out = d.sbx("run", "--rm", "--mount", "type=volume,dst=/a,volume-opt=size=20m",
                "busybox", "df", "-k", "/a", check=True).out
    assert int(out.splitlines()[-1].split()[1]) <= 20480
    assert "capped" in volumes(d)
    usage = d.sbx("system", "df", "-v", check=True).out
    assert any(line.split()[0] == "capped" for line in usage.splitlines() if line.strip())
    d.sbx("volume", "rm", "capped", check=True)
    assert not os.path.exists(doc["Mountpoint"])
    wait_until(lambda: not d.loop_devices(), 10, "every loop device to detach")


def test_system_prune_volumes_takes_unused_anonymous_ones() -> None:
    with running() as d:            # its own: system prune takes every stopped container
        d.sbx("run", "--name", "sp", "-v", "/a", "-v", "sp-named:/n", "busybox", "true",
              check=True)
        anon = inspect(d, "sp")[0]["Mounts"][0]["Name"]
        out = d.sbx("system", "prune", "-f", check=True).out   # without --volumes: kept
        assert "Deleted Containers:" in out and anon in volumes(d)
        out = d.sbx("system", "prune", "-f", "--volumes", check=True).out
        assert f"Deleted Volumes:\n{anon}\n" in out
        assert volumes(d) == ["sp-named"]
