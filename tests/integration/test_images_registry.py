"""Images through a real registry and through archives.

A registry is Debian's ``docker-registry`` (distribution 2.8) started here on 127.0.0.1
with filesystem storage under the test's temp dir: one open, one with htpasswd basic
auth. Images are pushed and pulled between separate daemon roots; multi-layer images
(gzip and plain layers, whiteouts, an opaque dir) and a two-platform index are made by
the tests. ``skopeo`` (when installed) proves interop: it reads what sbx pushed and
writes layouts and docker archives that sbx loads.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from registries import (PASSWORD, REGISTRY_BIN, USER, Proxy, TokenServer, free_port,
                        serve_registry)
from sandboxd import testing
from sandboxd.errors import InvalidArgument, NotFound, Unavailable
from sandboxd.images import ImageService, oci
from sandboxd.images.registry import RegistryClient, Unauthorized
from sandboxd.snapshots import Snapshotter
from sandboxd.store import ContentStore, Store

pytestmark = pytest.mark.skipif(REGISTRY_BIN is None,
                                reason="docker-registry is not installed "
                                       "(apt-get install docker-registry)")


# ---------------------------------------------------------------- registries

@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with serve_registry(tmp_path_factory.mktemp("sbx-registry") / "open") as address:
        yield address


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory):
    base = tmp_path_factory.mktemp("sbx-registry-auth")
    htpasswd = base / "htpasswd"
    if shutil.which("htpasswd"):
        line = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True,
                              capture_output=True, text=True).stdout.strip()
    else:
        bcrypt = pytest.importorskip("bcrypt", reason="neither htpasswd (apache2-utils) "
                                                      "nor the bcrypt module is installed")
        line = f"{USER}:" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt()).decode()
    htpasswd.write_text(line + "\n")
    auth = f"auth:\n  htpasswd:\n    realm: sbx-test\n    path: {htpasswd}\n"
    with serve_registry(base / "server", auth) as address:
        yield address


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory):
    """A registry that wants Bearer tokens from :class:`TokenServer`; yields
    ``(address, token server)``."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install openssl): it signs the "
                    "test token server's JWTs")
    base = tmp_path_factory.mktemp("sbx-registry-token")
    tokens = TokenServer(base)
    try:
        with serve_registry(base / "server", tokens.registry_auth()) as address:
            yield address, tokens
    finally:
        tokens.close()


class CuttingProxy(Proxy):
    """A proxy that drops the first ``cuts`` connections once they have carried
    ``after`` bytes in either direction (a connection lost mid-blob)."""

    def __init__(self, upstream: str, after: int, cuts: int = 1):
        self.after = after
        self.cuts_left = cuts
        self.cut = 0
        super().__init__(upstream)

    def connection(self) -> dict:
        doomed = self.cuts_left > 0
        self.cuts_left -= doomed
        return {"bytes": 0, "doomed": doomed}

    def forward(self, src: socket.socket, dst: socket.socket, data: bytes, state: dict,
                request: bool) -> bool:
        state["bytes"] += len(data)
        if state["doomed"] and state["bytes"] > self.after:
            state["doomed"] = False
            self.cut += 1
            # Linger 0: the last close sends RST (a reset, mid-message); the shutdown
            # wakes the other direction's thread out of recv first.
            for s in (src, dst):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                             b"\x01\x00\x00\x00\x00\x00\x00\x00")
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            return False
        return super().forward(src, dst, data, state, request)


# ---------------------------------------------------------------- roots and images

@pytest.fixture
def roots(tmp_path):
    """``roots(name)`` -> an ImageService on a fresh daemon root under tmp_path."""
    made: list[Store] = []

    def make(name: str) -> ImageService:
        root = tmp_path / name
        store = Store(root)
        made.append(store)
        return ImageService(store, ContentStore(root), Snapshotter(root, store))

    yield make
    for store in made:
        store.close()


@pytest.fixture(scope="module")
def busybox_tar():
    return testing.busybox_tar()


