"""OCI bundles for crun and runc, written here rather than from ``crun spec`` output.

The config mirrors what our runner sets up for the same case, so the rows compare like
with like: pid/mount/uts/ipc namespaces (network optional), a read-only busybox root,
/proc /dev /dev/pts /dev/shm /sys, the default capability set, no_new_privs, Docker's
masked and read-only paths, and memory + pids limits in a cgroup under ``cgroup_parent``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from sandboxd.runner.spec import DEFAULT_CAPABILITIES, DEFAULT_PATH, MASKED_PATHS, READONLY_PATHS

# The device nodes every runtime gives a container (CHECKS.md "Default profile").
_DEVICES_ALLOWED = (("c", 1, 3), ("c", 1, 5), ("c", 1, 7), ("c", 1, 8), ("c", 1, 9),
                    ("c", 5, 0), ("c", 5, 1), ("c", 5, 2), ("c", 136, -1))


def config(rootfs: Path, args: list[str], *, net: bool, memory: int, pids: int,
           cgroups_path: str) -> dict:
    """The ``config.json`` document for one container; ``net`` adds a network namespace."""
    caps = [f"CAP_{c}" for c in DEFAULT_CAPABILITIES]
    namespaces = [{"type": t} for t in ("pid", "mount", "uts", "ipc")]
    if net:
        namespaces.append({"type": "network"})
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(args),
            "env": [f"PATH={DEFAULT_PATH}"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": cgroups_path,
            "resources": {
                "memory": {"limit": memory},
                "pids": {"limit": pids},
                "devices": [{"allow": False, "access": "rwm"}] + [
                    {"allow": True, "type": t, "major": ma, "minor": mi, "access": "rwm"}
                    if mi >= 0 else
                    {"allow": True, "type": t, "major": ma, "access": "rwm"}
                    for t, ma, mi in _DEVICES_ALLOWED],
            },
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def write_bundle(bundle: Path, doc: dict) -> Path:
    """Write ``bundle/config.json`` (the rootfs stays where it is: ``root.path`` is absolute)."""
    bundle.mkdir(parents=True, exist_ok=True)
    tmp = bundle / "config.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    os.rename(tmp, bundle / "config.json")
    return bundle
