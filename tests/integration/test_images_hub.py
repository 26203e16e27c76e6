"""Docker Hub by default, against local stand-ins only (the public hub is never
contacted): short names (``busybox`` -> ``docker.io/library/busybox``) pulled from a
Debian ``docker-registry`` with token auth that plays Docker Hub (anonymous pull tokens
for ``library/``, a login for the rest), a two-platform index and ``--platform``, gzip,
zstd and uncompressed layers in one image, foreign layers refused, Docker's pull
progress, and ``registry-mirrors`` (a mirror that has the image; one that does not,
falling back to the hub; one configured ``https://`` that speaks plain HTTP).
The daemon-level test runs ``sbx pull busybox`` and ``sbx run busybox`` through a
mirror configured with ``--registry-mirror``.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile

import pytest

from harness import running
from registries import (PASSWORD, REGISTRY_BIN, USER, TokenServer, free_port,
                        self_signed, serve_registry)
from sandboxd import testing
from sandboxd.errors import InvalidArgument, NotFound, Unavailable
from sandboxd.images import ImageService, oci
from sandboxd.images.registry import Registries, RegistryClient, Unauthorized
from sandboxd.snapshots import Snapshotter
from sandboxd.store import ContentStore, Store

zstandard = pytest.importorskip("zstandard", reason="the zstandard module is not "
                                                    "installed (pip install zstandard)")
pytestmark = pytest.mark.skipif(REGISTRY_BIN is None,
                                reason="docker-registry is not installed "
                                       "(apt-get install docker-registry)")
NO_HUB = f"http://127.0.0.1:{free_port()}"        # nothing listens: refused at once


# ---------------------------------------------------------------- servers and roots

@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A registry that plays Docker Hub: Bearer tokens from a token server that gives
    anonymous callers pull access to ``library/*`` only. Yields ``(address, tokens)``."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install openssl): it signs the "
                    "test token server's JWTs")
    base = tmp_path_factory.mktemp("sbx-hub")
    tokens = TokenServer(base, public="library/")
    try:
        # foreign layers' URLs allowed, so that a manifest with one can be pushed
        allow = "validation:\n  manifests:\n    urls:\n      allow:\n        - ^https?://\n"
        with serve_registry(base / "server", tokens.registry_auth() + allow) as address:
            yield address, tokens
    finally:
        tokens.close()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    with serve_registry(tmp_path_factory.mktemp("sbx-mirror") / "open") as address:
        yield address


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory):
    """An open registry serving HTTPS with a self-signed certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install openssl): it makes the "
                    "registry's self-signed certificate")
    base = tmp_path_factory.mktemp("sbx-tls")
    with serve_registry(base / "server", tls=self_signed(base)) as address:
        yield address


@pytest.fixture
def roots(tmp_path):
    """``roots(name, **registries)`` -> an ImageService on a fresh root whose Docker Hub
    is ``registries`` (default: nowhere)."""
    made: list[Store] = []

    def make(name: str, **registries) -> ImageService:
        root = tmp_path / name
        store = Store(root)
        made.append(store)
        svc = ImageService(store, ContentStore(root), Snapshotter(root, store))
        svc.registries = Registries(**{"hub": NO_HUB, **registries})
        return svc

    yield make
    for store in made:
        store.close()


# ---------------------------------------------------------------- images made here

def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


COMPRESS = {"gzip": (oci.MEDIA_LAYER_GZIP, lambda raw: gzip.compress(raw, mtime=0)),
            "zstd": (oci.MEDIA_LAYER_ZSTD, lambda raw: zstandard.compress(raw)),
            "none": (oci.MEDIA_LAYER, lambda raw: raw)}


