"""The overlay snapshotter against the real kernel: layers unpacked into committed
snapshots, mounted here with mount(8) (the daemon never mounts; the runner does), and the
overlay's view checked: whiteouts hide files, opaque directories hide lower content.

Every mount is made under the test's tmp dir (named sbx-*) and unmounted in a finally.
"""
from __future__ import annotations

import contextlib
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from sandboxd.errors import Conflict, InvalidArgument, NotFound
from sandboxd.images.unpack import apply_layer
from sandboxd.snapshots import MountData, Snapshotter
from sandboxd.store import Store

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def tar_of(entries: list[tuple[str, bytes | None]]) -> bytes:
    """``(name, data)``: data None is a directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def sn(tmp_path):
    store = Store(tmp_path / "sbx-root")
    yield Snapshotter(tmp_path / "sbx-root", store)
    store.close()


def add_layer(sn: Snapshotter, name: str, parent: str | None, layer: bytes) -> None:
    key = f"extract-{name}"
    sn.prepare(key, parent)
    apply_layer(io.BytesIO(layer), sn.path(key))
    sn.commit(name, key)


def overlay_options(m: MountData) -> str:
    return ",".join(m.options)


@contextlib.contextmanager
def mounted(m: MountData, target: Path, cwd: Path | None = None):
    """mount(8) one MountData on target (optionally from cwd, for relative paths)."""
    target.mkdir(exist_ok=True)
    if m.type == "bind":
        cmd = ["mount", "--bind", m.source, str(target)]
        if "ro" in m.options:
            cmd = ["mount", "-o", "bind,ro", m.source, str(target)]
    else:
        cmd = ["mount", "-t", m.type, m.source, "-o", overlay_options(m), str(target)]
    subprocess.run(cmd, check=True, cwd=cwd, capture_output=True, text=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def is_whiteout(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


def test_three_layers_with_whiteouts_and_an_opaque_dir(sn, tmp_path):
    add_layer(sn, "l1", None, tar_of([
        ("etc", None), ("etc/a", b"a1"), ("etc/b", b"b1"),
        ("opt", None), ("opt/keep", None), ("opt/keep/x", b"x"),
        ("data", None), ("data/old1", b"o1"), ("data/old2", b"o2"),
    ]))
    add_layer(sn, "l2", "l1", tar_of([
        ("etc/.wh.a", b""), ("etc/c", b"c2"),
        ("data", None), ("data/.wh..wh..opq", b""), ("data/new", b"n2"),
    ]))
    add_layer(sn, "l3", "l2", tar_of([("etc/b", b"b3"), ("opt/.wh.keep", b"")]))

    # the snapshots hold overlayfs's own whiteout forms
    l2 = sn.path("l2")
    assert is_whiteout(l2 / "etc" / "a")
    assert os.getxattr(l2 / "data", "trusted.overlay.opaque") == b"y"
    assert is_whiteout(sn.path("l3") / "opt" / "keep")
    assert [i.key for i in sn.chain("l3")] == ["l3", "l2", "l1"]
    assert all(i.kind == "committed" for i in sn.walk())

    mounts = sn.prepare("ctr", "l3")
    assert len(mounts) == 1 and mounts[0].type == "overlay"
    lowers = [str(sn.path(k)) for k in ("l3", "l2", "l1")]
    assert f"lowerdir={':'.join(lowers)}" in mounts[0].options
    root = sn.rootfs("ctr")
    assert root.lowerdirs == tuple(lowers) and root.upperdir == str(sn.path("ctr"))
    assert root.workdir and Path(root.workdir).is_dir() and not root.readonly

    with mounted(mounts[0], tmp_path / "sbx-merged") as merged:
        assert sorted(os.listdir(merged / "etc")) == ["b", "c"]       # a whited out
        assert (merged / "etc" / "b").read_bytes() == b"b3"            # top layer wins
        assert os.listdir(merged / "data") == ["new"]                  # opaque: old* hidden
        assert os.listdir(merged / "opt") == []                        # dir whited out
        # writes land in the container's upper, deletions become whiteouts there
        (merged / "etc" / "written").write_text("w")
        (merged / "etc" / "c").unlink()
    upper = sn.path("ctr")
    assert (upper / "etc" / "written").read_text() == "w"
    assert is_whiteout(upper / "etc" / "c")
    assert (sn.path("l2") / "etc" / "c").read_bytes() == b"c2"      # the layer is untouched

    # a read-only view of the same chain
    view = sn.view("ro", "l3")
    assert view[0].type == "overlay" and not any(o.startswith("upperdir") for o in view[0].options)
    with mounted(view[0], tmp_path / "sbx-view") as merged:
        assert sorted(os.listdir(merged / "etc")) == ["b", "c"]
        with pytest.raises(OSError):
            (merged / "etc" / "nope").write_text("x")
    assert sn.rootfs("ro", readonly=True).readonly

    # removal: children first; metadata, then files
    with pytest.raises(Conflict, match="parent of"):
        sn.remove("l3")
    ctr_dir = upper.parent
    sn.remove("ctr")
    sn.remove("ro")
    assert not ctr_dir.exists()
    for key in ("l3", "l2", "l1"):
        sn.remove(key)
    assert sn.walk() == []


def test_single_parent_view_and_parentless_snapshots_are_binds(sn, tmp_path):
    add_layer(sn, "base", None, tar_of([("f", b"base")]))
    (view,) = sn.view("v", "base")
    assert view == MountData("bind", str(sn.path("base")), ("rbind", "ro"))
    (active,) = sn.prepare("scratch")
    assert active == MountData("bind", str(sn.path("scratch")), ("rbind", "rw"))
    root = sn.rootfs("scratch")
    assert root.lowerdirs == (str(sn.empty),) and os.listdir(sn.empty) == []
    with mounted(view, tmp_path / "sbx-v") as m:
        assert (m / "f").read_bytes() == b"base"


def test_errors_and_bookkeeping(sn):
    add_layer(sn, "base", None, tar_of([("f", b"12345")]))
    with pytest.raises(Conflict):
        sn.prepare("base")
    with pytest.raises(NotFound):
        sn.prepare("x", "missing")
    sn.prepare("act", "base")
    with pytest.raises(InvalidArgument, match="committed"):
        sn.prepare("y", "act")                    # a parent must be committed
    with pytest.raises(InvalidArgument, match="committed"):
        sn.mounts("base")
    with pytest.raises(Conflict):
        sn.commit("base", "act")                  # name taken
    with pytest.raises(Conflict):
        sn.commit("other", "base")                # not active
    with pytest.raises(InvalidArgument):
        sn.prepare("")
    with pytest.raises(NotFound):
        sn.remove("nope")
    size, inodes = sn.usage("base")
    assert size > 0 and inodes == 1               # one file (the fs dir itself not counted)
    (sn.path("act") / "big").write_bytes(b"x" * 100_000)
    assert sn.usage("act")[0] >= 100_000
    info = sn.stat("act")
    assert (info.key, info.parent, info.kind) == ("act", "base", "active")
    sn.commit("act-done", "act", labels={"why": "test"})
    assert sn.stat("act-done").labels == {"why": "test"}
    assert sn.usage("act-done")[0] >= 100_000
    assert not (sn.path("act-done").parent / "work").exists()


def test_a_root_that_cannot_appear_in_mount_options_is_refused(tmp_path):
    store = Store(tmp_path / "db")
    try:
        for bad in ("a:b", "a,b"):
            with pytest.raises(InvalidArgument, match="mount options"):
                Snapshotter(tmp_path / bad, store)
    finally:
        store.close()


def test_failed_prepare_leaves_nothing_and_cleanup_removes_leftovers(sn):
    before = sorted(os.listdir(sn.dir))
    with pytest.raises(NotFound):
        sn.prepare("x", "missing-parent")
    assert sorted(os.listdir(sn.dir)) == before
    sn.prepare("owned")
    owned_dir = sn.path("owned").parent
    stray = sn.dir / "999"
    (stray / "fs").mkdir(parents=True)
    half = sn.dir / "new-crashed"
    (half / "fs").mkdir(parents=True)
    removed = sn.cleanup()
    assert sorted(p.name for p in removed) == ["999", "new-crashed"]
    assert owned_dir.is_dir() and sn.empty.is_dir()


def _forty_layers(sn: Snapshotter) -> list[str]:
    parent = None
    for i in range(40):
        add_layer(sn, f"layer{i}", parent, tar_of([(f"f{i}", str(i).encode()),
                                                    ("top", str(i).encode())]))
        parent = f"layer{i}"
    sn.prepare("ctr", parent)
    return [f"f{i}" for i in range(40)]


def _check_forty(merged: Path, names: list[str]) -> None:
    assert sorted(n for n in os.listdir(merged) if n != "top") == sorted(names)
    assert (merged / "top").read_bytes() == b"39"
    assert (merged / "f0").read_bytes() == b"0"


def test_forty_layer_chain_mounts(sn, tmp_path):
    names = _forty_layers(sn)
    (m,) = sn.mounts("ctr")
    lowerdir = next(o for o in m.options if o.startswith("lowerdir="))
    assert lowerdir.count(":") == 39
    # short numeric directory names keep 40 absolute lowers well inside one page
    assert len(overlay_options(m)) < PAGE_SIZE
    with mounted(m, tmp_path / "sbx-forty") as merged:
        _check_forty(merged, names)


def test_forty_layers_under_a_long_root_need_relative_lowers(tmp_path):
    """Mount options are cut at one page. Under a long root the absolute form no longer
    fits; the runner then chdirs to root/snapshots and names the lowers relative to it
    (they all live there). This shows that form mounts."""
    root = tmp_path / ("sbx-" + "long" * 30) / ("d" * 100)
    store = Store(root)
    try:
        sn = Snapshotter(root, store)
        names = _forty_layers(sn)
        (m,) = sn.mounts("ctr")
        assert len(overlay_options(m)) > PAGE_SIZE
        base = str(sn.dir)
        rel = []
        for opt in m.options:
            key, _, value = opt.partition("=")
            rel.append(key + "=" + ":".join(os.path.relpath(p, base) for p in value.split(":")))
        relative = MountData(m.type, m.source, tuple(rel))
        assert len(overlay_options(relative)) < PAGE_SIZE
        with mounted(relative, tmp_path / "sbx-forty-rel", cwd=sn.dir) as merged:
            _check_forty(merged, names)
    finally:
        store.close()