def layer_tar(entries: list[tuple[str, bytes | str | None]], compress: bool) -> bytes:
    """A layer: ``(name, bytes)`` files, ``(name/, None)`` dirs, ``(name, "->target")``
    symlinks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mtime = 1_700_000_000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data[2:]
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if compress else raw


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_docs(layers: list[tuple[bytes, bool]], arch: str = "amd64",
               cmd: list[str] | None = None) -> tuple[dict[str, bytes], bytes, str]:
    """``(blobs by digest, manifest bytes, config digest)`` for layers given as
    ``(tar bytes, gzipped?)``."""
    diff_ids = [sha(gzip.decompress(t) if z else t) for t, z in layers]
    config = json.dumps({
        "architecture": arch, "os": "linux", "created": "2024-01-02T03:04:05.123456789Z",
        "config": {"Env": ["PATH=/bin"], "Cmd": cmd or ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": oci.MEDIA_MANIFEST,
        "config": {"mediaType": oci.MEDIA_CONFIG, "digest": sha(config),
                   "size": len(config)},
        "layers": [{"mediaType": oci.MEDIA_LAYER_GZIP if z else oci.MEDIA_LAYER,
                    "digest": sha(t), "size": len(t)} for t, z in layers]}).encode()
    blobs = {sha(t): t for t, _ in layers}
    blobs[sha(config)] = config
    blobs[sha(manifest)] = manifest
    return blobs, manifest, sha(config)


def busybox_layer() -> bytes:
    """The busybox rootfs as a gzip layer (so multi-layer images can run)."""
    return gzip.compress(testing.busybox_tar().read_bytes(), compresslevel=1, mtime=0)


MULTI_LAYERS = [
    ([("etc/", None), ("etc/motd", b"layer one\n"), ("gone.txt", b"to be deleted\n"),
      ("opaque/", None), ("opaque/old.txt", b"hidden by an opaque dir\n")], True),
    ([("data/", None), ("data/big.bin", os.urandom(300_000)),
      ("etc/", None), ("etc/motd", b"layer two\n")], False),
    ([(".wh.gone.txt", b""), ("opaque/", None), ("opaque/.wh..wh..opq", b""),
      ("opaque/new.txt", b"fresh\n"), ("link", "->etc/motd")], True),
]


def multi_layer_image() -> tuple[dict[str, bytes], bytes, str]:
    return image_docs([(layer_tar(e, z), z) for e, z in MULTI_LAYERS])


def oci_layout_tar(blobs: dict[str, bytes], manifests: list[tuple[bytes, str | None]]
                   ) -> bytes:
    """An OCI image layout tarball naming each manifest (``io.containerd.image.name``)."""
    buf = io.BytesIO()
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": oci.MEDIA_MANIFEST, "digest": sha(m), "size": len(m),
         **({"annotations": {oci.ANNOTATION_IMAGE_NAME: name}} if name else {})}
        for m, name in manifests]}
    with tarfile.open(fileobj=buf, mode="w") as tar:
        files = {"index.json": json.dumps(index).encode(),
                 "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
                 **{f"blobs/sha256/{d[7:]}": b for d, b in blobs.items()}}
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@contextlib.contextmanager
def merged_view(svc: ImageService, image_id: str, where: Path):
    """The image's root mounted read-only (an overlay of its layer snapshots)."""
    key = f"view-{image_id[7:19]}"
    root = svc.prepare_rootfs(image_id, key, readonly=True)
    where.mkdir()
    lowers = ":".join(root.lowerdirs)
    if len(root.lowerdirs) == 1:
        cmd = ["mount", "--bind", "-o", "ro", lowers, str(where)]
    else:
        cmd = ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lowers}", str(where)]
    subprocess.run(cmd, check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)
        svc.release_rootfs(key)


# ---------------------------------------------------------------- tests

