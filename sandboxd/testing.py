"""Tiny images for tests and benchmarks, made on this machine (no registry needed).

``busybox_rootfs()`` lays out Debian's static busybox as a minimal root filesystem once
per cache directory and returns its path; ``busybox_tar()`` packs the same tree as a plain
rootfs tarball (what ``sbx import`` and other runtimes' ``import`` take).
"""
from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path
from typing import Callable

from .rootfs import (APT_SHADOWED, BUSYBOX, add_apt, add_busybox, add_python,
                     write_busybox_tree)


def cache_dir() -> Path:
    """Where generated trees live: ``$SANDBOXD_TEST_CACHE`` or ``~/.cache/sandboxd-test``."""
    path = Path(os.environ.get("SANDBOXD_TEST_CACHE", Path.home() / ".cache" / "sandboxd-test"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def busybox_rootfs(dest: Path | None = None) -> Path:
    """A busybox root filesystem: bin/<applet> -> busybox, etc/passwd, etc/group
    (:func:`sandboxd.rootfs.write_busybox_tree`, what ``sbx image bootstrap busybox``
    imports)."""
    if not os.path.exists(BUSYBOX):
        raise FileNotFoundError(f"{BUSYBOX} is missing: apt-get install busybox-static")
    dest = Path(dest) if dest else cache_dir() / "busybox-rootfs"
    if (dest / ".complete").exists():
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_busybox_tree(tmp, BUSYBOX)
    (tmp / ".complete").write_text("")
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(tmp, dest)
    return dest


def _cached_tar(name: str, dest: Path | None, fill: Callable[[tarfile.TarFile], None]
                ) -> Path:
    """``dest`` (default: ``name`` in the cache directory), made by ``fill`` into a
    temporary file renamed into place, so a reader never sees half a tarball; kept."""
    dest = Path(dest) if dest else cache_dir() / name
    if dest.exists():
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    with tarfile.open(tmp, "w") as tar:
        fill(tar)
    os.rename(tmp, dest)
    return dest


def busybox_tar(dest: Path | None = None) -> Path:
    """The busybox rootfs as a plain tarball (``sbx import``, ``podman import``)."""
    def fill(tar: tarfile.TarFile) -> None:
        root = busybox_rootfs()
        for entry in sorted(os.listdir(root)):
            if entry != ".complete":
                tar.add(root / entry, arcname=entry)
    return _cached_tar("busybox-rootfs.tar", dest, fill)


def python_tar(dest: Path | None = None) -> Path:
    """A rootfs tarball with busybox, the host's Debian ``python3.11``
    (:func:`sandboxd.rootfs.add_python`) and pip (from the running interpreter's
    environment): enough for ``python3 -m pip install`` in a build, without a registry.
    ~80 MB, made once per cache directory."""
    def fill(tar: tarfile.TarFile) -> None:
        import pip
        add_busybox(tar)
        add_python(tar)
        tar.add(os.path.dirname(pip.__file__), arcname="usr/lib/python3/dist-packages/pip")
    return _cached_tar("python-rootfs.tar", dest, fill)


def apt_tar(dest: Path | None = None) -> Path:
    """A rootfs tarball with busybox and the host's apt-get and dpkg
    (:func:`sandboxd.rootfs.add_apt`): enough for ``apt-get install`` from a local
    repository in a build, without a registry. ~25 MB, made once per cache directory."""
    def fill(tar: tarfile.TarFile) -> None:
        add_busybox(tar, skip=APT_SHADOWED)
        add_apt(tar)
    return _cached_tar("apt-rootfs.tar", dest, fill)
