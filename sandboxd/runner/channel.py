"""The runner's channel: msgpack messages with file descriptors (SCM_RIGHTS) over a
SOCK_SEQPACKET unix socket, one message per packet, at most :data:`MAX_MESSAGE` bytes.
The daemon, the fork server, its template and the net server all talk this way."""
from __future__ import annotations

import array
import socket

import msgpack

MAX_MESSAGE = 1 << 20


def send_message(sock: socket.socket, message: dict, fds: list[int] = ()) -> None:
    data = msgpack.packb(message, use_bin_type=True)
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], anc)


def recv_message(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """One message and the fds that came with it (close-on-exec); (None, []) at EOF."""
    fd_size = socket.CMSG_SPACE(16 * array.array("i").itemsize)
    data, anc, _flags, _addr = sock.recvmsg(MAX_MESSAGE, fd_size, socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
            fds += list(arr)
    if not data:
        return None, fds
    return msgpack.unpackb(data, raw=False), fds
