"""Disk and logs are capped (issue 13): a container cannot fill the host's disk through
its writable layer, its tmpfs mounts or its output.

The writable layer of a container that is not --rm is a sparse ext4 image of its
``--storage-opt size`` (the daemon's ``--default-storage-size`` otherwise), loop-mounted
only inside its own mount namespace; logs rotate (``--log-opt max-size/max-file``)
keeping the newest output.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from harness import Daemon, wait_until
from sandboxd.containers import READ_CHUNK

MiB = 1 << 20


def _free(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _inspect(daemon: Daemon, name: str, field: str) -> object:
    out = daemon.sbx("inspect", "-f", "{{json .HostConfig.%s}}" % field, name, check=True).out
    return json.loads(out)


def _restart(daemon: Daemon, *flags: str) -> None:
    """SIGTERM, then start again on the same root with ``flags``."""
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(30) == 0
    daemon.flags = flags
    daemon.start()


def _layer_images(daemon: Daemon) -> list[Path]:
    return list(Path(daemon.root, "snapshots").glob("[0-9]*/layer.img"))


# ---------------------------------------------------------------- the writable layer

def test_writing_past_the_storage_cap_is_enospc_and_the_host_barely_moves(secure_daemon):
    d = secure_daemon
    free = _free(d.root)
    before = set(_layer_images(d))
    r = d.sbx("run", "--name", "caps-fill", "--storage-opt", "size=64m", "busybox", "sh",
              "-c", "dd if=/dev/zero of=/big bs=1M count=300; echo dd=$?; sync; df -k /")
    try:
        assert "No space left on device" in r.err, r.err
        assert "dd=1" in r.out
        size_kib = int(r.out.split("\n")[-2].split()[1])
        assert 40 << 10 < size_kib <= 64 << 10          # / is the capped layer
        # 300 MB asked; only what fits in the cap reached the host's disk
        assert free - _free(d.root) < 80 * MiB
        (image,) = set(_layer_images(d)) - before
        assert image.stat().st_size == 64 * MiB and image.stat().st_blocks * 512 <= 64 * MiB
        assert _inspect(d, "caps-fill", "StorageOpt") == {"size": "64M"}
    finally:
        d.sbx("rm", "-f", "caps-fill", check=True)


def test_a_container_gets_the_daemon_default_cap(secure_daemon):
    d = secure_daemon
    r = d.sbx("run", "--name", "caps-default", "busybox", "df", "-k", "/", check=True)
    try:
        size_kib = int(r.out.splitlines()[-1].split()[1])
        assert 9 << 20 < size_kib <= 10 << 20           # the 10G default, sparse
        assert _inspect(d, "caps-default", "StorageOpt") == {"size": "10G"}
    finally:
        d.sbx("rm", "caps-default", check=True)


def test_bad_storage_options_are_refused(secure_daemon):
    for opt, words in (("size=1m", "minimum"), ("size=lots", "invalid size"),
                       ("inodes=5", "size=N")):
        r = secure_daemon.sbx("create", "--storage-opt", opt, "busybox", "true")
        assert r.returncode == 125 and words in r.err, (opt, r.err)


def test_the_cap_survives_a_restart_and_removal_frees_it():
    d = Daemon("--default-storage-size", "48m").start()
    try:
        d.import_busybox()
        d.sbx("run", "--name", "caps-keep", "busybox", "sh", "-c",
              "dd if=/dev/zero of=/a bs=1M count=8", check=True)
        # started again with another default: the container keeps the cap it was made with
        _restart(d, "--default-storage-size", "1g")
        assert _inspect(d, "caps-keep", "StorageOpt") == {"size": "48M"}
        r = d.sbx("start", "-a", "caps-keep")     # the same command again: a second 8 MiB
        assert r.returncode == 0, r.err
        r = d.sbx("cp", "caps-keep:/a", os.path.join(d.tmp, "a"))
        assert r.returncode == 0 and os.path.getsize(os.path.join(d.tmp, "a")) == 8 * MiB
        # the layer kept its data, and a bigger write still stops at the cap
        r = d.sbx("run", "--name", "caps-more", "--storage-opt", "size=32m", "busybox", "sh",
                  "-c", "dd if=/dev/zero of=/b bs=1M count=64")
        assert "No space left on device" in r.err
        images = _layer_images(d)
        assert len(images) == 2
        d.sbx("rm", "caps-keep", "caps-more", check=True)
        assert not _layer_images(d)
        wait_until(lambda: not d.loop_devices(), 10, "the layers' loop devices to detach")
    finally:
        d.stop()


def test_commit_and_export_read_a_capped_layer_without_a_host_mount(secure_daemon):
    d = secure_daemon
    d.sbx("run", "--name", "caps-commit", "--storage-opt", "size=32m", "busybox", "sh", "-c",
          "echo kept > /note; rm /bin/true", check=True)
    try:
        d.sbx("commit", "caps-commit", "caps-committed", check=True)
        r = d.sbx("run", "--rm", "caps-committed", "sh", "-c", "cat /note; ls /bin/true",
                  check=False)
        assert r.out.strip() == "kept" and "No such file" in r.err   # whiteout kept
        tar = os.path.join(d.tmp, "caps.tar")
        d.sbx("export", "-o", tar, "caps-commit", check=True)
        assert os.path.getsize(tar) > 0
        assert not d.loop_devices()                 # each read released its mount
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        assert not [m for m in mounts if " - ext4 /dev/loop" in m]   # none on the host
    finally:
        d.sbx("rm", "caps-commit", check=True)
        d.sbx("rmi", "caps-committed", check=True)


def test_a_running_container_is_committed_through_its_own_loop_device(secure_daemon):
    """A second loop device on the same image would be a second ext4 superblock on one
    file: the read must share the running container's."""
    d = secure_daemon
    before = set(d.loop_devices())              # other tests' containers, if any
    ours: set[str] = set()
    d.sbx("run", "-d", "--name", "caps-live", "--storage-opt", "size=32m", "busybox", "sh",
          "-c", "echo live > /state; sync; sleep 60", check=True)
    try:
        wait_until(lambda: d.sbx("exec", "caps-live", "cat", "/state").out == "live\n",
                   what="the container to write its file")
        ours = set(d.loop_devices()) - before
        assert len(ours) == 1
        d.sbx("commit", "caps-live", "caps-live-image", check=True)
        assert set(d.loop_devices()) - before == ours    # the same device, still one
        r = d.sbx("run", "--rm", "caps-live-image", "cat", "/state", check=True)
        assert r.out == "live\n"
        d.sbx("exec", "caps-live", "sh", "-c", "echo more >> /state", check=True)
        assert d.sbx("exec", "caps-live", "cat", "/state").out == "live\nmore\n"
    finally:
        d.sbx("rm", "-f", "caps-live", check=True)
        d.sbx("rmi", "caps-live-image", check=True)
    wait_until(lambda: not set(d.loop_devices()) & ours, 10,
               "the layer's loop device to detach")