def image(layers: list[tuple[bytes, str]], arch: str = "amd64", cmd=("/bin/sh",)
          ) -> tuple[dict[str, bytes], bytes]:
    """``(blobs by digest, manifest)`` for plain tar layers given with how each is
    compressed (``gzip``, ``zstd``, ``none``)."""
    blobs, descs = {}, []
    for raw, how in layers:
        media, squeeze = COMPRESS[how]
        data = squeeze(raw)
        blobs[sha(data)] = data
        descs.append({"mediaType": media, "digest": sha(data), "size": len(data)})
    config = json.dumps({"architecture": arch, "os": "linux",
                         "created": "2024-01-02T03:04:05Z",
                         "config": {"Env": ["PATH=/bin"], "Cmd": list(cmd)},
                         "rootfs": {"type": "layers",
                                    "diff_ids": [sha(raw) for raw, _ in layers]}}).encode()
    blobs[sha(config)] = config
    manifest = json.dumps({"schemaVersion": 2, "mediaType": oci.MEDIA_MANIFEST,
                           "config": {"mediaType": oci.MEDIA_CONFIG, "digest": sha(config),
                                      "size": len(config)},
                           "layers": descs}).encode()
    return blobs, manifest


def push(address: str, repo: str, tag: str, images: list[tuple[dict, bytes, str | None]],
         auth=(USER, PASSWORD), **client) -> bytes:
    """Push each ``(blobs, manifest, arch)``; with one and no arch, tag its manifest;
    else tag an index of them by architecture (``client``: RegistryClient options).
    Returns what the tag names."""
    with RegistryClient(address, auth, **client) as client:
        for blobs, manifest, _ in images:
            for digest, data in blobs.items():
                if not client.blob_exists(repo, digest):
                    client.upload_blob(repo, digest, len(data), lambda d=data: io.BytesIO(d))
            client.put_manifest(repo, sha(manifest), manifest, oci.MEDIA_MANIFEST)
        if len(images) == 1 and images[0][2] is None:
            top, media = images[0][1], oci.MEDIA_MANIFEST
        else:
            top, media = json.dumps({"schemaVersion": 2, "mediaType": oci.MEDIA_INDEX,
                                     "manifests": [
                {"mediaType": oci.MEDIA_MANIFEST, "digest": sha(m), "size": len(m),
                 "platform": {"architecture": arch, "os": "linux"}}
                for _, m, arch in images]}).encode(), oci.MEDIA_INDEX
        client.put_manifest(repo, tag, top, media)
    return top


def busybox_image() -> tuple[dict[str, bytes], bytes]:
    return image([(testing.busybox_tar().read_bytes(), "gzip")], cmd=("sh",))


# ---------------------------------------------------------------- tests

def test_short_name_from_the_hub_with_an_anonymous_token(hub, roots):
    address, tokens = hub
    blobs, manifest = image([(tar_of({"hello": b"from the hub\n"}), "gzip")])
    push(address, "library/sbxhello", "latest", [(blobs, manifest, None)])
    svc = roots("a", hub=f"http://{address}")
    events: list[dict] = []
    image_id = svc.pull("sbxhello", progress=events.append)
    assert svc.get("sbxhello")["id"] == image_id
    assert svc.get("docker.io/library/sbxhello:latest")["id"] == image_id
    record = svc.inspect("sbxhello")
    assert record["RepoTags"] == ["sbxhello:latest"]
    assert record["RepoDigests"] == [f"sbxhello@{sha(manifest)}"]
    assert "repository:library/sbxhello:pull" in tokens.anonymous

    # Docker's lines, in Docker's order, for the one layer
    desc = json.loads(manifest)["layers"][0]
    layer = desc["digest"][7:19]
    statuses = [e["status"] for e in events if e.get("id") == layer]
    order = ["Pulling fs layer", "Downloading", "Verifying Checksum", "Download complete",
             "Extracting", "Pull complete"]
    assert [s for s in dict.fromkeys(statuses)] == order, statuses
    assert events[0] == {"status": "Pulling from library/sbxhello", "id": "latest"}
    assert events[-2] == {"status": f"Digest: {sha(manifest)}"}
    assert events[-1] == {"status": "Status: Downloaded newer image for sbxhello:latest"}
    downloading = [e for e in events if e["status"] == "Downloading"]
    assert downloading[-1]["current"] == downloading[-1]["total"] == desc["size"]
    extracting = [e for e in events if e["status"] == "Extracting" and "current" in e]
    assert extracting and extracting[-1]["total"] == desc["size"]
    again: list[dict] = []
    assert svc.pull("docker.io/library/sbxhello", progress=again.append) == image_id
    assert again[-1]["status"] == "Status: Image is up to date for sbxhello:latest"


