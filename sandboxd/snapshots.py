"""Overlay snapshotter: the directories that become a container's root filesystem.

The shape is containerd's snapshotter: a snapshot is a directory with a key, a parent and
a kind. ``committed`` snapshots are immutable layers; an ``active`` one is a writable
layer on top of a committed chain; a ``view`` is a read-only look at a chain. The
snapshotter never mounts anything: it returns mounts as data (:class:`MountData`, or a
runner :class:`~sandboxd.runner.spec.RootFS` via :meth:`Snapshotter.rootfs`), and only
the runner performs them, inside the container's mount namespace.

Unpacking an image layer::

    mounts = sn.prepare("extract-<random>", parent=<chain id of the layers below>)
    apply the layer tar into sn.path(...)/fs  (images.unpack writes overlay whiteouts)
    sn.commit(<chain id of this layer>, "extract-<random>")

    Each layer is unpacked once: a committed snapshot named by its chain id is reused by
    every image that has the same layers underneath.

A container's root::

    sn.prepare(<container id>, parent=<chain id of the image's top layer>)
    root = sn.rootfs(<container id>)       # lowerdirs (top first) + upperdir + workdir
    ... the runner mounts the overlay, the container runs, writes land in upperdir ...
    sn.remove(<container id>)              # after the container is gone

    A container with a read-only root takes a view instead: ``sn.view(<container id>,
    parent)``; the view pins its chain so the image's layers cannot be removed under it.
    (A container with a tmpfs upper needs no snapshot at all: the image service pins
    its chain in memory.)

A container's capped root (``prepare(..., size=N)``): the writable layer is an ext4
image of N bytes (:mod:`sandboxd.runner.layers`) instead of the two directories; the
runner mounts it in the container's own namespace, and the daemon reads it (commit,
export) only through :meth:`Snapshotter.opened`, with a mount fd the runner gave it.

Layout::

    root/snapshots/<id>/fs      the snapshot's content (an overlay upper dir)
    root/snapshots/<id>/work    overlay workdir (active snapshots)
    root/snapshots/<id>/layer.img  a capped active snapshot's filesystem (fs, work inside)
    root/snapshots/templates    one empty image per size, copied for each new layer
    root/snapshots/new-*        being created (a crash leaves these; cleanup() removes)
    root/snapshots/empty        an empty lower for a root that has no parent

``<id>`` is a short number (sqlite AUTOINCREMENT) so that ``lowerdir=`` strings stay short:
mount options must fit one page (4096 bytes). A 40-layer chain under a root such as
``/var/lib/sandboxd`` needs ~1.4 KB; for deeper chains or long roots the runner names the
lowers relative to ``root/snapshots`` after a chdir there (all lowers share that parent).

Crash safety (containerd's overlay.go order): a new snapshot is made in a temporary
directory, recorded in a transaction, renamed into place before that transaction commits;
removal deletes the row first and the files after. Whatever a crash leaves on disk that
no row owns is deleted by :meth:`Snapshotter.cleanup` at start-up.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import trees
from .errors import Conflict, InvalidArgument, NotFound
from .runner import layers
from .runner.spec import RootFS
from .store import Store

ACTIVE, VIEW, COMMITTED = "active", "view", "committed"
_EMPTY = "empty"
_TEMPLATES = "templates"
LAYER = "layer.img"
STORAGE_LABEL = "sandboxd.storage-size"     # bytes, on an active snapshot with a capped layer
_MAX_KEY = 1024


@dataclass(frozen=True)
class MountData:
    """One mount call, as data (containerd's mount.Mount): ``mount -t type source target
    -o options``; the target is wherever the consumer mounts the root."""
    type: str
    source: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Info:
    key: str
    parent: str | None
    kind: str                       # active | view | committed
    created: float
    id: int                         # directory number under root/snapshots
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


class Snapshotter:
    def __init__(self, root: Path, store: Store):
        self.root = Path(root)
        if ":" in str(self.root.resolve()) or "," in str(self.root.resolve()):
            raise InvalidArgument(f"snapshot root {self.root}: ':' and ',' cannot appear in "
                                  f"overlay mount options; choose a path without them")
        self.dir = self.root / "snapshots"
        self.store = store
        self.dir.mkdir(parents=True, exist_ok=True)
        self.empty = self.dir / _EMPTY
        self.empty.mkdir(mode=0o755, exist_ok=True)
        # capped layers the daemon holds open: key -> the directory of their filesystem
        self._opened: dict[str, str] = {}

    # ------------------------------------------------------------ creating

    def prepare(self, key: str, parent: str | None = None, *,
                labels: dict[str, str] | None = None, size: int | None = None
                ) -> list[MountData]:
        """A new writable snapshot ``key`` on top of the committed ``parent`` (or empty);
        with ``size`` its layer is a filesystem image of that many bytes (a container's
        capped root: only :meth:`rootfs` mounts it). ``Conflict`` when ``key`` exists;
        ``NotFound`` when ``parent`` does not."""
        if size is not None:
            labels = {**(labels or {}), STORAGE_LABEL: str(size)}
        return self._create(ACTIVE, key, parent, labels, size)

    def view(self, key: str, parent: str | None = None, *,
             labels: dict[str, str] | None = None) -> list[MountData]:
        """A read-only snapshot ``key`` of the committed ``parent``; it cannot be
        committed, and it keeps ``parent`` from being removed while it exists."""
        return self._create(VIEW, key, parent, labels)

    def _create(self, kind: str, key: str, parent: str | None,
                labels: dict[str, str] | None, size: int | None = None) -> list[MountData]:
        _check_key(key)
        labels_json = _labels(labels)
        tmp = Path(tempfile.mkdtemp(prefix="new-", dir=self.dir))
        final: Path | None = None
        try:
            os.chmod(tmp, 0o700)
            if size is not None:
                layers.make_image(str(tmp / LAYER), size, str(self.dir / _TEMPLATES))
            else:
                (tmp / "fs").mkdir(mode=0o755)
            if kind == ACTIVE and size is None:
                (tmp / "work").mkdir(mode=0o700)
            with self.store.transaction() as db:
                if db.execute("SELECT 1 FROM snapshots WHERE key = ?", (key,)).fetchone():
                    raise Conflict(f"snapshot {key} already exists")
                if parent is not None:
                    row = db.execute("SELECT kind FROM snapshots WHERE key = ?",
                                     (parent,)).fetchone()
                    if row is None:
                        raise NotFound(f"parent snapshot {parent} does not exist")
                    if row["kind"] != COMMITTED:
                        raise InvalidArgument(f"parent snapshot {parent} is {row['kind']}; "
                                              f"only a committed snapshot can be a parent")
                cur = db.execute("INSERT INTO snapshots (key, parent, kind, created, labels)"
                                 " VALUES (?, ?, ?, ?, ?)",
                                 (key, parent, kind, time.time(), labels_json))
                final = self.dir / str(cur.lastrowid)
                if os.path.lexists(final):
                    # a crash leftover: a rolled-back insert may hand out its id again
                    shutil.rmtree(final)
                os.rename(tmp, final)
            return [] if size is not None else self.mounts(key)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if final is not None and not self.exists(key):
                shutil.rmtree(final, ignore_errors=True)
            raise

    def commit(self, name: str, key: str, *, labels: dict[str, str] | None = None) -> None:
        """Turn the active snapshot ``key`` into the committed, immutable ``name`` (same
        directory). ``Conflict`` when ``name`` exists or ``key`` is not active."""
        _check_key(name)
        info = self.stat(key)
        if info.kind != ACTIVE:
            raise Conflict(f"snapshot {key} is {info.kind}; only an active snapshot can be "
                           f"committed")
        if STORAGE_LABEL in info.labels:
            raise InvalidArgument(f"snapshot {key} is a container's capped layer: read it "
                                  f"into a layer tar instead of committing it in place")
        size, inodes = _disk_usage(self._fs(info.id))
        with self.store.transaction() as db:
            if db.execute("SELECT 1 FROM snapshots WHERE key = ?", (name,)).fetchone():
                raise Conflict(f"snapshot {name} already exists")
            updated = db.execute(
                "UPDATE snapshots SET key = ?, kind = ?, size = ?, inodes = ?, labels = ?,"
                " created = ? WHERE key = ? AND kind = ?",
                (name, COMMITTED, size, inodes,
                 _labels(labels) if labels is not None else json.dumps(info.labels),
                 time.time(), key, ACTIVE)).rowcount
            if updated != 1:
                raise Conflict(f"snapshot {key} changed while it was being committed")
        # The workdir is only needed while the layer is an overlay upper.
        shutil.rmtree(self.dir / str(info.id) / "work", ignore_errors=True)

    # ------------------------------------------------------------ removing

    def remove(self, key: str) -> None:
        """Delete ``key``: its row first, then its files (a failure there is left for
        :meth:`cleanup`). ``Conflict`` while other snapshots have it as parent.
        The caller unmounts first: removing the upper of a live overlay breaks it."""
        with self.store.transaction() as db:
            row = db.execute("SELECT id FROM snapshots WHERE key = ?", (key,)).fetchone()
            if row is None:
                raise NotFound(f"snapshot {key} does not exist")
            children = [r[0] for r in db.execute(
                "SELECT key FROM snapshots WHERE parent = ? LIMIT 5", (key,))]
            if children:
                raise Conflict(f"snapshot {key} is the parent of {', '.join(children)}; "
                               f"remove those first")
            db.execute("DELETE FROM snapshots WHERE key = ?", (key,))
        trees.remove(self.dir / str(row["id"]))       # an uncapped upper: any depth

    def cleanup(self) -> list[Path]:
        """Delete directories under ``root/snapshots`` that no row owns (crash leftovers:
        half-made ``new-*`` dirs, dirs whose removal did not finish). Run at start-up,
        before snapshots are being made."""
        owned = {str(r[0]) for r in self.store.query("SELECT id FROM snapshots")}
        removed = []
        for entry in os.scandir(self.dir):
            if entry.name in (_EMPTY, _TEMPLATES) or entry.name in owned:
                continue
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                trees.remove(path)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
        return removed

    # ------------------------------------------------------------ reading

    def stat(self, key: str) -> Info:
        rows = self.store.query("SELECT * FROM snapshots WHERE key = ?", (key,))
        if not rows:
            raise NotFound(f"snapshot {key} does not exist")
        return _info(rows[0])

    def exists(self, key: str) -> bool:
        return bool(self.store.query("SELECT 1 FROM snapshots WHERE key = ?", (key,)))

    def walk(self) -> list[Info]:
        """Every snapshot, oldest first."""
        return [_info(r) for r in self.store.query("SELECT * FROM snapshots ORDER BY id")]

    def usage(self, key: str) -> tuple[int, int]:
        """``(bytes on disk, inodes)`` of the snapshot's own layer (not its parents);
        recorded at commit for committed snapshots, measured now for others."""
        rows = self.store.query("SELECT * FROM snapshots WHERE key = ?", (key,))
        if not rows:
            raise NotFound(f"snapshot {key} does not exist")
        row = rows[0]
        if row["kind"] == COMMITTED and row["size"] is not None:
            return row["size"], row["inodes"]
        image = self.dir / str(row["id"]) / LAYER
        if STORAGE_LABEL in json.loads(row["labels"]):
            # what the layer takes on the host; its files are inside the image
            return layers.allocated(str(image)), 0
        return _disk_usage(self._fs(row["id"]))

    def path(self, key: str) -> Path:
        """The snapshot's content directory (``.../<id>/fs``): where a layer is unpacked.
        A capped layer's is inside its image: only while :meth:`opened` holds it."""
        info = self.stat(key)
        if STORAGE_LABEL in info.labels:
            top = self._opened.get(key)
            if top is None:
                raise Conflict(f"snapshot {key}: its capped layer is not open for reading")
            return Path(top) / "fs"
        return self._fs(info.id)

    def layer_image(self, key: str) -> str | None:
        """The filesystem image of a capped active snapshot, or None."""
        info = self.stat(key)
        return str(self.dir / str(info.id) / LAYER) if STORAGE_LABEL in info.labels else None

    @contextlib.contextmanager
    def opened(self, key: str, directory: str) -> Iterator[None]:
        """While the block runs, :meth:`path` of the capped snapshot ``key`` reads from
        ``directory`` (its mounted filesystem, e.g. ``/proc/self/fd/N`` of an fd the
        runner's ``open_layer`` gave)."""
        self._opened[key] = directory
        try:
            yield
        finally:
            self._opened.pop(key, None)

    def chain(self, key: str) -> list[Info]:
        """``key`` and its ancestors, top first."""
        rows = self.store.query(
            "WITH RECURSIVE chain(key, depth) AS ("
            "  SELECT ?, 0"
            "  UNION ALL"
            "  SELECT s.parent, c.depth + 1 FROM snapshots s JOIN chain c ON s.key = c.key"
            "  WHERE s.parent IS NOT NULL)"
            " SELECT s.* FROM chain c JOIN snapshots s ON s.key = c.key ORDER BY c.depth",
            (key,))
        if not rows:
            raise NotFound(f"snapshot {key} does not exist")
        return [_info(r) for r in rows]

    def mounts(self, key: str) -> list[MountData]:
        """The mounts that make up the active or view snapshot ``key``."""
        info = self.stat(key)
        fs = str(self._fs(info.id))
        lowers = self._lowers(info)
        if info.kind == COMMITTED:
            raise InvalidArgument(f"snapshot {key} is committed: make a view or an active "
                                  f"snapshot on top of it to mount it")
        if STORAGE_LABEL in info.labels:
            raise InvalidArgument(f"snapshot {key} is a capped layer: only the runner "
                                  f"mounts it (see rootfs)")
        if info.kind == ACTIVE:
            if not lowers:
                return [MountData("bind", fs, ("rbind", "rw"))]
            work = str(self.dir / str(info.id) / "work")
            return [MountData("overlay", "overlay", (f"workdir={work}", f"upperdir={fs}",
                                                     "lowerdir=" + ":".join(lowers)))]
        if not lowers:
            return [MountData("bind", fs, ("rbind", "ro"))]
        if len(lowers) == 1:
            return [MountData("bind", lowers[0], ("rbind", "ro"))]
        return [MountData("overlay", "overlay", ("lowerdir=" + ":".join(lowers),))]

    def rootfs(self, key: str, *, readonly: bool = False) -> RootFS:
        """The runner's :class:`RootFS` for the active or view snapshot ``key``.

        active: lowers = the parent chain (top first; an empty dir when there is none),
        upper/work = the snapshot's own; with ``readonly`` the snapshot's content becomes
        the top lower and there is no upper.
        view: lowers = the chain; no persistent upper. ``readonly`` gives a read-only
        root; otherwise the runner puts a fresh tmpfs upper on top (writes vanish with
        the container).
        """
        info = self.stat(key)
        lowers = tuple(self._lowers(info))
        if info.kind == COMMITTED:
            raise InvalidArgument(f"snapshot {key} is committed: a container root needs an "
                                  f"active snapshot or a view on top of it")
        if info.kind == ACTIVE and STORAGE_LABEL in info.labels:
            if readonly:
                raise InvalidArgument(f"snapshot {key}: a capped layer cannot be a read-only "
                                      f"root")
            return RootFS(lowerdirs=lowers or (str(self.empty),),
                          layer=str(self.dir / str(info.id) / LAYER))
        if info.kind == ACTIVE:
            fs = str(self._fs(info.id))
            if readonly:
                return RootFS(lowerdirs=(fs, *lowers), readonly=True)
            return RootFS(lowerdirs=lowers or (str(self.empty),), upperdir=fs,
                          workdir=str(self.dir / str(info.id) / "work"))
        return RootFS(lowerdirs=lowers or (str(self.empty),), readonly=readonly)

    def _lowers(self, info: Info) -> list[str]:
        if info.parent is None:
            return []
        return [str(self._fs(p.id)) for p in self.chain(info.parent)]

    def _fs(self, id: int) -> Path:
        return self.dir / str(id) / "fs"


def _info(row: Any) -> Info:
    return Info(key=row["key"], parent=row["parent"], kind=row["kind"],
                created=row["created"], id=row["id"], labels=json.loads(row["labels"]))


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key or "\x00" in key or len(key) > _MAX_KEY:
        raise InvalidArgument(f"snapshot key {key!r:.80}: must be a non-empty string "
                              f"without NUL, at most {_MAX_KEY} characters")


def _labels(labels: dict[str, str] | None) -> str:
    labels = labels or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise InvalidArgument("snapshot labels: keys and values must be strings")
    return json.dumps(labels, sort_keys=True)


def _disk_usage(top: Path) -> tuple[int, int]:
    """Bytes allocated and inodes under ``top`` (hard links counted once; no symlink is
    followed)."""
    seen: set[tuple[int, int]] = set()
    size = 0
    stack = [str(top)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                ino = (st.st_dev, st.st_ino)
                if ino not in seen:
                    seen.add(ino)
                    size += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return size, len(seen)
