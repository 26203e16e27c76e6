"""A container's changes: the overlay upper directory written as an OCI layer tar
(``sbx commit``), or listed as Docker's ``diff`` lists them (:func:`list_changes`).

The upper holds what the container added or changed, plus overlayfs's marks of what
it removed: a whiteout (a character device 0/0) for a deleted entry and the
``trusted.overlay.opaque`` xattr on a directory whose lower contents are hidden.
They become the OCI forms, ``.wh.<name>`` and ``<dir>/.wh..wh..opq``, which
:func:`sandboxd.images.unpack.apply_layer` turns back into overlay whiteouts.

Neither has the empty mountpoints of the container's own ``/etc/hostname``, ``hosts``
and ``resolv.conf``, as Docker's have not. The walk goes through directory fds with
``O_NOFOLLOW``: a symlink is archived as a symlink, never followed. Entries come in
sorted order and hard links inside the upper are kept as tar hard links, so the same
upper gives the same tar (the same diff_id).
"""
from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Sequence
from typing import BinaryIO

from ..errors import Conflict, InvalidArgument
from . import tarentry
from .unpack import (MAX_DEPTH, OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX,
                     is_whiteout, too_deep)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Docker's change kinds (the Engine API's ``Kind``): C, A, D
MODIFIED, ADDED, DELETED = 0, 1, 2
# Mountpoints the runner makes in the upper for the container's own network files
# (bind-mounted over them, so they stay empty): Docker keeps them in a layer of
# their own below the container's, so neither its diff nor its commit has them.
_NETWORK_FILES = frozenset({"/etc/hostname", "/etc/hosts", "/etc/resolv.conf"})
# xattrs a layer carries (the rest, e.g. trusted.overlay.*, are the kernel's or ours)
_KEPT_XATTRS = ("user.", "security.capability")
_XATTR_PAX = "SCHILY.xattr."


def write_upper(upper: str | os.PathLike[str], out: BinaryIO) -> None:
    """Write the overlay upper directory ``upper`` to ``out`` as a plain layer tar.

    ``InvalidArgument`` when the upper holds a name starting with ``.wh.`` (in a
    layer it would mean a deletion); ``Conflict`` when a file changes size while read
    (a running container writing it: stop or pause it first)."""
    root = os.open(upper, _DIR_FLAGS)
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            links: dict[tuple[int, int], str] = {}
            if _opaque(root):
                tar.addfile(_marker(OPAQUE_MARKER))
            _walk(tar, root, "", links)
    finally:
        os.close(root)


def list_changes(upper: str | os.PathLike[str], lowers: Sequence[str | os.PathLike[str]]
                 ) -> list[tuple[str, int]]:
    """Docker's ``diff`` of a container: ``(path, kind)`` for what the overlay upper
    ``upper`` adds (A), changes (C) or deletes (D) over its ``lowers`` (top first), in
    the order Docker lists them (each directory's entries sorted, parents first).

    As Docker's overlay driver decides: a whiteout is a deletion, and so is an opaque
    directory that hides a lower one; an entry found in a lower is a change, except a
    directory whose size, mode and mtime are the lower's (it is only on the path to a
    change); the parent of an addition or deletion is listed as changed once. Lowers
    are read through directory fds with ``O_NOFOLLOW``: a lower's symlink is never
    followed out of it."""
    out: list[tuple[str, int]] = []
    root = os.open(upper, _DIR_FLAGS)
    below = [_open_dir(os.fspath(lower)) for lower in lowers]
    try:
        _diff(root, [fd for fd in below if fd is not None], "/", out, set())
    finally:
        os.close(root)
        for fd in below:
            if fd is not None:
                os.close(fd)
    return out


def _diff(dir_fd: int, lowers: list[int], prefix: str, out: list[tuple[str, int]],
          changed_dirs: set[str]) -> None:
    for name in _entries(dir_fd, prefix):
        path = prefix + name
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue                                  # removed while we walked
        is_dir = stat.S_ISDIR(st.st_mode)
        if _network_mountpoint(path, st):
            continue
        found = _in_lowers(lowers, name)
        sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd) if is_dir else -1
        try:
            if is_whiteout(st):
                kind: int | None = DELETED
            elif is_dir and found and _opaque(sub):
                kind = DELETED
            elif is_dir and _only_network_mountpoints(sub, path):
                kind = None        # the runner made it, or its mtime, for the mountpoints
            elif not found:
                kind = ADDED
            else:
                lst = found[0][1]
                same_dir = is_dir and stat.S_ISDIR(lst.st_mode) and \
                    (lst.st_size, lst.st_mode) == (st.st_size, st.st_mode) and \
                    _same_time(lst.st_mtime_ns, st.st_mtime_ns)
                kind = None if same_dir else MODIFIED
            if is_dir and kind is not None:
                changed_dirs.add(path)
            if kind in (ADDED, DELETED) and prefix != "/" and prefix[:-1] not in changed_dirs:
                out.append((prefix[:-1], MODIFIED))
                changed_dirs.add(prefix[:-1])
            if kind is not None:
                out.append((path, kind))
            if is_dir:
                # Below an opaque directory the lowers are hidden; below a directory
                # only the lowers that have one there (not a symlink) go on.
                deeper = [] if _opaque(sub) else _lower_dirs(found, name)
                try:
                    _diff(sub, deeper, path + "/", out, changed_dirs)
                finally:
                    for fd in deeper:
                        os.close(fd)
        finally:
            if sub >= 0:
                os.close(sub)


