"""Named volumes: directories the daemon owns, outliving the containers that mount them.

A volume is ``root/volumes/<name>/_data`` (what a container sees at its mount point,
Docker's layout) and ``root/volumes/<name>/volume.json`` (when it was made, its labels
and driver options). Only Docker's ``local`` driver exists. A container's mount of a
volume is a bind of ``_data`` done by the runner (``containers.py`` turns the model's
``type="volume"`` mounts into binds when it builds the spec).

What caps a volume: by default the filesystem of the daemon's root, as for Docker's
``local`` driver on a filesystem without project quotas. A volume made with the driver
option ``size`` (Docker's ``--opt size=``, which its local driver offers on xfs with
project quotas) is capped like a container's writable layer: ``root/volumes/<name>/
volume.img`` is a sparse ext4 image of that size (``runner/layers.py``) instead of
``_data``, and a container's mount of it is an ``image`` mount that the runner makes in
the container's own namespace (never in the daemon's); containers that mount it at the
same time share one loop device and one superblock. Writing past the size fails with
ENOSPC inside; the host's disk grows only by what is written. Such a volume starts
empty (the image's content is not copied in: the daemon never mounts it) and shows the
ext4 ``lost+found``.

Crash safety without a database: a new volume is made under a dot-name (never a valid
volume name) and renamed into place whole; a removed one is renamed to a dot-name first
and deleted after. :meth:`VolumeService.cleanup` removes dot-names left by a crash.

Who uses a volume is read from the containers' records (the metadata store): a volume
is in use while any container, running or not, mounts it (Docker's rule: ``rm`` and
``prune`` leave it alone, ``rm -f`` too).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from . import trees
from .errors import Conflict, InvalidArgument, NotFound, SetupFailed
from .events import NOWHERE, EventBus
from .filters import key_matches, label_matches
from .runner.spec import Mount, parse_size
from .validate import VOLUME_DRIVER, check_driver, check_volume_name

ANONYMOUS_LABEL = "com.docker.volume.anonymous"   # Docker 23's mark of an anonymous volume
FILTER_KEYS = ("dangling", "driver", "label", "label!", "name")
PRUNE_FILTER_KEYS = ("label", "label!", "all")
_DATA, _META, _IMAGE = "_data", "volume.json", "volume.img"




@dataclass(frozen=True)
class Volume:
    name: str
    mountpoint: str
    created: float
    labels: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)

    @property
    def anonymous(self) -> bool:
        return ANONYMOUS_LABEL in self.labels

    @property
    def capped(self) -> bool:
        """Its data is in an ext4 image of ``options["size"]`` (the module's docs)."""
        return "size" in self.options

    def to_dict(self, size: int = -1, ref_count: int = -1) -> dict[str, Any]:
        """Docker's Volume object (``GET /volumes/{name}``); ``UsageData`` as Docker
        gives it in ``system df`` (-1: not computed)."""
        doc: dict[str, Any] = {
            "CreatedAt": _rfc3339(self.created), "Driver": VOLUME_DRIVER,
            "Labels": dict(self.labels), "Mountpoint": self.mountpoint, "Name": self.name,
            "Options": dict(self.options) or None, "Scope": "local"}
        if size >= 0 or ref_count >= 0:
            doc["UsageData"] = {"Size": size, "RefCount": ref_count}
        return doc


class Records(Protocol):
    """What the service reads of the metadata store (``store.Store``): the containers'
    records, which say who mounts what. (Not the class: ``flags.py`` imports this
    module's checks on the client's side, which never imports the store.)"""

    def list_containers(self) -> list[dict[str, Any]]: ...


class VolumeService:
    """Built by the daemon's composition root with the daemon's root and the metadata
    store."""

    def __init__(self, root: Path, store: Records):
        self.dir = Path(root) / "volumes"
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.store = store
        self.events: EventBus = NOWHERE         # the daemon's bus, when the root wires one

    # ------------------------------------------------------------ lookups

    def path(self, name: str) -> str:
        """The directory a container mounts for volume ``name`` (uncapped)."""
        return str(self.dir / name / _DATA)

    def mount(self, name: str, destination: str, readonly: bool) -> Mount:
        """The runner's mount of volume ``name``: a bind of its directory, or (capped)
        an image mount of its ext4 image."""
        try:
            volume = self.get(name)
        except NotFound:         # a check of a new container's spec, before it is made
            return Mount(destination, "bind", self.path(name), readonly)
        return Mount(destination, "image" if volume.capped else "bind", volume.mountpoint,
                     readonly)

    def get(self, name: str) -> Volume:
        if not isinstance(name, str) or check_volume_name(name):
            raise NotFound(f"get {name}: no such volume")
        try:
            meta = json.loads((self.dir / name / _META).read_text())
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"get {name}: no such volume") from None
        options = meta.get("options") or {}
        where = self.dir / name / (_IMAGE if "size" in options else _DATA)
        return Volume(name=name, mountpoint=str(where), created=meta.get("created", 0.0),
                      labels=meta.get("labels") or {}, options=options)

    def list(self, filters: Mapping[str, Sequence[str]] | None = None) -> list[Volume]:
        """Docker's ``volume ls --filter``: ``name`` (a regular expression searched in
        the name), ``label`` (``k`` or ``k=v``), ``label!``, ``dangling`` (true/false:
        mounted by no container), ``driver``; values of a key OR-ed, keys AND-ed."""
        filters = dict(filters or {})
        _check_filters(filters, FILTER_KEYS)
        volumes = []
        for entry in sorted(os.listdir(self.dir)):
            if entry.startswith("."):
                continue
            try:
                volumes.append(self.get(entry))
            except NotFound:
                continue
        users = self.users() if "dangling" in filters else {}
        return [v for v in volumes if _matches(v, filters, users)]

    def users(self) -> dict[str, list[str]]:
        """Volume name -> the ids of the containers that mount it (any state)."""
        out: dict[str, list[str]] = {}
        for row in self.store.list_containers():
            for name in volume_names(row["doc"]):
                out.setdefault(name, []).append(row["id"])
        return out

    # ------------------------------------------------------------ create / remove

    def create(self, name: str = "", driver: str = VOLUME_DRIVER,
               labels: Mapping[str, str] | None = None,
               options: Mapping[str, str] | None = None) -> Volume:
        """A new volume (an empty ``name``: a random 64-hex one), or the existing one of
        that name as it is (Docker's create is idempotent)."""
        labels, options = dict(labels or {}), dict(options or {})
        problems = check_driver(driver, options)
        if name:
            problems += check_volume_name(name)
        if problems:
            raise InvalidArgument.of(problems)
        name = name or secrets.token_hex(32)
        try:
            return self.get(name)
        except NotFound:
            pass
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=self.dir))
        try:
            os.chmod(tmp, 0o755)     # the container's users reach _data through it
            if "size" in options:
                from .runner import layers
                try:
                    layers.make_image(str(tmp / _IMAGE), parse_size(options["size"]),
                                      str(self.dir.parent / "snapshots" / "templates"))
                except OSError as e:       # the host's disk or file size limit
                    raise SetupFailed(f"volume {name}: cannot make its {options['size']} "
                                      f"image: {e.strerror or e}",
                                      {"step": "volume", "errno": e.errno or 0}) from None
            else:
                (tmp / _DATA).mkdir(mode=0o755)
            meta = {"created": time.time(), "labels": labels, "options": options}
            (tmp / _META).write_text(json.dumps(meta))
            os.rename(tmp, self.dir / name)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if (self.dir / name / _META).exists():   # made meanwhile under the same name
                return self.get(name)
            raise
        self.events.volume("create", name)
        return self.get(name)

    def remove(self, name: str, force: bool = False) -> list[Path]:
        """Docker's rule: a volume a container mounts (running or not) stays, ``force``
        or not; ``force`` only makes a missing volume no error. Gone at once; its files
        are what :meth:`purge` deletes (in a worker thread: it may be big)."""
        try:
            self.get(name)
        except NotFound:
            if force:
                return []
            raise
        users = self.users().get(name)
        if users:
            raise Conflict(f"remove {name}: volume is in use - "
                           f"[{', '.join(users)}]")
        self.events.volume("destroy", name)
        return [self._detach(name)]

    def _detach(self, name: str) -> Path:
        """Rename the volume out of sight (a crash leaves only a dot-name, which
        :meth:`cleanup` deletes); the directory to purge."""
        doomed = Path(tempfile.mkdtemp(prefix=".del-", dir=self.dir))
        os.rename(self.dir / name, doomed / name)
        return doomed

    @staticmethod
    def purge(doomed: Sequence[Path]) -> int:
        """Delete detached volumes; the bytes they held."""
        size = 0
        for path in doomed:
            size += trees.disk_usage(path)
            trees.remove(path)
        return size

    def remove_anonymous(self, names: Sequence[str]) -> list[str]:
        """``rm -v`` and ``--rm``: the anonymous volumes among ``names`` that no other
        container mounts (named volumes always stay)."""
        users = self.users()
        removed = []
        for name in names:
            try:
                volume = self.get(name)
            except NotFound:
                continue
            if volume.anonymous and not users.get(name):
                self.purge([self._detach(name)])
                removed.append(name)
                self.events.volume("destroy", name)
        return removed

    def prune(self, filters: Mapping[str, Sequence[str]] | None = None,
              all: bool = False) -> tuple[list[str], list[Path]]:
        """Docker 23's ``volume prune``: unused anonymous volumes (``all``, or the
        filter ``all=true``: every unused one) matching ``label``/``label!``; their
        names and what :meth:`purge` deletes."""
        filters = dict(filters or {})
        _check_filters(filters, PRUNE_FILTER_KEYS)
        for value in filters.pop("all", ()):
            all = all or _boolean(value, "filters.all")
        users = self.users()
        deleted, doomed = [], []
        for volume in self.list():
            if users.get(volume.name) or not (all or volume.anonymous):
                continue
            if not _matches(volume, filters, users):
                continue
            doomed.append(self._detach(volume.name))
            deleted.append(volume.name)
            self.events.volume("destroy", volume.name)
        return deleted, doomed

    def usage(self) -> list[dict[str, Any]]:
        """Every volume with its size in bytes and how many containers mount it
        (``system df``); walks every volume: run it in a worker thread."""
        users = self.users()
        return [v.to_dict(size=trees.disk_usage(v.mountpoint) if not v.capped
                          else os.stat(v.mountpoint).st_blocks * 512,
                          ref_count=len(users.get(v.name, ()))) for v in self.list()]

    def cleanup(self) -> None:
        """At start-up: what a crash left half made or half removed."""
        for entry in os.listdir(self.dir):
            if entry.startswith("."):
                trees.remove(self.dir / entry)

    # ------------------------------------------------------------ first use

    def populate(self, name: str, lowerdirs: Sequence[str], path: str) -> None:
        """Docker's copy of an image's content at the mount point into a volume that is
        empty when a container first mounts it: ``lowerdirs`` are the image's layers,
        top first, merged as overlayfs would (whiteouts and opaque directories).
        Only for a volume no container mounts (the caller checks): nothing else may
        write in it while root copies (a symlink swapped in would redirect the copy)."""
        data = Path(self.path(name))
        if self.get(name).capped or any(data.iterdir()):
            return
        parts = [p for p in path.split("/") if p]
        for layer in reversed(lowerdirs):
            here, live = Path(layer), True
            for i, part in enumerate(parts):
                here = here / part
                try:
                    st = os.lstat(here)
                except (FileNotFoundError, NotADirectoryError):
                    live = False
                    break
                if _whiteout(st):          # the path (or a parent) deleted by this layer
                    _empty(data)
                    live = False
                    break
                if not stat.S_ISDIR(st.st_mode):
                    live = False           # a file or a symlink: nothing to copy (safely)
                    break
                if _opaque(here):
                    _empty(data)
            if live:
                _merge(here, data)


