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

from .rootfs import BUSYBOX, write_busybox_tree


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


def busybox_tar(dest: Path | None = None) -> Path:
    """The busybox rootfs as a plain tarball (``sbx import``, ``podman import``)."""
    dest = Path(dest) if dest else cache_dir() / "busybox-rootfs.tar"
    if dest.exists():
        return dest
    root = busybox_rootfs()
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    with tarfile.open(tmp, "w") as tar:
        for entry in sorted(os.listdir(root)):
            if entry != ".complete":
                tar.add(root / entry, arcname=entry)
    os.rename(tmp, dest)
    return dest


# Debian's interpreter, not the one a venv may run on: its prefix is /usr, so it finds
# its standard library where the image puts it.
PYTHON = "/usr/bin/python3.11"
_PYTHON_LIB = "/usr/lib/python3.11"
# Left out: a test image needs none of them, and EXTERNALLY-MANAGED would make pip
# refuse to install (PEP 668).
_PYTHON_SKIP = {"EXTERNALLY-MANAGED", "test", "idlelib", "tkinter", "turtledemo",
                "ensurepip", "lib2to3", "pydoc_data", "config-3.11-x86_64-linux-gnu"}


def python_tar(dest: Path | None = None) -> Path:
    """A rootfs tarball with busybox, the host's Debian ``python3.11`` (its standard
    library and the shared libraries it and its extension modules link) and pip (from
    the running interpreter's environment): enough for ``python3 -m pip install`` in a
    build, without a registry. ~80 MB, made once per cache directory."""
    import pip
    dest = Path(dest) if dest else cache_dir() / "python-rootfs.tar"
    if dest.exists():
        return dest
    if not os.path.exists(PYTHON):
        raise FileNotFoundError(f"{PYTHON} is missing: apt-get install python3.11")
    libs: set[str] = set()
    for binary in [PYTHON, *(str(p) for p in Path(_PYTHON_LIB, "lib-dynload").glob("*.so"))]:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
        for line in out.splitlines():
            fields = line.split()
            path = fields[2] if len(fields) > 2 and fields[1] == "=>" else fields[0]
            if path.startswith("/"):
                libs.add(path)
    root = busybox_rootfs()
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")

    def skip(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if Path(info.name).name in _PYTHON_SKIP else info

    with tarfile.open(tmp, "w") as tar:
        for entry in sorted(os.listdir(root)):
            if entry != ".complete":
                tar.add(root / entry, arcname=entry)
        tar.add(PYTHON, arcname="usr/bin/python3.11")
        link = tarfile.TarInfo("usr/bin/python3")
        link.type, link.linkname = tarfile.SYMTYPE, "python3.11"
        tar.addfile(link)
        for lib in sorted(libs):                  # as files at the names ldd gave
            tar.add(os.path.realpath(lib), arcname=lib.lstrip("/"))
        tar.add(_PYTHON_LIB, arcname=_PYTHON_LIB.lstrip("/"), filter=skip)
        tar.add(os.path.dirname(pip.__file__), arcname="usr/lib/python3/dist-packages/pip")
    os.rename(tmp, dest)
    return dest