def test_push_then_pull_busybox_into_a_fresh_root(registry, roots, tmp_path, busybox_tar):
    a = roots("a")
    ref = f"{registry}/sbx/busybox:v1"
    image_id = a.import_rootfs(busybox_tar, ref)
    events: list[dict] = []
    pushed = a.push(ref, progress=events.append)
    assert pushed["digest"].startswith("sha256:")
    assert [e["status"] for e in events if e.get("id") and "current" not in e] == \
        ["Pushed", "Pushed"]                                  # the layer, the config
    assert a.inspect(ref)["RepoDigests"] == [f"{registry}/sbx/busybox@{pushed['digest']}"]

    b = roots("b")
    events.clear()
    assert b.pull(ref, progress=events.append) == image_id
    assert b.inspect(ref)["RepoTags"] == [ref]
    assert b.inspect(ref)["RepoDigests"] == [f"{registry}/sbx/busybox@{pushed['digest']}"]
    assert any(e["status"] == "Downloading" and e["current"] == e["total"] for e in events)
    assert b.get(image_id)["doc"]["manifest"] == a.get(image_id)["doc"]["manifest"]
    assert b.get(image_id)["size"] == a.get(image_id)["size"] > 0
    with merged_view(b, image_id, tmp_path / "sbx-view") as root:
        assert (root / "bin" / "busybox").is_file()
        assert os.readlink(root / "bin" / "sh") == "busybox"

    # again: nothing to send, nothing to fetch
    events.clear()
    a.push(ref, progress=events.append)
    assert [e["status"] for e in events if e.get("id")] == ["Layer already exists"] * 2
    events.clear()
    assert b.pull(ref, progress=events.append) == image_id
    assert [e["status"] for e in events][-1] == f"Status: Image is up to date for {ref}"
    assert not [e for e in events if "current" in e or e["status"] == "Extracting"]
    # by digest: no tag is added, the digest is recorded
    c = roots("c")
    by_digest = f"{registry}/sbx/busybox@{pushed['digest']}"
    assert c.pull(by_digest) == image_id
    assert c.get(image_id)["tags"] == []


def test_missing_tag_missing_repo_and_no_registry(registry, roots):
    svc = roots("a")
    with pytest.raises(NotFound) as e:
        svc.pull(f"{registry}/sbx/nothing-here:v9")
    assert str(e.value) == f"manifest unknown: {registry}/sbx/nothing-here:v9 not found"
    port = free_port()
    with pytest.raises(Unavailable, match=f"cannot connect to registry 127.0.0.1:{port} "
                                          f".*connection refused"):
        svc.pull(f"127.0.0.1:{port}/sbx/busybox")
    with pytest.raises(NotFound, match="no such image"):
        svc.push(f"{registry}/sbx/never-made:v1")


def test_basic_auth_login_and_refusals(auth_registry, roots, busybox_tar, tmp_path):
    svc = roots("a")
    ref = f"{auth_registry}/private/busybox:v1"
    svc.import_rootfs(busybox_tar, ref)
    with pytest.raises(Unauthorized) as e:
        svc.push(ref)
    assert str(e.value).startswith("unauthorized: authentication required")
    assert f"sbx login {auth_registry}" in str(e.value)
    with pytest.raises(Unauthorized, match=r"^unauthorized: .*refused the login of "
                                           r"'sbx-user'"):
        svc.login(auth_registry, USER, "wrong")
    assert not (svc.store.root / "auth.json").exists()

    assert svc.login(auth_registry, USER, PASSWORD) == "Login Succeeded"
    auth = svc.store.root / "auth.json"
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    assert auth_registry in json.loads(auth.read_text())["auths"]
    assert PASSWORD not in auth.read_text()                   # base64, like Docker's
    digest = svc.push(ref)["digest"]

    other = roots("b")
    with pytest.raises(Unauthorized, match="^unauthorized: "):
        other.pull(ref)
    other.credentials.set(auth_registry, USER, PASSWORD)
    assert other.pull(ref) == svc.get(ref)["id"]
    assert other.inspect(ref)["RepoDigests"] == [f"{auth_registry}/private/busybox@{digest}"]
    assert other.logout(auth_registry) and not other.logout(auth_registry)


