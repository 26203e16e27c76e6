"""A file's tar entry from its ``lstat``: the one way sandboxd writes a header for what
it archives (``sbx cp`` out of a container, ``sbx commit``'s layer, ``sbx export``).

Each writer walks its own tree (directory fds, or a merged layer view) and handles
directories, regular files and hard links itself; the header fields and the file types
with no content (symlinks, fifos, device nodes) are the same for all of them.
"""
from __future__ import annotations

import os
import stat
import tarfile
from typing import Callable


def header(arc: str, st: os.stat_result) -> tarfile.TarInfo:
    """A header named ``arc`` with the permission bits, owner and mtime of ``st`` (type
    regular file, size 0: the caller sets the rest for a directory or a file)."""
    info = tarfile.TarInfo(arc)
    info.mode, info.uid, info.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    info.mtime = int(st.st_mtime)
    return info


def add_special(tar: tarfile.TarFile, info: tarfile.TarInfo, st: os.stat_result,
                readlink: Callable[[], str]) -> bool:
    """Add a symlink, fifo or device node (``info`` from :func:`header`, ``st`` neither a
    directory nor a regular file), a symlink's target read through ``readlink``.

    False, adding nothing, for a socket: it has no tar form (left out, as Docker does)."""
    if stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, readlink()
    elif stat.S_ISFIFO(st.st_mode):
        info.type = tarfile.FIFOTYPE
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    else:
        return False
    tar.addfile(info)
    return True
