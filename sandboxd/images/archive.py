"""Image archives: ``docker load`` / ``docker save`` for OCI image layouts and
``docker save`` tarballs.

Loading reads the tar as a stream (plain or compressed, any member order): every file
goes straight into the content store, ``blobs/sha256/<hex>`` checked against its name
as it is written, so nothing is unpacked to a temporary tree and a corrupt blob stops
the load. Once the stream ends, the images are found from

- ``index.json`` (an OCI image layout: https://github.com/opencontainers/image-spec,
  ``image-layout.md``): each entry a manifest, or an index from which the linux entry
  for this machine is taken; named by its ``io.containerd.image.name`` annotation, or
  ``org.opencontainers.image.ref.name`` when that is a full reference (a bare tag
  names no repository, and the image stays untagged);
- else ``manifest.json`` (``docker save``): ``[{Config, RepoTags, Layers}]`` with the
  layers as tar files (``<id>/layer.tar``, or ``blobs/sha256/<hex>`` since Docker 25;
  duplicate layers may be symlinks to each other). A manifest is made for each.

and added through the service's ``add_image`` (each layer unpacked once, by chain
id). Blobs the load stored that no image ends up using are deleted.

Saving writes one tar that is both an OCI layout and a ``docker save`` archive (as
Docker 25 does): ``oci-layout``, ``index.json``, ``manifest.json`` and
``blobs/sha256/*`` holding each image's manifest, config and layers exactly as stored,
so a save then a load gives back the same image id and manifest digest.
"""
from __future__ import annotations

import contextlib
import io
import json
import posixpath
import re
import tarfile
from contextlib import AbstractContextManager
from typing import Any, BinaryIO, Callable, Iterable, Protocol, Sequence

from .. import untrusted_json
from ..errors import InvalidArgument, NotFound
from ..reference import normalize_ref
from ..reference import parse as parse_ref
from ..store import ContentStore
from . import oci
from .unpack import detect_compression

Progress = Callable[[dict[str, Any]], None]

_METADATA = {"index.json", "oci-layout", "manifest.json", "repositories"}
_MAX_METADATA = 16 << 20            # an index.json or manifest.json beyond this is no image
_BLOB = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")
_MAX_LINKS = 8
LAYOUT_VERSION = "1.0.0"


class _Archive:
    """What the stream held: metadata documents by name, other files by name ->
    ``(digest, size)`` in the content store, symlinks by name -> target."""

    def __init__(self) -> None:
        self.metadata: dict[str, bytes] = {}
        self.files: dict[str, tuple[str, int]] = {}
        self.links: dict[str, str] = {}

    def blob(self, name: str, what: str) -> tuple[str, int]:
        """The stored blob for the file ``name`` (following symlinks in the archive)."""
        path = _clean(name)
        for _ in range(_MAX_LINKS):
            if path in self.files:
                return self.files[path]
            if path not in self.links:
                break
            path = self.links[path]
        raise InvalidArgument(f"the archive lacks {name!r} ({what})")

    def json(self, name: str) -> Any:
        try:
            return untrusted_json.loads(self.metadata[name])
        except ValueError:
            raise InvalidArgument(f"the archive's {name} is not valid JSON") from None


class ImageStore(Protocol):
    """What loading and saving archives needs of the image service
    (:class:`~sandboxd.images.service.ImageService` is one)."""

    content: ContentStore
    lock: AbstractContextManager[Any]       # held while images are looked up or recorded

    def get(self, ref: str) -> dict[str, Any]: ...

    def keeping(self, digests: Iterable[str] = (), *, blind: bool = False
                ) -> AbstractContextManager[None]:
        """No blob of ``digests`` (with ``blind``: none at all) is deleted meanwhile."""

    def delete_unused_blobs(self, digests: Iterable[str]) -> None: ...

    def add_image(self, config_digest: str, manifest_digest: str,
                  layers: list[dict[str, Any]], *, tags: Sequence[str] = (),
                  repo_digests: Sequence[str] = (), progress: Progress | None = None,
                  extra: dict[str, Any] | None = None) -> str:
        """Record an image whose blobs are stored; its id."""


