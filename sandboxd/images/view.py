"""Read an image's (or a container's) merged filesystem straight from its layer
directories, the way overlayfs would show it, without mounting anything in the daemon.

The layers are snapshot ``fs`` directories, top first. A name is looked up in each layer
from the top: a whiteout (a character device 0/0) hides it and everything below; a
non-directory ends the search; directories merge until one is opaque
(``trusted.overlay.opaque=y``). Symlinks are resolved *inside* the view (an absolute
target starts at the view's root, ``..`` stops at it), so nothing outside the layers is
ever read: the builder resolves ``COPY`` destinations, ``--chown`` names and
``COPY --from`` sources here, and ``sbx export`` flattens a container with it.
"""
from __future__ import annotations

import errno
import os
import stat
import tarfile
from typing import BinaryIO, Iterator, Sequence

from ..errors import InvalidArgument, NotFound
from . import tarentry
from .unpack import MAX_DEPTH, OVERLAY_OPAQUE_XATTR, is_whiteout, too_deep

_MAX_LINKS = 40


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _lstat(path: str) -> os.stat_result | None:
    """lstat, None when nothing is there; a path longer than the kernel takes (a deep
    tree of long names) is refused, named."""
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise InvalidArgument(f"{path[:80]}...: path too long to read "
                                  f"({len(path)} bytes)") from None
        raise


