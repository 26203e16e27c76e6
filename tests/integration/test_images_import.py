"""ImageService against the real kernel: ``docker import`` of the busybox tarball into a
layer snapshot, containers' roots from it (mounted and run here with mount(8) and
chroot), layer reuse, removal, hostile layers, and the built-in host image (mounted in a
private mount namespace made by unshare(1), so nothing outlives the test).
"""
from __future__ import annotations

import contextlib
import gzip
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from sandboxd import testing
from sandboxd.model import ImageRecord
from sandboxd.errors import Conflict, InvalidArgument, NotFound
from sandboxd.images import ImageService
from sandboxd.images import oci
from sandboxd.images.host import host_layout, host_rootfs
from sandboxd.runner.spec import RootFS
from sandboxd.snapshots import Snapshotter
from sandboxd.store import ContentStore, Store


@pytest.fixture
def svc(tmp_path):
    root = tmp_path / "sbx-root"
    store = Store(root)
    yield ImageService(store, ContentStore(root), Snapshotter(root, store))
    store.close()


def committed(svc: ImageService) -> list[str]:
    return [i.key for i in svc.snapshotter.walk() if i.kind == "committed"]


@contextlib.contextmanager
def mounted_root(root: RootFS, target: Path):
    """Mount a runner RootFS with an upper (what the runner does, minus the namespace)."""
    target.mkdir(exist_ok=True)
    opts = f"lowerdir={':'.join(root.lowerdirs)},upperdir={root.upperdir},workdir={root.workdir}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_import_busybox_and_run_it(svc, tmp_path):
    tar = testing.busybox_tar()
    image_id = svc.import_rootfs(tar, "busybox")
    assert image_id.startswith("sha256:") and len(image_id) == 71
    image = svc.get("busybox")
    assert image["id"] == image_id and image["tags"] == ["busybox:latest"]
    assert svc.get(image_id[7:19])["id"] == image_id           # short id
    assert image["doc"]["warnings"] == []

    # blobs: layer (uncompressed; digest = diff_id), config (= image id), manifest
    info = svc.inspect("busybox")
    (diff_id,) = info["RootFS"]["Layers"]
    assert info["Id"] == image_id and info["RepoTags"] == ["busybox:latest"]
    assert info["Architecture"] == oci.architecture() == "amd64" and info["Os"] == "linux"
    assert info["Config"]["Env"][0].startswith("PATH=") and info["Config"]["Cmd"] is None
    assert info["Size"] == tar.stat().st_size
    cs = svc.content
    assert cs.exists(diff_id) and cs.exists(image_id) and cs.exists(image["doc"]["manifest"])
    assert svc.config("busybox")["Env"] == info["Config"]["Env"]
    assert committed(svc) == [diff_id]                          # chain id of layer 0

    root = svc.prepare_rootfs(image_id, "c1")
    assert Path(root.lowerdirs[0], "bin", "busybox").is_file()
    assert os.readlink(Path(root.lowerdirs[0], "bin", "sh")) == "busybox"
    assert root.upperdir and root.workdir and not root.readonly
    assert svc.image_mounts(image_id) == ()
    with mounted_root(root, tmp_path / "sbx-c1") as merged:
        out = subprocess.run(["chroot", str(merged), "/bin/sh", "-c",
                              "echo hello > /tmp/x && cat /tmp/x && ls /bin/busybox"],
                             capture_output=True, text=True, check=True).stdout
        assert out.split() == ["hello", "/bin/busybox"]
    assert Path(root.upperdir, "tmp", "x").read_text() == "hello\n"

    ro = svc.prepare_rootfs(image_id, "c2", readonly=True)
    assert ro.readonly and ro.upperdir is None and ro.lowerdirs == root.lowerdirs
    tmpfs = svc.prepare_rootfs(image_id, "c3", tmpfs_upper=True)
    assert not tmpfs.readonly and tmpfs.upperdir is None
    for key in ("c1", "c2", "c3"):
        svc.release_rootfs(key)
    assert committed(svc) == [diff_id]                          # the image still needs it


