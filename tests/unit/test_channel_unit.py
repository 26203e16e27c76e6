"""The runner channel's receive buffer across fork: each process decodes its own."""
from __future__ import annotations

import os
import socket

from sandboxd.runner import channel


def test_a_forked_childs_receive_leaves_its_parents_buffer_alone():
    # The template's clones and the fork server's children receive after a fork. With
    # a shared buffer two clones decoded each other's specs (one hostname for two tests).
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    child_ours, child_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    channel.send_message(theirs, {"spec": "parent" * 100})
    assert channel.recv_message(ours) == ({"spec": "parent" * 100}, [])
    before = bytes(channel._buffer()[:700])
    channel.send_message(child_theirs, {"spec": "child!" * 100})
    pid = os.fork()
    if pid == 0:                                   # the child: receive, then go
        ok = False
        try:
            ok = channel.recv_message(child_ours) == ({"spec": "child!" * 100}, [])
        finally:
            os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert bytes(channel._buffer()[:700]) == before
    for sock in (ours, theirs, child_ours, child_theirs):
        sock.close()
