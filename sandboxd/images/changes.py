"""A container's changes as an image layer: the overlay upper directory written as an
OCI layer tar (``sbx commit``).

The upper holds what the container added or changed, plus overlayfs's marks of what
it removed: a whiteout (a character device 0/0) for a deleted entry and the
``trusted.overlay.opaque`` xattr on a directory whose lower contents are hidden.
They become the OCI forms, ``.wh.<name>`` and ``<dir>/.wh..wh..opq``, which
:func:`sandboxd.images.unpack.apply_layer` turns back into overlay whiteouts.

The walk goes through directory fds with ``O_NOFOLLOW``: a symlink is archived as a
symlink, never followed. Entries come in sorted order and hard links inside the upper
are kept as tar hard links, so the same upper gives the same tar (the same diff_id).
"""
from __future__ import annotations

import os
import stat
import tarfile
from typing import BinaryIO

from ..errors import Conflict, InvalidArgument
from . import tarentry
from .unpack import OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
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


def _walk(tar: tarfile.TarFile, dir_fd: int, prefix: str,
          links: dict[tuple[int, int], str]) -> None:
    for name in sorted(os.listdir(dir_fd)):
        arc = prefix + name
        if name.startswith(WHITEOUT_PREFIX):
            raise InvalidArgument(f"/{arc}: names starting with {WHITEOUT_PREFIX} mark "
                                  f"deletions in an image layer; rename or remove it in "
                                  f"the container before committing")
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue                                  # removed while we walked
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0):
            tar.addfile(_marker(prefix + WHITEOUT_PREFIX + name))
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
