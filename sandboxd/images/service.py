"""Images: import, look up, inspect, remove, and prepare a container's root from one.

An image record (``Store`` table ``images``) is keyed by its config digest and keeps, in
its ``doc``::

    manifest   digest of the OCI manifest blob
    config     the OCI image config (also stored as a blob; kept here for fast reads)
    layers     [{digest, diff_id, size, media_type}], bottom first
    chain_ids  the committed snapshot of each layer, bottom first
    warnings   entries an unpack refused ("name: reason"), at most 100

Blobs live in the content store; each layer is unpacked once into a committed snapshot
keyed by its chain id and shared by every image with the same layers below it.

``host`` (:mod:`sandboxd.images.host`) is built in: always listed, never stored,
never removed; its root is a skeleton lower plus read-only binds (:meth:`image_mounts`).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import os
import secrets
import shutil
import tarfile
import tempfile
import threading
from collections import Counter
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, Iterator, Sequence

from .. import untrusted_json
from ..errors import Conflict, InvalidArgument, NotFound, Unavailable
from ..reference import DEFAULT_DOMAIN, Reference, normalize_ref, split_ref
from ..reference import parse as parse_ref
from ..health import from_image
from ..runner.spec import DEFAULT_PATH, Mount, RootFS, to_dict
from . import archive, changes, oci
from .host import HOST_NAME, HOST_REF, HostLayout, host_image_config, host_layout, host_rootfs
from .registry import DEFAULT_CHUNK, Credentials, Registries, RegistryClient
from .unpack import apply_layer, uncompressed
from .view import LayerView

if TYPE_CHECKING:
    from ..snapshots import Snapshotter
    from ..store import ContentStore, Store

log = logging.getLogger(__name__)
# Container states in which an image is in active use: `remove(force=True)` still refuses.
RUNNING_STATES = frozenset(("running", "paused", "restarting"))
EXTRACT_LABEL = "sandboxd.extract"
WARNINGS_LABEL = "sandboxd.unpack.warnings"
SIZE_LABEL = "sandboxd.unpack.size"
# Progress events, in the shape of Docker's JSON messages: {"status", "id"?,
# "current"?, "total"?}; "id" is a short layer digest.
Progress = Callable[[dict[str, Any]], None]
_MAX_WARNINGS = 100
# Docker's media type of a gzip layer -> the OCI one (a commit's manifest is OCI).
_OCI_LAYER = {oci.DOCKER_LAYER_GZIP: oci.MEDIA_LAYER_GZIP}


@lru_cache(maxsize=256)
def _names_host(ref: str) -> bool:
    """Whether a reference names the host image (``host``, ``host:latest`` ...): every
    start asks, almost always of the same few names."""
    try:
        return split_ref(ref)[0] == HOST_NAME and normalize_ref(ref) == HOST_REF
    except InvalidArgument:
        return False


class ImageService:
    """Images on top of a :class:`Store`, a :class:`ContentStore` and a
    :class:`Snapshotter`. ``host_root`` holds the host image's skeleton (default
    ``<snapshotter root>/host``). Blocking (it unpacks and hashes files): call it from a
    worker thread in the daemon. A lock guards the records and snapshots (commits of
    layers, removals, container roots); transfers (registry pulls and pushes, reading
    an archive, writing a save) and layer unpacks run without it, their blobs kept
    from deletion meanwhile (:meth:`keeping`) and their layers from pruning
    (:meth:`_pinning`), so neither a slow registry nor a big layer holds up a
    container's start or removal."""

    def __init__(self, store: Store, content: ContentStore, snapshotter: Snapshotter,
                 host_root: Path | None = None):
        self.store = store
        self.content = content
        self.snapshotter = snapshotter
        self.host_root = Path(host_root) if host_root else snapshotter.root / "host"
        self.credentials = Credentials(store.root / "auth.json")
        # Mirrors, insecure registries, Docker Hub's endpoint (the daemon's settings).
        self.registries = Registries()
        # Blobs larger than this are pushed in PATCH chunks.
        self.chunk_size = DEFAULT_CHUNK
        self.lock = threading.RLock()
        # Blobs transfers running without the lock read or write (digest -> how many),
        # and how many transfers write blobs whose digests are not known up front:
        # deletions they would race are put off until they end (_deferred).
        self._inflight: Counter[str] = Counter()
        self._blind = 0
        self._deferred: set[str] = set()
        # Roots with a tmpfs upper keep no snapshot: container key -> the chain id it
        # stands on, so that prune_snapshots leaves that chain alone while it runs.
        self._pins: dict[str, str] = {}
        self._prune_pending = False
        # image id -> (chain id of its top layer, lowerdirs top first) for those roots.
        self._lowerdirs: dict[str, tuple[str, tuple[str, ...]]] = {}
        # image id -> (runtime config, extra mounts): an id names immutable content.
        self._by_id: dict[str, tuple[dict[str, Any], tuple[Mount, ...]]] = {}

    # ------------------------------------------------------------ the host image

    @cached_property
    def _host(self) -> tuple[dict[str, Any], Path, tuple[Mount, ...]]:
        layout: HostLayout = host_layout()
        skeleton, mounts = host_rootfs(self.host_root, layout)
        created = skeleton.stat().st_mtime
        config = host_image_config(layout, oci.rfc3339(created))
        # The id names the content, not the moment: the config without its timestamps,
        # plus what is bound in.
        stable = {**config, "created": "", "history": [],
                  "mounts": [m.destination for m in mounts]}
        image_id = "sha256:" + hashlib.sha256(oci.canonical(stable)).hexdigest()
        record = {"id": image_id, "created": created, "size": 0, "tags": [HOST_REF],
                  "doc": {"host": True, "config": config, "layers": [], "chain_ids": [],
                          "mounts": [dataclasses.asdict(m) for m in mounts]}}
        return record, skeleton, mounts

    @property
    def host_id(self) -> str:
        return self._host[0]["id"]

    def _is_host_ref(self, ref: str) -> bool:
        host_id = self.host_id
        return ref == host_id or ref == host_id[len("sha256:"):] or _names_host(ref)

    # ------------------------------------------------------------ lookups

    def get(self, ref: str) -> dict[str, Any]:
        """The image record for a tag (implicit ``:latest``), full id or unique id
        prefix: ``{id, created, size, tags, doc}``. ``NotFound`` when none matches."""
        if self._is_host_ref(ref):
            return copy.deepcopy(self._host[0])
        image = self.store.get_image(ref)
        if image is None:
            raise _missing(ref)
        return image

    def image_id(self, ref: str) -> str:
        """What ``get(ref)["id"]`` is, without reading the image's record (a start
        needs only the id: its runtime config is cached by id)."""
        if self._is_host_ref(ref):
            return self.host_id
        image_id = self.store.image_id(ref)
        if image_id is None:
            raise _missing(ref)
        return image_id

    def list(self) -> list[dict[str, Any]]:
        """Every image, the built-in host image first, then newest first."""
        return [copy.deepcopy(self._host[0]), *self.store.list_images()]

    def config(self, ref: str) -> dict[str, Any]:
        """The runtime defaults of an image (OCI config's ``config``: Env, Cmd,
        Entrypoint, WorkingDir, User ...)."""
        return copy.deepcopy(self._runtime(ref)[0])

    def _runtime(self, ref: str) -> tuple[dict[str, Any], tuple[Mount, ...]]:
        """(runtime config, :meth:`image_mounts`) of an image; cached for a full id,
        which names the same content until the image is removed."""
        cached = self._by_id.get(ref)
        if cached is not None:
            return cached
        with self.lock:                       # not across a removal
            image = self.get(ref)
            found = (dict(image["doc"]["config"].get("config") or {}),
                     self._host[2] if image["doc"].get("host") else ())
            if ref == image["id"]:
                self._by_id[ref] = found
        return found

    def inspect(self, ref: str) -> dict[str, Any]:
        """Docker's ``image inspect`` shape."""
        image = self.get(ref)
        config = image["doc"]["config"]
        out = {
            "Id": image["id"],
            "RepoTags": list(image["tags"]),
            "RepoDigests": list(image["doc"].get("repo_digests", [])),
            "Created": config.get("created") or oci.rfc3339(image["created"]),
            "Size": image["size"],
            "Architecture": config.get("architecture", ""),
            "Os": config.get("os", ""),
            "Config": dict(config.get("config") or {}),
            "RootFS": {"Type": "layers", "Layers": list(config["rootfs"]["diff_ids"])},
            "History": list(config.get("history") or []),
        }
        if image["doc"].get("host"):
            out["RootFS"] = {"Type": "host", "Layers": [],
                             "Mounts": [m["destination"] for m in image["doc"]["mounts"]]}
        return out

    def record(self, ref: str) -> dict[str, Any]:
        """The image as ``sandboxd.model.ImageRecord`` fields (what ``image.list`` and
        ``image.inspect`` return over the wire)."""
        image = self.get(ref)
        config = image["doc"]["config"]
        run = config.get("config") or {}
        history = config.get("history") or [{}]
        return {
            "id": image["id"],
            "repo_tags": list(image["tags"]),
            "created": image["created"],
            "size": image["size"],
            "architecture": config.get("architecture", ""),
            "os": config.get("os", ""),
            "layers": list(config["rootfs"]["diff_ids"]),
            "comment": history[-1].get("comment", ""),
            "env": list(run.get("Env") or []),
            "cmd": list(run.get("Cmd") or []),
            "entrypoint": list(run.get("Entrypoint") or []),
            "workdir": run.get("WorkingDir") or "",
            "user": run.get("User") or "",
            "exposed_ports": sorted(run.get("ExposedPorts") or {}),
            "labels": [f"{k}={v}" for k, v in sorted((run.get("Labels") or {}).items())],
            "healthcheck": to_dict(from_image(run.get("Healthcheck"))),
        }

    def history(self, ref: str) -> list[dict[str, Any]]:
        """``image.history``: one row per history entry, newest first; each image a
        build made on the way (and its base) owns the rows up to its own."""
        image = self.get(ref)
        config = image["doc"]["config"]
        sizes = iter(self.layer_sizes(image))
        rows = []
        for entry in config.get("history") or []:
            empty = bool(entry.get("empty_layer"))
            rows.append({"id": "", "created": oci.parse_time(entry.get("created", "")) or 0.0,
                         "created_by": entry.get("created_by", ""),
                         "comment": entry.get("comment", ""), "tags": [],
                         "size": 0 if empty else next(sizes, 0)})
        current: dict[str, Any] | None = image
        while current is not None and rows:
            count = len(current["doc"]["config"].get("history") or [])
            if 0 < count <= len(rows):
                rows[count - 1].update(id=current["id"], tags=list(current["tags"]))
            parent = (current["doc"].get("build") or {}).get("parent")
            current = self.store.get_image(parent) if parent else None
        rows.reverse()                    # newest first, as Docker lists them
        if rows:
            rows[0].update(id=image["id"], tags=list(image["tags"]))
        return rows

    def layer_sizes(self, image: dict[str, Any]) -> list[int]:
        """Each layer's unpacked size (kept on its snapshot), bottom first."""
        sizes = []
        for chain, layer in zip(image["doc"].get("chain_ids", []),
                                image["doc"].get("layers", [])):
            try:
                labels = self.snapshotter.stat(chain).labels
                sizes.append(int(labels.get(SIZE_LABEL, layer["size"])))
            except NotFound:
                sizes.append(int(layer["size"]))
        return sizes

    # ------------------------------------------------------------ import

    def import_rootfs(self, src: str | os.PathLike[str] | BinaryIO, ref: str | None = None,
                      *, message: str = "", runtime: dict[str, Any] | None = None,
                      progress: Callable[[int], None] | None = None) -> str:
        """``docker import``: the tarball (path or binary stream; plain, gzip, zstd, xz,
        bzip2) becomes a one-layer image. Returns the image id; tags it ``ref`` if given.

        The layer is stored uncompressed (its digest is then its diff_id) and unpacked
        once into the committed snapshot named by its chain id; importing the same tar
        again reuses that snapshot. ``runtime`` is its config's ``config`` (default: PATH
        alone). Unsafe entries are skipped, not fatal: their reasons
        are in ``get(id)["doc"]["warnings"]``. ``progress(bytes read so far)`` is called
        as the source is read.
        """
        if ref is not None:
            ref = normalize_ref(ref)
            if split_ref(ref)[0] == HOST_NAME:
                raise InvalidArgument(f"image name {HOST_NAME!r} belongs to the built-in host "
                                      f"image; choose another name")
        with self.keeping(blind=True), contextlib.ExitStack() as stack:
            raw = src
            if isinstance(src, (str, os.PathLike)):
                raw = stack.enter_context(open(src, "rb"))
            with uncompressed(_Counting(raw, progress) if progress else raw) as stream:
                diff_id, size = self.content.ingest(stream)
            pin = stack.enter_context(self._pinning())
            try:
                chain, warnings, _ = self._unpack_layer(diff_id, diff_id, None, pin)
            except BaseException:
                self.delete_unused_blobs([diff_id])
                raise
            stack.enter_context(self.lock)
            created = oci.now_rfc3339()
            extra = dict(runtime or {"Env": [f"PATH={DEFAULT_PATH}"]})
            config = oci.image_config(
                [diff_id], created=created, env=extra.pop("Env", []),
                cmd=extra.pop("Cmd", None), extra=extra,
                history=[{"created": created, "created_by": "sbx import",
                          **({"comment": message} if message else {})}])
            config_digest, config_size = self.content.ingest(oci.canonical(config))
            manifest = oci.manifest(config_digest, config_size,
                                    [(oci.MEDIA_LAYER, diff_id, size)])
            manifest_digest, _ = self.content.ingest(oci.canonical(manifest))
            doc = {"manifest": manifest_digest, "config": config,
                   "layers": [{"digest": diff_id, "diff_id": diff_id, "size": size,
                               "media_type": oci.MEDIA_LAYER}],
                   "chain_ids": [chain], "warnings": warnings}
            with self.store.transaction():
                if self.store.get_image(config_digest) is None:
                    self.store.put_image(config_digest, doc, size)
                if ref is not None:
                    self.store.tag(ref, config_digest)
        return config_digest

    @contextlib.contextmanager
    def _pinning(self) -> Iterator[str]:
        """A pin for an image being added: :meth:`_unpack_layer` points it at the top
        layer unpacked so far, which (with every layer under it) no prune removes
        until the block ends (the image is recorded by then, or the add failed)."""
        pin = f"add-{secrets.token_hex(8)}"
        try:
            yield pin
        finally:
            with self.lock:
                if self._pins.pop(pin, None) is not None and self._prune_pending:
                    self.prune_snapshots()

    def _unpack_layer(self, blob: str, diff_id: str, parent: str | None, pin: str,
                      progress: Callable[[int], None] | None = None
                      ) -> tuple[str, list[str], int]:
        """Make sure the committed snapshot for this layer exists; returns its chain id,
        the entries its unpack refused and the layer's uncompressed size (both kept in
        the snapshot's labels for reuse). ``pin`` (:meth:`_pinning`) keeps it.

        The unpack itself runs without the lock, so a big layer holds up no container
        start: it goes into an active ``extract-`` snapshot on ``parent`` (whose child
        it is, so no prune removes the parent meanwhile), committed under its chain id
        with the lock held; when another add committed that chain first, it is
        dropped and theirs used. ``progress(bytes of the blob read)`` as it unpacks.
        Call without the lock held."""
        chain = oci.chain_id(parent, diff_id)
        with self.lock:
            if self.snapshotter.exists(chain):
                self._pins[pin] = chain
                return (chain, *self._layer_stats(chain))
            key = f"extract-{secrets.token_hex(8)}-{chain}"
            self.snapshotter.prepare(key, parent, labels={EXTRACT_LABEL: chain})
        try:
            with self.content.open(blob) as f:
                stats = apply_layer(_Counting(f, progress, 1 << 20) if progress else f,
                                    self.snapshotter.path(key))
            if stats.diff_id != diff_id:
                raise InvalidArgument(f"layer {blob}: its content hashes to {stats.diff_id}, "
                                      f"not the expected diff_id {diff_id}")
            warnings = [f"{name}: {why}" for name, why in stats.skipped[:_MAX_WARNINGS]]
            with self.lock:
                if self.snapshotter.exists(chain):        # another add was quicker
                    self.snapshotter.remove(key)
                    self._pins[pin] = chain
                    return (chain, *self._layer_stats(chain))
                self.snapshotter.commit(chain, key, labels={
                    WARNINGS_LABEL: json.dumps(warnings), SIZE_LABEL: str(stats.size)})
                self._pins[pin] = chain
        except BaseException:
            with self.lock:
                if self.snapshotter.exists(key):
                    self.snapshotter.remove(key)
            raise
        return chain, warnings, stats.size

    def _layer_stats(self, chain: str) -> tuple[list[str], int]:
        """(refused entries, unpacked size) of a committed layer, from its labels."""
        labels = self.snapshotter.stat(chain).labels
        size = int(labels[SIZE_LABEL]) if SIZE_LABEL in labels else \
            self.snapshotter.usage(chain)[0]
        return json.loads(labels.get(WARNINGS_LABEL, "[]")), size

    def add_image(self, config_digest: str, manifest_digest: str,
                  layers: list[dict[str, Any]], *, tags: Sequence[str] = (),
                  repo_digests: Sequence[str] = (), progress: Progress | None = None,
                  layer_done: str | None = None, extra: dict[str, Any] | None = None
                  ) -> str:
        """Record an image whose config, manifest and layer blobs are in the content
        store (``layers``: ``[{digest, size, media_type}]``, bottom first): unpack each
        layer once (by chain id), record the image, point ``tags`` at it and add
        ``repo_digests``. An image with this id already recorded keeps its manifest and
        gains the tags and digests. Blobs of a failed add that no image uses are
        deleted. ``progress`` gets ``Extracting`` events per layer (bytes read of its
        blob as ``current``/``total``), then ``layer_done`` (a pull's ``Pull complete``)
        if given. Call without ``self.lock`` held: layers are unpacked without it
        (:meth:`_unpack_layer`), the image is recorded with it."""
        try:
            config = untrusted_json.loads(self.content.read(config_digest))
            diff_ids = config["rootfs"]["diff_ids"]
            if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
                raise InvalidArgument(f"image {config_digest[7:19]}: the config lists "
                                      f"{len(diff_ids)} layers, the manifest {len(layers)}")
            problems = oci.runtime_problems(config.get("config"))
            if problems:           # refused as dockerd's typed decode refuses them
                raise InvalidArgument(f"image config {config_digest[7:19]}: "
                                      f"{'; '.join(problems)}")
        except (ValueError, KeyError, TypeError):
            raise InvalidArgument(f"image config {config_digest}: not an OCI image config "
                                  f"(JSON with rootfs.diff_ids)") from None
        candidate = {"id": config_digest,
                     "doc": {"manifest": manifest_digest, "layers": layers}}
        with self._pinning() as pin:
            try:
                chain: str | None = None
                chains: list[str] = []
                warnings: list[str] = []
                size = 0
                for layer, diff_id in zip(layers, diff_ids):
                    short = _short(layer["digest"])
                    counted = None
                    if progress:
                        progress({"id": short, "status": "Extracting"})
                        # called during this iteration's unpack only: short, layer current
                        counted = (lambda n: progress({"id": short, "status": "Extracting",
                                                       "current": n,
                                                       "total": layer["size"]}))
                    chain, more, n = self._unpack_layer(layer["digest"], diff_id, chain, pin,
                                                        counted)
                    if progress and layer_done:
                        progress({"id": short, "status": layer_done})
                    chains.append(chain)
                    warnings += more
                    size += n
                doc = {"manifest": manifest_digest, "config": config,
                       "layers": [{**layer, "diff_id": d}
                                  for layer, d in zip(layers, diff_ids)],
                       "chain_ids": chains, "warnings": warnings[:_MAX_WARNINGS],
                       "repo_digests": list(dict.fromkeys(repo_digests)), **(extra or {})}
                with self.lock, self.store.transaction():
                    existing = self.store.get_image(config_digest)
                    if existing is None:
                        self.store.put_image(config_digest, doc, size,
                                             created=oci.parse_time(config.get("created", "")))
                    else:
                        self._add_repo_digests(existing, repo_digests)
                    for tag in tags:
                        self.store.tag(tag, config_digest)
            except BaseException:
                self.delete_unused_blobs(_blobs_of(candidate))   # those no image uses
                raise
        if existing is not None:
            self.delete_unused_blobs(_blobs_of(candidate))   # e.g. an unneeded manifest
        return config_digest

    def _add_repo_digests(self, image: dict[str, Any], digests: Sequence[str]) -> None:
        """Record ``name@sha256:...`` entries (one per repository, the newest wins)."""
        doc = image["doc"]
        names = {d.partition("@")[0] for d in digests}
        kept = [d for d in doc.get("repo_digests", []) if d.partition("@")[0] not in names]
        merged = list(dict.fromkeys([*kept, *digests]))
        if merged != doc.get("repo_digests", []):
            self.store.update_image(image["id"], {**doc, "repo_digests": merged})

    # ------------------------------------------------------------ commit

    def commit(self, container_key: str, image_id: str, ref: str | None = None, *,
               message: str = "", created_by: str = "",
               runtime: dict[str, Any] | None = None) -> str:
        """``docker commit``: the writable layer of the container ``container_key``
        (its active snapshot, made by :meth:`prepare_rootfs`) becomes a new layer on top
        of its image ``image_id``: the image's config with the new diff_id and a history
        entry (``created_by``, ``comment``: ``message``). Returns the new image id; tags
        it ``ref`` if given; its runtime config is ``runtime`` (default: the image's). A
        container that has not started yet (no snapshot) or has a read-only root (a
        view) adds an empty layer, as in Docker. A container whose upper is a tmpfs
        (``--rm``) keeps no snapshot: the caller refuses it."""
        history = {"created_by": created_by, **({"comment": message} if message else {})}
        return self.derive(image_id, history=history, upper=container_key, ref=ref,
                           runtime=runtime)

    def derive(self, image_id: str, *, history: dict[str, Any],
               runtime: dict[str, Any] | None = None, upper: str | None = None,
               layer: BinaryIO | None = None, build: dict[str, str] | None = None,
               ref: str | None = None) -> str:
        """A new image on top of ``image_id``: its config with ``runtime`` (the OCI
        ``config`` part; default: the parent's) and one more ``history`` entry, plus a
        layer made from the container snapshot ``upper`` (``sbx commit``, a build's RUN)
        or the plain tar ``layer`` (a build's COPY; a seekable file at offset 0); with
        neither, an empty-layer (config only) step. ``build`` (``{"parent", "key"}``)
        records a build step for the layer cache (:meth:`cached`). Tagged ``ref`` if
        given; returns the new image id."""
        if ref is not None:
            ref = normalize_ref(ref)
            if split_ref(ref)[0] == HOST_NAME:
                raise InvalidArgument(f"image name {HOST_NAME!r} belongs to the built-in host "
                                      f"image; choose another name")
        with self.keeping(blind=True), contextlib.ExitStack() as stack:
            with self.lock:
                parent = self.get(image_id)
                if parent["doc"].get("host"):
                    raise InvalidArgument("the built-in host image cannot be a parent: its "
                                          "root is the host's own files, not layers")
                source: Path | None = None
                if upper is not None and self.snapshotter.exists(upper):
                    info = self.snapshotter.stat(upper)
                    if info.kind == "active":
                        source = self.snapshotter.path(upper)
                # the parent's blobs: the new manifest names them
                stack.enter_context(self.keeping(_blobs_of(parent)))
            diff: tuple[str, int] | None = None
            if upper is not None or layer is not None:
                spool = layer
                if spool is None:
                    spool = stack.enter_context(tempfile.TemporaryFile(dir=self.content.root))
                    try:
                        if source is not None:
                            changes.write_upper(source, spool)
                        else:
                            with tarfile.open(fileobj=spool, mode="w|",
                                              format=tarfile.PAX_FORMAT):
                                pass
                    except FileNotFoundError:
                        raise Conflict(f"container {upper[:12]} was removed while it was "
                                       f"being committed") from None
                    spool.seek(0)
                diff = self.content.ingest(spool)
            config = copy.deepcopy(parent["doc"]["config"])
            created = oci.now_rfc3339()
            config["created"] = created
            if runtime is not None:
                config["config"] = copy.deepcopy(runtime)
            entry = {"created": created, **history}
            if diff is None:
                entry["empty_layer"] = True
            else:
                config["rootfs"] = {"type": "layers",
                                    "diff_ids": [*config["rootfs"]["diff_ids"], diff[0]]}
            config["history"] = [*(config.get("history") or []), entry]
            config_digest, config_size = self.content.ingest(oci.canonical(config))
            layers = [{"digest": layer_["digest"], "size": layer_["size"],
                       "media_type": _OCI_LAYER.get(layer_["media_type"],
                                                    layer_["media_type"])}
                      for layer_ in parent["doc"]["layers"]]
            if diff is not None:
                layers.append({"digest": diff[0], "size": diff[1],
                               "media_type": oci.MEDIA_LAYER})
            manifest = oci.manifest(config_digest, config_size,
                                    [(l["media_type"], l["digest"], l["size"]) for l in layers])
            manifest_digest, _ = self.content.ingest(oci.canonical(manifest))
            extra = {"build": dict(build)} if build else {}
            return self.add_image(config_digest, manifest_digest, layers,
                                   tags=[ref] if ref is not None else [], extra=extra)

    # ------------------------------------------------------------ builds

    def scratch(self) -> str:
        """The empty image a ``FROM scratch`` build starts from (no layers, no
        defaults; its config has no timestamp, so it is always the same image)."""
        config = oci.image_config([], created="", env=[], cmd=None, history=[])
        del config["created"]
        with self.lock:
            digest, size = self.content.ingest(oci.canonical(config))
            if self.store.get_image(digest) is not None:
                return digest
            manifest_digest, _ = self.content.ingest(
                oci.canonical(oci.manifest(digest, size, [])))
            return self.add_image(digest, manifest_digest, [], extra={"scratch": True})

    def cached(self, key: str) -> str | None:
        """The image a build step with this cache key made before, if it is still here."""
        rows = self.store.query("SELECT id FROM images WHERE "
                                "json_extract(doc, '$.build.key') = ? LIMIT 1", (key,))
        return rows[0][0] if rows else None

    def view(self, image_id: str, container_key: str | None = None) -> LayerView:
        """An image's merged filesystem (with ``container_key``: that container's,
        its kept upper on top), read from the layer directories (:mod:`.view`)."""
        with self.lock:
            image = self.get(image_id)
            if image["doc"].get("host"):
                raise InvalidArgument("the built-in host image has no layers to read: its "
                                      "root is the host's own files")
            layers = list(self._chain_lowerdirs(image["id"])[1])
            # a container's writable layer, when one is kept (not before its first
            # start, nor for a read-only root)
            if container_key is not None and self.snapshotter.exists(container_key) and \
                    self.snapshotter.stat(container_key).kind == "active":
                layers.insert(0, str(self.snapshotter.path(container_key)))
            return LayerView(layers)

    def changes(self, image_id: str, container_key: str) -> list[tuple[str, int]]:
        """``docker diff``: what the container ``container_key``'s kept writable layer
        adds, changes or deletes over its image (:func:`.changes.list_changes`);
        nothing before its first start or for a read-only root (no layer kept)."""
        with self.lock:
            if not self.snapshotter.exists(container_key) or \
                    self.snapshotter.stat(container_key).kind != "active":
                return []
            upper = self.snapshotter.path(container_key)
            lowers = self._chain_lowerdirs(image_id)[1]
        try:
            return changes.list_changes(upper, lowers)
        except FileNotFoundError:
            raise Conflict(f"container {container_key[:12]} was removed while its "
                           f"changes were listed") from None

    def children(self, image_id: str) -> list[str]:
        """Images a build made on top of this one (whose build parent it is)."""
        return [r[0] for r in self.store.query(
            "SELECT id FROM images WHERE json_extract(doc, '$.build.parent') = ?",
            (image_id,))]

    # ------------------------------------------------------------ archives

    def load(self, src: str | os.PathLike[str] | BinaryIO,
             progress: Progress | None = None) -> list[dict[str, Any]]:
        """``docker load``: every image of an OCI image layout or ``docker save``
        tarball (path or binary stream, plain or compressed); returns
        ``[{"id", "tags"}]``. ``progress`` gets ``{"status": "Loading", "current":
        bytes read}``. See :mod:`sandboxd.images.archive`."""
        with contextlib.ExitStack() as stack:
            raw = src
            if isinstance(src, (str, os.PathLike)):
                raw = stack.enter_context(open(src, "rb"))
            if progress:
                say = progress
                raw = _Counting(raw, lambda n: say({"status": "Loading", "current": n}))
            return archive.load(self, raw, progress=progress)  # type: ignore[arg-type]

    def save(self, refs: Sequence[str], out: BinaryIO) -> None:
        """``docker save``: write the images (tags or ids) to the binary stream ``out``
        as a tar that is both an OCI image layout and a ``docker save`` archive."""
        if not refs:
            raise InvalidArgument("save: name at least one image")
        archive.save(self, refs, out)

    # ------------------------------------------------------------ registries

    def _client(self, name: str, endpoint: str | None = None) -> RegistryClient:
        return self.registries.client(name, endpoint, self.credentials.get(name))

    def _registry(self, domain: str) -> RegistryClient:
        """The client for pushes and logins: Docker Hub's own endpoint (never a
        mirror), else the registry itself."""
        return self._client(*self.registries.endpoints(domain)[-1])

    def login(self, registry: str, user: str, password: str) -> str:
        """``docker login``: check the credentials against the registry (``/v2/``, or
        its token server), then keep them in ``auth.json``; ``Unauthorized`` when
        refused. ``docker.io`` (or ``""``) is Docker Hub."""
        registry = _login_name(registry)
        name, endpoint = self.registries.endpoints(registry)[-1]
        with self.registries.client(name, endpoint, (user, password)) as client:
            client.ping()
        self.credentials.set(registry, user, password)
        return "Login Succeeded"

    def logout(self, registry: str) -> bool:
        """Forget the login for ``registry``; ``False`` when there was none."""
        return self.credentials.erase(_login_name(registry))

    def _manifest(self, r: Reference) -> tuple[RegistryClient, bytes, str, str]:
        """``(client, body, media type, digest)`` of the manifest or index ``r`` names,
        from the first endpoint that has it (Docker Hub's mirrors, then the hub); the
        client stays open for the blobs, from the same place."""
        endpoints = self.registries.endpoints(r.domain)
        for i, (name, endpoint) in enumerate(endpoints):
            client = self._client(name, endpoint)
            try:
                return (client, *client.get_manifest(r.path, r.reference, name=r.familiar))
            except (NotFound, Unavailable, InvalidArgument) as e:
                client.close()
                if i == len(endpoints) - 1:
                    raise
                log.warning("mirror %s: %s; trying the next", endpoint, e)
        raise AssertionError("no endpoint")          # endpoints() is never empty

    def pull(self, ref: str, platform: str | None = None,
             progress: Progress | None = None) -> str:
        """``docker pull``: fetch an image (OCI or Docker schema 2 manifest; from an
        index, the entry for ``platform``, ``os/arch[/variant]``, default this machine's
        linux/<arch>) from the registry its name starts with, Docker Hub for a short
        name (through its mirrors first); returns the image id. Tagged ``ref`` when it
        has a tag; its ``name@digest`` joins the image's RepoDigests. Blobs already
        here are not fetched again; an image already here is only tagged. Progress
        events are Docker's: ``Pulling from``, per layer ``Pulling fs layer`` /
        ``Already exists``, ``Downloading`` (current/total bytes), ``Verifying
        Checksum``, ``Download complete``, ``Extracting`` (current/total), ``Pull
        complete``, then ``Digest:`` and ``Status:``."""
        r = parse_ref(ref)
        wanted = oci.parse_platform(platform) if platform else None
        say = progress or (lambda event: None)
        say({"status": f"Pulling from {r.path}", "id": r.tag or r.digest})
        client, body, media, top_digest = self._manifest(r)
        with client:
            if media in oci.INDEXES:
                index = json.loads(body)
                os_name, arch, variant = wanted or ("linux", oci.architecture(), "")
                entry = oci.pick_platform(index, arch, os_name, variant)
                if entry is None:
                    shown = oci.platform_name(os_name, arch, variant)
                    raise NotFound(f"no matching manifest for {shown} in the manifest "
                                   f"list entries of {r} (it has: "
                                   f"{', '.join(oci.index_platforms(index)) or 'none'})")
                body, media, _ = client.get_manifest(r.path, entry["digest"],
                                                     name=r.familiar)
            if media not in oci.MANIFESTS:
                raise InvalidArgument(f"{r}: unsupported manifest type {media!r} (OCI or "
                                      f"Docker v2 schema 2 manifests only)")
            manifest = oci.check_manifest(json.loads(body), str(r))
            config_desc = manifest["config"]
            tags = [normalize_ref(f"{r.name}:{r.tag}")] if r.tag and not r.digest else []
            repo_digests = [f"{r.familiar}@{top_digest}"]
            with self.lock:
                existing = self.store.get_image(config_desc["digest"])
                if existing is not None:
                    with self.store.transaction():
                        self._add_repo_digests(existing, repo_digests)
                        for tag in tags:
                            self.store.tag(tag, existing["id"])
                    image_id = existing["id"]
            if existing is None:
                layers = [{"digest": d["digest"], "size": d["size"],
                           "media_type": d.get("mediaType", oci.MEDIA_LAYER)}
                          for d in manifest["layers"]]
                blobs = [config_desc["digest"], *(layer["digest"] for layer in layers)]
                # The blobs come in without the lock; until the image is recorded they
                # are kept from a concurrent rmi that would find them unused.
                with self.keeping(blobs):
                    try:
                        self._fetch(client, r.path, config_desc, say)
                        if wanted is not None:
                            self._check_platform(r, config_desc["digest"], wanted)
                        for desc in manifest["layers"]:
                            say({"id": _short(desc["digest"]),
                                 "status": "Already exists"
                                 if self.content.exists(desc["digest"])
                                 else "Pulling fs layer"})
                        for desc in manifest["layers"]:
                            self._fetch(client, r.path, desc, say, layer=True)
                    except BaseException:
                        # what this pull stored and no image uses (a pull again fetches
                        # it)
                        self.delete_unused_blobs(blobs)
                        raise
                    manifest_digest, _ = self.content.ingest(body)
                    image_id = self.add_image(config_desc["digest"], manifest_digest,
                                               layers, tags=tags,
                                               repo_digests=repo_digests, progress=say,
                                               layer_done="Pull complete")
            elif wanted is not None:
                self._check_platform(r, existing["id"], wanted)
        say({"status": f"Digest: {top_digest}"})
        news = "Image is up to date" if existing else "Downloaded newer image"
        say({"status": f"Status: {news} for {normalize_ref(str(r))}"})
        return image_id

    def has_platform(self, ref: str, platform: str) -> bool:
        """Whether the image ``ref`` is here and for ``platform`` (``os/arch[/variant]``;
        an image whose config names no variant matches any)."""
        try:
            config = self.get(ref)["doc"]["config"]
        except NotFound:
            return False
        os_name, arch, variant = oci.parse_platform(platform)
        return (config.get("os"), config.get("architecture")) == (os_name, arch) and \
            (not variant or config.get("variant") in (None, "", variant))

    def _check_platform(self, r: Reference, config_digest: str,
                        wanted: tuple[str, str, str]) -> None:
        """A single-platform image pulled with ``--platform``: refused when it is for
        another platform (as Docker does)."""
        config = json.loads(self.content.read(config_digest))
        os_name, arch, variant = wanted
        actual = (config.get("os", ""), config.get("architecture", ""),
                  config.get("variant", "") if variant else "")
        if actual != wanted:
            raise InvalidArgument(f"image with reference {r} was found but does not match "
                                  f"the specified platform: wanted "
                                  f"{oci.platform_name(*wanted)}, actual: "
                                  f"{oci.platform_name(*actual)}")

    def _fetch(self, client: RegistryClient, repo: str, desc: dict[str, Any],
               say: Progress, layer: bool = False) -> None:
        digest, size = desc["digest"], desc["size"]
        short = _short(digest)
        if self.content.exists(digest):
            if layer:
                say({"id": short, "status": "Already exists"})
            return
        with client.blob(repo, digest) as reader:
            stream: Any = reader
            if layer:
                stream = _Counting(reader, lambda n: say(
                    {"id": short, "status": "Downloading", "current": n, "total": size}))
                # the digest is checked as the last bytes go in (ingest)
                stream.at_end = lambda: say({"id": short, "status": "Verifying Checksum"})
            self.content.ingest(stream, expected_digest=digest, expected_size=size)
        if layer:
            say({"id": short, "status": "Download complete"})

    def push(self, ref: str, progress: Progress | None = None) -> dict[str, Any]:
        """``docker push``: send the image tagged ``ref`` to the registry its name
        starts with: blobs the registry lacks (HEAD first), then the manifest under the
        tag. Returns ``{"digest", "size"}`` of the manifest; ``name@digest`` joins the
        image's RepoDigests."""
        r = parse_ref(ref)
        say = progress or (lambda event: None)
        with contextlib.ExitStack() as stack:
            with self.lock:
                image = self.get(ref)
                if image["doc"].get("host"):
                    raise InvalidArgument("the built-in host image cannot be pushed")
                doc = image["doc"]
                body = self.content.read(doc["manifest"])
                media = oci.media_type(json.loads(body))
                blobs = [(layer["digest"], self.content.size(layer["digest"]))
                         for layer in doc["layers"]]
                blobs.append((image["id"], self.content.size(image["id"])))
                # uploaded without the lock: an rmi meanwhile must leave them
                stack.enter_context(self.keeping(d for d, _ in blobs))
            with self._registry(r.domain) as client:
                say({"status": f"The push refers to repository [{r.name}]"})
                for digest, size in blobs:
                    short = _short(digest)
                    if client.blob_exists(r.path, digest):
                        say({"id": short, "status": "Layer already exists"})
                        continue
                    client.upload_blob(
                        r.path, digest, size, lambda d=digest: self.content.open(d),
                        chunk_size=self.chunk_size,
                        progress=lambda n, s=short, t=size: say(
                            {"id": s, "status": "Pushing", "current": n, "total": t}))
                    say({"id": short, "status": "Pushed"})
                digest = client.put_manifest(r.path, r.reference, body, media)
            with self.lock:
                current = self.store.get_image(image["id"])    # unless removed meanwhile
                if current is not None:
                    self._add_repo_digests(current, [f"{r.familiar}@{digest}"])
            say({"status": f"{r.tag or r.digest}: digest: {digest} size: {len(body)}"})
            return {"digest": digest, "size": len(body)}

    # ------------------------------------------------------------ tags and removal

    def tag(self, source: str, target: str) -> str:
        """``docker tag``: point ``target`` at the image ``source`` names."""
        image = self.get(source)
        if image["doc"].get("host") or split_ref(target)[0] == HOST_NAME:
            raise InvalidArgument("the built-in host image cannot be tagged or be a tag "
                                  "target")
        return self.store.tag(target, image["id"])

    def remove(self, ref: str, force: bool = False) -> list[dict[str, str]]:
        """``docker rmi``; returns ``[{"Untagged": ref} ..., {"Deleted": id}]``.

        A tag of an image that has other tags is only untagged. Otherwise the image is
        deleted with all its tags, then its blobs and layer snapshots that no other image
        uses. Refused (``Conflict``) when a container uses the image, unless ``force`` and
        none of them is running; and when an id is given for an image with several tags,
        unless ``force``.
        """
        with self.lock:
            image = self.get(ref)
            if image["doc"].get("host"):
                raise Conflict("the built-in host image cannot be removed")
            tags: list[str] = image["tags"]
            try:
                as_tag = normalize_ref(ref)
            except InvalidArgument:
                as_tag = None
            if as_tag in tags and len(tags) > 1:
                self.store.untag(as_tag)
                return [{"Untagged": as_tag}]
            short = image["id"][7:19]
            users = self.store.containers_using_image(image["id"])
            running = [c for c in users if c["state"] in RUNNING_STATES]
            if running:
                raise Conflict(f"unable to remove image {ref} ({short}): it is in use by "
                               f"running container {running[0]['id'][:12]}; stop it first")
            if users and not force:
                raise Conflict(f"unable to remove image {ref} ({short}): it is in use by "
                               f"container {users[0]['id'][:12]}; remove the container or "
                               f"use force")
            if as_tag not in tags and len(tags) > 1 and not force:
                raise Conflict(f"unable to remove image {short}: it is referenced by several "
                               f"tags ({', '.join(tags)}); remove them by tag or use force")
            if self.children(image["id"]) and not force:
                if as_tag in tags:            # Docker: the tag goes, the image stays
                    self.store.untag(as_tag)
                    return [{"Untagged": as_tag}]
                raise Conflict(f"unable to remove image {short}: image has dependent child "
                               f"images (built on it); remove them first or use force")
            result = [{"Untagged": t} for t in tags]
            blobs: set[str] = set()
            # then the untagged steps a build left under it that nothing else needs
            # (Docker's intermediate images), as docker rmi does
            victim: dict[str, Any] | None = image
            while victim is not None:
                self.store.delete_image(victim["id"])
                self._lowerdirs.pop(victim["id"], None)
                self._by_id.pop(victim["id"], None)
                result.append({"Deleted": victim["id"]})
                blobs |= _blobs_of(victim)
                parent_id = (victim["doc"].get("build") or {}).get("parent")
                victim = self.store.get_image(parent_id) if parent_id else None
                if victim is not None and (victim["tags"] or self.children(victim["id"])
                                           or self.store.containers_using_image(victim["id"])):
                    victim = None
            self.delete_unused_blobs(blobs)
            self.prune_snapshots()
            return result

    def prune(self, all_unused: bool = False,
              pruned: Callable[[dict[str, str], float], bool] = lambda labels, created: True
              ) -> dict[str, Any]:
        """``docker image prune``: remove dangling images (untagged, no child built on
        them, no container using them); with ``all_unused`` every image no container
        uses; only those ``pruned(labels, created)`` takes (the prune filters). Returns
        ``{"deleted": [...], "untagged": [...], "space_reclaimed"}`` (bytes of layer
        snapshots and blobs freed)."""
        deleted: list[str] = []
        untagged: list[str] = []
        before = self._disk_bytes()
        with self.lock:
            while True:
                victims = [i for i in self.store.list_images()
                           if (all_unused or not i["tags"])
                           and not self.children(i["id"])
                           and not self.store.containers_using_image(i["id"])
                           and pruned(*_labels_and_created(i))]
                if not victims:
                    break
                for image in victims:
                    for tag in image["tags"][1:]:
                        self.store.untag(tag)
                        untagged.append(tag)
                    ref = image["tags"][0] if image["tags"] else image["id"]
                    for entry in self.remove(ref, force=True):
                        if "Deleted" in entry:
                            deleted.append(entry["Deleted"])
                        else:
                            untagged.append(entry["Untagged"])
        return {"deleted": deleted, "untagged": untagged,
                "space_reclaimed": max(0, before - self._disk_bytes())}

    def _disk_bytes(self) -> int:
        """Bytes of every committed layer snapshot and blob."""
        total = sum(self.content.size(d) for d in self.content.list())
        for info in self.snapshotter.walk():
            if info.kind == "committed":
                total += int(info.labels.get(SIZE_LABEL) or self.snapshotter.usage(info.key)[0])
        return total

    def disk_usage(self) -> list[dict[str, Any]]:
        """``system df`` rows of images: ``{id, tags, size, shared, unique, layers,
        layer_sizes, containers}``; ``size`` counts each layer's unpacked bytes,
        ``unique`` only those of layers no other image shares; ``layers`` are chain ids
        (the same layer in two images has the same one). The host image is one of them,
        of no layers, as ``images`` and ``info`` count it."""
        images = self.list()
        users: Counter[str] = Counter()
        for image in images:
            for chain in set(image["doc"].get("chain_ids", [])):
                users[chain] += 1
        rows = []
        for image in images:
            unique = shared = 0
            sizes = []
            for chain in image["doc"].get("chain_ids", []):
                try:
                    labels = self.snapshotter.stat(chain).labels
                except NotFound:
                    sizes.append(0)
                    continue
                n = int(labels.get(SIZE_LABEL) or 0)
                sizes.append(n)
                if users[chain] > 1:
                    shared += n
                else:
                    unique += n
            rows.append({"id": image["id"], "tags": list(image["tags"]),
                         "size": shared + unique, "shared": shared, "unique": unique,
                         "layers": list(image["doc"].get("chain_ids", [])),
                         "layer_sizes": sizes,
                         "containers": len(self.store.containers_using_image(image["id"]))})
        return rows

    def delete_unused_blobs(self, digests: Iterable[str]) -> None:
        """Delete those of ``digests`` that no image uses; those a running transfer
        may be using (:meth:`keeping`) are deleted when it ends, if still unused."""
        with self.lock:
            used: set[str] = set()
            for image in self.store.list_images():
                used |= _blobs_of(image)
            for digest in set(digests) - used:
                if self._blind or self._inflight[digest]:
                    self._deferred.add(digest)
                    continue
                try:
                    self.content.delete(digest)
                except NotFound:
                    pass

    @contextlib.contextmanager
    def keeping(self, digests: Iterable[str] = (), *, blind: bool = False
                ) -> Iterator[None]:
        """While held, no blob of ``digests`` is deleted (with ``blind``: no blob at
        all, for a transfer that learns its digests only as it writes them): for work
        done without the lock that reads or writes blobs. Deletions put off meanwhile
        are done when the last such transfer ends."""
        kept = list(digests)
        with self.lock:
            self._inflight.update(kept)
            self._blind += blind
        try:
            yield
        finally:
            with self.lock:
                self._inflight.subtract(kept)
                self._inflight = +self._inflight          # drops those at zero
                self._blind -= blind
                deferred = {d for d in self._deferred if not self._inflight[d]}
                if deferred and not self._blind:
                    self._deferred -= deferred
                    self.delete_unused_blobs(deferred)

    def prune_snapshots(self) -> list[str]:
        """Remove committed layer snapshots that no image names and nothing sits on
        (layers an image removal freed, once the last container on them is gone).
        The container service calls this after removing a container's snapshot."""
        with self.lock:
            wanted: set[str] = set()
            for image in self.store.list_images():
                wanted.update(image["doc"].get("chain_ids", []))
            pinned = set(self._pins.values()) - wanted - {""}
            wanted |= pinned
            self._prune_pending = bool(pinned)       # prune again once they are released
            removed: list[str] = []
            while True:
                rows = self.store.query(
                    "SELECT key FROM snapshots s WHERE kind = 'committed' AND NOT EXISTS "
                    "(SELECT 1 FROM snapshots c WHERE c.parent = s.key)")
                victims = [r[0] for r in rows if r[0] not in wanted]
                if not victims:
                    return removed
                for key in victims:
                    self.snapshotter.remove(key)
                    removed.append(key)

    @property
    def builds_root(self) -> Path:
        """Where builds unpack their contexts (one private directory each)."""
        return self.store.root / "builds"

    def cleanup(self) -> list[str]:
        """Start-up reconciliation: drop blobs half-written, unpack snapshots and build
        contexts a crash interrupted, then unused layers. Call before any pull, import or
        build runs."""
        with self.lock:
            removed = [str(p) for p in self.content.cleanup()]
            if self.builds_root.is_dir():
                for context in self.builds_root.iterdir():
                    shutil.rmtree(context, ignore_errors=True)
                    removed.append(str(context))
            for info in self.snapshotter.walk():
                if info.kind == "active" and EXTRACT_LABEL in info.labels:
                    self.snapshotter.remove(info.key)
                    removed.append(info.key)
            return removed + self.prune_snapshots()

    # ------------------------------------------------------------ container roots

    def prepare_rootfs(self, image_id: str, container_key: str, *, readonly: bool = False,
                       tmpfs_upper: bool = False, size: int | None = None) -> RootFS:
        """Make the root of the container ``container_key`` of this image for the
        runner. By default the upper layer is a persistent active snapshot (kept across
        restarts); ``readonly`` takes a view instead (no upper kept). With
        ``tmpfs_upper`` the runner makes a tmpfs upper and nothing is kept, so no
        snapshot is recorded: the image's chain is pinned in memory until
        :meth:`release_rootfs` (such a container never outlives the daemon, so it is
        never started again). Otherwise an existing snapshot ``container_key`` (a
        container started again) is reused.
        Release the root with :meth:`release_rootfs` after the container is gone. For
        the host image, also mount :meth:`image_mounts`. ``size`` caps the writable
        layer (bytes): the tmpfs upper's size, or a new snapshot's filesystem image (a
        container started again keeps the layer it has)."""
        if tmpfs_upper:
            with self.lock:
                cached = self._lowerdirs.get(image_id)
                if cached is None or not os.path.isdir(cached[1][0]):
                    cached = self._chain_lowerdirs(image_id)
                    self._lowerdirs[image_id] = cached
                self._pins[container_key] = cached[0]
            if size is not None:
                return RootFS(lowerdirs=cached[1], readonly=readonly, tmpfs_size=str(size))
            return RootFS(lowerdirs=cached[1], readonly=readonly)
        image, parent = self._image_parent(image_id)
        if not self.snapshotter.exists(container_key):    # else a restart: keep its writes
            if readonly:
                self.snapshotter.view(container_key, parent, labels={"image": image["id"]})
            else:
                self.snapshotter.prepare(container_key, parent, labels={"image": image["id"]},
                                         size=size)
        root = self.snapshotter.rootfs(container_key, readonly=readonly)
        if image["doc"].get("host"):
            root = dataclasses.replace(root, lowerdirs=(str(self._host[1]),))
        return root

    def _image_parent(self, image_id: str) -> tuple[dict[str, Any], str | None]:
        """The image and the chain id of its top layer (None: no layers)."""
        image = self.get(image_id)
        chain_ids = image["doc"]["chain_ids"]
        parent = chain_ids[-1] if chain_ids else None
        if parent is not None and not self.snapshotter.exists(parent):
            raise NotFound(f"the layers of image {image['id'][7:19]} are missing "
                           f"(snapshot {parent}); remove and import the image again")
        return image, parent

    def _chain_lowerdirs(self, image_id: str) -> tuple[str, tuple[str, ...]]:
        """(chain id of the top layer or "", the lowerdirs top first) of an image."""
        image, parent = self._image_parent(image_id)
        if image["doc"].get("host"):
            return "", (str(self._host[1]),)
        if parent is None:
            return "", (str(self.snapshotter.empty),)
        return parent, tuple(str(self.snapshotter.path(info.key))
                             for info in self.snapshotter.chain(parent))

    def layer_dirs(self, image_id: str) -> tuple[str, ...]:
        """The directories of an image's layers, top first (a volume's first content)."""
        return self._chain_lowerdirs(image_id)[1]

    def volumes(self, image_id: str) -> list[str]:
        """The image's ``VOLUME`` paths, sorted: what a create reads of its config every
        time, without the copy :meth:`config` makes."""
        return sorted(self._runtime(image_id)[0].get("Volumes") or {})

    def image_mounts(self, image_id: str) -> tuple[Mount, ...]:
        """Mounts a container of this image needs besides its root: the host image's
        read-only binds (parents first); nothing for layered images."""
        return self._runtime(image_id)[1]

    def release_rootfs(self, container_key: str) -> None:
        """Remove a container's snapshot (after it is unmounted), then layers that only
        a deleted image still needed. ``NotFound`` when it has none."""
        with self.lock:
            if self._pins.pop(container_key, None) is not None:
                if self._prune_pending:
                    self.prune_snapshots()
                return
        self.snapshotter.remove(container_key)
        self.prune_snapshots()


