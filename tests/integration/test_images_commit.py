"""``sbx commit``: a container's writable layer becomes a new image layer, with its
deletions (overlay whiteouts -> ``.wh.<name>``) and replaced directories (opaque ->
``.wh..wh..opq``); the new image runs, shows its history, and survives save -> load
into another daemon with the same id. ``sbx diff`` lists the same layer's changes.
Real daemons (``conftest.Daemon``), the real CLI.
"""
from __future__ import annotations

import io
import json
import tarfile

import pytest

from harness import Daemon

IMAGE = "sbx-commit-test"
# Adds a file, deletes one of the image's, replaces a directory of the image's.
CHANGES = ("echo committed > /new.txt && rm /bin/ls && rm -rf /var && "
           "mkdir /var && echo only > /var/only")
CHECK = ("cat /new.txt; test -e /bin/ls || echo ls-gone; ls /var; "
         "test -x /bin/cat && echo cat-kept")
EXPECTED = "committed\nls-gone\nonly\ncat-kept\n"


@pytest.fixture
def changed(daemon: Daemon):
    """A stopped container of busybox that made CHANGES; yields its name."""
    name = "sbx-commit-src"
    daemon.sbx("rm", "-f", name)
    daemon.sbx("run", "--name", name, "busybox", "sh", "-c", CHANGES, check=True)
    try:
        yield name
    finally:
        daemon.sbx("rm", "-f", name)


def test_commit_run_history_and_save_load(daemon: Daemon, changed: str, tmp_path) -> None:
    ref = f"{IMAGE}:v1"
    out = daemon.sbx("commit", "-m", "my changes", changed, ref, check=True).out
    image_id = out.strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71, out
    try:
        doc = json.loads(daemon.sbx("image", "inspect", ref, check=True).out)[0]
        base = json.loads(daemon.sbx("image", "inspect", "busybox", check=True).out)[0]
        assert doc["Id"] == image_id and doc["RepoTags"] == [f"{IMAGE}:v1"]
        assert doc["RootFS"]["Layers"][:-1] == base["RootFS"]["Layers"]
        assert len(doc["RootFS"]["Layers"]) == len(base["RootFS"]["Layers"]) + 1
        # as dockerd: the image's config with what the container ran with (its command)
        assert doc["Config"] == {**base["Config"], "Cmd": ["sh", "-c", CHANGES]}
        history = daemon.sbx("history", "--no-trunc", "--format",
                             "{{.CreatedBy}}|{{.Comment}}", ref, check=True).out
        assert history.splitlines()[0] == f"sh -c {CHANGES}|my changes", history

        run = daemon.sbx("run", "--rm", ref, "sh", "-c", CHECK, check=True)
        assert run.out == EXPECTED
        # the source image is unchanged
        base_run = daemon.sbx("run", "--rm", "busybox", "sh", "-c",
                              "test -e /bin/ls && ls /var", check=True)
        assert base_run.out == "www\n"

        # A container of the committed image, committed again: layers stack.
        daemon.sbx("rm", "-f", "sbx-commit-2")
        daemon.sbx("run", "--name", "sbx-commit-2", ref, "sh", "-c",
                   "rm /new.txt && echo two > /two.txt", check=True)
        try:
            second = daemon.sbx("commit", "sbx-commit-2", f"{IMAGE}:v2", check=True)
        finally:
            daemon.sbx("rm", "-f", "sbx-commit-2")
        run = daemon.sbx("run", "--rm", f"{IMAGE}:v2", "sh", "-c",
                         "cat /two.txt; test -e /new.txt || echo new-gone; ls /var",
                         check=True)
        assert run.out == "two\nnew-gone\nonly\n"
        daemon.sbx("rmi", second.out.strip(), check=True)

        # save -> load into another daemon: same id, same behaviour
        archive = tmp_path / "committed.tar"
        daemon.sbx("save", "-o", str(archive), ref, check=True)
        other = Daemon().start()
        try:
            loaded = other.sbx("load", "-i", str(archive), check=True)
            assert loaded.out == f"Loaded image: {ref}\n"
            assert other.sbx("image", "inspect", "-f", "{{.Id}}", ref,
                             check=True).out.strip() == image_id
            assert other.sbx("run", "--rm", ref, "sh", "-c", CHECK, check=True).out == \
                EXPECTED
            other.sbx("rmi", ref, check=True)
        finally:
            other.stop()
    finally:
        daemon.sbx("rmi", ref)