def test_user_repositories_need_a_login_kept_for_docker_io(hub, roots):
    address, tokens = hub
    blobs, manifest = image([(tar_of({"mine": b"private\n"}), "none")])
    push(address, "sbxuser/private", "v1", [(blobs, manifest, None)])
    svc = roots("a", hub=f"http://{address}")
    with pytest.raises(Unauthorized, match=r"^unauthorized: .*sbx login docker\.io"):
        svc.pull("sbxuser/private:v1")
    with pytest.raises(Unauthorized, match="refused the login of 'sbx-user'"):
        svc.login("", USER, "wrong")
    assert svc.login("", USER, PASSWORD) == "Login Succeeded"     # "" is Docker Hub
    assert json.loads((svc.store.root / "auth.json").read_text())["auths"].keys() == \
        {"docker.io"}
    assert svc.pull("sbxuser/private:v1") == json.loads(manifest)["config"]["digest"]
    assert svc.inspect("docker.io/sbxuser/private:v1")["RepoTags"] == ["sbxuser/private:v1"]
    assert svc.logout("index.docker.io") and not svc.logout("docker.io")


def test_gzip_zstd_and_plain_layers_in_one_image(hub, roots):
    address, _ = hub
    layers = [(tar_of({"a": b"gzip layer\n"}), "gzip"),
              (tar_of({"b": b"zstd layer\n" * 1000}), "zstd"),
              (tar_of({"c": b"plain layer\n"}), "none")]
    blobs, manifest = image(layers)
    push(address, "library/sbxmixed", "1", [(blobs, manifest, None)])
    svc = roots("a", hub=f"http://{address}")
    image_id = svc.pull("sbxmixed:1")
    assert [l["media_type"] for l in svc.get(image_id)["doc"]["layers"]] == \
        [oci.MEDIA_LAYER_GZIP, oci.MEDIA_LAYER_ZSTD, oci.MEDIA_LAYER]
    view = svc.view(image_id)
    assert view.read("/b") == b"zstd layer\n" * 1000
    assert view.read("/a") == b"gzip layer\n"
    assert view.read("/c") == b"plain layer\n"


def test_index_platforms_and_the_platform_flag(hub, roots):
    address, _ = hub
    arm = image([(tar_of({"arch": b"arm64\n"}), "gzip")], arch="arm64")
    amd = image([(tar_of({"arch": b"amd64\n"}), "zstd")], arch="amd64")
    push(address, "library/sbxmulti", "latest", [(*arm, "arm64"), (*amd, "amd64")])
    svc = roots("a", hub=f"http://{address}")
    host_arch = oci.architecture()
    if host_arch == "amd64":
        assert svc.inspect(svc.pull("sbxmulti"))["Architecture"] == "amd64"
    arm_id = svc.pull("sbxmulti", "linux/arm64")
    assert svc.inspect(arm_id)["Architecture"] == "arm64"
    assert svc.get("sbxmulti")["id"] == arm_id         # the tag follows the last pull
    assert svc.has_platform("sbxmulti", "arm64")
    assert not svc.has_platform("sbxmulti", "linux/amd64")
    with pytest.raises(NotFound) as e:
        svc.pull("sbxmulti", "linux/s390x")
    assert str(e.value) == ("no matching manifest for linux/s390x in the manifest list "
                            "entries of docker.io/library/sbxmulti:latest (it has: "
                            "linux/arm64, linux/amd64)")
    with pytest.raises(InvalidArgument, match="only linux images run here"):
        svc.pull("sbxmulti", "windows/amd64")
    # a single-platform image pulled for another platform: refused, as Docker does
    push(address, "library/sbxsingle", "latest", [(*amd, None)])
    with pytest.raises(InvalidArgument, match="does not match the specified platform: "
                                              "wanted linux/arm64, actual: linux/amd64"):
        svc.pull("sbxsingle", "linux/arm64")


