"""Control groups: one interface, a v1 and a v2 driver, chosen at run time.

Layout. Every container gets ``<parent>/<name>`` (``sandboxd/<id>``):

* v1 (also "hybrid" hosts, whose near-empty cgroup2 at ``/sys/fs/cgroup/unified`` is
  ignored): one directory in each of the hierarchies holding ``memory cpu cpuacct pids
  freezer devices``, found once in ``/proc/self/mountinfo``. The soft limit
  (``--memory-reservation``) is ``memory.soft_limit_in_bytes`` (v2: ``memory.low``);
  ``--oom-kill-disable`` is v1's ``memory.oom_control`` (v2 has none: refused).
  Co-mounted controllers (``cpu,cpuacct``) share one directory. The cpuset hierarchy only
  for a container that sets ``cpuset_cpus`` (``--cpuset-cpus``): a cpuset cgroup needs
  ``cpuset.cpus``/``cpuset.mems`` filled in before a task may join (the parent's are
  copied down, and its ``cgroup.clone_children`` copies them into each new child), a cost
  every other start is spared.
* v2: ``<mount_root>/<parent>`` with ``memory cpu pids`` enabled in the root's and the
  parent's ``cgroup.subtree_control`` (``io`` too where the root offers it, for the block
  I/O ``stats`` reports; ``cpuset`` once a container asks for one); one
  leaf per container. Processes live only in the
  leaves (the v2 "no internal processes" rule), so the parent never holds a process.
  A nesting cgroup (``create(nest=True)``: a zygote's, whose tests get cgroups below
  it) carries the limits and keeps its processes in its child :data:`LEAF`; its first
  process joins ``<name>`` only to make its cgroup namespace there, then moves into the
  leaf (:meth:`Cgroup.enter`). Child cgroups are siblings of the leaf; the controllers
  are enabled in ``<name>``'s ``cgroup.subtree_control`` with the first of them (a
  manager whose parent is ``<parent>/<name>``). Counters (``memory.current``,
  ``cpu.stat``, ``pids.current``), freeze and ``cgroup.kill`` of ``<name>`` are
  hierarchical, as v1's; its OOM kills are its own processes' (``memory.events.local``
  plus the leaf's), as v1 counts them. Removal takes the leaf first (child cgroups are
  the caller's, removed before). v1 nests as it is: ``nest`` changes nothing there.

Limits follow crun's ``cgroup-resources.c``: one writer per resource, the file name chosen
inside the driver, and pure converters (:func:`to_max`, :func:`cpu_max`,
:func:`shares_to_weight`, :func:`memsw_v1`, :func:`swap_max_v2`). ``update(limits)`` makes
the cgroup's limits exactly ``limits`` (``None`` fields go back to the kernel's default);
``create`` skips writes of values a fresh cgroup already has.

Swap: ``Limits.memory_swap`` is Docker's memory+swap total. Unset with a memory limit means
no swap beyond the limit (v1 ``memsw = memory``, v2 ``memory.swap.max = 0``); ``-1`` is
unlimited swap. When the host has no swap accounting (memsw / swap.max files missing) that
default and ``-1`` are met anyway and are skipped; an explicit total raises.

Devices: v1 containers get the allowlist ``DEVICE_ALLOWLIST`` (null zero full random urandom
tty console ptmx and the pts), set on the parent and inherited by every child at mkdir (the
kernel copies a v1 devices cgroup's list into new children, and a child can never allow
more than its parent). v2 device control is an eBPF program attached to the cgroup, not a
file: this module does not do it, so on v2 the mount namespace's minimal ``/dev`` (no
``mknod`` capability) is the only device barrier.

Speed: create + limits + remove is a few hundred microseconds on v1; only ``os.open``,
``os.write`` and ``os.mkdir`` on precomputed paths, no subprocess. :meth:`Cgroup.join` runs
in the runner's freshly forked child and neither forks nor starts threads. Its cost is the
kernel's: moving a process through ``cgroup.procs`` takes the global threadgroup rwsem for
writing, which waits for an RCU grace period (10-20 ms on a 250 Hz kernel) unless another
move happened a moment before or a hierarchy is mounted ``favordynmods``. On v1 a
single-threaded process moving itself (``join(0)``) writes ``0`` to ``tasks`` instead:
the kernel moves just the calling thread and skips that lock (~0.25 ms for all six
hierarchies, idle or not). v2 has no such file outside threaded subtrees: a join
writes ``cgroup.procs`` and takes the lock (``favordynmods``, Linux 6.0+, avoids the wait).
A process that cannot reach the paths joins through fds opened for it
(:meth:`Cgroup.open_join`); on v2 the kernel checks the opener's credentials and cgroup
namespace since Linux 5.16 (before, the writer's).

Errors: a refused write raises ``SetupFailed`` naming the file, the value and the errno
("write 41943040 to /sys/fs/cgroup/memory/sandboxd/x/memory.limit_in_bytes: Device or
resource busy"); a failed ``create`` removes the directories it made.
"""
from __future__ import annotations

import abc
import errno
import fcntl
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from ..errors import Conflict, InvalidArgument, NotFound, SetupFailed
from .spec import DEFAULT_CPU_PERIOD, UNLIMITED, Limits

MOUNT_ROOT = "/sys/fs/cgroup"
MOUNTINFO = "/proc/self/mountinfo"
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer", "devices")
V2_CONTROLLERS = ("memory", "cpu", "pids")
V2_OPTIONAL = ("io",)
CPUSET = "cpuset"               # optional: v1 per container that asks, v2 when available
# v2: the leaf below a nesting cgroup (a zygote's) where its own processes live
LEAF = "init"
DEVICE_ALLOWLIST = (
    "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
    "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm",
)
DEFAULT_SHARES = 1024               # v1 cpu.shares of a fresh cgroup
DEFAULT_WEIGHT = 100                # v2 cpu.weight of a fresh cgroup

FREEZE_TIMEOUT = 1.0                # s to wait for FREEZING -> FROZEN
KILL_TIMEOUT = 5.0                  # s for SIGKILLed processes to leave the cgroup
RMDIR_TIMEOUT = 1.0                 # s of EBUSY retries after the last process left

