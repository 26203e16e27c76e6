"""runner/init.py's reaper shows ``sbx-init -- ARGS`` as its command line (check 07 of
CHECKS.md: a container's /proc/1/cmdline must not name the fork server's state
directory or flags). Plain processes: a fork runs ``run_init`` as the init would."""
from __future__ import annotations

import os
import time
from pathlib import Path

from sandboxd.runner.init import run_init


def _fork_after(delay: float) -> int:
    """``os.fork`` whose parent waits before going on: the workload runs first, as a
    loaded machine's scheduler may let it."""
    pid = os.fork()
    if pid:
        time.sleep(delay)
    return pid


def test_the_init_is_titled_before_its_workload_can_look_and_the_workload_is_itself():
    before = Path("/proc/self/cmdline").read_bytes()
    r, w = os.pipe()
    init = os.fork()
    if init == 0:                                  # the container's pid 1
        os.close(r)

        def workload() -> None:
            parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
            own = Path("/proc/self/cmdline").read_bytes()
            own_comm = Path("/proc/self/comm").read_bytes()
            os.write(w, b"\n--\n".join((parent, own, own_comm)))
            os._exit(0)
        try:
            run_init(workload, spawn=lambda: _fork_after(0.2), args=("sh", "-c", "x"))
        finally:
            os._exit(99)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        parent, own, own_comm = f.read().split(b"\n--\n")
    _pid, status = os.waitpid(init, 0)
    assert os.waitstatus_to_exitcode(status) == 0          # the workload's exit code
    assert parent.split(b"\0")[0] == b"sbx-init -- sh -c x", parent
    assert own == before                 # the workload shows its own argv until it execs
    assert own_comm != b"sbx-init\n"
