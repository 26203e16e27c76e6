"""Layer unpacking (sandboxd.images.unpack) against hostile and ordinary tars built here.

No root needed: nothing here makes a whiteout device (that is in
tests/integration/test_images_import.py). Every hostile case checks that a sentinel
directory outside the target stays untouched.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from sandboxd.errors import InvalidArgument
from sandboxd.images.unpack import apply_layer, detect_compression, uncompressed


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", *, mode: int = 0o644,
          linkname: str = "", mtime: int = 1_600_000_000, major: int = 0, minor: int = 0,
          xattrs: dict[str, str] | None = None) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = mtime
    info.linkname = linkname
    info.devmajor, info.devminor = major, minor
    info.uid = info.gid = os.getuid()
    if kind == tarfile.REGTYPE:
        info.size = len(data)
    if xattrs:
        info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
    return info, data


def make_tar(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


@pytest.fixture
def dirs(tmp_path):
    target = tmp_path / "target"
    outside = tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    (outside / "victim").write_text("original")
    return target, outside


def assert_outside_untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_text() == "original"


def reasons(stats) -> dict[str, str]:
    return dict(stats.skipped)


# ---------------------------------------------------------------- hostile entries

def test_dotdot_and_absolute_paths(dirs):
    target, outside = dirs
    layer = make_tar([
        entry("../outside/evil", data=b"x"),
        entry("sub/../../outside/evil2", data=b"x"),
        entry("/abs/file", data=b"absolute"),
        entry("./dot/./file", data=b"dot"),
    ])
    stats = apply_layer(io.BytesIO(layer), target)
    assert_outside_untouched(outside)
    why = reasons(stats)
    assert "'..'" in why["../outside/evil"] and "'..'" in why["sub/../../outside/evil2"]
    assert (target / "abs" / "file").read_bytes() == b"absolute"     # leading / stripped
    assert (target / "dot" / "file").read_bytes() == b"dot"
    assert not (target.parent / "evil").exists()


def test_symlink_parents_are_never_followed(dirs):
    target, outside = dirs
    layer = make_tar([
        entry("a", tarfile.SYMTYPE, linkname=str(outside)),          # absolute, to outside
        entry("a/file", data=b"through a"),
        entry("up", tarfile.SYMTYPE, linkname=".."),                 # relative, climbing
        entry("up/outside/evil", data=b"through up"),
        entry("d", tarfile.DIRTYPE, mode=0o755),
        entry("d/s", tarfile.SYMTYPE, linkname="../../outside"),
        entry("d/s/deeper/x", data=b"through d/s"),
        entry("d/s/.wh.victim"),                                     # a whiteout through it
        entry("d/s/.wh..wh..opq"),
    ])
    stats = apply_layer(io.BytesIO(layer), target)
    assert_outside_untouched(outside)
    why = reasons(stats)
    for name, parent in (("a/file", "a"), ("up/outside/evil", "up"),
                         ("d/s/deeper/x", "d/s"), ("d/s/.wh.victim", "d/s"),
                         ("d/s/.wh..wh..opq", "d/s")):
        assert why[name] == f"parent {parent} is a symlink"
    # the links themselves are kept, unresolved
    assert os.readlink(target / "a") == str(outside)
    assert os.readlink(target / "up") == ".."
    assert stats.symlinks == 3 and stats.whiteouts == 0 and stats.opaque_dirs == 0


def test_a_file_entry_replaces_a_symlink_instead_of_writing_through_it(dirs):
    target, outside = dirs
    outside_mode = stat.S_IMODE(outside.stat().st_mode)
    layer = make_tar([
        entry("link", tarfile.SYMTYPE, linkname=str(outside / "victim")),
        entry("link", data=b"pwned"),
        entry("dirlink", tarfile.SYMTYPE, linkname=str(outside)),
        entry("dirlink", tarfile.DIRTYPE, mode=0o777),
    ])
    apply_layer(io.BytesIO(layer), target)
    assert_outside_untouched(outside)
    assert (target / "link").read_bytes() == b"pwned" and not (target / "link").is_symlink()
    assert (target / "dirlink").is_dir() and not (target / "dirlink").is_symlink()
    assert stat.S_IMODE((target / "dirlink").stat().st_mode) == 0o777
    assert stat.S_IMODE(outside.stat().st_mode) == outside_mode


def test_hardlinks_only_to_files_this_layer_wrote(dirs):
    target, outside = dirs
    passwd_before = Path("/etc/passwd").read_bytes()
    layer = make_tar([
        entry("etc/passwd-link", tarfile.LNKTYPE, linkname="/etc/passwd"),
        entry("x-link", tarfile.LNKTYPE, linkname="../outside/victim"),
        entry("early", tarfile.LNKTYPE, linkname="later"),
        entry("later", data=b"late"),
        entry("sym", tarfile.SYMTYPE, linkname=str(outside / "victim")),
        entry("via-sym/hl", tarfile.LNKTYPE, linkname="sym"),
        entry("real", data=b"content"),
        entry("real-link", tarfile.LNKTYPE, linkname="./real"),
        entry("real-link-abs", tarfile.LNKTYPE, linkname="/real"),
    ])
    stats = apply_layer(io.BytesIO(layer), target)
    assert_outside_untouched(outside)
    assert Path("/etc/passwd").read_bytes() == passwd_before
    why = reasons(stats)
    assert "not a file this layer wrote" in why["etc/passwd-link"]
    assert "'..'" in why["x-link"]
    assert "not a file this layer wrote" in why["early"]
    assert not (target / "etc" / "passwd-link").exists()
    # a hard link to a symlink links the symlink itself, never its target
    hl = target / "via-sym" / "hl"
    assert hl.is_symlink() and os.readlink(hl) == str(outside / "victim")
    assert os.stat(outside / "victim").st_nlink == 1
    real = (target / "real").stat()
    assert (target / "real-link").stat().st_ino == real.st_ino
    assert (target / "real-link-abs").stat().st_ino == real.st_ino
    assert real.st_nlink == 3 and stats.hardlinks == 3


def test_whiteouts_that_climb_or_name_nothing_are_refused(dirs):
    target, outside = dirs
    (target / "keep").write_text("keep")
    layer = make_tar([
        entry(".wh..."),
        entry("sub/.wh..."),
        entry(".wh.."),
        entry(".wh."),
        entry("sub/../../outside/.wh.victim"),
        entry("../.wh.outside"),
        entry(".wh..wh.plnk"),
        entry(".wh..wh.aufs"),
    ])
    stats = apply_layer(io.BytesIO(layer), target)
    assert_outside_untouched(outside)
    assert (target / "keep").read_text() == "keep"
    why = reasons(stats)
    assert why[".wh..."] == "whiteout of '..' is not allowed"
    assert why["sub/.wh..."] == "whiteout of '..' is not allowed"
    assert why[".wh.."] == "whiteout of '.' is not allowed"
    assert why[".wh."] == "whiteout of 'nothing' is not allowed"
    assert "'..'" in why["sub/../../outside/.wh.victim"] and "'..'" in why["../.wh.outside"]
    assert "aufs" in why[".wh..wh.plnk"]
    assert stats.whiteouts == 0


def test_device_nodes_are_skipped(dirs):
    target, outside = dirs
    layer = make_tar([
        entry("dev/sda", tarfile.BLKTYPE, major=8, minor=0, mode=0o660),
        entry("dev/mem", tarfile.CHRTYPE, major=1, minor=1, mode=0o640),
        entry("dev/wh", tarfile.CHRTYPE, major=0, minor=0),          # a raw overlay whiteout
        entry("fifo", tarfile.FIFOTYPE, mode=0o600),
    ])
    stats = apply_layer(io.BytesIO(layer), target)
    assert_outside_untouched(outside)
    assert sorted(p.name for p in (target / "dev").iterdir()) == []
    devices = [name for name, why in stats.skipped if "device node" in why]
    assert devices == ["dev/sda", "dev/mem", "dev/wh"]
    assert stat.S_ISFIFO(os.lstat(target / "fifo").st_mode) and stats.other == 1


def test_hardlink_to_a_file_removed_since(dirs):
    target, _ = dirs
    layer = make_tar([
        entry("d", tarfile.DIRTYPE), entry("d/f", data=b"f"),
        entry("d", data=b"d is a file now"),
        entry("e", tarfile.DIRTYPE), entry("e/f", data=b"f"),
        entry("e", data=b"file"), entry("e", tarfile.DIRTYPE),      # an empty dir again
        entry("k", tarfile.DIRTYPE), entry("k/f", data=b"kept"),
        entry("k", tarfile.DIRTYPE),                                # merged: k/f stays
        entry("l1", tarfile.LNKTYPE, linkname="d/f"),
        entry("l2", tarfile.LNKTYPE, linkname="e/f"),
        entry("l3", tarfile.LNKTYPE, linkname="k/f"),
    ])
    stats = apply_layer(io.BytesIO(layer), target)
    why = reasons(stats)
    assert why["l1"] == "parent d is not a directory"
    assert why["l2"] == "hard link target 'e/f' was removed by a later entry"
    assert (target / "l3").read_bytes() == b"kept"


def test_file_in_place_of_a_parent_directory(dirs):
    target, _ = dirs
    layer = make_tar([entry("f", data=b"file"), entry("f/child", data=b"x")])
    stats = apply_layer(io.BytesIO(layer), target)
    assert reasons(stats)["f/child"] == "parent f is not a directory"
    assert (target / "f").read_bytes() == b"file"


def test_overlay_xattrs_from_a_layer_are_refused(dirs):
    target, _ = dirs
    layer = make_tar([
        entry("d", tarfile.DIRTYPE, mode=0o755,
              xattrs={"trusted.overlay.opaque": "y", "trusted.overlay.redirect": "/etc"}),
        entry("f", data=b"x", xattrs={"security.selinux": "system_u:object_r:etc_t:s0"}),
    ])
    stats = apply_layer(io.BytesIO(layer), target)
    msgs = [why for _, why in stats.skipped]
    assert "xattr trusted.overlay.opaque is not allowed in layers" in msgs
    assert "xattr trusted.overlay.redirect is not allowed in layers" in msgs
    assert "xattr security.selinux is not allowed in layers" in msgs
    if os.geteuid() == 0:
        assert os.listxattr(target / "d") == []


# ---------------------------------------------------------------- faithful extraction

def test_metadata_is_kept(dirs):
    target, _ = dirs
    layer = make_tar([
        entry("bin", tarfile.DIRTYPE, mode=0o755, mtime=1_500_000_000),
        entry("bin/tool", data=b"#!/bin/sh\n", mode=0o4755, mtime=1_400_000_000),
        entry("bin/sh", tarfile.SYMTYPE, linkname="busybox", mtime=1_300_000_000),
        entry("secret", data=b"s", mode=0o600),
        entry("tmp", tarfile.DIRTYPE, mode=0o1777),
        entry("attr", data=b"a", xattrs={"user.sandboxd.test": "value"}),
        entry("bin/tool2", tarfile.LNKTYPE, linkname="bin/tool"),
    ])
    stats = apply_layer(io.BytesIO(layer), target)
    assert stats.skipped == [] or all("xattr" in why for _, why in stats.skipped)
    tool = os.lstat(target / "bin" / "tool")
    assert stat.S_IMODE(tool.st_mode) == 0o4755 and tool.st_mtime == 1_400_000_000
    assert (target / "bin" / "tool").read_bytes() == b"#!/bin/sh\n"
    assert os.readlink(target / "bin" / "sh") == "busybox"
    assert os.lstat(target / "bin" / "sh").st_mtime == 1_300_000_000
    # the directory's mtime survives the entries written into it afterwards
    assert os.lstat(target / "bin").st_mtime == 1_500_000_000
    assert stat.S_IMODE(os.lstat(target / "secret").st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(target / "tmp").st_mode) == 0o1777
    assert os.lstat(target / "bin" / "tool2").st_ino == tool.st_ino
    if not stats.skipped:             # the filesystem takes user xattrs
        assert os.getxattr(target / "attr", "user.sandboxd.test") == b"value"
    assert (stats.files, stats.dirs, stats.symlinks, stats.hardlinks) == (3, 2, 1, 1)
    assert stats.bytes == len(b"#!/bin/sh\n") + 2


def test_owner_is_kept_when_root(dirs):
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    target, _ = dirs
    info, data = entry("owned", data=b"o")
    info.uid, info.gid = 1234, 5678
    apply_layer(io.BytesIO(make_tar([(info, data)])), target)
    st = os.lstat(target / "owned")
    assert (st.st_uid, st.st_gid) == (1234, 5678)


def test_later_entries_replace_earlier_ones_and_directories_merge(dirs):
    target, _ = dirs
    (target / "existing").mkdir()
    (target / "existing" / "old").write_text("old")
    layer = make_tar([
        entry("existing", tarfile.DIRTYPE, mode=0o700),
        entry("existing/new", data=b"new"),
        entry("x", tarfile.DIRTYPE),
        entry("x/inside", data=b"i"),
        entry("x", data=b"now a file"),
        entry("y", data=b"file first"),
        entry("y", tarfile.DIRTYPE, mode=0o755),
    ])
    apply_layer(io.BytesIO(layer), target)
    assert sorted(os.listdir(target / "existing")) == ["new", "old"]
    assert stat.S_IMODE((target / "existing").stat().st_mode) == 0o700
    assert (target / "x").read_bytes() == b"now a file"
    assert (target / "y").is_dir()


def test_diff_id_is_the_hash_of_the_uncompressed_tar_and_gzip_works(dirs, tmp_path):
    target, _ = dirs
    layer = make_tar([entry("hello", data=b"world")])
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(gzip.compress(layer))
    stats = apply_layer(path, target)
    assert stats.diff_id == "sha256:" + hashlib.sha256(layer).hexdigest()
    assert stats.size == len(layer)
    assert (target / "hello").read_bytes() == b"world"


def test_zstd_when_available(dirs):
    zstandard = pytest.importorskip("zstandard", reason="optional zstd support")
    target, _ = dirs
    layer = make_tar([entry("z", data=b"zstd")])
    stats = apply_layer(io.BytesIO(zstandard.ZstdCompressor().compress(layer)), target)
    assert (target / "z").read_bytes() == b"zstd"
    assert stats.diff_id == "sha256:" + hashlib.sha256(layer).hexdigest()


def test_detect_compression_and_stream_sniffing():
    assert detect_compression(gzip.compress(b"x")[:6]) == "gzip"
    assert detect_compression(b"\x28\xb5\x2f\xfd\x00\x00") == "zstd"
    assert detect_compression(b"BZh91A") == "bzip2"
    assert detect_compression(b"\xfd7zXZ\x00") == "xz"
    assert detect_compression(b"hello\x00") == ""

    class Pipe:                       # a non-seekable stream that returns short reads
        def __init__(self, data):
            self.data = data

        def read(self, n=-1):
            n = 3 if n < 0 else min(n, 3)
            out, self.data = self.data[:n], self.data[n:]
            return out

    payload = b"plain bytes through a pipe"
    with uncompressed(Pipe(gzip.compress(payload))) as s:
        assert s.read() == payload
    with uncompressed(Pipe(payload)) as s:
        got = b""
        while chunk := s.read(5):
            got += chunk
        assert got == payload


def test_garbage_is_an_invalid_argument(dirs):
    target, _ = dirs
    with pytest.raises(InvalidArgument, match="gzip data is corrupt"):
        apply_layer(io.BytesIO(b"\x1f\x8b" + b"not really gzip" * 20), target)
    truncated = gzip.compress(make_tar([entry("f", data=b"x" * 5000)]))[:-30]
    with pytest.raises(InvalidArgument, match="gzip data is corrupt"):
        apply_layer(io.BytesIO(truncated), target)
    with pytest.raises(InvalidArgument, match="not a valid tar"):
        apply_layer(io.BytesIO(b""), target)
    with pytest.raises(InvalidArgument, match="not a valid tar"):
        apply_layer(io.BytesIO(b"x" * 2000), target)
