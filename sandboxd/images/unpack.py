"""Apply one image layer (a tar, plain or compressed) to a directory, safely.

The directory is a snapshot's ``fs``: the upper layer of an overlay. OCI whiteouts become
overlayfs's own: ``.wh.<name>`` a character device 0/0 called ``<name>``, and
``.wh..wh..opq`` the ``trusted.overlay.opaque=y`` xattr on its directory.

A layer is untrusted input. Every entry is placed by walking from the target directory
one component at a time with ``O_NOFOLLOW`` (``openat``-style, through directory fds), so
nothing is ever written through a symlink, and refused, with its reason recorded, when:

- its name has a ``..`` component (a leading ``/`` is only stripped);
- a parent on its path is a symlink or not a directory;
- it is a hard link to a path that this layer has not extracted (outside the tree, a host
  file, or not yet written);
- it is a device node (unless ``allow_devices``), or a whiteout of ``.``/``..``/nothing,
  or aufs metadata (``.wh..wh.*``);
- it is more than ``MAX_DEPTH`` (256) directories deep;
- a component is longer than the filesystem allows (``ENAMETOOLONG``);
- it carries an xattr outside ``user.*``, ``security.capability`` and POSIX ACLs (a
  layer must not set ``trusted.overlay.*`` and steer the overlay).

Mode, owner (when running as root), mtime, symlinks, hard links within the layer and the
allowed xattrs are kept. Directory mtimes are set last, after their children are written.
"""
from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import hashlib
import lzma
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol

from ..errors import InvalidArgument, SetupFailed

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_ALLOWED_XATTRS = ("user.", "security.capability", "system.posix_acl_access",
                   "system.posix_acl_default")
_XATTR_PAX = "SCHILY.xattr."
_CHUNK = 1 << 20
# Deeper trees are refused: removing one (shutil.rmtree, one frame and one fd a level)
# would fail with RecursionError and leave the snapshot behind. Real images stay far below.
MAX_DEPTH = 256
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
}


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


@dataclass
class UnpackStats:
    """What :func:`apply_layer` did. ``skipped`` lists ``(entry name, reason)``."""
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    other: int = 0                  # fifos, and device nodes when allowed
    whiteouts: int = 0
    opaque_dirs: int = 0
    bytes: int = 0                  # regular file content written
    diff_id: str = ""               # sha256 of the whole uncompressed tar stream
    size: int = 0                   # its length
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append((name, reason))


# ---------------------------------------------------------------- decompression