class LayerView:
    """The merged tree of ``layers`` (directories, top first). Paths are absolute
    inside the view (``/etc/passwd``)."""

    def __init__(self, layers: Sequence[str | os.PathLike[str]]):
        self.layers = [str(layer) for layer in layers]

    # ------------------------------------------------------------ lookups

    def _find(self, parts: Sequence[str]) -> tuple[str, os.stat_result] | None:
        """The real path and lstat of the entry at ``parts`` (no symlink on the way is
        followed: callers resolve first), or None."""
        dirs = list(range(len(self.layers)))       # layers in which the parent is a dir
        for depth, name in enumerate(parts):
            last = depth == len(parts) - 1
            merged: list[int] = []
            for i in dirs:
                path = os.path.join(self.layers[i], *parts[:depth + 1])
                st = _lstat(path)
                if st is None:
                    continue
                if is_whiteout(st):
                    break
                if last:
                    return path, st
                if not stat.S_ISDIR(st.st_mode):
                    return None
                merged.append(i)
                if _opaque(path):
                    break
            if not merged:
                return None
            dirs = merged
        return None

    def resolve(self, path: str, follow_last: bool = True) -> str:
        """``path`` with every symlink on it resolved inside the view: the canonical
        absolute path (which need not exist)."""
        todo = [p for p in path.split("/") if p not in ("", ".")]
        done: list[str] = []
        links = 0
        while todo:
            name = todo.pop(0)
            if name == "..":
                if done:
                    done.pop()
                continue
            found = self._find([*done, name])
            if found is not None and stat.S_ISLNK(found[1].st_mode) and (todo or follow_last):
                links += 1
                if links > _MAX_LINKS:
                    raise InvalidArgument(f"{path}: too many levels of symbolic links")
                target = os.readlink(found[0])
                if target.startswith("/"):
                    done = []
                todo = [p for p in target.split("/") if p not in ("", ".")] + todo
                continue
            done.append(name)
        return "/" + "/".join(done)

    def lstat(self, path: str) -> tuple[str, os.stat_result] | None:
        """(real path, lstat) of the entry at the canonical ``path``, or None."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            return (self.layers[0], os.lstat(self.layers[0])) if self.layers else None
        return self._find(parts)

    def exists(self, path: str) -> bool:
        return self.lstat(self.resolve(path)) is not None

    def is_dir(self, path: str) -> bool:
        found = self.lstat(self.resolve(path))
        return found is not None and stat.S_ISDIR(found[1].st_mode)

    def read(self, path: str, limit: int = 1 << 20) -> bytes | None:
        """The content of a regular file (symlinks followed), or None."""
        found = self.lstat(self.resolve(path))
        if found is None or not stat.S_ISREG(found[1].st_mode):
            return None
        with open(found[0], "rb") as f:
            return f.read(limit)

    def listdir(self, path: str) -> list[str]:
        """The merged entries of the directory at the canonical ``path``, sorted."""
        parts = [p for p in path.split("/") if p]
        names: dict[str, bool] = {}                 # name -> visible
        for layer in self.layers:
            d = os.path.join(layer, *parts)
            st = _lstat(d)
            if st is None:
                continue
            if is_whiteout(st) or not stat.S_ISDIR(st.st_mode):
                break
            for name in os.listdir(d):
                if name not in names:
                    names[name] = not is_whiteout(os.lstat(os.path.join(d, name)))
            if _opaque(d):
                break
        return sorted(n for n, visible in names.items() if visible)

    def walk(self, path: str) -> Iterator[tuple[str, str, os.stat_result]]:
        """(view path, real path, lstat) of ``path`` and, for a directory, everything
        under it, parents first, in sorted order. Symlinks are not followed."""
        found = self.lstat(path)
        if found is None:
            return
        todo = [(path, found)]
        while todo:                       # depth first, by hand: a tree may be deep
            path, (real, st) = todo.pop()
            yield path, real, st
            if not stat.S_ISDIR(st.st_mode):
                continue
            names = self.listdir(path)
            if names and path.count("/") >= MAX_DEPTH:
                raise too_deep(path)
            for name in reversed(names):
                child = path.rstrip("/") + "/" + name
                entry = self.lstat(child)
                if entry is not None:
                    todo.append((child, entry))

    # ------------------------------------------------------------ users

    def user_ids(self, user: str, group: str | None) -> tuple[int, int]:
        """``--chown``/``USER`` names to (uid, gid) through the view's /etc/passwd and
        /etc/group; numbers are taken as they are. No group: the user's primary."""
        uid, gid = None, None
        if user.isdigit():
            uid = int(user)
        for line in (self.read("/etc/passwd") or b"").decode(errors="replace").splitlines():
            fields = line.split(":")
            if len(fields) >= 4 and (fields[0] == user or (uid is not None and
                                                           fields[2] == str(uid))):
                uid = int(fields[2]) if uid is None else uid
                gid = int(fields[3]) if fields[3].isdigit() else 0
                break
        if uid is None:
            raise NotFound(f"unable to find user {user}: no matching entries in the "
                           f"image's /etc/passwd")
        if group is not None:
            if group.isdigit():
                return uid, int(group)
            for line in (self.read("/etc/group") or b"").decode(errors="replace").splitlines():
                fields = line.split(":")
                if len(fields) >= 3 and fields[0] == group and fields[2].isdigit():
                    return uid, int(fields[2])
            raise NotFound(f"unable to find group {group}: no matching entries in the "
                           f"image's /etc/group")
        return uid, gid if gid is not None else uid


def write_tar(view: LayerView, out: BinaryIO, root: str = "/") -> None:
    """The merged tree under ``root`` as a plain tar (``sbx export``): regular files,
    directories, symlinks, devices and fifos, hard links within it kept."""
    links: dict[tuple[int, int], str] = {}
    base = root.rstrip("/")
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path, real, st in view.walk(root):
            arc = path[len(base):].lstrip("/") or "."
            info = tarentry.header(arc, st)
            key = (st.st_dev, st.st_ino)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and key in links:
                info.type, info.linkname = tarfile.LNKTYPE, links[key]
                tar.addfile(info)
                continue
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                with open(real, "rb") as f:
                    info.size = os.fstat(f.fileno()).st_size
                    tar.addfile(info, f)
                if st.st_nlink > 1:
                    links[key] = arc
            else:
                tarentry.add_special(tar, info, st, lambda: os.readlink(real))
