"""Directory trees a container filled (a volume, an uncapped layer), removed and measured
whatever their depth.

Python 3.11's ``shutil.rmtree`` and ``os.walk`` take one frame a level: a tree nested
more than ~1000 directories deep (``mkdir d; cd d`` in a loop) raises ``RecursionError``
out of them, which would leave the volume undeletable and ``system df`` failing. Trees
that deep go to GNU ``rm`` and ``du``, which walk any depth without following symlinks.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["remove", "disk_usage"]


def remove(path: str | os.PathLike[str]) -> None:
    """``rm -rf path``: what cannot be removed stays, nothing is raised."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    except RecursionError:
        subprocess.run(["rm", "-rf", "--one-file-system", "--", os.fspath(path)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)


def disk_usage(path: str | os.PathLike[str]) -> int:
    """Bytes of the blocks a tree holds (as ``du``: a hard link counted once)."""
    path = Path(path)
    try:
        return _walk_usage(path)
    except RecursionError:
        done = subprocess.run(["du", "-s", "-B1", "--", os.fspath(path)],
                              stdin=subprocess.DEVNULL, capture_output=True, check=False)
        try:
            return int(done.stdout.split()[0])
        except (IndexError, ValueError):
            return 0


def _walk_usage(path: Path) -> int:
    total, seen = os.lstat(path).st_blocks * 512 if path.is_file() else 0, set()
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total
