"""``images.changes.list_changes``: Docker's ``diff`` of an overlay upper over its lowers,
on real directories with real overlay marks (whiteout devices, the opaque xattr: root).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxd.images.changes import ADDED, DELETED, MODIFIED, list_changes
from sandboxd.images.unpack import OVERLAY_OPAQUE_XATTR


def _whiteout(path: Path) -> None:
    os.mknod(path, 0o600 | 0o020000, os.makedev(0, 0))     # a character device 0/0


def _opaque(path: Path) -> None:
    os.setxattr(path, OVERLAY_OPAQUE_XATTR, b"y")


def _same_meta(upper_dir: Path, lower_dir: Path) -> None:
    """The upper's copy of a directory with the lower's mode and mtime (a copy-up)."""
    st = lower_dir.stat()
    os.chmod(upper_dir, st.st_mode & 0o7777)
    os.utime(upper_dir, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def layers(tmp_path: Path) -> tuple[Path, Path, Path]:
    """An upper and two lowers (top first); the lower ones hold an image's files."""
    upper, top, base = (tmp_path / n for n in ("upper", "top", "base"))
    for d in (upper, top, base):
        d.mkdir()
    (base / "etc").mkdir()
    (base / "etc" / "passwd").write_text("root\n")
    (base / "bin").mkdir()
    (base / "bin" / "ls").write_text("ls")
    (base / "bin" / "cat").write_text("cat")
    (base / "var").mkdir()
    (base / "var" / "old").write_text("old")
    (base / "gone").write_text("hidden by the top layer")
    _whiteout(top / "gone")
    return upper, top, base


def test_additions_changes_and_deletions_in_docker_order(layers) -> None:
    upper, top, base = layers
    (upper / "new.txt").write_text("new")                 # top level: no parent line
    (upper / "bin").mkdir()
    _whiteout(upper / "bin" / "ls")                       # D, its parent C once
    (upper / "bin" / "sh").write_text("sh")
    (upper / "var").mkdir()                               # rm -rf /var && mkdir /var
    _opaque(upper / "var")
    (upper / "var" / "only").write_text("only")
    (upper / "etc").mkdir()                               # a copied-up directory
    (upper / "etc" / "passwd").write_text("root\nme\n")   # modified in place
    _same_meta(upper / "etc", base / "etc")
    (upper / "gone").write_text("again")                  # the top layer deleted it
    assert list_changes(upper, [top, base]) == [
        ("/bin", MODIFIED), ("/bin/ls", DELETED), ("/bin/sh", ADDED),
        ("/etc/passwd", MODIFIED),               # /etc unchanged: only on the path
        ("/gone", ADDED), ("/new.txt", ADDED),
        ("/var", DELETED), ("/var/only", ADDED)]


def test_an_unchanged_directory_is_listed_as_the_parent_of_an_addition(layers) -> None:
    upper, top, base = layers
    (upper / "etc").mkdir()
    (upper / "etc" / "motd").write_text("hi")
    _same_meta(upper / "etc", base / "etc")
    assert list_changes(upper, [top, base]) == [("/etc", MODIFIED), ("/etc/motd", ADDED)]


def test_the_network_files_mountpoints_are_not_changes(layers) -> None:
    upper, top, base = layers
    (upper / "etc").mkdir()
    for name in ("hostname", "hosts", "resolv.conf"):
        (upper / "etc" / name).touch()
    assert list_changes(upper, [top, base]) == []
    (upper / "etc" / "motd").write_text("hi")
    assert list_changes(upper, [top, base]) == [("/etc", MODIFIED), ("/etc/motd", ADDED)]
    (upper / "etc" / "hosts").write_text("not a mountpoint: it has content\n")
    assert ("/etc/hosts", ADDED) in list_changes(upper, [top, base])


def test_a_lower_symlink_is_not_followed(layers, tmp_path: Path) -> None:
    upper, top, base = layers
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host file")
    (base / "link").symlink_to(outside)
    # the container replaced the symlink with a directory holding "secret"
    (upper / "link").mkdir()
    (upper / "link" / "secret").write_text("mine")
    assert list_changes(upper, [top, base]) == [("/link", MODIFIED),
                                                ("/link/secret", ADDED)]


def test_an_empty_upper_has_no_changes(layers) -> None:
    upper, top, base = layers
    assert list_changes(upper, [top, base]) == []
