"""A pull stuck on a slow registry holds up nothing else: container roots are made and
released and images removed while it waits, and a blob the pull is using is not
deleted under it by an ``rmi`` that finds it unused.

The registry is Debian's ``docker-registry`` on 127.0.0.1 (as in
``test_images_registry.py``), reached through :class:`StallingProxy`, which holds back
the response to one blob request until the test lets it go.
"""
from __future__ import annotations

import threading

import pytest

from harness import wait_until
from sandboxd import testing
from sandboxd.images import ImageService
from sandboxd.snapshots import Snapshotter
from sandboxd.store import ContentStore, Store
from registries import REGISTRY_BIN, StallingProxy, serve_registry

pytestmark = pytest.mark.skipif(REGISTRY_BIN is None,
                                reason="docker-registry is not installed "
                                       "(apt-get install docker-registry)")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with serve_registry(tmp_path_factory.mktemp("sbx-registry-lock") / "open") as address:
        yield address


def service(root) -> ImageService:
    store = Store(root)
    return ImageService(store, ContentStore(root), Snapshotter(root, store))


def test_removals_and_roots_go_on_while_a_pull_is_stuck(registry, tmp_path) -> None:
    tar = testing.busybox_tar()
    a = service(tmp_path / "a")
    b = service(tmp_path / "b")
    try:
        ref = f"{registry}/sbx/stuck:v1"
        pushed_id = a.import_rootfs(tar, ref, message="pushed")
        a.push(ref)
        # b has the same layer in an image of its own (another config: another id).
        local_id = b.import_rootfs(tar, "local")
        assert local_id != pushed_id
        layer = b.get(local_id)["doc"]["layers"][0]["digest"]
        assert layer == a.get(pushed_id)["doc"]["layers"][0]["digest"]
        b.prepare_rootfs(local_id, "kept", tmpfs_upper=False)

        proxy = StallingProxy(registry, pushed_id)       # the config blob: fetched first
        result: dict = {}

        def pull() -> None:
            try:
                result["id"] = b.pull(f"{proxy.address}/sbx/stuck:v1")
            except BaseException as e:                 # reported by the main thread
                result["error"] = e

        puller = threading.Thread(target=pull)
        try:
            puller.start()
            assert proxy.stalled.wait(60), "the pull never asked for the config blob"
            # While it waits: a --rm root is made and released, a container's snapshot
            # removed, and the only image using the pull's layer is removed.
            done: dict = {}

            def meanwhile() -> None:
                root = b.prepare_rootfs(local_id, "rm-container", tmpfs_upper=True)
                done["lowers"] = root.lowerdirs
                b.release_rootfs("rm-container")
                b.release_rootfs("kept")
                done["removed"] = b.remove("local")

            worker = threading.Thread(target=meanwhile, daemon=True)
            worker.start()
            wait_until(lambda: not worker.is_alive(), 60,
                       "removals to finish while the pull is stuck")
            assert done["removed"] == [{"Untagged": "local:latest"}, {"Deleted": local_id}]
            assert not b.snapshotter.exists("kept")
            assert puller.is_alive() and not result     # still stuck
            # unused now, but the pull is about to use it: kept
            assert b.content.exists(layer)
        finally:
            proxy.let_go()
            puller.join(120)
            proxy.close()
        assert "error" not in result, result.get("error")
        assert result["id"] == pushed_id
        assert b.content.exists(layer)
        assert not b.snapshotter.exists("rm-container")
        image = b.get(pushed_id)
        assert all(b.snapshotter.exists(c) for c in image["doc"]["chain_ids"])
        # and once no transfer needs it, a removal deletes it
        b.remove(f"{proxy.address}/sbx/stuck:v1")
        assert not b.content.exists(layer)
    finally:
        a.store.close()
        b.store.close()
