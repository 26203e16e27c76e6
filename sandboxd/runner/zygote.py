"""Zygote containers: a container whose process forks each test into a fresh container.

A zygote (``ContainerSpec.zygote``) is an ordinary container — its cgroup with limits,
its namespaces, its read-only view, no network — whose pid 1 (this module, trusted
runner code, still host root) puts the workload in a USER namespace of its own before
it execs it::

    fork server ── clone(NEWPID) ─► pid 1: namespaces (owned by the host's user ns),
                                          mounts, pivot_root, stdio, rlimits
                                          clone(NEWUSER) ─► zygote: waits for its maps,
                                          write uid/gid maps   becomes uid/gid 0 of its
                                          drop every cap       user ns (host ids
                                          reap, forward        ZYGOTE_ID_BASE...), cuts
                                          signals              its bounding set, no_new_privs,
                                                               execs the command (fd 3: the
                                                               fork server's channel)

The zygote's uid 0 is host uid ``ZYGOTE_ID_BASE``, not host root: a file of the host's
root is "other" to it, whatever capability it holds, and its capabilities act only on
namespaces its user namespace owns. Its mount namespace, and with it the read-only view,
masked /proc paths and locked mounts, belongs to the host's user namespace: it cannot
change them, only copy them into namespaces of its own, where the kernel locks them.

Each test is a child of the zygote that unshares fresh pid/mount/net/ipc/uts namespaces
(owned by the zygote's user namespace), mounts its own /tmp, /dev/shm, /dev/mqueue and
/proc (:mod:`sandboxd.runner.testfork`). A new /proc inside a user namespace is only
allowed when a fully visible proc exists in the mount namespace ("mount_too_revealing"),
and the container's /proc has masked paths: the plan therefore mounts one more proc at
``HIDDEN_PROC`` and covers its parent with an empty read-only tmpfs. That mount is
unreachable by path, and the cover is locked in every namespace the zygote makes. The
test's own /proc is masked again before its capabilities are dropped.

The test's cgroup is made by the fork server, not by the zygote: the test's process asks
over the channel (fd 3), the kernel stamps its host pid on the request
(``SCM_CREDENTIALS``), and the fork server, after checking that this pid is in the
zygote's cgroup, makes a cgroup *below the zygote's* with the asked limits and answers
with the files the pid joins it through (the test writes ``0`` to them itself). Below:
whatever a zygote asks, its tests stay within the zygote's own limits (v1 hierarchies,
and v2, are hierarchical).

cgroup v2 keeps processes in leaves only: a cgroup with processes cannot enable
controllers for its children. So on v2 the zygote container's cgroup ``<id>`` (its
limits) holds no process: pid 1 joins it, makes its cgroup namespace there (the
container sees ``<id>`` at /sys/fs/cgroup) and moves on into the leaf ``<id>/init``,
where the zygote is forked; each test's cgroup ``<id>/t<N>`` is that leaf's sibling
(:data:`sandboxd.runner.cgroups.LEAF`, ``CgroupManager.create(nest=True)``).
"""
from __future__ import annotations

import os
import signal
from typing import Callable, NoReturn

from . import syscalls as sc

# Host uid/gid of the zygote's 0 (and the 65536 ids after it): above the ranges systemd
# gives users and containers (up to 0x6FFFFFFF), below the 32-bit overflow ids.
ZYGOTE_ID_BASE = 0x70000000
ZYGOTE_ID_COUNT = 65536
ZYGOTE_FD = 3                        # the fork server's channel in the zygote
ZYGOTE_FD_ENV = "SANDBOXD_ZYGOTE_FD"
# Mounted by the plan of a zygote container, hidden under HIDDEN_PROC_COVER.
HIDDEN_PROC_COVER = "/dev/.sandboxd-proc"
HIDDEN_PROC = HIDDEN_PROC_COVER + "/proc"
# What the zygote needs on top of its tests' capabilities, all in its own user ns:
# new namespaces and mounts, lo up in each test's network namespace, cutting a test's
# bounding set.
ZYGOTE_CAPABILITIES = ("SYS_ADMIN", "NET_ADMIN", "SETPCAP")
MAX_TEST_CGROUPS = 64                # live test cgroups one zygote may hold at once


def id_map() -> str:
    return f"0 {ZYGOTE_ID_BASE} {ZYGOTE_ID_COUNT}\n"


def _write_maps(pid: int) -> None:
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(id_map())


def run_pid1(become_zygote: Callable[[], NoReturn], fail: Callable[[Exception], NoReturn]
             ) -> NoReturn:
    """pid 1 of a zygote container: clone the zygote into a new user namespace, give it
    its id maps, then drop every capability and act as the container's init (reap,
    forward signals, exit with the zygote's status)."""
    from .init import run_init
    from .security import apply_profile
    go_r, go_w = os.pipe2(os.O_CLOEXEC)

    def zygote() -> NoReturn:
        os.close(go_w)
        if os.read(go_r, 1) != b"g":            # pid 1 failed: it reports, we go
            os._exit(1)
        os.close(go_r)
        become_zygote()

    def started(pid: int) -> None:
        os.close(go_r)
        try:
            _write_maps(pid)
        except OSError as e:
            os.kill(pid, signal.SIGKILL)
            fail(e)
        os.write(go_w, b"g")
        os.close(go_w)
        # Nothing left to do as host root but wait: no capability, no new privileges.
        apply_profile((), "", True)

    run_init(zygote, spawn=lambda: sc.clone(sc.CLONE_NEWUSER), started=started)


def enter_user_namespace(capabilities: tuple[str, ...]) -> None:
    """In the zygote, once its maps are written: become 0 of its user namespace (host
    ``ZYGOTE_ID_BASE``; until now it was still host root with capabilities in the new
    namespace only), keep ``capabilities`` plus :data:`ZYGOTE_CAPABILITIES` in the
    bounding set (they become its capabilities at exec), no new privileges."""
    from .security import LAST_CAP, capability_mask
    os.setgroups([])                       # host root's groups: gone before anything runs
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    keep = capability_mask(tuple(capabilities) + ZYGOTE_CAPABILITIES)
    for cap in range(LAST_CAP + 1):
        if not keep & (1 << cap):
            sc.prctl(sc.PR_CAPBSET_DROP, cap)
    sc.capset(keep, keep, 0)
    sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