# O_TRUNC: cgroupfs ignores it, and a plain file standing in for one (unit tests) is then
# rewritten the way the kernel file would read back.
_WRITE = os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_CLOEXEC


# ---------------------------------------------------------------- pure converters

def to_max(value: int | None) -> str:
    """A v2 limit value: ``None`` and ``-1`` are ``"max"``."""
    return "max" if value is None or value == UNLIMITED else str(value)


def cpu_max(quota: int, period: int = DEFAULT_CPU_PERIOD) -> str:
    """v2 ``cpu.max``: ``"QUOTA PERIOD"``; an unlimited quota is ``"max PERIOD"``."""
    return f"{to_max(quota)} {period}"


def shares_to_weight(shares: int) -> int:
    """v1 ``cpu.shares`` (2..262144) -> v2 ``cpu.weight`` (1..10000), the kernel's and
    crun's linear map: 2 -> 1, 1024 -> 39, 262144 -> 10000."""
    return 1 + ((shares - 2) * 9999) // 262142


def memsw_v1(memory: int | None, memory_swap: int | None) -> int:
    """v1 ``memory.memsw.limit_in_bytes`` (memory + swap; ``-1`` unlimited).

    No memory limit: unlimited. ``memory_swap`` unset: equal to the memory limit, so
    no swap is used beyond it."""
    if memory is None or memory == UNLIMITED:
        return UNLIMITED
    return memory if memory_swap is None else memory_swap


def swap_max_v2(memory: int | None, memory_swap: int | None) -> int:
    """v2 ``memory.swap.max`` is swap alone: ``memory_swap - memory`` (``-1`` unlimited).

    No memory limit: unlimited. ``memory_swap`` unset: 0, no swap beyond the limit."""
    if memory is None or memory == UNLIMITED:
        return UNLIMITED
    if memory_swap is None:
        return 0
    return UNLIMITED if memory_swap == UNLIMITED else memory_swap - memory


def _unlimited(value: int | None) -> int:
    return UNLIMITED if value is None else value


# ---------------------------------------------------------------- detection

def detect(mount_root: str = MOUNT_ROOT) -> str:
    """``"v2"`` when ``mount_root`` itself is a cgroup2 mount (its root has
    ``cgroup.controllers``), else ``"v1"`` (hybrid hosts count as v1)."""
    return "v2" if os.path.exists(mount_root.rstrip("/") + "/cgroup.controllers") else "v1"


_OCTAL = re.compile(r"\\([0-7]{3})")


def _v1_mounts(mountinfo: str, mount_root: str) -> list[tuple[str, list[str]]]:
    """(mount point, super options) of each v1 cgroupfs under ``mount_root``."""
    root = mount_root.rstrip("/")
    found = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(" "), right.split(" ")
        if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] != "cgroup":
            continue
        # Mount points escape space, tab, newline and backslash as \ooo.
        point = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        if point == root or point.startswith(root + "/"):
            found.append((point, tail[2].split(",")))
    return found


def v1_hierarchies(mountinfo: str, mount_root: str = MOUNT_ROOT) -> dict[str, str]:
    """Controller -> mount point of each v1 hierarchy mounted under ``mount_root``, from
    the text of ``/proc/self/mountinfo``. Co-mounted controllers map to the same point;
    only controllers of :data:`V1_CONTROLLERS` are listed."""
    found: dict[str, str] = {}
    for point, options in _v1_mounts(mountinfo, mount_root):
        for option in options:
            if option in V1_CONTROLLERS:
                found.setdefault(option, point)
    return found


def container_view(version: str, mountinfo: str = "", mount_root: str = MOUNT_ROOT
                   ) -> tuple[tuple[str, str, str], ...]:
    """The cgroupfs mounts a container gets at ``/sys/fs/cgroup`` (made read-only, from
    inside its cgroup namespace, by the plan: see ``plan._cgroupfs_steps``), as
    (directory under /sys/fs/cgroup, fstype, mount options).

    v2: the one cgroup2, at /sys/fs/cgroup itself (""). v1: the hierarchies a container
    has its own cgroup in (those of :data:`V1_CONTROLLERS`), each under the host's
    directory name, with the host's options (the kernel finds an existing hierarchy by
    its controllers and name; other flags must match or it logs a warning) but never a
    ``release_agent``. The others (cpuset, blkio, ``name=systemd``, a hybrid host's
    cgroup2) are left out: there the namespace's root would be the fork server's cgroup,
    the daemon's view rather than the container's own."""
    if version == "v2":
        return (("", "cgroup2", ""),)
    points = set(v1_hierarchies(mountinfo, mount_root).values())
    view = []
    for point, options in _v1_mounts(mountinfo, mount_root):
        if point not in points:
            continue
        points.discard(point)                    # a hierarchy mounted twice: once
        keep = [o for o in options if o not in ("rw", "ro")
                and not o.startswith("release_agent=")]
        view.append((os.path.basename(point), "cgroup", ",".join(keep)))
    return tuple(view)


# ---------------------------------------------------------------- file helpers

def _failed(action: str, path: str, err: OSError) -> SetupFailed:
    return SetupFailed(f"{action} {path}: {os.strerror(err.errno)}",
                       {"step": "cgroup", "errno": err.errno, "path": path})


def _write(path: str, value: str) -> None:
    try:
        fd = os.open(path, _WRITE)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise SetupFailed(f"write {value} to {path}: {os.strerror(e.errno)}",
                          {"step": "cgroup", "errno": e.errno, "path": path}) from e


def _read(path: str) -> str:
    try:
        fd = os.open(path, _READ)
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
    except OSError as e:
        raise _failed("read", path, e) from e
    return b"".join(chunks).decode()


def _read_optional(path: str) -> str | None:
    """The file's text, or ``None`` when this kernel does not have the file."""
    try:
        return _read(path)
    except SetupFailed as e:
        if e.details.get("errno") == errno.ENOENT and os.path.isdir(os.path.dirname(path)):
            return None
        raise


def _read_int(path: str) -> int:
    return int(_read(path))