def is_whiteout(st: os.stat_result) -> bool:
    """An overlay whiteout: a character device 0/0 that hides the name in lower layers."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


def too_deep(path: str) -> InvalidArgument:
    """The error for reading a tree deeper than a layer may hold, naming where."""
    return InvalidArgument(f"{path[:80]}...: more than {MAX_DEPTH} directories deep, more "
                           f"than an image layer may hold")


def detect_compression(head: bytes) -> str:
    """``gzip``, ``zstd``, ``bzip2``, ``xz`` or ``""`` (a plain tar) from the first bytes."""
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
    return ""


class _Prefixed:
    """A stream with some already-read bytes put back in front (for sniffing pipes)."""

    def __init__(self, head: bytes, inner: Readable):
        self._head = head
        self._inner = inner

    def read(self, n: int = -1, /) -> bytes:
        if not self._head:
            return self._inner.read(n)
        if n is None or n < 0:
            data, self._head = self._head + self._inner.read(), b""
            return data
        data, self._head = self._head[:n], self._head[n:]
        return data


@contextlib.contextmanager
def uncompressed(src: str | os.PathLike[str] | BinaryIO) -> Iterator[Readable]:
    """The tar bytes of a layer given as a path or a binary stream, whatever its
    compression. zstd needs the optional ``zstandard`` module."""
    with contextlib.ExitStack() as stack:
        raw: Readable
        if isinstance(src, (str, os.PathLike)):
            raw = stack.enter_context(open(src, "rb"))
        else:
            raw = src
        head = b""
        while len(head) < 6:
            more = raw.read(6 - len(head))
            if not more:
                break
            head += more
        stream = _Prefixed(head, raw)
        kind = detect_compression(head)
        errors: tuple[type[Exception], ...] = ()
        if kind == "gzip":
            reader = gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[arg-type]
        elif kind == "bzip2":
            reader = bz2.BZ2File(stream, "rb")  # type: ignore[arg-type]
        elif kind == "xz":
            reader = lzma.LZMAFile(stream, "rb")  # type: ignore[arg-type]
        elif kind == "zstd":
            try:
                import zstandard
            except ImportError:
                raise InvalidArgument("the layer is zstd-compressed: install the zstandard "
                                      "module (pip install zstandard) or give a gzip or "
                                      "plain tar") from None
            reader = zstandard.ZstdDecompressor().stream_reader(
                stream, read_across_frames=True)
            errors = (zstandard.ZstdError,)
        else:
            yield stream
            return
        yield _Decompressing(kind, stack.enter_context(reader), errors)


class _Decompressing:
    """Turns a decompressor's own errors into ``InvalidArgument`` naming the format."""

    def __init__(self, kind: str, inner: Readable, errors: tuple[type[Exception], ...]):
        self._kind = kind
        self._inner = inner
        self._errors = (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile, *errors)

    def read(self, n: int = -1, /) -> bytes:
        try:
            return self._inner.read(n)
        except self._errors as e:
            raise InvalidArgument(f"the layer's {self._kind} data is corrupt: {e}") from None
        except OSError as e:
            # bz2 reports bad data as a bare OSError (no errno); real I/O errors carry one.
            if e.errno is not None:
                raise
            raise InvalidArgument(f"the layer's {self._kind} data is corrupt: {e}") from None


class _Hashing:
    """Counts and hashes what passes through (the layer's diff_id)."""

    def __init__(self, inner: Readable):
        self._inner = inner
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1, /) -> bytes:
        data = self._inner.read(n)
        self.hash.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


# ---------------------------------------------------------------- applying

class _Skip(Exception):
    """This entry is refused; the message is the reason."""


def apply_layer(src: str | os.PathLike[str] | BinaryIO, dest: Path, *,
                allow_devices: bool = False,
                same_owner: bool | None = None) -> UnpackStats:
    """Apply the layer ``src`` (path or binary stream; plain, gzip, zstd, bzip2, xz) onto
    the directory ``dest``. ``same_owner`` (default: when running as root) keeps the
    entries' uid/gid. Raises ``InvalidArgument`` for a corrupt archive and
    ``SetupFailed`` when a whiteout cannot be made (that needs root)."""
    stats = UnpackStats()
    if same_owner is None:
        same_owner = os.geteuid() == 0
    root_fd = os.open(dest, _DIR_FLAGS)
    try:
        with uncompressed(src) as stream:
            hashing = _Hashing(stream)
            applier = _Applier(root_fd, stats, allow_devices, same_owner)
            try:
                with tarfile.open(fileobj=hashing, mode="r|") as tar:  # type: ignore[call-overload]
                    for member in tar:
                        applier.apply(tar, member)
                hashing.drain()
            except (tarfile.TarError, EOFError) as e:
                raise InvalidArgument(f"the layer is not a valid tar archive: {e}") from None
            applier.finish()
            stats.diff_id = "sha256:" + hashing.hash.hexdigest()
            stats.size = hashing.size
    finally:
        os.close(root_fd)
    return stats


