"""The daemon's persistent state: sqlite metadata and a content-addressed blob store.

Layout under the daemon's root directory::

    root/
      meta.db             Store: sqlite, WAL mode (meta.db-wal, meta.db-shm beside it)
      blobs/sha256/<hex>  ContentStore: verified blobs, named by their digest
      ingest/<random>     ContentStore: blobs being written (crash leftovers are swept)
      snapshots/...       sandboxd.snapshots.Snapshotter (its rows live in meta.db)

Every change goes through :meth:`Store.transaction`, so a crash leaves either the old or
the new state, never half of one. Files are written beside their final name and renamed
into place after their metadata is recorded (or, for blobs, after their digest checks).

The store is used from the daemon's asyncio thread; a lock serialises access anyway, so a
blocking job moved to a worker thread (a layer unpack) may call it safely too.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, NoReturn

from .errors import Conflict, InvalidArgument, NotFound, Unavailable
from .reference import normalize_ref

# The schema, as it stands after every migration below (containerd's buckets.go idea:
# draw it where it is defined). ``PRAGMA user_version`` holds the schema version.
#
#   containers                       one row per container, running or not
#     id        TEXT PK              64 hex digits
#     name      TEXT UNIQUE          without Docker's leading '/'
#     state     TEXT                 owned by the container service (created, running ...)
#     image_id  TEXT                 sha256:<config digest>; no foreign key: `rmi -f` may
#                                    delete an image a stopped container still names
#     created   REAL                 unix time
#     session   TEXT NULL            client session that owns it (removed with it)
#     doc       TEXT                 JSON: everything else (spec, exit code, network ...)
#
#   images                           one row per image config
#     id        TEXT PK              sha256:<config digest>
#     created   REAL
#     size      INTEGER              sum of the uncompressed layer sizes
#     doc       TEXT                 JSON: manifest/config digests, layers, chain ids, config
#
#   tags                             name:tag -> image; deleting an image drops its tags
#     ref       TEXT PK              normalised, e.g. busybox:latest
#     image_id  TEXT -> images.id ON DELETE CASCADE
#
#   snapshots                        sandboxd.snapshots; dirs are snapshots/<id>/{fs,work}
#     id        INTEGER PK AUTOINCREMENT   short directory name (never reused)
#     key       TEXT UNIQUE          chain id (committed) or a caller's key (active, view)
#     parent    TEXT NULL -> snapshots.key  (a parent with children cannot be deleted)
#     kind      TEXT                 active | view | committed
#     created   REAL
#     labels    TEXT                 JSON object of str -> str
#     size      INTEGER NULL         bytes, recorded at commit
#     inodes    INTEGER NULL         inodes, recorded at commit
SCHEMA_VERSION = 2

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1
    (
        """CREATE TABLE containers (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            image_id TEXT NOT NULL,
            created REAL NOT NULL,
            session TEXT,
            doc TEXT NOT NULL)""",
        "CREATE INDEX containers_image ON containers(image_id)",
        "CREATE INDEX containers_session ON containers(session)",
        """CREATE TABLE images (
            id TEXT PRIMARY KEY,
            created REAL NOT NULL,
            size INTEGER NOT NULL,
            doc TEXT NOT NULL)""",
        """CREATE TABLE tags (
            ref TEXT PRIMARY KEY,
            image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE)""",
        "CREATE INDEX tags_image ON tags(image_id)",
        """CREATE TABLE snapshots (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            key TEXT NOT NULL UNIQUE,
            parent TEXT REFERENCES snapshots(key),
            kind TEXT NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
            created REAL NOT NULL,
            labels TEXT NOT NULL DEFAULT '{}',
            size INTEGER,
            inodes INTEGER)""",
        "CREATE INDEX snapshots_parent ON snapshots(parent)",
    ),
    # 1 -> 2: network addresses moved to memory (sandboxd/ipam.py says why).
    (
        "DROP TABLE IF EXISTS ip_allocations",
        "DROP TABLE IF EXISTS ip_cursor",
    ),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

_CONTAINER_FIELDS = ("name", "state", "image_id", "session", "doc")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX = re.compile(r"^[0-9a-f]+$")


class Store:
    """Metadata in ``root/meta.db``.

    Lookups return plain dicts (``doc`` already parsed from JSON) or ``None``; changes
    raise ``NotFound`` for a missing object and ``Conflict`` for a taken id or name.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "meta.db"
        # Only root reads the metadata (registry credentials live in it). sqlite makes
        # meta.db-wal and -shm with the database file's mode, so 0600 here covers all
        # three; an older root's 0644 file is narrowed.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        for name in ("meta.db", "meta.db-wal", "meta.db-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(self.root / name, 0o600)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (see transaction()).
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._depth = 0
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise Unavailable(f"{self.path}: sqlite refused WAL mode (got {mode}); put the "
                              f"daemon root on a local filesystem")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._migrate()
        # Rows of containers no daemon start would find (put_container's ``volatile``),
        # by id and by name: the same lookups and conflicts as the table's rows.
        self._volatile: dict[str, dict[str, Any]] = {}
        self._volatile_names: dict[str, str] = {}
        # The names and ids of the table's rows, for the checks of every create (a
        # generated name, a volatile row's id and name) without a query each: read
        # once, kept by every write of a row (this store is meta.db's only writer),
        # forgotten by a rolled-back transaction (read again when next needed).
        self._names: _Names | None = None
        # image_id's answers (ref -> id), read outside transactions only; every write
        # of images or tags, and a rolled-back transaction, forgets them all.
        self._image_ids: dict[str, str] = {}

    # ------------------------------------------------------------ plumbing

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise Unavailable(f"{self.path}: schema version {version} is newer than this "
                              f"sandboxd understands ({SCHEMA_VERSION}); upgrade sandboxd")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction() as db:
                for statement in _MIGRATIONS[target - 1]:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={target}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All statements inside commit together or not at all; nests (savepoints).

        Yields the connection for the caller's own statements (the snapshotter's).
        """
        with self._lock:
            depth = self._depth
            self._db.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT sp{depth}")
            self._depth += 1
            try:
                yield self._db
            except BaseException:
                self._depth = depth
                self._image_ids.clear()
                self._names = None
                if depth == 0:
                    self._db.execute("ROLLBACK")
                else:
                    self._db.execute(f"ROLLBACK TO sp{depth}")
                    self._db.execute(f"RELEASE sp{depth}")
                raise
            self._depth = depth
            self._db.execute("COMMIT" if depth == 0 else f"RELEASE sp{depth}")

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Read-only statement under the store's lock."""
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def journal_mode(self) -> str:
        return self.query("PRAGMA journal_mode")[0][0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------ containers

    def put_container(self, id: str, name: str, state: str, image_id: str,
                      session: str | None, doc: Any,
                      volatile: bool = False) -> dict[str, Any]:
        """Record a new container; ``Conflict`` when the id or the name is taken.

        ``volatile``: kept in memory only, for a row the next daemon start would forget
        anyway (a ``--rm`` container without volumes: ``ContainerService.startup``). It
        is found, listed, renamed, named in conflicts and deleted as a stored row, and
        costs no statement, JSON or commit (~0.3 ms of each ``--rm`` run). Its ``doc``
        (also a later ``save_container``'s) is kept as given, not serialized: the
        container service keeps its record object there."""
        name = name.lstrip("/")
        created = time.time()
        with self._lock:
            taken = self._volatile_taken(id, name)
            if taken is not None:
                _refuse(id, name, taken["id"])
            if volatile:
                names = self._stored()
                if id in names.by_id or name in names.by_name:
                    _refuse(id, name, id if id in names.by_id else names.by_name[name])
                row = {"id": id, "name": name, "state": state, "image_id": image_id,
                       "created": created, "session": session, "doc": doc}
                self._volatile[id] = row
                self._volatile_names[name] = id
                return row
            dumped = _dump(doc)
            with self.transaction() as db:
                try:
                    db.execute("INSERT INTO containers (id, name, state, image_id, "
                               "created, session, doc) VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (id, name, state, image_id, created, session, dumped))
                except sqlite3.IntegrityError:  # the id or the name is taken: say which
                    row = db.execute("SELECT id FROM containers WHERE id = ? OR name = ?",
                                     (id, name)).fetchone()
                    if row is None:
                        raise
                    _refuse(id, name, row["id"])
                if self._names is not None:
                    self._names.set(id, name)
        # What get_container would read back, without the query.
        return {"id": id, "name": name, "state": state, "image_id": image_id,
                "created": created, "session": session, "doc": json.loads(dumped)}

    def _stored(self) -> _Names:
        """The names and ids of the containers table's rows (see ``__init__``)."""
        if self._names is None:
            self._names = _Names(self._db.execute("SELECT id, name FROM containers"))
        return self._names

    def _volatile_taken(self, id: str, name: str) -> dict[str, Any] | None:
        """The volatile row that has this id or this name (another container's)."""
        row = self._volatile.get(id)
        if row is None and name in self._volatile_names:
            row = self._volatile[self._volatile_names[name]]
        return row

    def update_container(self, id: str, **fields: Any) -> dict[str, Any]:
        """Change some of ``name``, ``state``, ``image_id``, ``session``, ``doc`` (the whole
        doc is replaced) of the container with this exact id."""
        unknown = sorted(set(fields) - set(_CONTAINER_FIELDS))
        if unknown:
            raise InvalidArgument(f"update_container: unknown field(s) {', '.join(unknown)} "
                                  f"(known: {', '.join(_CONTAINER_FIELDS)})")
        dumped = _dump(fields["doc"]) if "doc" in fields else None     # checks it, too
        if "name" in fields:
            fields["name"] = fields["name"].lstrip("/")
        with self._lock:
            if id in self._volatile:
                self._change_volatile(id, fields)
                return self.get_container(id)  # type: ignore[return-value]
            if "name" in fields:
                taken = self._volatile_taken("", fields["name"])
                if taken is not None:
                    raise _name_taken(fields["name"], taken["id"])
        if dumped is not None:
            fields["doc"] = dumped
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM containers WHERE id = ?", (id,)).fetchone() is None:
                raise NotFound(f"no such container: {id}")
            if "name" in fields:
                row = db.execute("SELECT id FROM containers WHERE name = ? AND id != ?",
                                 (fields["name"], id)).fetchone()
                if row is not None:
                    raise _name_taken(fields["name"], row["id"])
            if fields:
                assignments = ", ".join(f"{k} = ?" for k in fields)
                db.execute(f"UPDATE containers SET {assignments} WHERE id = ?",
                           (*fields.values(), id))
            if "name" in fields and self._names is not None:
                self._names.set(id, fields["name"])
        return self.get_container(id)  # type: ignore[return-value]

    def save_container(self, id: str, name: str, state: str, doc: Any) -> None:
        """Replace the name, state and doc of the container with this exact id: the
        container service's write on every transition (one statement, nothing read
        back). ``NotFound``, or ``Conflict`` when another container has the name."""
        name = name.lstrip("/")
        with self._lock:
            if id in self._volatile:
                self._change_volatile(id, {"name": name, "state": state, "doc": doc})
                return
            taken = self._volatile_taken("", name)
            if taken is not None:
                raise _name_taken(name, taken["id"])
        if type(doc) is not dict:     # a volatile row's record object: that row is gone
            raise NotFound(f"no such container: {id}")
        dumped = _dump(doc)
        with self.transaction() as db:
            try:
                updated = db.execute("UPDATE containers SET name = ?, state = ?, doc = ? "
                                     "WHERE id = ?", (name, state, dumped, id)).rowcount
            except sqlite3.IntegrityError:
                row = db.execute("SELECT id FROM containers WHERE name = ?",
                                 (name,)).fetchone()
                raise _name_taken(name, row["id"] if row else "another container") from None
            if updated == 0:
                raise NotFound(f"no such container: {id}")
            if self._names is not None:
                self._names.set(id, name)

    def _change_volatile(self, id: str, fields: dict[str, Any]) -> None:
        """Apply ``fields`` (doc as a dict) to a volatile row, refusing a taken name."""
        row = self._volatile[id]
        name = fields.get("name", row["name"])
        if name != row["name"]:
            taken = self._volatile_taken("", name)
            if taken is not None:
                raise _name_taken(name, taken["id"])
            holder = self._stored().by_name.get(name)
            if holder is not None:
                raise _name_taken(name, holder)
            del self._volatile_names[row["name"]]
            self._volatile_names[name] = id
        self._volatile[id] = dict(row, **fields)

    def get_container(self, ref: str) -> dict[str, Any] | None:
        """Docker's resolution order: full id, exact name (a leading '/' is ignored), then a
        unique id prefix. ``None`` when nothing matches; an ambiguous prefix raises
        ``InvalidArgument`` (the caller must give more digits), as Docker's
        "multiple IDs found with provided prefix"."""
        if not ref:
            raise InvalidArgument("container: an empty id or name was given")
        name = ref.lstrip("/")
        with self._lock:
            found = self._volatile.get(ref)
            if found is not None:
                return found
            row = self._db.execute("SELECT * FROM containers WHERE id = ?", (ref,)).fetchone()
            if row is None and name in self._volatile_names:
                return self._volatile[self._volatile_names[name]]
            if row is None:
                row = self._db.execute("SELECT * FROM containers WHERE name = ?",
                                       (name,)).fetchone()
            if row is None and _HEX.match(ref):
                rows = [_container(r) for r in self._db.execute(
                    "SELECT * FROM containers WHERE substr(id, 1, ?) = ? LIMIT 2",
                    (len(ref), ref)).fetchall()]
                rows += [v for k, v in self._volatile.items() if k.startswith(ref)][:2]
                if len(rows) > 1:
                    raise InvalidArgument(f"multiple container IDs found with provided prefix "
                                          f"{ref!r}; give more digits or the name")
                return rows[0] if rows else None
        return _container(row) if row is not None else None

    def name_taken(self, name: str) -> bool:
        """Whether a container (stored or volatile) has this exact name: no query, not
        get_container's resolution (a generated name on every start)."""
        with self._lock:
            return name in self._volatile_names or name in self._stored().by_name

    def list_containers(self) -> list[dict[str, Any]]:
        """All containers, oldest first."""
        with self._lock:
            rows = [_container(r) for r in self._db.execute(
                "SELECT * FROM containers ORDER BY created, id")]
            volatile = list(self._volatile.values())
        if volatile:
            rows = sorted(rows + volatile, key=lambda r: (r["created"], r["id"]))
        return rows

    def containers_using_image(self, image_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = [_container(r) for r in self._db.execute(
                "SELECT * FROM containers WHERE image_id = ? ORDER BY created", (image_id,))]
            rows += [r for r in self._volatile.values() if r["image_id"] == image_id]
        return sorted(rows, key=lambda r: r["created"])

    def delete_container(self, id: str) -> None:
        with self._lock:
            row = self._volatile.pop(id, None)
            if row is not None:
                del self._volatile_names[row["name"]]
                return
        with self.transaction() as db:
            if db.execute("DELETE FROM containers WHERE id = ?", (id,)).rowcount == 0:
                raise NotFound(f"no such container: {id}")
            if self._names is not None:
                self._names.drop(id)

    # ------------------------------------------------------------ images and tags

    def put_image(self, id: str, doc: dict[str, Any], size: int,
                  created: float | None = None) -> dict[str, Any]:
        """Record an image (id ``sha256:<64 hex>``); ``Conflict`` when it exists."""
        _check_digest(id, "image id")
        with self.transaction() as db:
            self._image_ids.clear()      # a new id can make a prefix ambiguous
            if db.execute("SELECT 1 FROM images WHERE id = ?", (id,)).fetchone() is not None:
                raise Conflict(f"image {id} already exists")
            db.execute("INSERT INTO images (id, created, size, doc) VALUES (?, ?, ?, ?)",
                       (id, time.time() if created is None else created, size, _dump(doc)))
        return self.get_image(id)  # type: ignore[return-value]

    def get_image(self, ref: str) -> dict[str, Any] | None:
        """By full id (``sha256:<hex>`` or bare hex), by tag (``busybox`` means
        ``busybox:latest``), then by unique id prefix (with or without ``sha256:``).
        ``None`` when nothing matches; an ambiguous prefix raises ``InvalidArgument``."""
        with self._lock:
            row = self._image_row(ref, "*")
            return self._image(row) if row is not None else None

    def image_id(self, ref: str) -> str | None:
        """The id :meth:`get_image` would return, without reading the image's doc (a
        start asks it for the same ref again and again: the answer is kept)."""
        with self._lock:
            found = self._image_ids.get(ref)
            if found is None:
                row = self._image_row(ref, "images.id")
                if row is None:
                    return None
                found = row["id"]
                if self._depth == 0:
                    self._image_ids[ref] = found
        return found

    def _image_row(self, ref: str, columns: str) -> sqlite3.Row | None:
        if not ref:
            raise InvalidArgument("image: an empty reference was given")
        hex_part = ref[len("sha256:"):] if ref.startswith("sha256:") else ref
        if _HEX64.match(hex_part):
            return self._db.execute(f"SELECT {columns} FROM images WHERE id = ?",
                                    ("sha256:" + hex_part,)).fetchone()
        row = None
        if not ref.startswith("sha256:"):
            try:
                tag = normalize_ref(ref)
            except InvalidArgument:
                tag = None
            if tag is not None:
                row = self._db.execute(
                    f"SELECT {columns.replace('*', 'images.*')} FROM tags JOIN images ON "
                    f"images.id = tags.image_id WHERE tags.ref = ?", (tag,)).fetchone()
        if row is None and _HEX.match(hex_part):
            prefix = "sha256:" + hex_part
            rows = self._db.execute(
                f"SELECT {columns} FROM images WHERE substr(id, 1, ?) = ? LIMIT 2",
                (len(prefix), prefix)).fetchall()
            if len(rows) > 1:
                raise InvalidArgument(f"multiple image IDs found with provided prefix "
                                      f"{ref!r}; give more digits or a tag")
            row = rows[0] if rows else None
        return row

    def update_image(self, id: str, doc: dict[str, Any]) -> None:
        """Replace the doc of the image with this exact id (new repo digests ...)."""
        with self.transaction() as db:
            if db.execute("UPDATE images SET doc = ? WHERE id = ?",
                          (_dump(doc), id)).rowcount == 0:
                raise NotFound(f"no such image: {id}")

    def list_images(self) -> list[dict[str, Any]]:
        """All images, newest first (``docker images`` order)."""
        with self._lock:
            return [self._image(r) for r in self._db.execute(
                "SELECT * FROM images ORDER BY created DESC, id").fetchall()]

    def tag(self, ref: str, image_id: str) -> str:
        """Point ``ref`` at an image (moving it from any other); returns the normalised ref."""
        ref = normalize_ref(ref)
        with self.transaction() as db:
            self._image_ids.clear()      # under the lock: no reader caches the old answer
            if db.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone() is None:
                raise NotFound(f"no such image: {image_id}")
            db.execute("INSERT INTO tags (ref, image_id) VALUES (?, ?) ON CONFLICT(ref) "
                       "DO UPDATE SET image_id = excluded.image_id", (ref, image_id))
        return ref

    def untag(self, ref: str) -> str:
        """Remove a tag; returns the image id it pointed at."""
        ref = normalize_ref(ref)
        with self.transaction() as db:
            self._image_ids.clear()      # under the lock: no reader caches the old answer
            row = db.execute("SELECT image_id FROM tags WHERE ref = ?", (ref,)).fetchone()
            if row is None:
                raise NotFound(f"no such tag: {ref}")
            db.execute("DELETE FROM tags WHERE ref = ?", (ref,))
        return row["image_id"]

    def delete_image(self, id: str) -> None:
        """Delete an image record and its tags (files are the image service's business)."""
        with self.transaction() as db:
            self._image_ids.clear()      # under the lock: no reader caches the old answer
            if db.execute("DELETE FROM images WHERE id = ?", (id,)).rowcount == 0:
                raise NotFound(f"no such image: {id}")

    def _image(self, row: sqlite3.Row) -> dict[str, Any]:
        tags = [r[0] for r in self._db.execute(
            "SELECT ref FROM tags WHERE image_id = ? ORDER BY ref", (row["id"],))]
        return {"id": row["id"], "created": row["created"], "size": row["size"],
                "tags": tags, "doc": json.loads(row["doc"])}


class _Names:
    """The containers table's names and ids, both ways (``Store._stored``)."""

    def __init__(self, rows: Iterable[tuple[str, str]]):
        self.by_id: dict[str, str] = {}
        self.by_name: dict[str, str] = {}
        for id, name in rows:
            self.set(id, name)

    def set(self, id: str, name: str) -> None:
        """A row written with this name (new, renamed or unchanged)."""
        old = self.by_id.get(id)
        if old is not None:
            del self.by_name[old]
        self.by_id[id] = name
        self.by_name[name] = id

    def drop(self, id: str) -> None:
        name = self.by_id.pop(id, None)
        if name is not None:
            del self.by_name[name]


def _refuse(id: str, name: str, holder: str) -> NoReturn:
    """The Conflict of a new container whose id or name ``holder`` has."""
    if holder == id:
        raise Conflict(f"container id {id} is already in use")
    raise _name_taken(name, holder, "; remove or rename that container first")


def _name_taken(name: str, holder: str, advice: str = "") -> Conflict:
    return Conflict(f'the container name "{name}" is already in use by container '
                    f'{holder}{advice}')


def _container(row: sqlite3.Row) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "state": row["state"],
            "image_id": row["image_id"], "created": row["created"],
            "session": row["session"], "doc": json.loads(row["doc"])}


def _dump(doc: dict[str, Any]) -> str:
    if not isinstance(doc, dict):
        raise InvalidArgument(f"doc: expected a dict, got {type(doc).__name__}")
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def _check_digest(digest: str, what: str = "digest") -> str:
    """``sha256:<64 lowercase hex>`` or ``InvalidArgument`` (also keeps paths safe)."""
    if not isinstance(digest, str) or not digest.startswith("sha256:") \
            or not _HEX64.match(digest[7:]):
        raise InvalidArgument(f"{what}: {digest!r} is not sha256:<64 lowercase hex digits>")
    return digest


# ================================================================ content store

_CHUNK = 1 << 20


class ContentStore:
    """Blobs named by their sha256 digest under ``root/blobs/sha256/<hex>``.

    ``ingest`` writes to ``root/ingest/<random>``, hashing as it goes, checks the size and
    digest, fsyncs, then renames into place: a blob that exists is always complete and
    correct. A failed check leaves nothing behind.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self._blobs = self.root / "blobs" / "sha256"
        self._ingest = self.root / "ingest"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._ingest.mkdir(parents=True, exist_ok=True)

    def ingest(self, data: bytes | BinaryIO, expected_digest: str | None = None,
               expected_size: int | None = None) -> tuple[str, int]:
        """Store bytes or everything a binary stream yields; returns ``(digest, size)``.

        ``InvalidArgument`` when the content does not match ``expected_digest`` or
        ``expected_size`` (checked as the bytes arrive for the size, so an oversized
        stream stops early).
        """
        if expected_digest is not None:
            _check_digest(expected_digest, "expected digest")
        stream: BinaryIO = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
        tmp = self._ingest / secrets.token_hex(16)
        h = hashlib.sha256()
        size = 0
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(_CHUNK):
                    size += len(chunk)
                    if expected_size is not None and size > expected_size:
                        raise InvalidArgument(f"blob is larger than the expected "
                                              f"{expected_size} bytes")
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = "sha256:" + h.hexdigest()
            if expected_size is not None and size != expected_size:
                raise InvalidArgument(f"blob has {size} bytes, expected {expected_size}")
            if expected_digest is not None and digest != expected_digest:
                raise InvalidArgument(f"blob digest mismatch: got {digest}, "
                                      f"expected {expected_digest}")
            final = self.path(digest)
            if final.exists():
                tmp.unlink()
            else:
                os.rename(tmp, final)
                _fsync_dir(self._blobs)
            return digest, size
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def path(self, digest: str) -> Path:
        return self._blobs / _check_digest(digest)[len("sha256:"):]

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"no such blob: {digest}") from None

    def read(self, digest: str) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"no such blob: {digest}") from None

    def delete(self, digest: str) -> None:
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            raise NotFound(f"no such blob: {digest}") from None

    def list(self) -> list[str]:
        return sorted("sha256:" + p.name for p in self._blobs.iterdir()
                      if _HEX64.match(p.name))

    def cleanup(self) -> list[Path]:
        """Remove ingest files left by a crash (call at start-up, before any ingest)."""
        removed = []
        for p in self._ingest.iterdir():
            p.unlink(missing_ok=True)
            removed.append(p)
        return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