def _keyed(text: str) -> dict[str, int]:
    """A flat-keyed cgroup file (``cpu.stat``, ``memory.events`` ...) as a dict."""
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        values[key] = int(value)
    return values


def _keyed_value(path: str, key: str) -> int:
    values = _keyed(_read(path))
    if key not in values:
        raise SetupFailed(f"{path} has no {key!r} line: this kernel is too old to report it",
                          {"step": "cgroup", "path": path})
    return values[key]


def _wait(done, timeout: float) -> bool:
    """Poll ``done()`` with a short, growing sleep until it is true or time runs out."""
    deadline = time.monotonic() + timeout
    delay = 0.0002
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.01)
    return True


def _rmdir(path: str) -> None:
    """Remove a cgroup directory; gone already is fine. The kernel reports EBUSY for a
    moment after the last process has left, so that is retried briefly."""
    deadline = time.monotonic() + RMDIR_TIMEOUT
    delay = 0.0002
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise _failed("rmdir", path, e) from e
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _check_component(name: str, what: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or "\x00" in name \
            or name in (".", ".."):
        raise InvalidArgument(f"{what}: {name!r} must be one non-empty path component "
                              f"(no '/', NUL, '.' or '..')")


# ---------------------------------------------------------------- the interface

@dataclass(frozen=True)
class CgroupStats:
    """Usage counters of one cgroup; ``memory_peak`` is ``None`` on v2 kernels before 5.19
    (no ``memory.peak``)."""
    memory_current: int          # bytes
    memory_peak: int | None      # bytes, high-water mark
    cpu_usage_ns: int
    cpu_throttled_periods: int
    cpu_throttled_ns: int
    pids_current: int
    oom_kills: int               # processes the kernel's OOM killer killed in this cgroup


@dataclass(frozen=True)
class CgroupUsage:
    """What ``docker stats`` shows beyond :class:`CgroupStats`, read only when asked (an
    exit reads none of it). ``io`` is ``None`` where the kernel keeps no block I/O
    counters for the cgroup (v1: sandboxd makes no ``blkio`` cgroup; v2 without the
    ``io`` controller): (major, minor, bytes read, bytes written) per device."""
    cpu_user_ns: int
    cpu_system_ns: int
    cpu_periods: int             # CFS periods with a quota in force
    memory_cache: int            # page cache, bytes
    memory_inactive_file: int    # the reclaimable part, which docker stats leaves out
    io: list[tuple[int, int, int, int]] | None


def _io_stat(text: str) -> list[tuple[int, int, int, int]]:
    """v2 ``io.stat``: ``MAJ:MIN rbytes=N wbytes=N rios=N ...`` per device."""
    devices = []
    for line in text.splitlines():
        if not line.strip():
            continue
        device, *pairs = line.split()
        major, _, minor = device.partition(":")
        counts = dict(pair.partition("=")[::2] for pair in pairs)
        devices.append((int(major), int(minor), int(counts.get("rbytes", 0)),
                        int(counts.get("wbytes", 0))))
    return devices


class Cgroup(abc.ABC):
    """One container's cgroup, in every hierarchy it spans. Made by
    :meth:`CgroupManager.create` or :meth:`CgroupManager.open`."""

    version = ""

    def __init__(self, name: str, dirs: dict[str, str]):
        self.name = name
        self._dirs = dirs                                    # controller -> directory
        self.paths: tuple[str, ...] = tuple(dict.fromkeys(dirs.values()))
        self._procs = tuple(p + "/cgroup.procs" for p in self.paths)
        self.ledger_entry = ""        # its file in the manager's ledger, if it keeps one

    def __repr__(self) -> str:
        return f"<Cgroup {self.version} {self.name} {self.paths[0]}>"

    def _file(self, controller: str, name: str) -> str:
        return self._dirs[controller] + "/" + name

    # -- processes

    def join(self, pid: int) -> None:
        """Move process ``pid`` into this cgroup in every hierarchy; ``0`` is the caller,
        which must then be single-threaded (the runner's freshly forked child, before it
        unshares or execs)."""
        value = str(pid)
        for path in self._procs:
            _write(path, value)

    def entry_files(self) -> tuple[str, ...]:
        """The files ``enter`` writes ``0`` to before its unshare, for a set-up that is
        not this Python (runner/setup.c); empty when entering takes more."""
        return self._procs

    def enter(self, unshare: Callable[[], None]) -> None:
        """The container's first process (single-threaded, freshly forked) joins and
        calls ``unshare``, which makes its cgroup namespace: the namespace's root is then
        this cgroup, what the container sees at /sys/fs/cgroup. A nesting v2 cgroup
        moves the caller on into its leaf afterwards."""
        self.join(0)
        unshare()

    @abc.abstractmethod
    def open_join(self) -> list[int]:
        """The file(s) through which a process joins the cgroup, opened for writing
        (close-on-exec): a single-threaded process that cannot reach the paths (a
        zygote's test) joins by writing ``0`` to each. The kernel checks the opener's
        credentials (and on v2 its cgroup namespace), and a pid written there names only
        what the writer's pid namespace holds."""

    def pids(self) -> list[int]:
        """Processes in the cgroup (any hierarchy); a removed cgroup holds none. A
        nesting v2 cgroup: those of its leaf (its child cgroups' are their own)."""
        found: set[int] = set()
        for path in self._procs:
            try:
                found.update(int(line) for line in _read(path).split())
            except SetupFailed as e:
                if e.details.get("errno") != errno.ENOENT:
                    raise
        return sorted(found)

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to every process in the cgroup.

        Each round freezes the cgroup (so nothing forks past us), signals every pid in
        it and thaws. With SIGKILL, rounds repeat until the cgroup is empty; a process
        that outlives ``KILL_TIMEOUT`` (stuck in uninterruptible sleep) raises."""
        if sig == signal.SIGKILL and self._kill_fast():
            if _wait(lambda: not self.pids(), KILL_TIMEOUT):
                return
        deadline = time.monotonic() + KILL_TIMEOUT
        delay = 0.0002
        while pids := self.pids():
            if time.monotonic() >= deadline:
                raise SetupFailed(f"kill cgroup {self.paths[0]}: processes {pids} are still "
                                  f"there {KILL_TIMEOUT:g}s after SIGKILL (uninterruptible "
                                  f"sleep?)", {"step": "cgroup", "pids": pids})
            # A freeze that does not complete still stops most forks; signal regardless.
            self._freeze()
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            self.thaw()
            if sig != signal.SIGKILL:
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def remove(self) -> None:
        """Kill whatever is inside, then remove the directory in every hierarchy.
        Parts already gone are fine."""
        self.kill_all()
        for path in reversed(self.paths):
            _rmdir(path)
        if self.ledger_entry:
            _unlink_quietly(self.ledger_entry)

    def freeze(self) -> None:
        """Stop every process in the cgroup; returns once the kernel reports frozen."""
        if not self._freeze():
            self.thaw()
            raise SetupFailed(f"freeze {self.paths[0]}: not frozen after {FREEZE_TIMEOUT:g}s "
                              f"(a process is in uninterruptible sleep?); thawed again",
                              {"step": "cgroup", "path": self.paths[0]})

    def update(self, limits: Limits) -> None:
        """Make the cgroup's limits exactly ``limits`` while it runs."""
        self._apply(limits, fresh=False)

    def _apply(self, limits: Limits, fresh: bool) -> None:
        """One writer per resource; ``fresh`` skips values a new cgroup already has."""
        self._set_memory(limits, fresh)
        self._set_cpu(limits, fresh)
        self._set_shares(limits, fresh)
        self._set_pids(limits, fresh)
        self._set_cpuset(limits, fresh)

    def _kill_fast(self) -> bool:
        """Kill everything with SIGKILL in one kernel call, when the kernel has one."""
        return False

    # -- what each driver provides

    @abc.abstractmethod
    def stats(self) -> CgroupStats:
        """Usage counters, read from the kernel now."""

    @abc.abstractmethod
    def usage(self) -> CgroupUsage:
        """The CPU split, page cache and block I/O counters, read from the kernel now."""

    @abc.abstractmethod
    def oom_kills(self) -> int:
        """How many processes the OOM killer killed in this cgroup. Read it after the
        workload exits and before :meth:`remove`."""

    @abc.abstractmethod
    def thaw(self) -> None:
        """Let a frozen cgroup run again."""

    @abc.abstractmethod
    def _freeze(self) -> bool:
        """Ask the kernel to freeze; whether it reported frozen within FREEZE_TIMEOUT."""

    @abc.abstractmethod
    def _set_memory(self, limits: Limits, fresh: bool) -> None: ...

    @abc.abstractmethod
    def _set_cpu(self, limits: Limits, fresh: bool) -> None: ...

    @abc.abstractmethod
    def _set_shares(self, limits: Limits, fresh: bool) -> None: ...

    @abc.abstractmethod
    def _set_pids(self, limits: Limits, fresh: bool) -> None: ...

    def _set_cpuset(self, limits: Limits, fresh: bool) -> None:
        """``cpuset.cpus``. A cgroup made without the cpuset controller refuses one; the
        set is never widened again (no ``update`` changes it)."""
        if not limits.cpuset_cpus:
            return
        if CPUSET not in self._dirs:
            raise SetupFailed(f"cpuset_cpus {limits.cpuset_cpus}: this host offers no "
                              f"cpuset cgroup controller to sandboxd", {"step": "cgroup"})
        _write(self._file(CPUSET, "cpuset.cpus"), limits.cpuset_cpus)


class CgroupV1(Cgroup):
    """The v1 driver: one directory per hierarchy."""

    version = "v1"

    def join(self, pid: int) -> None:
        if pid != 0:
            super().join(pid)
            return
        for path in self.entry_files():
            _write(path, "0")

    def entry_files(self) -> tuple[str, ...]:
        # Its ``tasks`` files: a write of 0 moves the calling thread alone, which for a
        # single-threaded caller is the whole process: no threadgroup lock, so no RCU
        # grace period to wait for.
        return tuple(path + "/tasks" for path in self.paths)

    def open_join(self) -> list[int]:
        fds: list[int] = []
        try:
            for path in self.entry_files():
                fds.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
        except OSError as e:
            for fd in fds:
                os.close(fd)
            raise _failed("open", path, e) from e
        return fds

    def _set_memory(self, limits: Limits, fresh: bool) -> None:
        memory = _unlimited(limits.memory)
        memsw = memsw_v1(limits.memory, limits.memory_swap)
        if not (fresh and memory == UNLIMITED and memsw == UNLIMITED):
            self._set_hard_memory(memory, memsw, limits, fresh)
        self._set_soft_memory(limits, fresh)

    def _set_hard_memory(self, memory: int, memsw: int, limits: Limits, fresh: bool) -> None:
        limit_file = self._file("memory", "memory.limit_in_bytes")
        # The kernel keeps memsw >= limit at every step: set memsw first when it ends at
        # or above the current limit, else the limit first. A fresh limit is unlimited.
        current = None if fresh else _read_int(limit_file)
        if memsw == UNLIMITED or (current is not None and memsw >= current):
            if not (fresh and memsw == UNLIMITED):
                self._set_memsw(memsw, limits)
            _write(limit_file, str(memory))
        else:
            _write(limit_file, str(memory))
            self._set_memsw(memsw, limits)

    def _set_soft_memory(self, limits: Limits, fresh: bool) -> None:
        """--memory-reservation and --oom-kill-disable."""
        soft = self._file("memory", "memory.soft_limit_in_bytes")
        if limits.memory_reservation is not None or (not fresh and os.path.exists(soft)):
            _write(soft, str(_unlimited(limits.memory_reservation)))
        oom = self._file("memory", "memory.oom_control")
        if limits.oom_kill_disable or (not fresh and os.path.exists(oom)):
            _write(oom, "1" if limits.oom_kill_disable else "0")

    def _set_memsw(self, memsw: int, limits: Limits) -> None:
        path = self._file("memory", "memory.memsw.limit_in_bytes")
        try:
            _write(path, str(memsw))
        except SetupFailed as e:
            if e.details.get("errno") != errno.ENOENT or not os.path.isdir(self._dirs["memory"]):
                raise
            if memsw == UNLIMITED or limits.memory_swap is None:
                return          # no swap accounting: "no extra swap" cannot be enforced
            raise SetupFailed(f"memory_swap {limits.memory_swap}: this host has no swap "
                              f"accounting ({path} is missing); boot with swapaccount=1 "
                              f"or leave memory_swap unset",
                              {"step": "cgroup", "errno": errno.ENOENT, "path": path}) from e

    def _set_cpu(self, limits: Limits, fresh: bool) -> None:
        if fresh and limits.cpu_quota == UNLIMITED and limits.cpu_period == DEFAULT_CPU_PERIOD:
            return
        # Period first: the kernel checks the quota against the period in place.
        _write(self._file("cpu", "cpu.cfs_period_us"), str(limits.cpu_period))
        _write(self._file("cpu", "cpu.cfs_quota_us"), str(limits.cpu_quota))

    def _set_shares(self, limits: Limits, fresh: bool) -> None:
        if fresh and limits.cpu_shares is None:
            return
        shares = DEFAULT_SHARES if limits.cpu_shares is None else limits.cpu_shares
        _write(self._file("cpu", "cpu.shares"), str(shares))

    def _set_pids(self, limits: Limits, fresh: bool) -> None:
        if fresh and _unlimited(limits.pids) == UNLIMITED:
            return
        _write(self._file("pids", "pids.max"), to_max(limits.pids))

    def stats(self) -> CgroupStats:
        cpu = _keyed(_read(self._file("cpu", "cpu.stat")))
        return CgroupStats(
            memory_current=_read_int(self._file("memory", "memory.usage_in_bytes")),
            memory_peak=_read_int(self._file("memory", "memory.max_usage_in_bytes")),
            cpu_usage_ns=_read_int(self._file("cpuacct", "cpuacct.usage")),
            cpu_throttled_periods=cpu.get("nr_throttled", 0),
            cpu_throttled_ns=cpu.get("throttled_time", 0),
            pids_current=_read_int(self._file("pids", "pids.current")),
            oom_kills=self.oom_kills(),
        )

    def usage(self) -> CgroupUsage:
        memory = _keyed(_read(self._file("memory", "memory.stat")))
        return CgroupUsage(
            cpu_user_ns=_read_int(self._file("cpuacct", "cpuacct.usage_user")),
            cpu_system_ns=_read_int(self._file("cpuacct", "cpuacct.usage_sys")),
            cpu_periods=_keyed(_read(self._file("cpu", "cpu.stat"))).get("nr_periods", 0),
            memory_cache=memory.get("total_cache", 0),
            memory_inactive_file=memory.get("total_inactive_file", 0),
            io=None)

    def oom_kills(self) -> int:
        return _keyed_value(self._file("memory", "memory.oom_control"), "oom_kill")

    def _freeze(self) -> bool:
        path = self._file("freezer", "freezer.state")
        _write(path, "FROZEN")
        # Reading freezer.state is what moves FREEZING on to FROZEN once every task stops.
        return _wait(lambda: _read(path).strip() == "FROZEN", FREEZE_TIMEOUT)

    def thaw(self) -> None:
        _write(self._file("freezer", "freezer.state"), "THAWED")


class CgroupV2(Cgroup):
    """The v2 driver: one directory, a leaf; or, nesting (``leaf``: a zygote's), one
    with limits whose own processes live in its child ``leaf`` (no limits of its own),
    so that child cgroups with limits can sit beside that leaf (the kernel refuses
    controllers in ``cgroup.subtree_control`` of a cgroup holding processes)."""

    version = "v2"

    def __init__(self, name: str, path: str, controllers: tuple[str, ...] = V2_CONTROLLERS,
                 leaf: str = ""):
        super().__init__(name, {c: path for c in controllers})
        self.path = path
        self.leaf = f"{path}/{leaf}" if leaf else ""
        if self.leaf:
            # Made after, and removed before, the cgroup itself; processes live there.
            self.paths = (path, self.leaf)
            self._procs = (self.leaf + "/cgroup.procs",)
        self._has_kill = True

    def entry_files(self) -> tuple[str, ...]:
        return () if self.leaf else self._procs

    def enter(self, unshare: Callable[[], None]) -> None:
        if not self.leaf:
            super().enter(unshare)
            return
        # The namespace's root is the cgroup itself (limits, and the tests' cgroups
        # beside the leaf, in view); then on into the leaf. Its subtree_control is still
        # empty (controllers are enabled there only with the first child cgroup), so the
        # kernel lets a process in for this moment.
        _write(self.path + "/cgroup.procs", "0")
        unshare()
        _write(self.leaf + "/cgroup.procs", "0")

    def open_join(self) -> list[int]:
        # cgroup.procs: v2 moves single threads only inside a threaded subtree, so "0"
        # moves the writer's whole process, under the threadgroup lock (see join).
        path = self._procs[0]
        try:
            return [os.open(path, os.O_WRONLY | os.O_CLOEXEC)]
        except OSError as e:
            raise _failed("open", path, e) from e

    def _set_memory(self, limits: Limits, fresh: bool) -> None:
        memory = _unlimited(limits.memory)
        if not (fresh and memory == UNLIMITED):
            _write(self.path + "/memory.max", to_max(memory))
        if limits.oom_kill_disable:
            raise SetupFailed("oom_kill_disable: cgroup v2 has no way to disable the OOM "
                              "killer (Docker ignores it there with a warning); leave it "
                              "unset", {"step": "cgroup", "path": self.path})
        low = self.path + "/memory.low"
        if limits.memory_reservation is not None or (not fresh and os.path.exists(low)):
            # memory.low: protected below this, reclaimed first above it (Docker's v2
            # translation of the soft limit)
            _write(low, str(0 if limits.memory_reservation in (None, UNLIMITED)
                            else limits.memory_reservation))
        swap = swap_max_v2(limits.memory, limits.memory_swap)
        if fresh and swap == UNLIMITED:
            return
        path = self.path + "/memory.swap.max"
        try:
            _write(path, to_max(swap))
        except SetupFailed as e:
            if e.details.get("errno") != errno.ENOENT or not os.path.isdir(self.path):
                raise
            if swap == UNLIMITED or limits.memory_swap is None:
                return          # no swap accounting: "no extra swap" cannot be enforced
            raise SetupFailed(f"memory_swap {limits.memory_swap}: this host has no swap "
                              f"accounting ({path} is missing); leave memory_swap unset",
                              {"step": "cgroup", "errno": errno.ENOENT, "path": path}) from e

    def _set_cpu(self, limits: Limits, fresh: bool) -> None:
        if fresh and limits.cpu_quota == UNLIMITED and limits.cpu_period == DEFAULT_CPU_PERIOD:
            return
        _write(self.path + "/cpu.max", cpu_max(limits.cpu_quota, limits.cpu_period))

    def _set_shares(self, limits: Limits, fresh: bool) -> None:
        if fresh and limits.cpu_shares is None:
            return
        weight = DEFAULT_WEIGHT if limits.cpu_shares is None \
            else shares_to_weight(limits.cpu_shares)
        _write(self.path + "/cpu.weight", str(weight))

    def _set_pids(self, limits: Limits, fresh: bool) -> None:
        if fresh and _unlimited(limits.pids) == UNLIMITED:
            return
        _write(self.path + "/pids.max", to_max(limits.pids))

    def stats(self) -> CgroupStats:
        cpu = _keyed(_read(self.path + "/cpu.stat"))
        peak = _read_optional(self.path + "/memory.peak")
        return CgroupStats(
            memory_current=_read_int(self.path + "/memory.current"),
            memory_peak=None if peak is None else int(peak),
            cpu_usage_ns=cpu["usage_usec"] * 1000,
            cpu_throttled_periods=cpu.get("nr_throttled", 0),
            cpu_throttled_ns=cpu.get("throttled_usec", 0) * 1000,
            pids_current=_read_int(self.path + "/pids.current"),
            oom_kills=self.oom_kills(),
        )

    def usage(self) -> CgroupUsage:
        cpu = _keyed(_read(self.path + "/cpu.stat"))
        memory = _keyed(_read(self.path + "/memory.stat"))
        io = _read_optional(self.path + "/io.stat")
        return CgroupUsage(
            cpu_user_ns=cpu.get("user_usec", 0) * 1000,
            cpu_system_ns=cpu.get("system_usec", 0) * 1000,
            cpu_periods=cpu.get("nr_periods", 0),
            memory_cache=memory.get("file", 0),
            memory_inactive_file=memory.get("inactive_file", 0),
            io=None if io is None else _io_stat(io))

    def oom_kills(self) -> int:
        if not self.leaf:
            return _keyed_value(self.path + "/memory.events", "oom_kill")
        # A nesting cgroup's memory.events counts its children's kills too (a test's):
        # its own processes' only, as v1 counts. The kernel counts a kill in the
        # victim's cgroup: the leaf once memory is enabled below the cgroup (with its
        # first child), the cgroup itself before.
        own = _keyed_value(self.path + "/memory.events.local", "oom_kill")
        leaf = _read_optional(self.leaf + "/memory.events")
        return own + (_keyed(leaf).get("oom_kill", 0) if leaf is not None else 0)

    def _kill_fast(self) -> bool:
        if not self._has_kill:
            return False
        try:
            _write(self.path + "/cgroup.kill", "1")     # Linux 5.14+
            return True
        except SetupFailed as e:
            if e.details.get("errno") != errno.ENOENT or not os.path.isdir(self.path):
                raise
            self._has_kill = False
            return False

    def _freeze(self) -> bool:
        _write(self.path + "/cgroup.freeze", "1")
        events = self.path + "/cgroup.events"
        return _wait(lambda: _keyed(_read(events)).get("frozen") == 1, FREEZE_TIMEOUT)

    def thaw(self) -> None:
        _write(self.path + "/cgroup.freeze", "0")


# ---------------------------------------------------------------- the manager

class Claim(NamedTuple):
    """What :meth:`CgroupManager.claim` found: the leftovers it removed (names), those
    it could not (why), and whether another live owner uses the parent too."""
    removed: list[str]
    problems: list[str]
    shared: bool


class CgroupManager:
    """Creates, opens and lists the cgroups under one parent (``sandboxd``).

    ``version`` ``None`` detects it from ``mount_root``; ``mountinfo`` is read once to
    find the v1 hierarchies; ``controllers`` are those v2 needs and enables down to the
    parent. They are parameters so tests can point them at a tree of their own (or at a
    cgroup2 that offers other controllers)."""

    def __init__(self, parent: str = "sandboxd", mount_root: str = MOUNT_ROOT,
                 version: str | None = None, mountinfo: str = MOUNTINFO,
                 controllers: tuple[str, ...] = V2_CONTROLLERS, ledger: str = ""):
        if not isinstance(parent, str) or parent.startswith("/"):
            raise InvalidArgument(f"cgroup parent: {parent!r} must be a relative path")
        for part in parent.split("/"):
            _check_component(part, "cgroup parent")
        self.parent = parent
        self.mount_root = mount_root.rstrip("/") or "/"
        self.version = version or detect(self.mount_root)
        self.controllers = controllers
        if self.version == "v1":
            with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
            self.hierarchies = v1_hierarchies(text, self.mount_root)
            self.cpuset_root = next((point for point, options in
                                     _v1_mounts(text, self.mount_root)
                                     if CPUSET in options), "")
            self.cgroupfs = container_view("v1", text, self.mount_root)
            missing = [c for c in V1_CONTROLLERS if c not in self.hierarchies]
            if missing:
                raise SetupFailed(f"cgroup v1 controllers {', '.join(missing)} are not "
                                  f"mounted under {self.mount_root} (see {mountinfo}); "
                                  f"mount them or boot with cgroup v2",
                                  {"step": "cgroup", "missing": missing})
        elif self.version == "v2":
            self.hierarchies = {c: self.mount_root for c in V2_CONTROLLERS}
            self.cpuset_root = self.mount_root  # v2: enabled at the first that asks
            self.cgroupfs = container_view("v2")
        else:
            raise InvalidArgument(f"cgroup version: {version!r} is not v1 or v2")
        self._parent_ready = False
        self._cpuset_ready = False
        self._lock = -1             # the parent's directory, flocked by claim()
        self._made: list[str] = []  # the parent's levels this manager made
        # A directory with a file per cgroup this owner made and has not removed yet:
        # what claim() may sweep after a crash (never what someone else made).
        self.ledger = ledger
        if ledger:
            os.makedirs(ledger, 0o700, exist_ok=True)

    def __repr__(self) -> str:
        return f"<CgroupManager {self.version} {self.mount_root} parent={self.parent}>"

    def _dirs(self, name: str) -> dict[str, str]:
        return {c: f"{point}/{self.parent}/{name}" for c, point in self.hierarchies.items()}

    def paths(self, name: str) -> tuple[str, ...]:
        """The directories a cgroup called ``name`` occupies, one per hierarchy."""
        _check_component(name, "cgroup name")
        return tuple(dict.fromkeys(self._dirs(name).values()))

    def _parent_paths(self) -> tuple[str, ...]:
        points = list(self.hierarchies.values())
        if self.version == "v1" and self.cpuset_root:
            points.append(self.cpuset_root)
        return tuple(dict.fromkeys(f"{p}/{self.parent}" for p in points))

    def nesting_problem(self, release: str = "") -> str:
        """Why this host cannot give a nesting cgroup's children a join through fds
        (:meth:`Cgroup.open_join`, written by a process that is not root), or ``""``.
        v1: none. v2 checks the opener's credentials and cgroup namespace since Linux
        5.16 only (the writer's before; a stable kernel may carry the fix, but the
        release cannot tell). ``release``: ``uname -r``'s, this kernel's by default."""
        if self.version == "v1":
            return ""
        release = release or os.uname().release
        match = re.match(r"(\d+)\.(\d+)", release)
        if match and (int(match.group(1)), int(match.group(2))) >= (5, 16):
            return ""
        return (f"on cgroup v2 a join through an fd opened by another process needs "
                f"Linux 5.16 or later (this kernel: {release})")

    def _cgroup(self, name: str, cpuset: bool = False, nest: bool = False) -> Cgroup:
        """``cpuset``: v1's cgroup spans the cpuset hierarchy too. ``nest``: v2's keeps
        its processes in a leaf (v1 hierarchies nest as they are)."""
        if self.version == "v1":
            dirs = self._dirs(name)
            if cpuset:
                dirs[CPUSET] = f"{self.cpuset_root}/{self.parent}/{name}"
            return CgroupV1(name, dirs)
        return CgroupV2(name, f"{self.mount_root}/{self.parent}/{name}",
                        V2_CONTROLLERS + (CPUSET,), LEAF if nest else "")

    def _ensure_cpuset_v1(self) -> None:
        """The parent in the cpuset hierarchy, each level's CPUs and memory nodes copied
        from the level above (empty ones would refuse every task), and
        ``cgroup.clone_children`` so that each container's starts with them too."""
        if not self.cpuset_root:
            raise SetupFailed(f"cpuset_cpus: no cgroup v1 cpuset hierarchy is mounted "
                              f"under {self.mount_root}", {"step": "cgroup"})
        level = self.cpuset_root
        for part in self.parent.split("/"):
            above, level = level, level + "/" + part
            self._mkdir_exist_ok(level)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if not _read(f"{level}/{name}").strip():
                    _write(f"{level}/{name}", _read(f"{above}/{name}").strip())
        _write(level + "/cgroup.clone_children", "1")
        self._cpuset_ready = True

    def _ensure_cpuset_v2(self) -> None:
        """cpuset enabled from the root down to the parent (only once a container asks:
        the others do without)."""
        root = self.mount_root
        if CPUSET not in _read(root + "/cgroup.controllers").split():
            raise SetupFailed(f"cpuset_cpus: cgroup v2 at {root} offers no cpuset "
                              f"controller (cgroup.controllers)", {"step": "cgroup"})
        level = root
        self._enable_controllers(level, (CPUSET,))
        for part in self.parent.split("/"):
            level += "/" + part
            self._enable_controllers(level, (CPUSET,))
        self._cpuset_ready = True

    def _mkdir(self, path: str) -> None:
        os.mkdir(path, 0o755)

    def _mkdir_exist_ok(self, path: str) -> None:
        """A level of the parent; one this manager made is removed at release()."""
        try:
            self._mkdir(path)
        except FileExistsError:
            pass
        except OSError as e:
            raise _failed("mkdir", path, e) from e
        else:
            self._made.append(path)

    def ensure_parent(self) -> None:
        """Make the parent in every hierarchy and prepare it (v1: the device allowlist;
        v2: controllers enabled down to it). Idempotent; :meth:`create` calls it once."""
        if self.version == "v1":
            self._ensure_parent_v1()
        else:
            self._ensure_parent_v2()
        self._parent_ready = True

    def _ensure_parent_v1(self) -> None:
        parts = self.parent.split("/")
        for point in dict.fromkeys(self.hierarchies.values()):
            for depth in range(1, len(parts) + 1):
                self._mkdir_exist_ok(point + "/" + "/".join(parts[:depth]))
        devices = f"{self.hierarchies['devices']}/{self.parent}"
        if set(_read(devices + "/devices.list").splitlines()) == set(DEVICE_ALLOWLIST):
            return
        try:
            _write(devices + "/devices.deny", "a")
        except SetupFailed as e:
            if e.details.get("errno") != errno.EINVAL:
                raise
            raise SetupFailed(f"{e.message} (the kernel refuses to reset the device list of "
                              f"a cgroup with children: remove the cgroups under {devices} "
                              f"first)", e.details) from e
        for rule in DEVICE_ALLOWLIST:
            _write(devices + "/devices.allow", rule)

    def _ensure_parent_v2(self) -> None:
        root = self.mount_root
        available = _read(root + "/cgroup.controllers").split()
        missing = [c for c in self.controllers if c not in available]
        if missing:
            raise SetupFailed(f"cgroup v2 at {root} lacks controllers {', '.join(missing)} "
                              f"(cgroup.controllers: {' '.join(available) or 'none'}); they "
                              f"are bound to a v1 hierarchy or disabled",
                              {"step": "cgroup", "missing": missing})
        # io only where offered: a container's io.stat (block I/O for stats) needs it.
        controllers = self.controllers + tuple(c for c in V2_OPTIONAL
                                               if c in available and c not in self.controllers)
        # Enable top-down: a cgroup can only enable what its own parent gave it.
        level = root
        self._enable_controllers(level, controllers)
        for part in self.parent.split("/"):
            level += "/" + part
            self._mkdir_exist_ok(level)
            self._enable_controllers(level, controllers)

    def _enable_controllers(self, path: str, controllers: tuple[str, ...] = ()) -> None:
        control = path + "/cgroup.subtree_control"
        enabled = _read(control).split()
        wanted = [c for c in controllers or self.controllers if c not in enabled]
        if not wanted:
            return
        try:
            _write(control, " ".join("+" + c for c in wanted))
        except SetupFailed as e:
            if e.details.get("errno") != errno.EBUSY:
                raise
            raise SetupFailed(f"{e.message} (cgroup v2 keeps processes only in leaves: "
                              f"{path} holds processes; move them to a child cgroup)",
                              e.details) from e

    def create(self, name: str, limits: Limits, nest: bool = False) -> Cgroup:
        """Make the cgroup ``<parent>/<name>`` in every hierarchy with ``limits`` set.
        ``nest``: it will hold child cgroups with limits of their own (a zygote's tests,
        made by a manager whose parent is ``<parent>/<name>``); on v2 its processes
        then live in its leaf :data:`LEAF`.

        An existing one raises ``Conflict``; any failure removes what this call made."""
        _check_component(name, "cgroup name")
        if not self._parent_ready:
            self.ensure_parent()
        cpuset = bool(limits.cpuset_cpus)
        if cpuset and not self._cpuset_ready:
            if self.version == "v1":
                self._ensure_cpuset_v1()
            else:
                self._ensure_cpuset_v2()
        cgroup = self._cgroup(name, cpuset, nest)
        entered = False
        if self.ledger:                        # first: a crash after it leaves no orphan
            cgroup.ledger_entry = f"{self.ledger}/{name}"
            try:
                os.close(os.open(cgroup.ledger_entry,
                                 os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
                entered = True
            except FileExistsError:
                pass                           # ours already (a live one, or a leftover)
        made: list[str] = []
        try:
            for path in cgroup.paths:
                try:
                    self._mkdir(path)
                except FileExistsError:
                    raise Conflict(f"cgroup {path} already exists: container {name} is "
                                   f"running or was not cleaned up",
                                   {"path": path}) from None
                except OSError as e:
                    raise _failed("mkdir", path, e) from e
                made.append(path)
            cgroup._apply(limits, fresh=True)
        except BaseException:
            for path in reversed(made):
                try:
                    _rmdir(path)
                except SetupFailed:
                    pass        # the first error is the one to report
            if entered:            # never a Conflict's with a cgroup someone else made
                _unlink_quietly(cgroup.ledger_entry)
            raise
        return cgroup

    def open(self, name: str) -> Cgroup:
        """An existing cgroup (also one left partly made by a crash, so that it can be
        removed); ``NotFound`` when it exists in no hierarchy."""
        _check_component(name, "cgroup name")
        cgroup = self._cgroup(name, self.version == "v1" and bool(self.cpuset_root) and
                              os.path.isdir(f"{self.cpuset_root}/{self.parent}/{name}"),
                              self.version == "v2" and os.path.isdir(
                                  f"{self.mount_root}/{self.parent}/{name}/{LEAF}"))
        if not any(os.path.isdir(p) for p in cgroup.paths):
            raise NotFound(f"no cgroup {self.parent}/{name} under {self.mount_root}",
                           {"name": name})
        if self.ledger:
            cgroup.ledger_entry = f"{self.ledger}/{name}"
        return cgroup

    def claim(self) -> Claim:
        """At start-up: make the parent and hold it, with a shared flock of its
        directory kept while this process lives (an fd closed at exec): release()
        removes the parent only when no other owner holds it. Then kill and remove what
        an earlier owner of this ledger left under the parent, killed without its
        clean-up (a fork server killed with its daemon: the containers' cgroups stay,
        and the containers run on as orphans): only cgroups the ledger names, never
        what someone else made under the same parent."""
        held = self._parent_paths()[0]
        if not os.path.isdir(held):
            self.ensure_parent()
        fd = os.open(held, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if self._lock >= 0:
            os.close(self._lock)
        self._lock = fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shared = False
        except BlockingIOError:
            shared = True                       # another live owner holds it too
        fcntl.flock(fd, fcntl.LOCK_SH)
        removed: list[str] = []
        problems: list[str] = []
        present = set(self.names())
        for name in sorted(os.listdir(self.ledger)) if self.ledger else ():
            if name not in present:                      # made and removed, or never made
                _unlink_quietly(f"{self.ledger}/{name}")
                continue
            try:
                self.open(name).remove()
            except (SetupFailed, NotFound) as e:
                problems.append(e.message)
            else:
                removed.append(name)
        if not self._parent_ready:     # after the sweep: v1 resets a parent's device
            self.ensure_parent()       # list only without children
        return Claim(removed, problems, shared)

    def release(self) -> None:
        """At the end, our containers gone: the levels of the parent this manager made
        are removed when no other owner holds it (we get the lock exclusively), so that
        the host is left as it was (a parent made by someone else, with limits of
        theirs, stays); then the lock is let go."""
        if self._lock < 0:
            return
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            for path in reversed(self._made):
                try:
                    os.rmdir(path)
                except OSError:
                    pass                    # not empty (someone else's), or gone
            self._made.clear()
        os.close(self._lock)
        self._lock = -1
        self._parent_ready = False

    def names(self) -> list[str]:
        """Children of the parent in any hierarchy (start-up reconciliation)."""
        found: set[str] = set()
        for parent in self._parent_paths():
            try:
                with os.scandir(parent) as entries:
                    found.update(e.name for e in entries if e.is_dir(follow_symlinks=False))
            except FileNotFoundError:
                continue
            except OSError as e:
                raise _failed("list", parent, e) from e
        return sorted(found)