def test_tmpfs_mounts_and_rm_layers_have_sizes(secure_daemon):
    r = secure_daemon.sbx("run", "--rm", "--tmpfs", "/scratch", "--tmpfs",
                          "/small:size=8m", "busybox", "df", "-k", "/", "/scratch", "/small",
                          check=True)
    sizes = [int(line.split()[1]) for line in r.out.splitlines()[1:]]
    assert sizes == [1 << 20, 1 << 20, 8 << 10], r.out   # --rm layer 1g, --tmpfs 1g, 8m
    r = secure_daemon.sbx("run", "--rm", "--storage-opt", "size=32m", "busybox", "sh", "-c",
                          "df -k / | tail -1; dd if=/dev/zero of=/f bs=1M count=64")
    assert int(r.out.split()[1]) == 32 << 10 and "No space left on device" in r.err


# ---------------------------------------------------------------- logs

def test_check_30_a_flooding_container_rotates_its_log_and_daemon_memory_stays_flat(
        secure_daemon):
    d = secure_daemon
    rss_before = _rss(d.proc.pid)
    # As fast as it can for 4 s (some 40 rotations here), then one last line. 1980000 bytes is 60000 whole 33-byte
    # lines, so the last line does not continue a cut one.
    d.sbx("run", "-d", "--name", "caps-flood", "--log-opt", "max-size=1m", "--log-opt",
          "max-file=3", "busybox", "sh", "-c",
          "end=$(( $(date +%s) + 4 )); while [ $(date +%s) -lt $end ]; do "
          "yes 0123456789abcdef0123456789abcdef | head -c 1980000; done; echo the-last-line",
          check=True)
    try:
        assert d.sbx("wait", "caps-flood", check=True, timeout=60).out.strip() == "0"
        cid = d.sbx("inspect", "-f", "{{.Id}}", "caps-flood", check=True).out.strip()
        logs = list(Path(d.root, "containers", cid).glob("output.log*"))
        stored = sum(p.stat().st_size for p in logs if not p.name.endswith(".dropped"))
        assert stored <= 3 * MiB, logs
        assert _rss(d.proc.pid) - rss_before < 16 * MiB

        assert d.sbx("logs", "--tail", "1", "caps-flood", check=True).out == "the-last-line\n"
        full = d.sbx("logs", "caps-flood", check=True)
        assert full.out.endswith("the-last-line\n")
        # read across the rotations: the two rotated files are each full to within one
        # read (a rotation comes when the next chunk would not fit); the current may be new
        assert 2 * (MiB - READ_CHUNK) < len(full.out) <= 3 * MiB
        assert "older output were dropped" in full.err
        # --tail that the kept files satisfy says nothing; follow reads the same files
        assert d.sbx("logs", "--tail", "3", "caps-flood", check=True).err == ""
        assert d.sbx("logs", "-f", "caps-flood", check=True).out == full.out
        # --since before everything: the note too, and only what is kept
        since = d.sbx("logs", "--since", "1h", "caps-flood", check=True)
        assert since.out == full.out and "dropped" in since.err
        assert _inspect(d, "caps-flood", "LogConfig") == {
            "Type": "json-file", "Config": {"max-size": "1m", "max-file": "3"}}
    finally:
        d.sbx("rm", "-f", "caps-flood", check=True)


