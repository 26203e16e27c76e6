"""The built-in ``host`` image: this machine's system directories and the running Python,
read-only, so tests and notebook cells run on the same interpreter and packages with
nothing to download.

It is not stored as layers. Its root is a small *skeleton* directory, the read-only
lower of the container's overlay, that holds:

- mountpoint directories for each host directory bound in (``/usr``, ``/lib64`` ...,
  the Python prefixes such as ``/root/.pyenv/versions/3.11.7``);
- the merged-/usr symlinks exactly as the host has them (``bin -> usr/bin``);
- the usual empty top-level directories (proc, sys, dev, tmp, run, root, home, var/tmp);
- copies of harmless ``/etc`` files (users, groups, name service and loader config, CA
  certificates, time zone, alternatives). Never the host's ``resolv.conf``, ``hosts``,
  ``hostname`` or ``shadow``: a container gets its own network files.

plus read-only bind :class:`~sandboxd.runner.spec.Mount` s for the host directories.
The skeleton is built once per host layout under the cache directory and reused; a
change of layout or of a copied ``/etc`` file gives a new one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runner.interpreter import SYSTEM_DIRS, python_prefixes
from ..runner.spec import DEFAULT_PATH, Mount
from . import oci

HOST_REF = "host:latest"
HOST_NAME = "host"
# Under /etc; copied (files, dirs, symlinks as symlinks) when present.
ETC_ENTRIES = ("passwd", "group", "nsswitch.conf", "ld.so.cache", "ld.so.conf",
               "ld.so.conf.d", "ssl/certs", "ssl/openssl.cnf", "ca-certificates.conf",
               "localtime", "timezone", "alternatives", "protocols", "services",
               "os-release", "debian_version", "host.conf")
# Must never come from the host: the container gets its own.
ETC_EXCLUDED = ("resolv.conf", "hosts", "hostname", "shadow", "gshadow", "mtab")
EMPTY_DIRS = (("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("tmp", 0o1777),
              ("run", 0o755), ("root", 0o700), ("home", 0o755), ("var", 0o755),
              ("var/tmp", 0o1777), ("etc", 0o755), ("mnt", 0o755), ("opt", 0o755))


@dataclass(frozen=True)
class HostLayout:
    """What the host image consists of on this machine (pure data; see host_layout)."""
    symlinks: tuple[tuple[str, str], ...]       # (path in the container, link target)
    mounts: tuple[Mount, ...]                   # read-only binds, parents before children
    etc: tuple[str, ...]                        # host /etc paths copied into the skeleton
    python_bin: str                             # the running interpreter's bin directory


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def host_layout() -> HostLayout:
    symlinks: list[tuple[str, str]] = []
    mounts: list[Mount] = []
    system_real: list[str] = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            symlinks.append((d, os.readlink(d)))
        elif os.path.isdir(d):
            mounts.append(Mount(destination=d, source=d, readonly=True))
        else:
            continue
        system_real.append(os.path.realpath(d))
    chosen: list[str] = []
    for p in sorted(set(python_prefixes()), key=len):
        real = os.path.realpath(p)
        if any(_under(p, s) or _under(real, s) for s in system_real):
            continue                     # /usr's Python comes with /usr
        if any(_under(p, c) for c in chosen):
            continue                     # inside a prefix already bound
        if os.path.isdir(real):
            chosen.append(p)
            mounts.append(Mount(destination=p, source=real, readonly=True))
    etc = tuple(f"/etc/{e}" for e in ETC_ENTRIES if os.path.lexists(f"/etc/{e}"))
    mounts.sort(key=lambda m: m.destination.count("/"))
    return HostLayout(tuple(symlinks), tuple(mounts), etc,
                      os.path.dirname(os.path.abspath(sys.executable)))


def host_config(layout: HostLayout) -> dict[str, Any]:
    """The ``config`` section of the host image: PATH starts with the Python's bin dir."""
    path = ":".join(dict.fromkeys([layout.python_bin, *DEFAULT_PATH.split(":")]))
    return {"Env": [f"PATH={path}"], "Cmd": ["/bin/sh"]}


def host_image_config(layout: HostLayout, created: str) -> dict[str, Any]:
    """The whole OCI config of the host image (no layers)."""
    return {"created": created, "architecture": oci.architecture(), "os": "linux",
            "config": host_config(layout), "rootfs": {"type": "layers", "diff_ids": []},
            "history": [{"created": created, "created_by": "sandboxd built-in host image",
                         "empty_layer": True}]}


def host_rootfs(cache_root: Path, layout: HostLayout | None = None
                ) -> tuple[Path, tuple[Mount, ...]]:
    """The skeleton directory (the container's read-only lower) and the read-only binds
    of the host directories to mount on top of it, in order."""
    layout = layout or host_layout()
    cache_root = Path(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    skeleton = cache_root / f"skeleton-{_fingerprint(layout)}"
    if not skeleton.is_dir():
        _build(skeleton, layout)
    return skeleton, layout.mounts


def _fingerprint(layout: HostLayout) -> str:
    """Changes when the layout or a copied /etc entry changes."""
    etc = []
    for path in layout.etc:
        st = os.lstat(path)
        etc.append((path, st.st_mtime_ns, st.st_size, st.st_mode))
    doc = {"symlinks": layout.symlinks, "mounts": [m.destination for m in layout.mounts],
           "etc": etc, "dirs": EMPTY_DIRS}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _build(skeleton: Path, layout: HostLayout) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".skeleton-", dir=skeleton.parent))
    try:
        os.chmod(tmp, 0o755)
        for rel, mode in EMPTY_DIRS:
            (tmp / rel).mkdir(parents=True, exist_ok=True)
            os.chmod(tmp / rel, mode)
        for path, target in layout.symlinks:
            os.symlink(target, tmp / path.lstrip("/"))
        for m in layout.mounts:
            rel = Path(m.destination.lstrip("/"))
            (tmp / rel).mkdir(parents=True, exist_ok=True)
            # Every user in the container must reach the interpreter: the skeleton's
            # directories above a mount (/root for a pyenv Python) hold nothing else.
            for parent in rel.parents:
                if parent != Path("."):
                    os.chmod(tmp / parent, 0o755)
        for path in layout.etc:
            name = os.path.basename(path)
            if name in ETC_EXCLUDED:
                continue
            dest = tmp / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.copytree(path, dest, symlinks=True)
            else:
                shutil.copy2(path, dest, follow_symlinks=False)
        try:
            os.rename(tmp, skeleton)
        except OSError:
            if not skeleton.is_dir():     # else another builder won the race: use theirs
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