def test_diff_lists_the_changes_as_docker_does(daemon: Daemon, changed: str,
                                               tmp_path) -> None:
    """A for added, C for changed, D for deleted (an opaque directory too), parents
    first; not the mountpoints of the container's own /etc/hostname, hosts and
    resolv.conf."""
    assert daemon.sbx("diff", changed, check=True).out == (
        "C /bin\nD /bin/ls\nA /new.txt\nD /var\nA /var/only\n")
    with daemon.client() as client:
        assert client.containers.get(changed).diff() == [
            {"path": "/bin", "kind": 0}, {"path": "/bin/ls", "kind": 2},
            {"path": "/new.txt", "kind": 1}, {"path": "/var", "kind": 2},
            {"path": "/var/only", "kind": 1}]
        # nothing changed: nothing listed, and a commit adds an empty layer
        quiet = client.containers.create("busybox", ["true"])
        try:
            assert quiet.diff() == []                      # not started: no layer yet
            quiet.start()
            quiet.wait()
            assert quiet.diff() == []
            image = quiet.commit(IMAGE, "quiet")
        finally:
            quiet.remove(force=True)
        try:
            archive = tmp_path / "quiet.tar"
            daemon.sbx("save", "-o", str(archive), f"{IMAGE}:quiet", check=True)
            assert _last_layer_names(archive) == []
        finally:
            client.images.remove(image.id)


def _last_layer_names(archive) -> list[str]:
    """The entry names of the top layer of the one image in an OCI archive."""
    with tarfile.open(archive) as tar:
        def blob(digest: str) -> bytes:
            return tar.extractfile(f"blobs/sha256/{digest.split(':')[1]}").read()
        index = json.loads(tar.extractfile("index.json").read())
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        layer = blob(manifest["layers"][-1]["digest"])
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        return tar.getnames()


def test_commit_through_the_python_client(daemon: Daemon) -> None:
    with daemon.client() as client:
        container = client.containers.create("busybox", ["sh", "-c", "echo api > /api.txt"])
        try:
            container.start()
            container.wait()
            image = container.commit(IMAGE, "api", message="from the API",
                                     changes=['CMD ["cat", "/api.txt"]'])
        finally:
            container.remove(force=True)
        try:
            assert f"{IMAGE}:api" in image.record.repo_tags
            assert image.record.comment == "from the API"
            assert client.run(f"{IMAGE}:api").stdout == b"api\n"      # its new CMD
        finally:
            client.images.remove(image.id)


def test_commit_refusals(daemon: Daemon) -> None:
    # --rm: the writable layer is a tmpfs inside the container, out of the daemon's view
    cid = daemon.sbx("run", "-d", "--rm", "busybox", "sleep", "60", check=True).out.strip()
    try:
        refused = daemon.sbx("commit", cid, f"{IMAGE}:rm")
        assert refused.returncode != 0
        assert "--rm" in refused.err and "without --rm" in refused.err, refused.err
        refused = daemon.sbx("diff", cid)
        assert refused.returncode != 0 and "without --rm" in refused.err, refused.err
    finally:
        daemon.sbx("rm", "-f", cid)
    assert daemon.sbx("image", "inspect", f"{IMAGE}:rm").returncode != 0

    missing = daemon.sbx("commit", "sbx-no-such-container", f"{IMAGE}:x")
    assert missing.returncode != 0 and "No such container" in missing.err, missing.err

    # a file named like a whiteout would turn into a deletion: refused, named
    daemon.sbx("rm", "-f", "sbx-commit-wh")
    daemon.sbx("run", "--name", "sbx-commit-wh", "busybox", "touch", "/tmp/.wh.trick",
               check=True)
    try:
        refused = daemon.sbx("commit", "sbx-commit-wh", f"{IMAGE}:wh")
        assert refused.returncode != 0 and "/tmp/.wh.trick" in refused.err, refused.err
    finally:
        daemon.sbx("rm", "-f", "sbx-commit-wh")