def _clean(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


def load(svc: ImageStore, src: BinaryIO, *,
         progress: Progress | None = None) -> list[dict[str, Any]]:
    """Load every image of an OCI layout or ``docker save`` tarball (a binary stream,
    plain or compressed). Returns ``[{"id", "tags"}]`` in archive order. The archive
    is read and its layers unpacked without the service's lock (no blob is deleted
    meanwhile: ``keeping``); each image is recorded with it."""
    archive = _Archive()
    stored: set[str] = set()
    with svc.keeping(blind=True):
        try:
            try:
                with tarfile.open(fileobj=src, mode="r|*") as tar:
                    for member in tar:
                        _take(svc, archive, stored, tar, member)
            except (tarfile.TarError, EOFError) as e:
                raise InvalidArgument(f"not a valid image archive (tar): {e}") from None
            # without the lock: the images' layers are unpacked as they are added
            if "index.json" in archive.metadata:
                return _load_layout(svc, archive, progress)
            if "manifest.json" in archive.metadata:
                return _load_docker(svc, archive, progress)
            raise InvalidArgument("not an image archive: it has neither index.json (an OCI "
                                  "image layout) nor manifest.json (docker save)")
        finally:
            svc.delete_unused_blobs(stored)


def _take(svc: ImageStore, archive: _Archive, stored: set[str], tar: tarfile.TarFile,
          member: tarfile.TarInfo) -> None:
    name = _clean(member.name)
    if member.issym() or member.islnk():
        target = member.linkname if member.islnk() else \
            posixpath.join(posixpath.dirname(name), member.linkname)
        archive.links[name] = _clean(target)
        return
    if not member.isfile():
        return
    f = tar.extractfile(member)
    assert f is not None
    if name in _METADATA:
        if member.size > _MAX_METADATA:
            raise InvalidArgument(f"the archive's {name} is {member.size} bytes: too large "
                                  f"for image metadata")
        archive.metadata[name] = f.read()
        return
    m = _BLOB.match(name)
    # Files under blobs/ are checked against their names; the rest (docker save's
    # <id>/layer.tar, <hex>.json) are named by what they hash to.
    digest, size = svc.content.ingest(f, expected_digest=f"sha256:{m.group(1)}" if m else None,
                                      expected_size=member.size)
    stored.add(digest)
    archive.files[name] = (digest, size)


def _load_layout(svc: ImageStore, archive: _Archive,
                 progress: Progress | None) -> list[dict[str, Any]]:
    index = archive.json("index.json")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise InvalidArgument("the archive's index.json has no manifests list")
    # Docker 25 archives carry manifest.json too; its RepoTags name the same configs.
    docker_tags: dict[str, list[str]] = {}
    if "manifest.json" in archive.metadata:
        for entry in _docker_entries(archive):
            config, _ = archive.blob(entry["Config"], "an image config")
            docker_tags.setdefault(config, []).extend(entry.get("RepoTags") or [])
    images: dict[str, list[str]] = {}
    for i, desc in enumerate(index["manifests"]):
        manifest_digest, manifest = _resolve(svc, desc, f"index.json entry {i}")
        config = manifest["config"]["digest"]
        layers = []
        for n, layer in enumerate(manifest["layers"]):
            if not svc.content.exists(layer["digest"]):
                raise InvalidArgument(f"the archive lacks blob {layer['digest']} (layer "
                                      f"{n} of index.json entry {i})")
            layers.append({"digest": layer["digest"], "size": layer["size"],
                           "media_type": layer.get("mediaType", oci.MEDIA_LAYER)})
        tags = [t for t in (_layout_name(desc), *docker_tags.get(config, [])) if t]
        tags = list(dict.fromkeys(normalize_ref(t) for t in tags))
        image_id = svc.add_image(config, manifest_digest, layers, tags=tags,
                                  progress=progress)
        images.setdefault(image_id, [])
        images[image_id] += [t for t in tags if t not in images[image_id]]
    return [{"id": k, "tags": v} for k, v in images.items()]


def _resolve(svc: ImageStore, desc: Any, what: str) -> tuple[str, dict[str, Any]]:
    """``(digest, manifest)`` for an index.json entry, through nested indexes."""
    for _ in range(_MAX_LINKS):
        if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
            raise InvalidArgument(f"{what}: not a descriptor with a digest")
        try:
            doc = untrusted_json.loads(svc.content.read(desc["digest"]))
        except NotFound:
            raise InvalidArgument(f"the archive lacks blob {desc['digest']} ({what})") \
                from None
        except ValueError:
            raise InvalidArgument(f"{what}: blob {desc['digest']} is not JSON") from None
        if oci.media_type(doc) not in oci.INDEXES:
            return desc["digest"], oci.check_manifest(doc, what)
        entry = oci.pick_platform(doc)
        if entry is None:
            raise InvalidArgument(f"{what}: no image for linux/{oci.architecture()} in its "
                                  f"index")
        desc = entry
    raise InvalidArgument(f"{what}: indexes nested more than {_MAX_LINKS} deep")


def _layout_name(desc: dict[str, Any]) -> str | None:
    notes = desc.get("annotations") or {}
    for name in (notes.get(oci.ANNOTATION_IMAGE_NAME), notes.get(oci.ANNOTATION_REF_NAME)):
        # A bare tag ("latest", "v1") names no repository: not usable as a name here.
        if name and ("/" in name or ":" in name):
            try:
                return normalize_ref(name)
            except InvalidArgument:
                continue
    return None


def _docker_entries(archive: _Archive) -> list[dict[str, Any]]:
    entries = archive.json("manifest.json")
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("Config"), str)
            and isinstance(e.get("Layers"), list) for e in entries):
        raise InvalidArgument("the archive's manifest.json is not a list of "
                              "{Config, RepoTags, Layers}")
    return entries