def test_bearer_token_auth(token_registry, roots, busybox_tar):
    address, tokens = token_registry
    svc = roots("a")
    ref = f"{address}/team/busybox:v1"
    image_id = svc.import_rootfs(busybox_tar, ref)
    with pytest.raises(Unauthorized, match=r"^unauthorized: bad credentials \(registry "
                                           rf"{address} needs a login: sbx login"):
        svc.push(ref)
    with pytest.raises(Unauthorized, match="^unauthorized: bad credentials .*refused the "
                                           "login of 'sbx-user'"):
        svc.login(address, USER, "wrong")
    svc.login(address, USER, PASSWORD)
    digest = svc.push(ref)["digest"]
    other = roots("b")
    other.credentials.set(address, USER, PASSWORD)
    assert other.pull(ref) == image_id
    assert other.inspect(ref)["RepoDigests"] == [f"{address}/team/busybox@{digest}"]
    # one token per scope, fetched once and reused for every request of the operation
    assert tokens.scopes.count("repository:team/busybox:pull,push") == 1
    assert tokens.scopes.count("repository:team/busybox:pull") == 1


def test_multi_layer_image_with_whiteouts_chunked_push_and_pull(registry, roots, tmp_path):
    blobs, manifest, config_digest = multi_layer_image()
    a = roots("a")
    loaded = a.load(io.BytesIO(oci_layout_tar(blobs, [(manifest, "sbx/multi:v1")])))
    assert loaded == [{"id": config_digest, "tags": ["sbx/multi:v1"]}]
    ref = f"{registry}/sbx/multi:v1"
    a.tag("sbx/multi:v1", ref)
    a.chunk_size = 64 * 1024                       # the 300 KB layer goes in PATCH chunks
    events: list[dict] = []
    assert a.push(ref, progress=events.append)["digest"] == sha(manifest)
    big = [e for e in events if e["status"] == "Pushing" and e["total"] > 300_000]
    assert len(big) >= 5 and big[-1]["current"] == big[-1]["total"]

    b = roots("b")
    assert b.pull(ref) == config_digest
    image = b.get(config_digest)
    assert image["doc"]["chain_ids"] == oci.chain_ids(
        json.loads(blobs[config_digest])["rootfs"]["diff_ids"])
    assert [l["media_type"] for l in image["doc"]["layers"]] == \
        [oci.MEDIA_LAYER_GZIP, oci.MEDIA_LAYER, oci.MEDIA_LAYER_GZIP]
    assert b.inspect(ref)["Created"] == "2024-01-02T03:04:05.123456789Z"
    with merged_view(b, config_digest, tmp_path / "sbx-multi") as root:
        assert (root / "etc" / "motd").read_text() == "layer two\n"
        assert not (root / "gone.txt").exists()
        assert sorted(os.listdir(root / "opaque")) == ["new.txt"]
        assert (root / "data" / "big.bin").stat().st_size == 300_000
        assert os.readlink(root / "link") == "etc/motd"


def test_index_with_two_platforms_pulls_amd64(registry, roots):
    arm_blobs, arm_manifest, arm_config = image_docs(
        [(layer_tar([("arch", b"arm64\n")], True), True)], arch="arm64")
    amd_blobs, amd_manifest, amd_config = image_docs(
        [(layer_tar([("arch", b"amd64\n")], True), True)], arch="amd64")
    index = json.dumps({"schemaVersion": 2, "mediaType": oci.MEDIA_INDEX, "manifests": [
        {"mediaType": oci.MEDIA_MANIFEST, "digest": sha(arm_manifest),
         "size": len(arm_manifest), "platform": {"architecture": "arm64", "os": "linux"}},
        {"mediaType": oci.MEDIA_MANIFEST, "digest": sha(amd_manifest),
         "size": len(amd_manifest), "platform": {"architecture": "amd64", "os": "linux"}},
    ]}).encode()
    with RegistryClient(registry) as client:
        for blobs, manifest in ((arm_blobs, arm_manifest), (amd_blobs, amd_manifest)):
            for digest, data in blobs.items():
                if data is not manifest:
                    client.upload_blob("sbx/multiarch", digest, len(data),
                                       lambda d=data: io.BytesIO(d))
            client.put_manifest("sbx/multiarch", sha(manifest), manifest,
                                oci.MEDIA_MANIFEST)
        client.put_manifest("sbx/multiarch", "latest", index, oci.MEDIA_INDEX)
    svc = roots("a")
    ref = f"{registry}/sbx/multiarch"
    assert svc.pull(ref) == amd_config
    assert svc.inspect(ref)["Architecture"] == "amd64"
    assert svc.inspect(ref)["RepoDigests"] == [f"{registry}/sbx/multiarch@{sha(index)}"]
    assert not svc.content.exists(arm_config)