def test_importing_twice_reuses_the_layer_snapshot(svc, tmp_path):
    tar = testing.busybox_tar()
    first = svc.import_rootfs(tar, "bb:one")
    (layer_dir,) = [svc.snapshotter.path(k) for k in committed(svc)]
    marker = layer_dir / "unpacked-once"
    marker.write_text("")                        # a re-unpack would make a new snapshot
    gz = tmp_path / "bb.tar.gz"
    gz.write_bytes(gzip.compress(tar.read_bytes()))
    second = svc.import_rootfs(gz, "bb:two")     # same tar, gzip-compressed
    seen: list[int] = []
    with open(tar, "rb") as stream:
        third = svc.import_rootfs(stream, "bb:three", message="from a stream",
                                  progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == tar.stat().st_size
    assert len({first, second, third}) == 3      # each import is its own image (own time)
    assert len(committed(svc)) == 1 and marker.exists()
    layers = {tuple(svc.inspect(i)["RootFS"]["Layers"]) for i in (first, second, third)}
    assert len(layers) == 1
    assert svc.inspect(third)["History"][0]["comment"] == "from a stream"
    record = ImageRecord.from_dict(svc.record("bb:three"))     # the wire shape
    assert record.id == third and record.repo_tags == ("bb:three",)
    assert record.comment == "from a stream" and record.layers == tuple(layers.pop())
    assert record.env[0].startswith("PATH=") and record.cmd == ()
    host = ImageRecord.from_dict(svc.record("host"))
    assert host.cmd == ("/bin/sh",) and host.layers == ()
    assert len([b for b in svc.content.list()]) == 1 + 3 + 3   # one layer, 3 configs+manifests


def test_remove_images_layers_and_blobs(svc):
    tar = testing.busybox_tar()
    image_id = svc.import_rootfs(tar, "busybox")
    svc.tag("busybox", "busybox:copy")
    assert svc.remove("busybox:copy") == [{"Untagged": "busybox:copy"}]
    assert svc.get("busybox")["tags"] == ["busybox:latest"]

    svc.prepare_rootfs(image_id, "ctr1")
    store = svc.store
    store.put_container("c" * 64, "ctr1", "running", image_id, None, {})
    with pytest.raises(Conflict, match="running"):
        svc.remove("busybox", force=True)
    store.update_container("c" * 64, state="exited")
    with pytest.raises(Conflict, match="use force"):
        svc.remove("busybox")
    blobs_before = set(svc.content.list())
    assert svc.remove("busybox", force=True) == [{"Untagged": "busybox:latest"},
                                                 {"Deleted": image_id}]
    with pytest.raises(NotFound):
        svc.get("busybox")
    assert svc.content.list() == [] and blobs_before
    # the layer stays while the container's snapshot sits on it
    assert len(committed(svc)) == 1
    store.delete_container("c" * 64)
    svc.release_rootfs("ctr1")
    assert svc.snapshotter.walk() == []

    # an id for an image with two tags needs force
    image_id = svc.import_rootfs(tar, "a")
    svc.tag("a", "b")
    with pytest.raises(Conflict, match="several tags"):
        svc.remove(image_id)
    assert len(svc.remove(image_id, force=True)) == 3
    assert svc.snapshotter.walk() == [] and svc.content.list() == []


def test_a_hostile_layer_imports_with_warnings_and_nothing_outside(svc, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(name, kind=tarfile.REGTYPE, data=b"", linkname=""):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, linkname
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        add("../evil", data=b"x")
        add("esc", tarfile.SYMTYPE, linkname=str(outside))
        add("esc/file", data=b"x")
        add("pw", tarfile.LNKTYPE, linkname="/etc/passwd")
        add("dev/kmem", tarfile.CHRTYPE)
        add(".wh...")
        add("ok", data=b"fine")
    image_id = svc.import_rootfs(io.BytesIO(buf.getvalue()), "hostile")
    warnings = svc.get(image_id)["doc"]["warnings"]
    assert len(warnings) == 5 and all(": " in w for w in warnings)
    assert os.listdir(outside) == []
    assert not (tmp_path / "evil").exists() and not (tmp_path / "sbx-root" / "evil").exists()
    (layer,) = committed(svc)
    assert sorted(os.listdir(svc.snapshotter.path(layer))) == ["dev", "esc", "ok"]
    again = svc.import_rootfs(io.BytesIO(buf.getvalue()), "hostile:again")   # layer reused
    assert svc.get(again)["doc"]["warnings"] == warnings and committed(svc) == [layer]


def test_bad_refs_and_a_broken_tar_leave_nothing(svc):
    with pytest.raises(InvalidArgument):
        svc.import_rootfs(testing.busybox_tar(), "Bad Name")
    with pytest.raises(InvalidArgument, match="host"):
        svc.import_rootfs(testing.busybox_tar(), "host:mine")
    with pytest.raises(InvalidArgument, match="gzip data is corrupt"):
        svc.import_rootfs(io.BytesIO(b"\x1f\x8b" + b"garbage" * 100), "broken")
    with pytest.raises(InvalidArgument, match="not a valid tar"):
        svc.import_rootfs(io.BytesIO(b"x" * 3000), "broken")
    assert svc.snapshotter.walk() == [] and svc.store.list_images() == []
    assert svc.content.list() == []
    assert os.listdir(svc.content.root / "ingest") == []
    with pytest.raises(NotFound):
        svc.get("broken")


def test_cleanup_drops_interrupted_unpacks_and_orphan_layers(svc):
    svc.snapshotter.prepare("extract-dead-sha256:x", labels={"sandboxd.extract": "x"})
    svc.snapshotter.prepare("orphan-work")
    svc.snapshotter.commit("sha256:" + "0" * 64, "orphan-work")
    svc.snapshotter.prepare("a-container")        # not ours to remove
    removed = svc.cleanup()
    assert sorted(removed) == ["extract-dead-sha256:x", "sha256:" + "0" * 64]
    assert [i.key for i in svc.snapshotter.walk()] == ["a-container"]


# ---------------------------------------------------------------- the host image

def test_host_skeleton_and_mounts(tmp_path):
    skeleton, mounts = host_rootfs(tmp_path / "sbx-host")
    dests = [m.destination for m in mounts]
    assert all(m.readonly and m.type == "bind" for m in mounts)
    assert os.path.abspath(sys.prefix) in dests or any(
        sys.prefix.startswith(d + "/") for d in dests)
    assert os.path.abspath(sys.base_prefix) in dests or any(
        sys.base_prefix.startswith(d + "/") for d in dests)
    assert "/usr" in dests
    assert not any(d.startswith("/etc") for d in dests)
    assert not any(m.source.startswith("/etc") for m in mounts)
    for d in ("/bin", "/sbin", "/lib", "/lib64"):
        if os.path.islink(d):
            assert os.readlink(skeleton / d[1:]) == os.readlink(d)
    for m in mounts:
        assert (skeleton / m.destination.lstrip("/")).is_dir()
        for parent in Path(m.destination).parents:     # any user can reach the mounts
            assert os.stat(skeleton / str(parent).lstrip("/")).st_mode & 0o005 == 0o005
    etc = skeleton / "etc"
    assert (etc / "passwd").read_bytes() == Path("/etc/passwd").read_bytes()
    for absent in ("resolv.conf", "hosts", "hostname", "shadow"):
        assert not os.path.lexists(etc / absent)
    assert oct(os.stat(skeleton / "tmp").st_mode & 0o7777) == "0o1777"
    # made once: the same layout gives the same directory
    again, _ = host_rootfs(tmp_path / "sbx-host")
    assert again == skeleton and len(os.listdir(tmp_path / "sbx-host")) == 1


def test_host_image_in_the_service_and_running_python_in_it(svc, tmp_path):
    host = svc.get("host")
    assert svc.get("host:latest") == host and svc.get(host["id"])["id"] == host["id"]
    assert svc.list()[0]["id"] == host["id"]
    info = svc.inspect("host")
    path = info["Config"]["Env"][0]
    assert path.startswith(f"PATH={os.path.dirname(sys.executable)}:")
    assert info["RootFS"]["Type"] == "host" and os.path.abspath(sys.prefix) in \
        info["RootFS"]["Mounts"] + [d for d in info["RootFS"]["Mounts"]
                                    if sys.prefix.startswith(d + "/")]
    with pytest.raises(Conflict):
        svc.remove("host")
    with pytest.raises(InvalidArgument):
        svc.tag("host", "mine")

    root = svc.prepare_rootfs(host["id"], "py1")
    mounts = svc.image_mounts(host["id"])
    (skeleton,) = root.lowerdirs
    assert Path(skeleton, "etc", "passwd").exists() and root.upperdir
    # What the runner will do, done by hand in a throwaway mount namespace.
    merged = tmp_path / "sbx-host-merged"
    merged.mkdir()
    script = ["set -e",
              f"mount -t overlay overlay -o lowerdir={skeleton},upperdir={root.upperdir},"
              f"workdir={root.workdir} {merged}"]
    for m in mounts:
        script.append(f"mount --bind {m.source} {merged}{m.destination}")
        script.append(f"mount -o remount,bind,ro {merged}{m.destination}")
    probe = ("import sys, ssl, json, os; print(json.dumps([sys.prefix, "
             "os.path.exists('/etc/resolv.conf'), open('/etc/passwd').read()[:5]]))")
    script.append(f"exec chroot {merged} {sys.executable} -c \"{probe}\"")
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                          "\n".join(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f'["{sys.prefix}", false, "root:"]'
    svc.release_rootfs("py1")
    assert svc.snapshotter.walk() == []


def test_host_layout_skips_prefixes_under_system_dirs():
    layout = host_layout()
    dests = [m.destination for m in layout.mounts]
    assert len(dests) == len(set(dests))
    for d in dests:
        assert not any(d != o and d.startswith(o + "/") for o in dests), \
            f"{d} is inside another mount"
