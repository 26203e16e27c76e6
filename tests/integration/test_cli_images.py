"""``sbx pull/push/save/load/tag/history/login/logout`` and ``sbx run`` pulling a missing
image: the real CLI and ``Client`` against real daemons and a real ``docker-registry`` on
127.0.0.1 (started as ``test_images_registry.py`` starts it).

The shared session daemon has busybox; a second daemon (``fresh``, no images) proves
that pulls and loads really bring an image in. Tags this module puts on the shared
daemon's busybox are removed again (other tests expect ``rmi busybox`` to be refused as
in use, which an extra tag would turn into an untag).
"""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from harness import Daemon, running
from registries import PASSWORD, USER, serve_registry

pytestmark = pytest.mark.skipif(shutil.which("docker-registry") is None,
                                reason="docker-registry is not installed "
                                       "(apt-get install docker-registry)")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with serve_registry(tmp_path_factory.mktemp("sbx-cli-registry") / "open") as address:
        yield address


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory):
    if shutil.which("htpasswd") is None:
        pytest.skip("htpasswd is not installed (apt-get install apache2-utils)")
    base = tmp_path_factory.mktemp("sbx-cli-registry-auth")
    line = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True,
                          capture_output=True, text=True).stdout.strip()
    (base / "htpasswd").write_text(line + "\n")
    auth = f"auth:\n  htpasswd:\n    realm: sbx-test\n    path: {base / 'htpasswd'}\n"
    with serve_registry(base / "server", auth) as address:
        yield address


@pytest.fixture(scope="module")
def fresh():
    """A daemon without any image."""
    with running(busybox=False) as d:
        yield d


@pytest.fixture(scope="module")
def pushed(daemon: Daemon, registry: str):
    """busybox pushed (by the Python client) as ``<registry>/sbx-cli/busybox:v1``."""
    ref = f"{registry}/sbx-cli/busybox:v1"
    with daemon.client() as client:
        assert client.images.tag("busybox", ref) == ref
        events: list[dict] = []
        result = client.images.push(ref, progress=events.append)
        assert result["digest"].startswith("sha256:") and result["size"] > 0
        assert any(e.get("status") in ("Pushed", "Layer already exists")
                   for e in events), events
        try:
            yield ref, result["digest"]
        finally:
            client.images.remove(ref)


def image_id(daemon: Daemon, ref: str) -> str:
    return daemon.sbx("image", "inspect", "-f", "{{.Id}}", ref, check=True).out.strip()


def test_push_rmi_pull_back_and_run(daemon: Daemon, registry: str) -> None:
    ref = f"{registry}/sbx-cli/busybox:cli"
    daemon.sbx("tag", "busybox", ref, check=True)
    try:
        push = daemon.sbx("push", ref, check=True)
        lines = push.out.splitlines()
        assert lines[0] == f"The push refers to repository [{registry}/sbx-cli/busybox]"
        assert any(line.endswith(": Pushed") or line.endswith(": Layer already exists")
                   for line in lines), push.out
        assert lines[-1].startswith("cli: digest: sha256:"), push.out
        digest = lines[-1].split()[2]
        doc = json.loads(daemon.sbx("image", "inspect", ref, check=True).out)[0]
        assert f"{registry}/sbx-cli/busybox@{digest}" in doc["RepoDigests"], doc
        assert ref in doc["RepoTags"] and doc["RootFS"]["Layers"]
        digests = daemon.sbx("images", "--digests", "--format",
                             "{{.Repository}} {{.Digest}}", check=True).out.splitlines()
        assert f"{registry}/sbx-cli/busybox {digest}" in digests, digests

        assert daemon.sbx("rmi", ref, check=True).out.strip() == f"Untagged: {ref}"
        assert daemon.sbx("image", "inspect", ref).returncode == 1

        pull = daemon.sbx("pull", ref, check=True)
        assert pull.out.splitlines()[-1] == ref, pull.out
        assert f"Digest: {digest}" in pull.out
        assert f"Status: Image is up to date for {ref}" in pull.out   # same config
        assert image_id(daemon, ref) == image_id(daemon, "busybox")
        run = daemon.sbx("run", "--rm", ref, "echo", "from the registry", check=True)
        assert run.out == "from the registry\n"

        history = daemon.sbx("history", "--no-trunc", "--no-human", "--format",
                             "{{.ID}}|{{.CreatedBy}}|{{.Size}}", ref, check=True).out
        assert history == f"{doc['Id']}|sbx import|{doc['Size']}\n"
    finally:
        daemon.sbx("rmi", ref)


