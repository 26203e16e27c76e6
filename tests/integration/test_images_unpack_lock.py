"""A layer being unpacked holds up nothing else: while an import's unpack is held back,
container roots of other images are made and released, images removed and snapshots
pruned, and the unpack's parent layer is not pruned under it; two adds of the same
layer at once end with one committed snapshot and no extract snapshot left.

The unpack is held back by wrapping ``apply_layer`` (it still runs, after the test
lets it go), on a real ImageService over a real store and snapshotter.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from harness import wait_until
from sandboxd import testing
from sandboxd.images import ImageService, oci
from sandboxd.images import service as service_module
from sandboxd.snapshots import Snapshotter
from sandboxd.store import ContentStore, Store


def _service(root: Path) -> ImageService:
    store = Store(root)
    return ImageService(store, ContentStore(root), Snapshotter(root, store))


class _HeldUnpack:
    """Wraps apply_layer: each call announces itself, then waits for ``release``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.real = service_module.apply_layer
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()
        monkeypatch.setattr(service_module, "apply_layer", self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.release()
        assert self.release.wait(60), "the test never let the unpack go"
        return self.real(*args, **kwargs)


def _in_thread(func: Any, *args: Any) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = func(*args)
        except BaseException as e:             # reported by the main thread
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def test_roots_and_removals_go_on_while_a_layer_unpacks(tmp_path, monkeypatch) -> None:
    svc = _service(tmp_path / "root")
    try:
        base = svc.import_rootfs(testing.busybox_tar(), "base")
        other = svc.import_rootfs(testing.busybox_tar(), "other", message="another id")
        held = _HeldUnpack(monkeypatch)
        # a commit-like add on top of base's layer: its unpack is held
        svc.prepare_rootfs(base, "ctr", tmpfs_upper=False)
        (svc.snapshotter.path("ctr") / "new-file").write_text("x")
        adder, result = _in_thread(svc.commit, "ctr", base, "child")
        try:
            assert held.entered.acquire(timeout=60), "the commit never unpacked"
            done: dict = {}

            def meanwhile() -> None:
                root = svc.prepare_rootfs(other, "rm-ctr", tmpfs_upper=True)
                done["lowers"] = root.lowerdirs
                svc.release_rootfs("rm-ctr")
                done["removed"] = svc.remove("other")
                done["pruned"] = svc.prune_snapshots()

            worker = threading.Thread(target=meanwhile, daemon=True)
            worker.start()
            wait_until(lambda: not worker.is_alive(), 60,
                       "roots and removals to finish while the unpack is held")
            assert done["lowers"] and done["removed"][0] == {"Untagged": "other:latest"}
            assert adder.is_alive() and not result          # still unpacking
            # the unpack's parent (base's layer) stays: the extract snapshot is its child
            assert svc.snapshotter.exists(svc.get(base)["doc"]["chain_ids"][0])
        finally:
            held.release.set()
            adder.join(120)
        assert "error" not in result, result.get("error")
        child = svc.get("child")
        assert all(svc.snapshotter.exists(c) for c in child["doc"]["chain_ids"])
        assert not [i.key for i in svc.snapshotter.walk() if i.key.startswith("extract-")]
        svc.release_rootfs("ctr")
    finally:
        svc.store.close()


def test_the_same_layer_added_twice_at_once(tmp_path, monkeypatch) -> None:
    svc = _service(tmp_path / "root")
    try:
        held = _HeldUnpack(monkeypatch)
        tar = testing.busybox_tar()
        first, r1 = _in_thread(svc.import_rootfs, tar, "one")
        second, r2 = _in_thread(svc.import_rootfs, tar, "two")
        assert held.entered.acquire(timeout=60) and held.entered.acquire(timeout=60), \
            "both imports should unpack at once (neither holds the lock meanwhile)"
        held.release.set()
        first.join(120)
        second.join(120)
        assert "error" not in r1 and "error" not in r2, (r1, r2)
        chain = oci.chain_id(None, svc.get("one")["doc"]["layers"][0]["diff_id"])
        assert svc.get("one")["doc"]["chain_ids"] == svc.get("two")["doc"]["chain_ids"] \
            == [chain]
        keys = [i.key for i in svc.snapshotter.walk()]
        assert keys == [chain]              # the slower unpack's snapshot was dropped
    finally:
        svc.store.close()
