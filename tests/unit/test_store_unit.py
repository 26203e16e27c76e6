"""Store (sqlite metadata) and ContentStore (verified blobs), on a tmp dir, no root."""
from __future__ import annotations

import hashlib
import io
import sqlite3
import threading

import pytest

from sandboxd.errors import Conflict, InvalidArgument, NotFound, Unavailable
from sandboxd.reference import normalize_ref, split_ref
from sandboxd.store import SCHEMA_VERSION, ContentStore, Store

A = "a" * 64
AB = "ab" + "1" * 62
AC = "ac" + "2" * 62
AD = "ad" + "3" * 62


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "root")
    yield s
    s.close()


# ---------------------------------------------------------------- database setup

def test_wal_foreign_keys_and_schema_version(store, tmp_path):
    assert store.journal_mode() == "wal"
    assert store.query("PRAGMA foreign_keys")[0][0] == 1
    assert store.query("PRAGMA synchronous")[0][0] == 1          # NORMAL
    assert store.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION
    tables = {r[0] for r in store.query("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"containers", "images", "tags", "snapshots"} <= tables
    assert (tmp_path / "root" / "meta.db").is_file()


def test_reopen_keeps_data_and_does_not_migrate_again(tmp_path):
    s = Store(tmp_path)
    s.put_container(A, "keep", "created", "sha256:" + "0" * 64, None, {"x": 1})
    s.close()
    s = Store(tmp_path)
    assert s.get_container("keep")["doc"] == {"x": 1}
    s.close()


def test_upgrade_drops_the_old_address_tables(tmp_path):
    """A root from before addresses moved to memory loses their tables, keeps the rest."""
    s = Store(tmp_path)
    s.put_container(A, "keep", "created", "sha256:" + "0" * 64, None, {"x": 1})
    s.close()
    db = sqlite3.connect(tmp_path / "meta.db")
    db.execute("CREATE TABLE ip_allocations (network TEXT, address TEXT, owner TEXT, "
               "created REAL, PRIMARY KEY (network, address))")
    db.execute("CREATE TABLE ip_cursor (network TEXT PRIMARY KEY, last TEXT)")
    db.execute("INSERT INTO ip_allocations VALUES ('n', '10.0.0.2', 'c', 0)")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    s = Store(tmp_path)
    try:
        tables = {r[0] for r in s.query("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "ip_allocations" not in tables and "ip_cursor" not in tables
        assert s.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION
        assert s.get_container("keep")["doc"] == {"x": 1}
    finally:
        s.close()


def test_newer_schema_is_refused(tmp_path):
    s = Store(tmp_path)
    s.close()
    db = sqlite3.connect(tmp_path / "meta.db")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(Unavailable, match="newer"):
        Store(tmp_path)


# ---------------------------------------------------------------- containers

def test_container_crud(store):
    image = "sha256:" + "f" * 64
    c = store.put_container(A, "/web", "created", image, "sess1", {"cmd": ["sh"]})
    assert c["name"] == "web" and c["state"] == "created" and c["session"] == "sess1"
    assert c["doc"] == {"cmd": ["sh"]} and c["created"] > 0
    c = store.update_container(A, state="running", doc={"cmd": ["sh"], "pid": 7})
    assert c["state"] == "running" and c["doc"]["pid"] == 7
    assert [x["id"] for x in store.list_containers()] == [A]
    assert [x["id"] for x in store.containers_using_image(image)] == [A]
    store.delete_container(A)
    assert store.get_container(A) is None
    assert store.list_containers() == []
    with pytest.raises(NotFound):
        store.delete_container(A)
    with pytest.raises(NotFound):
        store.update_container(A, state="exited")


def test_container_conflicts_and_bad_fields(store):
    store.put_container(AB, "one", "created", "img", None, {})
    with pytest.raises(Conflict, match="already in use"):
        store.put_container(AC, "one", "created", "img", None, {})
    with pytest.raises(Conflict, match="id"):
        store.put_container(AB, "two", "created", "img", None, {})
    store.put_container(AC, "two", "created", "img", None, {})
    with pytest.raises(Conflict, match="already in use"):
        store.update_container(AC, name="one")
    with pytest.raises(InvalidArgument, match="colour"):
        store.update_container(AC, colour="red")
    with pytest.raises(InvalidArgument):
        store.put_container("b" * 64, "three", "created", "img", None, ["not", "a", "dict"])
    assert len(store.list_containers()) == 2


def test_container_resolution_order(store):
    store.put_container(AB, "web", "created", "img", None, {})
    store.put_container(AC, "ab", "created", "img", None, {})   # a name that is also a prefix
    assert store.get_container(AB)["id"] == AB                  # full id
    assert store.get_container("web")["id"] == AB               # name
    assert store.get_container("/web")["id"] == AB              # Docker's leading slash
    assert store.get_container("ab")["id"] == AC                # name wins over prefix
    assert store.get_container("ab1")["id"] == AB               # unique prefix
    assert store.get_container("ac2")["id"] == AC
    with pytest.raises(InvalidArgument, match="multiple"):
        store.get_container("a")                                # ambiguous prefix
    assert store.get_container("ad") is None
    assert store.get_container("nope") is None
    with pytest.raises(InvalidArgument):
        store.get_container("")


# ---------------------------------------------------------------- transactions

def test_transaction_rolls_back_everything(store):
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.put_container(AB, "x", "created", "img", None, {})
            store.put_container(AC, "y", "created", "img", None, {})
            raise RuntimeError("boom")
    assert store.list_containers() == []


def test_nested_transaction_rolls_back_inner_only(store):
    with store.transaction():
        store.put_container(AB, "outer", "created", "img", None, {})
        with pytest.raises(Conflict):
            with store.transaction():
                store.put_container(AC, "inner", "created", "img", None, {})
                store.put_container(AC, "again", "created", "img", None, {})
    assert [c["name"] for c in store.list_containers()] == ["outer"]


def test_a_failed_write_leaves_the_store_usable(store):
    store.put_container(AB, "x", "created", "img", None, {})
    with pytest.raises(Conflict):
        store.put_container(AB, "x", "created", "img", None, {})
    store.put_container(AC, "z", "created", "img", None, {})
    assert {c["name"] for c in store.list_containers()} == {"x", "z"}


def test_store_is_safe_from_a_worker_thread(store):
    errors = []

    def work(n):
        try:
            for i in range(50):
                store.put_container(f"{n:02x}{i:062x}", f"t{n}-{i}", "created", "img", None, {})
        except Exception as e:        # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.list_containers()) == 200


# ---------------------------------------------------------------- images and tags

def test_image_crud_tags_and_resolution(store):
    one = "sha256:" + AB
    two = "sha256:" + AC
    store.put_image(one, {"layers": []}, 100, created=1.0)
    store.put_image(two, {"layers": []}, 200, created=2.0)
    with pytest.raises(Conflict):
        store.put_image(one, {}, 1)
    with pytest.raises(InvalidArgument):
        store.put_image("sha256:xyz", {}, 1)
    assert store.tag("busybox", one) == "busybox:latest"
    store.tag("busybox:1.36", one)
    store.tag("localhost:5000/team/app:v2", two)
    assert store.get_image("busybox")["id"] == one               # implicit :latest
    assert store.get_image("busybox:latest")["tags"] == ["busybox:1.36", "busybox:latest"]
    assert store.get_image("localhost:5000/team/app:v2")["id"] == two
    assert store.get_image(one)["size"] == 100                     # full id
    assert store.get_image(AB)["id"] == one                        # bare hex
    assert store.get_image("ab1")["id"] == one                     # prefix
    assert store.get_image("sha256:ac2")["id"] == two
    with pytest.raises(InvalidArgument, match="multiple"):
        store.get_image("a")
    assert store.get_image("busybox:2") is None
    assert store.get_image("sha256:" + "9" * 64) is None
    assert [i["id"] for i in store.list_images()] == [two, one]    # newest first
    # a tag moves
    store.tag("busybox", two)
    assert store.get_image("busybox")["id"] == two
    assert store.untag("busybox") == two
    with pytest.raises(NotFound):
        store.untag("busybox")
    with pytest.raises(NotFound):
        store.tag("x", "sha256:" + "9" * 64)
    # deleting an image drops its tags (foreign key cascade)
    store.delete_image(one)
    assert store.get_image("busybox:1.36") is None
    assert store.query("SELECT COUNT(*) FROM tags WHERE image_id = ?", (one,))[0][0] == 0
    with pytest.raises(NotFound):
        store.delete_image(one)


def test_image_id_follows_tags_deletes_and_rolled_back_writes(store):
    """image_id keeps its answers between writes: a moved tag, a new image that makes
    a prefix ambiguous, a deleted image and a rolled-back tag are all seen at once."""
    one, two = "sha256:" + AB, "sha256:" + AC
    store.put_image(one, {}, 1)
    store.tag("app", one)
    assert store.image_id("app") == store.image_id("app:latest") == one
    assert store.image_id("a") == one                          # the only image: unique
    store.put_image(two, {}, 1)
    with pytest.raises(InvalidArgument, match="multiple"):
        store.image_id("a")
    store.tag("app", two)
    assert store.image_id("app") == two
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.tag("app", one)
            assert store.image_id("app") == one                # inside: not kept
            raise RuntimeError("roll back")
    assert store.image_id("app") == two
    store.untag("app")
    assert store.image_id("app") is None
    store.tag("app", one)
    store.delete_image(one)
    assert store.image_id("app") is None and store.image_id(one) is None
    assert store.image_id(two) == store.get_image(two)["id"] == two


@pytest.mark.parametrize("ref,want", [
    ("busybox", "busybox:latest"),
    ("busybox:1.36", "busybox:1.36"),
    ("library/busybox", "library/busybox:latest"),
    ("localhost:5000/app", "localhost:5000/app:latest"),
    ("localhost:5000/app:v1", "localhost:5000/app:v1"),
    ("app@sha256:" + A, "app@sha256:" + A),
    ("a-b_c.d/e__f:T_1.2-x", "a-b_c.d/e__f:T_1.2-x"),
])
def test_normalize_ref(ref, want):
    assert normalize_ref(ref) == want


@pytest.mark.parametrize("ref", ["", "Busybox", "bad name", "app:", "app:-x", "app/",
                                 "app@sha256:12", "../x", "a" * 300, "app:" + "t" * 129])
def test_bad_refs(ref):
    with pytest.raises(InvalidArgument):
        split_ref(ref)


# ---------------------------------------------------------------- content store

def test_content_ingest_good(tmp_path):
    cs = ContentStore(tmp_path)
    data = b"hello layer" * 1000
    d, size = cs.ingest(data, expected_digest=digest(data), expected_size=len(data))
    assert (d, size) == (digest(data), len(data))
    assert cs.path(d) == tmp_path / "blobs" / "sha256" / d[7:]
    assert cs.exists(d) and cs.read(d) == data and cs.size(d) == len(data)
    # from a stream, without expectations; the same content twice is one blob
    assert cs.ingest(io.BytesIO(data)) == (d, len(data))
    assert cs.list() == [d]
    assert list((tmp_path / "ingest").iterdir()) == []
    cs.delete(d)
    assert not cs.exists(d) and cs.list() == []
    with pytest.raises(NotFound):
        cs.open(d)
    with pytest.raises(NotFound):
        cs.delete(d)


@pytest.mark.parametrize("kind", ["digest", "size-short", "size-long"])
def test_content_ingest_mismatch_leaves_nothing(tmp_path, kind):
    cs = ContentStore(tmp_path)
    data = b"payload" * 500
    if kind == "digest":
        args = {"expected_digest": digest(b"something else")}
    elif kind == "size-short":
        args = {"expected_size": len(data) + 1}
    else:
        args = {"expected_size": len(data) - 1}
    with pytest.raises(InvalidArgument):
        cs.ingest(io.BytesIO(data), **args)
    assert list((tmp_path / "ingest").iterdir()) == []
    assert list((tmp_path / "blobs" / "sha256").iterdir()) == []


def test_content_rejects_malformed_digests(tmp_path):
    cs = ContentStore(tmp_path)
    for bad in ("sha256:../../etc/passwd", "md5:" + "0" * 32, "sha256:" + "A" * 64, A):
        with pytest.raises(InvalidArgument):
            cs.path(bad)
        with pytest.raises(InvalidArgument):
            cs.ingest(b"x", expected_digest=bad)


def test_content_cleanup_removes_crash_leftovers(tmp_path):
    cs = ContentStore(tmp_path)
    (tmp_path / "ingest" / "half-written").write_bytes(b"partial")
    assert [p.name for p in cs.cleanup()] == ["half-written"]
    assert list((tmp_path / "ingest").iterdir()) == []


def test_save_container_replaces_name_state_and_doc(store):
    store.put_container(AB, "web", "created", "img", None, {"a": 1})
    store.put_container(AC, "db", "created", "img", None, {})
    store.save_container(AB, "/site", "running", {"a": 2})
    c = store.get_container("site")
    assert (c["id"], c["state"], c["doc"]) == (AB, "running", {"a": 2})
    with pytest.raises(Conflict):
        store.save_container(AC, "site", "running", {})
    assert store.get_container(AC)["name"] == "db"          # nothing changed
    with pytest.raises(NotFound):
        store.save_container("d" * 64, "other", "exited", {})


def test_name_checks_follow_renames_deletes_and_rollbacks(store):
    """The checks a create makes without a query (name_taken, a volatile row's
    conflicts) see every write of a stored row, and nothing of a rolled-back one."""
    store.put_container(AB, "web", "created", "img", None, {})
    assert store.name_taken("web")
    store.save_container(AB, "site", "running", {})
    assert not store.name_taken("web") and store.name_taken("site")
    store.put_container(AD, "web", "created", "img", None, {}, volatile=True)  # freed
    store.update_container(AB, name="blog")
    with pytest.raises(Conflict, match="already in use"):
        store.put_container(AC, "blog", "created", "img", None, {}, volatile=True)
    with pytest.raises(Conflict, match="container id"):
        store.put_container(AB, "other", "created", "img", None, {}, volatile=True)
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.put_container(AC, "ghost", "created", "img", None, {})
            assert store.name_taken("ghost")
            raise RuntimeError("undo")
    assert not store.name_taken("ghost") and store.get_container(AC) is None
    store.delete_container(AB)
    assert not store.name_taken("blog")
    store.put_container(AB, "blog", "created", "img", None, {}, volatile=True)


# ---------------------------------------------------------------- volatile rows (--rm)

@pytest.mark.parametrize("volatile", [(True, False), (False, True), (True, True)],
                         ids=["first-volatile", "second-volatile", "both-volatile"])
def test_volatile_rows_resolve_conflict_and_list_as_stored_ones(store, volatile):
    """A volatile row (a --rm container's, in memory only) is found by id, name and
    prefix, listed in creation order, named in conflicts with stored rows both ways,
    renamed and deleted like a stored one; nothing of it reaches meta.db."""
    first, second = volatile
    image = "sha256:" + "e" * 64
    store.put_container(AB, "web", "created", image, None, {"a": 1}, volatile=first)
    store.put_container(AC, "ab", "created", "img", "s", {}, volatile=second)
    assert store.get_container(AB)["doc"] == {"a": 1}
    assert store.get_container("/web")["id"] == AB
    assert store.name_taken("web") and store.name_taken("ab") and not store.name_taken(AB)
    assert store.get_container("ab")["id"] == AC                # name wins over prefix
    assert store.get_container("ab1")["id"] == AB               # unique prefix
    with pytest.raises(InvalidArgument, match="multiple"):
        store.get_container("a")                                # ambiguous across both
    assert [c["id"] for c in store.list_containers()] == [AB, AC]
    assert [c["id"] for c in store.containers_using_image(image)] == [AB]
    for new_id, name in ((AD, "web"), (AB, "other")):
        with pytest.raises(Conflict, match="already in use"):
            store.put_container(new_id, name, "created", "img", None, {}, volatile=first)
        with pytest.raises(Conflict, match="already in use"):
            store.put_container(new_id, name, "created", "img", None, {}, volatile=second)
    with pytest.raises(Conflict, match="already in use"):
        store.save_container(AC, "web", "running", {})
    with pytest.raises(Conflict, match="already in use"):
        store.update_container(AB, name="ab")
    store.save_container(AB, "/site", "running", {"a": 2})
    assert store.get_container("web") is None
    c = store.get_container("site")
    assert (c["id"], c["state"], c["doc"]) == (AB, "running", {"a": 2})
    updated = store.update_container(AB, state="exited", doc={"a": 3})
    assert (updated["state"], updated["doc"]) == ("exited", {"a": 3})
    with pytest.raises(InvalidArgument):
        store.update_container(AB, doc=["not", "a", "dict"])
    stored = {r[0] for r in sqlite3.connect(store.path).execute("SELECT id FROM containers")}
    assert stored == {i for i, v in ((AB, first), (AC, second)) if not v}
    store.delete_container(AB)
    store.delete_container(AC)
    assert store.list_containers() == [] and store.get_container("site") is None
    with pytest.raises(NotFound):
        store.delete_container(AB)
    store.put_container(AD, "site", "created", "img", None, {}, volatile=first)   # free again


def test_a_volatile_row_saved_after_its_deletion_is_not_found(store):
    """A --rm container's removal that fails after its row went saves its record back
    (``ContainerService._remove_exited``): the store says NotFound, as for a stored row
    that is gone, not that the record object is not a dict."""
    record = object()                    # what the container service keeps as the doc
    store.put_container(AB, "web", "created", "img", None, record, volatile=True)
    store.save_container(AB, "web", "exited", record)
    assert store.get_container(AB)["doc"] is record
    store.delete_container(AB)
    with pytest.raises(NotFound):
        store.save_container(AB, "web", "exited", record)
    with pytest.raises(NotFound):
        store.save_container(AB, "web", "exited", {"a": 1})