def test_run_pulls_an_image_it_does_not_have(fresh: Daemon, pushed) -> None:
    ref, digest = pushed
    assert fresh.sbx("image", "inspect", ref).returncode == 1
    run = fresh.sbx("run", "--rm", ref, "echo", "pulled and ran")
    assert run.returncode == 0, run.err
    assert run.out == "pulled and ran\n"
    err = run.err.splitlines()
    assert err[0] == f"Unable to find image '{ref}' locally", run.err
    assert "v1: Pulling from sbx-cli/busybox" in err
    assert any(line.endswith(": Download complete") for line in err), run.err
    assert f"Status: Downloaded newer image for {ref}" in err

    # Gone, then back with sbx pull; its RepoDigests names the pushed manifest.
    removed = fresh.sbx("rmi", ref, check=True).out.splitlines()
    assert removed[0] == f"Untagged: {ref}" and removed[-1].startswith("Deleted: sha256:")
    pull = fresh.sbx("pull", ref, check=True)
    assert pull.out.splitlines()[-1] == ref
    assert any(line.endswith(": Download complete") for line in pull.out.splitlines())
    doc = json.loads(fresh.sbx("inspect", ref, check=True).out)[0]   # image fallback
    assert doc["RepoDigests"] == [f"{ref.rsplit(':', 1)[0]}@{digest}"]
    assert fresh.sbx("run", "--rm", ref, "true").returncode == 0

    quiet = fresh.sbx("pull", "-q", ref, check=True)
    assert quiet.out == f"{ref}\n"
    missing = fresh.sbx("pull", ref.replace(":v1", ":nope"))
    assert missing.returncode == 125 and "nope" in missing.err, missing.err
    # a short name is Docker Hub's, which tests point at a port where nothing listens
    from_hub = fresh.sbx("run", "--rm", "sbx-cli/none", "true")
    assert from_hub.returncode == 125, from_hub.err
    assert "Unable to find image 'sbx-cli/none' locally" in from_hub.err
    assert "cannot connect to registry docker.io" in from_hub.err
    fresh.sbx("rmi", ref, check=True)


def test_save_load_round_trip(daemon: Daemon, fresh: Daemon, tmp_path) -> None:
    archive = tmp_path / "busybox.tar"
    daemon.sbx("save", "-o", str(archive), "busybox", check=True)
    streamed = daemon.sbx("save", "busybox", check=True).stdout
    assert streamed == archive.read_bytes()
    assert daemon.sbx("save", "-o", str(tmp_path / "x.tar"), "no-such-image").returncode \
        == 125
    assert not (tmp_path / "x.tar").exists()        # no half-written archive

    loaded = fresh.sbx("load", "-i", str(archive), check=True)
    assert loaded.out == "Loaded image: busybox:latest\n"
    assert image_id(fresh, "busybox") == image_id(daemon, "busybox")
    assert fresh.sbx("run", "--rm", "busybox", "echo", "loaded", check=True).out == \
        "loaded\n"
    fresh.sbx("rmi", "busybox", check=True)
    from_stdin = fresh.sbx("load", input=streamed, check=True)
    assert from_stdin.out == "Loaded image: busybox:latest\n"
    assert image_id(fresh, "busybox") == image_id(daemon, "busybox")

    not_tar = fresh.sbx("load", input=b"not a tar at all" * 100)
    assert not_tar.returncode == 125 and "archive" in not_tar.err, not_tar.err
    fresh.sbx("rmi", "busybox", check=True)


def test_login_and_logout(fresh: Daemon, auth_registry: str) -> None:
    wrong = fresh.sbx("login", "-u", USER, "--password-stdin", auth_registry,
                      input="not-the-password\n")
    assert wrong.returncode == 125
    # Docker's label of a daemon's answer, with no program name outside run/create
    assert wrong.err.startswith("Error response from daemon: unauthorized: "), wrong.err
    no_tty = fresh.sbx("login", auth_registry)
    assert no_tty.returncode == 1 and "non TTY device" in no_tty.err

    ok = fresh.sbx("login", "-u", USER, "--password-stdin", auth_registry,
                   input=PASSWORD + "\n", check=True)
    assert ok.out == "Login Succeeded\n"
    with_flag = fresh.sbx("login", "-u", USER, "-p", PASSWORD, auth_registry, check=True)
    assert "Use --password-stdin" in with_flag.err
    assert fresh.sbx("logout", auth_registry, check=True).out == \
        f"Removing login credentials for {auth_registry}\n"
    assert fresh.sbx("logout", auth_registry, check=True).out == \
        f"Not logged in to {auth_registry}\n"
