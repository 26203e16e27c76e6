"""The default security profile, applied in the container's process just before exec.

Order matters: the bounding set is cut while we are still root with CAP_SETPCAP, then
groups/gid/uid change (a non-root uid loses every capability here), then the remaining
sets are set exactly (inheritable and ambient empty), then no_new_privs.
"""
from __future__ import annotations

import os

from ..errors import InvalidArgument
from . import syscalls as sc
from .spec import CAPABILITY_NAMES

CAPABILITIES = {name: number for number, name in enumerate(CAPABILITY_NAMES)}


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return max(CAPABILITIES.values())


LAST_CAP = _last_cap()          # read once in the fork server, before any pivot_root


def _permitted() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapPrm:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return (1 << (LAST_CAP + 1)) - 1


# What the runner itself holds: a container gets at most these ("all capabilities" of
# --privileged or --cap-add ALL is all of the runner's, as in runc; a host that withholds
# one, such as CAP_SYS_RESOURCE here, withholds it from containers too).
RUNNER_CAPS = _permitted()


def capability_mask(names: tuple[str, ...] | list[str]) -> int:
    mask = 0
    for name in names:
        mask |= 1 << CAPABILITIES[name]
    return mask


def resolve_user(user: str, passwd: str = "/etc/passwd",
                 group: str = "/etc/group") -> tuple[int, int, list[int]]:
    """``uid[:gid]`` or ``name[:group]`` -> (uid, gid, supplementary gids), looked up in
    the container's own files (called after pivot_root)."""
    if not user:
        return 0, 0, []
    name, _, grp = user.partition(":")
    users = _read_db(passwd)
    if name.isdigit():
        uid = int(name)
        entry = next((e for e in users if e[2] == name), None)
        gid = int(entry[3]) if entry else uid
    else:
        entry = next((e for e in users if e[0] == name), None)
        if entry is None:
            raise InvalidArgument(f"user: no user {name!r} in the image's /etc/passwd")
        uid, gid = int(entry[2]), int(entry[3])
    groups = _read_db(group)
    if grp:
        if grp.isdigit():
            gid = int(grp)
        else:
            g = next((e for e in groups if e[0] == grp), None)
            if g is None:
                raise InvalidArgument(f"user: no group {grp!r} in the image's /etc/group")
            gid = int(g[2])
    user_name = entry[0] if entry else None
    extra = sorted({int(e[2]) for e in groups
                    if user_name and len(e) > 3 and user_name in e[3].split(",")
                    and e[2].isdigit()} - {gid})
    return uid, gid, extra


def _read_db(path: str) -> list[list[str]]:
    try:
        with open(path) as f:
            return [line.rstrip("\n").split(":") for line in f
                    if line.strip() and not line.startswith("#") and line.count(":") >= 2]
    except OSError:
        return []


def add_groups(groups: list[int], names: tuple[str, ...] | list[str],
               group: str = "/etc/group") -> list[int]:
    """``--group-add``: gids or group names of the container's /etc/group, added to
    ``groups`` (called after pivot_root)."""
    entries = _read_db(group) if any(not n.isdigit() for n in names) else []
    out = list(groups)
    for name in names:
        if name.isdigit():
            gid = int(name)
        else:
            g = next((e for e in entries if e[0] == name and e[2].isdigit()), None)
            if g is None:
                raise InvalidArgument(f"group-add: no group {name!r} in the image's "
                                      f"/etc/group")
            gid = int(g[2])
        if gid not in out:
            out.append(gid)
    return out


def apply_profile(capabilities: tuple[str, ...], user: str, no_new_privileges: bool,
                  extra_groups: tuple[str, ...] = ()) -> None:
    """Drop to ``capabilities`` and ``user`` (with ``extra_groups`` besides its own);
    raises OSError/InvalidArgument on failure."""
    keep = capability_mask(capabilities) & RUNNER_CAPS
    uid, gid, groups = resolve_user(user)
    if extra_groups:
        groups = add_groups(groups, extra_groups)
    for cap in range(LAST_CAP + 1):
        if not keep & (1 << cap):
            sc.prctl(sc.PR_CAPBSET_DROP, cap)
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)       # non-root: the kernel clears every capability
    if uid == 0:
        sc.capset(keep, keep, 0)
    sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
    if no_new_privileges:
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