def test_retry_after_a_dropped_connection(registry, roots, busybox_tar):
    a = roots("a")
    image_id = a.import_rootfs(busybox_tar, "sbx/retry:v1")
    size = a.get(image_id)["size"]
    # push: the first connection is reset while the layer is being sent
    proxy = CuttingProxy(registry, after=size // 2)
    try:
        ref = f"{proxy.address}/sbx/retry:v1"
        a.tag("sbx/retry:v1", ref)
        a.push(ref)
        assert proxy.cut == 1
    finally:
        proxy.close()
    # pull: the first connection is reset in the middle of the layer's body
    proxy = CuttingProxy(registry, after=size // 2)
    try:
        b = roots("b")
        assert b.pull(f"{proxy.address}/sbx/retry:v1") == image_id
        assert proxy.cut == 1
        assert b.content.exists(b.get(image_id)["doc"]["layers"][0]["digest"])
    finally:
        proxy.close()
    # every connection dropped: a clear error after the retries
    proxy = CuttingProxy(registry, after=size // 4, cuts=100)
    try:
        c = roots("c")
        with pytest.raises(Unavailable, match="connection lost"):
            c.pull(f"{proxy.address}/sbx/retry:v1")
        assert c.store.list_images() == [] and c.content.list() == []
    finally:
        proxy.close()


def test_save_load_round_trip_keeps_digests(roots, busybox_tar, tmp_path):
    a = roots("a")
    busy = a.import_rootfs(busybox_tar, "sbx/busybox:v1")
    blobs, manifest, multi = multi_layer_image()
    a.load(io.BytesIO(oci_layout_tar(blobs, [(manifest, "sbx/multi:v1")])))
    out = tmp_path / "saved.tar"
    with open(out, "wb") as f:
        a.save(["sbx/busybox:v1", "sbx/multi:v1"], f)
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    assert {"oci-layout", "index.json", "manifest.json"} <= names

    b = roots("b")
    events: list[dict] = []
    loaded = b.load(out, progress=events.append)
    assert loaded == [{"id": busy, "tags": ["sbx/busybox:v1"]},
                      {"id": multi, "tags": ["sbx/multi:v1"]}]
    assert events[-1]["status"] == "Extracting" and \
        any(e.get("current") == out.stat().st_size for e in events)
    for image_id in (busy, multi):
        assert b.get(image_id)["doc"]["manifest"] == a.get(image_id)["doc"]["manifest"]
        assert b.get(image_id)["doc"]["chain_ids"] == a.get(image_id)["doc"]["chain_ids"]
        assert b.inspect(image_id)["RootFS"] == a.inspect(image_id)["RootFS"]
    assert sorted(b.content.list()) == sorted(a.content.list())

    # a gzipped archive loads too, and loading again changes nothing
    gz = tmp_path / "saved.tar.gz"
    gz.write_bytes(gzip.compress(out.read_bytes(), compresslevel=1))
    snapshots = [i.key for i in b.snapshotter.walk()]
    assert [i["id"] for i in b.load(gz)] == [busy, multi]
    assert [i.key for i in b.snapshotter.walk()] == snapshots
    with pytest.raises(InvalidArgument, match="host image cannot be saved"):
        a.save(["host"], io.BytesIO())


def test_docker_archive_load(roots, tmp_path):
    """A ``docker save`` archive (pre-25 shape): <id>/layer.tar, <hex>.json config,
    manifest.json, a duplicate layer stored as a symlink."""
    layers = [layer_tar([("a.txt", b"first\n")], False),
              layer_tar([("b.txt", b"second\n")], False)]
    diff_ids = [sha(layers[0]), sha(layers[1]), sha(layers[0])]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("aaaa/layer.tar", layers[0])
        add("bbbb/layer.tar", layers[1])
        link = tarfile.TarInfo("cccc/layer.tar")
        link.type, link.linkname = tarfile.SYMTYPE, "../aaaa/layer.tar"
        tar.addfile(link)
        add(f"{sha(config)[7:]}.json", config)
        add("manifest.json", json.dumps([{
            "Config": f"{sha(config)[7:]}.json", "RepoTags": ["sbx/docker-saved:1"],
            "Layers": ["aaaa/layer.tar", "bbbb/layer.tar", "cccc/layer.tar"]}]).encode())
        add("repositories", b'{"sbx/docker-saved":{"1":"cccc"}}')
    svc = roots("a")
    assert svc.load(io.BytesIO(buf.getvalue())) == [
        {"id": sha(config), "tags": ["sbx/docker-saved:1"]}]
    image = svc.get("sbx/docker-saved:1")
    assert image["doc"]["chain_ids"] == oci.chain_ids(diff_ids)
    assert image["doc"]["warnings"] == []
    with merged_view(svc, image["id"], tmp_path / "sbx-docker") as root:
        assert sorted(p for p in os.listdir(root)) == ["a.txt", "b.txt"]

    # a blob that does not match its name stops the load and leaves nothing
    blobs, manifest, _ = image_docs([(layers[0], False)])
    layer_digest = sha(layers[0])
    blobs[layer_digest] = layers[1]
    other = roots("b")
    with pytest.raises(InvalidArgument, match="digest mismatch"):
        other.load(io.BytesIO(oci_layout_tar(blobs, [(manifest, "sbx/bad:1")])))
    assert other.content.list() == [] and other.store.list_images() == []
    with pytest.raises(InvalidArgument, match="neither index.json"):
        other.load(io.BytesIO(layer_tar([("x", b"y")], False)))


# ---------------------------------------------------------------- skopeo interop

SKOPEO = shutil.which("skopeo")
needs_skopeo = pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed "
                                                         "(apt-get install skopeo)")


def skopeo(*args: str) -> str:
    return subprocess.run([SKOPEO, "--insecure-policy", *args], check=True,
                          capture_output=True, text=True, timeout=60).stdout


@needs_skopeo
def test_skopeo_reads_what_sbx_pushed_and_sbx_loads_what_skopeo_wrote(
        registry, roots, tmp_path):
    blobs, manifest, config_digest = multi_layer_image()
    a = roots("a")
    a.load(io.BytesIO(oci_layout_tar(blobs, [(manifest, f"{registry}/sbx/skopeo:v1")])))
    ref = f"{registry}/sbx/skopeo:v1"
    digest = a.push(ref)["digest"]
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}"))
    assert info["Digest"] == digest
    assert info["Layers"] == [l["digest"] for l in json.loads(manifest)["layers"]]
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))
    assert raw == json.loads(manifest)

    # skopeo copies the image into an OCI layout tar and a docker-archive; both load
    layout = tmp_path / "skopeo-oci.tar"
    skopeo("copy", "--src-tls-verify=false", f"docker://{ref}",
           f"oci-archive:{layout}:{registry}/sbx/skopeo:from-oci")
    docker = tmp_path / "skopeo-docker.tar"
    skopeo("copy", "--src-tls-verify=false", f"docker://{ref}",
           f"docker-archive:{docker}:sbx/skopeo:from-docker")
    b = roots("b")
    assert b.load(layout) == [{"id": config_digest,
                               "tags": [f"{registry}/sbx/skopeo:from-oci"]}]
    assert b.load(docker) == [{"id": config_digest, "tags": ["sbx/skopeo:from-docker"]}]
    with merged_view(b, config_digest, tmp_path / "sbx-skopeo") as root:
        assert (root / "opaque" / "new.txt").read_text() == "fresh\n"
        assert not (root / "gone.txt").exists()

    # and skopeo reads sbx's own save (as an OCI layout and as a docker archive)
    saved = tmp_path / "sbx-saved.tar"
    with open(saved, "wb") as f:
        a.save([ref], f)
    assert json.loads(skopeo("inspect", f"oci-archive:{saved}"))["Digest"] == digest
    assert json.loads(skopeo("inspect", "--raw", f"docker-archive:{saved}"))["config"][
        "digest"] == config_digest