def _parts(name: str) -> list[str] | None:
    """Path components inside the tree, or ``None`` when any is ``..``."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return None if ".." in parts else parts


class _Applier:
    def __init__(self, root_fd: int, stats: UnpackStats, allow_devices: bool,
                 same_owner: bool):
        self.root_fd = root_fd
        self.stats = stats
        self.allow_devices = allow_devices
        self.same_owner = same_owner
        self.extracted: set[tuple[str, ...]] = set()     # non-directories written here
        self.dir_times: list[tuple[tuple[str, ...], int]] = []

    # -- walking

    def _open_dir(self, parts: list[str] | tuple[str, ...], create: bool) -> int:
        """An fd of the directory ``parts`` under the root, never following a symlink.
        Missing directories are made (0755) when ``create``."""
        fd = os.dup(self.root_fd)
        try:
            for i, comp in enumerate(parts):
                try:
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise _Skip(f"{'/'.join(parts[:i + 1])} does not exist") from None
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    mode = os.stat(comp, dir_fd=fd, follow_symlinks=False).st_mode
                    what = "a symlink" if stat.S_ISLNK(mode) else "not a directory"
                    raise _Skip(f"parent {'/'.join(parts[:i + 1])} is {what}") from None
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _clear(self, parent: int, name: str, keep_dir: bool) -> None:
        """Remove what is at ``name`` so a new entry can take its place (a directory is
        kept when the new entry is one too: layers merge directories)."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            shutil.rmtree(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)

    # -- one entry

    def apply(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = _parts(m.name)
        try:
            if parts is None:
                raise _Skip("name has a '..' component")
            if len(parts) > MAX_DEPTH:
                raise _Skip(f"more than {MAX_DEPTH} directories deep")
            if not parts:
                if m.isdir():
                    self._set_root(m)
                    return
                raise _Skip("a non-directory entry for the root")
            base = parts[-1]
            if base.startswith(WHITEOUT_PREFIX):
                self._whiteout(parts)
                return
            parent = self._open_dir(parts[:-1], create=True)
            try:
                self._write(tar, m, parent, parts)
            finally:
                os.close(parent)
        except _Skip as why:
            self.stats.skip(m.name, str(why))
        except OSError as e:
            # a name the filesystem cannot hold is the layer's fault, not the daemon's
            if e.errno != errno.ENAMETOOLONG:
                raise
            self.stats.skip(m.name[:200], "name too long for the filesystem")

    def _set_root(self, m: tarfile.TarInfo) -> None:
        if self.same_owner:
            os.fchown(self.root_fd, m.uid, m.gid)
        os.fchmod(self.root_fd, stat.S_IMODE(m.mode))
        self.dir_times.append(((), _ns(m.mtime)))

    def _whiteout(self, parts: list[str]) -> None:
        base = parts[-1]
        if base == OPAQUE_MARKER:
            fd = self._open_dir(parts[:-1], create=True)
            try:
                _set_trusted_xattr(fd, OVERLAY_OPAQUE_XATTR, b"y", "/".join(parts[:-1]) or "/")
            finally:
                os.close(fd)
            self.stats.opaque_dirs += 1
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            raise _Skip("aufs metadata (.wh..wh.*) is not applied")
        target = base[len(WHITEOUT_PREFIX):]
        if target in ("", ".", ".."):
            raise _Skip(f"whiteout of {target or 'nothing'!r} is not allowed")
        parent = self._open_dir(parts[:-1], create=True)
        try:
            self._clear(parent, target, keep_dir=False)
            try:
                os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
            except PermissionError as e:
                raise SetupFailed(f"cannot make the overlay whiteout for "
                                  f"{'/'.join(parts[:-1] + [target])}: {e.strerror}; "
                                  f"unpacking layers with whiteouts needs root (CAP_MKNOD)",
                                  {"step": "mknod whiteout", "errno": e.errno}) from None
        finally:
            os.close(parent)
        self.extracted.discard(tuple(parts[:-1] + [target]))
        self.stats.whiteouts += 1

    def _write(self, tar: tarfile.TarFile, m: tarfile.TarInfo, parent: int,
               parts: list[str]) -> None:
        name = parts[-1]
        key = tuple(parts)
        mtime_ns = _ns(m.mtime)
        if m.isdir():
            self._clear(parent, name, keep_dir=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=parent)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            try:
                self._finish_fd(fd, m, key)
            finally:
                os.close(fd)
            self.dir_times.append((key, mtime_ns))
            self.extracted.discard(key)
            self.stats.dirs += 1
            return
        if m.islnk():
            self._hardlink(m, parent, parts)
            return
        if m.ischr() or m.isblk():
            if not self.allow_devices:
                raise _Skip("device node (not allowed in layers)")
        elif not (m.isreg() or m.issym() or m.isfifo()):
            raise _Skip(f"unsupported tar entry type {m.type!r}")
        self._clear(parent, name, keep_dir=False)
        if m.isreg():
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=parent)
            try:
                data = tar.extractfile(m)
                assert data is not None
                while chunk := data.read(_CHUNK):
                    _write_all(fd, chunk)
                    self.stats.bytes += len(chunk)
                self._finish_fd(fd, m, key)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)
            self.stats.files += 1
        elif m.issym():
            os.symlink(m.linkname, name, dir_fd=parent)
            if self.same_owner:
                os.chown(name, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
            os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=parent, follow_symlinks=False)
            self.stats.symlinks += 1
        else:
            kind = stat.S_IFIFO if m.isfifo() else (stat.S_IFCHR if m.ischr() else stat.S_IFBLK)
            os.mknod(name, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=parent)
            if self.same_owner:
                os.chown(name, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
            os.chmod(name, stat.S_IMODE(m.mode), dir_fd=parent)
            os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=parent, follow_symlinks=False)
            self.stats.other += 1
        self.extracted.add(key)

    def _hardlink(self, m: tarfile.TarInfo, parent: int, parts: list[str]) -> None:
        target = _parts(m.linkname)
        if target is None:
            raise _Skip(f"hard link target {m.linkname!r} climbs out with '..'")
        if tuple(target) not in self.extracted:
            raise _Skip(f"hard link target {m.linkname!r} is not a file this layer wrote")
        tparent = self._open_dir(target[:-1], create=False)
        try:
            try:
                os.stat(target[-1], dir_fd=tparent, follow_symlinks=False)
            except FileNotFoundError:
                raise _Skip(f"hard link target {m.linkname!r} was removed by a later "
                            f"entry") from None
            self._clear(parent, parts[-1], keep_dir=False)
            os.link(target[-1], parts[-1], src_dir_fd=tparent, dst_dir_fd=parent,
                    follow_symlinks=False)
        finally:
            os.close(tparent)
        self.extracted.add(tuple(parts))
        self.stats.hardlinks += 1

    def _finish_fd(self, fd: int, m: tarfile.TarInfo, key: tuple[str, ...]) -> None:
        """Owner, then mode (chown clears set-id bits), then xattrs, on an open fd."""
        if self.same_owner:
            os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, stat.S_IMODE(m.mode))
        for pax_key, value in m.pax_headers.items():
            if not pax_key.startswith(_XATTR_PAX):
                continue
            attr = pax_key[len(_XATTR_PAX):]
            shown = "/".join(key)
            if not attr.startswith(_ALLOWED_XATTRS):
                self.stats.skip(shown, f"xattr {attr} is not allowed in layers")
                continue
            try:
                os.setxattr(fd, attr, value.encode("utf-8", "surrogateescape"))
            except OSError as e:
                self.stats.skip(shown, f"xattr {attr}: {e.strerror}")

    def finish(self) -> None:
        """Directory mtimes, deepest first, now that nothing more is written in them."""
        for key, mtime_ns in sorted(self.dir_times, key=lambda kv: -len(kv[0])):
            try:
                if not key:
                    os.utime(self.root_fd, ns=(mtime_ns, mtime_ns))
                    continue
                parent = self._open_dir(key[:-1], create=False)
            except _Skip:
                continue                  # replaced or removed by a later entry
            try:
                os.utime(key[-1], ns=(mtime_ns, mtime_ns), dir_fd=parent,
                         follow_symlinks=False)
            except FileNotFoundError:
                pass
            finally:
                os.close(parent)


def _ns(mtime: float) -> int:
    return int(mtime * 1_000_000_000)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _set_trusted_xattr(fd: int, attr: str, value: bytes, where: str) -> None:
    try:
        os.setxattr(fd, attr, value)
    except PermissionError as e:
        raise SetupFailed(f"cannot mark {where} opaque ({attr}): {e.strerror}; unpacking "
                          f"layers with whiteouts needs root (CAP_SYS_ADMIN)",
                          {"step": "setxattr opaque", "errno": e.errno}) from None