# ---------------------------------------------------------------- helpers

def volume_names(record_doc: Any) -> list[str]:
    """The volumes a stored container record (``ContainerRecord.to_dict()``) mounts. A
    volatile row's doc is the record itself, and such a container mounts no volume."""
    if not isinstance(record_doc, Mapping):
        return []
    mounts = ((record_doc.get("config") or {}).get("host") or {}).get("mounts") or ()
    return [m.get("source", "") for m in mounts
            if isinstance(m, Mapping) and m.get("type") == "volume" and m.get("source")]


def _check_filters(filters: Mapping[str, Sequence[str]], keys: Sequence[str]) -> None:
    unknown = [k for k in filters if k not in keys]
    if unknown:
        raise InvalidArgument(f"filters: invalid filter {', '.join(map(repr, unknown))} "
                              f"(known: {', '.join(keys)})")
    for value in filters.get("dangling", ()):
        _boolean(value, "filters.dangling")


def _boolean(value: str, where: str) -> bool:
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise InvalidArgument(f"{where}: {value!r} is not true or false")


def _matches(v: Volume, filters: Mapping[str, Sequence[str]],
             users: Mapping[str, list[str]]) -> bool:
    checks = {
        "name": lambda x: re.search(x, v.name) is not None,
        "driver": lambda x: x == VOLUME_DRIVER,
        "label": lambda x: label_matches(v.labels, x),
        "dangling": lambda x: (not users.get(v.name)) == _boolean(x, "filters.dangling"),
    }
    for key, values in filters.items():
        if key == "label!":            # left out when all of them match (moby's)
            if all(label_matches(v.labels, x) for x in values):
                return False
        elif not key_matches(key, values, checks[key]):
            return False
    return True