def test_foreign_layers_are_refused_before_any_download(hub, roots):
    address, _ = hub
    blobs, manifest = image([(tar_of({"x": b"x"}), "gzip")])
    doc = json.loads(manifest)
    doc["layers"].insert(0, {"mediaType": oci.DOCKER_LAYER_FOREIGN, "size": 1234,
                             "digest": "sha256:" + "f" * 64,
                             "urls": ["https://example.invalid/base.tar.gz"]})
    doc["mediaType"] = oci.DOCKER_MANIFEST
    foreign = json.dumps(doc).encode()
    with RegistryClient(address, (USER, PASSWORD)) as client:
        for digest, data in blobs.items():
            client.upload_blob("library/sbxforeign", digest, len(data),
                               lambda d=data: io.BytesIO(d))
        client.put_manifest("library/sbxforeign", "latest", foreign, oci.DOCKER_MANIFEST)
    svc = roots("a", hub=f"http://{address}")
    with pytest.raises(InvalidArgument, match=r"layer 0 \(sha256:f{64}\) is a foreign, "
                                              r"non-distributable layer .*at "
                                              r"https://example\.invalid/base\.tar\.gz"):
        svc.pull("sbxforeign")
    assert not any(svc.content.exists(d) for d in blobs)


def test_mirrors_first_then_the_hub(hub, mirror, roots):
    address, _ = hub
    blobs, manifest = image([(tar_of({"m": b"mirrored\n"}), "gzip")])
    push(mirror, "library/sbxmirrored", "latest", [(blobs, manifest, None)], auth=None)
    only_hub = image([(tar_of({"h": b"hub only\n"}), "gzip")])
    push(address, "library/sbxhubonly", "latest", [(*only_hub, None)])
    dead = f"http://127.0.0.1:{free_port()}"
    svc = roots("a", hub=f"http://{address}", mirrors=(dead, f"http://{mirror}"))
    # the dead mirror is skipped, the second has it (the hub does not)
    assert svc.pull("sbxmirrored") == json.loads(manifest)["config"]["digest"]
    # the mirrors lack it: the hub has it
    assert svc.pull("sbxhubonly") == json.loads(only_hub[1])["config"]["digest"]
    # names with a registry never go through Docker Hub's mirrors
    with pytest.raises(NotFound):
        svc.pull(f"{address}/library/sbxmirrored")
    # nothing has it: the hub's answer is the error
    nowhere = roots("b", mirrors=(f"http://{mirror}",))
    with pytest.raises(Unavailable, match=r"cannot connect to registry docker\.io"):
        nowhere.pull("sbxhubonly")
    # a mirror listed as https:// that speaks plain HTTP: loopback ones are insecure,
    # so the client falls back to HTTP as Docker does
    tls_less = roots("c", mirrors=(f"https://{mirror}",))
    assert tls_less.pull("sbxmirrored") == json.loads(manifest)["config"]["digest"]


def test_tls_with_a_self_signed_certificate(tls_registry, roots):
    address = tls_registry
    blobs, manifest = image([(tar_of({"t": b"over tls\n"}), "zstd")])
    push(address, "library/sbxtls", "latest", [(blobs, manifest, None)], auth=None,
         endpoint=f"https://{address}", insecure=True)
    # certificates checked (a registry not listed as insecure): refused, saying what to do
    with RegistryClient(address, endpoint=f"https://{address}") as client:
        with pytest.raises(Unavailable, match=r"TLS failed \(CERTIFICATE_VERIFY_FAILED\); "
                                              r".*insecure-registries"):
            client.ping()
    # a loopback mirror given as https:// is insecure, as Docker treats loopback: HTTPS
    # without the check
    svc = roots("a", mirrors=(f"https://{address}",))
    assert svc.pull("sbxtls") == json.loads(manifest)["config"]["digest"]


def test_insecure_registries_match_hosts_and_cidrs():
    r = Registries(insecure=("10.0.0.0/8", "myreg.example:5000", "plain.example"))
    assert r.is_insecure("127.0.0.1:5000") and r.is_insecure("localhost")   # loopback
    assert r.is_insecure("10.1.2.3:5000") and r.is_insecure("myreg.example:5000")
    assert r.is_insecure("plain.example:443") and not r.is_insecure("myreg.example")
    assert not r.is_insecure("192.168.1.1:5000")
    assert r.endpoints("docker.io") == [("docker.io", "https://registry-1.docker.io")]
    assert r.endpoints("quay.io") == [("quay.io", None)]
    with pytest.raises(InvalidArgument, match="not a mirror URL"):
        Registries(mirrors=("mirror.example",))
    with pytest.raises(InvalidArgument, match="neither host"):
        Registries(insecure=("http://x/y",))