def test_a_follower_sees_output_across_rotations(secure_daemon):
    d = secure_daemon
    d.sbx("run", "-d", "--name", "caps-follow", "--log-opt", "max-size=64k", "--log-opt",
          "max-file=2", "busybox", "sh", "-c",
          "sleep 1; i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); done", check=True)
    try:
        r = d.sbx("logs", "-f", "caps-follow", check=True, timeout=60)
        lines = r.out.split()
        assert lines[-1] == "line-2999"
        assert lines == [f"line-{i}" for i in range(3000 - len(lines), 3000)]   # no gap
    finally:
        d.sbx("rm", "-f", "caps-follow", check=True)


def test_log_driver_none_keeps_nothing_and_logs_says_so(secure_daemon):
    d = secure_daemon
    d.sbx("run", "--name", "caps-quiet", "--log-driver", "none", "busybox", "echo", "hi",
          check=True)
    try:
        r = d.sbx("logs", "caps-quiet")
        assert r.returncode != 0 and "does not support reading" in r.err
        cid = d.sbx("inspect", "-f", "{{.Id}}", "caps-quiet", check=True).out.strip()
        assert not list(Path(d.root, "containers", cid).glob("output.log*"))
        r = d.sbx("create", "--log-opt", "max-size=1k", "busybox", "true")
        assert r.returncode == 125 and "minimum" in r.err
        r = d.sbx("create", "--log-driver", "syslog", "busybox", "true")
        assert r.returncode == 125 and "json-file, local, none" in r.err
    finally:
        d.sbx("rm", "caps-quiet", check=True)


def test_log_caps_survive_a_restart():
    d = Daemon("--log-opt", "max-size=64k", "--log-opt", "max-file=2").start()
    try:
        d.import_busybox()
        d.sbx("run", "--name", "caps-logkeep", "busybox", "sh", "-c",
              "i=0; while [ $i -lt 20000 ]; do echo line-$i; i=$((i+1)); done", check=True)
        _restart(d)
        assert _inspect(d, "caps-logkeep", "LogConfig")["Config"] == {
            "max-size": "64k", "max-file": "2"}
        d.sbx("start", "-a", "caps-logkeep", check=True)
        cid = d.sbx("inspect", "-f", "{{.Id}}", "caps-logkeep", check=True).out.strip()
        stored = sum(p.stat().st_size for p in
                     Path(d.root, "containers", cid).glob("output.log*"))
        assert stored <= 2 * 64 * 1024 + 4096
        assert d.sbx("logs", "--tail", "1", "caps-logkeep", check=True).out == "line-19999\n"
        d.sbx("rm", "caps-logkeep", check=True)
    finally:
        d.stop()


def test_the_daemon_answers_while_a_container_floods_its_log(secure_daemon):
    """The daemon stays quick to answer while a container floods its log."""
    d = secure_daemon
    d.sbx("run", "-d", "--name", "caps-busy", "--log-opt", "max-size=256k", "busybox", "sh",
          "-c", "yes | head -c 50000000", check=True)
    try:
        start = time.monotonic()
        d.sbx("ps", check=True)
        assert time.monotonic() - start < 5
        d.sbx("wait", "caps-busy", check=True, timeout=60)
    finally:
        d.sbx("rm", "-f", "caps-busy", check=True)