def _load_docker(svc: ImageStore, archive: _Archive,
                 progress: Progress | None) -> list[dict[str, Any]]:
    out = []
    for i, entry in enumerate(_docker_entries(archive)):
        config, config_size = archive.blob(entry["Config"], f"config of image {i}")
        layers = []
        for n, name in enumerate(entry["Layers"]):
            digest, size = archive.blob(name, f"layer {n} of image {i}")
            with svc.content.open(digest) as f:
                kind = detect_compression(f.read(6))
            media = {"gzip": oci.MEDIA_LAYER_GZIP, "zstd": oci.MEDIA_LAYER_ZSTD,
                     "": oci.MEDIA_LAYER}.get(kind)
            if media is None:
                raise InvalidArgument(f"manifest.json image {i} layer {n}: {kind} "
                                      f"compression has no OCI media type")
            layers.append({"digest": digest, "size": size, "media_type": media})
        manifest = oci.manifest(config, config_size,
                                [(l["media_type"], l["digest"], l["size"]) for l in layers])
        manifest_digest, _ = svc.content.ingest(oci.canonical(manifest))
        tags = list(dict.fromkeys(normalize_ref(t) for t in entry.get("RepoTags") or []))
        image_id = svc.add_image(config, manifest_digest, layers, tags=tags,
                                  progress=progress)
        out.append({"id": image_id, "tags": tags})
    return out


# ---------------------------------------------------------------- save

def save(svc: ImageStore, refs: Iterable[str], out: BinaryIO) -> None:
    """Write the images ``refs`` name (tags or ids) to ``out`` as one tar stream, an OCI
    layout that is also a ``docker save`` archive. A tag is recorded as the image's name;
    an image given by id is saved unnamed. The tar is written without the service's
    lock, its blobs kept from deletion meanwhile."""
    index: list[dict[str, Any]] = []
    docker: list[dict[str, Any]] = []
    blobs: dict[str, None] = {}
    with contextlib.ExitStack() as stack:
        with svc.lock:
            for ref in refs:
                image = svc.get(ref)
                if image["doc"].get("host"):
                    raise InvalidArgument("the built-in host image cannot be saved: it is the "
                                          "host's own files")
                doc = image["doc"]
                tag = _tag_or_none(ref)
                if tag not in image["tags"]:
                    tag = None
                manifest = json.loads(svc.content.read(doc["manifest"]))
                desc: dict[str, Any] = {"mediaType": oci.media_type(manifest),
                                        "digest": doc["manifest"],
                                        "size": svc.content.size(doc["manifest"])}
                if tag:           # the full name, as containerd and Docker write it
                    desc["annotations"] = {oci.ANNOTATION_IMAGE_NAME: str(parse_ref(tag)),
                                           oci.ANNOTATION_REF_NAME: tag.rpartition(":")[2]}
                index.append(desc)
                layers = [layer["digest"] for layer in doc["layers"]]
                docker.append({"Config": _blob_path(image["id"]),
                               "RepoTags": [tag] if tag else None,
                               "Layers": [_blob_path(d) for d in layers]})
                for digest in (*layers, image["id"], doc["manifest"]):
                    blobs[digest] = None
            stack.enter_context(svc.keeping(blobs))
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "oci-layout", json.dumps(
                {"imageLayoutVersion": LAYOUT_VERSION}).encode())
            for d in ("blobs/", "blobs/sha256/"):
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            for digest in blobs:
                info = tarfile.TarInfo(_blob_path(digest))
                info.size, info.mode = svc.content.size(digest), 0o644
                with svc.content.open(digest) as f:
                    tar.addfile(info, f)
            _add_bytes(tar, "index.json", json.dumps(
                {"schemaVersion": 2, "mediaType": oci.MEDIA_INDEX,
                 "manifests": index}).encode())
            _add_bytes(tar, "manifest.json", json.dumps(docker).encode())


def _tag_or_none(ref: str) -> str | None:
    try:
        return normalize_ref(ref)
    except InvalidArgument:
        return None


def _blob_path(digest: str) -> str:
    return "blobs/sha256/" + digest.partition(":")[2]


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))
