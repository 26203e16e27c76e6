"""The runner's channel: msgpack messages with file descriptors (SCM_RIGHTS) over a
SOCK_SEQPACKET unix socket, one message per packet, at most :data:`MAX_MESSAGE` bytes.
The daemon, the fork server, its template and the net server all talk this way."""
from __future__ import annotations

import array
import errno
import mmap
import socket
import threading

import msgpack

from ..errors import InvalidArgument

MAX_MESSAGE = 1 << 20
SO_SNDBUFFORCE = 32              # <asm-generic/socket.h>; not in Python's socket module


def seqpacket_pair(cloexec: bool = False) -> tuple[socket.socket, socket.socket]:
    """A channel's two ends, each able to send a :data:`MAX_MESSAGE` packet. A unix
    socket's packet must fit its send buffer, ~208 KiB by default (``wmem_default``):
    a spec with a few hundred KiB of environment (which execve takes) failed EMSGSIZE.
    Root sets the size past ``wmem_max`` (SO_SNDBUFFORCE); others get what it allows."""
    kind = socket.SOCK_SEQPACKET | (socket.SOCK_CLOEXEC if cloexec else 0)
    ends = socket.socketpair(socket.AF_UNIX, kind)
    for end in ends:
        try:
            end.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, MAX_MESSAGE + (64 << 10))
        except OSError:
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE + (64 << 10))
    return ends


def send_message(sock: socket.socket, message: dict, fds: list[int] = ()) -> None:
    data = msgpack.packb(message, use_bin_type=True)
    if len(data) > MAX_MESSAGE:
        raise _too_big(len(data), f"at most {MAX_MESSAGE}")
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    try:
        sock.sendmsg([data], anc)
    except OSError as e:
        if e.errno != errno.EMSGSIZE:
            raise
        raise _too_big(len(data), "more than this socket's send buffer takes") from None


def _too_big(size: int, limit: str) -> InvalidArgument:
    return InvalidArgument(f"a message of {size} bytes to the runner (a container's "
                           f"environment, arguments, mounts...): {limit}")


_FD_SPACE = socket.CMSG_SPACE(16 * array.array("i").itemsize)
_buffers = threading.local()


def _buffer() -> mmap.mmap:
    """This thread's receive buffer, made once. ``recvmsg(MAX_MESSAGE)`` allocates 1 MiB
    per message: above glibc's mmap threshold (until a large block's free raises it,
    which depends on the process's history) that is an mmap, an mremap to the message's
    size and a munmap, with page faults: ~20 us where the message itself takes ~4. An
    anonymous mapping holds only the pages messages touched, in forked children too.
    Private, not mmap's default MAP_SHARED: a forked child (the template's clones, the
    fork server's children) writes its own copy, never a buffer its parent or a sibling
    is decoding from (shared, two clones read each other's specs)."""
    buf = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = mmap.mmap(-1, MAX_MESSAGE,
                                       flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return buf


def recv_message(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """One message and the fds that came with it (close-on-exec); (None, []) at EOF."""
    buf = _buffer()
    size, anc, _flags, _addr = sock.recvmsg_into([buf], _FD_SPACE, socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
            fds += list(arr)
    if not size:
        return None, fds
    return msgpack.unpackb(memoryview(buf)[:size], raw=False), fds
