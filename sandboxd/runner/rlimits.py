"""Resource limits (``--ulimit``): Docker's names <-> ``RLIMIT_*``, checked, then applied.

The runner calls :func:`check_raisable` before it forks, so a container whose hard limit
this host cannot grant fails before anything starts (raising a hard limit needs
``CAP_SYS_RESOURCE``, which the daemon may not have), and :func:`apply` in the container's
child right before exec. ``-1`` is ``RLIM_INFINITY``.

``nproc`` counts the processes of a uid across the whole host, not per container, and root
is exempt from it: the pids cgroup controller is the real process cap.
"""
from __future__ import annotations

import errno
import os
import resource
from collections.abc import Iterable

from ..errors import SetupFailed
from .spec import ULIMIT_NAMES, UNLIMITED, Ulimit

# Python's resource module lacks RLIMIT_LOCKS; 10 is its number in asm-generic/resource.h,
# which every Linux architecture but alpha, mips and sparc uses.
RLIMIT_LOCKS = getattr(resource, "RLIMIT_LOCKS", 10)
RLIMITS: dict[str, int] = {
    name: RLIMIT_LOCKS if name == "locks" else getattr(resource, "RLIMIT_" + name.upper())
    for name in ULIMIT_NAMES
}
CAP_SYS_RESOURCE = 24
NR_OPEN = "/proc/sys/fs/nr_open"


def to_rlim(value: int) -> int:
    """Docker's ``-1`` -> ``RLIM_INFINITY``; other values as they are."""
    return resource.RLIM_INFINITY if value == UNLIMITED else value


def show(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def _has_cap_sys_resource() -> bool:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


def check_raisable(ulimits: Iterable[Ulimit]) -> list[str]:
    """Problems, one sentence each, for every hard limit this process could not set:
    above its own hard limit without ``CAP_SYS_RESOURCE``, or ``nofile`` above the
    kernel's ``fs.nr_open`` (which binds even with the capability)."""
    problems = []
    can_raise = None                    # read /proc only when some limit needs raising
    for u in ulimits:
        if u.name not in RLIMITS:
            problems.append(f"ulimit {u.name}: unknown (known: {', '.join(ULIMIT_NAMES)})")
            continue
        want = to_rlim(u.hard)
        _, have = resource.getrlimit(RLIMITS[u.name])
        if u.name == "nofile":
            with open(NR_OPEN, encoding="ascii") as f:
                nr_open = int(f.read())
            if want == resource.RLIM_INFINITY or want > nr_open:
                problems.append(f"ulimit nofile: hard limit {show(want)} is above this "
                                f"kernel's fs.nr_open {nr_open}")
                continue
        if have == resource.RLIM_INFINITY or (want != resource.RLIM_INFINITY and want <= have):
            continue
        if can_raise is None:
            can_raise = _has_cap_sys_resource()
        if not can_raise:
            problems.append(f"ulimit {u.name}: hard limit {show(want)} is above this host's "
                            f"{show(have)} and raising it needs CAP_SYS_RESOURCE")
    return problems


def apply(ulimits: Iterable[Ulimit]) -> None:
    """Set each limit on the calling process (the container's child, before exec)."""
    for u in ulimits:
        soft, hard = to_rlim(u.soft), to_rlim(u.hard)
        try:
            # prlimit, not setrlimit: setrlimit turns EPERM into a bare ValueError.
            resource.prlimit(0, RLIMITS[u.name], (soft, hard))
        except KeyError:
            raise SetupFailed(f"setrlimit {u.name}: unknown ulimit (known: "
                              f"{', '.join(ULIMIT_NAMES)})",
                              {"step": "rlimit", "errno": errno.EINVAL}) from None
        except (OSError, ValueError) as e:
            code = e.errno if isinstance(e, OSError) else errno.EINVAL
            raise SetupFailed(f"setrlimit {u.name} {show(soft)}:{show(hard)}: "
                              f"{os.strerror(code)}",
                              {"step": "rlimit", "errno": code, "name": u.name}) from e
