"""A minimal pid 1: run the workload as its child, forward signals, reap zombies.

Without an init the workload itself is pid 1: the kernel then drops signals it has no
handler for (``docker stop`` waits for the timeout) and nothing reaps orphans. With
``init=True`` this loop sits in front, like tini / docker-init, and exits with the
workload's status (128 + signal when it was killed).
"""
from __future__ import annotations

import os
import signal
from typing import Callable, NoReturn

from .child import set_title

_NOT_FORWARDED = {signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD}
_FORWARDED = {s for s in signal.valid_signals() if s not in _NOT_FORWARDED
              and not signal.SIGRTMIN <= s <= signal.SIGRTMAX} | {signal.SIGRTMIN}


def run_init(workload: Callable[[], NoReturn], spawn: Callable[[], int] = os.fork,
             started: Callable[[int], None] | None = None,
             args: tuple[str, ...] = ()) -> NoReturn:
    """Fork ``workload`` (which must exec or exit) with ``spawn``, call ``started`` with
    its pid (a zygote's pid 1 writes its id maps there), then act as its reaper, shown
    as ``sbx-init -- ARGS`` (as Docker's ``docker-init -- ARGS``)."""
    watched = _FORWARDED | {signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    # Before the fork: the workload may read /proc/1/cmdline at once, and a title set
    # after it showed the fork server's argv to a workload that ran first.
    put_back = set_title("sbx-init", ("--", *args) if args else ())
    child = spawn()
    if child == 0:
        put_back()                      # the workload is itself until it execs
        signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)
        workload()
    if started is not None:
        started(child)
    # Hold no fd but stdio: the start-report pipe must close when the workload execs.
    os.closerange(3, 1 << 20)
    while True:
        info = signal.sigwaitinfo(watched)
        if info.si_signo != signal.SIGCHLD:
            try:
                os.kill(child, info.si_signo)
            except ProcessLookupError:
                pass
            continue
        while True:                               # reap every zombie, ours or adopted
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == child:
                code = os.waitstatus_to_exitcode(status)
                os._exit(128 - code if code < 0 else code)
