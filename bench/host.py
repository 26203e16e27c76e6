"""Facts about this machine and the kernel objects the bench leaves: cgroup mode, the
limits a runtime wrote, memory of a process tree, and what is left over at the end."""
from __future__ import annotations

import os
import platform
import signal
import sys
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, fs type, super options) for every mount, from mountinfo."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, rest = line.partition(" - ")
        fstype, _source, options = (rest.split(" ") + ["", "", ""])[:3]
        mounts.append((fields.split(" ")[4], fstype, options))
    return mounts


def mode() -> str:
    """``v2`` (unified only), ``hybrid`` (v1 controllers + a cgroup2 mount), or ``v1``."""
    types = {point: fstype for point, fstype, _ in _mounts()}
    if types.get(str(CGROUP_ROOT)) == "cgroup2":
        return "v2"
    if "cgroup2" in {types.get(p) for p in types if p.startswith(str(CGROUP_ROOT) + "/")}:
        return "hybrid"
    return "v1"


def hierarchies() -> list[Path]:
    """Mount points of every cgroup hierarchy (v1 controllers, named ones, cgroup2)."""
    return [Path(p) for p, fstype, _ in _mounts() if fstype in ("cgroup", "cgroup2")]


def path(tag: str, cid: str) -> str:
    """The cgroup path (absolute, so it does not nest under the bench's own cgroup) the
    peers' containers get: ``/<tag>/<id>``."""
    return f"/{tag}/{cid}"


def limits(cgroup: str) -> dict[str, int]:
    """The memory and pids limits written for ``cgroup`` (v1 or v2 files)."""
    if mode() == "v2":
        files = {"memory": CGROUP_ROOT / cgroup.lstrip("/") / "memory.max",
                 "pids": CGROUP_ROOT / cgroup.lstrip("/") / "pids.max"}
    else:
        files = {"memory": CGROUP_ROOT / "memory" / cgroup.lstrip("/") / "memory.limit_in_bytes",
                 "pids": CGROUP_ROOT / "pids" / cgroup.lstrip("/") / "pids.max"}
    found = {}
    for name, file in files.items():
        try:
            text = file.read_text().strip()
        except OSError as exc:
            raise OSError(f"reading the {name} limit: {exc}") from None
        found[name] = -1 if text == "max" else int(text)
    return found


def _own_cgroups() -> list[Path]:
    """Where the bench process itself sits in each hierarchy (a runtime given a relative
    cgroup path would nest its cgroups there)."""
    found = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, rel = line.split(":", 2)
        if rel == "/":
            continue
        for point, fstype, options in _mounts():
            if (fstype == "cgroup2" and not controllers) or (
                    fstype == "cgroup" and controllers
                    and set(controllers.split(",")) <= set(options.split(","))):
                found.append(Path(point) / rel.lstrip("/"))
    return found


def tagged_cgroups(tag: str) -> list[Path]:
    """Cgroup directories named ``<tag>`` or ``<tag>-...`` at the top of any hierarchy or
    under the bench's own cgroup."""
    found = []
    for top in hierarchies() + _own_cgroups():
        if top.is_dir():
            found += [d for d in top.iterdir()
                      if d.is_dir() and (d.name == tag or d.name.startswith(tag + "-"))]
    return found


def remove_cgroups(tag: str, patience: float = 5.0) -> tuple[list[str], list[str]]:
    """rmdir every tagged cgroup, deepest first. Processes still in one are the bench's
    own containers that outlived their runtime: they get SIGKILL, and busy cgroups are
    retried for ``patience`` seconds while they die. Returns (cgroups below the tagged
    parents, which a finished run should have removed itself, named once by their path
    inside the hierarchies; ones that would not go)."""
    left: dict[str, int] = {}
    for top in tagged_cgroups(tag):
        for dirpath, _dirs, _files in os.walk(top):
            if dirpath != str(top):
                rel = f"{top.name}/{os.path.relpath(dirpath, top)}"
                left[rel] = left.get(rel, 0) + 1
    deadline = time.monotonic() + patience
    while True:
        stuck = []
        for top in tagged_cgroups(tag):
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(dirpath)
                except OSError as exc:
                    stuck.append((dirpath, exc.strerror))
                    _kill_members(Path(dirpath))
        if not stuck or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return ([f"cgroup {rel} (in {n} hierarchies)" for rel, n in left.items()],
            [f"cgroup {path}: {reason}" for path, reason in stuck])


def _kill_members(cgroup: Path) -> None:
    try:
        pids = [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    except OSError:
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def tagged_mounts(*needles: str) -> list[str]:
    return [f"mount {point} ({fstype})" for point, fstype, _ in _mounts()
            if any(n in point for n in needles)]


def rss(pid: int) -> int:
    """Resident memory of one process in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0        # a kernel thread or a zombie


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all its threads' children)."""
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(c) for c in (task / "children").read_text().split()]
    return kids


def machine() -> dict[str, object]:
    """What a reader needs to judge the numbers."""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "cgroups": mode(),
        "python": f"{platform.python_version()} ({sys.executable})",
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