def _entries(dir_fd: int, prefix: str) -> list[str]:
    """The sorted names in the directory at ``prefix`` (``/a/b/``); a tree deeper than
    an image layer may be (``unpack.MAX_DEPTH``; the walks recurse) is refused, named."""
    names = sorted(os.listdir(dir_fd))
    if names and prefix.count("/") > MAX_DEPTH:
        raise too_deep(prefix)
    return names


def _network_mountpoint(path: str, st: os.stat_result) -> bool:
    """The empty file the runner made for a bind of the container's own hostname, hosts
    or resolv.conf (what the container wrote went to the bind's source)."""
    return path in _NETWORK_FILES and stat.S_ISREG(st.st_mode) and st.st_size == 0


def _only_network_mountpoints(dir_fd: int, path: str) -> bool:
    """``/etc`` holds nothing but the network files' mountpoints (it is in the upper
    only because the runner made them)."""
    if path != "/etc" or _opaque(dir_fd):
        return False
    names = os.listdir(dir_fd)
    return bool(names) and all(
        (st := _lstat(dir_fd, n)) is not None and _network_mountpoint(f"/etc/{n}", st)
        for n in names)


def _in_lowers(lowers: list[int], name: str) -> list[tuple[int, os.stat_result]]:
    """``name`` in each lower directory (top first) that shows it, as the merged lower
    does: a lower's whiteout or non-directory hides the lowers below it."""
    found = []
    for fd in lowers:
        st = _lstat(fd, name)
        if st is None:
            continue
        if is_whiteout(st):
            break
        found.append((fd, st))
        if not stat.S_ISDIR(st.st_mode):
            break
    return found


def _lower_dirs(found: list[tuple[int, os.stat_result]], name: str) -> list[int]:
    """The lower directories ``name`` merges, opened (top first; an opaque one hides
    those below it)."""
    dirs: list[int] = []
    for lower, st in found:
        fd = _open_dir(name, lower) if stat.S_ISDIR(st.st_mode) else None
        if fd is None:
            break
        dirs.append(fd)
        if _opaque(fd):
            break
    return dirs


def _same_time(a: int, b: int) -> bool:
    """Docker's ``sameFsTime``: equal, or the same second when either has no
    nanoseconds (a tar's timestamps have none)."""
    return a == b or ((a % 1_000_000_000 == 0 or b % 1_000_000_000 == 0)
                      and a // 1_000_000_000 == b // 1_000_000_000)


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None


def _open_dir(path: str, dir_fd: int | None = None) -> int | None:
    try:
        return os.open(path, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:                 # gone, not a directory, or a symlink (ELOOP)
        return None


def _walk(tar: tarfile.TarFile, dir_fd: int, prefix: str,
          links: dict[tuple[int, int], str]) -> None:
    for name in _entries(dir_fd, "/" + prefix):
        arc = prefix + name
        if name.startswith(WHITEOUT_PREFIX):
            raise InvalidArgument(f"/{arc}: names starting with {WHITEOUT_PREFIX} mark "
                                  f"deletions in an image layer; rename or remove it in "
                                  f"the container before committing")
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue                                  # removed while we walked
        if is_whiteout(st):
            tar.addfile(_marker(prefix + WHITEOUT_PREFIX + name))
            continue
        if _network_mountpoint("/" + arc, st):
            continue
        info = tarentry.header(arc, st)
        key = (st.st_dev, st.st_ino)
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1 and key in links:
            info.type, info.linkname = tarfile.LNKTYPE, links[key]
            tar.addfile(info)
            continue
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                if _only_network_mountpoints(sub, "/" + arc):
                    continue
                info.type = tarfile.DIRTYPE
                info.pax_headers = _xattrs(sub)
                tar.addfile(info)
                if _opaque(sub):
                    tar.addfile(_marker(f"{arc}/{OPAQUE_MARKER}"))
                _walk(tar, sub, arc + "/", links)
            finally:
                os.close(sub)
            continue
        if stat.S_ISREG(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dir_fd)
            with open(fd, "rb") as f:
                info.size = os.fstat(fd).st_size
                info.pax_headers = _xattrs(fd)
                try:
                    tar.addfile(info, f)
                except OSError as e:                  # shrank while read
                    raise Conflict(f"/{arc} changed while it was committed ({e}); stop "
                                   f"the container first") from None
        elif not tarentry.add_special(tar, info, st,
                                      lambda: os.readlink(name, dir_fd=dir_fd)):
            continue                                  # a socket: not archived
        if st.st_nlink > 1:
            links[key] = arc


def _marker(name: str) -> tarfile.TarInfo:
    """An empty regular file: an OCI whiteout or opaque marker."""
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info


def _opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, OVERLAY_OPAQUE_XATTR) == b"y"
    except OSError:
        return False


def _xattrs(fd: int) -> dict[str, str]:
    """The kept xattrs of an open file as PAX headers (binary values through
    surrogateescape, as :mod:`sandboxd.images.unpack` reads them back)."""
    headers = {}
    try:
        names = os.listxattr(fd)
    except OSError:
        return {}
    for attr in names:
        if attr.startswith(_KEPT_XATTRS):
            try:
                value = os.getxattr(fd, attr)
            except OSError:
                continue
            headers[_XATTR_PAX + attr] = value.decode("utf-8", "surrogateescape")
    return headers