def _whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def _empty(directory: Path) -> None:
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _merge(src: Path, dst: Path) -> None:
    """One layer's directory ``src`` over ``dst``: its whiteouts delete, its opaque
    directories replace, everything else is copied with owner, mode and times."""
    shutil.copystat(src, dst, follow_symlinks=False)
    _chown(src, dst)
    for entry in os.scandir(src):
        target = dst / entry.name
        st = entry.stat(follow_symlinks=False)
        if _whiteout(st) or (entry.is_dir(follow_symlinks=False) and _opaque(Path(entry.path))):
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif os.path.lexists(target):
                target.unlink()
            if _whiteout(st):
                continue
        if entry.is_dir(follow_symlinks=False):
            # Never through a symlink an earlier layer left here (it may point anywhere).
            if os.path.lexists(target) and not stat.S_ISDIR(os.lstat(target).st_mode):
                target.unlink()
            target.mkdir(exist_ok=True)
            _merge(Path(entry.path), target)
            continue
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif os.path.lexists(target):
            target.unlink()
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(entry.path), target)
        elif stat.S_ISREG(st.st_mode):
            shutil.copy2(entry.path, target, follow_symlinks=False)
        else:
            continue                      # devices, fifos, sockets: not a volume's business
        _chown(Path(entry.path), target)


def _chown(src: Path, dst: Path) -> None:
    st = os.lstat(src)
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))


def _rfc3339(ts: float) -> str:
    """Docker's CreatedAt of a volume: RFC 3339 in UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