class _Counting:
    """Reports how many bytes have been read from the wrapped stream (each time, or
    once per ``step`` bytes, a tar being read in 512-byte blocks, and at its end), and
    calls ``at_end`` (when set) once the stream is exhausted."""

    def __init__(self, inner: BinaryIO, progress: Callable[[int], None], step: int = 0):
        self._inner = inner
        self._progress = progress
        self._step = step
        self._total = self._told = 0
        self.at_end: Callable[[], None] | None = None

    def read(self, n: int = -1, /) -> bytes:
        data = self._inner.read(n)
        if data:
            self._total += len(data)
            if self._total - self._told >= self._step:
                self._told = self._total
                self._progress(self._total)
        elif n != 0:
            if self._told != self._total:            # the end is always reported
                self._told = self._total
                self._progress(self._total)
            if self.at_end is not None:
                self.at_end, at_end = None, self.at_end
                at_end()
        return data


def _login_name(registry: str) -> str:
    """The name a login is kept under: ``docker.io`` for Docker Hub (``""``,
    ``index.docker.io``, ``registry-1.docker.io``, Docker's ``https://index.docker.io/v1/``
    too), else ``host[:port]``."""
    registry = registry.strip()
    host = registry.split("://", 1)[-1].split("/", 1)[0]
    if not registry or host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        return DEFAULT_DOMAIN
    if "/" in registry:
        raise InvalidArgument(f"login: {registry!r} is not a registry host[:port]")
    return registry


def _short(digest: str) -> str:
    return digest.partition(":")[2][:12]


def _blobs_of(image: dict[str, Any]) -> set[str]:
    doc = image["doc"]
    blobs = {layer["digest"] for layer in doc.get("layers", [])}
    if doc.get("manifest"):
        blobs.add(doc["manifest"])
    if image["id"]:
        blobs.add(image["id"])              # the config blob
    return blobs


def _missing(ref: str) -> NotFound:
    return NotFound(f"no such image: {ref} (sbx images lists them; sbx import makes one "
                    f"from a rootfs tarball)")


def _labels_and_created(image: dict[str, Any]) -> tuple[dict[str, str], float]:
    """An image's labels and creation time (its config's; else when it came here), what
    the prune filters look at."""
    config = image["doc"].get("config") or {}
    labels = (config.get("config") or {}).get("Labels") or {}
    return labels, oci.parse_time(config.get("created") or "") or image["created"]