def test_sbx_pull_busybox_through_a_mirror(mirror, tmp_path):
    """The daemon with ``--registry-mirror``: ``sbx pull busybox`` resolves the short
    name, pulls through the mirror with Docker's lines, and ``sbx run`` uses it."""
    blobs, manifest = busybox_image()
    push(mirror, "library/busybox", "latest", [(blobs, manifest, None)], auth=None)
    with running("--registry-mirror", f"http://{mirror}", "--hub-endpoint", NO_HUB,
                 busybox=False) as d:
        pull = d.sbx("pull", "busybox", check=True)
        lines = pull.out.splitlines()
        assert lines[:2] == ["Using default tag: latest", "latest: Pulling from library/busybox"]
        layer = json.loads(manifest)["layers"][0]["digest"][7:19]
        assert f"{layer}: Pulling fs layer" in lines and f"{layer}: Pull complete" in lines
        assert lines[-3:] == [f"Digest: {sha(manifest)}",
                              "Status: Downloaded newer image for busybox:latest",
                              "docker.io/library/busybox:latest"]
        assert "busybox:latest" in d.sbx("images", "--format", "{{.Repository}}:{{.Tag}}",
                                         check=True).out.split()
        assert d.sbx("run", "--rm", "busybox", "echo", "hi", check=True).out == "hi\n"
        assert d.sbx("run", "--rm", "docker.io/library/busybox", "true").returncode == 0
        missing = d.sbx("run", "--rm", "sbx-not-on-the-mirror", "true")
        assert missing.returncode == 125
        assert "Unable to find image 'sbx-not-on-the-mirror' locally" in missing.err
        assert "cannot connect to registry docker.io" in missing.err
        bad = d.sbx("pull", "--platform", "plan9/amd64", "busybox")
        assert bad.returncode == 125 and "only linux images run here" in bad.err

        # --platform on create and run: the index entry for it is pulled, and pulled
        # again when the one here is for another platform
        arm = image([(tar_of({"arch": b"arm64\n"}), "gzip")], arch="arm64")
        push(mirror, "library/sbxplat", "latest",
             [(*arm, "arm64"), (blobs, manifest, "amd64")], auth=None)
        d.sbx("create", "--platform", "linux/arm64", "sbxplat", check=True)
        arch = ("image", "inspect", "--format", "{{.Architecture}}", "sbxplat")
        assert d.sbx(*arch, check=True).out == "arm64\n"
        if oci.architecture() == "amd64":
            ran = d.sbx("run", "--rm", "--platform", "linux/amd64", "sbxplat", "echo", "x86")
            assert ran.out == "x86\n", ran.err
            assert "latest: Pulling from library/sbxplat" in ran.err
            assert d.sbx(*arch, check=True).out == "amd64\n"
        d.sbx("container", "prune", "-f", check=True)
        d.sbx("rmi", "busybox", check=True)


def test_python_client_pulls_a_platform(mirror):
    """``client.images.pull(name, platform=...)`` reaches the daemon's pull."""
    arm = image([(tar_of({"arch": b"arm64\n"}), "gzip")], arch="arm64")
    amd = image([(tar_of({"arch": b"amd64\n"}), "gzip")], arch="amd64")
    push(mirror, "library/sbxapi", "latest", [(*arm, "arm64"), (*amd, "amd64")], auth=None)
    with running("--registry-mirror", f"http://{mirror}", "--hub-endpoint", NO_HUB,
                 busybox=False) as d, d.client() as client:
        events: list[dict] = []
        pulled = client.images.pull("sbxapi", progress=events.append, platform="linux/arm64")
        assert pulled.id == json.loads(arm[1])["config"]["digest"]
        assert any(e.get("status") == "Pull complete" for e in events)
