"""Capped writable layers: a sparse ext4 image per container, on a loop device.

A container that keeps its writable layer (not ``--rm``) would otherwise write straight
into the daemon's state directory with no limit. Instead its layer is a sparse file
``<snapshot>/layer.img`` holding an ext4 filesystem of the container's storage size;
the overlay's upper and work directories live inside it, so a write past the size
fails with ENOSPC inside the container and the host's disk only grows by what was
written (never past the size). Deleted files give their blocks back to the host: the
filesystem is mounted with ``discard`` and the loop device punches holes in the file.

Why not project quotas (Docker's overlay2 ``size=``): they need the state directory on
xfs mounted with ``prjquota`` (or ext4 made with the ``project`` feature), which is not
how most hosts are set up, and setting them needs CAP_SYS_ADMIN over the host's
filesystem. A loop-mounted image works on any filesystem that holds sparse files.

Nothing is mounted in the host's mount namespace. The fork server attaches the image to
a loop device with ``LO_FLAGS_AUTOCLEAR`` and makes a *detached* mount of it with the
new mount API (``fsopen``/``fsmount``, :func:`mount_layer`): a mount fd that belongs to
no namespace. Then

- a container's pid 1 attaches that mount in its own mount namespace (``move_mount``,
  the first plan step of :mod:`sandboxd.runner.plan`); the fork server closes its fd
  once the start settles, and the mount goes with the container's namespace;
- the daemon reads a layer (commit, export, a build step) through such an fd, sent to
  it (:func:`open_layer`); closing it releases the mount;
- the loop device detaches by itself once no mount holds it.

The fork server opens the device, not the container: the container's device cgroup
allows no block device (Docker's default too).

One image must never be mounted through two loop devices at once (two ext4 superblocks
on one file corrupt it): :func:`attach` reuses the device an image is already bound to,
so a commit of a running container shares its superblock.

Images are copied from a template made once per size by ``mkfs.ext4`` (lazy inode
tables, no reserved blocks: a container's root has no CAP_SYS_RESOURCE to use them):
copying the template's ~100 KiB of metadata (0.2 ms) is faster than mkfs (15 ms).
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct

from ..errors import InvalidArgument, SetupFailed
from . import syscalls as sc

MIN_SIZE = 16 << 20
# The same options for every mount of a layer: they share one superblock.
MOUNT_OPTIONS = "discard,noinit_itable"
# No resize inode: its reserved descriptor blocks would be 4 MiB of the template to copy
# per layer, and a layer never grows.
_MKFS = ("mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^resize_inode",
         "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard")

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LOOP_GET_STATUS64 = 0x4C05
LO_FLAGS_AUTOCLEAR = 4
# struct loop_info64: device, inode, rdevice, offset, sizelimit, number, encrypt_type,
# encrypt_key_size, flags, file_name[64], crypt_name[64], encrypt_key[32], init[2]
_LOOP_INFO64 = struct.Struct("=QQQQQIIII64s64s32s2Q")
_SEEK_DATA, _SEEK_HOLE = 3, 4


# ---------------------------------------------------------------- images (daemon side)

def make_image(path: str, size: int, templates: str) -> None:
    """Write a new sparse ext4 image of ``size`` bytes at ``path`` (a copy of the
    template of that size in the directory ``templates``, made on first use)."""
    if size < MIN_SIZE:
        raise InvalidArgument(f"storage size {size} is below the minimum of "
                              f"{MIN_SIZE >> 20} MiB")
    template = _template(size, templates)
    src = os.open(template, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _copy_sparse(src, dst)
            os.ftruncate(dst, size)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _template(size: int, templates: str) -> str:
    import subprocess
    import tempfile
    path = os.path.join(templates, f"ext4-{size}.img")
    if os.path.exists(path):
        return path
    os.makedirs(templates, 0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="new-", dir=templates)
    try:
        os.ftruncate(fd, size)
        os.close(fd)
        fd = -1
        done = subprocess.run([*_MKFS, tmp], capture_output=True, text=True)
        if done.returncode != 0:
            raise SetupFailed(f"mkfs.ext4 for a {size}-byte layer failed: "
                              f"{done.stderr.strip() or done.returncode}",
                              {"step": "mkfs", "errno": 0})
        os.rename(tmp, path)           # concurrent makers: the last rename wins, same content
    except FileNotFoundError as e:
        raise SetupFailed(f"capped writable layers need mkfs.ext4 (Debian: e2fsprogs), or a "
                          f"daemon started with --default-storage-size 0: {e}",
                          {"step": "mkfs", "errno": errno.ENOENT}) from None
    finally:
        if fd >= 0:
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _copy_sparse(src: int, dst: int) -> None:
    """Copy the data extents of ``src`` to the same offsets of ``dst`` (holes stay)."""
    pos = 0
    while True:
        try:
            start = os.lseek(src, pos, _SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:       # no data after pos
                return
            raise
        end = os.lseek(src, start, _SEEK_HOLE)
        while start < end:
            n = os.copy_file_range(src, dst, end - start, start, start)
            if n == 0:
                return
            start += n
        pos = end


def allocated(path: str) -> int:
    """Bytes of host disk an image holds."""
    return os.stat(path).st_blocks * 512


# ---------------------------------------------------------------- loop devices (runner side)

def attach(image: str) -> tuple[str, int]:
    """A loop device for ``image``: the one it is bound to already, or a new one with
    autoclear. Returns its path and an open fd that keeps it until closed (close it
    once the mount that needs it is made or has failed)."""
    st = os.stat(image)
    found = _bound(image, st)
    if found is not None:
        return found
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(16):
                number = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
                path = f"/dev/loop{number}"
                dev = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                info = _LOOP_INFO64.pack(0, 0, 0, 0, 0, 0, 0, 0, LO_FLAGS_AUTOCLEAR,
                                         os.fsencode(image)[:63], b"", b"", 0, 0)
                config = struct.pack("=II", backing, 0) + info + bytes(64)
                try:
                    fcntl.ioctl(dev, LOOP_CONFIGURE, config)
                except OSError as e:
                    os.close(dev)
                    if e.errno == errno.EBUSY:   # another process took it meanwhile
                        continue
                    raise
                return path, dev
        finally:
            os.close(ctl)
    finally:
        os.close(backing)
    raise SetupFailed(f"no free loop device for {image}", {"step": "loop", "errno": errno.EBUSY})


def _bound(image: str, st: os.stat_result) -> tuple[str, int] | None:
    """The loop device ``image`` (that very inode) is bound to, opened; else None."""
    real = os.path.realpath(image)
    try:
        names = [n for n in os.listdir("/sys/block") if n.startswith("loop")]
    except FileNotFoundError:
        return None
    for name in names:
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as f:
                if f.read().rstrip("\n") != real:
                    continue
            dev = os.open(f"/dev/{name}", os.O_RDWR | os.O_CLOEXEC)
        except OSError:                     # not bound, or gone meanwhile
            continue
        try:
            info = _LOOP_INFO64.unpack(fcntl.ioctl(dev, LOOP_GET_STATUS64,
                                                   bytes(_LOOP_INFO64.size)))
        except OSError:
            os.close(dev)
            continue
        if info[0] == st.st_dev and info[1] == st.st_ino:
            return f"/dev/{name}", dev
        os.close(dev)
    return None


def mount_layer(image: str) -> int:
    """A detached mount of ``image``'s filesystem (an fd, in no mount namespace): the
    container's pid 1 attaches it in its own namespace (``move_mount``), the daemon
    reads through it. The device is opened here, outside the container's cgroup, whose
    device allowlist has no block devices. Call from a single-threaded process (the fork
    server): :func:`attach` must not race another attach of the same image."""
    try:
        device, hold = attach(image)
        try:
            return sc.fsmount("ext4", device, MOUNT_OPTIONS)
        finally:
            os.close(hold)            # the mount holds the device now
    except OSError as e:
        raise SetupFailed(f"mount the capped writable layer {image}: {e} (it needs loop "
                          f"devices and the new mount API; a daemon started with "
                          f"--default-storage-size 0 keeps layers uncapped)",
                          {"step": "layer", "errno": e.errno or 0}) from None


def open_layer(image: str) -> int:
    """The layer's mount for the daemon (an O_PATH fd of its root, ``fs`` and ``work``
    made if the container never started): closing it releases the mount and, when no
    container has it mounted, the loop device."""
    fd = mount_layer(image)
    try:
        for name, mode in (("fs", 0o755), ("work", 0o700)):
            try:
                os.mkdir(name, mode, dir_fd=fd)
            except FileExistsError:
                pass
    except BaseException:
        os.close(fd)
        raise
    return fd
